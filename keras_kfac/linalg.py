"""Pure tensor functions of K-FAC: eigen solves, damping, the KL-clip step.

Every function takes tensors and returns tensors; none owns state.

Notation (Martens & Grosse 2015, "Optimizing Neural Networks with
Kronecker-factored Approximate Curvature"): a layer's Fisher block is
approximated by `F̂ = A ⊗ G`, with `A = Q_A diag(λ_A) Q_Aᵀ` and
`G = Q_G diag(λ_G) Q_Gᵀ`. For a gradient written as a matrix `V` of shape
`(dim A, dim G)`, `(A ⊗ G) vec(X) = vec(A X G)` (row-major `vec`), so any
damped Kronecker system diagonal in the eigenbases is solved by

    X = Q_A [(Q_Aᵀ V Q_G) / D] Q_Gᵀ

for an elementwise divisor `D` of shape `(dim A, dim G)`. Factored
damping instead keeps the explicit inverses of the damped factors, and
solves with two matmuls, `X = (A + π√λ I)⁻¹ V (G + √λ/π I)⁻¹`.
"""

import tensorflow as tf

EIGEN = "eigen"
FACTORED = "factored"
DAMPING_MODES = (EIGEN, FACTORED)


def all_finite(tensors) -> tf.Tensor:
    """Whether every element of `tensors` is finite, from one sum.

    A NaN or an infinity in any element makes the float32 sum of all of
    them non-finite, so one reduction per tensor and one `is_finite` test
    replace an elementwise test of each (TensorFlow's boolean `reduce_all`
    is several times slower than a float sum). Finite elements can fail
    only if their sum overflows, near `3e38`, where whatever they feed is
    no more usable than a non-finite value.

    Args:
        tensors: A list of tensors of any float dtype.

    Returns:
        A boolean scalar; `True` for an empty list.
    """
    sums = [tf.reduce_sum(tf.cast(t, tf.float32)) for t in tensors]
    return tf.math.is_finite(tf.add_n(sums)) if sums else tf.constant(True)


