"""The true Fisher for supervised training.

`model.fit` on a `keras_kfac` model taps the factors from the gradient of the
training loss at the real labels: the empirical Fisher. The true Fisher
`F = E_x E_{ŷ ~ p(·|x)}[∇ log p(ŷ|x) ∇ log p(ŷ|x)ᵀ]` instead draws targets
from the model's own predictive distribution (Martens & Grosse 2015, §5).
`TrueFisherModel` wraps a model so that `fit` takes its factors from such a
sampled loss and its gradient from the real one.
"""

import math

import keras
import numpy as np
import tensorflow as tf
from keras.src.losses import loss as loss_module

from keras_kfac.loss_distributions import (
    BERNOULLI,
    CATEGORICAL,
    DISTRIBUTIONS,
    distribution_of,
)
from keras_kfac.optimizer import KFAC
from keras_kfac.statistics import (
    collecting_statistics,
    factors_only,
    untapped_forward,
)

_FISHER_SEED_KEY = "fisher_seed"


def categorical_fisher_loss(logits: tf.Tensor, seed=None) -> tf.Tensor:
    """`mean_i -log p(ŷ_i | x_i)` with `ŷ_i ~ softmax(logits_i)`.

    Its gradient at the logits is `p - onehot(ŷ)`, whose covariance over `ŷ`
    is the Fisher of the categorical likelihood, `diag(p) - p pᵀ`. A row of
    non-finite logits (from non-finite data) samples the last class, so
    the loss is non-finite and the optimizer skips the step.
    """
    logits = tf.cast(logits, tf.float32)
    classes = tf.shape(logits)[-1]
    flat = tf.reshape(logits, (-1, classes))
    # `categorical` returns `classes`, out of range, for such a row.
    sampled = tf.minimum(
        keras.random.categorical(flat, 1, "int64", seed)[:, 0],
        tf.cast(classes - 1, tf.int64),
    )
    sampled = tf.stop_gradient(sampled)
    return tf.reduce_mean(
        tf.nn.sparse_softmax_cross_entropy_with_logits(sampled, flat)
    )


def bernoulli_fisher_loss(logits: tf.Tensor, seed=None) -> tf.Tensor:
    """`mean_i -Σ_k log p(ŷ_ik | x_i)` with `ŷ_ik ~ Bernoulli(σ(logits_ik))`,
    every output an independent binary variable (pixels of an image).

    Its gradient at the logits is `σ(z) - ŷ`, whose covariance over `ŷ` is
    the Fisher of the Bernoulli likelihood, `diag(p (1 - p))`.
    """
    logits = tf.cast(logits, tf.float32)
    probabilities = tf.sigmoid(logits)
    sampled = tf.stop_gradient(
        tf.cast(
            keras.random.uniform(tf.shape(logits), seed=seed) < probabilities,
            tf.float32,
        )
    )
    per_output = tf.nn.sigmoid_cross_entropy_with_logits(sampled, logits)
    per_example = tf.reduce_sum(
        tf.reshape(per_output, (tf.shape(logits)[0], -1)), axis=1
    )
    return tf.reduce_mean(per_example)


def gaussian_fisher_loss(
    mean: tf.Tensor, variance: float | None = None, seed=None
) -> tf.Tensor:
    """`mean_i ‖f_i - ŷ_i‖² / (2σ²)` with `ŷ_i ~ N(f_i, σ² I)`.

    Its gradient at the outputs is `(f - ŷ) / σ²`, whose covariance is the
    Fisher of the Gaussian likelihood, `I / σ²`.

    Args:
        mean: Model outputs `f`, shape `(batch, d)`.
        variance: `σ²`. Defaults to `d / 2`, for which the Fisher equals the
            Hessian of Keras' `mean_squared_error` (the mean over `d`).
        seed: The noise's seed, as Keras' random functions take it: a
            `keras.random.SeedGenerator`, an int, or `None` (the global
            generator).
    """
    mean = tf.cast(mean, tf.float32)
    d = tf.cast(tf.shape(mean)[-1], tf.float32)
    variance = (
        d / 2.0 if variance is None else tf.constant(variance, tf.float32)
    )
    noise = keras.random.normal(tf.shape(mean), seed=seed) * tf.sqrt(variance)
    sampled = tf.stop_gradient(mean + noise)
    per_example = tf.reduce_sum(
        tf.reshape(tf.square(mean - sampled), (tf.shape(mean)[0], -1)), axis=1
    )
    return tf.reduce_mean(per_example) / (2.0 * variance)


