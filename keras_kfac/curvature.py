"""Kronecker factors of one layer: batch estimates of `A` and `G`.

For a layer with kernel `W` and bias `b`, `a` is the layer input with a
homogeneous 1 appended (the bias folded in), `s` the pre-activation and
`g = n · ∂L/∂s` the per-example gradient of a mean-reduced loss over a batch
of `n` examples. The Fisher block of `[W; b]` is approximated by `A ⊗ G` with
`A = E[a aᵀ]` and `G = E[g gᵀ]` (Martens & Grosse 2015, eq. 1).

Convolutions (Grosse & Martens 2016, "A Kronecker-factored approximate Fisher
matrix for convolution layers"): `a` ranges over the `T` image patches a
filter sees and `g` over the `T` output positions. Under spatial homogeneity
and spatially uncorrelated derivatives, `F ≈ T · Ω ⊗ Γ` where `Ω` and `Γ`
average over positions. Here `A = Ω` and `G = T · Γ`, which for `T = 1` (a
Dense layer on a batch of vectors) reduces to the formulas above.

Embeddings: `a` is the one-hot row `e_t` of each token, so `A = diag(a)`
with `a` the token frequencies over the (example, position) rows, and `g`
ranges over the positions as for a Dense layer on sequences.

These functions are pure; the layers in `keras_kfac.layers` call them from
their forward and backward passes and store the results.
"""

import math

import tensorflow as tf

from keras_kfac import linalg


def _append_homogeneous(a: tf.Tensor) -> tf.Tensor:
    ones = tf.ones_like(a[:, :1])
    return tf.concat([a, ones], axis=1)


def input_factor(a: tf.Tensor, use_bias: bool) -> tf.Tensor:
    """`A = E[a aᵀ]` over the rows of `a`, shape `(rows, d_in)`.

    Each row is one (example, position) pair; with `use_bias` the homogeneous
    coordinate is appended, making `A` of shape `(d_in + 1, d_in + 1)`.
    """
    a = tf.cast(a, tf.float32)
    if use_bias:
        a = _append_homogeneous(a)
    rows = tf.cast(tf.shape(a)[0], tf.float32)
    return tf.matmul(a, a, transpose_a=True) / rows


def token_frequencies(ids: tf.Tensor, vocabulary: int) -> tf.Tensor:
    """The diagonal `a` of an embedding's `A = E[e_t e_tᵀ]`: how often each
    of the `vocabulary` tokens occurs among the rows (every position of
    every example), divided by the number of rows; shape `(vocabulary,)`."""
    ids = tf.reshape(tf.cast(ids, tf.int32), (-1,))
    counts = tf.math.bincount(
        ids, minlength=vocabulary, maxlength=vocabulary, dtype=tf.float32
    )
    return counts / tf.cast(tf.size(ids), tf.float32)


def dense_inputs(x: tf.Tensor) -> tf.Tensor:
    """Rows of `a` for a Dense layer: all leading axes become rows."""
    return tf.reshape(x, (-1, tf.shape(x)[-1]))


def conv2d_patches(
    x: tf.Tensor,
    kernel_size: tuple[int, int],
    strides: tuple[int, int],
    dilation_rate: tuple[int, int],
    padding: str,
    data_format: str,
) -> tf.Tensor:
    """Rows of `a` for a Conv2D layer: one flattened patch per output position.

    The patch layout `(kh, kw, c_in)` matches the Keras kernel layout
    `(kh, kw, c_in, c_out)` reshaped to `(kh · kw · c_in, c_out)`.
    """
    if data_format == "channels_first":
        x = tf.transpose(x, (0, 2, 3, 1))
    patches = tf.image.extract_patches(
        tf.cast(x, tf.float32),
        sizes=(1, *kernel_size, 1),
        strides=(1, *strides, 1),
        rates=(1, *dilation_rate, 1),
        padding=padding.upper(),
    )
    return tf.reshape(patches, (-1, tf.shape(patches)[-1]))


def conv1d_patches(
    x: tf.Tensor,
    kernel_size: int,
    stride: int,
    dilation_rate: int,
    padding: str,
    data_format: str,
) -> tf.Tensor:
    """Rows of `a` for a Conv1D layer: one flattened window per output
    position, laid out `(k, c_in)` as the Keras kernel `(k, c_in, c_out)`.

    The sequence is a one-row image for `conv2d_patches`; `"causal"`
    padding is the left padding of `dilation_rate · (k - 1)` steps that
    Keras applies before a `"valid"` convolution.
    """
    if data_format == "channels_first":
        x = tf.transpose(x, (0, 2, 1))
    if padding == "causal":
        x = tf.pad(x, ((0, 0), (dilation_rate * (kernel_size - 1), 0), (0, 0)))
        padding = "valid"
    return conv2d_patches(
        x[:, None],
        (1, kernel_size),
        (1, stride),
        (1, dilation_rate),
        padding,
        "channels_last",
    )


