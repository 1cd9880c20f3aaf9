"""The quadratic model of a K-FAC update, and the damping it adapts.

For the step `θ ← θ - δ` on a batch with gradient `∇` and exact curvature
`F` (the Fisher, equal to the Gauss-Newton matrix for the usual losses),

    M(δ) = ½ δᵀ (F + λ I) δ - ∇ᵀ δ

is the damped quadratic model of the change in loss. Martens & Grosse
(2015) take `δ = α Δ + μ v` with `Δ = F̂⁻¹ ∇` the K-FAC direction and `v`
the previous update, and choose `α` and `μ` to minimize `M` (§7); the
damping `λ` follows the Levenberg-Marquardt rule on the reduction ratio

    ρ = (h(θ - δ) - h(θ)) / M₀(δ),

`M₀` the model without `λ` (§6.5): `λ ← ω λ` when `ρ > ¾`, `λ ← λ / ω`
when `ρ < ¼`. Everything here is a small tensor function of the inner
products `Cᵢⱼ = wᵢᵀ F wⱼ`, `Dᵢⱼ = wᵢᵀ wⱼ` and `bᵢ = ∇ᵀ wᵢ` of the vectors
`w = (Δ, v)`, of the losses before and after a step, and of `λ`; the
optimizer (`keras_kfac.KFAC(adaptive=True)`) keeps the state.
"""

from typing import NamedTuple

import tensorflow as tf

# Levenberg-Marquardt thresholds on ρ (Martens & Grosse 2015, §6.5).
LOWER_RATIO = 0.25
UPPER_RATIO = 0.75


def inner_product(x: list[tf.Tensor], y: list[tf.Tensor]) -> tf.Tensor:
    """`xᵀ y` of two vectors given as lists of tensors."""
    return tf.add_n([tf.reduce_sum(a * b) for a, b in zip(x, y)])


def coefficients_in_span(
    curvature: tf.Tensor,
    gradient: list[tf.Tensor],
    vectors: list[list[tf.Tensor]],
    damping: tf.Tensor,
    max_momentum: float | None = None,
    max_kl: float | None = None,
    fraction: tf.Tensor | float = 1.0,
) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """`step_coefficients` of `vectors = [Δ, v]`, each a list of tensors,
    from their exact curvature products `curvature = [wᵢᵀ F wⱼ]` and the
    `gradient` `∇` (a list of tensors alike), then `within_kl`, then
    scaled by `fraction ∈ [0, 1]` (the learning rate's share).

    Returns:
        `(w, M₀, clip)`: `w = (α, μ)`, the predicted change `M₀(w)` and
        the factor `clip ≤ 1` the trust region scaled `w` by.
    """
    products = [[inner_product(x, y) for y in vectors] for x in vectors]
    b = tf.stack([inner_product(gradient, w) for w in vectors])
    w, _ = step_coefficients(
        curvature,
        tf.stack([tf.stack(row) for row in products]),
        b,
        damping,
        max_momentum,
    )
    w, _, clip = within_kl(w, curvature, b, max_kl)
    w = tf.cast(fraction, tf.float32) * w
    return w, predicted_change(w, curvature, b), clip


def predicted_change(
    w: tf.Tensor, curvature: tf.Tensor, gradient_terms: tf.Tensor
) -> tf.Tensor:
    """`M₀(w) = ½ wᵀ C w - wᵀ b`, the change of the batch loss the
    undamped quadratic model predicts for the update `w = (α, μ)`."""
    w = tf.cast(w, tf.float32)
    curvature = tf.cast(curvature, tf.float32)
    b = tf.cast(gradient_terms, tf.float32)
    change = 0.5 * tf.tensordot(w, tf.linalg.matvec(curvature, w), 1)
    return change - tf.tensordot(w, b, 1)


