"""K-FAC blocks: one layer's curvature `F̂ = A ⊗ G`, its state, its algebra.

Each block owns a typed state (`BlockState`): the running factors `A`, `G`
(the batch estimates of `keras_kfac.curvature`, averaged over updates) and
what a refresh derives from them for the damping mode: the eigenbases
(`Eigenbases`, mode `"eigen"`) or the damped factors' inverses
(`Inverses`, mode `"factored"`). With it a block solves the damped system
(`precondition`) and measures `vec(V)ᵀ F̂ vec(V)` (`quadratic_form`), where
`(A ⊗ G) vec(V) = vec(A V G)` (Martens & Grosse 2015, §3-6).

The public methods handle the damping and the mode; subclasses change the
layer-specific algebra: a factor that is diagonal by construction is kept
as the vector of its diagonal (`diagonal_A`, `diagonal_G`), its eigenbasis
is the identity, and its products are row or column scalings.

The state's variables are created through the optimizer (`create_state`),
so they are saved with it; a block changes them only through the assign
function the optimizer passes (`keras_kfac.estimator`).
"""

import dataclasses
import math
from collections.abc import Callable
from typing import NamedTuple

import keras
import tensorflow as tf

from keras_kfac import linalg, xla


class Eigenbases(NamedTuple):
    """What an `"eigen"` refresh derives: `A = Q_A diag(λ_A) Q_Aᵀ`,
    `G = Q_G diag(λ_G) Q_Gᵀ`. `Q` is `None` for a factor kept as its
    diagonal (its eigenbasis is the identity, its eigenvalues its
    diagonal)."""

    Q_A: tf.Tensor | None
    eigenvalues_A: tf.Tensor
    Q_G: tf.Tensor | None
    eigenvalues_G: tf.Tensor


class Inverses(NamedTuple):
    """What a `"factored"` refresh derives: `(A + π√λ I)⁻¹` and
    `(G + √λ/π I)⁻¹` (the vectors of their diagonals for a diagonal
    factor)."""

    A_inverse: tf.Tensor
    G_inverse: tf.Tensor


Derived = Eigenbases | Inverses


@dataclasses.dataclass(frozen=True)
class BlockState:
    """The optimizer's variables for one block.

    Attributes:
        A: The running `A = E[a aᵀ]` (its diagonal if `diagonal_A`).
        G: The running `G = E[g gᵀ]` (its diagonal if `diagonal_G`).
        updates: How many batches were folded into `A` and `G`.
        derived: The latest refresh's `Eigenbases` or `Inverses`, as
            variables.
    """

    A: keras.Variable
    G: keras.Variable
    updates: keras.Variable
    derived: Eigenbases | Inverses


def read(derived: Derived) -> Derived:
    """The values of `derived`'s variables, in a tuple of the same type."""
    return type(derived)(
        *(None if v is None else tf.convert_to_tensor(v) for v in derived)
    )


# `add_variable(shape, name, initializer)`, the optimizer's.
AddVariable = Callable[[tuple, str, object], keras.Variable]


