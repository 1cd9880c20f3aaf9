"""The true Fisher for supervised training.

`model.fit` on a `keras_kfac` model taps the factors from the gradient of the
training loss at the real labels: the empirical Fisher. The true Fisher
`F = E_x E_{ŷ ~ p(·|x)}[∇ log p(ŷ|x) ∇ log p(ŷ|x)ᵀ]` instead draws targets
from the model's own predictive distribution (Martens & Grosse 2015, §5).
`TrueFisherModel` wraps a model so that `fit` takes its factors from such a
sampled loss and its gradient from the real one.
"""

import keras
import tensorflow as tf
from keras.src.losses import loss as loss_module

from keras_kfac.optimizer import KFAC
from keras_kfac.statistics import (
    collecting_statistics,
    factors_only,
    untapped_forward,
)

CATEGORICAL = "categorical"
BERNOULLI = "bernoulli"
GAUSSIAN = "gaussian"
DISTRIBUTIONS = (CATEGORICAL, BERNOULLI, GAUSSIAN)


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
        tf.random.categorical(flat, 1, seed=seed)[:, 0],
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
            tf.random.uniform(tf.shape(logits), seed=seed) < probabilities,
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
        seed: Optional seed of the noise.
    """
    mean = tf.cast(mean, tf.float32)
    d = tf.cast(tf.shape(mean)[-1], tf.float32)
    variance = (
        d / 2.0 if variance is None else tf.constant(variance, tf.float32)
    )
    noise = tf.random.normal(tf.shape(mean), seed=seed) * tf.sqrt(variance)
    sampled = tf.stop_gradient(mean + noise)
    per_example = tf.reduce_sum(
        tf.reshape(tf.square(mean - sampled), (tf.shape(mean)[0], -1)), axis=1
    )
    return tf.reduce_mean(per_example) / (2.0 * variance)


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

        model = keras_kfac.TrueFisherModel(net, distribution="categorical")
        model.compile(loss=...)          # optimizer: KFAC(adaptive=True)
        model.fit(x, y)

    Args:
        model: A model built from `keras_kfac.layers`, with one output.
        distribution: `"categorical"` (outputs are logits), `"bernoulli"`
            (outputs are the logits of independent binary variables, such
            as pixels) or `"gaussian"` (outputs are means, for regression).
        variance: `σ²` of the `"gaussian"` distribution. Defaults to half the
            output width, which matches Keras' `"mse"` loss.
        **kwargs: Passed to `keras.Model`.
    """

    def __init__(
        self,
        model: keras.Model,
        distribution: str = CATEGORICAL,
        variance: float | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if not isinstance(model, keras.Model):
            raise TypeError(
                "TrueFisherModel wraps a keras.Model. "
                f"Received: {type(model).__name__}"
            )
        if distribution not in DISTRIBUTIONS:
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
        self.distribution = distribution
        self.variance = variance

    def compile(self, optimizer="kfac", **kwargs):
        """`keras.Model.compile`, whose default optimizer here, also by the
        name `"kfac"`, is `keras_kfac.KFAC(adaptive=True)`: the K-FAC of
        Martens & Grosse (2015) for supervised training, with no step size
        or damping to tune."""
        if isinstance(optimizer, str) and optimizer.lower() == "kfac":
            optimizer = KFAC(adaptive=True)
        super().compile(optimizer=optimizer, **kwargs)

    def compile_from_config(self, config):
        """What `keras.Model` does when loading a compiled model. Keras
        skips it for a model whose `compile` is overridden; this one only
        adds a default optimizer, so the saved arguments compile it alike."""
        self.compile(**keras.saving.deserialize_keras_object(config))
        if self.built:
            self.optimizer.build(self.trainable_variables)

    def call(self, inputs, training=None):
        return self.model(inputs, training=training)

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        """Creates every variable of training (the optimizer's, the compiled
        metrics') before `fit` traces the train step.

        Keras' TensorFlow trainer leaves that to the first trace when no
        distribution strategy is set, and `tf.function` then traces a step
        that created variables a second time. This step holds a Fisher pass
        and the adaptive update's forward-mode products, so the trace it
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
        if self.distribution == CATEGORICAL:
            return categorical_fisher_loss(y_pred)
        if self.distribution == BERNOULLI:
            return bernoulli_fisher_loss(y_pred)
        return gaussian_fisher_loss(y_pred, self.variance)

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
                (x, y, sample_weight), state, gradients, weights, loss_before
            )
        return self.compute_metrics(x, y, y_pred, sample_weight=sample_weight)

    def _adaptive_update(self, batch, state, gradients, weights, loss_before):
        """Applies `KFAC(adaptive=True)`'s update: it reads exact curvature
        products of this batch during the update and the batch loss after
        it, and undoes an update the optimizer rejects."""
        optimizer = self.optimizer
        kfac = kfac_optimizer_of(optimizer)
        if not optimizer.built:
            optimizer.build(weights)
        values = [tf.convert_to_tensor(w) for w in weights]
        position = {id(w): k for k, w in enumerate(weights)}

        def exact_curvature(variables, vectors):
            tangents = []
            for vector in vectors:
                full = [tf.zeros_like(v) for v in values]
                for variable, tensor in zip(variables, vector):
                    k = position[id(variable)]
                    full[k] = tf.cast(tensor, values[k].dtype)
                tangents.append(full)
            return self.gauss_newton_products(batch, state, values, tangents)

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

    def gauss_newton_products(self, batch, state, values, tangents):
        """`[wᵢᵀ F wⱼ]` for the tangents `w` at weights `values`: `F = Jᵀ H J`
        the Gauss-Newton matrix of the compiled loss on `batch` (`J` the
        Jacobian of the outputs, `H` the Hessian of the loss in them; the
        Fisher for a likelihood of the outputs' natural parameters).

        `J w` comes from one forward-mode pass per tangent (from two
        backward passes for a model with a rolled recurrent layer, whose
        loop forward mode cannot differentiate), `H J w` from a double
        backward pass through the loss alone. The variables' state is
        `state` and nothing is assigned.
        """
        x, y, sample_weight = batch
        with untapped_forward():
            if self._has_rolled_recurrence():
                y_pred, jvps = self._reverse_mode_jvps(
                    x, state, values, tangents
                )
            else:
                y_pred, jvps = self._forward_mode_jvps(
                    x, state, values, tangents
                )
        y_pred = tf.stop_gradient(y_pred)
        with tf.GradientTape(persistent=True) as outer:
            outer.watch(y_pred)
            with tf.GradientTape() as inner:
                inner.watch(y_pred)
                loss = self._compile_loss(y, y_pred, sample_weight)
            slope = inner.gradient(loss, y_pred)
            directional = [tf.reduce_sum(slope * u) for u in jvps]
        hessian_products = [
            outer.gradient(d, y_pred, unconnected_gradients="zero")
            for d in directional
        ]
        del outer
        return tf.stack(
            [
                tf.stack(
                    [
                        tf.reduce_sum(tf.cast(u * Hu, tf.float32))
                        for Hu in hessian_products
                    ]
                )
                for u in jvps
            ]
        )

    def _has_rolled_recurrence(self) -> bool:
        """Whether the model holds a Keras RNN layer run as a loop
        (`unroll=False`, Keras' default)."""
        return any(
            isinstance(layer, keras.layers.RNN) and not layer.unroll
            for layer in self.model._flatten_layers(include_self=False)
        )

    def _forward_mode_jvps(self, x, state, values, tangents):
        """`(y, [J w])`: the outputs and one forward-mode pass per tangent."""
        jvps = []
        for tangent in tangents:
            with tf.autodiff.ForwardAccumulator(values, tangent) as acc:
                y_pred, _ = self.stateless_call(values, state, x, training=True)
            jvp = acc.jvp(y_pred)
            jvps.append(tf.zeros_like(y_pred) if jvp is None else jvp)
        return y_pred, jvps

    def _reverse_mode_jvps(self, x, state, values, tangents):
        """`(y, [J w])` from reverse mode alone: `Jᵀ u` is linear in `u`,
        so `J w = ∂(wᵀ Jᵀ u)/∂u`, one backward pass through the backward
        pass per tangent. TensorFlow's forward mode has no rule for the
        tensor lists a `tf.while_loop` keeps (a rolled RNN), its reverse
        mode differentiates them twice."""
        with tf.GradientTape(persistent=True) as outer:
            with tf.GradientTape() as inner:
                inner.watch(values)
                y_pred, _ = self.stateless_call(values, state, x, training=True)
            u = tf.zeros_like(y_pred)
            outer.watch(u)
            transposed = inner.gradient(
                y_pred, values, output_gradients=u, unconnected_gradients="zero"
            )
            dots = [
                tf.add_n(
                    [
                        tf.reduce_sum(g * tf.cast(t, g.dtype))
                        for g, t in zip(transposed, tangent)
                    ]
                )
                for tangent in tangents
            ]
        jvps = [
            outer.gradient(d, u, unconnected_gradients="zero") for d in dots
        ]
        del outer
        return y_pred, jvps

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
