"""Who reads the factor statistics of the `keras_kfac` layers, and where
they are kept.

A layer records them only for a reader: while some `keras_kfac.KFAC` is
alive that is not built yet (it may train any layer) or was built with
this layer among its blocks. A model of these layers trained by Adam alone
computes no factors, and costs what the Keras layers cost. The decision is
taken while TensorFlow traces the backward pass; `collecting_statistics(
True)` or `(False)` overrides it inside a block, which works inside a
`tf.function` too: ACKTR differentiates its Fisher loss under
`collecting_statistics(True)` and its training loss under
`collecting_statistics(False)`. `TrueFisherModel` takes its Fisher pass
`factors_only()` and its adaptive step's extra forward passes
`untapped_forward()`.

The statistics live in variables the layer does not track: they are scratch
space between the backward pass and the optimizer step, are not saved with
the model, and do not change the layer's weight list.
"""

import contextlib
import weakref
from typing import TYPE_CHECKING, Protocol

import keras
import tensorflow as tf

if TYPE_CHECKING:
    from keras_kfac.layers import KFACLayer


class StatisticsReader(Protocol):
    """What the layers ask of an optimizer that reads their statistics
    (`keras_kfac.KFAC` is one)."""

    @property
    def built(self) -> bool:
        """Whether the reader has chosen its layers."""

    def reads_statistics_of(self, layer: "KFACLayer") -> bool:
        """Whether it reads `layer`'s statistics: any layer's before it
        is built, its blocks' layers' after."""

    def statistics_due(self) -> tf.Tensor | None:
        """Whether the backward pass traced now records statistics for
        it: a boolean tensor, or `None` for every pass."""


# None: a layer records statistics when a reader wants them (see above).
_collecting: list[bool | None] = [None]
# False inside `untapped_forward`: layers insert no taps.
_tapping: list[bool] = [True]
# False inside `factors_only`: backward passes record no `‖∇W‖²`.
_norming: list[bool] = [True]
_live_layers: "weakref.WeakSet[KFACLayer]" = weakref.WeakSet()
_readers: "weakref.WeakSet[StatisticsReader]" = weakref.WeakSet()


def add_statistics_reader(reader: StatisticsReader) -> None:
    """Registers a live reader of the layers' statistics
    (`keras_kfac.KFAC` registers itself); held weakly."""
    _readers.add(reader)


@contextlib.contextmanager
def _setting(flag: list, value):
    """`flag[0] = value` inside the block, restored after it."""
    previous = flag[0]
    flag[0] = value
    try:
        yield
    finally:
        flag[0] = previous


def collecting_statistics(enabled: bool = True):
    """Turns factor collection on or off for backward passes traced inside,
    whatever optimizer reads them (a context manager).

    Args:
        enabled: Whether backward passes traced in this block record `A` and
            `G`. Defaults to `True`.
    """
    return _setting(_collecting, bool(enabled))


def untapped_forward():
    """Layers called inside insert no taps in their forward pass (a
    context manager): for passes no factor or gradient norm is read from
    (the adaptive step's curvature products and reduction ratio), which
    then cost what the plain Keras layers cost."""
    return _setting(_tapping, False)


def factors_only():
    """Backward passes traced inside record `A` and `G` (when collected)
    but no kernel-gradient norm (a context manager): for a pass whose
    gradient no optimizer receives (the Fisher pass), whose weight
    gradients TensorFlow then prunes as unused."""
    return _setting(_norming, False)


def inserts_taps() -> bool:
    """Whether a layer's forward pass traced now inserts its taps."""
    return _tapping[0]


def is_collecting_statistics(layer: "KFACLayer | None" = None) -> bool:
    """Whether a backward pass traced now records `layer`'s statistics:
    as `collecting_statistics` set it, else whether a live optimizer reads
    them (any layer's, for `layer=None`)."""
    if _collecting[0] is not None:
        return _collecting[0]
    return _read_by_a_reader(layer)


def statistics_due(layer: "KFACLayer") -> tf.Tensor | None:
    """Whether this step's backward pass records `layer`'s statistics, by
    the schedules of the optimizers that read them (the built ones whose
    blocks hold `layer`, else those not built yet): a boolean tensor, or
    `None` for "yes" (a reader records every step, or there is none)."""
    readers = [r for r in list(_readers) if r.reads_statistics_of(layer)]
    built = [r for r in readers if r.built]
    dues = []
    for reader in built or readers:
        due = reader.statistics_due()
        if due is None:
            return None
        dues.append(due)
    return tf.reduce_any(tf.stack(dues)) if dues else None


def _read_by_a_reader(layer: "KFACLayer | None") -> bool:
    return any(
        layer is None or reader.reads_statistics_of(layer)
        for reader in list(_readers)
    )


def register_layer(layer: "KFACLayer") -> None:
    """Makes a built layer findable by `kfac_layers_of`; held weakly."""
    _live_layers.add(layer)


def records_kernel_gradient(layer: "KFACLayer") -> bool:
    """Whether a backward pass traced now records `layer`'s `‖∇W‖²`: when
    statistics are collected, and on every pass a reader may receive the
    gradient of (the loss pass too, whose scale it measures), unless
    inside `factors_only`."""
    if not _norming[0]:
        return False
    return bool(_collecting[0]) or _read_by_a_reader(layer)


def kfac_layers_of(variable) -> list["KFACLayer"]:
    """The live `keras_kfac` layers whose blocks hold `variable` (a kernel,
    a bias, a recurrent kernel): one, or several that share it (a GRU's
    two stages share its bias)."""
    return [
        layer
        for layer in list(_live_layers)
        if layer.built
        and any(v is variable for v in layer.kfac_variables if v is not None)
    ]


class FactorStatistics:
    """The latest batch `A`, `G` and `‖∇W‖²` of one layer.

    Variables average over replicas (`aggregation="mean"`), so under
    `tf.distribute` they hold the statistics of the global batch. `fresh` is
    1 after a backward pass recorded `A` and `G`; the optimizer folds them
    into its running averages and sets it back to 0.
    """

    def __init__(self, A_shape: tuple, G_shape: tuple, name: str):
        def variable(shape, suffix):
            return keras.Variable(
                initializer="zeros",
                shape=shape,
                dtype="float32",
                trainable=False,
                autocast=False,
                aggregation="mean",
                name=f"{name}_{suffix}",
            )

        # A diagonal factor (an embedding's `A`, a normalization layer's
        # `G`) is kept as its diagonal.
        self.A = variable(A_shape, "batch_A")
        self.G = variable(G_shape, "batch_G")
        self.fresh = variable((), "fresh")
        self.kernel_grad_sq = variable((), "kernel_grad_sq")