def within_kl(
    w: tf.Tensor,
    curvature: tf.Tensor,
    gradient_terms: tf.Tensor,
    max_kl: float | None,
) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """`w` scaled into the trust region `½ δᵀ F δ ≤ max_kl`, `δ = w₀ Δ +
    w₁ v`, and `M₀` there.

    `½ δᵀ F δ = ½ wᵀ C w` is the second-order estimate of the KL divergence
    between the model's predictive distributions before and after the step,
    averaged over the batch (for the losses whose Gauss-Newton matrix is
    their Fisher). The minimizer of the batch's quadratic model fits the
    batch: with far more parameters than examples (a batch of 32) it can
    change the predictions by more than a nat while the loss of the batch
    falls as predicted (`ρ ≈ 1`) and the loss of every other batch rises.
    The bound keeps the step to what one batch can justify; scaling `w`
    keeps the ratio of `α` to `μ`, and `M₀` stays negative.

    Args:
        w: `(α, μ)`, shape `(2,)`.
        curvature: `C`, shape `(2, 2)`.
        gradient_terms: `b`, shape `(2,)`.
        max_kl: The radius `δ_KL > 0`, or `None` for no bound.

    Returns:
        `(w, M₀(w), clip)`, `clip = min(1, sqrt(δ_KL / ½ wᵀ C w))` (1
        without a bound).
    """
    w = tf.cast(w, tf.float32)
    curvature = tf.cast(curvature, tf.float32)
    b = tf.cast(gradient_terms, tf.float32)
    clip = tf.constant(1.0)
    if max_kl is not None:
        kl = 0.5 * tf.tensordot(w, tf.linalg.matvec(curvature, w), 1)
        clip = tf.minimum(1.0, tf.sqrt(max_kl / tf.maximum(kl, 1e-30)))
        w = clip * w
    return w, predicted_change(w, curvature, b), clip


def step_coefficients(
    curvature: tf.Tensor,
    inner: tf.Tensor,
    gradient_terms: tf.Tensor,
    damping: tf.Tensor,
    max_momentum: float | None = None,
) -> tuple[tf.Tensor, tf.Tensor]:
    """`(α, μ)` minimizing `M(α Δ + μ v)`, and `M₀` there.

    With `C_λ = C + λ D`, `M(w) = ½ wᵀ C_λ w - wᵀ b` for `w = (α, μ)`, so
    `w = C_λ⁻¹ b`. When `v` is zero (the first update) or parallel to `Δ`,
    `C_λ` is singular; then `μ = 0` and `α = b₀ / C_λ₀₀`.

    With `max_momentum`, `μ` is held to `[0, max_momentum]`: the minimizer
    of `M` on that strip. `M` is convex, so when the free `μ` lies outside
    the strip the constrained one is the nearer edge, with
    `α = (b₀ - μ C_λ₀₁) / C_λ₀₀` the best `α` for it. On a small batch
    the free `μ` follows the batch's noise (it undoes or repeats the
    previous update several times over, `|μ| > 1`), and the steps that
    fit one batch then raise the loss of the others.

    Args:
        curvature: `C`, shape `(2, 2)`.
        inner: `D`, shape `(2, 2)`.
        gradient_terms: `b`, shape `(2,)`.
        damping: `λ`, a scalar.
        max_momentum: The largest `μ`, or `None` for `μ` unconstrained.

    Returns:
        `w`, shape `(2,)`, and `M₀(w) = ½ wᵀ C w - wᵀ b`, the predicted
        change of the loss (negative when the model predicts a decrease).
    """
    curvature = tf.cast(curvature, tf.float32)
    damped = curvature + tf.cast(damping, tf.float32) * tf.cast(
        inner, tf.float32
    )
    b = tf.cast(gradient_terms, tf.float32)
    determinant = damped[0, 0] * damped[1, 1] - damped[0, 1] * damped[1, 0]
    # Singular when v = 0 or v ∥ Δ: the relative test keeps rounding of a
    # (near-)parallel pair from passing for a real second direction.
    scale = damped[0, 0] * damped[1, 1]
    two_dimensional = determinant > 1e-6 * scale
    safe = tf.where(two_dimensional, determinant, 1.0)
    alpha_2d = (damped[1, 1] * b[0] - damped[0, 1] * b[1]) / safe
    mu_2d = (damped[0, 0] * b[1] - damped[1, 0] * b[0]) / safe
    if max_momentum is not None:
        mu_bounded = tf.clip_by_value(mu_2d, 0.0, max_momentum)
        alpha_2d = tf.where(
            mu_bounded == mu_2d,
            alpha_2d,
            tf.math.divide_no_nan(
                b[0] - mu_bounded * damped[0, 1], damped[0, 0]
            ),
        )
        mu_2d = mu_bounded
    alpha_1d = tf.math.divide_no_nan(b[0], damped[0, 0])
    w = tf.where(
        two_dimensional,
        tf.stack([alpha_2d, mu_2d]),
        tf.stack([alpha_1d, 0.0]),
    )
    return w, predicted_change(w, curvature, b)


