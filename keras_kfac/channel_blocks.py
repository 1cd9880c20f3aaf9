"""The K-FAC block of a depthwise convolution: one `A_c ⊗ G_c` per channel.

A depthwise kernel `W` of shape `(*kernel_size, C, M)` applies channel
`c`'s own `K × M` kernel `W_c` (`K = prod(kernel_size)`, `M` the depth
multiplier) to channel `c`'s patches, so its gradient is `C` independent
Kronecker-structured pieces: `∇W_c = Σ_t a_{c,t} g_{c,t}ᵀ` with `a_c` the
channel's patch (and a homogeneous 1 for the bias of its `M` outputs) and
`g_c` the gradient at those outputs. The block keeps the Fisher blocks of
the channels, approximated as in Grosse & Martens 2016 (KFC, with
K-FAC-expand over the positions), and drops the correlations between
channels:

    F̂ = ⊕_c A_c ⊗ G_c,   A_c = E[a_c a_cᵀ],   G_c = (1/n) Σ g_c g_cᵀ.

The factors are kept stacked, `A` of shape `(C, K (+1), K (+1))` and `G`
of shape `(C, M, M)`, and every product, eigendecomposition and inverse
acts on the leading channel axis as a batch (`tf.linalg`), so a layer
costs one batched op where a block per channel would cost `C` (and `C`
times the optimizer variables). With `M = 1` (Keras' default) `G_c` is a
scalar and the block is `⊕_c G_c A_c`. Factored damping takes `π` per
channel, from that channel's factors (Martens & Grosse 2015, §6.3).
"""

import math

import keras
import tensorflow as tf

from keras_kfac import linalg
from keras_kfac.blocks import (
    BlockState,
    Eigenbases,
    Inverses,
    KroneckerBlock,
    read,
)


def _transpose(M: tf.Tensor) -> tf.Tensor:
    return tf.linalg.matrix_transpose(M)


def _batched_eye(M: tf.Tensor) -> tf.Tensor:
    shape = tf.shape(M)
    return tf.eye(shape[-1], batch_shape=shape[:-2], dtype=M.dtype)


