"""keras_kfac.layers.Embedding: its block diag(a) ⊗ G against dense
references."""

import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf
from reference import (
    EXACT,
    dense_fisher,
    factored_damped_fisher,
    factors,
    flat,
    float32_solve_atol,
    with_ones,
)

import keras_kfac
from keras_kfac import layers

VOCABULARY, WIDTH, POSITIONS = 7, 3, 4


def tokens(rng, n):
    # Token 6 never occurs: its row of the table is damped alone.
    return rng.integers(0, VOCABULARY - 1, size=(n, POSITIONS)).astype("int32")


def one_hot_rows(ids):
    return np.eye(VOCABULARY)[ids.reshape(-1)]


def test_factors_are_token_frequencies_and_the_positions_gradients(rng):
    layer = layers.Embedding(VOCABULARY, WIDTH)
    ids = tokens(rng, 5)
    y = rng.normal(size=(5, POSITIONS, WIDTH)).astype("float32")
    layer.build(ids.shape)
    with keras_kfac.collecting_statistics(True):
        with tf.GradientTape() as tape:
            s = layer(ids, training=True)
            tape.watch(s)
            loss = tf.reduce_mean(tf.square(s - y))
        ds = tape.gradient(loss, s).numpy()
    A, G = factors(one_hot_rows(ids), ds.reshape(-1, WIDTH), len(ids))
    np.testing.assert_array_equal(np.diag(np.diag(A)), A)
    np.testing.assert_allclose(layer.statistics.A.numpy(), np.diag(A))
    np.testing.assert_allclose(
        layer.statistics.G.numpy(), G, rtol=1e-5, atol=1e-7
    )


def test_one_token_block_equals_the_exact_fisher(rng):
    """With one example of one token, diag(a) ⊗ G is the exact (empirical)
    Fisher block of the table, whose gradient is sparse."""
    layer = layers.Embedding(VOCABULARY, WIDTH)
    ids = np.array([[3]], "int32")
    layer.build(ids.shape)
    with keras_kfac.collecting_statistics(True):
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(tf.sin(layer(ids, training=True)))
        grad = tape.gradient(loss, layer.embeddings)
    assert isinstance(grad, tf.IndexedSlices)
    g = tf.convert_to_tensor(grad).numpy().ravel()
    kron = np.kron(np.diag(layer.statistics.A.numpy()), layer.statistics.G)
    np.testing.assert_allclose(kron, np.outer(g, g), rtol=1e-5, atol=1e-7)


def text_model():
    return keras.Sequential(
        [
            keras.Input((POSITIONS,), dtype="int32"),
            layers.Embedding(VOCABULARY, WIDTH),
            keras.layers.Flatten(),
            layers.Dense(2),
        ]
    )


def text_reference(model, ids, y):
    """Independent forward/backward: per-block (A, G) and gradients."""
    E, W, b = [tf.constant(w) for w in model.get_weights()]
    with tf.GradientTape(persistent=True) as tape:
        tape.watch([E, W, b])
        s1 = tf.gather(E, ids)
        h = tf.reshape(s1, (len(ids), -1))
        s2 = h @ W + b
        tape.watch([s1, s2])
        loss = tf.reduce_mean(tf.reduce_mean(tf.square(s2 - y), axis=-1))
    n = len(ids)
    ds1, ds2, dE, dW, db = [
        tf.convert_to_tensor(t).numpy()
        for t in tape.gradient(loss, [s1, s2, E, W, b])
    ]
    blocks = [
        factors(one_hot_rows(ids), ds1.reshape(-1, WIDTH), n),
        factors(with_ones(h.numpy()), ds2, n),
    ]
    grads = [dE, np.concatenate([dW, db[None]])]
    return blocks, grads


def parameters(model):
    E, W, b = model.get_weights()
    return flat([E, np.concatenate([W, b[None]])])


