"""Keras layers that tap the Kronecker factors K-FAC needs.

`Dense`, `Conv1D`, `Conv2D`, `Embedding`, `LayerNormalization`,
`BatchNormalization` and `RMSNormalization` behave exactly like their Keras
parents and load the same weights. When called with `training=True` they
also record, for the optimizer:

- `A`, from the layer input (an embedding's: its token frequencies; a
  normalization layer's is 1 and its `G` the mean squares of the per-example
  gradients of `γ`, `β`), and `G`, from the gradient reaching the
  pre-activation `s`, through an identity on `s` with a custom gradient
  (`keras_kfac.curvature` has the formulas);
- `‖∇W‖²` of every backward pass through the kernel, which lets the
  optimizer undo a loss scale applied to that pass (mixed precision).

Which backward passes record them, for which optimizer, and where they are
kept: `keras_kfac.statistics`.
"""

import keras
import tensorflow as tf

from keras_kfac import blocks, curvature, statistics
from keras_kfac.statistics import collecting_statistics

__all__ = [
    "BatchNormalization",
    "Conv1D",
    "Conv2D",
    "Dense",
    "Embedding",
    "KFACLayer",
    "LayerNormalization",
    "RMSNormalization",
    "collecting_statistics",
]


class KFACLayer:
    """Mixin for layers with a kernel whose last axis is the output axis.

    `block_type` is the optimizer's `keras_kfac.blocks` block for the
    layer, and `kfac_kernel`, `kfac_bias` the variables it preconditions.
    """

    block_type = blocks.KroneckerBlock

    @property
    def kfac_kernel(self):
        return self.kernel

    @property
    def kfac_bias(self):
        return self.bias

    def build(self, input_shape):
        super().build(input_shape)
        self._build_statistics()

    def _build_statistics(self) -> None:
        A_shape, G_shape = self.block_type.factor_shapes(
            tuple(self.kfac_kernel.shape), self.kfac_bias is not None
        )
        self.statistics = statistics.FactorStatistics(
            A_shape, G_shape, self.name
        )
        statistics.register_layer(self)

    def _input_factor(self, x: tf.Tensor) -> tf.Tensor:
        """The batch `A` from the layer input `x`."""
        return curvature.input_factor(self._input_rows(x), self.use_bias)

    def _output_factor(self, x, ds, replicas: int) -> tf.Tensor:
        """The batch `G` from the gradient `ds` at the output."""
        return curvature.output_factor(
            ds, tf.shape(x)[0], replicas, self._channels_axis()
        )

    def _input_rows(self, x: tf.Tensor) -> tf.Tensor:
        raise NotImplementedError

    def _channels_axis(self) -> int:
        return -1

    def _kernel_for(self, kernel, training) -> tf.Tensor:
        """`kernel`, watched by `_watch_kernel` when training."""
        return self._watch_kernel(kernel) if training else kernel

    def _watch_kernel(self, kernel: tf.Tensor) -> tf.Tensor:
        """Identity on the kernel that records `‖∇W‖²` of every backward
        pass an optimizer may read (the loss pass too, whose gradient it
        receives)."""
        recorded = self.statistics

        @tf.custom_gradient
        def identity(k):
            def grad(dk):
                if statistics.records_kernel_gradient(self):
                    # An embedding's gradient is sparse, with repeated rows.
                    dense = tf.convert_to_tensor(dk)
                    recorded.kernel_grad_sq.assign(
                        tf.reduce_sum(tf.square(tf.cast(dense, tf.float32)))
                    )
                return dk

            return tf.identity(k), grad

        return identity(tf.convert_to_tensor(kernel))

    def _tap(self, x: tf.Tensor, s: tf.Tensor) -> tf.Tensor:
        """Identity on `s` whose gradient records the batch `A` and `G`."""
        recorded = self.statistics

        @tf.custom_gradient
        def identity(pre_activation):
            def grad(ds):
                def record():
                    context = tf.distribute.get_replica_context()
                    replicas = context.num_replicas_in_sync if context else 1
                    recorded.A.assign(self._input_factor(x))
                    recorded.G.assign(self._output_factor(x, ds, replicas))
                    recorded.fresh.assign(1.0)
                    return tf.constant(True)

                if statistics.is_collecting_statistics(self):
                    due = statistics.statistics_due(self)
                    if due is None:
                        record()
                    else:  # the readers' schedule: only on some steps
                        tf.cond(due, record, lambda: tf.constant(False))
                return ds

            return tf.identity(pre_activation), grad

        return identity(s)

    def _finish(self, x, s, training) -> tf.Tensor:
        if training:
            s = self._tap(x, s)
        if self.activation is not None:
            return self.activation(s)
        return s


