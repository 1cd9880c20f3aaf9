"""Transposed, depthwise and separable convolutions that tap their factors.

- `Conv1DTranspose`, `Conv2DTranspose`, `Conv3DTranspose`: a transposed
  convolution is a convolution of its zero-upsampled input, so its block
  is Conv2D's (Grosse & Martens 2016): `a_u` the patch of the upsampled
  input that output position `u` sees, with a 1 for the bias (added at
  every output position, as a Conv2D's), and `g_u` the gradient at `u`.
  The kernel, laid out `(*kernel_size, filters, c_in)`, is flattened to
  `(kernel · c_in, filters)` (`blocks.PermutedKroneckerBlock`).
- `DepthwiseConv1D`, `DepthwiseConv2D`: one block `A_c ⊗ G_c` per input
  channel, kept stacked (`keras_kfac.channel_blocks`).
- `SeparableConv1D`, `SeparableConv2D`: two blocks, the depthwise stage's
  (as a DepthwiseConv's, from the gradient at the depthwise output) and
  the pointwise stage's with the bias (as a 1 x 1 Conv's over the
  depthwise output).

The patches are the layer's own operation applied to a kernel of unit
vectors (`keras_kfac.curvature`), so every padding, stride, dilation,
output padding and data format the Keras layer takes is taken here too.
"""

import math

import keras
import tensorflow as tf

from keras_kfac import blocks, channel_blocks, curvature, statistics
from keras_kfac.layers.weight_sharing import WeightShared


def _add_bias(s: tf.Tensor, bias, channels_axis: int) -> tf.Tensor:
    """`s + b`, `b` broadcast along the channels axis (none: `s`)."""
    if bias is None:
        return s
    shape = [1] * len(s.shape)
    shape[channels_axis] = -1
    return s + tf.reshape(bias, shape)


class _Variant(WeightShared):
    """What the variants share: the channels axis by data format, and
    `weight_sharing` (`keras_kfac.layers.weight_sharing`) over the output
    positions."""

    def _channels_first(self) -> bool:
        return self.data_format == "channels_first"

    def _channels_axis(self):
        return 1 if self._channels_first() else -1


class _TransposedConvolution(_Variant):
    """The block of a transposed convolution (module docstring)."""

    block_type = blocks.PermutedKroneckerBlock
    bias_permutation = None

    @property
    def kernel_permutation(self) -> tuple:
        """`(*kernel_size, filters, c_in)` to `(*kernel_size, c_in,
        filters)`: the patch axes first."""
        rank = self.rank
        return (*range(rank), rank + 1, rank)

    def kfac_dimensions(self):
        *kernel_size, filters, c_in = self.kernel.shape
        return math.prod(kernel_size) * c_in + self.use_bias, filters

    def _transpose(self, x, kernel) -> tf.Tensor:
        return keras.ops.conv_transpose(
            x,
            kernel,
            strides=list(self.strides),
            padding=self.padding,
            output_padding=self.output_padding,
            dilation_rate=self.dilation_rate,
            data_format=self.data_format,
        )

    def _input_rows(self, x):
        E = curvature.transposed_unit_kernel(
            self.kernel_size, self.kernel.shape[-1]
        )
        patches = self._transpose(tf.cast(x, tf.float32), E)
        return curvature.channel_rows(patches, self._channels_first())

    def call(self, inputs, training=None):
        kernel = self._kernel_for(self.kernel, training)
        s = self._transpose(inputs, kernel)
        s = _add_bias(s, self.bias, self._channels_axis())
        return self._finish(inputs, s, training)


@keras.saving.register_keras_serializable(package="keras_kfac")
class Conv1DTranspose(_TransposedConvolution, keras.layers.Conv1DTranspose):
    """`keras.layers.Conv1DTranspose` that records its K-FAC factors when
    training. Same arguments and weights (any padding, strides, output
    padding, dilation and data format Keras runs)."""


@keras.saving.register_keras_serializable(package="keras_kfac")
class Conv2DTranspose(_TransposedConvolution, keras.layers.Conv2DTranspose):
    """`keras.layers.Conv2DTranspose` that records its K-FAC factors when
    training. Same arguments and weights (any padding, strides, output
    padding, dilation and data format Keras runs)."""


@keras.saving.register_keras_serializable(package="keras_kfac")
class Conv3DTranspose(_TransposedConvolution, keras.layers.Conv3DTranspose):
    """`keras.layers.Conv3DTranspose` that records its K-FAC factors when
    training. Same arguments and weights (any padding, strides, output
    padding, dilation and data format Keras runs)."""


