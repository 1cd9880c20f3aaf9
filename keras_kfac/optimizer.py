"""K-FAC with KL clipping as a Keras 3 optimizer (TensorFlow backend).

One update, for the stacked parameters `[W; b]` of every `keras_kfac` layer
(Martens & Grosse 2015; trust region: Wu et al. 2017, ACKTR, §3.1):

1. fold the layer's batch factors into running averages,
   `A ← ε A + (1 - ε) A_batch`, `G ← ε G + (1 - ε) G_batch`,
   `ε = min(stats_decay, k / (k + 1))` after `k` earlier updates;
2. every `inverse_update_freq` updates, eigendecompose `A` and `G`;
3. precondition: `Δ = Q_A [(Q_Aᵀ ∇ Q_G) / D] Q_Gᵀ`, `D` from `damping_mode`
   (`keras_kfac.linalg.damped_eigenvalues`); variables of other layers keep
   `Δ = ∇`;
4. one step size for the whole model, `η = min(η_max, sqrt(2δ / Σ ∇ᵀΔ))`;
5. momentum averages the clipped steps, `v ← μ v + (1 - μ) η Δ`, `θ ← θ - v`.

During the first `cold_steps` updates `Δ = ∇` for every variable (momentum
SGD with the same clipping, measured with `‖∇‖²`) while the factors warm up.

With `adaptive=True` (Martens & Grosse 2015, §6.5 and §7) steps 4 and 5
become `v ← α Δ + μ v`, `θ ← θ - v`, with `α`, `μ` minimizing the damped
quadratic model under the exact curvature of the batch, and the damping
`λ` adapts to the reduction ratio (`keras_kfac.quadratic_model`); the
model's train step supplies the exact curvature (`keras_kfac.TrueFisherModel`).
"""

import contextlib
import math
import numbers
import warnings

import keras
import tensorflow as tf
from keras.src import backend

from keras_kfac import linalg, quadratic_model
from keras_kfac.curvature import KroneckerBlock
from keras_kfac.layers import add_statistics_reader, kfac_layer_of


def _local(distribution, value):
    """The value on the first replica; all-reduced values agree on all."""
    return distribution.experimental_local_results(value)[0]


