"""PPO: proximal policy optimization, clipped or with an adaptive KL penalty.

Schulman et al. (2017). The batch, advantages `Â`, returns `R` and
`π_old` come from the shared core (`agents.on_policy`); the update then
passes over the batch several times:

1. `n_epochs` passes, each over the rows in a fresh seeded order
   (`agents.minibatches`), cut into minibatches of `minibatch_size` rows
   (the rows past the last whole minibatch wait for the next pass);
2. on each minibatch, with the ratio `r = π(a|s) / π_old(a|s)`: `Â`
   standardized over the minibatch (with `normalize_advantages`), the loss
   `L = policy_loss - ent_coef · H + vf_coef · vf_loss` with `policy_loss`
   the clipped surrogate (`objective="clip"`, §3) or the penalized one
   (`objective="kl_penalty"`, §4; `agents.losses`), and one step of the
   Keras optimizer (Adam);
3. with the penalty, after the passes, the realized
   `d = mean_w KL(π_old || π)` on the batch adapts `β`: halved if
   `d < d_targ / 1.5`, doubled if `d > 1.5 d_targ` (`adapted_kl_coef`).

At `θ_old` the ratio is 1 and `∇r = ∇ log π`, so the first minibatch
step is A2C's gradient step on that minibatch: one pass of one minibatch
of the whole batch is A2C with the same optimizer (tested).
"""

import collections

import keras
import tensorflow as tf
import tensorflow_probability as tfp

from agents import losses
from agents.checks import check_keras_optimizer, check_positive_integer
from agents.gradients import apply_gradients
from agents.minibatches import shuffled_rows
from agents.on_policy import ActorCriticLossInfo, OnPolicyActorCriticAgent
from agents.optimizers import agent_arguments, ppo_optimizer
from agents.presets import defaults

CLIP = "clip"
KL_PENALTY = "kl_penalty"
OBJECTIVES = (CLIP, KL_PENALTY)
_DEFAULTS = defaults("ppo")

PpoLossInfo = collections.namedtuple(
    "PpoLossInfo", ActorCriticLossInfo._fields + ("clip_fraction", "kl_coef")
)
PpoLossInfo.__doc__ = """`LossInfo.extra` of `PpoAgent`.

The fields of `ActorCriticLossInfo` (`clip_coefficient` is 1: no step is
scaled), and: `clip_fraction`, the weighted fraction of the rows of the
update's minibatch steps whose ratio `r` was outside `[1 - ε, 1 + ε]`
when their step began; `kl_coef`, `β` for the next update (with the
clipped objective it stays at its initial value and is unused)."""


def adapted_kl_coef(kl_coef, kl, kl_target) -> tf.Tensor:
    """`β` after an update of realized KL `d = kl` (Schulman et al. 2017,
    §4): `β / 2` if `d < d_targ / 1.5`, `2β` if `d > 1.5 d_targ`, else
    `β`; `d_targ = kl_target`."""
    return tf.where(
        kl < kl_target / 1.5,
        kl_coef / 2.0,
        tf.where(kl > 1.5 * kl_target, kl_coef * 2.0, kl_coef),
    )


def _gathered(distribution, index):
    """The rows `index` of a distribution whose parameters are batched on
    their first axis (`Categorical`, `MultivariateNormalDiag`)."""
    parameters = {
        name: tf.gather(value, index) if tf.is_tensor(value) else value
        for name, value in distribution.parameters.items()
    }
    return type(distribution)(**parameters)