class _DepthwiseFactors(_Variant):
    """The stacked per-channel factors of a depthwise kernel
    (`channel_blocks.ChannelwiseKroneckerBlock`); `_geometry()` is the
    Keras layer whose kernel size, strides, padding, dilation and data format
    the depthwise convolution has."""

    block_type = channel_blocks.ChannelwiseKroneckerBlock

    def _geometry(self):
        # A method, not a property: Keras' loader walks the properties of
        # a layer, and one that returns the layer itself never ends.
        return self

    def _build_statistics(self):
        A_shape, G_shape = self.block_type.stacked_shapes(
            tuple(self.kfac_kernel.shape), self.kfac_bias is not None
        )
        self.statistics = statistics.FactorStatistics(
            A_shape, G_shape, self.name
        )
        statistics.register_layer(self)

    @property
    def _input_channels(self) -> int:
        return int(self.kfac_kernel.shape[-2])

    def _depthwise(self, x, kernel) -> tf.Tensor:
        layer = self._geometry()
        return keras.ops.depthwise_conv(
            x,
            kernel,
            strides=layer.strides,
            padding=layer.padding,
            dilation_rate=layer.dilation_rate,
            data_format=layer.data_format,
        )

    def _input_rows(self, x):
        E = curvature.depthwise_unit_kernel(
            self._geometry().kernel_size, self._input_channels
        )
        patches = self._depthwise(tf.cast(x, tf.float32), E)
        return curvature.channel_rows(patches, self._channels_first())

    def _input_factor(self, x):
        return curvature.channelwise_input_factor(
            self._shared(self._input_rows(x), x, "mean"),
            self._input_channels,
            self.kfac_bias is not None,
        )

    def _output_factor(self, x, ds, replicas):
        return curvature.channelwise_output_factor(
            self._shared(self._output_rows(ds), x, "sum"),
            tf.shape(x)[0],
            replicas,
            self._input_channels,
        )


class _DepthwiseConvolution(_DepthwiseFactors):
    def call(self, inputs, training=None):
        kernel = self._kernel_for(self.kernel, training)
        s = self._depthwise(inputs, kernel)
        s = _add_bias(s, self.bias, self._channels_axis())
        return self._finish(inputs, s, training)


@keras.saving.register_keras_serializable(package="keras_kfac")
class DepthwiseConv1D(_DepthwiseConvolution, keras.layers.DepthwiseConv1D):
    """`keras.layers.DepthwiseConv1D` that records its K-FAC factors when
    training: one `A_c ⊗ G_c` per input channel. Same arguments and
    weights."""


@keras.saving.register_keras_serializable(package="keras_kfac")
class DepthwiseConv2D(_DepthwiseConvolution, keras.layers.DepthwiseConv2D):
    """`keras.layers.DepthwiseConv2D` that records its K-FAC factors when
    training: one `A_c ⊗ G_c` per input channel. Same arguments and
    weights."""


class SeparableDepthwiseStage(_DepthwiseFactors):
    """The depthwise stage of a `keras_kfac` separable convolution, seen
    by the optimizer as a layer of its own: its kernel is the layer's
    `depthwise_kernel`, its factors are recorded from the layer's input
    and the gradient at the depthwise output. Not a Keras layer: it owns
    no weights, and the separable layer builds it."""

    activation = None

    def __init__(self, layer):
        self.layer = layer
        self.name = f"{layer.name}_depthwise"
        self.kfac_kind = f"{type(layer).__name__} depthwise"
        self.data_format = layer.data_format
        self.weight_sharing = layer.weight_sharing
        self._build_statistics()

    def _geometry(self):
        return self.layer

    @property
    def built(self) -> bool:
        return self.layer.built

    @property
    def kfac_kernel(self):
        return self.layer.depthwise_kernel

    @property
    def kfac_bias(self):
        return None


class _SeparableConvolution(_Variant):
    """Depthwise then pointwise: the layer's own block is the pointwise
    kernel's and the bias's, over the depthwise output `t`;
    `depthwise_stage` has the depthwise kernel's."""

    @property
    def kfac_kernel(self):
        return self.pointwise_kernel

    def build(self, input_shape):
        super().build(input_shape)
        self.depthwise_stage = SeparableDepthwiseStage(self)

    def _input_rows(self, t):
        return curvature.channel_rows(t, self._channels_first())

    def _pointwise(self, t, kernel) -> tf.Tensor:
        """The 1 x 1 convolution as a product over the channels, channels
        last (TensorFlow's CPU Conv2D refuses NCHW without oneDNN, where
        Keras' separable convolution runs)."""
        if self._channels_first():
            t = tf.experimental.numpy.moveaxis(t, 1, -1)
        kernel = tf.reshape(kernel, tuple(kernel.shape[-2:]))
        return tf.tensordot(t, kernel, axes=1)

    def call(self, inputs, training=None):
        stage = self.depthwise_stage
        depthwise = stage._kernel_for(self.depthwise_kernel, training)
        t = stage._depthwise(inputs, depthwise)
        if training:
            t = stage._tap(inputs, t)
        pointwise = self._kernel_for(self.pointwise_kernel, training)
        s = _add_bias(self._pointwise(t, pointwise), self.bias, -1)
        if self._channels_first():
            s = tf.experimental.numpy.moveaxis(s, -1, 1)
        return self._finish(t, s, training)


@keras.saving.register_keras_serializable(package="keras_kfac")
class SeparableConv1D(_SeparableConvolution, keras.layers.SeparableConv1D):
    """`keras.layers.SeparableConv1D` that records the K-FAC factors of
    its two stages when training: a per-channel block for the depthwise
    kernel, a Conv1D block for the pointwise kernel and the bias. Same
    arguments and weights."""


@keras.saving.register_keras_serializable(package="keras_kfac")
class SeparableConv2D(_SeparableConvolution, keras.layers.SeparableConv2D):
    """`keras.layers.SeparableConv2D` that records the K-FAC factors of
    its two stages when training: a per-channel block for the depthwise
    kernel, a Conv2D block for the pointwise kernel and the bias. Same
    arguments and weights."""
