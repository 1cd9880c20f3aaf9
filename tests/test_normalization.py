"""keras_kfac.layers.LayerNormalization: the diagonal Fisher of its scale
and shift against per-example gradients, and its step against the dense
damped solve."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from reference import EXACT, dense_fisher, factored_damped_fisher

import keras_kfac
from keras_kfac import layers

# (keyword arguments, input shape without the batch)
CONFIGURATIONS = {
    "last axis": (dict(), (3, 4)),
    "two axes": (dict(axis=[1, 2]), (3, 4)),
    # γ has shape (4, 3), which Keras reshapes (not transposes) onto (3, 4).
    "axes out of order": (dict(axis=[-1, 1]), (3, 2, 4)),
    "no shift": (dict(center=False), (3, 4)),
    "no scale": (dict(scale=False), (3, 4)),
    "rms scaling": (dict(rms_scaling=True), (3, 4)),
}


def parameters_of(layer):
    return [v for v in (layer.gamma, layer.beta) if v is not None]


def per_example_fisher_diagonal(layer, x, targets):
    """(1/n) Σ_i (∇ℓ_i)², ℓ_i = Σ (out_i - targets_i)² / 2, from the
    Jacobian of the per-example losses, for the block's variables."""
    variables = [layer.kfac_kernel] + (
        [layer.kfac_bias] if layer.kfac_bias is not None else []
    )
    with tf.GradientTape() as tape:
        out = tf.keras.layers.Lambda(lambda t: t)(layer(x))
        losses = 0.5 * tf.reduce_sum(
            tf.reshape(tf.square(out - targets), (len(x), -1)), axis=1
        )
    jacobians = tape.jacobian(losses, variables)
    g = np.concatenate(
        [j.numpy().reshape(len(x), -1) for j in jacobians], axis=1
    )
    return (g**2).mean(axis=0), g


@pytest.mark.filterwarnings("ignore:You passed `rms_scaling=True`")
@pytest.mark.parametrize("name", list(CONFIGURATIONS))
def test_recorded_diagonal_is_the_per_example_fisher_diagonal(rng, name):
    kwargs, shape = CONFIGURATIONS[name]
    layer = layers.LayerNormalization(**kwargs)
    x = rng.normal(size=(5, *shape)).astype("float32")
    targets = rng.normal(size=x.shape).astype("float32")
    layer.build(x.shape)
    # Random γ and β, so that neither gradient is trivial.
    for v in parameters_of(layer):
        v.assign(rng.normal(size=v.shape).astype("float32"))
    expected, _ = per_example_fisher_diagonal(layer, x, targets)
    with keras_kfac.collecting_statistics(True):
        with tf.GradientTape() as tape:
            out = layer(x, training=True)
            # The mean of the per-example losses: g = n ∂L/∂s = ∇ℓ_i.
            loss = 0.5 * tf.reduce_sum(tf.square(out - targets)) / len(x)
        tape.gradient(loss, parameters_of(layer))
    np.testing.assert_allclose(layer.statistics.A.numpy(), [[1.0]])
    np.testing.assert_allclose(
        layer.statistics.G.numpy(), expected, rtol=1e-5, atol=1e-7
    )


@pytest.mark.filterwarnings("ignore:You passed `rms_scaling=True`")
@pytest.mark.parametrize("name", list(CONFIGURATIONS))
def test_outputs_match_keras_and_the_layer_serializes(rng, name):
    kwargs, shape = CONFIGURATIONS[name]
    plain = keras.Sequential(
        [keras.Input(shape), keras.layers.LayerNormalization(**kwargs)]
    )
    for v in plain.trainable_variables:
        v.assign(rng.normal(size=v.shape).astype("float32"))
    ours = keras_kfac.convert(plain)
    assert type(ours.layers[0]) is layers.LayerNormalization
    x = rng.normal(size=(2, *shape)).astype("float32")
    np.testing.assert_allclose(
        ours(x, training=True), plain(x), rtol=1e-5, atol=1e-6
    )
    clone = keras.Sequential.from_config(ours.get_config())
    assert type(clone.layers[0]) is layers.LayerNormalization


