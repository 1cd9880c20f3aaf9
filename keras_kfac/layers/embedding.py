"""`Embedding` that taps its factors: `A = diag(a)`, the token
frequencies."""

import keras
import tensorflow as tf

from keras_kfac import blocks, curvature
from keras_kfac.layers.base import KFACLayer


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
