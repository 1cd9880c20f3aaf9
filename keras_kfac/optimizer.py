"""K-FAC with KL clipping as a Keras 3 optimizer (TensorFlow backend).

One update, for the stacked parameters `[W; b]` of every `keras_kfac` layer
(Martens & Grosse 2015; trust region: Wu et al. 2017, ACKTR, §3.1):

1. fold the layer's batch factors into running averages,
   `A ← ε A + (1 - ε) A_batch`, `G ← ε G + (1 - ε) G_batch`,
   `ε = min(stats_decay, k / (k + 1))` after `k` earlier updates;
2. every `inverse_update_freq` updates, eigendecompose (or invert) `A`, `G`;
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

Where each part lives: steps 1-3 and the blocks' state in
`keras_kfac.estimator` and `keras_kfac.blocks`; step 4 and the trust-region
methods in `keras_kfac.kl_clip`; the adaptive rule in `keras_kfac.adaptive`;
the counters and coefficients an update keeps in `keras_kfac.records`;
argument checks, `summary` and the warnings in `keras_kfac.diagnostics`.
This module keeps the Keras surface and the update as a recipe
(`_distributed_kfac_step`).
"""

import keras
import tensorflow as tf
from keras.src import backend

from keras_kfac import diagnostics, estimator, linalg
from keras_kfac.adaptive import AdaptiveUpdates, initial_learning_rate
from keras_kfac.kl_clip import AUTO, KLClippedUpdates, default_kl_clip
from keras_kfac.records import StepCoefficients, UpdateRecords
from keras_kfac.statistics import add_statistics_reader

# The arguments `KFAC.get_config` adds to the base optimizer's, each
# stored under its name.
_HYPERPARAMETERS = (
    "damping",
    "kl_clip",
    "momentum",
    "stats_decay",
    "inverse_update_freq",
    "cold_steps",
    "damping_mode",
    "statistics_update_freq",
    "adaptive",
    "damping_adaptation_interval",
    "damping_adaptation_decay",
    "min_damping",
    "reference_learning_rate",
)
# What `locals()` in `KFAC.__init__` holds besides its arguments.
_NOT_ARGUMENTS = ("self", "kwargs", "__class__")


def _local(distribution, value):
    """The value on the first replica; all-reduced values agree on all."""
    return distribution.experimental_local_results(value)[0]


