"""ACKTR: actor-critic using Kronecker-factored trust region.

Wu, Mansimov, Liao, Grosse & Ba (2017), "Scalable trust-region method for
deep reinforcement learning using Kronecker-factored approximation". One
update, as OpenAI baselines' `acktr.py` does it:

1. the backward pass of `joint_fisher = pg_fisher + vf_fisher`
   (`agents.losses`) with factor collection on: K-FAC's `A` and `G` come
   from it, and from it only (`pg_fisher` alone when a `value_optimizer`
   fits the critic apart, as the paper does for continuous control). With
   `fisher_rows = m` it is taken through a forward pass of `m` rows of
   the batch drawn at random, not of the whole batch: the factors are
   running averages over many batches, and on a convolutional torso
   their statistics cost more than the rest of the update;
2. the backward pass of `pg_loss - ent_coef · H + vf_coef · vf_loss` with
   collection off: the gradient;
3. `keras_kfac.KFAC` preconditions that gradient with the running factors
   and takes the step `η = min(η_max, sqrt(2δ / Δᵀ F̂ Δ))` (§3.1);
4. the trust-region guard: the KL clip bounds the quadratic model of the
   fresh direction under the running `F̂`, not the step momentum carries
   nor the true KL, so the agent measures `mean_w KL(π_old || π_new)` on the
   batch and, while it exceeds `max_kl_ratio · δ`, halves the step
   (`θ_old + 2⁻ᵏ Δθ`) and the momentum that would carry it on; after
   `guard_steps` halvings it keeps `θ_old`.

The critic is trained with the policy in the joint step (baselines' Atari
setting), or fitted apart by a `value_optimizer`: first-order, or
`agents.optimizers.kfac_value_optimizer()`, K-FAC with the critic's
Gauss-Newton matrix and several full-batch iterations per batch, as the
paper's continuous-control experiments do.
"""

import tensorflow as tf

import keras_kfac
from agents import losses, minibatches, trust_region
from agents.checks import check_positive_integer
from agents.gradients import apply_gradients, fisher_then_loss_gradients
from agents.on_policy import OnPolicyActorCriticAgent, TrustRegionLossInfo
from agents.optimizers import acktr_optimizer, agent_arguments
from agents.presets import defaults

_DEFAULTS = defaults("acktr")


