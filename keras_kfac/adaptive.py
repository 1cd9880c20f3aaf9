"""The adaptive update of `keras_kfac.KFAC(adaptive=True)`.

Martens & Grosse (2015), §6.5 and §7: the update is `v = α Δ + μ v_prev`
with `α` and `μ` minimizing the damped quadratic model under the exact
curvature of the batch, which the model's train step supplies
(`supplying_curvature`; `keras_kfac.TrueFisherModel` does); after the
update the train step measures the batch loss and asks `review_update`
whether to undo it, and `λ` adapts to the reduction ratio. A learning
rate `η` below `reference_learning_rate` takes the fraction `η / η_ref` of
the update (a schedule's decay shapes the steps). The arithmetic
is `keras_kfac.quadratic_model`'s; this mixin keeps its state in the
optimizer's variables.
"""

import contextlib

import keras
import tensorflow as tf

from keras_kfac import quadratic_model


def initial_learning_rate(learning_rate) -> float:
    """`learning_rate`'s value before the first step: a schedule's at step
    0, a callable's return value, or the number itself (Keras' optimizer
    has refused anything else)."""
    schedule = keras.optimizers.schedules.LearningRateSchedule
    if isinstance(learning_rate, schedule):
        return float(learning_rate(0))
    if callable(learning_rate):
        return float(learning_rate())
    return float(learning_rate)


class AdaptiveUpdates:
    """The adaptive update's part of `KFAC`: the methods a train step calls
    (`supplying_curvature`, `review_update`), the coefficients of the step,
    and the counters it reports.

    Reads the optimizer's `_velocities`, `_current_damping`,
    `_predicted_change`, `_update_count`, `_reduction_ratio` and
    `_rejected_steps` variables, the curvature products
    `supplying_curvature` sets, and its `momentum` (the largest `μ`),
    `kl_clip` (the trust region's radius), `damping_adaptation_*`,
    `min_damping` and `reference_learning_rate` settings.
    """

    @property
    def reduction_ratio(self):
        """`ρ` of the latest adaptive update with a finite one (0 before
        the first)."""
        return self._reduction_ratio

    @property
    def predicted_change(self):
        """`M₀` of the latest adaptive update: the change of the batch loss
        the quadratic model predicted (0 for a skipped update)."""
        return self._predicted_change

    @property
    def rejected_steps(self):
        """Adaptive updates undone because they raised the batch loss."""
        return self._rejected_steps

    @contextlib.contextmanager
    def supplying_curvature(self, products):
        """Inside the block, adaptive updates take their exact curvature
        from `products(variables, vectors)`: `vectors` is a list of tangents,
        each a list of tensors shaped like `variables` (those being updated,
        in order), and it returns the matrix `[wᵢᵀ F wⱼ]` of the batch as a
        float32 tensor. A model's train step wraps `apply_gradients` in it
        (`keras_kfac.TrueFisherModel` does); it is read while the step is
        traced.
        """
        previous, self._exact_curvature = self._exact_curvature, products
        try:
            yield
        finally:
            self._exact_curvature = previous

    def review_update(self, loss_before, loss_after) -> tf.Tensor:
        """Judges the adaptive update just applied from the batch loss
        before and after it; returns whether to undo it.

        `ρ = (h(θ - v) - h(θ)) / M₀(v)` (`keras_kfac.quadratic_model.review`
        has the rule). An update that raised the batch loss it was fitted
        to, or made it non-finite, is rejected: its velocity is zeroed (the
        next update starts without momentum), `λ` grows by `1/ω`,
        `rejected_steps` counts it, and the caller restores the weights.
        Otherwise, every `damping_adaptation_interval` updates, `λ` follows
        the Levenberg-Marquardt rule on `ρ`. Nothing happens after a
        skipped update (it predicted no change).

        Returns:
            A boolean tensor: the caller must restore the weights.
        """
        verdict = quadratic_model.review(
            loss_before,
            loss_after,
            tf.convert_to_tensor(self._predicted_change),
            tf.convert_to_tensor(self._current_damping),
            self.damping_adaptation_decay**self.damping_adaptation_interval,
            self.min_damping,
            self.damping_adaptation_due(),
        )
        self.assign(self._current_damping, verdict.damping)
        # Only finite values are kept: the optimizer's state stays finite
        # whatever a step did (a non-finite ρ is a rejection, counted).
        self.assign(
            self._reduction_ratio,
            tf.where(
                verdict.ratio_counts,
                verdict.ratio,
                tf.convert_to_tensor(self._reduction_ratio),
            ),
        )
        self.scale_velocities(tf.where(verdict.rejected, 0.0, 1.0))
        self.assign_add(
            self._rejected_steps, tf.cast(verdict.rejected, tf.int64)
        )
        return verdict.rejected

    def damping_adaptation_due(self) -> tf.Tensor:
        """Whether the update just applied is one on which `λ` adapts:
        every `damping_adaptation_interval` applied updates."""
        return tf.logical_and(
            self._update_count > 0,
            tf.equal(
                tf.math.floormod(
                    self._update_count, self.damping_adaptation_interval
                ),
                0,
            ),
        )

    def _adaptive_coefficients(
        self, variables, indices, gradients, directions, learning_rate
    ) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor]:
        """`(α, μ, M₀, clip)`: `α`, `μ ∈ [0, momentum]` minimizing the
        quadratic model in the span of `Δ` and the previous update `v`,
        from exact curvature products, then scaled by `clip` into the
        trust region `½ δᵀ F δ ≤ kl_clip` and by the learning rate's
        fraction `min(1, η / reference_learning_rate)`, and the change
        `M₀` predicted there."""
        if self._exact_curvature is None:
            raise ValueError(
                "KFAC(adaptive=True) chooses its step from exact curvature "
                "products, which need the model's loss: train through "
                "keras_kfac.TrueFisherModel (model.fit on a plain model "
                "cannot supply them), apply the gradients inside "
                "optimizer.supplying_curvature(...) in a custom step, or "
                "use adaptive=False."
            )
        previous = {
            i: tf.cast(self._velocities[i], tf.float32) for i in indices
        }
        vectors = [
            [directions[i] for i in indices],
            [previous[i] for i in indices],
        ]
        coefficients, change, clip = quadratic_model.coefficients_in_span(
            self._exact_curvature(variables, vectors),
            [gradients[i] for i in indices],
            vectors,
            self._current_damping,
            self.momentum,
            self.kl_clip,
            tf.minimum(
                1.0,
                tf.cast(learning_rate, tf.float32)
                / self.reference_learning_rate,
            ),
        )
        return coefficients[0], coefficients[1], change, clip
