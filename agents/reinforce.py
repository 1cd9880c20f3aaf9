"""REINFORCE: the Monte-Carlo policy gradient, with or without a baseline.

Williams (1992), with the reward-to-go and a learned baseline (Sutton &
Barto 2018, §13.3-13.4). One update per batch:

1. `R_t = Σ_{k ≥ 0} γᵏ r_{t+k}`, the reward-to-go to the end of the
   episode, nothing bootstrapped (`agents.advantages.reward_to_go`). Only
   the transitions of episodes that end within the batch train: an
   episode the batch cuts off has no return yet, so its transitions are
   left out (`agents.advantages.ends_in_batch`), and `n_steps` should hold
   several episodes;
2. `Â = R - V(s)` with the baseline (`V` fitted apart to `R` by
   `value_optimizer` after the update), `Â = R` without;
3. one step of the Keras optimizer (Adam) on
   `pg_loss - ent_coef · H = -mean_w(Â log π(a|s)) - ent_coef · H`.

A2C (`agents.a2c`) is this with `R` bootstrapped from `V` after `n`
steps, so that every transition trains and `Â` has less variance.
"""

import keras
import tensorflow as tf

from agents import advantages as advantages_lib
from agents import losses
from agents.checks import check_keras_optimizer
from agents.gradients import apply_gradients
from agents.on_policy import OnPolicyActorCriticAgent
from agents.optimizers import agent_arguments, reinforce_optimizer
from agents.presets import defaults

_DEFAULTS = defaults("reinforce")


class ReinforceAgent(OnPolicyActorCriticAgent):
    """REINFORCE as a tf-agents agent (see the module docstring).

    Args:
        time_step_spec: The environment's `TimeStep` spec.
        action_spec: The environment's action spec.
        actor_critic_network: A network mapping observations to
            `((distribution, value), state)`; with the baseline, its policy
            and value must not share parameters.
        optimizer: The policy's Keras optimizer. Defaults to
            `agents.optimizers.reinforce_optimizer()` (Adam).
        baseline: Subtract the learned `V(s)` from the return. Defaults to
            the `"default"` preset's (`True`).
        **kwargs: `gamma`, `ent_coef`, `normalize_advantages`,
            `scale_rewards`, `value_optimizer` (the baseline's fit),
            `value_epochs`, `value_minibatch_size`, `seed`, ... as in
            `agents.on_policy.OnPolicyActorCriticAgent`; those not given
            take the `"default"` preset's values
            (`agents.optimizers.agent_arguments`). `gae_lambda` and
            `vf_coef` do not apply: the returns are Monte-Carlo and the
            value function is fitted apart.
    """

    def __init__(
        self,
        time_step_spec,
        action_spec,
        actor_critic_network,
        optimizer: keras.optimizers.Optimizer | None = None,
        baseline: bool = _DEFAULTS["baseline"],
        name: str = "ReinforceAgent",
        **kwargs,
    ):
        optimizer = reinforce_optimizer() if optimizer is None else optimizer
        check_keras_optimizer("optimizer", optimizer)
        for setting in ("gae_lambda", "vf_coef"):
            if kwargs.get(setting) is not None:
                raise ValueError(
                    f"{type(self).__name__} trains on Monte-Carlo returns "
                    f"and fits its baseline apart; it takes no {setting}. "
                    f"Received: {setting}={kwargs[setting]!r}"
                )
        if not baseline and kwargs.get("value_optimizer") is not None:
            raise ValueError(
                "value_optimizer fits the baseline, and baseline=False has "
                "none. Received: value_optimizer="
                f"{kwargs['value_optimizer']!r}"
            )
        self._baseline = bool(baseline)
        arguments = agent_arguments("reinforce", kwargs)
        # No value loss enters the policy's step; with the baseline, `V` is
        # fitted apart.
        arguments.update(gae_lambda=None, vf_coef=0.0)
        if not baseline:
            arguments["value_optimizer"] = None
        super().__init__(
            time_step_spec,
            action_spec,
            actor_critic_network,
            optimizer,
            name=name,
            **arguments,
        )

    @property
    def baseline(self) -> bool:
        return self._baseline

    def _trained_rows(self, valid, continues):
        return valid * advantages_lib.ends_in_batch(continues)

    def _returns_and_advantages(self, transitions, values, valid, continues):
        returns = advantages_lib.reward_to_go(
            transitions.reward, valid, continues, self._gamma
        )
        advantages = returns - values[:, :-1] if self._baseline else returns
        advantages = valid * advantages
        if self._normalize_advantages:
            advantages = losses.standardized(advantages, valid)
        return returns, advantages

    def _update(self, tape, terms, batch, variables):
        # `terms.total` is `pg_loss - ent_coef · H`: `vf_coef` is 0.
        gradients = tape.gradient(terms.total, variables)
        norm = apply_gradients(self._optimizer, gradients, variables)
        return dict(clip_coefficient=tf.constant(1.0), gradient_norm=norm)
