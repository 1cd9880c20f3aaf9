"""`Dense` that taps its factors."""

import keras
import tensorflow as tf

from keras_kfac import curvature
from keras_kfac.layers.base import KFACLayer


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