@pytest.mark.parametrize("mode", ["eigen", "factored"])
def test_one_step_is_the_damped_diagonal_solve(rng, mode):
    damping, lr = 0.03, 0.1
    model = keras.Sequential([keras.Input((3, 4)), layers.LayerNormalization()])
    layer = model.layers[0]
    for v in parameters_of(layer):
        v.assign(rng.normal(size=v.shape).astype("float32"))
    x = rng.normal(size=(6, 3, 4)).astype("float32")
    targets = rng.normal(size=x.shape).astype("float32")
    f, g = per_example_fisher_diagonal(layer, x, targets)
    gradient = g.mean(axis=0)
    blocks = [(np.ones((1, 1)), np.diag(f))]
    if mode == "eigen":
        F = dense_fisher(blocks) + damping * np.eye(len(f))
    else:
        F = factored_damped_fisher(blocks, damping)
    expected = -lr * np.linalg.solve(F, gradient)

    def loss(y_true, y_pred):  # the mean of the per-example losses above
        return 0.5 * tf.reduce_sum(tf.square(y_pred - y_true), axis=[1, 2])

    optimizer = keras_kfac.KFAC(
        learning_rate=lr, damping=damping, damping_mode=mode, **EXACT
    )
    model.compile(optimizer=optimizer, loss=loss)
    before = np.concatenate([v.numpy().ravel() for v in parameters_of(layer)])
    model.train_on_batch(x, targets)
    after = np.concatenate([v.numpy().ravel() for v in parameters_of(layer)])
    # A diagonal solve, each element a few float32 ops (rtol), from a
    # gradient whose mean over the examples may cancel (its error scales
    # with the mean |g_i|), read as the difference of float32 weights.
    eps = np.finfo(np.float32).eps
    atol = 4 * eps * np.abs(before).max() + 64 * eps * lr * np.max(
        np.abs(g).mean(axis=0) / np.diag(F)
    )
    np.testing.assert_allclose(
        after - before, expected, rtol=64 * eps, atol=atol
    )
    assert optimizer.summary_rows()[0][2] == (
        "K-FAC LayerNormalization block 1 (A 1x1, G diagonal 8)"
    )


def test_without_scale_or_shift_there_is_no_block():
    layer = layers.LayerNormalization(center=False, scale=False)
    model = keras.Sequential([keras.Input((4,)), layer, layers.Dense(2)])
    optimizer = keras_kfac.KFAC()
    optimizer.build(model.trainable_variables)
    assert not hasattr(layer, "statistics")
    assert [row[2].split(" (")[0] for row in optimizer.summary_rows()] == [
        "K-FAC Dense block 1",
        "K-FAC Dense block 1",
    ]


# (keyword arguments, input shape without the batch)
BATCH_CONFIGURATIONS = {
    "features": (dict(), (4,)),
    "channels last": (dict(), (3, 3, 2)),
    "channels first": (dict(axis=1), (2, 3, 3)),
    "no shift": (dict(center=False), (3, 2)),
    "no scale": (dict(scale=False), (3, 2)),
}


def batch_norm_pair(rng, kwargs, shape):
    plain = keras.layers.BatchNormalization(**kwargs)
    plain.build((None, *shape))
    for v in plain.weights:
        v.assign(rng.uniform(0.5, 1.5, size=v.shape).astype("float32"))
    ours = layers.BatchNormalization.from_config(plain.get_config())
    ours.build((None, *shape))
    ours.set_weights(plain.get_weights())
    return plain, ours


@pytest.mark.parametrize("name", list(BATCH_CONFIGURATIONS))
def test_batch_normalization_matches_keras_in_training_and_inference(rng, name):
    kwargs, shape = BATCH_CONFIGURATIONS[name]
    plain, ours = batch_norm_pair(rng, kwargs, shape)
    x = rng.normal(size=(6, *shape)).astype("float32")
    np.testing.assert_allclose(
        ours(x, training=True), plain(x, training=True), rtol=1e-5, atol=1e-6
    )
    for a, b in zip(ours.weights, plain.weights):  # moving statistics too
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-6)
    np.testing.assert_allclose(ours(x), plain(x), rtol=1e-6)