def _check_integer(name: str, value, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(
            f"{name} must be an integer >= {minimum}. Received: {name}={value!r}"
        )


def _check_float(
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


def _in_xla_context() -> bool:
    """Whether the graph being traced will be compiled by XLA.

    `jit_compile=True` cannot compile a host callback (`tf.py_function`).
    TensorFlow has no public test for this; if its private one moves, we
    answer `True`, which only costs the warning that needs the callback.
    """
    try:
        from tensorflow.python.ops import control_flow_util
    except ImportError:
        return True
    return control_flow_util.GraphOrParentsInXlaContext(
        tf.compat.v1.get_default_graph()
    )


@keras.saving.register_keras_serializable(package="keras_kfac")
class KFAC(keras.optimizers.Optimizer):
    """Kronecker-factored natural gradient with a KL trust region.

    Preconditions the variables of `keras_kfac.layers` (`Dense`, `Conv1D`,
    `Conv2D`, `Embedding`, `LayerNormalization`, `BatchNormalization`,
    `RMSNormalization`: one block each, from `keras_kfac.curvature`); any
    other trainable variable gets a plain
    momentum-SGD update with the same step size. The layers record the
    factor statistics of every backward pass made with `training=True`, so
    `model.fit` uses the empirical Fisher (the gradient of the training loss
    at the real labels); `keras_kfac.TrueFisherModel` uses the true Fisher.

    Args:
        learning_rate: `η_max`, the largest step size. A float or a
            `keras.optimizers.schedules.LearningRateSchedule`. Defaults to
            `0.25`.
        damping: `λ ≥ 0`, Tikhonov damping added to the Fisher. `0` gives
            the undamped natural gradient, invariant to affine changes of
            every layer's input, but then a singular factor (a 2-way softmax
            makes `G` singular) can make updates non-finite, and those are
            skipped.
            Defaults to `1e-2`.
        kl_clip: `δ > 0`, the trust-region radius: each step satisfies
            `½ Δθᵀ F̂ Δθ ≤ δ` (the second-order estimate of the KL divergence
            it causes). OpenAI baselines' `kfac_clip` bounds `Δθᵀ F̂ Δθ`
            instead, so baselines' `kfac_clip=0.001` is `kl_clip=0.0005`
            here. `None` turns clipping off. Defaults to `1e-3`.
        momentum: `μ ∈ [0, 1)`; the update is the running average of the
            clipped steps. Defaults to `0.9`.
        stats_decay: `ε ∈ [0, 1)`, decay of the running factors. Defaults
            to `0.95`.
        inverse_update_freq: Eigendecompose (or invert) the factors every
            this many updates. Defaults to `10` (`5` with `adaptive`).
        statistics_update_freq: The layers record `A` and `G` on the
            backward passes of every this many steps (those where
            `iterations` is a multiple of it), and the running factors fold
            in only those batches, so `stats_decay` then applies once per
            this many steps. Recording is a large part of a step's cost at
            small batches. Defaults to `1`.
        cold_steps: Number of first updates that skip preconditioning.
            Defaults to `0`.
        damping_mode: `"eigen"` solves `(A ⊗ G + λ I) x = ∇` exactly in the
            factors' eigenbases (OpenAI baselines): an eigendecomposition
            of each factor per refresh, four matmuls per layer per step.
            `"factored"` uses `(A + π√λ I) ⊗ (G + √λ/π I)` (Martens &
            Grosse 2015, §6.3) through the explicit inverses of the two
            damped factors: an inversion per refresh (several times
            cheaper than an eigendecomposition), two matmuls per step;
            it needs `damping > 0`. Defaults to `"eigen"` (`"factored"`
            with `adaptive`, which measured better there: its damping acts
            more strongly on the products of small factor eigenvalues).
        adaptive: The full K-FAC of Martens & Grosse (2015) for supervised
            training. Each update is `v = α Δ + μ v_prev` with `α` and `μ`
            minimizing the quadratic model `½ vᵀ (F + λ I) v - ∇ᵀ v` under
            the exact Gauss-Newton matrix `F` of the batch (two forward-mode
            passes). One more forward pass measures the reduction ratio
            `ρ`: an update that raised the batch loss is undone
            (`review_update`), and every `damping_adaptation_interval`
            updates `λ` follows the Levenberg-Marquardt rule on `ρ`;
            `damping` is the initial `λ`. `learning_rate`, `momentum` and
            `kl_clip` are not used (Keras' decoupled `weight_decay` still
            scales with `learning_rate`). The curvature products need the
            model's loss, so train through `keras_kfac.TrueFisherModel`,
            on one device. Defaults to `False`: the KL-clipped step above,
            the one ACKTR takes.
        damping_adaptation_interval: With `adaptive`, adapt `λ` every
            this many updates. Defaults to `5`.
        damping_adaptation_decay: With `adaptive`, `λ` moves by the factor
            `ω = damping_adaptation_decay ** damping_adaptation_interval`
            at each adaptation. Defaults to `0.95` (Martens & Grosse's
            `ω = (19/20)^T`).
        min_damping: With `adaptive`, the smallest `λ`. The reduction ratio
            is measured on the batch the step was fitted to, where the
            model is accurate (`ρ ≈ 1`) at any batch size, so on small
            batches `λ` falls to this floor and stays near it: there the
            floor is the damping that holds the step to what generalizes
            beyond the batch. Defaults to `3e-5`.
        {{base_optimizer_keyword_args}}

    A step whose gradients, factor statistics or resulting update are not
    finite changes no weight, momentum or factor (`weight_decay` included):
    only `iterations` and the counter `skipped_steps` move. Keras' base class
    still applies weight constraints and, with `use_ema`, averages the
    unchanged weights after every step. When most of at least 10 updates
    were skipped, the optimizer warns once (not under `jit_compile=True`,
    which cannot call back into Python: read `skipped_steps` there).
    """

    def __init__(
        self,
        learning_rate=0.25,
        damping: float = 1e-2,
        kl_clip: float | None = 1e-3,
        momentum: float = 0.9,
        stats_decay: float = 0.95,
        inverse_update_freq: int | None = None,
        cold_steps: int = 0,
        damping_mode: str | None = None,
        statistics_update_freq: int = 1,
        adaptive: bool = False,
        damping_adaptation_interval: int = 5,
        damping_adaptation_decay: float = 0.95,
        min_damping: float = 3e-5,
        weight_decay=None,
        clipnorm=None,
        clipvalue=None,
        global_clipnorm=None,
        use_ema=False,
        ema_momentum=0.99,
        ema_overwrite_frequency=None,
        loss_scale_factor=None,
        gradient_accumulation_steps=None,
        name="kfac",
        **kwargs,
    ):
        super().__init__(
            learning_rate=learning_rate,
            name=name,
            weight_decay=weight_decay,
            clipnorm=clipnorm,
            clipvalue=clipvalue,
            global_clipnorm=global_clipnorm,
            use_ema=use_ema,
            ema_momentum=ema_momentum,
            ema_overwrite_frequency=ema_overwrite_frequency,
            loss_scale_factor=loss_scale_factor,
            gradient_accumulation_steps=gradient_accumulation_steps,
            **kwargs,
        )
        if not isinstance(
            learning_rate,
            keras.optimizers.schedules.LearningRateSchedule,
        ) and not callable(learning_rate):
            _check_float(
                "learning_rate",
                learning_rate,
                "a finite number > 0 or a LearningRateSchedule",
                lambda v: v > 0,
            )
        # damping=0 stays legal: it is the undamped natural gradient, the
        # one that is exactly invariant to affine changes of the layer
        # inputs, and it is well defined whenever the factors have full
        # rank. Rejecting 0 would not remove the failure either: a tiny
        # damping fails the same way on a singular factor. What makes it
        # silent is that skipped updates go unreported, so instead the
        # optimizer warns when most updates were skipped, whatever the
        # cause (`_warn_if_most_updates_skipped`).
        _check_float(
            "damping", damping, "a finite number >= 0", lambda v: v >= 0
        )
        _check_float(
            "kl_clip",
            kl_clip,
            "a finite number > 0, or None",
            lambda v: v > 0,
            optional=True,
        )
        _check_float(
            "momentum",
            momentum,
            "a finite number in [0, 1)",
            lambda v: 0 <= v < 1,
        )
        _check_float(
            "stats_decay",
            stats_decay,
            "a finite number in [0, 1)",
            lambda v: 0 <= v < 1,
        )
        # The base optimizer's floats. Keras reads a clip value <= 0 as "no
        # clipping" and checks `ema_momentum` only with `use_ema` (NaN
        # passes that check): keep its ranges, reject what is not finite.
        for base_name, base_value, requirement, valid in (
            ("weight_decay", weight_decay, ">= 0", lambda v: v >= 0),
            ("clipnorm", clipnorm, ">= 0", lambda v: v >= 0),
            ("clipvalue", clipvalue, ">= 0", lambda v: v >= 0),
            ("global_clipnorm", global_clipnorm, ">= 0", lambda v: v >= 0),
            ("loss_scale_factor", loss_scale_factor, "> 0", lambda v: v > 0),
        ):
            _check_float(
                base_name,
                base_value,
                f"a finite number {requirement}, or None",
                valid,
                optional=True,
            )
        _check_float(
            "ema_momentum",
            ema_momentum,
            "a finite number in [0, 1]",
            lambda v: 0 <= v <= 1,
        )
        if inverse_update_freq is None:
            inverse_update_freq = 5 if adaptive is True else 10
        if damping_mode is None:
            damping_mode = linalg.FACTORED if adaptive is True else linalg.EIGEN
        _check_integer("inverse_update_freq", inverse_update_freq, 1)
        _check_integer("cold_steps", cold_steps, 0)
        _check_integer("statistics_update_freq", statistics_update_freq, 1)
        _check_integer(
            "damping_adaptation_interval", damping_adaptation_interval, 1
        )
        _check_float(
            "damping_adaptation_decay",
            damping_adaptation_decay,
            "a finite number in (0, 1)",
            lambda v: 0 < v < 1,
        )
        _check_float(
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
        if damping_mode not in linalg.DAMPING_MODES:
            raise ValueError(
                f"damping_mode must be one of {linalg.DAMPING_MODES}. "
                f"Received: damping_mode={damping_mode!r}"
            )
        if damping_mode == linalg.FACTORED and not damping > 0:
            raise ValueError(
                "damping_mode='factored' inverts A + π√λ I and G + √λ/π I, "
                f"which needs damping > 0. Received: damping={damping!r}"
            )
        self.damping = float(damping)
        self.kl_clip = None if kl_clip is None else float(kl_clip)
        self.momentum = float(momentum)
        self.stats_decay = float(stats_decay)
        self.inverse_update_freq = inverse_update_freq
        self.cold_steps = cold_steps
        self.damping_mode = damping_mode
        self.statistics_update_freq = statistics_update_freq
        self.adaptive = adaptive
        self.damping_adaptation_interval = damping_adaptation_interval
        self.damping_adaptation_decay = float(damping_adaptation_decay)
        self.min_damping = float(min_damping)
        # Set by `supplying_curvature` around `apply` in adaptive mode.
        self._exact_curvature = None
        self._backward_scale_sq = None
        self._warned_skipped_updates = False
        self._warned_xla_refresh = False
        self._block_layers = None  # ids of the blocks' layers, once built
        add_statistics_reader(self)

    def build(self, var_list):
        if self.built:
            return
        super().build(var_list)
        self._blocks = self._find_blocks(var_list)
        self._block_layers = {id(block.layer) for block in self._blocks}
        self._warn_about_first_order_kernels(var_list)
        self._kernel_blocks = {b.kernel_index: b for b in self._blocks}
        self._velocities = [
            self.add_variable_from_reference(v, name="velocity")
            for v in var_list
        ]

        def factor(shape, name, initializer="zeros"):
            return self.add_variable(
                shape, initializer=initializer, dtype="float32", name=name
            )

        # Before the first refresh, both modes divide by λ.
        inverse_scale = (
            1.0 / math.sqrt(self.damping) if self.damping > 0 else 1.0
        )

        def inverse(shape, name, diagonal):
            initializer = (
                keras.initializers.Constant(inverse_scale)
                if diagonal
                else keras.initializers.Identity(inverse_scale)
            )
            return factor(shape, name, initializer)

        self._factors = []
        for block in self._blocks:
            state = {
                "A": factor(block.A_shape, "A"),
                "G": factor(block.G_shape, "G"),
                "updates": factor((), "factor_updates"),
            }
            if self.damping_mode == linalg.FACTORED:
                state["A_inverse"] = inverse(
                    block.A_shape, "A_inverse", block.diagonal_A
                )
                state["G_inverse"] = inverse(
                    block.G_shape, "G_inverse", block.diagonal_G
                )
            else:
                for name, dim, diagonal in (
                    ("A", block.dim_A, block.diagonal_A),
                    ("G", block.dim_G, block.diagonal_G),
                ):
                    if not diagonal:
                        state[f"Q_{name}"] = factor(
                            (dim, dim), f"Q_{name}", "identity"
                        )
                    state[f"eigenvalues_{name}"] = factor(
                        (dim,), f"eigenvalues_{name}"
                    )
            self._factors.append(state)
        self._update_count = self.add_variable(
            (), dtype="int64", name="update_count"
        )
        self._skipped_steps = self.add_variable(
            (), dtype="int64", name="skipped_steps"
        )
        self._clip_coefficient = self.add_variable(
            (), initializer="ones", dtype="float32", name="clip_coefficient"
        )
        scalar = dict(shape=(), dtype="float32")
        self._step_size = self.add_variable(name="step_size", **scalar)
        self._momentum_coefficient = self.add_variable(
            name="momentum_coefficient", **scalar
        )
        self._current_damping = self.add_variable(
            initializer=keras.initializers.Constant(self.damping),
            name="current_damping",
            **scalar,
        )
        self._predicted_change = self.add_variable(
            name="predicted_change", **scalar
        )
        self._rejected_steps = self.add_variable(
            (), dtype="int64", name="rejected_steps"
        )
        self._reduction_ratio = self.add_variable(
            name="reduction_ratio", **scalar
        )

    def _find_blocks(self, var_list) -> list[KroneckerBlock]:
        index = {id(v): i for i, v in enumerate(var_list)}
        blocks, seen = [], set()
        for variable in var_list:
            layer = kfac_layer_of(variable)
            if layer is None or id(layer) in seen:
                continue
            seen.add(id(layer))
            kernel, bias = layer.kfac_kernel, layer.kfac_bias
            kernel_index = index.get(id(kernel))
            bias_index = None if bias is None else index.get(id(bias))
            if kernel_index is None or (
                bias is not None and bias_index is None
            ):
                warnings.warn(
                    f"Layer {layer.name!r} has a kernel or bias that is not "
                    "trained by this optimizer; its variables get first-order "
                    "updates.",
                    stacklevel=3,
                )
                continue
            blocks.append(layer.block_type(layer, kernel_index, bias_index))
        if not blocks:
            warnings.warn(
                "KFAC found no keras_kfac.layers (Dense, Conv1D, Conv2D, "
                "Embedding or a normalization layer) among the "
                f"{len(var_list)} variables it trains, so every update is "
                "first-order (momentum SGD). Build the model from "
                "keras_kfac.layers or call keras_kfac.convert(model).",
                stacklevel=3,
            )
        return blocks

    def _warn_about_first_order_kernels(self, var_list) -> None:
        """One warning naming the kernels that get no K-FAC block (plain
        Keras layers, most likely, that `keras_kfac.convert` would give
        one); other first-order variables are listed by `summary()`."""
        in_blocks = {
            i
            for block in self._blocks
            for i in (block.kernel_index, block.bias_index)
            if i is not None
        }
        kernels = [
            v.path
            for i, v in enumerate(var_list)
            if i not in in_blocks and v.path.endswith(("kernel", "embeddings"))
        ]
        if self._blocks and kernels:
            warnings.warn(
                f"KFAC trains {len(kernels)} kernel(s) first-order, outside "
                f"any K-FAC block: {', '.join(kernels)}. Only "
                "keras_kfac.layers (Dense, Conv1D, Conv2D, Embedding and "
                "the normalization layers) get one; "
                "keras_kfac.convert(model) turns the Keras layers into "
                "them. KFAC.summary() lists every variable.",
                stacklevel=4,
            )

    def summary_rows(self) -> list[tuple[str, tuple, str]]:
        """`(path, shape, update)` for every variable this optimizer
        trains; `update` names the K-FAC block (its layer kind, number
        and factor sizes) or says first-order. Needs the optimizer built.
        """
        if not self.built:
            raise ValueError(
                "KFAC.summary needs the optimizer built: train a step or call "
                "optimizer.build(model.trainable_variables) first."
            )
        update_of = {}
        for number, block in enumerate(self._blocks, 1):
            kind = type(block.layer).__name__
            A, G = (
                f"{name} diagonal {dim}" if diagonal else f"{name} {dim}x{dim}"
                for name, dim, diagonal in (
                    ("A", block.dim_A, block.diagonal_A),
                    ("G", block.dim_G, block.diagonal_G),
                )
            )
            update_of[block.kernel_index] = (
                f"K-FAC {kind} block {number} ({A}, {G})"
            )
            if block.bias_index is not None:
                update_of[block.bias_index] = f"K-FAC {kind} block {number}"
        return [
            (
                v.path,
                tuple(v.shape),
                update_of.get(i, "first-order (momentum SGD, same step size)"),
            )
            for i, v in enumerate(self._trainable_variables)
        ]

    def summary(self, print_fn=None) -> None:
        """Prints which variables get K-FAC updates (and from which block)
        and which first-order ones, as `Model.summary` prints layers.

        Args:
            print_fn: Called with each line; defaults to `print`.
        """
        rows = self.summary_rows()
        print_fn = print if print_fn is None else print_fn
        kfac = sum(row[2].startswith("K-FAC") for row in rows)
        print_fn(
            f"KFAC: {kfac} of {len(rows)} variables in "
            f"{len(self._blocks)} K-FAC blocks, {len(rows) - kfac} first-order"
        )
        widths = [
            max(len(str(row[k])) for row in rows + [("variable", "shape")])
            for k in (0, 1)
        ]
        print_fn(f"{'variable':<{widths[0]}}  {'shape':<{widths[1]}}  update")
        for path, shape, update in rows:
            print_fn(
                f"{path:<{widths[0]}}  {str(shape):<{widths[1]}}  {update}"
            )

    def statistics_due(self) -> tf.Tensor | None:
        """Whether the backward pass traced now should record factor
        statistics for this optimizer: a boolean tensor, or `None` when
        every pass should (`statistics_update_freq=1`)."""
        if self.statistics_update_freq == 1:
            return None
        return tf.equal(
            tf.math.floormod(self.iterations, self.statistics_update_freq), 0
        )

    def reads_statistics_of(self, layer) -> bool:
        """Whether this optimizer may read `layer`'s factor statistics:
        before `build`, any layer's; after, its blocks' layers'."""
        return self._block_layers is None or id(layer) in self._block_layers

    @property
    def skipped_steps(self):
        """Updates skipped because something was not finite."""
        return self._skipped_steps

    @property
    def update_count(self):
        """Updates applied (the iteration counter of the K-FAC schedule)."""
        return self._update_count

    @property
    def step_size(self):
        """`η` of the last applied update (`α` with `adaptive`)."""
        return self._step_size

    @property
    def momentum_coefficient(self):
        """`μ` of the last applied update (chosen each update with
        `adaptive`; the `momentum` argument otherwise)."""
        return self._momentum_coefficient

    @property
    def current_damping(self):
        """`λ` now: `damping`, or where `adaptive` has taken it."""
        return self._current_damping

    @property
    def reduction_ratio(self):
        """`ρ` of the latest adaptive update with a finite one (0 before
        the first)."""
        return self._reduction_ratio

    @property
    def rejected_steps(self):
        """Adaptive updates undone because they raised the batch loss."""
        return self._rejected_steps

    @property
    def clip_coefficient(self):
        """`η / η_max` of the last applied update (1 when not clipped)."""
        return self._clip_coefficient

    def apply(self, grads, trainable_variables=None):
        # Sparse gradients (an Embedding's `IndexedSlices`) become dense:
        # the step, its momentum and the trust region's quadratic are dense.
        grads = [
            tf.convert_to_tensor(g) if isinstance(g, tf.IndexedSlices) else g
            for g in grads
        ]
        if trainable_variables is not None:
            trainable_variables = list(trainable_variables)
            if not self.built:
                with backend.name_scope(self.name, caller=self):
                    self.build(trainable_variables)
                self.built = True
        self._backward_scale_sq = self._measure_backward_scale_sq(
            grads, trainable_variables or self._trainable_variables
        )
        return super().apply(grads, trainable_variables)

    def _measure_backward_scale_sq(self, grads, variables) -> tf.Tensor:
        """The square of the loss scale of the backward pass, measured.

        The layers recorded `‖∇W‖²` of the pass as it was scaled (a dynamic
        or fixed loss scale); the gradients arrive here unscaled. The ratio,
        taken before any clipping, is the factor by which `G` is too large.
        """
        recorded, received = [], []
        for g, v in zip(grads, variables):
            block = self._kernel_blocks.get(self._get_variable_index(v))
            if g is None or block is None:
                continue
            recorded.append(
                tf.convert_to_tensor(block.layer.statistics.kernel_grad_sq)
            )
            g = tf.cast(g, tf.float32)
            if self.loss_scale_factor is not None:
                g = g / self.loss_scale_factor
            received.append(tf.reduce_sum(tf.square(g)))
        if not recorded:
            return tf.constant(1.0)
        received = tf.add_n(received)
        context = tf.distribute.get_replica_context()
        if context is not None:
            # The recorded values are replica means; match them.
            received = context.all_reduce(tf.distribute.ReduceOp.MEAN, received)
        recorded = tf.add_n(recorded)
        return tf.where(
            tf.logical_and(received > 0.0, recorded > 0.0),
            tf.math.divide_no_nan(recorded, received),
            tf.ones_like(received),
        )

    def _backend_update_step(self, grads, trainable_variables, learning_rate):
        grads_and_vars = self._all_reduce_sum_gradients(
            list(zip(grads, trainable_variables))
        )
        tf.__internal__.distribute.interim.maybe_merge_call(
            self._distributed_kfac_step,
            self._distribution_strategy,
            grads_and_vars,
            learning_rate,
            self._backward_scale_sq,
        )

    def _distributed_kfac_step(
        self, distribution, grads_and_vars, learning_rate, scale_sq
    ):
        """The K-FAC update, once, in cross-replica context."""
        grads = [_local(distribution, g) for g, _ in grads_and_vars]
        variables = [v for _, v in grads_and_vars]
        scale_sq = tf.cast(_local(distribution, scale_sq), tf.float32)
        learning_rate = _local(distribution, learning_rate)
        indices = [self._get_variable_index(v) for v in variables]
        grad_of = dict(zip(indices, grads))

        count = self._update_count
        is_cold = count < self.cold_steps
        batches = self._batch_factors()
        # One non-finite gradient or statistic skips the whole update, so
        # the running factors never mix in a batch the weights did not see.
        inputs_finite = linalg.all_finite(
            grads
            + [
                tf.where(fresh, tf.reduce_sum(A) + tf.reduce_sum(G), 0.0)
                for A, G, fresh in batches
            ]
        )
        self._update_factors(batches, scale_sq, inputs_finite)
        warm = count - self.cold_steps
        refresh = tf.logical_and(
            tf.logical_and(inputs_finite, warm >= 0),
            tf.math.floormod(warm, self.inverse_update_freq) == 0,
        )
        self._warn_if_refresh_compiled_for_cpu()
        tf.cond(refresh, self._update_inverses, lambda: tf.no_op())

        raw = {i: tf.cast(grad_of[i], tf.float32) for i in indices}
        # Cold steps skip the rotations into the eigenbases altogether.
        directions = tf.cond(
            is_cold, lambda: raw, lambda: {**raw, **self._precondition(grad_of)}
        )
        if self.adaptive:
            eta, mu, change = self._quadratic_model_coefficients(
                variables, indices, raw, directions
            )
            scale_of_direction = eta
        else:
            quadratic = tf.add_n(
                [tf.reduce_sum(raw[i] * directions[i]) for i in indices]
            )
            eta = linalg.kl_clip_learning_rate(
                learning_rate, self.kl_clip, quadratic
            )
            mu = tf.constant(self.momentum, tf.float32)
            scale_of_direction = (1.0 - mu) * eta
        new_velocities = {
            i: mu * tf.cast(self._velocities[i], tf.float32)
            + scale_of_direction * directions[i]
            for i in indices
        }
        ok = tf.logical_and(
            inputs_finite, linalg.all_finite(list(new_velocities.values()))
        )
        if self.adaptive:
            # A skipped update predicts no change, so no damping adapts on it.
            self.assign(self._predicted_change, tf.where(ok, change, 0.0))
        for i, variable in zip(indices, variables):
            velocity = tf.where(
                ok, new_velocities[i], tf.cast(self._velocities[i], tf.float32)
            )
            self.assign(self._velocities[i], velocity)
            step = tf.where(ok, velocity, tf.zeros_like(velocity))
            decays = self.weight_decay is not None and self._use_weight_decay(
                variable
            )
            distribution.extended.update(
                variable.value
                if isinstance(variable, backend.Variable)
                else variable,
                self._update_weight,
                args=(step, ok, learning_rate, decays),
                group=False,
            )
        self.assign_add(self._update_count, tf.cast(ok, tf.int64))
        self.assign_add(self._skipped_steps, 1 - tf.cast(ok, tf.int64))
        if not self.adaptive:
            self.assign(
                self._clip_coefficient,
                tf.where(
                    ok,
                    eta / tf.cast(learning_rate, tf.float32),
                    tf.convert_to_tensor(self._clip_coefficient),
                ),
            )
        for state, value in (
            (self._step_size, eta),
            (self._momentum_coefficient, mu),
        ):
            self.assign(state, tf.where(ok, value, tf.convert_to_tensor(state)))
        self._warn_if_most_updates_skipped()

    def _quadratic_model_coefficients(
        self, variables, indices, gradients, directions
    ):
        """`(α, μ, M₀)` of the adaptive update from the exact curvature
        products of `Δ` and the previous update `v`."""
        if self._exact_curvature is None:
            raise ValueError(
                "KFAC(adaptive=True) chooses its step from exact curvature "
                "products, which need the model's loss: train through "
                "keras_kfac.TrueFisherModel (model.fit on a plain model "
                "cannot supply them), apply the gradients inside "
                "optimizer.supplying_curvature(...) in a custom step, or "
                "use adaptive=False."
            )
        previous = {
            i: tf.cast(self._velocities[i], tf.float32) for i in indices
        }
        vectors = [
            [directions[i] for i in indices],
            [previous[i] for i in indices],
        ]
        curvature = self._exact_curvature(variables, vectors)

        def inner(x, y):
            return tf.add_n([tf.reduce_sum(a * b) for a, b in zip(x, y)])

        gradient = [gradients[i] for i in indices]
        products = [[inner(x, y) for y in vectors] for x in vectors]
        coefficients, change = quadratic_model.step_coefficients(
            curvature,
            tf.stack([tf.stack(row) for row in products]),
            tf.stack([inner(gradient, w) for w in vectors]),
            self._current_damping,
        )
        return coefficients[0], coefficients[1], change

    @contextlib.contextmanager
    def supplying_curvature(self, products):
        """Inside the block, adaptive updates take their exact curvature
        from `products(variables, vectors)`: `vectors` is a list of tangents,
        each a list of tensors shaped like `variables` (those being updated,
        in order), and it returns the matrix `[wᵢᵀ F wⱼ]` of the batch as a
        float32 tensor. A model's train step wraps `apply_gradients` in it
        (`keras_kfac.TrueFisherModel` does); it is read while the step is
        traced.
        """
        previous, self._exact_curvature = self._exact_curvature, products
        try:
            yield
        finally:
            self._exact_curvature = previous

    def review_update(self, loss_before, loss_after) -> tf.Tensor:
        """Judges the adaptive update just applied from the batch loss
        before and after it; returns whether to undo it.

        `ρ = (h(θ - v) - h(θ)) / M₀(v)` (`keras_kfac.quadratic_model`). An
        update that raised the batch loss it was fitted to, or made it
        non-finite, is rejected: its velocity is zeroed (the next update
        starts without momentum), `λ` grows by `1/ω`, `rejected_steps`
        counts it, and the caller restores the weights. Otherwise, every
        `damping_adaptation_interval` updates, `λ` follows the
        Levenberg-Marquardt rule on `ρ`. Nothing happens after a skipped
        update (it predicted no change).

        Returns:
            A boolean tensor: the caller must restore the weights.
        """
        predicted = tf.convert_to_tensor(self._predicted_change)
        applied = predicted < 0.0
        ratio = quadratic_model.reduction_ratio(
            loss_before, loss_after, predicted
        )
        rejected = tf.logical_and(
            applied,
            tf.logical_not(
                tf.cast(loss_after, tf.float32)
                <= tf.cast(loss_before, tf.float32)
            ),
        )
        factor = self.damping_adaptation_decay**self.damping_adaptation_interval
        damping = tf.convert_to_tensor(self._current_damping)
        adapted = quadratic_model.adapted_damping(
            damping, ratio, factor, self.min_damping
        )
        due = tf.logical_and(applied, self.damping_adaptation_due())
        self.assign(
            self._current_damping,
            tf.where(
                rejected,
                damping / factor,
                tf.where(due, adapted, damping),
            ),
        )
        # Only finite values are kept: the optimizer's state stays finite
        # whatever a step did (a non-finite ρ is a rejection, counted).
        self.assign(
            self._reduction_ratio,
            tf.where(
                tf.logical_and(applied, tf.math.is_finite(ratio)),
                ratio,
                tf.convert_to_tensor(self._reduction_ratio),
            ),
        )
        self.scale_velocities(tf.where(rejected, 0.0, 1.0))
        self.assign_add(self._rejected_steps, tf.cast(rejected, tf.int64))
        return rejected

    def damping_adaptation_due(self) -> tf.Tensor:
        """Whether the update just applied is one on which `λ` adapts:
        every `damping_adaptation_interval` applied updates."""
        return tf.logical_and(
            self._update_count > 0,
            tf.equal(
                tf.math.floormod(
                    self._update_count, self.damping_adaptation_interval
                ),
                0,
            ),
        )

    def _apply_weight_decay(self, variables):
        """Nothing here: `_update_weight` decays inside the guarded update.

        Keras decays every weight before the update step, outside any
        check, so a skipped update would still shrink the weights.
        """

    def _update_weight(self, variable, step, ok, learning_rate, decays):
        """`θ ← θ - wd · η_max · θ` (if `decays`), then `θ ← θ - v`.

        Keras' decoupled weight decay, in its order and arithmetic, applied
        only when the update is (`ok`); `step` is already zero otherwise.
        """
        if decays:
            weight_decay = tf.cast(self.weight_decay, variable.dtype)
            learning_rate = tf.cast(learning_rate, variable.dtype)
            decay = variable * weight_decay * learning_rate
            variable.assign_sub(tf.where(ok, decay, tf.zeros_like(decay)))
        return variable.assign_sub(tf.cast(step, variable.dtype))

    # A few bad batches early on are not "most updates": wait for this many.
    _SKIP_WARNING_MIN_UPDATES = 10

    def _warn_if_most_updates_skipped(self):
        """Warns once when more than half of the updates were skipped.

        A skip is silent by design (one bad batch should not stop training),
        so a run where nearly every update is skipped, as with `damping=0`
        and a singular factor, would otherwise look like a run that does not
        learn. The check is two integer comparisons per update; the host
        callback that warns runs only when it fires, and is left out under
        XLA, which cannot compile it.
        """
        if _in_xla_context():
            return
        skipped = tf.convert_to_tensor(self._skipped_steps)
        total = skipped + tf.convert_to_tensor(self._update_count)
        most_skipped = tf.logical_and(
            total >= self._SKIP_WARNING_MIN_UPDATES, 2 * skipped > total
        )

        def warn():
            tf.py_function(
                self._warn_skipped_updates, [skipped, total], Tout=[]
            )
            return tf.constant(True)

        tf.cond(most_skipped, warn, lambda: tf.constant(False))

    def _warn_if_refresh_compiled_for_cpu(self) -> None:
        """Warns once, while tracing, when XLA compiles the refresh of the
        factors (`jit_compile=True`) and no accelerator is visible.

        XLA cannot leave a compiled step for one op, so the refresh runs
        as XLA compiles it; XLA's CPU eigendecomposition, inverse and
        Cholesky are 10-50x slower than TensorFlow's kernels (`bench/
        step_cost.py`), more than the fusion of the other ops saves.
        """
        if self._warned_xla_refresh or not _in_xla_context():
            return
        if tf.config.list_physical_devices("GPU"):
            return
        self._warned_xla_refresh = True
        work = (
            "eigendecompositions"
            if self.damping_mode == linalg.EIGEN
            else "matrix inverses"
        )
        warnings.warn(
            f"KFAC optimizer {self.name!r}: jit_compile=True compiles the "
            f"{work} that refresh the K-FAC factors with XLA, which on "
            "CPU runs them 10-50x slower than TensorFlow does, so a step "
            "costs more than without XLA. On CPU, compile the model with "
            "jit_compile=False (what Keras' default 'auto' chooses there).",
            stacklevel=2,
        )

    def _warn_skipped_updates(self, skipped, total):
        if self._warned_skipped_updates:
            return
        self._warned_skipped_updates = True
        skipped, total = int(skipped), int(total)
        message = (
            f"KFAC optimizer {self.name!r} skipped {skipped} of its {total} "
            f"updates ({skipped / total:.0%}) because a gradient, a factor "
            "statistic or the update was not finite; "
            "`optimizer.skipped_steps` counts them."
        )
        if self.damping == 0:
            message += (
                " With damping=0 a singular factor (a 2-way softmax makes G "
                "singular) gives non-finite updates: set damping > 0."
            )
        warnings.warn(message, stacklevel=2)

    def _batch_factors(self):
        """`(A, G, fresh)` of every block's latest batch, `G` as the layer
        recorded it (loss scale included); `fresh` says whether the layer
        recorded them since the last update."""
        return [
            (
                tf.convert_to_tensor(block.layer.statistics.A),
                tf.convert_to_tensor(block.layer.statistics.G),
                tf.convert_to_tensor(block.layer.statistics.fresh) > 0.0,
            )
            for block in self._blocks
        ]

    def _update_factors(self, batches, scale_sq, ok):
        """Folds every fresh batch `A`, `G / scale²` into the running
        factors if `ok`; stale statistics cost nothing but the test."""
        for block, state, (A_batch, G_batch, fresh) in zip(
            self._blocks, self._factors, batches
        ):

            def fold(state=state, A_batch=A_batch, G_batch=G_batch):
                decay = linalg.warm_start_decay(
                    self.stats_decay, state["updates"]
                )
                for name, batch in (("A", A_batch), ("G", G_batch / scale_sq)):
                    self.assign(
                        state[name],
                        linalg.running_average(
                            tf.convert_to_tensor(state[name]), batch, decay
                        ),
                    )
                self.assign_add(state["updates"], 1.0)
                return tf.constant(True)

            tf.cond(tf.logical_and(fresh, ok), fold, lambda: tf.constant(False))
            block.layer.statistics.fresh.assign(0.0)

    def _update_inverses(self):
        damping = tf.convert_to_tensor(self._current_damping)
        for block, state in zip(self._blocks, self._factors):
            new, ok = block.refresh(state, damping, self.damping_mode)
            for name, value in new.items():
                old = tf.convert_to_tensor(state[name])
                self.assign(state[name], tf.where(ok, value, old))
        return tf.no_op()

    def _precondition(self, grad_of) -> dict:
        """`Δ` for every kernel and bias of a block present in `grad_of`."""
        directions = {}
        damping = tf.convert_to_tensor(self._current_damping)
        for block, state in zip(self._blocks, self._factors):
            if block.kernel_index not in grad_of:
                continue
            bias_grad = (
                None
                if block.bias_index is None
                else grad_of.get(block.bias_index)
            )
            if block.bias_index is not None and bias_grad is None:
                bias_grad = tf.zeros((block.dim_G,), tf.float32)
            V = block.gradient_matrix(grad_of[block.kernel_index], bias_grad)
            if block.diagonal_A and not _in_xla_context():
                X = block.precondition_touched_rows(
                    state, V, damping, self.damping_mode
                )
            else:
                X = block.precondition(state, V, damping, self.damping_mode)
            kernel_step, bias_step = block.split(X)
            directions[block.kernel_index] = kernel_step
            if block.bias_index is not None and block.bias_index in grad_of:
                directions[block.bias_index] = bias_step
        return directions

    def predicted_kl(self) -> tf.Tensor:
        """`½ vᵀ F̂ v`, the quadratic model of the KL of the latest update.

        `v` is the step the latest update took, momentum included (each
        variable's velocity). `F̂` is the curvature model without damping:
        per K-FAC block, with `"eigen"` damping, the one the step was
        preconditioned with, `F̂ = (Q_A diag(λ_A) Q_Aᵀ) ⊗ (Q_G diag(λ_G)
        Q_Gᵀ)`, evaluated as `Σ (Q_Aᵀ V Q_G)² ⊙ λ_A λ_Gᵀ`; with
        `"factored"`, `A ⊗ G` of the current factors, `Σ V ⊙ (A V G)`
        (the same when the inverses were refreshed at this update); the
        identity for variables outside
        the blocks, and for every variable while the update was a cold
        step (those measure the step with `‖∇‖²`). A trust-region method
        compares this with the KL it measures after the step.

        Returns:
            A float32 scalar.
        """
        velocity_of = {
            i: tf.cast(v, tf.float32) for i, v in enumerate(self._velocities)
        }
        cold = self._update_count <= self.cold_steps
        terms = []
        for block, state in zip(self._blocks, self._factors):
            bias = velocity_of.pop(block.bias_index, None)
            V = block.gradient_matrix(velocity_of.pop(block.kernel_index), bias)
            terms.append(
                tf.where(
                    cold,
                    tf.reduce_sum(tf.square(V)),
                    block.curvature(state, V, self.damping_mode),
                )
            )
        terms += [tf.reduce_sum(tf.square(v)) for v in velocity_of.values()]
        return 0.5 * tf.add_n(terms) if terms else tf.constant(0.0)

    def scale_velocities(self, factor) -> None:
        """Multiplies every velocity by `factor`.

        A caller that shrinks the latest step `v` to `factor · v` after the
        fact (a backtracking trust region) calls this so that the momentum
        the next update carries, and `predicted_kl()`, match the step that
        was kept.
        """
        factor = tf.cast(factor, tf.float32)
        for velocity in self._velocities:
            self.assign(velocity, tf.cast(velocity, tf.float32) * factor)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "damping": self.damping,
                "kl_clip": self.kl_clip,
                "momentum": self.momentum,
                "stats_decay": self.stats_decay,
                "inverse_update_freq": self.inverse_update_freq,
                "cold_steps": self.cold_steps,
                "damping_mode": self.damping_mode,
                "statistics_update_freq": self.statistics_update_freq,
                "adaptive": self.adaptive,
                "damping_adaptation_interval": (
                    self.damping_adaptation_interval
                ),
                "damping_adaptation_decay": self.damping_adaptation_decay,
                "min_damping": self.min_damping,
            }
        )
        return config


# `compile(optimizer="kfac")`, as Keras' own optimizers go by name.
keras.saving.get_custom_objects().update({"kfac": KFAC, "KFAC": KFAC})

KFAC.__doc__ = KFAC.__doc__.replace(
    "{{base_optimizer_keyword_args}}",
    keras.src.optimizers.optimizer.base_optimizer_keyword_args,
)
