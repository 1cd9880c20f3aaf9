"""`Dense` that taps its factors."""

import keras
import tensorflow as tf

from keras_kfac import curvature
from keras_kfac.layers.weight_sharing import WeightShared


@keras.saving.register_keras_serializable(package="keras_kfac")
class Dense(WeightShared, keras.layers.Dense):
    """`keras.layers.Dense` that records its K-FAC factors when training.

    Same arguments and weights as `keras.layers.Dense`, and
    `weight_sharing` for inputs of rank > 2, whose leading axes after the
    batch are positions sharing the kernel: `"expand"` (the default) makes
    every (example, position) a row of `A` and `G`, `"reduce"` averages
    each example's positions in `a` and sums them in `g` first
    (`keras_kfac.layers.weight_sharing`).
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