def output_factor(
    ds: tf.Tensor, batch_size: tf.Tensor, num_replicas: int, channels_axis: int
) -> tf.Tensor:
    """`G = (1/n) Σ_{i,t} g gᵀ` with `g = n · ∂L/∂s`, shape `(d_out, d_out)`.

    Args:
        ds: `∂L/∂s` of this replica's share of the loss.
        batch_size: Examples on this replica.
        num_replicas: Replicas in sync. Keras divides each replica's loss by
            the number of replicas, so the global batch `n` is
            `batch_size · num_replicas` and `g = n · ds`.
        channels_axis: The axis of `ds` holding the `d_out` outputs.
    """
    ds = tf.cast(ds, tf.float32)
    if channels_axis != -1 and channels_axis != len(ds.shape) - 1:
        ds = tf.experimental.numpy.moveaxis(ds, channels_axis, -1)
    ds = tf.reshape(ds, (-1, tf.shape(ds)[-1]))
    n_local = tf.cast(batch_size, tf.float32)
    n_global = n_local * num_replicas
    # (1/n_local) Σ (n_global ds)(n_global ds)ᵀ; averaging that over the
    # replicas gives (1/n_global) Σ_all g gᵀ.
    return tf.matmul(ds, ds, transpose_a=True) * (n_global * n_global / n_local)


def scale_shift_factor(
    x_hat: tf.Tensor,
    ds: tf.Tensor,
    parameter_axes: list[int],
    scale: bool,
    shift: bool,
    num_replicas: int,
) -> tf.Tensor:
    """`f = E[g ⊙ g]`, the diagonal Fisher of a normalization layer's
    `[γ, β]` from per-example gradients `g = n · [Σ x̂ ⊙ ds, Σ ds]`.

    Args:
        x_hat: The normalized input `x̂`.
        ds: `∂L/∂s` at the output `s = x̂ γ + β`, this replica's share.
        parameter_axes: The axes of `x̂` that `γ` and `β` span; every
            other axis but the batch shares them and is summed in each
            example's gradient. `γ` is laid out over them row-major in
            increasing axis order, as Keras reshapes it onto the input.
        scale, shift: Whether `γ`, `β` are in the block (in that order).
        num_replicas: Replicas in sync (as in `output_factor`).
    """
    ds = tf.cast(ds, tf.float32)
    x_hat = tf.cast(x_hat, tf.float32)
    rank = len(ds.shape)
    shared = [a for a in range(1, rank) if a not in parameter_axes]
    n_local = tf.shape(ds)[0]
    parts = []
    if scale:
        parts.append(tf.reduce_sum(x_hat * ds, axis=shared))
    if shift:
        parts.append(tf.reduce_sum(ds, axis=shared))
    g = tf.concat(
        [tf.reshape(p, (n_local, -1)) for p in parts],
        axis=1,
    )
    n_local = tf.cast(n_local, tf.float32)
    n_global = n_local * num_replicas
    return tf.reduce_sum(tf.square(g), axis=0) * (n_global * n_global / n_local)