@pytest.mark.parametrize("mode", ["eigen", "factored"])
def test_one_step_equals_dense_damped_solve(rng, mode):
    damping, lr = 0.03, 0.1
    model = text_model()
    ids = tokens(rng, 16)
    y = rng.normal(size=(16, 2)).astype("float32")
    blocks, grads = text_reference(model, ids, y)
    if mode == "eigen":
        F = dense_fisher(blocks) + damping * np.eye(len(flat(grads)))
    else:
        F = factored_damped_fisher(blocks, damping)
    expected = -lr * np.linalg.solve(F, flat(grads))
    optimizer = keras_kfac.KFAC(
        learning_rate=lr, damping=damping, damping_mode=mode, **EXACT
    )
    model.compile(optimizer=optimizer, loss="mse")
    before = parameters(model)
    model.train_on_batch(ids, y)
    step = parameters(model) - before
    np.testing.assert_allclose(
        step, expected, rtol=0, atol=float32_solve_atol(F, expected)
    )
    # The quadratic model of the step is the dense one.
    np.testing.assert_allclose(
        float(optimizer.predicted_kl()),
        0.5 * step @ dense_fisher(blocks) @ step,
        rtol=1e-4,
    )


def test_matches_keras_and_serializes(rng):
    ids = tokens(rng, 3)
    plain = keras.Sequential(
        [
            keras.Input((POSITIONS,), dtype="int32"),
            keras.layers.Embedding(VOCABULARY, WIDTH, mask_zero=True),
            keras.layers.LSTM(2),
        ]
    )
    ours = keras_kfac.convert(plain)
    assert type(ours.layers[0]) is layers.Embedding
    np.testing.assert_allclose(ours(ids), plain(ids), rtol=1e-6)
    np.testing.assert_array_equal(
        ours.layers[0].compute_mask(ids), plain.layers[0].compute_mask(ids)
    )
    clone = keras.Sequential.from_config(ours.get_config())
    assert type(clone.layers[0]) is layers.Embedding


def test_lora_is_refused_and_a_lora_table_is_left_plain(rng):
    with pytest.raises(ValueError, match="lora_rank=2"):
        layers.Embedding(VOCABULARY, WIDTH, lora_rank=2)
    plain = keras.Sequential(
        [
            keras.Input((POSITIONS,), dtype="int32"),
            keras.layers.Embedding(VOCABULARY, WIDTH),
        ]
    )
    plain.layers[0].enable_lora(2)
    converted = keras_kfac.convert(plain)
    assert type(converted.layers[0]) is keras.layers.Embedding
    ids = tokens(rng, 2)
    np.testing.assert_allclose(converted(ids), plain(ids), rtol=1e-6)


def test_fit_trains_the_table_by_its_block(rng):
    ids = tokens(rng, 64)
    y = (ids[:, 0] % 2).astype("int32")
    model = keras.Sequential(
        [
            keras.Input((POSITIONS,), dtype="int32"),
            layers.Embedding(VOCABULARY, WIDTH),
            keras.layers.GlobalAveragePooling1D(),
            layers.Dense(2),
        ]
    )
    model.compile(
        optimizer=keras_kfac.KFAC(),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    history = model.fit(ids, y, epochs=8, batch_size=16, verbose=0)
    assert history.history["loss"][-1] < history.history["loss"][0]
    rows = [update for _, _, update in model.optimizer.summary_rows()]
    assert rows[0] == "K-FAC Embedding block 1 (A diagonal 7, G 3x3)"


@pytest.mark.parametrize("mode", ["eigen", "factored"])
@pytest.mark.slow
def test_touched_rows_alone_equal_the_whole_table_under_xla(rng, mode):
    """Graph mode preconditions only the batch's tokens' rows; XLA, which
    needs static shapes, the whole table. The steps agree, and the row of
    the token no batch holds does not move."""
    ids = tokens(rng, 16)
    y = rng.normal(size=(16, 2)).astype("float32")
    initial = text_model().get_weights()
    tables = {}
    for jit in (False, True):
        model = text_model()
        model.set_weights(initial)
        model.compile(
            optimizer=keras_kfac.KFAC(damping_mode=mode, momentum=0.0),
            loss="mse",
            jit_compile=jit,
        )
        with warnings.catch_warnings():  # XLA's slow refresh, on CPU
            warnings.simplefilter("ignore")
            model.fit(ids, y, batch_size=8, epochs=2, shuffle=False, verbose=0)
        tables[jit] = model.get_weights()[0]
    np.testing.assert_allclose(
        tables[False], tables[True], rtol=1e-4, atol=1e-6
    )
    np.testing.assert_array_equal(tables[False][VOCABULARY - 1], initial[0][-1])
