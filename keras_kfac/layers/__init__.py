"""Keras layers that tap the Kronecker factors K-FAC needs.

`Dense`, `Conv1D`, `Conv2D`, `Conv3D`, their transposed, depthwise and
separable variants (`keras_kfac.layers.convolution_variants`), `EinsumDense`,
`MultiHeadAttention`, `Embedding`, `LSTM`, `GRU`, `SimpleRNN`,
`LayerNormalization`, `BatchNormalization` and `RMSNormalization` behave
exactly like their Keras parents and load the same weights. When called
with `training=True` they also record, for the optimizer:

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

from keras_kfac.layers.base import KFACLayer
from keras_kfac.layers.convolution import Conv1D, Conv2D, Conv3D
from keras_kfac.layers.convolution_variants import (
    Conv1DTranspose,
    Conv2DTranspose,
    Conv3DTranspose,
    DepthwiseConv1D,
    DepthwiseConv2D,
    SeparableConv1D,
    SeparableConv2D,
)
from keras_kfac.layers.dense import Dense
from keras_kfac.layers.einsum_dense import EinsumDense, MultiHeadAttention
from keras_kfac.layers.embedding import Embedding
from keras_kfac.layers.normalization import (
    BatchNormalization,
    LayerNormalization,
    RMSNormalization,
)
from keras_kfac.layers.recurrent import GRU, LSTM, SimpleRNN
from keras_kfac.statistics import collecting_statistics

__all__ = [
    "BatchNormalization",
    "Conv1D",
    "Conv1DTranspose",
    "Conv2D",
    "Conv2DTranspose",
    "Conv3D",
    "Conv3DTranspose",
    "DepthwiseConv1D",
    "DepthwiseConv2D",
    "Dense",
    "EinsumDense",
    "Embedding",
    "GRU",
    "KFACLayer",
    "LSTM",
    "LayerNormalization",
    "MultiHeadAttention",
    "RMSNormalization",
    "SeparableConv1D",
    "SeparableConv2D",
    "SimpleRNN",
    "collecting_statistics",
]
