"""`EinsumDense` that taps its factors: attention's projections.

An `EinsumDense` kernel's axes are each contracted with the input (they
make `a`) or copied to the output (they make `s`); the input's other axes
are the batch and the positions that share the weights (a sequence's, the
heads' in an attention output projection). So the layer is a Dense layer
on `a` = the contracted axes flattened, applied at every position, and its
block is `A ⊗ G` with the weight sharing approximated by expand or reduce
(`keras_kfac.curvature`, Eschenhagen et al. 2023).
"""

import dataclasses
import math
import string

import keras
import tensorflow as tf

from keras_kfac import blocks, curvature
from keras_kfac.layers.weight_sharing import WeightShared, check_weight_sharing


@dataclasses.dataclass(frozen=True)
class EinsumRoles:
    """What each axis of an `EinsumDense` equation does.

    Attributes:
        contracted: The kernel axes summed with the input, in kernel order.
        outputs: The kernel axes copied to the output, in kernel order.
        input_permutation: Orders the input as (batch, shared...,
            contracted...); `None` if it already is.
        output_permutation: Orders the output as (batch, shared...,
            outputs...); `None` if it already is.
        kernel_permutation: Orders the kernel as (contracted...,
            outputs...); `None` if it already is.
        bias_permutation: Orders a bias spanning the output axes as the
            kernel's outputs; `None` if it already is.
        bias_spans_outputs: Whether the bias axes are exactly the output
            axes (only then is the bias a row of the block).
    """

    contracted: str
    outputs: str
    input_permutation: tuple | None
    output_permutation: tuple | None
    kernel_permutation: tuple | None
    bias_permutation: tuple | None
    bias_spans_outputs: bool

    @classmethod
    def of(
        cls, equation: str, input_rank: int, bias_axes: str | None
    ) -> "EinsumRoles":
        """Parses `equation` (`"inputs,kernel->output"`, `...` allowed in
        the input and output) for an input of `input_rank` axes."""
        inputs, kernel, output = _expand_ellipsis(equation, input_rank)
        contracted = "".join(
            k for k in kernel if k in inputs and k not in output
        )
        outputs = "".join(k for k in kernel if k in output and k not in inputs)
        shared = [c for c in inputs if c not in kernel]
        if len(contracted) + len(outputs) != len(kernel) or any(
            c not in output for c in shared
        ):
            raise ValueError(
                "keras_kfac.layers.EinsumDense needs every kernel axis either "
                "summed with the input or copied to the output, and every "
                "other input axis kept in the output. Received: "
                f"equation={equation!r}"
            )
        if not shared or shared[0] != inputs[0]:
            raise ValueError(
                "keras_kfac.layers.EinsumDense needs the input's first axis "
                "(the batch) kept in the output. "
                f"Received: equation={equation!r}"
            )
        output_shared = [shared[0]] + [
            c for c in output if c in shared and c != shared[0]
        ]
        bias = "" if bias_axes is None else bias_axes
        bias_order = "".join(c for c in output if c in bias)
        return cls(
            contracted=contracted,
            outputs=outputs,
            input_permutation=_permutation(inputs, shared + list(contracted)),
            output_permutation=_permutation(
                output, output_shared + list(outputs)
            ),
            kernel_permutation=_permutation(kernel, contracted + outputs),
            bias_permutation=_permutation(bias_order, outputs)
            if sorted(bias) == sorted(outputs)
            else None,
            bias_spans_outputs=sorted(bias) == sorted(outputs),
        )

    @classmethod
    def supports(cls, equation: str) -> bool:
        """Whether `EinsumDense` takes `equation`."""
        inputs = equation.split(",")[0].replace("...", "")
        try:
            cls.of(equation, len(inputs) + 1, None)
        except ValueError:
            return False
        return True


def _expand_ellipsis(equation: str, input_rank: int) -> tuple[str, str, str]:
    """`(inputs, kernel, output)` with `...` replaced by unused letters."""
    try:
        operands, output = equation.replace(" ", "").split("->")
        inputs, kernel = operands.split(",")
    except ValueError:
        raise ValueError(
            "An EinsumDense equation reads 'inputs,kernel->output'. "
            f"Received: equation={equation!r}"
        ) from None
    if "..." in inputs:
        free = [c for c in string.ascii_letters if c not in equation]
        count = input_rank - (len(inputs) - 3)
        letters = "".join(free[:count])
        inputs = inputs.replace("...", letters)
        output = output.replace("...", letters)
    return inputs, kernel, output


def _permutation(letters: str, order) -> tuple | None:
    """The axes of `letters` taken in `order`; `None` for the identity."""
    permutation = tuple(letters.index(c) for c in order)
    return None if permutation == tuple(range(len(letters))) else permutation