class PpoAgent(OnPolicyActorCriticAgent):
    """PPO as a tf-agents agent (see the module docstring).

    Args:
        time_step_spec: The environment's `TimeStep` spec.
        action_spec: The environment's action spec.
        actor_critic_network: A network mapping observations to
            `((distribution, value), state)`.
        optimizer: A Keras optimizer. Defaults to
            `agents.optimizers.ppo_optimizer()` (Adam, the `"default"`
            preset's rate and gradient clipping).
        objective: `"clip"`, the clipped surrogate, or `"kl_penalty"`, the
            surrogate with the adaptive KL penalty. Defaults to the
            `"default"` preset's.
        clip_range: `ε` of the clipped surrogate. Defaults to the
            `"default"` preset's.
        kl_penalty_target: `d_targ` of the KL penalty. Defaults to the
            `"default"` preset's.
        initial_kl_coef: `β` of the first update with the KL penalty.
            Defaults to `1.0` (the paper's; it adapts within a few
            updates).
        n_epochs: Passes over each batch. Defaults to the `"default"`
            preset's.
        minibatch_size: Rows per step. Defaults to the `"default"`
            preset's.
        **kwargs: `gamma`, `gae_lambda`, `ent_coef`, `vf_coef`,
            `normalize_advantages` (here over each minibatch, as the PPO
            implementations do, not over the batch), `value_optimizer`,
            `seed`, ... as in
            `agents.on_policy.OnPolicyActorCriticAgent`; those not given
            take the `"default"` preset's values
            (`agents.optimizers.agent_arguments`).
    """

    _loss_info_type = PpoLossInfo
    _standardizes_batch_advantages = False  # per minibatch, in _update

    def __init__(
        self,
        time_step_spec,
        action_spec,
        actor_critic_network,
        optimizer: keras.optimizers.Optimizer | None = None,
        objective: str = _DEFAULTS["objective"],
        clip_range: float = _DEFAULTS["clip_range"],
        kl_penalty_target: float = _DEFAULTS["kl_penalty_target"],
        initial_kl_coef: float = 1.0,
        n_epochs: int = _DEFAULTS["n_epochs"],
        minibatch_size: int = _DEFAULTS["minibatch_size"],
        name: str = "PpoAgent",
        **kwargs,
    ):
        optimizer = ppo_optimizer() if optimizer is None else optimizer
        check_keras_optimizer("optimizer", optimizer)
        if objective not in OBJECTIVES:
            raise ValueError(
                f"objective must be one of {OBJECTIVES}. "
                f"Received: objective={objective!r}"
            )
        for setting, value in (
            ("clip_range", clip_range),
            ("kl_penalty_target", kl_penalty_target),
            ("initial_kl_coef", initial_kl_coef),
        ):
            if not 0.0 < value < float("inf"):
                raise ValueError(
                    f"{setting} must be > 0 and finite. "
                    f"Received: {setting}={value!r}"
                )
        check_positive_integer("n_epochs", n_epochs)
        check_positive_integer("minibatch_size", minibatch_size)
        self._objective = objective
        self._clip_range = float(clip_range)
        self._kl_penalty_target = float(kl_penalty_target)
        self._n_epochs = int(n_epochs)
        self._minibatch_size = int(minibatch_size)
        # β of the next update; saved with the agent.
        self._kl_coef = tf.Variable(
            float(initial_kl_coef), trainable=False, name="kl_coef"
        )
        super().__init__(
            time_step_spec,
            action_spec,
            actor_critic_network,
            optimizer,
            name=name,
            **agent_arguments("ppo", kwargs),
        )

    @property
    def kl_coef(self) -> tf.Variable:
        """`β` of the next update (`objective="kl_penalty"`)."""
        return self._kl_coef

    def _update(self, tape, terms, batch, variables):
        del tape, terms  # each minibatch step takes its own forward pass
        log_prob_old = tf.stop_gradient(
            batch.distribution.log_prob(batch.actions)
        )
        rows = tf.shape(batch.weights)[0]
        size = tf.minimum(self._minibatch_size, rows)
        clipped = tf.constant(0.0)
        weight = tf.constant(0.0)
        norms = tf.constant(0.0)
        for epoch in tf.range(self._n_epochs):
            order = shuffled_rows(
                rows, self._seed, self.train_step_counter, self._n_epochs, epoch
            )
            for i in tf.range(rows // size):
                index = order[i * size : (i + 1) * size]
                step_clipped, step_weight, norm = self._minibatch_step(
                    batch, log_prob_old, index, variables
                )
                clipped += step_clipped
                weight += step_weight
                norms += norm
        if self._objective == KL_PENALTY:
            self._kl_coef.assign(
                adapted_kl_coef(
                    self._kl_coef, self._mean_kl(batch), self._kl_penalty_target
                )
            )
        return dict(
            clip_coefficient=tf.constant(1.0),
            clip_fraction=tf.math.divide_no_nan(clipped, weight),
            gradient_norm=norms
            / tf.cast(self._n_epochs * (rows // size), tf.float32),
            kl_coef=tf.convert_to_tensor(self._kl_coef),
        )

    def _minibatch_step(self, batch, log_prob_old, index, variables):
        """One optimizer step on the rows `index` (step 2 of the module
        docstring); returns `(Σ w over rows with r outside [1 - ε, 1 + ε],
        Σ w)` of the minibatch, before the step, and its gradient's norm
        before clipping."""
        weights = tf.gather(batch.weights, index)
        advantages = tf.gather(batch.advantages, index)
        if self._normalize_advantages:
            advantages = losses.standardized(advantages, weights)
        with tf.GradientTape() as tape:
            (distribution, values), _ = self._network(
                tf.gather(batch.observation, index), training=True
            )
            ratio = tf.exp(
                distribution.log_prob(tf.gather(batch.actions, index))
                - tf.gather(log_prob_old, index)
            )
            if self._objective == CLIP:
                policy_loss = losses.clipped_surrogate_loss(
                    ratio, advantages, self._clip_range, weights
                )
            else:
                kl = tfp.distributions.kl_divergence(
                    _gathered(batch.distribution, index), distribution
                )
                policy_loss = losses.penalized_surrogate_loss(
                    ratio, advantages, kl, self._kl_coef, weights
                )
            loss = policy_loss - self._ent_coef * losses.entropy(
                distribution.entropy(), weights
            )
            if self._value_optimizer is None:
                loss += self._vf_coef * losses.value_loss(
                    values, tf.gather(batch.returns, index), weights
                )
        norm = apply_gradients(
            self._optimizer, tape.gradient(loss, variables), variables
        )
        outside = tf.cast(
            tf.abs(tf.stop_gradient(ratio) - 1.0) > self._clip_range,
            tf.float32,
        )
        return tf.reduce_sum(weights * outside), tf.reduce_sum(weights), norm