def reduction_ratio(
    loss_before: tf.Tensor, loss_after: tf.Tensor, predicted: tf.Tensor
) -> tf.Tensor:
    """`ρ = (h(θ - δ) - h(θ)) / M₀(δ)`: 1 when the model was exact."""
    return (
        tf.cast(loss_after, tf.float32) - tf.cast(loss_before, tf.float32)
    ) / tf.cast(predicted, tf.float32)


def adapted_damping(
    damping: tf.Tensor, ratio: tf.Tensor, factor: float, minimum: float
) -> tf.Tensor:
    """The Levenberg-Marquardt rule: `λ ω` if `ρ > ¾`, `λ / ω` if `ρ < ¼`
    or `ρ` is not finite (the step made the loss non-finite), else `λ`;
    never below `minimum`.

    Args:
        damping: `λ`.
        ratio: `ρ`.
        factor: `ω ∈ (0, 1)`.
        minimum: The smallest damping returned.
    """
    damping = tf.cast(damping, tf.float32)
    ratio = tf.cast(ratio, tf.float32)
    finite = tf.math.is_finite(ratio)
    new = tf.where(
        tf.logical_or(tf.logical_not(finite), ratio < LOWER_RATIO),
        damping / factor,
        tf.where(ratio > UPPER_RATIO, damping * factor, damping),
    )
    return tf.maximum(new, minimum)


class Review(NamedTuple):
    """The verdict on an adaptive update (`review`).

    Attributes:
        rejected: Whether to undo the update.
        damping: `λ` for the next update.
        ratio: `ρ` of the update.
        ratio_counts: Whether `ρ` is one to report: the update was applied
            and `ρ` is finite.
    """

    rejected: tf.Tensor
    damping: tf.Tensor
    ratio: tf.Tensor
    ratio_counts: tf.Tensor


def review(
    loss_before: tf.Tensor,
    loss_after: tf.Tensor,
    predicted: tf.Tensor,
    damping: tf.Tensor,
    factor: float,
    minimum: float,
    adaptation_due: tf.Tensor,
) -> Review:
    """Judges an update from the batch loss before and after it.

    An update that predicted no change (`M₀ ≥ 0`: it was skipped) is left
    alone. One that raised the batch loss it was fitted to, or made it
    non-finite, is rejected and `λ` grows by `1/ω`; otherwise, when
    `adaptation_due`, `λ` follows `adapted_damping`.

    Args:
        loss_before: `h(θ)`.
        loss_after: `h(θ - δ)`.
        predicted: `M₀(δ)`.
        damping: `λ`.
        factor: `ω ∈ (0, 1)`.
        minimum: The smallest damping the adaptation returns.
        adaptation_due: Whether `λ` adapts on this update.
    """
    applied = predicted < 0.0
    ratio = reduction_ratio(loss_before, loss_after, predicted)
    rejected = tf.logical_and(
        applied,
        tf.logical_not(
            tf.cast(loss_after, tf.float32) <= tf.cast(loss_before, tf.float32)
        ),
    )
    adapted = adapted_damping(damping, ratio, factor, minimum)
    due = tf.logical_and(applied, adaptation_due)
    new_damping = tf.where(
        rejected, damping / factor, tf.where(due, adapted, damping)
    )
    counts = tf.logical_and(applied, tf.math.is_finite(ratio))
    return Review(rejected, new_damping, ratio, counts)