def symmetric_eigh(M: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """Eigendecomposition of a symmetric positive semi-definite factor.

    Args:
        M: Square float32 matrix, symmetric up to roundoff.

    Returns:
        `(eigenvalues, eigenvectors, ok)`. Eigenvalues are clipped at zero:
        the factors are PSD by construction, so negative values are roundoff
        and would make `λ_A λ_Gᵀ + λ` vanish. `ok` is a boolean scalar, false
        when the input or the result is not finite (the caller then keeps
        its previous decomposition).
    """
    M = 0.5 * (M + tf.transpose(M))
    input_ok = all_finite([M])
    # eigh of a non-finite matrix is undefined; decompose a zero matrix
    # instead so the op itself never sees NaN.
    M = tf.where(input_ok, M, tf.zeros_like(M))
    eigenvalues, eigenvectors = tf.linalg.eigh(M)
    ok = tf.logical_and(input_ok, all_finite([eigenvalues, eigenvectors]))
    return tf.maximum(eigenvalues, 0.0), eigenvectors, ok


def factored_inverses(
    A: tf.Tensor, G: tf.Tensor, damping: tf.Tensor
) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """`((A + π√λ I)⁻¹, (G + √λ/π I)⁻¹, ok)` of factored damping.

    `π` is `pi_adjustment` of the factors' diagonals (their means are the
    mean eigenvalues). A diagonal factor given as the vector of its
    diagonal (an embedding's `A`, a normalization layer's `G`) gets the
    vector of its inverse's diagonal. `ok` is
    false when a factor or an inverse is not finite (the caller then keeps
    its previous inverses); a non-finite factor is inverted as the
    identity, so the op never sees NaN.
    """
    finite = all_finite([A, G])
    root = tf.sqrt(damping)
    eye_A, eye_G = _identity_like(A), _identity_like(G)
    A = _symmetric_or_identity(A, finite, eye_A)
    G = _symmetric_or_identity(G, finite, eye_G)
    pi = pi_adjustment(_diagonal(A), _diagonal(G))
    A_inverse = _damped_inverse(A, pi * root, eye_A)
    G_inverse = _damped_inverse(G, root / pi, eye_G)
    ok = tf.logical_and(finite, all_finite([A_inverse, G_inverse]))
    return A_inverse, G_inverse, ok


def _diagonal(M: tf.Tensor) -> tf.Tensor:
    return M if M.shape.rank == 1 else tf.linalg.diag_part(M)


def _identity_like(M: tf.Tensor) -> tf.Tensor | None:
    """The identity matrix of `M`'s shape, `None` for a diagonal factor
    (a vector). Sized from the static shape where there is one, which
    traces a few ops instead of the dozen of a dynamic `tf.eye`."""
    if M.shape.rank == 1:
        return None
    size = M.shape[0] if M.shape[0] is not None else tf.shape(M)[0]
    return tf.eye(size, dtype=M.dtype)


def _symmetric_or_identity(
    M: tf.Tensor, finite: tf.Tensor, eye: tf.Tensor | None
) -> tf.Tensor:
    """`M` symmetrized, or the identity `eye` where the factors are not
    finite; a diagonal factor (a vector) stays a vector."""
    if M.shape.rank == 1:
        return tf.where(finite, M, tf.ones_like(M))
    return tf.where(finite, 0.5 * (M + tf.transpose(M)), eye)


def _damped_inverse(
    M: tf.Tensor, damping: tf.Tensor, eye: tf.Tensor | None
) -> tf.Tensor:
    """`(M + damping I)⁻¹` (`eye` is `I`), elementwise for a diagonal
    factor.

    `M + damping I` is symmetric positive definite (a PSD factor plus a
    positive damping), so the inverse is solved from its Cholesky factor,
    in about two thirds of the time of a general (LU) inverse. When
    roundoff makes the matrix indefinite, TensorFlow's Cholesky returns
    NaN, and the caller's finiteness test keeps the previous inverse.
    """
    if M.shape.rank == 1:
        return 1.0 / (M + damping)
    return tf.linalg.cholesky_solve(tf.linalg.cholesky(M + damping * eye), eye)


def pi_adjustment(
    eigenvalues_A: tf.Tensor, eigenvalues_G: tf.Tensor
) -> tf.Tensor:
    """π of factored Tikhonov damping (Martens & Grosse 2015, §6.3).

    `π = sqrt((tr(A) / dim A) / (tr(G) / dim G))`, the trace-norm choice that
    splits the damping between the two factors. Returns 1 when either trace
    is zero, where the ratio is undefined.
    """
    mean_A = tf.reduce_mean(eigenvalues_A)
    mean_G = tf.reduce_mean(eigenvalues_G)
    defined = tf.logical_and(mean_A > 0.0, mean_G > 0.0)
    ratio = tf.math.divide_no_nan(mean_A, mean_G)
    return tf.where(defined, tf.sqrt(ratio), tf.ones_like(ratio))


def damped_eigenvalues(
    eigenvalues_A: tf.Tensor,
    eigenvalues_G: tf.Tensor,
    damping: tf.Tensor,
    mode: str,
) -> tf.Tensor:
    """The divisor `D` of the damped Kronecker solve, shape `(dim A, dim G)`.

    Args:
        eigenvalues_A: `λ_A`, shape `(dim A,)`.
        eigenvalues_G: `λ_G`, shape `(dim G,)`.
        damping: `λ`, a scalar.
        mode: `"eigen"` solves `(A ⊗ G + λ I) x = v` exactly, so
            `D = λ_A λ_Gᵀ + λ`. `"factored"` solves
            `((A + π√λ I) ⊗ (G + √λ/π I)) x = v`, so
            `D = (λ_A + π√λ)(λ_G + √λ/π)ᵀ`.

    Returns:
        The elementwise divisor.
    """
    if mode == EIGEN:
        return eigenvalues_A[:, None] * eigenvalues_G[None, :] + damping
    if mode == FACTORED:
        pi = pi_adjustment(eigenvalues_A, eigenvalues_G)
        root = tf.sqrt(damping)
        return (eigenvalues_A + pi * root)[:, None] * (
            eigenvalues_G + root / pi
        )[None, :]
    raise ValueError(
        f"damping_mode must be one of {DAMPING_MODES}. Received: {mode!r}"
    )


def to_eigenbases(
    eigenvectors_A: tf.Tensor | None,
    eigenvectors_G: tf.Tensor | None,
    V: tf.Tensor,
    inverse: bool = False,
) -> tf.Tensor:
    """`Q_Aᵀ V Q_G`, or back, `Q_A V Q_Gᵀ`, with `inverse`. `None` is the
    identity: the eigenbasis of a factor kept as its diagonal."""
    if eigenvectors_A is not None:
        V = tf.matmul(eigenvectors_A, V, transpose_a=not inverse)
    if eigenvectors_G is not None:
        V = tf.matmul(V, eigenvectors_G, transpose_b=inverse)
    return V


def kronecker_solve(
    eigenvectors_A: tf.Tensor | None,
    eigenvectors_G: tf.Tensor | None,
    divisor: tf.Tensor,
    V: tf.Tensor,
) -> tf.Tensor:
    """`X = Q_A [(Q_Aᵀ V Q_G) / D] Q_Gᵀ`: the damped natural-gradient block
    (`None` for the identity eigenbasis of a diagonal factor)."""
    rotated = to_eigenbases(eigenvectors_A, eigenvectors_G, V)
    return to_eigenbases(
        eigenvectors_A, eigenvectors_G, rotated / divisor, inverse=True
    )


def running_average(
    average: tf.Tensor, batch: tf.Tensor, decay: tf.Tensor
) -> tf.Tensor:
    """Exponential moving average `decay · average + (1 - decay) · batch`."""
    return decay * average + (1.0 - decay) * batch


def warm_start_decay(stats_decay: float, updates: tf.Tensor) -> tf.Tensor:
    """`min(stats_decay, k / (k + 1))` after `k` earlier updates.

    The first updates then average the batches seen so far exactly instead of
    shrinking them towards the zero initial value of the running factors.
    """
    k = tf.cast(updates, tf.float32)
    return tf.minimum(tf.constant(stats_decay, tf.float32), k / (k + 1.0))


def kl_clip_learning_rate(
    learning_rate: tf.Tensor, kl_clip: float | None, quadratic: tf.Tensor
) -> tf.Tensor:
    """Trust-region step size of ACKTR (Wu et al. 2017, §3.1).

    `η = min(η_max, sqrt(2δ / (Δᵀ F̂ Δ)))` where `Δ = F̂⁻¹ ∇` is the
    preconditioned gradient, so `Δᵀ F̂ Δ = ∇ᵀ Δ` (`quadratic`). The step
    `η Δ` then has a second-order KL estimate `½ η² Δᵀ F̂ Δ ≤ δ`.

    Args:
        learning_rate: `η_max`.
        kl_clip: `δ`, or `None` for no clipping.
        quadratic: `∇ᵀ Δ`, summed over all layers.

    Returns:
        `η` as a float32 scalar.
    """
    learning_rate = tf.cast(learning_rate, tf.float32)
    if kl_clip is None:
        return learning_rate
    bound = tf.sqrt(
        tf.math.divide_no_nan(2.0 * tf.constant(kl_clip, tf.float32), quadratic)
    )
    return tf.where(
        quadratic > 0.0, tf.minimum(learning_rate, bound), learning_rate
    )