def batched_eigh(M: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """`linalg.symmetric_eigh` of every matrix of the stack `M`: `(λ, Q,
    ok)`, `ok` false when any input or result is not finite."""
    M = 0.5 * (M + _transpose(M))
    input_ok = linalg.all_finite([M])
    M = tf.where(input_ok, M, tf.zeros_like(M))
    eigenvalues, eigenvectors = tf.linalg.eigh(M)
    ok = tf.logical_and(
        input_ok, linalg.all_finite([eigenvalues, eigenvectors])
    )
    return tf.maximum(eigenvalues, 0.0), eigenvectors, ok


def batched_pi(A_diagonal: tf.Tensor, G_diagonal: tf.Tensor) -> tf.Tensor:
    """`linalg.pi_adjustment` per matrix of the stacks: shape `(C,)`."""
    mean_A = tf.reduce_mean(A_diagonal, axis=-1)
    mean_G = tf.reduce_mean(G_diagonal, axis=-1)
    defined = tf.logical_and(mean_A > 0.0, mean_G > 0.0)
    ratio = tf.math.divide_no_nan(mean_A, mean_G)
    return tf.where(defined, tf.sqrt(ratio), tf.ones_like(ratio))


def batched_factored_inverses(A, G, damping):
    """`linalg.factored_inverses` of every pair `(A_c, G_c)`, `π_c` from
    the pair: `(A_inverse, G_inverse, ok)`."""
    finite = linalg.all_finite([A, G])
    A = tf.where(finite, 0.5 * (A + _transpose(A)), _batched_eye(A))
    G = tf.where(finite, 0.5 * (G + _transpose(G)), _batched_eye(G))
    pi = batched_pi(tf.linalg.diag_part(A), tf.linalg.diag_part(G))
    root = tf.sqrt(damping)

    def damped_inverse(M, shift):
        eye = _batched_eye(M)
        M = M + shift[:, None, None] * eye
        return tf.linalg.cholesky_solve(tf.linalg.cholesky(M), eye)

    A_inverse = damped_inverse(A, pi * root)
    G_inverse = damped_inverse(G, root / pi)
    ok = tf.logical_and(finite, linalg.all_finite([A_inverse, G_inverse]))
    return A_inverse, G_inverse, ok


class _StackedIdentity(keras.initializers.Initializer):
    """`scale · I` for every matrix of a stack of shape `(C, d, d)`."""

    def __init__(self, scale: float = 1.0):
        self.scale = scale

    def __call__(self, shape, dtype=None):
        eye = tf.eye(shape[-1], batch_shape=shape[:-2], dtype=dtype)
        return self.scale * eye

    def get_config(self):
        return {"scale": self.scale}


class ChannelwiseKroneckerBlock(KroneckerBlock):
    """The block `⊕_c A_c ⊗ G_c` of a depthwise kernel (module docstring).

    `V` is the stack of the channels' `[∇W_c; ∇b_c]`, shape
    `(C, dim A, dim G)` with `dim A = K (+1)`, `dim G = M`; `channels` is
    `C`. The state and every solve are those of `KroneckerBlock`, one per
    matrix of the stack.
    """

    def __init__(self, layer, kernel_index, bias_index):
        super().__init__(layer, kernel_index, bias_index)
        self.channels = int(self.kernel_shape[-2])

    @staticmethod
    def dimensions(kernel_shape, has_bias):
        return math.prod(kernel_shape[:-2]) + has_bias, int(kernel_shape[-1])

    @staticmethod
    def stacked_shapes(kernel_shape, has_bias) -> tuple[tuple, tuple]:
        """The shapes of the stacked `A` and `G` of a kernel and bias."""
        dim_A, dim_G = ChannelwiseKroneckerBlock.dimensions(
            kernel_shape, has_bias
        )
        channels = int(kernel_shape[-2])
        return (channels, dim_A, dim_A), (channels, dim_G, dim_G)

    def create_state(self, add_variable, mode, damping):
        C, dim_A, dim_G = self.channels, self.dim_A, self.dim_G
        A = add_variable((C, dim_A, dim_A), "A", "zeros")
        G = add_variable((C, dim_G, dim_G), "G", "zeros")
        updates = add_variable((), "factor_updates", "zeros")
        if mode == linalg.FACTORED:
            scale = 1.0 / math.sqrt(damping) if damping > 0 else 1.0
            derived = Inverses(
                add_variable(
                    (C, dim_A, dim_A), "A_inverse", _StackedIdentity(scale)
                ),
                add_variable(
                    (C, dim_G, dim_G), "G_inverse", _StackedIdentity(scale)
                ),
            )
        else:
            derived = Eigenbases(
                add_variable((C, dim_A, dim_A), "Q_A", _StackedIdentity()),
                add_variable((C, dim_A), "eigenvalues_A", "zeros"),
                add_variable((C, dim_G, dim_G), "Q_G", _StackedIdentity()),
                add_variable((C, dim_G), "eigenvalues_G", "zeros"),
            )
        return BlockState(A, G, updates, derived)

    def gradient_matrix(self, kernel_grad, bias_grad):
        C, M = self.channels, self.dim_G
        kernel_grad = tf.cast(kernel_grad, tf.float32)
        V = tf.transpose(tf.reshape(kernel_grad, (-1, C, M)), (1, 0, 2))
        if bias_grad is not None:
            # A bias without a gradient arrives as zeros of shape (dim G,).
            bias = tf.reshape(tf.cast(bias_grad, tf.float32), (-1, 1, M))
            V = tf.concat([V, tf.broadcast_to(bias, (C, 1, M))], axis=1)
        return V

    def split(self, X):
        has_bias = self.bias_index is not None
        kernel = X[:, :-1] if has_bias else X
        kernel = tf.reshape(tf.transpose(kernel, (1, 0, 2)), self.kernel_shape)
        if not has_bias:
            return kernel, None
        return kernel, tf.reshape(X[:, -1], (-1,))

    def refresh(self, state, damping, mode):
        A = tf.convert_to_tensor(state.A)
        G = tf.convert_to_tensor(state.G)
        if mode == linalg.FACTORED:
            A_inverse, G_inverse, ok = batched_factored_inverses(A, G, damping)
            return Inverses(A_inverse, G_inverse), ok
        eigenvalues_A, Q_A, ok_A = batched_eigh(A)
        eigenvalues_G, Q_G, ok_G = batched_eigh(G)
        ok = tf.logical_and(ok_A, ok_G)
        return Eigenbases(Q_A, eigenvalues_A, Q_G, eigenvalues_G), ok

    def _solve(self, derived, V, damping, mode):
        if mode == linalg.FACTORED:
            return tf.matmul(tf.matmul(derived.A_inverse, V), derived.G_inverse)
        D = (
            derived.eigenvalues_A[:, :, None]
            * derived.eigenvalues_G[:, None, :]
            + damping
        )
        return linalg.kronecker_solve(derived.Q_A, derived.Q_G, D, V)

    def quadratic_form(self, state, V, mode):
        if mode == linalg.FACTORED:
            AVG = tf.matmul(
                tf.matmul(tf.convert_to_tensor(state.A), V),
                tf.convert_to_tensor(state.G),
            )
            return tf.reduce_sum(V * AVG)
        derived = read(state.derived)
        curvature = (
            derived.eigenvalues_A[:, :, None]
            * derived.eigenvalues_G[:, None, :]
        )
        rotated = linalg.to_eigenbases(derived.Q_A, derived.Q_G, V)
        return tf.reduce_sum(tf.square(rotated) * curvature)