class _Convolution(KFACLayer):
    """What `Conv1D` and `Conv2D` share: no groups, channels by format."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.groups != 1:
            raise ValueError(
                f"keras_kfac.layers.{type(self).__name__} supports only "
                f"groups=1. Received: groups={self.groups}"
            )

    def _channels_axis(self):
        return 1 if self.data_format == "channels_first" else -1

    def _add_bias(self, s: tf.Tensor) -> tf.Tensor:
        """`s + b`, the bias broadcast along the channels axis."""
        if not self.use_bias:
            return s
        shape = [1] * len(s.shape)
        shape[self._channels_axis()] = self.filters
        return s + tf.reshape(self.bias, shape)


@keras.saving.register_keras_serializable(package="keras_kfac")
class Dense(KFACLayer, keras.layers.Dense):
    """`keras.layers.Dense` that records its K-FAC factors when training.

    Same arguments and weights as `keras.layers.Dense`. Inputs of rank > 2
    treat every leading position as a row of `a`.
    """

    def _input_rows(self, x):
        return curvature.dense_inputs(x)

    def call(self, inputs, training=None):
        kernel = self._kernel_for(self.kernel, training)
        s = (
            tf.matmul(inputs, kernel)
            if inputs.shape.rank == 2
            else (tf.tensordot(inputs, kernel, axes=1))
        )
        if self.bias is not None:
            s = s + self.bias
        return self._finish(inputs, s, training)


@keras.saving.register_keras_serializable(package="keras_kfac")
class Conv2D(_Convolution, keras.layers.Conv2D):
    """`keras.layers.Conv2D` that records its K-FAC factors when training.

    Same arguments and weights as `keras.layers.Conv2D`: any padding,
    strides, dilation and data format. Grouped convolutions (`groups > 1`)
    are not supported.
    """

    def _input_rows(self, x):
        return curvature.conv2d_patches(
            x,
            self.kernel_size,
            self.strides,
            self.dilation_rate,
            self.padding,
            self.data_format,
        )

    def call(self, inputs, training=None):
        kernel = self._kernel_for(self.kernel, training)
        s = self._add_bias(self.convolution_op(inputs, kernel))
        return self._finish(inputs, s, training)


@keras.saving.register_keras_serializable(package="keras_kfac")
class Conv1D(_Convolution, keras.layers.Conv1D):
    """`keras.layers.Conv1D` that records its K-FAC factors when training.

    Same arguments and weights as `keras.layers.Conv1D`: `"valid"`,
    `"same"` or `"causal"` padding, strides, dilation and data format.
    Grouped convolutions (`groups > 1`) are not supported.
    """

    def _input_rows(self, x):
        return curvature.conv1d_patches(
            x,
            self.kernel_size[0],
            self.strides[0],
            self.dilation_rate[0],
            self.padding,
            self.data_format,
        )

    def call(self, inputs, training=None):
        kernel = self._kernel_for(self.kernel, training)
        padded, padding = inputs, self.padding
        if padding == "causal":
            padded = tf.pad(inputs, self._compute_causal_padding())
            padding = "valid"
        s = keras.ops.conv(
            padded,
            kernel,
            strides=list(self.strides),
            padding=padding,
            dilation_rate=self.dilation_rate,
            data_format=self.data_format,
        )
        return self._finish(inputs, self._add_bias(s), training)


@keras.saving.register_keras_serializable(package="keras_kfac")
class Embedding(KFACLayer, keras.layers.Embedding):
    """`keras.layers.Embedding` that records its K-FAC factors when training.

    Same arguments and weights as `keras.layers.Embedding` (`mask_zero`
    included; the mask does not change the statistics: every position's
    token counts in `A` and its gradient in `G`, as in the table's
    gradient). Its block is `F̂ = diag(a) ⊗ G` with `a` the token
    frequencies (`blocks.DiagonalInputBlock`). The optimizer
    preconditions the rows of the batch's tokens only; the momentum and
    the update are dense over the `(input_dim, output_dim)` table. LoRA
    (`lora_rank`) and quantized tables are not supported.
    """

    block_type = blocks.DiagonalInputBlock

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.lora_rank:
            raise ValueError(
                "keras_kfac.layers.Embedding does not support LoRA. "
                f"Received: lora_rank={self.lora_rank}"
            )

    @property
    def kfac_kernel(self):
        return self._embeddings

    @property
    def kfac_bias(self):
        return None

    @property
    def use_bias(self):
        return False

    def enable_lora(self, *args, **kwargs):
        raise ValueError(
            "keras_kfac.layers.Embedding does not support LoRA: its K-FAC "
            "block preconditions the whole table."
        )

    def quantize(self, *args, **kwargs):
        raise ValueError(
            "keras_kfac.layers.Embedding does not support quantization: "
            "its K-FAC block preconditions a float table."
        )

    def _input_factor(self, x):
        return curvature.token_frequencies(x, self.input_dim)

    def call(self, inputs, training=None):
        if inputs.dtype not in (tf.int32, tf.int64):
            inputs = tf.cast(inputs, tf.int32)
        table = self._kernel_for(self._embeddings, training)
        s = tf.gather(table, inputs)
        if training:
            s = self._tap(inputs, s)
        return tf.cast(s, self.compute_dtype)


class _ScaleShift(KFACLayer):
    """What the normalization layers share: the block of `γ` and `β`
    (`blocks.ScaleShiftBlock`), recorded from the normalized input
    `x̂` and the gradient at the output `s = x̂ γ + β`."""

    block_type = blocks.ScaleShiftBlock

    @property
    def _gamma(self):
        """`γ`, or `None` when the layer does not scale."""
        return self.gamma if self.scale else None

    @property
    def _beta(self):
        """`β`, or `None` when the layer does not shift."""
        return self.beta if self.center else None

    @property
    def kfac_kernel(self):
        return self._gamma if self._gamma is not None else self._beta

    @property
    def kfac_bias(self):
        return self._beta if self._gamma is not None else None

    @property
    def _has_block(self) -> bool:
        return self._gamma is not None or self._beta is not None

    def _normalized_axes(self, rank: int) -> list[int]:
        raise NotImplementedError

    def _broadcast_shape(self, input_shape) -> list[int]:
        """The shape `γ` is reshaped to against the input, as Keras does:
        the input's sizes on the normalized axes, 1 elsewhere."""
        shape = [1] * len(input_shape)
        for a in self._normalized_axes(len(input_shape)):
            shape[a] = input_shape[a]
        return shape

    def _input_factor(self, x_hat):
        return tf.ones((1, 1), tf.float32)

    def _output_factor(self, x_hat, ds, replicas):
        return curvature.scale_shift_factor(
            x_hat,
            ds,
            self._normalized_axes(len(x_hat.shape)),
            scale=self._gamma is not None,
            shift=self._beta is not None,
            num_replicas=replicas,
        )

    def _scale_and_shift(self, x_hat, training):
        """`s = x̂ γ + β`, tapped when training."""
        shape = self._broadcast_shape(x_hat.shape)
        s = x_hat
        gamma, beta = self._gamma, self._beta
        if gamma is not None:
            gamma = self._kernel_for(gamma, training)
            s = s * tf.reshape(tf.cast(gamma, s.dtype), shape)
        if beta is not None:
            if training and gamma is None:
                beta = self._watch_kernel(beta)
            s = s + tf.reshape(tf.cast(beta, s.dtype), shape)
        if training:
            s = self._tap(x_hat, s)
        return s