class KroneckerBlock:
    """One layer's K-FAC block `F̂ = A ⊗ G` and the algebra on it.

    Maps the layer's `(kernel, bias)` gradients to and from the matrix
    `V = [∇W; ∇b]` of shape `(dim A, dim G)`: the kernel gradient with every
    axis but the last flattened (Dense `(d_in, d_out)`, Conv1D
    `(k · c_in, c_out)`, Conv2D `(kh · kw · c_in, c_out)`) and the bias
    gradient as an extra row. Given the optimizer's state of the block (the
    running factors and what a refresh derived from them), solves the
    damped system and measures `vec(V)ᵀ F̂ vec(V)`; `(A ⊗ G) vec(V) =
    vec(A V G)`. A factor that is diagonal by construction is kept as the
    vector of its diagonal (`diagonal_A`, `diagonal_G`), its eigenbasis is
    the identity, and its products are row or column scalings.

    Args:
        layer: The `keras_kfac` layer whose statistics feed this block.
        kernel_index: Position of the kernel in the optimizer's variables.
        bias_index: Position of the bias, or `None` without a bias.
    """

    diagonal_A = False
    diagonal_G = False

    def __init__(self, layer, kernel_index: int, bias_index: int | None):
        self.layer = layer
        self.kernel_index = kernel_index
        self.bias_index = bias_index
        self.kernel_shape = tuple(layer.kfac_kernel.shape)
        self.dim_A, self.dim_G = self.dimensions(
            self.kernel_shape, bias_index is not None
        )

    @staticmethod
    def dimensions(kernel_shape, has_bias: bool) -> tuple[int, int]:
        """`(dim A, dim G)` of a layer's kernel shape and bias."""
        return math.prod(kernel_shape[:-1]) + has_bias, int(kernel_shape[-1])

    @property
    def A_shape(self) -> tuple[int, ...]:
        return (self.dim_A,) if self.diagonal_A else (self.dim_A, self.dim_A)

    @property
    def G_shape(self) -> tuple[int, ...]:
        return (self.dim_G,) if self.diagonal_G else (self.dim_G, self.dim_G)

    def gradient_matrix(
        self, kernel_grad: tf.Tensor, bias_grad: tf.Tensor | None
    ) -> tf.Tensor:
        V = tf.reshape(tf.cast(kernel_grad, tf.float32), (-1, self.dim_G))
        if bias_grad is not None:
            V = tf.concat([V, tf.cast(bias_grad, tf.float32)[None, :]], axis=0)
        return V

    def split(self, X: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor | None]:
        """Inverse of `gradient_matrix`: `(kernel_step, bias_step)`."""
        if self.bias_index is None:
            return tf.reshape(X, self.kernel_shape), None
        return tf.reshape(X[:-1], self.kernel_shape), X[-1]

    def refresh(self, state: dict, damping: tf.Tensor, mode: str):
        """What a refresh derives from the running factors `state["A"]`,
        `state["G"]`: `({name: new value}, ok)`, the names those of
        `state` that the mode keeps (`linalg.symmetric_eigh` or
        `linalg.factored_inverses`); `ok` is false when something is not
        finite, and the caller then keeps the previous values."""
        A = tf.convert_to_tensor(state["A"])
        G = tf.convert_to_tensor(state["G"])
        if mode == linalg.FACTORED:
            A_inverse, G_inverse, ok = linalg.factored_inverses(A, G, damping)
            return {"A_inverse": A_inverse, "G_inverse": G_inverse}, ok
        new, ok = {}, tf.constant(True)
        for name, factor, diagonal in (
            ("A", A, self.diagonal_A),
            ("G", G, self.diagonal_G),
        ):
            if diagonal:
                new[f"eigenvalues_{name}"] = tf.maximum(factor, 0.0)
                factor_ok = linalg.all_finite([factor])
            else:
                eigenvalues, Q, factor_ok = linalg.symmetric_eigh(factor)
                new[f"eigenvalues_{name}"], new[f"Q_{name}"] = eigenvalues, Q
            ok = tf.logical_and(ok, factor_ok)
        return new, ok

    def _left(self, M, V):
        """`M V`, `M` the `A`-side matrix or the vector of its diagonal."""
        if self.diagonal_A:
            return M[:, None] * V
        return tf.matmul(M, V)

    def _right(self, V, M):
        """`V M`, `M` the `G`-side matrix or the vector of its diagonal."""
        if self.diagonal_G:
            return V * M[None, :]
        return tf.matmul(V, M)

    def _eigenvectors(self, state):
        """`(Q_A, Q_G)`, `None` for a factor kept as its diagonal."""
        return tuple(
            None if diagonal else tf.convert_to_tensor(state[f"Q_{name}"])
            for name, diagonal in (
                ("A", self.diagonal_A),
                ("G", self.diagonal_G),
            )
        )

    def precondition(
        self, state: dict, V: tf.Tensor, damping: tf.Tensor, mode: str
    ) -> tf.Tensor:
        """`X` with `vec(X)` the damped `F̂⁻¹ vec(V)` of `mode`:
        `(A + π√λ I)⁻¹ V (G + √λ/π I)⁻¹` (`"factored"`) or
        `Q_A [(Q_Aᵀ V Q_G) / D] Q_Gᵀ` (`"eigen"`, `linalg.kronecker_solve`).
        """
        if mode == linalg.FACTORED:
            return self._right(
                self._left(tf.convert_to_tensor(state["A_inverse"]), V),
                tf.convert_to_tensor(state["G_inverse"]),
            )
        D = linalg.damped_eigenvalues(
            tf.convert_to_tensor(state["eigenvalues_A"]),
            tf.convert_to_tensor(state["eigenvalues_G"]),
            damping,
            mode,
        )
        return linalg.kronecker_solve(*self._eigenvectors(state), D, V)

    def curvature(self, state: dict, V: tf.Tensor, mode: str) -> tf.Tensor:
        """`vec(V)ᵀ F̂ vec(V)`, undamped: with `"eigen"`, of the
        decomposition the steps are preconditioned with, `Σ (Q_Aᵀ V Q_G)²
        ⊙ λ_A λ_Gᵀ`; with `"factored"`, of the current factors,
        `Σ V ⊙ (A V G)`."""
        if mode == linalg.FACTORED:
            AVG = self._right(
                self._left(tf.convert_to_tensor(state["A"]), V),
                tf.convert_to_tensor(state["G"]),
            )
            return tf.reduce_sum(V * AVG)
        curvature = (
            tf.convert_to_tensor(state["eigenvalues_A"])[:, None]
            * tf.convert_to_tensor(state["eigenvalues_G"])[None, :]
        )
        rotated = linalg.to_eigenbases(*self._eigenvectors(state), V)
        return tf.reduce_sum(tf.square(rotated) * curvature)


