"""`LayerNormalization`, `BatchNormalization` and `RMSNormalization` that
record the diagonal Fisher of their scale `γ` and shift `β`."""

import keras
import tensorflow as tf

from keras_kfac import blocks, curvature
from keras_kfac.layers.base import KFACLayer


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
