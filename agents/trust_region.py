"""The pieces of a TRPO step (Schulman et al. 2015, appendix C).

The step maximizes the linearized surrogate `gᵀΔ` subject to the quadratic
KL constraint `½ ΔᵀFΔ ≤ δ`, where `F` is the Hessian of the mean
`KL(π_old || π_θ)` at `θ_old` (the Fisher of the policy):

1. `x ≈ F⁻¹g` by conjugate gradient, which needs only products `Fv`;
2. `Fv` by double backprop: the gradient of `(∇_θ KL)ᵀ v`, plus `λv`
   (damping) so that CG works on a positive definite matrix;
3. the step `Δ = sqrt(2δ / xᵀFx) · x`, on the boundary of the trust region;
4. a backtracking line search that halves the step until the KL measured
   after it (and, for TRPO, the improvement) is acceptable.

Parameters travel as one flat vector here: `flatten` and `unflatten`
convert between it and the list of variables.
"""

from collections.abc import Callable, Sequence

import tensorflow as tf


def flatten(tensors: Sequence[tf.Tensor]) -> tf.Tensor:
    """Concatenates `tensors` into one vector."""
    return tf.concat([tf.reshape(t, [-1]) for t in tensors], axis=0)


def zeros_for_none(gradients, variables) -> list[tf.Tensor]:
    """`gradients` with zeros for the variables the output does not reach."""
    return [
        tf.zeros(v.shape) if g is None else g
        for g, v in zip(gradients, variables)
    ]


def unflatten(vector: tf.Tensor, like: Sequence) -> list[tf.Tensor]:
    """Splits `vector` into tensors shaped like the variables in `like`."""
    sizes = [v.shape.num_elements() for v in like]
    if int(vector.shape[0]) != sum(sizes):
        raise ValueError(
            f"vector has {vector.shape[0]} entries; the variables have "
            f"{sum(sizes)}"
        )
    parts = tf.split(vector, sizes)
    return [tf.reshape(p, v.shape) for p, v in zip(parts, like)]


def conjugate_gradient(
    matvec: Callable[[tf.Tensor], tf.Tensor],
    b: tf.Tensor,
    max_iterations: int = 10,
    residual_tolerance: float = 1e-10,
) -> tf.Tensor:
    """`x ≈ A⁻¹b` for a symmetric positive definite `A` given as `matvec`.

    Starts from `x = 0` and stops after `max_iterations` products or once the
    squared residual `‖b - Ax‖²` is at most `residual_tolerance`.
    """
    if max_iterations < 1:
        raise ValueError(
            f"max_iterations must be >= 1. Received: {max_iterations}"
        )
    b = tf.convert_to_tensor(b)
    x = tf.zeros_like(b)
    r = b
    p = b
    rr = tf.tensordot(r, r, 1)

    def keep_going(i, x, r, p, rr):
        return tf.logical_and(i < max_iterations, rr > residual_tolerance)

    def iterate(i, x, r, p, rr):
        ap = matvec(p)
        alpha = rr / tf.tensordot(p, ap, 1)
        x = x + alpha * p
        r = r - alpha * ap
        rr_next = tf.tensordot(r, r, 1)
        p = r + (rr_next / rr) * p
        return i + 1, x, r, p, rr_next

    _, x, _, _, _ = tf.while_loop(
        keep_going, iterate, (tf.constant(0), x, r, p, rr)
    )
    return x


def fisher_vector_product(
    mean_kl: Callable[[], tf.Tensor],
    variables: Sequence[tf.Variable],
    damping: float,
) -> Callable[[tf.Tensor], tf.Tensor]:
    """`v ↦ Fv + λv`, `F` the Hessian of `mean_kl()` in `variables`.

    `mean_kl` recomputes `KL(π_old || π_θ)` from the current variables with
    `π_old` held constant; at `θ = θ_old` its Hessian is the Fisher.
    """

    def product(v: tf.Tensor) -> tf.Tensor:
        with tf.GradientTape() as outer:
            with tf.GradientTape() as inner:
                kl = mean_kl()
            gradient = flatten(
                zeros_for_none(inner.gradient(kl, variables), variables)
            )
            gradient_dot_v = tf.tensordot(gradient, tf.stop_gradient(v), 1)
        hessian_v = outer.gradient(gradient_dot_v, variables)
        return flatten(zeros_for_none(hessian_v, variables)) + damping * v

    return product


def trust_region_step(
    direction: tf.Tensor, f_direction: tf.Tensor, max_kl: float
) -> tf.Tensor:
    """`sqrt(2δ / xᵀFx) · x`: the step along `x` whose `½ ΔᵀFΔ` is `δ`."""
    curvature = tf.tensordot(direction, f_direction, 1)
    return tf.sqrt(2.0 * max_kl / tf.maximum(curvature, 1e-20)) * direction


def backtracking_line_search(
    parameters: Sequence[tf.Variable],
    old: Sequence[tf.Tensor],
    steps: Sequence[tf.Tensor],
    acceptable: Callable[[tf.Tensor], tuple[tf.Tensor, tf.Tensor]],
    max_tries: int,
) -> tuple[tf.Tensor, tf.Tensor]:
    """Keeps the longest acceptable step `θ_old + 2⁻ᵏ Δ`, `k < max_tries`.

    Expects `parameters` to hold the full step `old + steps` already, so a
    step that is acceptable as taken is kept bit for bit. Otherwise the
    step is halved until `acceptable(2⁻ᵏ)`, evaluated at the current
    parameters, holds; if it holds for none of the `max_tries` steps, the
    parameters go back to `old`. `acceptable` returns `(ok, kl)`, `kl` the
    mean `KL(π_old || π)` it measured at the current parameters, so that
    the caller need not measure the kept step again.

    Returns:
        `(fraction, kl)`: the kept fraction `2⁻ᵏ` and the KL measured at
        it, or `(0.0, 0.0)` when every step was rejected (`θ_old` is kept,
        and `KL(π_old || π_old) = 0`).
    """
    accepted = tf.constant(0.0)
    kept_kl = tf.constant(0.0)
    fraction = tf.constant(1.0)
    for _ in tf.range(max_tries):
        ok, kl = acceptable(fraction)
        if ok:
            accepted = fraction
            kept_kl = kl
            break
        fraction = 0.5 * fraction
        for p, p_old, step in zip(parameters, old, steps):
            p.assign(p_old + tf.cast(fraction, p.dtype) * step)
    if accepted == 0.0:
        for p, p_old in zip(parameters, old):
            p.assign(p_old)
    return accepted, kept_kl