@keras.saving.register_keras_serializable(package="keras_kfac")
class LayerNormalization(_ScaleShift, keras.layers.LayerNormalization):
    """`keras.layers.LayerNormalization` that records the diagonal Fisher
    of its scale `γ` and shift `β` when training.

    Same arguments and weights as `keras.layers.LayerNormalization` (any
    `axis`, `center`, `scale`, `rms_scaling`). The output is computed as
    `x̂ · γ + β` from the normalized input `x̂`, which it records with the
    gradient at the output; the block is `blocks.ScaleShiftBlock`.
    """

    @property
    def _beta(self):
        # Keras' RMS scaling ignores `β`.
        return self.beta if self.center and not self.rms_scaling else None

    def build(self, input_shape):
        keras.layers.LayerNormalization.build(self, input_shape)
        if self._has_block:
            self._build_statistics()

    def _normalized_axes(self, rank):
        return [a % rank for a in self.axis]

    def call(self, inputs, training=None):
        if not self._has_block:
            return super().call(inputs)
        x_hat = keras.ops.layer_normalization(
            inputs,
            None,
            None,
            self.axis,
            self.epsilon,
            rms_scaling=self.rms_scaling,
        )
        s = self._scale_and_shift(x_hat, training)
        return tf.cast(s, self.compute_dtype)


