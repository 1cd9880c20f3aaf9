"""The KL-clipped update of `keras_kfac.KFAC`, the one ACKTR takes.

Wu et al. (2017), §3.1: one step size for the whole model,
`η = min(η_max, sqrt(2δ / Σ ∇ᵀΔ))`, bounds the quadratic model of the KL
divergence of the fresh step, `½ η² ΔᵀF̂Δ ≤ δ`; momentum averages the
clipped steps. A trust-region caller (ACKTR's guard) measures the KL the
update caused, compares it with the predicted one (`predicted_kl`) and
shrinks an update that went too far (`scale_velocities`).
"""

import tensorflow as tf

from keras_kfac import linalg

AUTO = "auto"
# The default `δ` of each update rule (`kl_clip="auto"`): ACKTR's bound on
# the K-FAC estimate of the KL of a fresh step, and the adaptive rule's on
# the exact one of the whole update (measured in BENCHMARKS.md, "Time to
# target" and "Held-out workloads": 0.06 took fewer steps or ended better
# than 0.1 on eight of ten models, worse on the CNN, and on an MLP
# regression within the seeds' spread). The adaptive step is the
# full minimizer of the batch's model, not a tenth of a momentum average,
# hence the larger radius.
KL_CLIP = 1e-3
ADAPTIVE_KL_CLIP = 0.06


def default_kl_clip(kl_clip, adaptive):
    """`kl_clip`, with `"auto"` resolved to the default of the update
    rule."""
    if isinstance(kl_clip, str) and kl_clip == AUTO:
        return ADAPTIVE_KL_CLIP if adaptive is True else KL_CLIP
    return kl_clip


class KLClippedUpdates:
    """The KL-clipped update's part of `KFAC`: its coefficients, the
    trust-region methods, and the clip it reports.

    Reads the optimizer's `_velocities`, `_estimator`, `_update_count` and
    `_clip_coefficient` variables and its `kl_clip`, `momentum` and
    `cold_steps` settings.
    """

    @property
    def clip_coefficient(self):
        """`η / η_max` of the last applied update (with `adaptive`, the
        factor the trust region scaled it by); 1 when not clipped."""
        return self._clip_coefficient

    def _kl_clipped_coefficients(
        self, indices, gradients, directions, learning_rate
    ) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        """`(η, μ, η / η_max)`: `η = min(η_max, sqrt(2δ / Σ ∇ᵀΔ))` and the
        fixed `μ`; the direction enters the velocity as `(1 - μ) η Δ`."""
        quadratic = tf.add_n(
            [tf.reduce_sum(gradients[i] * directions[i]) for i in indices]
        )
        eta = linalg.kl_clip_learning_rate(
            learning_rate, self.kl_clip, quadratic
        )
        mu = tf.constant(self.momentum, tf.float32)
        return eta, mu, eta / tf.cast(learning_rate, tf.float32)

    def predicted_kl(self) -> tf.Tensor:
        """`½ vᵀ F̂ v`, the quadratic model of the KL of the latest update.

        `v` is the step the latest update took, momentum included (each
        variable's velocity). `F̂` is the curvature model without damping:
        per K-FAC block, with `"eigen"` damping, the one the step was
        preconditioned with, `F̂ = (Q_A diag(λ_A) Q_Aᵀ) ⊗ (Q_G diag(λ_G)
        Q_Gᵀ)`, evaluated as `Σ (Q_Aᵀ V Q_G)² ⊙ λ_A λ_Gᵀ`; with
        `"factored"`, `A ⊗ G` of the current factors, `Σ V ⊙ (A V G)`
        (the same when the inverses were refreshed at this update); the
        identity for variables outside the blocks, and for every variable
        while the update was a cold step (those measure the step with
        `‖∇‖²`). A trust-region method compares this with the KL it
        measures after the step.

        Returns:
            A float32 scalar.
        """
        velocity_of = {
            i: tf.cast(v, tf.float32) for i, v in enumerate(self._velocities)
        }
        cold = self._update_count <= self.cold_steps
        return 0.5 * self._estimator.quadratic_form(velocity_of, cold)

    def scale_velocities(self, factor) -> None:
        """Multiplies every velocity by `factor`.

        A caller that shrinks the latest step `v` to `factor · v` after the
        fact (a backtracking trust region) calls this so that the momentum
        the next update carries, and `predicted_kl()`, match the step that
        was kept.
        """
        factor = tf.cast(factor, tf.float32)
        for velocity in self._velocities:
            self.assign(velocity, tf.cast(velocity, tf.float32) * factor)
