"""A2C: advantage actor-critic with a first-order optimizer.

Mnih et al. (2016), synchronous form, the baseline of the ACKTR paper. The
same network, batch, losses and returns as `agents.AcktrAgent`; only the
update differs: the gradient of `pg_loss - ent_coef · H + vf_coef · vf_loss`
goes straight to a Keras optimizer (RMSprop by default), so ACKTR vs A2C is
a clean ablation of the K-FAC step.
"""

import keras
import tensorflow as tf

from agents.checks import check_keras_optimizer
from agents.gradients import apply_gradients
from agents.on_policy import OnPolicyActorCriticAgent
from agents.optimizers import a2c_optimizer, agent_arguments


class A2CAgent(OnPolicyActorCriticAgent):
    """A2C as a tf-agents agent.

    Args:
        time_step_spec: The environment's `TimeStep` spec.
        action_spec: The environment's action spec.
        actor_critic_network: A network mapping observations to
            `((distribution, value), state)`.
        optimizer: A Keras optimizer. Defaults to
            `agents.optimizers.a2c_optimizer()`.
        **kwargs: `gamma`, `gae_lambda`, `ent_coef`, `vf_coef`,
            `value_optimizer`, ... as in
            `agents.on_policy.OnPolicyActorCriticAgent`; those not given
            take the `"default"` preset's values
            (`agents.optimizers.agent_arguments`).
    """

    def __init__(
        self,
        time_step_spec,
        action_spec,
        actor_critic_network,
        optimizer: keras.optimizers.Optimizer | None = None,
        name: str = "A2CAgent",
        **kwargs,
    ):
        optimizer = a2c_optimizer() if optimizer is None else optimizer
        check_keras_optimizer("optimizer", optimizer)
        super().__init__(
            time_step_spec,
            action_spec,
            actor_critic_network,
            optimizer,
            name=name,
            **agent_arguments("a2c", kwargs),
        )

    def _update(self, tape, terms, batch, variables):
        gradients = tape.gradient(terms.total, variables)
        norm = apply_gradients(self._optimizer, gradients, variables)
        return dict(clip_coefficient=tf.constant(1.0), gradient_norm=norm)