@keras.saving.register_keras_serializable(package="keras_kfac")
class BatchNormalization(_ScaleShift, keras.layers.BatchNormalization):
    """`keras.layers.BatchNormalization` that records the diagonal Fisher
    of its scale `γ` and shift `β` when training.

    Same arguments, weights and moving statistics as
    `keras.layers.BatchNormalization` (`axis`, `momentum`, `center`,
    `scale`, `synchronized`, masks); `renorm` is not supported. In
    training, the output is computed as `x̂ · γ + β` from the input
    normalized by the batch's moments; an example's gradient of `γ`, `β`
    is taken at its own outputs (the batch moments couple the examples;
    `γ` and `β` do not enter them), and the block is
    `blocks.ScaleShiftBlock`. In inference, and when the layer is
    frozen (`trainable=False`), it is Keras' layer.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.renorm:
            raise ValueError(
                "keras_kfac.layers.BatchNormalization does not support "
                f"renorm. Received: renorm={self.renorm}"
            )

    def build(self, input_shape):
        keras.layers.BatchNormalization.build(self, input_shape)
        if self._has_block:
            self._build_statistics()

    def _normalized_axes(self, rank):
        return [self.axis % rank]

    def call(self, inputs, training=None, mask=None):
        if not (training and self.trainable and self._has_block):
            return super().call(inputs, training=training, mask=mask)
        if mask is not None and len(mask.shape) != len(inputs.shape) - 1:
            raise ValueError(
                "The mask provided should be one dimension less than the "
                f"inputs. Received: mask.shape={mask.shape}, "
                f"inputs.shape={inputs.shape}"
            )
        # As Keras: the moments in at least float32.
        dtype = keras.backend.result_type(inputs.dtype, "float32")
        inputs = tf.cast(inputs, dtype)
        mean, variance = self._moments(inputs, mask)
        for moving, batch in (
            (self.moving_mean, mean),
            (self.moving_variance, variance),
        ):
            moving.assign(
                tf.cast(moving, dtype) * self.momentum
                + batch * (1.0 - self.momentum)
            )
        x_hat = keras.ops.batch_normalization(
            x=inputs,
            mean=mean,
            variance=variance,
            axis=self.axis,
            epsilon=self.epsilon,
        )
        s = self._scale_and_shift(x_hat, training)
        return tf.cast(s, self.compute_dtype)


@keras.saving.register_keras_serializable(package="keras_kfac")
class RMSNormalization(_ScaleShift, keras.layers.RMSNormalization):
    """`keras.layers.RMSNormalization` that records the diagonal Fisher of
    its `scale` when training.

    Same arguments and weights as `keras.layers.RMSNormalization`. The
    output is computed as `x̂ · scale` from `x̂ = x / rms(x)`; the block is
    `blocks.ScaleShiftBlock` with `γ` its `scale` and no `β`.
    """

    @property
    def _gamma(self):
        return self.scale

    @property
    def _beta(self):
        return None

    def build(self, input_shape):
        keras.layers.RMSNormalization.build(self, input_shape)
        self._build_statistics()

    def _normalized_axes(self, rank):
        return [a % rank for a in self.axis]

    def call(self, x, training=None):
        x_hat = keras.ops.rms_normalization(
            x, scale=None, axis=self.axis, epsilon=self.epsilon
        )
        return tf.cast(
            self._scale_and_shift(x_hat, training), self.compute_dtype
        )