def forward_difference_jvps(
    predictions, values, outputs, tangents, relative_step
) -> list:
    """`[J w]` for each tangent `w`, as `(f(θ + h w) - f(θ)) / h`: one
    forward pass each, from `outputs = f(θ)` (`predictions(values)`).

    `h = s (1 + ‖θ‖) / ‖w‖`, the step of Jacobian-free Newton-Krylov
    methods (Knoll & Keyes 2004): with `s = √ε` it balances the
    difference's truncation error, `h/2 |wᵀ∇²f w|`, against its rounding
    error, about `ε |f| / h`, so `J w` is good to about `√ε` relative
    (`float32`: 3e-4). Forward mode costs two to three forward passes per
    tangent and cannot differentiate the loop of a rolled RNN; this costs
    one and runs any model. A zero or non-finite tangent gives `J w = 0`.
    """
    # float32 arithmetic, float64 for a float64 model.
    dtype = tf.float64 if outputs.dtype == tf.float64 else tf.float32
    theta_norm = tf.cast(tf.linalg.global_norm(values), dtype)
    base = tf.cast(outputs, dtype)
    jvps = []
    for tangent in tangents:
        norm = tf.cast(tf.linalg.global_norm(tangent), dtype)
        h = relative_step * (1.0 + theta_norm) / norm
        usable = tf.logical_and(tf.math.is_finite(h), h > 0.0)
        h = tf.where(usable, h, tf.zeros_like(h))
        shifted = predictions(
            [
                v + tf.cast(h, v.dtype) * tf.cast(t, v.dtype)
                for v, t in zip(values, tangent)
            ]
        )
        difference = tf.cast(shifted, dtype) - base
        quotient = difference / tf.where(usable, h, tf.ones_like(h))
        jvps.append(tf.where(usable, quotient, tf.zeros_like(quotient)))
    return jvps


def kfac_optimizer_of(optimizer) -> KFAC | None:
    """The `KFAC` that `optimizer` is or wraps (Keras wraps the model's
    optimizer in a `LossScaleOptimizer` under `mixed_float16`), else
    `None`."""
    if isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
        optimizer = optimizer.inner_optimizer
    return optimizer if isinstance(optimizer, KFAC) else None


def fisher_then_loss_gradients(
    tape: tf.GradientTape, fisher_loss, loss, variables, due=None
) -> list:
    """The gradients of `loss` in `variables`, taken with factor collection
    off, after the backward pass of `fisher_loss` (skipped when `None`)
    recorded the K-FAC factors: the factors come from the Fisher pass only.

    `due`, a boolean tensor (a `KFAC`'s `statistics_due()`), runs the
    Fisher pass only on the steps that record statistics; `None` runs it
    on every step. The loss pass goes last because the optimizer compares
    the gradient it receives with the kernel gradient norm the layers
    recorded on the latest backward pass (to undo a loss scale). `tape`
    must be persistent when there is a Fisher loss.
    """
    if fisher_loss is not None:

        def fisher_pass():
            # Only the factors are kept: the weight gradients are unused.
            with collecting_statistics(True), factors_only():
                tape.gradient(fisher_loss, variables)
            return tf.constant(True)

        if due is None:
            fisher_pass()
        else:
            tf.cond(due, fisher_pass, lambda: tf.constant(False))
    with collecting_statistics(False):
        return tape.gradient(loss, variables)


def _one_output_message(name: str, count: int) -> str:
    return (
        "TrueFisherModel samples its targets from one predictive "
        f"distribution, so it takes a model with one output; {name!r} "
        f"has {count}. Train it with KFAC() and a plain model.fit (the "
        "empirical Fisher), or wrap a model of each output."
    )


