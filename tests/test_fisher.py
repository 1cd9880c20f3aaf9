import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_kfac
from keras_kfac import fisher, layers

# These tests read the layers' statistics themselves, with no optimizer to
# ask for them: recording is switched on explicitly (conftest.py).
pytestmark = pytest.mark.usefixtures("recording_statistics")


def output_G_after_fisher_pass(logits_layer_input, layer, loss_fn):
    with tf.GradientTape() as tape:
        out = layer(logits_layer_input, training=True)
        loss = loss_fn(out)
    tape.gradient(loss, layer.trainable_weights)
    return out, layer.statistics.G.numpy()


def test_categorical_fisher_loss_gives_the_categorical_fisher(rng):
    """Over many samples, G → diag(p) - p pᵀ at a fixed input."""
    layer = layers.Dense(3)
    x = np.repeat(rng.normal(size=(1, 4)).astype("float32"), 20000, axis=0)
    layer.build(x.shape)
    out, G = output_G_after_fisher_pass(
        x, layer, fisher.categorical_fisher_loss
    )
    p = tf.nn.softmax(out[0]).numpy()
    np.testing.assert_allclose(G, np.diag(p) - np.outer(p, p), atol=0.01)


def test_gaussian_fisher_loss_gives_identity_over_variance(rng):
    layer = layers.Dense(2)
    x = np.repeat(rng.normal(size=(1, 3)).astype("float32"), 20000, axis=0)
    layer.build(x.shape)
    _, G = output_G_after_fisher_pass(
        x, layer, lambda f: fisher.gaussian_fisher_loss(f, 0.5)
    )
    np.testing.assert_allclose(G, np.eye(2) / 0.5, atol=0.06)
    # Default σ² = d / 2 gives 2/d I: the Hessian of Keras' mean squared error.
    _, G = output_G_after_fisher_pass(x, layer, fisher.gaussian_fisher_loss)
    np.testing.assert_allclose(G, np.eye(2), atol=0.04)