class KroneckerBlock:
    """One layer's K-FAC block `F̂ = A ⊗ G` and the algebra on it.

    Maps the layer's `(kernel, bias)` gradients to and from the matrix
    `V = [∇W; ∇b]` of shape `(dim A, dim G)`: the kernel gradient with every
    axis but the last flattened (Dense `(d_in, d_out)`, Conv1D
    `(k · c_in, c_out)`, Conv2D `(kh · kw · c_in, c_out)`) and the bias
    gradient as an extra row.

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
        self.dim_A, self.dim_G = layer.kfac_dimensions()

    @staticmethod
    def dimensions(kernel_shape, has_bias: bool) -> tuple[int, int]:
        """`(dim A, dim G)` of a layer's kernel shape and bias."""
        return math.prod(kernel_shape[:-1]) + has_bias, int(kernel_shape[-1])

    @classmethod
    def factor_shapes(cls, dim_A: int, dim_G: int) -> tuple[tuple, tuple]:
        """The shapes `A` and `G` are kept in: a matrix, or the vector of
        its diagonal."""
        return (
            (dim_A,) if cls.diagonal_A else (dim_A, dim_A),
            (dim_G,) if cls.diagonal_G else (dim_G, dim_G),
        )

    def create_state(
        self, add_variable: AddVariable, mode: str, damping: float
    ) -> BlockState:
        """Creates the block's variables, in a fixed order (optimizers save
        their variables by position): `A`, `G`, the update count, then the
        derived ones of `mode`. Before the first refresh, both modes
        divide by `λ` (`damping`, the initial one)."""
        A_shape, G_shape = self.factor_shapes(self.dim_A, self.dim_G)
        A = add_variable(A_shape, "A", "zeros")
        G = add_variable(G_shape, "G", "zeros")
        updates = add_variable((), "factor_updates", "zeros")
        if mode == linalg.FACTORED:
            scale = 1.0 / math.sqrt(damping) if damping > 0 else 1.0

            def inverse(shape, name, diagonal):
                initializer = (
                    keras.initializers.Constant(scale)
                    if diagonal
                    else keras.initializers.Identity(scale)
                )
                return add_variable(shape, name, initializer)

            derived = Inverses(
                inverse(A_shape, "A_inverse", self.diagonal_A),
                inverse(G_shape, "G_inverse", self.diagonal_G),
            )
        else:
            parts = []
            for name, dim, diagonal in (
                ("A", self.dim_A, self.diagonal_A),
                ("G", self.dim_G, self.diagonal_G),
            ):
                parts.append(
                    None
                    if diagonal
                    else add_variable((dim, dim), f"Q_{name}", "identity")
                )
                parts.append(
                    add_variable((dim,), f"eigenvalues_{name}", "zeros")
                )
            derived = Eigenbases(*parts)
        return BlockState(A, G, updates, derived)

    @property
    def variable_indices(self) -> tuple:
        """Positions of the layer's `kfac_variables` in the optimizer's
        variables (`None` for an absent one), in the order
        `gradient_matrix` takes their gradients and `split` returns their
        steps; the kernel's first."""
        return (self.kernel_index, self.bias_index)

    def gradient_matrix(
        self, kernel_grad: tf.Tensor, bias_grad: tf.Tensor | None
    ) -> tf.Tensor:
        """`V = [∇W; ∇b]`, float32."""
        V = tf.reshape(tf.cast(kernel_grad, tf.float32), (-1, self.dim_G))
        if bias_grad is not None:
            V = tf.concat([V, tf.cast(bias_grad, tf.float32)[None, :]], axis=0)
        return V

    def split(self, X: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor | None]:
        """Inverse of `gradient_matrix`: `(kernel_step, bias_step)`."""
        if self.bias_index is None:
            return tf.reshape(X, self.kernel_shape), None
        return tf.reshape(X[:-1], self.kernel_shape), X[-1]

    def refresh(
        self, state: BlockState, damping: tf.Tensor, mode: str
    ) -> tuple[Derived, tf.Tensor]:
        """What a refresh derives from the running factors: `(derived,
        ok)`, `derived` of the type of `state.derived`
        (`linalg.symmetric_eigh` or `linalg.factored_inverses`, `None`
        where the state has no variable); `ok` is false when something is
        not finite, and the caller then keeps the previous values."""
        A = tf.convert_to_tensor(state.A)
        G = tf.convert_to_tensor(state.G)
        if mode == linalg.FACTORED:
            A_inverse, G_inverse, ok = linalg.factored_inverses(A, G, damping)
            return Inverses(A_inverse, G_inverse), ok
        parts, ok = [], tf.constant(True)
        for factor, diagonal in ((A, self.diagonal_A), (G, self.diagonal_G)):
            if diagonal:
                parts += [None, tf.maximum(factor, 0.0)]
                factor_ok = linalg.all_finite([factor])
            else:
                eigenvalues, Q, factor_ok = linalg.symmetric_eigh(factor)
                parts += [Q, eigenvalues]
            ok = tf.logical_and(ok, factor_ok)
        return Eigenbases(*parts), ok

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

    def precondition(
        self, state: BlockState, V: tf.Tensor, damping: tf.Tensor, mode: str
    ) -> tf.Tensor:
        """`X` with `vec(X)` the damped `F̂⁻¹ vec(V)` of `mode`:
        `(A + π√λ I)⁻¹ V (G + √λ/π I)⁻¹` (`"factored"`) or
        `Q_A [(Q_Aᵀ V Q_G) / D] Q_Gᵀ` (`"eigen"`, `linalg.kronecker_solve`).
        """
        return self._solve(read(state.derived), V, damping, mode)

    def _solve(self, derived: Derived, V, damping, mode) -> tf.Tensor:
        if mode == linalg.FACTORED:
            return self._right(
                self._left(derived.A_inverse, V), derived.G_inverse
            )
        D = linalg.damped_eigenvalues(
            derived.eigenvalues_A, derived.eigenvalues_G, damping, mode
        )
        return linalg.kronecker_solve(derived.Q_A, derived.Q_G, D, V)

    def quadratic_form(
        self, state: BlockState, V: tf.Tensor, mode: str
    ) -> tf.Tensor:
        """`vec(V)ᵀ F̂ vec(V)`, undamped: with `"eigen"`, of the
        decomposition the steps are preconditioned with, `Σ (Q_Aᵀ V Q_G)²
        ⊙ λ_A λ_Gᵀ`; with `"factored"`, of the current factors,
        `Σ V ⊙ (A V G)`."""
        if mode == linalg.FACTORED:
            AVG = self._right(
                self._left(tf.convert_to_tensor(state.A), V),
                tf.convert_to_tensor(state.G),
            )
            return tf.reduce_sum(V * AVG)
        derived = read(state.derived)
        curvature = (
            derived.eigenvalues_A[:, None] * derived.eigenvalues_G[None, :]
        )
        rotated = linalg.to_eigenbases(derived.Q_A, derived.Q_G, V)
        return tf.reduce_sum(tf.square(rotated) * curvature)


