"""ACKTR: actor-critic using Kronecker-factored trust region.

Wu, Mansimov, Liao, Grosse & Ba (2017), "Scalable trust-region method for
deep reinforcement learning using Kronecker-factored approximation". One
update, as OpenAI baselines' `acktr.py` does it:

1. the backward pass of `joint_fisher = pg_fisher + vf_fisher`
   (`agents.losses`) with factor collection on: K-FAC's `A` and `G` come
   from it, and from it only (`pg_fisher` alone when a `value_optimizer`
   fits the critic apart, as the paper does for continuous control);
2. the backward pass of `pg_loss - ent_coef · H + vf_coef · vf_loss` with
   collection off: the gradient;
3. `keras_kfac.KFAC` preconditions that gradient with the running factors
   and takes the step `η = min(η_max, sqrt(2δ / Δᵀ F̂ Δ))` (§3.1).
"""

import tensorflow as tf

import keras_kfac
from agents import losses
from agents.on_policy import OnPolicyActorCriticAgent, apply_gradients


def acktr_optimizer(
    learning_rate=0.25,
    kl_clip: float = 0.0005,
    momentum: float = 0.9,
    damping: float = 0.01,
    stats_decay: float = 0.99,
    cold_steps: int = 10,
    inverse_update_freq: int = 10,
    max_grad_norm: float | None = 0.5,
    **kwargs,
) -> keras_kfac.KFAC:
    """`keras_kfac.KFAC` with the ACKTR paper's / baselines' settings.

    `kl_clip` is the KL radius `δ`; baselines' `kfac_clip=0.001` bounds
    `Δᵀ F̂ Δ = 2δ`, hence `0.0005`. `max_grad_norm` clips the global norm
    of the gradient before preconditioning. Other keyword arguments go to
    `keras_kfac.KFAC`.
    """
    return keras_kfac.KFAC(
        learning_rate=learning_rate,
        kl_clip=kl_clip,
        momentum=momentum,
        damping=damping,
        stats_decay=stats_decay,
        cold_steps=cold_steps,
        inverse_update_freq=inverse_update_freq,
        global_clipnorm=max_grad_norm,
        **kwargs,
    )


class AcktrAgent(OnPolicyActorCriticAgent):
    """ACKTR as a tf-agents agent.

    Args:
        time_step_spec: The environment's `TimeStep` spec.
        action_spec: The environment's action spec.
        actor_critic_network: A network mapping observations to
            `((distribution, value), state)` built from `keras_kfac.layers`,
            for example `agents.networks.ActorCriticNetwork`.
        optimizer: A `keras_kfac.KFAC`. Defaults to `acktr_optimizer()`.
        vf_fisher_coef: Scale of the critic's Fisher loss. Defaults to
            `1.0`.
        **kwargs: `gamma`, `gae_lambda`, `ent_coef`, `vf_coef`, ... as in
            `agents.on_policy.OnPolicyActorCriticAgent`.
    """

    def __init__(
        self,
        time_step_spec,
        action_spec,
        actor_critic_network,
        optimizer: keras_kfac.KFAC | None = None,
        vf_fisher_coef: float = 1.0,
        name: str = "AcktrAgent",
        **kwargs,
    ):
        optimizer = acktr_optimizer() if optimizer is None else optimizer
        if not isinstance(optimizer, keras_kfac.KFAC):
            raise ValueError(
                f"AcktrAgent needs a keras_kfac.KFAC optimizer. Received: {optimizer!r}"
            )
        if not vf_fisher_coef > 0:
            raise ValueError(
                f"vf_fisher_coef must be > 0. Received: vf_fisher_coef={vf_fisher_coef!r}"
            )
        self._vf_fisher_coef = float(vf_fisher_coef)
        super().__init__(
            time_step_spec,
            action_spec,
            actor_critic_network,
            optimizer,
            name=name,
            **kwargs,
        )

    def _fisher_loss(self, distribution, actions, values, weights, noise_seed):
        # The actions were sampled from the policy being trained, so their
        # log-likelihood gradients give the true Fisher (not the empirical).
        pg_fisher = losses.policy_fisher_loss(
            distribution.log_prob(actions), weights
        )
        if self._value_optimizer is not None:  # the critic is fitted apart
            return pg_fisher
        noise = tf.random.stateless_normal(tf.shape(values), noise_seed)
        vf_fisher = losses.value_fisher_loss(
            values, noise, weights, self._vf_fisher_coef
        )
        return pg_fisher + vf_fisher

    def _update(self, tape, terms, batch, variables):
        with keras_kfac.collecting_statistics(True):
            # Only the factor statistics recorded by this pass are wanted.
            tape.gradient(terms.fisher, variables)
        with keras_kfac.collecting_statistics(False):
            gradients = tape.gradient(terms.total, variables)
        apply_gradients(self._optimizer, gradients, variables)
        return self._optimizer.clip_coefficient
