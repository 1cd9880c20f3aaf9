"""`Conv1D`, `Conv2D` and `Conv3D` that tap their factors (Grosse & Martens
2016)."""

import keras
import tensorflow as tf

from keras_kfac import curvature
from keras_kfac.layers.weight_sharing import WeightShared


class _Convolution(WeightShared):
    """What the convolutions share: no groups, channels by format, and
    `weight_sharing` over the output positions: `"expand"` (the default,
    every (example, patch) a row, Grosse & Martens 2016) or `"reduce"`
    (each example's patches averaged in `a` and its positions' gradients
    summed in `g`, `keras_kfac.layers.weight_sharing`)."""

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
class Conv3D(_Convolution, keras.layers.Conv3D):
    """`keras.layers.Conv3D` that records its K-FAC factors when training.

    Same arguments and weights as `keras.layers.Conv3D`: `"valid"` or
    `"same"` padding, strides and data format. Dilation and grouped
    convolutions are not supported (TensorFlow extracts volume patches
    without dilation).
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if tuple(self.dilation_rate) != (1, 1, 1):
            raise ValueError(
                "keras_kfac.layers.Conv3D supports only dilation_rate=1. "
                f"Received: dilation_rate={self.dilation_rate}"
            )

    def _input_rows(self, x):
        return curvature.conv3d_patches(
            x, self.kernel_size, self.strides, self.padding, self.data_format
        )

    def call(self, inputs, training=None):
        kernel = self._kernel_for(self.kernel, training)
        s = self._add_bias(self.convolution_op(inputs, kernel))
        return self._finish(inputs, s, training)