class AcktrAgent(OnPolicyActorCriticAgent):
    """ACKTR as a tf-agents agent.

    Args:
        time_step_spec: The environment's `TimeStep` spec.
        action_spec: The environment's action spec.
        actor_critic_network: A network mapping observations to
            `((distribution, value), state)` built from `keras_kfac.layers`,
            for example `agents.networks.ActorCriticNetwork`.
        optimizer: A `keras_kfac.KFAC`. Defaults to
            `agents.optimizers.acktr_optimizer()`.
        vf_fisher_coef: Scale of the critic's Fisher loss in the joint
            step. Defaults to the `"default"` preset's.
        max_kl_ratio: The guard keeps no policy step whose measured mean
            KL exceeds `max_kl_ratio · δ`, `δ` the optimizer's `kl_clip`
            (see the module docstring); `None` turns the guard off.
            Defaults to the `"default"` preset's.
        guard_steps: Halvings the guard tries before it keeps `θ_old`.
            Defaults to `10`.
        fisher_rows: The rows of each batch, drawn at random, whose Fisher
            pass gives the factors (step 1); `None` takes every row.
            Defaults to `None`.
        **kwargs: `gamma`, `gae_lambda`, `ent_coef`, `vf_coef`,
            `value_optimizer`, ... as in
            `agents.on_policy.OnPolicyActorCriticAgent`; those not given
            take the `"default"` preset's values
            (`agents.optimizers.agent_arguments`): among them a critic
            fitted apart by Adam, so the network must keep policy and
            value apart unless `value_optimizer=None` (the joint step).
    """

    def __init__(
        self,
        time_step_spec,
        action_spec,
        actor_critic_network,
        optimizer: keras_kfac.KFAC | None = None,
        vf_fisher_coef: float = _DEFAULTS["vf_fisher_coef"],
        max_kl_ratio: float | None = _DEFAULTS["max_kl_ratio"],
        guard_steps: int = 10,
        fisher_rows: int | None = None,
        name: str = "AcktrAgent",
        **kwargs,
    ):
        optimizer = acktr_optimizer() if optimizer is None else optimizer
        if not isinstance(optimizer, keras_kfac.KFAC):
            raise ValueError(
                "AcktrAgent needs a keras_kfac.KFAC optimizer. "
                f"Received: {optimizer!r}"
            )
        if not vf_fisher_coef > 0:
            raise ValueError(
                "vf_fisher_coef must be > 0. "
                f"Received: vf_fisher_coef={vf_fisher_coef!r}"
            )
        self._vf_fisher_coef = float(vf_fisher_coef)
        if max_kl_ratio is not None:
            if not max_kl_ratio > 0:
                raise ValueError(
                    "max_kl_ratio must be > 0 or None. Received: "
                    f"max_kl_ratio={max_kl_ratio!r}"
                )
            if optimizer.kl_clip is None:
                raise ValueError(
                    "The trust-region guard bounds the KL at max_kl_ratio · "
                    "kl_clip, and the optimizer has kl_clip=None. Pass "
                    "max_kl_ratio=None or give the optimizer a kl_clip."
                )
        check_positive_integer("guard_steps", guard_steps)
        if fisher_rows is not None:
            check_positive_integer("fisher_rows", fisher_rows)
        self._fisher_rows = fisher_rows
        self._max_kl = (
            None
            if max_kl_ratio is None
            else float(max_kl_ratio) * optimizer.kl_clip
        )
        self._guard_steps = int(guard_steps)
        super().__init__(
            time_step_spec,
            action_spec,
            actor_critic_network,
            optimizer,
            name=name,
            **agent_arguments("acktr", kwargs),
        )

    _loss_info_type = TrustRegionLossInfo

    @property
    def max_kl(self) -> float | None:
        """The guard's bound on the measured KL of a kept step, or `None`."""
        return self._max_kl

    def _fisher_loss(
        self, observation, distribution, actions, values, weights, noise_seed
    ):
        if self._fisher_rows is not None:
            rows = minibatches.sampled_rows(
                tf.shape(actions)[0],
                self._fisher_rows,
                tf.random.experimental.stateless_fold_in(noise_seed, 1),
            )
            (distribution, values), _ = self._network(
                tf.gather(observation, rows), training=True
            )
            actions = tf.gather(actions, rows)
            weights = tf.gather(weights, rows)
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
        gradients = fisher_then_loss_gradients(
            tape, terms.fisher, terms.total, variables
        )
        old = [tf.identity(v) for v in variables]
        norm = apply_gradients(self._optimizer, gradients, variables)
        statistics = dict(
            clip_coefficient=self._optimizer.clip_coefficient,
            step_fraction=tf.constant(1.0),
            gradient_norm=norm,
        )
        if self._max_kl is not None:
            # The guard measured the KL of the step it kept: not again.
            fraction, statistics["kl"] = self._guard(batch, variables, old)
            statistics["step_fraction"] = fraction
            self._optimizer.scale_velocities(fraction)
        statistics["predicted_kl"] = self._optimizer.predicted_kl()
        return statistics

    def _guard(self, batch, variables, old) -> tuple[tf.Tensor, tf.Tensor]:
        """Step 4: the kept fraction of the step just taken, and the
        measured KL of what was kept."""
        steps = [v - o for v, o in zip(variables, old)]

        def acceptable(fraction):
            kl = self._mean_kl(batch)
            return kl <= self._max_kl, kl

        return trust_region.backtracking_line_search(
            variables, old, steps, acceptable, self._guard_steps + 1
        )