class DiagonalInputBlock(KroneckerBlock):
    """The block of an embedding table: `F̂ = diag(a) ⊗ G`.

    An embedding's input is a one-hot row `e_t` of the token `t`, so
    `A = E[e_t e_tᵀ] = diag(a)` with `a` the frequency of each token among
    the rows, and the table's gradient `V` (shape `(vocabulary, dim G)`)
    is preconditioned row by row: `X = [V / (a + π√λ)] (G + √λ/π I)⁻¹`
    (factored), or `X = [(V Q_G) / (a λ_Gᵀ + λ)] Q_Gᵀ` (eigen, exact).
    Rows of tokens absent from every batch so far have `a = 0` and are
    damped alone.
    """

    diagonal_A = True

    def precondition_touched_rows(self, state, V, damping, mode):
        """`precondition` of the rows of `V` that are not zero (the tokens
        of the batch), the others left zero: the same `X`, since the solve
        acts row by row, at the cost of the batch's tokens instead of the
        vocabulary's (`vocabulary · dim G²` for the product with `G⁻¹`).
        The number of rows is known only when the step runs, which XLA
        cannot compile."""
        rows = tf.where(tf.reduce_any(tf.not_equal(V, 0.0), axis=1))[:, 0]
        names = (
            ("A_inverse",) if mode == linalg.FACTORED else ("eigenvalues_A",)
        )
        touched = dict(state)
        for name in names:
            touched[name] = tf.gather(tf.convert_to_tensor(state[name]), rows)
        X = self.precondition(touched, tf.gather(V, rows), damping, mode)
        return tf.scatter_nd(rows[:, None], X, tf.shape(V, out_type=tf.int64))


class ScaleShiftBlock(KroneckerBlock):
    """The block of a normalization layer's scale `γ` and shift `β`:
    the diagonal of their Fisher, `F̂ = 1 ⊗ diag(f)`.

    `V = [∇γ, ∇β]` is one row (`dim A = 1`, `A = 1`), and `f = E[g ⊙ g]`
    over the examples of the per-example gradients `g = [Σ x̂ ⊙ s', Σ s']`
    (sums over the positions that share `γ` and `β`, `x̂` the normalized
    input and `s'` the gradient at the output): the exact diagonal of the
    (empirical or sampled) Fisher, so the step is `∇ / (f + λ)` (eigen),
    as for a diagonal natural gradient. Either variable may be absent.
    """

    diagonal_G = True

    def __init__(self, layer, kernel_index, bias_index):
        super().__init__(layer, kernel_index, bias_index)
        self.parameter_shape = self.kernel_shape
        self.kernel_size = math.prod(self.kernel_shape)

    @staticmethod
    def dimensions(kernel_shape, has_bias):
        return 1, math.prod(kernel_shape) * (1 + has_bias)

    def gradient_matrix(self, kernel_grad, bias_grad):
        parts = [tf.reshape(tf.cast(kernel_grad, tf.float32), (1, -1))]
        if bias_grad is not None:
            parts.append(tf.reshape(tf.cast(bias_grad, tf.float32), (1, -1)))
        return tf.concat(parts, axis=1) if len(parts) > 1 else parts[0]

    def split(self, X):
        kernel = tf.reshape(X[0, : self.kernel_size], self.parameter_shape)
        if self.bias_index is None:
            return kernel, None
        return kernel, tf.reshape(
            X[0, self.kernel_size :], self.parameter_shape
        )