@pytest.mark.parametrize("name", list(BATCH_CONFIGURATIONS))
def test_batch_normalization_records_per_example_gradient_squares(rng, name):
    """f = (1/n) Σ_i g_i², g_i = n [Σ x̂_i ⊙ ∂L/∂s_i, Σ ∂L/∂s_i] over the
    positions of example i, with x̂ normalized by the batch's moments; the
    g_i add up to n times the gradient the tape gives."""
    kwargs, shape = BATCH_CONFIGURATIONS[name]
    _, layer = batch_norm_pair(rng, kwargs, shape)
    n = 6
    x = rng.normal(size=(n, *shape)).astype("float32")
    targets = rng.normal(size=x.shape).astype("float32")
    with keras_kfac.collecting_statistics(True):
        with tf.GradientTape(persistent=True) as tape:
            s = layer(x, training=True)
            tape.watch(s)
            loss = tf.reduce_mean(tf.sin(s - targets) ** 2)
        ds = tape.gradient(loss, s).numpy().astype("float64")
        grads = tape.gradient(loss, parameters_of(layer))
    axis = layer.axis % x.ndim
    shared = tuple(a for a in range(x.ndim) if a != axis)
    mean = x.mean(axis=shared, keepdims=True)
    variance = x.var(axis=shared, keepdims=True)
    x_hat = (x - mean) / np.sqrt(variance + layer.epsilon)
    per_position = tuple(a for a in range(1, x.ndim) if a != axis)
    parts = []
    if layer.scale:
        parts.append((x_hat * ds).sum(axis=per_position))
    if layer.center:
        parts.append(ds.sum(axis=per_position))
    g = n * np.concatenate(parts, axis=1)
    np.testing.assert_allclose(
        g.sum(axis=0) / n,
        np.concatenate([v.numpy() for v in grads]),
        rtol=1e-4,
        atol=1e-7,
    )
    np.testing.assert_allclose(
        layer.statistics.G.numpy(), (g**2).mean(axis=0), rtol=1e-4, atol=1e-8
    )


def test_batch_normalization_renorm_is_refused_and_left_plain():
    with pytest.raises(ValueError, match="renorm=True"):
        layers.BatchNormalization(renorm=True)
    plain = keras.Sequential(
        [keras.Input((3,)), keras.layers.BatchNormalization(renorm=True)]
    )
    assert type(keras_kfac.convert(plain).layers[0]) is (
        keras.layers.BatchNormalization
    )


def test_a_cnn_with_batch_normalization_trains_every_block(rng):
    x = rng.normal(size=(64, 6, 6, 1)).astype("float32")
    y = (x.reshape(64, -1)[:, :3].argmax(1)).astype("int32")
    plain = keras.Sequential(
        [
            keras.Input((6, 6, 1)),
            keras.layers.Conv2D(4, 3, use_bias=False),
            keras.layers.BatchNormalization(),
            keras.layers.Activation("relu"),
            keras.layers.Flatten(),
            keras.layers.Dense(3),
        ]
    )
    model = keras_kfac.convert(plain)
    model.compile(
        optimizer=keras_kfac.KFAC(),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    history = model.fit(x, y, epochs=6, batch_size=16, verbose=0)
    assert history.history["loss"][-1] < history.history["loss"][0]
    updates = [row[2] for row in model.optimizer.summary_rows()]
    assert all(update.startswith("K-FAC") for update in updates), updates


@pytest.mark.parametrize("axis", [-1, [1, 2]], ids=["last axis", "two axes"])
def test_rms_normalization_matches_keras_and_records_its_scale(rng, axis):
    plain = keras.Sequential(
        [keras.Input((3, 4)), keras.layers.RMSNormalization(axis=axis)]
    )
    scale = plain.layers[0].scale
    scale.assign(rng.normal(size=scale.shape).astype("float32"))
    ours = keras_kfac.convert(plain)
    layer = ours.layers[0]
    assert type(layer) is layers.RMSNormalization
    x = rng.normal(size=(5, 3, 4)).astype("float32")
    targets = rng.normal(size=x.shape).astype("float32")
    np.testing.assert_allclose(ours(x, training=True), plain(x), rtol=1e-5)
    expected, _ = per_example_fisher_diagonal(layer, x, targets)
    with keras_kfac.collecting_statistics(True):
        with tf.GradientTape() as tape:
            out = layer(x, training=True)
            loss = 0.5 * tf.reduce_sum(tf.square(out - targets)) / len(x)
        tape.gradient(loss, [layer.scale])
    np.testing.assert_allclose(
        layer.statistics.G.numpy(), expected, rtol=1e-5, atol=1e-7
    )
    optimizer = keras_kfac.KFAC()
    optimizer.build(ours.trainable_variables)
    size = int(np.prod(layer.scale.shape))
    assert optimizer.summary_rows()[0][2] == (
        f"K-FAC RMSNormalization block 1 (A 1x1, G diagonal {size})"
    )