@keras.saving.register_keras_serializable(package="keras_kfac")
class EinsumDense(WeightShared, keras.layers.EinsumDense):
    """`keras.layers.EinsumDense` that records its K-FAC factors when
    training.

    Same arguments and weights as `keras.layers.EinsumDense`, for equations
    whose kernel axes are each summed with the input or copied to the
    output (every projection of `keras.layers.MultiHeadAttention` is one).
    The block is `A ⊗ G` over the kernel flattened as (summed axes, output
    axes); a bias is in it when `bias_axes` are the output axes, and trained
    first-order otherwise. LoRA and quantized kernels are not supported.

    Args:
        weight_sharing: How the positions that share the weights (the input
            axes other than the batch and the summed ones) enter the
            factors: `"expand"`, every (example, position) is a row, as
            `Dense` does on sequences; or `"reduce"`, each example's
            positions are reduced first (`keras_kfac.curvature`). Defaults
            to `"expand"`.
        *args, **kwargs: Those of `keras.layers.EinsumDense`.
    """

    block_type = blocks.PermutedKroneckerBlock

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.lora_rank:
            raise ValueError(
                "keras_kfac.layers.EinsumDense does not support LoRA. "
                f"Received: lora_rank={self.lora_rank}"
            )

    def build(self, input_shape):
        # Checked before any weight exists: a bad equation fails alone.
        self.roles = EinsumRoles.of(
            self.equation, len(input_shape), self.bias_axes
        )
        super().build(input_shape)

    @property
    def kfac_kernel(self):
        return self._kernel

    @property
    def kfac_bias(self):
        return self.bias if self.roles.bias_spans_outputs else None

    @property
    def use_bias(self) -> bool:
        """Whether the bias is a row of the block (`a` gets a 1)."""
        return self.kfac_bias is not None

    @property
    def kernel_permutation(self):
        return self.roles.kernel_permutation

    @property
    def bias_permutation(self):
        return self.roles.bias_permutation

    def kfac_dimensions(self):
        size = dict(zip(self._kernel_letters(), self._kernel.shape))
        return (
            math.prod(size[c] for c in self.roles.contracted) + self.use_bias,
            math.prod(size[c] for c in self.roles.outputs),
        )

    def _kernel_letters(self) -> str:
        return self.equation.replace(" ", "").split("->")[0].split(",")[1]

    def _input_rows(self, x):
        return curvature.shared_rows(
            tf.cast(x, tf.float32),
            self.roles.input_permutation,
            self.kfac_dimensions()[0] - self.use_bias,
        )

    def _output_rows(self, ds):
        return curvature.shared_rows(
            tf.cast(ds, tf.float32),
            self.roles.output_permutation,
            self.kfac_dimensions()[1],
        )

    def enable_lora(self, *args, **kwargs):
        raise ValueError(
            "keras_kfac.layers.EinsumDense does not support LoRA: its K-FAC "
            "block preconditions the whole kernel."
        )

    def quantize(self, *args, **kwargs):
        raise ValueError(
            "keras_kfac.layers.EinsumDense does not support quantization: "
            "its K-FAC block preconditions a float kernel."
        )

    def call(self, inputs, training=None):
        kernel = self._kernel_for(self._kernel, training)
        s = keras.ops.einsum(self.equation, inputs, kernel)
        if self.bias is not None:
            s = s + self.bias
        return self._finish(inputs, s, training)


@keras.saving.register_keras_serializable(package="keras_kfac")
class MultiHeadAttention(keras.layers.MultiHeadAttention):
    """`keras.layers.MultiHeadAttention` whose query, key, value and output
    projections are `keras_kfac.layers.EinsumDense`, so K-FAC
    preconditions them.

    Same arguments, weights and initialization as Keras' layer, and
    `weight_sharing` for the projections (see `EinsumDense`; the query,
    key and value projections share their weights over the sequence, the
    output projection over the sequence and the heads). Defaults to
    `"expand"`.
    """

    def __init__(self, *args, weight_sharing: str = "expand", **kwargs):
        super().__init__(*args, **kwargs)
        check_weight_sharing(weight_sharing)
        self.weight_sharing = weight_sharing

    def build(self, query_shape, value_shape, key_shape=None):
        # Keras builds the projections from its module's `EinsumDense`;
        # building with ours in its place gives the same weights, made in
        # the same order, in layers that tap their factors.
        module = _keras_attention_module()
        keras_einsum_dense = module.EinsumDense

        def projection(*args, **kwargs):
            return EinsumDense(
                *args, weight_sharing=self.weight_sharing, **kwargs
            )

        module.EinsumDense = projection
        try:
            super().build(query_shape, value_shape, key_shape)
        finally:
            module.EinsumDense = keras_einsum_dense

    def get_config(self):
        return {**super().get_config(), "weight_sharing": self.weight_sharing}


def _keras_attention_module():
    """The Keras module whose `EinsumDense` its attention layer builds."""
    import sys

    module = sys.modules[keras.layers.MultiHeadAttention.__module__]
    if not hasattr(module, "EinsumDense"):
        raise NotImplementedError(
            "keras_kfac.layers.MultiHeadAttention does not know how this "
            f"Keras ({keras.__version__}) builds its projections."
        )
    return module