@keras.saving.register_keras_serializable(package="keras_kfac")
class TrueFisherModel(keras.Model):
    """Trains `model` with factors from the true Fisher, not the empirical.

    Each `fit` step differentiates two losses through one forward pass: a
    Fisher loss at targets sampled from the model's predictive distribution,
    with factor collection on, and the compiled loss at the real targets,
    with collection off, whose gradient the optimizer applies (the Fisher
    pass only on the steps that record statistics, one in
    `statistics_update_freq` of the `KFAC`). With `KFAC(adaptive=True)`,
    the default of `compile` here, the step also reads exact
    Gauss-Newton products of the compiled loss on the batch
    (`gauss_newton_products`) and the batch loss after the update
    (`batch_loss`), undoing an update that raised it; both replay the
    forward pass from the variables' state before it (dropout seeds,
    batch-norm statistics) and change no variable.

        model = keras_kfac.TrueFisherModel(net)
        model.compile(loss=...)          # optimizer: KFAC(adaptive=True)
        model.fit(x, y)

    Args:
        model: A model built from `keras_kfac.layers`, with one output.
        distribution: `"categorical"` (outputs are logits), `"bernoulli"`
            (outputs are the logits of independent binary variables, such
            as pixels) or `"gaussian"` (outputs are means, for regression).
            Defaults to `None`: the one the compiled loss is the negative
            log-likelihood of (`keras_kfac.loss_distributions`), read by
            `compile`: cross-entropy on logits, binary cross-entropy on
            logits, mean squared error. `compile` refuses a loss on
            probabilities (`from_logits=False`), a loss of another family
            than a given `distribution`, and, without one, a loss of no
            known family.
        variance: `σ²` of the `"gaussian"` distribution. Defaults to half the
            output width, which matches Keras' `"mse"` loss.
        **kwargs: Passed to `keras.Model`.
    """

    def __init__(
        self,
        model: keras.Model,
        distribution: str | None = None,
        variance: float | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if not isinstance(model, keras.Model):
            raise TypeError(
                "TrueFisherModel wraps a keras.Model. "
                f"Received: {type(model).__name__}"
            )
        if distribution is not None and distribution not in DISTRIBUTIONS:
            raise ValueError(
                f"distribution must be one of {DISTRIBUTIONS}. "
                f"Received: distribution={distribution!r}"
            )
        if variance is not None and not variance > 0:
            raise ValueError(
                f"variance must be > 0. Received: variance={variance}"
            )
        outputs = getattr(model, "outputs", None) or []
        if len(outputs) > 1:
            raise ValueError(_one_output_message(model.name, len(outputs)))
        self.model = model
        # As given, and as `compile` resolved it from the loss.
        self._given_distribution = distribution
        self.distribution = distribution
        self.variance = variance
        # Model state, so a checkpoint (`BackupAndRestore`) resumes the
        # sampled targets where they stopped.
        self.fisher_seed = keras.random.SeedGenerator(name="fisher_targets")

    def compile(self, optimizer="kfac", **kwargs):
        """`keras.Model.compile`, whose default optimizer here, also by the
        name `"kfac"`, is `keras_kfac.KFAC(adaptive=True)`: the K-FAC of
        Martens & Grosse (2015) for supervised training, with no step size
        or damping to tune. The loss fixes `distribution` when it was not
        given, and must agree with it when it was
        (`keras_kfac.loss_distributions.distribution_of`)."""
        distribution = distribution_of(
            kwargs.get("loss"), self._given_distribution
        )
        if isinstance(optimizer, str) and optimizer.lower() == "kfac":
            optimizer = KFAC(adaptive=True)
        super().compile(optimizer=optimizer, **kwargs)
        self.distribution = distribution

    def compile_from_config(self, config):
        """What `keras.Model` does when loading a compiled model. Keras
        skips it for a model whose `compile` is overridden; this one only
        adds a default optimizer, so the saved arguments compile it alike."""
        self.compile(**keras.saving.deserialize_keras_object(config))
        if self.built:
            self.optimizer.build(self.trainable_variables)

    def call(self, inputs, training=None):
        return self.model(inputs, training=training)

    def save_own_variables(self, store):
        """Keras' saving, and the sampler's state (which Keras does not
        save for a `SeedGenerator`), so `BackupAndRestore` resumes the
        sampled targets bit for bit."""
        super().save_own_variables(store)
        store[_FISHER_SEED_KEY] = self.fisher_seed.state

    def load_own_variables(self, store):
        """Keras' loading, and the sampler's state where the file has it
        (files saved before keras_kfac saved it keep a fresh sampler)."""
        keys = [key for key in store.keys() if key != _FISHER_SEED_KEY]
        super().load_own_variables({key: store[key] for key in keys})
        if _FISHER_SEED_KEY in store.keys():
            self.fisher_seed.state.assign(store[_FISHER_SEED_KEY])

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        """Creates every variable of training (the optimizer's, the compiled
        metrics') before `fit` traces the train step.

        Keras' TensorFlow trainer leaves that to the first trace when no
        distribution strategy is set, and `tf.function` then traces a step
        that created variables a second time. This step holds a Fisher pass
        and the adaptive update's curvature products, so the trace it
        saves is seconds (half the first epoch's overhead on the suite's
        CNN). The build is Keras' own (`_symbolic_build`, which it runs under
        a strategy), from the shapes the data declares."""
        if (
            self._distribute_strategy is None
            and data_batch is None
            and iterator is not None
        ):
            data_batch = iterator._get_iterator().element_spec
            with self.distribute_strategy.scope():
                self._symbolic_build(data_batch=data_batch)
            return
        super()._maybe_symbolic_build(iterator=iterator, data_batch=data_batch)

    def fisher_loss(self, y_pred: tf.Tensor) -> tf.Tensor:
        """The sampled loss whose backward pass feeds the factors."""
        outputs = tf.nest.flatten(y_pred)
        if len(outputs) != 1:
            raise ValueError(_one_output_message(self.model.name, len(outputs)))
        seed = self.fisher_seed
        if self.distribution == CATEGORICAL:
            return categorical_fisher_loss(y_pred, seed)
        if self.distribution == BERNOULLI:
            return bernoulli_fisher_loss(y_pred, seed)
        return gaussian_fisher_loss(y_pred, self.variance, seed)

    def train_step(self, data):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        kfac = kfac_optimizer_of(self.optimizer)
        adaptive = kfac is not None and kfac.adaptive
        if adaptive:
            if tf.distribute.get_strategy().num_replicas_in_sync > 1:
                raise NotImplementedError(
                    "KFAC(adaptive=True) runs on one device: its curvature "
                    "products and reduction ratio are not all-reduced over "
                    "replicas. Use adaptive=False under a distribution "
                    "strategy."
                )
            # The state before the forward pass (dropout seeds, batch-norm
            # averages) replays this step's function in the extra passes.
            state = [tf.identity(v) for v in self.non_trainable_variables]
        with tf.GradientTape(persistent=True) as tape:
            y_pred = self(x, training=True)
            loss = self._compute_loss(
                x=x,
                y=y,
                y_pred=y_pred,
                sample_weight=sample_weight,
                training=True,
            )
            self._loss_tracker.update_state(
                loss_module.unscale_loss_for_distribution(loss),
                sample_weight=tf.shape(tf.nest.flatten(x)[0])[0],
            )
            # Scaled like the training loss (replicas, loss scale) so the
            # factors and the gradient see the same backward scale.
            fisher = loss_module.scale_loss_for_distribution(
                self.fisher_loss(y_pred)
            )
            loss_before = loss
            loss = self.optimizer.scale_loss(loss)
            fisher = self.optimizer.scale_loss(fisher)
        weights = self.trainable_weights
        due = None if kfac is None else kfac.statistics_due()
        gradients = fisher_then_loss_gradients(tape, fisher, loss, weights, due)
        del tape
        if not adaptive:
            self.optimizer.apply_gradients(zip(gradients, weights))
        else:
            self._adaptive_update(
                (x, y, sample_weight),
                state,
                gradients,
                weights,
                loss_before,
                y_pred,
            )
        return self.compute_metrics(x, y, y_pred, sample_weight=sample_weight)

    def _adaptive_update(
        self, batch, state, gradients, weights, loss_before, outputs
    ):
        """Applies `KFAC(adaptive=True)`'s update: it reads exact curvature
        products of this batch during the update and the batch loss after
        it, and undoes an update the optimizer rejects. `outputs` are the
        step's own predictions, `f(θ)` of the products' differences."""
        optimizer = self.optimizer
        kfac = kfac_optimizer_of(optimizer)
        if not optimizer.built:
            optimizer.build(weights)
        values = [tf.convert_to_tensor(w) for w in weights]
        position = {id(w): k for k, w in enumerate(weights)}

        def exact_curvature(variables, vectors):
            tangents = []
            for vector in vectors:
                given = {
                    position[id(variable)]: tensor
                    for variable, tensor in zip(variables, vector)
                }
                tangents.append(
                    [
                        tf.cast(given[k], v.dtype)
                        if k in given
                        else tf.zeros_like(v)
                        for k, v in enumerate(values)
                    ]
                )
            return self.gauss_newton_products(
                batch, state, values, tangents, outputs
            )

        if kfac is not optimizer:
            # A loss-scale wrapper skips the update of a step whose scaled
            # gradients overflowed: then no change may be predicted for it.
            kfac.assign(kfac.predicted_change, 0.0)
        with kfac.supplying_curvature(exact_curvature):
            optimizer.apply_gradients(zip(gradients, weights))
        after = [tf.convert_to_tensor(w) for w in weights]
        rejected = kfac.review_update(
            loss_before, self.batch_loss(batch, state, after)
        )

        def restore():
            for weight, value in zip(weights, values):
                weight.assign(value)
            return tf.constant(True)

        tf.cond(rejected, restore, lambda: tf.constant(False))

    def batch_loss(self, batch, state, values) -> tf.Tensor:
        """The training loss of `batch` at weights `values`, regularization
        included, from the model state `state`, changing no variable."""
        x, y, sample_weight = batch
        with untapped_forward():
            y_pred, _, losses = self.stateless_call(
                values, state, x, training=True, return_losses=True
            )
        loss = self._compile_loss(y, y_pred, sample_weight)
        return loss + tf.add_n(losses) if losses else loss

    def gauss_newton_products(
        self, batch, state, values, tangents, outputs=None
    ):
        """`[wᵢᵀ F wⱼ]` for the tangents `w` at weights `values`: `F = Jᵀ H J`
        the Gauss-Newton matrix of the compiled loss on `batch` (`J` the
        Jacobian of the outputs, `H` the Hessian of the loss in them; the
        Fisher for a likelihood of the outputs' natural parameters).

        `J w` is a forward difference (`forward_difference_jvps`), one
        forward pass per tangent from `outputs`, the predictions `f(θ)` at
        `values` (computed here when `None`); `H J w` is a double backward
        pass through the loss alone. The variables' state is `state` and
        nothing is assigned.
        """
        x, y, sample_weight = batch

        def predictions(at):
            with untapped_forward():
                return self.stateless_call(at, state, x, training=True)[0]

        if outputs is None:
            outputs = predictions(values)
        outputs = tf.stop_gradient(outputs)
        jvps = forward_difference_jvps(
            predictions,
            values,
            outputs,
            tangents,
            relative_step=math.sqrt(self._least_precise_epsilon()),
        )
        with tf.GradientTape(persistent=True) as outer:
            outer.watch(outputs)
            with tf.GradientTape() as inner:
                inner.watch(outputs)
                loss = self._compile_loss(y, outputs, sample_weight)
            slope = inner.gradient(loss, outputs)
            directional = [
                tf.reduce_sum(tf.cast(slope, u.dtype) * u) for u in jvps
            ]
        hessian_products = [
            outer.gradient(d, outputs, unconnected_gradients="zero")
            for d in directional
        ]
        del outer
        return tf.stack(
            [
                tf.stack(
                    [
                        tf.cast(
                            tf.reduce_sum(u * tf.cast(Hu, u.dtype)), "float32"
                        )
                        for Hu in hessian_products
                    ]
                )
                for u in jvps
            ]
        )

    def _least_precise_epsilon(self) -> float:
        """The machine epsilon of the model's least precise compute dtype
        (`float16`'s under `mixed_float16`)."""
        return max(
            float(np.finfo(layer.compute_dtype).eps)
            for layer in [self.model, *self.model._flatten_layers()]
            if layer.compute_dtype
            and keras.backend.is_float_dtype(layer.compute_dtype)
        )

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "model": keras.saving.serialize_keras_object(self.model),
                "distribution": self.distribution,
                "variance": self.variance,
            }
        )
        return config

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        config["model"] = keras.saving.deserialize_keras_object(
            config["model"], custom_objects=custom_objects
        )
        return cls(**config)