def test_true_fisher_model_fits_saves_and_loads(rng, tmp_path):
    x = rng.normal(size=(128, 8)).astype("float32")
    y = (x[:, :3].argmax(1)).astype("int32")
    net = keras.Sequential(
        [
            keras.Input((8,)),
            layers.Dense(16, activation="tanh"),
            layers.Dense(3),
        ]
    )
    model = keras_kfac.TrueFisherModel(net, distribution="categorical")
    model.compile(
        optimizer=keras_kfac.KFAC(learning_rate=0.25, kl_clip=1e-2),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    history = model.fit(x, y, epochs=6, batch_size=32, verbose=0)
    assert history.history["loss"][-1] < 0.7 * history.history["loss"][0]
    path = tmp_path / "tf.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded, keras_kfac.TrueFisherModel)
    np.testing.assert_allclose(
        loaded.predict(x, verbose=0), model.predict(x, verbose=0), rtol=1e-5
    )
    # The sampler of the Fisher targets is saved: its state `[seed, n]`
    # counts the 4 batches x 6 epochs that drew targets from it.
    saved = model.fisher_seed.state.numpy()
    assert saved[1] == 24
    np.testing.assert_array_equal(loaded.fisher_seed.state.numpy(), saved)
    # A file written before the sampler was saved has no entry for it:
    # it loads, and the sampler stays as it was.
    loaded.load_own_variables({})
    np.testing.assert_array_equal(loaded.fisher_seed.state.numpy(), saved)


def test_true_fisher_model_rejects_bad_arguments():
    net = keras.Sequential([keras.Input((2,)), layers.Dense(2)])
    with pytest.raises(ValueError, match="distribution='poisson'"):
        keras_kfac.TrueFisherModel(net, distribution="poisson")
    with pytest.raises(ValueError, match="variance=0"):
        keras_kfac.TrueFisherModel(net, distribution="gaussian", variance=0)
    with pytest.raises(TypeError, match="Dense"):
        keras_kfac.TrueFisherModel(layers.Dense(2))


@pytest.mark.parametrize("true_fisher", [True, False])
def test_fit_taps_sampled_targets_only_with_true_fisher(rng, true_fisher):
    """Uniform predictions, all labels 0: the two Fishers differ in closed
    form."""
    x = rng.normal(size=(6000, 4)).astype("float32")
    y = np.zeros(6000, dtype="int32")
    net = keras.Sequential(
        [keras.Input((4,)), layers.Dense(3, kernel_initializer="zeros")]
    )
    model = keras_kfac.TrueFisherModel(net) if true_fisher else net
    model.compile(
        optimizer=keras_kfac.KFAC(stats_decay=0.0),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    model.train_on_batch(x, y)
    G = np.asarray(model.optimizer.estimator.states[0].G)
    p = np.full(3, 1 / 3)
    if true_fisher:
        expected = np.diag(p) - np.outer(p, p)
    else:
        g = p - np.eye(3)[0]
        expected = np.outer(g, g)
    np.testing.assert_allclose(G, expected, atol=0.02)


def test_fisher_then_loss_gradients_takes_factors_from_the_fisher_pass(rng):
    # Fisher loss mean_i u_iᵀ s_i: g_i = n ∂L/∂s_i = u_i, so G = Uᵀ U / n.
    # The training loss mean_i w_iᵀ s_i then gives ∇W = Xᵀ W / n, and the
    # factors must not move on its pass.
    n = 6
    layer = layers.Dense(3)
    x = rng.normal(size=(n, 4)).astype("float32")
    u = rng.normal(size=(n, 3)).astype("float32")
    w = rng.normal(size=(n, 3)).astype("float32")
    layer.build(x.shape)
    with tf.GradientTape(persistent=True) as tape:
        s = layer(x, training=True)
        fisher_loss = tf.reduce_mean(tf.reduce_sum(s * u, axis=1))
        loss = tf.reduce_mean(tf.reduce_sum(s * w, axis=1))
    gradients = keras_kfac.fisher_then_loss_gradients(
        tape, fisher_loss, loss, [layer.kernel, layer.bias]
    )
    np.testing.assert_allclose(
        layer.statistics.G.numpy(), u.T @ u / n, rtol=1e-5, atol=1e-6
    )
    np.testing.assert_allclose(gradients[0], x.T @ w / n, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        gradients[1], w.mean(axis=0), rtol=1e-5, atol=1e-6
    )


@pytest.mark.parametrize("due", [False, True])
def test_the_fisher_pass_runs_only_when_statistics_are_due(rng, due):
    # Inside a tf.function, as in `fit`: a step whose statistics are not
    # due records no factors and still returns the loss gradient.
    n = 5
    layer = layers.Dense(2)
    x = tf.constant(rng.normal(size=(n, 3)).astype("float32"))
    w = tf.constant(rng.normal(size=(n, 2)).astype("float32"))
    layer.build(x.shape)

    @tf.function
    def step(due):
        with tf.GradientTape(persistent=True) as tape:
            s = layer(x, training=True)
            fisher_loss = tf.reduce_sum(s)
            loss = tf.reduce_mean(tf.reduce_sum(s * w, axis=1))
        return keras_kfac.fisher_then_loss_gradients(
            tape, fisher_loss, loss, [layer.kernel, layer.bias], due
        )

    gradients = step(tf.constant(due))
    assert layer.statistics.fresh.numpy() == float(due)
    # sum(s) gives ∂L/∂s = 1, g = n · 1, G = n² · ones (as recorded).
    expected_G = n**2 * np.ones((2, 2)) if due else np.zeros((2, 2))
    np.testing.assert_allclose(layer.statistics.G.numpy(), expected_G)
    np.testing.assert_allclose(
        gradients[0], x.numpy().T @ w.numpy() / n, rtol=1e-5, atol=1e-6
    )


def test_a_model_of_two_outputs_is_refused_by_name():
    inputs = keras.Input((4,))
    hidden = layers.Dense(8)(inputs)
    model = keras.Model(
        inputs, [layers.Dense(2)(hidden), layers.Dense(3)(hidden)], name="two"
    )
    with pytest.raises(ValueError, match="one output; 'two' has 2"):
        keras_kfac.TrueFisherModel(model, "gaussian")


def test_a_subclassed_model_of_two_outputs_is_refused_when_traced():
    class TwoHeads(keras.Model):
        def __init__(self):
            super().__init__(name="heads")
            self.a, self.b = layers.Dense(2), layers.Dense(3)

        def call(self, x):
            return self.a(x), self.b(x)

    model = keras_kfac.TrueFisherModel(TwoHeads(), "gaussian")
    model.compile(loss=["mse", "mse"])
    x = np.zeros((8, 4), "float32")
    with pytest.raises(ValueError, match="one output; 'heads' has 2"):
        model.fit(x, [np.zeros((8, 2)), np.zeros((8, 3))], verbose=0)


@pytest.mark.parametrize(
    "distribution,adaptive",
    [
        ("categorical", True),
        ("categorical", False),
        ("bernoulli", True),
        ("gaussian", True),
    ],
)
def test_a_batch_of_non_finite_data_is_skipped_and_counted(
    rng, distribution, adaptive
):
    # NaN inputs make NaN logits, of which `tf.random.categorical` samples
    # an out-of-range class: the step must be skipped, not crash.
    x = rng.normal(size=(8, 4)).astype("float32")
    x[2] = np.nan
    if distribution == "categorical":
        y = rng.integers(0, 3, size=8)
        loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    else:
        y = rng.uniform(size=(8, 3)).astype("float32")
        loss = {
            "bernoulli": keras.losses.BinaryCrossentropy(from_logits=True),
            "gaussian": "mse",
        }[distribution]
    net = keras.Sequential(
        [keras.Input((4,)), layers.Dense(5, activation="tanh"), layers.Dense(3)]
    )
    model = keras_kfac.TrueFisherModel(net, distribution)
    model.compile(optimizer=keras_kfac.KFAC(adaptive=adaptive), loss=loss)
    before = [w.copy() for w in model.get_weights()]
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    assert int(model.optimizer.skipped_steps) == 1
    for w, w0 in zip(model.get_weights(), before):
        np.testing.assert_array_equal(w, w0)


@pytest.mark.parametrize("source", ["arrays", "dataset with sample weights"])
def test_fit_traces_the_train_step_once(rng, source):
    # Every variable (the optimizer's, the accuracy metric's) exists before
    # the step is traced, so `tf.function` has no reason to trace it again.
    x = rng.normal(size=(64, 4)).astype("float32")
    y = rng.integers(0, 3, size=64)
    net = keras.Sequential(
        [keras.Input((4,)), layers.Dense(5, activation="tanh"), layers.Dense(3)]
    )
    model = keras_kfac.TrueFisherModel(net, "categorical")
    model.compile(
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    traced = []
    train_step = model.train_step

    def counted_train_step(data):
        traced.append(data)
        return train_step(data)

    model.train_step = counted_train_step
    if source == "arrays":
        data = dict(x=x, y=y, batch_size=16)
    else:
        weights = rng.uniform(size=64).astype("float32")
        data = dict(
            x=tf.data.Dataset.from_tensor_slices((x, y, weights)).batch(16)
        )
    history = model.fit(
        **data, epochs=2, validation_data=(x[:16], y[:16]), verbose=0
    )
    assert len(traced) == 1
    assert model.optimizer.iterations.numpy() == 8
    assert np.isfinite(history.history["val_accuracy"]).all()
