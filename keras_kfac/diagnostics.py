"""What `keras_kfac.KFAC` tells its user: argument checks, the summary of
which variables get which update, and the warnings.

Errors name what was received, as Keras' do. The warnings are the ones a
run needs to be understood: kernels left first-order, updates mostly
skipped, a refresh compiled by XLA for the CPU.
"""

import math
import numbers
import warnings

import keras
import tensorflow as tf

from keras_kfac import linalg, xla

# A few bad batches early on are not "most updates": wait for this many.
SKIP_WARNING_MIN_UPDATES = 10

FIRST_ORDER = "first-order (momentum SGD, same step size)"


def check_integer(name: str, value, minimum: int) -> None:
    """Raises unless `value` is an integer (not a bool) `>= minimum`."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(
            f"{name} must be an integer >= {minimum}. "
            f"Received: {name}={value!r}"
        )


def check_float(
    name: str, value, requirement: str, valid, optional: bool = False
) -> None:
    """Raises unless `value` is a finite real number for which `valid` holds.

    NaN fails every comparison, so a range check alone lets it through as
    often as it rejects it; finiteness is checked first, for every float.
    """
    if optional and value is None:
        return
    if (
        isinstance(value, bool)
        or not isinstance(value, numbers.Real)
        or not math.isfinite(value)
        or not valid(value)
    ):
        received = repr(value) if isinstance(value, str) else value
        raise ValueError(
            f"{name} must be {requirement}. Received: {name}={received}"
        )


def check_arguments(arguments: dict) -> None:
    """Raises on the first argument of `KFAC` that is out of its range;
    `arguments` maps each argument's name to its value (defaults already
    resolved)."""
    a = arguments
    check_step_arguments(
        a["learning_rate"],
        a["damping"],
        a["kl_clip"],
        a["momentum"],
        a["stats_decay"],
    )
    check_base_arguments(
        a["weight_decay"],
        a["clipnorm"],
        a["clipvalue"],
        a["global_clipnorm"],
        a["loss_scale_factor"],
        a["ema_momentum"],
    )
    check_schedule_arguments(
        a["inverse_update_freq"],
        a["cold_steps"],
        a["statistics_update_freq"],
        a["damping_mode"],
    )
    check_adaptive_arguments(
        a["adaptive"],
        a["damping"],
        a["damping_mode"],
        a["damping_adaptation_interval"],
        a["damping_adaptation_decay"],
        a["min_damping"],
        a["gradient_accumulation_steps"],
        a["reference_learning_rate"],
    )


def check_step_arguments(
    learning_rate, damping, kl_clip, momentum, stats_decay
) -> None:
    """The arguments of the KL-clipped step (and the damping)."""
    if not isinstance(
        learning_rate, keras.optimizers.schedules.LearningRateSchedule
    ) and not callable(learning_rate):
        check_float(
            "learning_rate",
            learning_rate,
            "a finite number > 0 or a LearningRateSchedule",
            lambda v: v > 0,
        )
    # damping=0 stays legal: it is the undamped natural gradient, exactly
    # invariant to affine changes of the layer inputs, and well defined
    # whenever the factors have full rank. Rejecting 0 would not remove the
    # failure either (a tiny damping fails alike on a singular factor); the
    # optimizer warns instead when most updates were skipped.
    check_float("damping", damping, "a finite number >= 0", lambda v: v >= 0)
    check_float(
        "kl_clip",
        kl_clip,
        'a finite number > 0, "auto", or None',
        lambda v: v > 0,
        optional=True,
    )
    for name, value in (("momentum", momentum), ("stats_decay", stats_decay)):
        check_float(
            name, value, "a finite number in [0, 1)", lambda v: 0 <= v < 1
        )


def check_base_arguments(
    weight_decay,
    clipnorm,
    clipvalue,
    global_clipnorm,
    loss_scale_factor,
    ema_momentum,
) -> None:
    """The base optimizer's floats. Keras reads a clip value <= 0 as "no
    clipping" and checks `ema_momentum` only with `use_ema` (NaN passes
    that check): keep its ranges, reject what is not finite."""
    for name, value, requirement, valid in (
        ("weight_decay", weight_decay, ">= 0", lambda v: v >= 0),
        ("clipnorm", clipnorm, ">= 0", lambda v: v >= 0),
        ("clipvalue", clipvalue, ">= 0", lambda v: v >= 0),
        ("global_clipnorm", global_clipnorm, ">= 0", lambda v: v >= 0),
        ("loss_scale_factor", loss_scale_factor, "> 0", lambda v: v > 0),
    ):
        check_float(
            name,
            value,
            f"a finite number {requirement}, or None",
            valid,
            optional=True,
        )
    check_float(
        "ema_momentum",
        ema_momentum,
        "a finite number in [0, 1]",
        lambda v: 0 <= v <= 1,
    )


def check_schedule_arguments(
    inverse_update_freq, cold_steps, statistics_update_freq, damping_mode
) -> None:
    """The refresh and statistics schedules and the damping mode."""
    check_integer("inverse_update_freq", inverse_update_freq, 1)
    check_integer("cold_steps", cold_steps, 0)
    check_integer("statistics_update_freq", statistics_update_freq, 1)
    if damping_mode not in linalg.DAMPING_MODES:
        raise ValueError(
            f"damping_mode must be one of {linalg.DAMPING_MODES}. "
            f"Received: damping_mode={damping_mode!r}"
        )


def check_adaptive_arguments(
    adaptive,
    damping,
    damping_mode,
    damping_adaptation_interval,
    damping_adaptation_decay,
    min_damping,
    gradient_accumulation_steps,
    reference_learning_rate,
) -> None:
    """The adaptive mode's arguments, and what it and the factored damping
    need of the others."""
    if adaptive is True:
        check_float(
            "reference_learning_rate",
            reference_learning_rate,
            "a finite number > 0 (by default the learning rate's initial "
            "value: give it for a schedule that starts at 0)",
            lambda v: v > 0,
        )
    elif reference_learning_rate is not None:
        raise ValueError(
            "reference_learning_rate applies only with adaptive=True. "
            f"Received: reference_learning_rate={reference_learning_rate!r}"
        )
    check_integer("damping_adaptation_interval", damping_adaptation_interval, 1)
    check_float(
        "damping_adaptation_decay",
        damping_adaptation_decay,
        "a finite number in (0, 1)",
        lambda v: 0 < v < 1,
    )
    check_float(
        "min_damping", min_damping, "a finite number >= 0", lambda v: v >= 0
    )
    if not isinstance(adaptive, bool):
        raise ValueError(
            f"adaptive must be True or False. Received: adaptive={adaptive!r}"
        )
    if adaptive and not damping > 0:
        raise ValueError(
            "adaptive=True adapts the damping multiplicatively from its "
            f"initial value, which must be > 0. Received: damping={damping!r}"
        )
    if adaptive and gradient_accumulation_steps:
        raise ValueError(
            "adaptive=True fits α and μ on the batch of each update, so "
            "it cannot accumulate gradients over several batches. "
            "Received: gradient_accumulation_steps="
            f"{gradient_accumulation_steps!r}"
        )
    if damping_mode == linalg.FACTORED and not damping > 0:
        raise ValueError(
            "damping_mode='factored' inverts A + π√λ I and G + √λ/π I, "
            f"which needs damping > 0. Received: damping={damping!r}"
        )


def warn_first_order_kernels(blocks, var_list) -> None:
    """One warning naming the kernels that get no K-FAC block (plain Keras
    layers, most likely, that `keras_kfac.convert` would give one); other
    first-order variables are listed by `KFAC.summary()`."""
    in_blocks = {
        i for block in blocks for i in block.variable_indices if i is not None
    }
    kernels = [
        v.path
        for i, v in enumerate(var_list)
        if i not in in_blocks and v.path.endswith(("kernel", "embeddings"))
    ]
    if blocks and kernels:
        warnings.warn(
            f"KFAC trains {len(kernels)} kernel(s) first-order, outside "
            f"any K-FAC block: {', '.join(kernels)}. Only "
            "keras_kfac.layers (dense, attention, convolution, embedding, "
            "recurrent and normalization layers) get one; "
            "keras_kfac.convert(model) turns the Keras layers into "
            "them. KFAC.summary() lists every variable.",
            stacklevel=4,
        )


def skipped_updates_message(
    name: str, skipped: int, total: int, damping: float
) -> str:
    """The warning for an optimizer that skipped most of its updates."""
    message = (
        f"KFAC optimizer {name!r} skipped {skipped} of its {total} "
        f"updates ({skipped / total:.0%}) because a gradient, a factor "
        "statistic or the update was not finite; "
        "`optimizer.skipped_steps` counts them."
    )
    if damping == 0:
        message += (
            " With damping=0 a singular factor (a 2-way softmax makes G "
            "singular) gives non-finite updates: set damping > 0."
        )
    return message


def refresh_compiled_for_cpu_message(name: str, damping_mode: str) -> str:
    """The warning for a refresh of the factors that XLA compiles for the
    CPU: XLA cannot leave a compiled step for one op, and its CPU
    eigendecomposition, inverse and Cholesky are 10-50x slower than
    TensorFlow's kernels (`bench/step_cost.py`), more than the fusion of
    the other ops saves."""
    work = (
        "eigendecompositions"
        if damping_mode == linalg.EIGEN
        else "matrix inverses"
    )
    return (
        f"KFAC optimizer {name!r}: jit_compile=True compiles the "
        f"{work} that refresh the K-FAC factors with XLA, which on "
        "CPU runs them 10-50x slower than TensorFlow does, so a step "
        "costs more than without XLA. On CPU, compile the model with "
        "jit_compile=False (what Keras' default 'auto' chooses there)."
    )


class UpdateWarnings:
    """The warnings one optimizer gives about its updates, each once.

    Args:
        name: The optimizer's name.
        damping: Its initial `λ`.
        damping_mode: `"eigen"` or `"factored"`.
    """

    def __init__(self, name: str, damping: float, damping_mode: str):
        self.name = name
        self.damping = damping
        self.damping_mode = damping_mode
        self.warned_skipped_updates = False
        self.warned_xla_refresh = False
        # Block refreshes that were not finite (`if_refresh_failed`).
        self.failed_refreshes = 0

    def if_most_updates_skipped(
        self, skipped_steps: tf.Tensor, update_count: tf.Tensor
    ) -> None:
        """Traces a warning, given once, for when more than half of at
        least `SKIP_WARNING_MIN_UPDATES` updates were skipped.

        A skip is silent by design (one bad batch should not stop
        training), so a run where nearly every update is skipped, as with
        `damping=0` and a singular factor, would otherwise look like a run
        that does not learn. The test is two integer comparisons per
        update; the host callback that warns runs only when it fires, and
        is left out under XLA, which cannot compile it.
        """
        if xla.in_xla_context():
            return
        skipped = tf.convert_to_tensor(skipped_steps)
        total = skipped + tf.convert_to_tensor(update_count)
        most_skipped = tf.logical_and(
            total >= SKIP_WARNING_MIN_UPDATES, 2 * skipped > total
        )

        def warn():
            tf.py_function(
                self._warn_skipped_updates, [skipped, total], Tout=[]
            )
            return tf.constant(True)

        tf.cond(most_skipped, warn, lambda: tf.constant(False))

    def _warn_skipped_updates(self, skipped, total) -> None:
        if self.warned_skipped_updates:
            return
        self.warned_skipped_updates = True
        warnings.warn(
            skipped_updates_message(
                self.name, int(skipped), int(total), self.damping
            ),
            stacklevel=2,
        )

    def if_refresh_failed(self, failed: tf.Tensor, update_count) -> None:
        """Traces the count of the `failed` block refreshes of an update
        (an int32 scalar) into `failed_refreshes`, and a warning, given
        once, for the first. Such a block keeps its previous eigenbases or
        inverses, so training goes on with staler curvature; a count that
        grows says the factors are indefinite beyond the damping. The host
        callback runs only when a refresh failed, and is left out under
        XLA."""
        if xla.in_xla_context():
            return

        def count():
            tf.py_function(
                self._count_failed_refreshes, [failed, update_count], Tout=[]
            )
            return tf.constant(True)

        tf.cond(failed > 0, count, lambda: tf.constant(False))

    def _count_failed_refreshes(self, failed, update_count) -> None:
        first = self.failed_refreshes == 0
        self.failed_refreshes += int(failed)
        if first:
            warnings.warn(
                f"KFAC optimizer {self.name!r}: the refresh of {int(failed)} "
                "block(s) at update "
                f"{int(update_count)} was not finite (damping_mode="
                f"{self.damping_mode!r}, damping={self.damping}); they keep "
                "their previous eigenbases or inverses. A larger damping "
                "keeps the factors positive definite. "
                "optimizer.failed_refreshes counts them.",
                stacklevel=2,
            )

    def if_refresh_compiled_for_cpu(self) -> None:
        """Warns once, while tracing, when XLA compiles the refresh of the
        factors (`jit_compile=True`) and no accelerator is visible."""
        if self.warned_xla_refresh or not xla.in_xla_context():
            return
        if tf.config.list_physical_devices("GPU"):
            return
        self.warned_xla_refresh = True
        warnings.warn(
            refresh_compiled_for_cpu_message(self.name, self.damping_mode),
            stacklevel=3,
        )


def summary_rows(blocks, variables) -> list[tuple[str, tuple, str]]:
    """`(path, shape, update)` for every variable; `update` names the
    K-FAC block (its layer kind, number and factor sizes, and `reduce`
    for a layer taking K-FAC-reduce over its positions) or says
    first-order."""
    update_of = {}
    for number, block in enumerate(blocks, 1):
        # A stage of a layer (a separable convolution's depthwise kernel)
        # names itself; a stacked block (one per channel) counts its
        # matrices.
        kind = getattr(block.layer, "kfac_kind", type(block.layer).__name__)
        stack = f"{block.channels} x " if hasattr(block, "channels") else ""
        A, G = (
            f"{name} {stack}diagonal {dim}"
            if diagonal
            else f"{name} {stack}{dim}x{dim}"
            for name, dim, diagonal in (
                ("A", block.dim_A, block.diagonal_A),
                ("G", block.dim_G, block.diagonal_G),
            )
        )
        reduce = getattr(block.layer, "weight_sharing", None) == "reduce"
        update_of[block.kernel_index] = (
            f"K-FAC {kind} block {number} ({A}, {G}"
            f"{', reduce' if reduce else ''})"
        )
        for index in block.variable_indices[1:]:
            if index is None:
                continue
            # A variable shared by blocks (a GRU's bias) names them all.
            shared = update_of.get(index)
            update_of[index] = (
                f"K-FAC {kind} block {number}"
                if shared is None
                else f"{shared} + {kind} block {number}"
            )
    return [
        (v.path, tuple(v.shape), update_of.get(i, FIRST_ORDER))
        for i, v in enumerate(variables)
    ]


def print_summary(rows, number_of_blocks: int, print_fn) -> None:
    """Prints `summary_rows` as a table under a one-line count."""
    kfac = sum(row[2].startswith("K-FAC") for row in rows)
    print_fn(
        f"KFAC: {kfac} of {len(rows)} variables in "
        f"{number_of_blocks} K-FAC blocks, {len(rows) - kfac} first-order"
    )
    widths = [
        max(len(str(row[k])) for row in rows + [("variable", "shape")])
        for k in (0, 1)
    ]
    print_fn(f"{'variable':<{widths[0]}}  {'shape':<{widths[1]}}  update")
    for path, shape, update in rows:
        print_fn(f"{path:<{widths[0]}}  {str(shape):<{widths[1]}}  {update}")