@keras.saving.register_keras_serializable(package="keras_kfac")
class KFAC(
    UpdateRecords,
    KLClippedUpdates,
    AdaptiveUpdates,
    keras.optimizers.Optimizer,
):
    """Kronecker-factored natural gradient with a KL trust region.

    Preconditions the variables of `keras_kfac.layers` (dense, attention,
    convolution, embedding, recurrent and normalization layers: one block
    each, two for a separable convolution); any other trainable variable
    gets a plain momentum-SGD update with the same step size. The layers
    record the factor statistics of every backward pass made with
    `training=True`, so `model.fit` uses the empirical Fisher (the gradient
    of the training loss at the real labels); `keras_kfac.TrueFisherModel`
    uses the true Fisher.

    Args:
        learning_rate: `η_max`, the largest step size. A float or a
            `keras.optimizers.schedules.LearningRateSchedule`. Defaults to
            `0.25`.
        damping: `λ ≥ 0`, Tikhonov damping added to the Fisher. `0` gives
            the undamped natural gradient, invariant to affine changes of
            every layer's input, but then a singular factor (a 2-way softmax
            makes `G` singular) can make updates non-finite, and those are
            skipped. Defaults to `1e-2`.
        kl_clip: `δ > 0`, the trust-region radius: each step satisfies
            `½ Δθᵀ F̂ Δθ ≤ δ` (the second-order estimate of the KL divergence
            it causes). OpenAI baselines' `kfac_clip` bounds `Δθᵀ F̂ Δθ`
            instead, so baselines' `kfac_clip=0.001` is `kl_clip=0.0005`
            here. With `adaptive`, the whole update `v` satisfies
            `½ vᵀ F v ≤ δ` under the exact `F` of the batch. `None` turns
            clipping off. Defaults to `"auto"`: `1e-3`, or `0.06` with
            `adaptive`.
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
            this many steps (`TrueFisherModel` skips its Fisher pass on the
            others). Recording is much of a step's cost. Defaults to `1`.
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
            the Gauss-Newton matrix `F` of the batch (two forward
            differences). One more forward pass measures the reduction ratio
            `ρ`: an update that raised the batch loss is undone
            (`review_update`), and every `damping_adaptation_interval`
            updates `λ` follows the Levenberg-Marquardt rule on `ρ`;
            `damping` is the initial `λ`, `momentum` the largest `μ`, and
            `kl_clip` bounds the update's KL (fitted freely to a small
            batch, `μ` swings far outside `[0, 1)` and the update changes
            the predictions more than the batch justifies). A
            `learning_rate` below `reference_learning_rate` takes that
            fraction of the update, so a schedule's decay or
            `ReduceLROnPlateau` shrinks the steps. The curvature products
            need the model's loss, so train through
            `keras_kfac.TrueFisherModel`, on one device. Defaults to
            `False`: the KL-clipped step above, the one ACKTR takes.
        damping_adaptation_interval: With `adaptive`, adapt `λ` every
            this many updates. Defaults to `5`.
        damping_adaptation_decay: With `adaptive`, `λ` moves by the factor
            `ω = damping_adaptation_decay ** damping_adaptation_interval`
            at each adaptation. Defaults to `0.95` (Martens & Grosse's
            `ω = (19/20)^T`).
        min_damping: With `adaptive`, the smallest `λ` (`ρ`, measured on
            the batch the step was fitted to, keeps small batches near
            it). Defaults to `3e-5`.
        reference_learning_rate: With `adaptive`, the learning rate at and
            above which the update is the quadratic model's own, `η / η_ref`
            of it below. Defaults to `learning_rate`'s initial value (a
            schedule's at step 0), so only its later changes count; give
            the peak of a schedule that warms up.
        {{base_optimizer_keyword_args}}

    A step whose gradients, factor statistics or resulting update are not
    finite changes no weight, momentum or factor (`weight_decay` included):
    only `iterations` and the counter `skipped_steps` move. Keras' base class
    still applies weight constraints and, with `use_ema`, averages the
    unchanged weights after every step. When most of at least 10 updates
    were skipped, the optimizer warns once (not under `jit_compile=True`,
    which cannot call back into Python: read `skipped_steps` there). A
    refresh whose result is not finite leaves that block's eigenbases or
    inverses as they were, warns once and counts in `failed_refreshes`.
    """

    def __init__(
        self,
        learning_rate=0.25,
        damping: float = 1e-2,
        kl_clip: float | str | None = AUTO,
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
        reference_learning_rate: float | None = None,
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
        if inverse_update_freq is None:
            inverse_update_freq = 5 if adaptive is True else 10
        kl_clip = default_kl_clip(kl_clip, adaptive)
        if damping_mode is None:
            damping_mode = linalg.FACTORED if adaptive is True else linalg.EIGEN
        if adaptive is True and reference_learning_rate is None:
            reference_learning_rate = initial_learning_rate(learning_rate)
        # Every argument is checked before any is stored.
        diagnostics.check_arguments(
            {k: v for k, v in locals().items() if k not in _NOT_ARGUMENTS}
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
        self.reference_learning_rate = reference_learning_rate
        # Set by `supplying_curvature` around `apply` in adaptive mode.
        self._exact_curvature = None
        self._backward_scale_sq = None
        self._estimator = None  # the blocks and their state, once built
        add_statistics_reader(self)

    def build(self, var_list):
        if self.built:
            return
        super().build(var_list)
        self._warn = diagnostics.UpdateWarnings(
            self.name, self.damping, self.damping_mode
        )
        blocks = estimator.find_blocks(var_list)
        diagnostics.warn_first_order_kernels(blocks, var_list)
        # Saving stores the variables by position: velocities, each block's
        # state, then the scalars, in this order.
        self._velocities = [
            self.add_variable_from_reference(v, name="velocity")
            for v in var_list
        ]

        def add_variable(shape, name, initializer):
            return self.add_variable(
                shape, initializer=initializer, dtype="float32", name=name
            )

        self._estimator = estimator.KroneckerFactoredCurvature(
            blocks,
            [
                block.create_state(
                    add_variable, self.damping_mode, self.damping
                )
                for block in blocks
            ],
            self.stats_decay,
            self.damping_mode,
            self.assign,
            self.assign_add,
        )
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
        return diagnostics.summary_rows(
            self._estimator.blocks, self._trainable_variables
        )

    def summary(self, print_fn=None) -> None:
        """Prints which variables get K-FAC updates (and from which block)
        and which first-order ones, as `Model.summary` prints layers.

        Args:
            print_fn: Called with each line; defaults to `print`.
        """
        rows = self.summary_rows()
        diagnostics.print_summary(
            rows,
            len(self._estimator.blocks),
            print if print_fn is None else print_fn,
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
        return self._estimator is None or id(layer) in self._estimator.layer_ids

    @property
    def estimator(self) -> estimator.KroneckerFactoredCurvature:
        """The K-FAC blocks and their state (`blocks`, `states`), once
        built."""
        return self._estimator

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
        variables = trainable_variables or self._trainable_variables
        self._backward_scale_sq = self._estimator.backward_scale_sq(
            grads,
            [self._get_variable_index(v) for v in variables],
            self.loss_scale_factor,
        )
        return super().apply(grads, trainable_variables)

    def _backend_update_step(self, grads, trainable_variables, learning_rate):
        # K-FAC's step spans variables (one step size for all), so it runs
        # once in cross-replica context instead of per variable.
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
        damping = self._current_damping

        # 1. Fold the batch factors into the running ones. One non-finite
        #    gradient or statistic skips the whole update, so the factors
        #    never mix in a batch the weights did not see.
        inputs_finite = self._update_factors(grads, scale_sq)
        # 2. Refresh the eigenbases or inverses on their schedule.
        self._warn.if_refresh_compiled_for_cpu()
        failed = self._estimator.update_inverses_when_due(
            count - self.cold_steps,
            self.inverse_update_freq,
            inputs_finite,
            damping,
        )
        self._warn.if_refresh_failed(failed, count)
        # 3. The directions: `Δ = F̂⁻¹ ∇` in the blocks, `∇` elsewhere and
        #    during the cold steps (which skip the rotations altogether).
        raw = {i: tf.cast(grad_of[i], tf.float32) for i in indices}
        directions = tf.cond(
            is_cold,
            lambda: raw,
            lambda: {**raw, **self._estimator.precondition(grad_of, damping)},
        )
        # 4. The coefficients of `v ← μ v + c Δ`: from the KL clip, or
        #    from the quadratic model with `adaptive`.
        if self.adaptive:
            alpha, mu, change, clip = self._adaptive_coefficients(
                variables, indices, raw, directions, learning_rate
            )
            coefficients = StepCoefficients(
                alpha, mu, alpha, clip=clip, predicted_change=change
            )
        else:
            eta, mu, clip = self._kl_clipped_coefficients(
                indices, raw, directions, learning_rate
            )
            coefficients = StepCoefficients(
                eta, mu, direction_scale=(1.0 - mu) * eta, clip=clip
            )
        # 5. The velocities and the weights, if everything is finite.
        ok = self._apply_velocities(
            distribution,
            variables,
            indices,
            directions,
            coefficients,
            inputs_finite,
            learning_rate,
        )
        # 6. The counters and what the step reports.
        self._record(ok, coefficients)
        self._warn.if_most_updates_skipped(
            self._skipped_steps, self._update_count
        )

    def _update_factors(self, grads, scale_sq) -> tf.Tensor:
        """Folds the layers' batch factors (`G / scale²`) into the running
        ones if they and the gradients are finite; returns whether they
        are."""
        batches = self._estimator.batch_factors()
        inputs_finite = linalg.all_finite(
            grads
            + [
                tf.where(fresh, tf.reduce_sum(A) + tf.reduce_sum(G), 0.0)
                for A, G, fresh in batches
            ]
        )
        self._estimator.update_factors(batches, scale_sq, inputs_finite)
        return inputs_finite

    def _apply_velocities(
        self,
        distribution,
        variables,
        indices,
        directions,
        coefficients,
        inputs_finite,
        learning_rate,
    ) -> tf.Tensor:
        """`v ← μ v + c Δ`, `θ ← θ - v` (after Keras' weight decay), all
        or nothing: returns whether the update was finite and applied."""
        mu, scale = coefficients.momentum, coefficients.direction_scale
        new_velocities = {
            i: mu * tf.cast(self._velocities[i], tf.float32)
            + scale * directions[i]
            for i in indices
        }
        ok = tf.logical_and(
            inputs_finite, linalg.all_finite(list(new_velocities.values()))
        )
        if coefficients.predicted_change is not None:
            # A skipped update predicts no change, so no damping adapts on it.
            self.assign(
                self._predicted_change,
                tf.where(ok, coefficients.predicted_change, 0.0),
            )
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
        return ok

    def _apply_weight_decay(self, variables):
        """Nothing: Keras decays before the step, outside any check, so a
        skipped update would still shrink the weights; `_update_weight`
        decays inside the guarded update."""

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

    def get_config(self):
        config = super().get_config()
        config.update({name: getattr(self, name) for name in _HYPERPARAMETERS})
        return config


# `compile(optimizer="kfac")`, as Keras' own optimizers go by name.
keras.saving.get_custom_objects().update({"kfac": KFAC, "KFAC": KFAC})

KFAC.__doc__ = KFAC.__doc__.replace(
    "{{base_optimizer_keyword_args}}",
    keras.src.optimizers.optimizer.base_optimizer_keyword_args,
)