class PermutedKroneckerBlock(KroneckerBlock):
    """The block of a layer whose kernel axes are not laid out as
    (inputs..., outputs...) (an `EinsumDense`): `V` is taken from the
    kernel gradient transposed by the layer's `kernel_permutation`, and
    the bias gradient by its `bias_permutation` (each `None` when the
    axes are already in order)."""

    def gradient_matrix(self, kernel_grad, bias_grad):
        kernel_grad = _transposed(kernel_grad, self.layer.kernel_permutation)
        if bias_grad is not None:
            bias_grad = tf.reshape(
                _transposed(bias_grad, self.layer.bias_permutation), (-1,)
            )
        return super().gradient_matrix(kernel_grad, bias_grad)

    def split(self, X):
        kernel = _untransposed(
            X[: self.dim_A - (self.bias_index is not None)],
            self.kernel_shape,
            self.layer.kernel_permutation,
        )
        if self.bias_index is None:
            return kernel, None
        bias_shape = tuple(self.layer.kfac_bias.shape)
        return kernel, _untransposed(
            X[-1], bias_shape, self.layer.bias_permutation
        )


def _transposed(t: tf.Tensor, permutation) -> tf.Tensor:
    return t if permutation is None else tf.transpose(t, permutation)


def _untransposed(X: tf.Tensor, shape: tuple, permutation) -> tf.Tensor:
    """`X` reshaped to `shape` permuted by `permutation`, then transposed
    back to `shape`."""
    if permutation is None:
        return tf.reshape(X, shape)
    permuted = tf.reshape(X, [shape[i] for i in permutation])
    inverse = [permutation.index(i) for i in range(len(permutation))]
    return tf.transpose(permuted, inverse)


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

    def precondition(self, state, V, damping, mode):
        """As `KroneckerBlock.precondition`, solved for the rows of `V`
        that are not zero (the tokens of the batch), the others left zero:
        the same `X`, since the solve acts row by row, at the cost of the
        batch's tokens instead of the vocabulary's (`vocabulary · dim G²`
        for the product with `G⁻¹`). The number of rows is known only when
        the step runs, which XLA cannot compile: there, every row."""
        if xla.in_xla_context():
            return super().precondition(state, V, damping, mode)
        rows = tf.where(tf.reduce_any(tf.not_equal(V, 0.0), axis=1))[:, 0]
        derived = read(state.derived)
        if mode == linalg.FACTORED:
            touched = derived._replace(
                A_inverse=tf.gather(derived.A_inverse, rows)
            )
        else:
            touched = derived._replace(
                eigenvalues_A=tf.gather(derived.eigenvalues_A, rows)
            )
        X = self._solve(touched, tf.gather(V, rows), damping, mode)
        return tf.scatter_nd(rows[:, None], X, tf.shape(V, out_type=tf.int64))


class ScaleShiftBlock(KroneckerBlock):
    """The block of a normalization layer's scale `γ` and shift `β`:
    the diagonal of their Fisher, `F̂ = 1 ⊗ diag(f)`.

    `V = [∇γ, ∇β]` is one row (`dim A = 1`, `A = 1`), and `f = E[g ⊙ g]`
    over the examples of the per-example gradients `g = [Σ x̂ ⊙ s', Σ s']`
    (sums over the positions that share `γ` and `β`, `x̂` the normalized
    input and `s'` the gradient at the output): the exact diagonal of the
    (empirical or sampled) Fisher, so the step is `∇ / (f + λ)` (eigen),
    as for a diagonal natural gradient. Either variable may be absent;
    `kernel_shape` is then the shape of the one present (both have the
    same).
    """

    diagonal_G = True

    def __init__(self, layer, kernel_index, bias_index):
        super().__init__(layer, kernel_index, bias_index)
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
        kernel = tf.reshape(X[0, : self.kernel_size], self.kernel_shape)
        if self.bias_index is None:
            return kernel, None
        return kernel, tf.reshape(X[0, self.kernel_size :], self.kernel_shape)
