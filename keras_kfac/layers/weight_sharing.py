"""`WeightShared`, the mixin of the layers that apply their weights at many
positions of each example: K-FAC-expand or K-FAC-reduce.

A Dense or EinsumDense layer on sequences, and every convolution, applies
one kernel at `R` positions of each example (tokens, patches). Their rows
of `a` and `g` are (example, position) pairs, example-major. Expand keeps
every pair as a row; reduce first averages each example's `a` over its
positions and sums its `g` (`keras_kfac.curvature`, Eschenhagen et al.
2023), so its factors cost `R` times fewer products: exact where the loss
sees the positions only through a sum (a pooled classifier), and the
cheaper approximation elsewhere.
"""

import tensorflow as tf

from keras_kfac import curvature
from keras_kfac.layers.base import KFACLayer

WEIGHT_SHARING = ("expand", "reduce")


def check_weight_sharing(weight_sharing) -> None:
    """Raises on a `weight_sharing` other than `"expand"` or `"reduce"`."""
    if weight_sharing not in WEIGHT_SHARING:
        raise ValueError(
            f"weight_sharing must be one of {WEIGHT_SHARING}. "
            f"Received: weight_sharing={weight_sharing!r}"
        )


class WeightShared(KFACLayer):
    """Mixin for a layer whose factors come from `_input_rows(x)` and
    `_output_rows(ds)`, each `(rows, width)` with every example's positions
    consecutive, and which takes `weight_sharing`.

    Args:
        weight_sharing: `"expand"` (every (example, position) is a row of
            `A` and `G`) or `"reduce"` (each example's positions are
            averaged in `a` and summed in `g` first). Defaults to
            `"expand"`.
    """

    def __init__(self, *args, weight_sharing: str = "expand", **kwargs):
        super().__init__(*args, **kwargs)
        check_weight_sharing(weight_sharing)
        self.weight_sharing = weight_sharing

    def _input_rows(self, x: tf.Tensor) -> tf.Tensor:
        """Rows of `a`: the layer's input at each position."""
        raise NotImplementedError

    def _output_rows(self, ds: tf.Tensor) -> tf.Tensor:
        """Rows of `∂L/∂s`: the output channels as the columns."""
        return curvature.channel_rows(ds, self._channels_axis() == 1)

    def _shared(self, rows, x, reduction: str) -> tf.Tensor:
        """`rows`, or under reduce each example's positions reduced by
        `reduction` (`"mean"` or `"sum"`). An input of rank 2 (vectors)
        has one position per example: both are the same rows."""
        if self.weight_sharing == "expand" or x.shape.rank == 2:
            return rows
        return curvature.reduce_positions(rows, tf.shape(x)[0], reduction)

    def _input_factor(self, x: tf.Tensor) -> tf.Tensor:
        rows = self._shared(self._input_rows(x), x, "mean")
        return curvature.input_factor(rows, self.use_bias)

    def _output_factor(self, x, ds, replicas: int) -> tf.Tensor:
        rows = self._shared(self._output_rows(ds), x, "sum")
        return curvature.output_factor(rows, tf.shape(x)[0], replicas, -1)

    def get_config(self):
        return {**super().get_config(), "weight_sharing": self.weight_sharing}
