"""`keras_kfac.layers.LSTM` and `SimpleRNN` (the GRU's are in
test_gru.py): their factors against a per-example, per-step reference,
their block against the exact Fisher where it must equal it, their step
against a dense solve, and training, conversion and serialization."""

import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf
from reference import EXACT, float32_solve_atol

import keras_kfac
from keras_kfac import layers

EPS = np.finfo(np.float32).eps
KINDS = {"lstm": layers.LSTM, "simple": layers.SimpleRNN}


def sigmoid(z):
    return 1.0 / (1.0 + tf.exp(-z))


def reference_rows(kind, weights, x, y, mask=None, go_backwards=False, h0=None):
    """The rows of the per-step factors, from an explicit float64 loop:
    `a` (`(n·T, d + u + 1)`, `[x_t; h_{t-1}; 1]`), `ds = ∂L/∂z_t` (`(n·T,
    k·u)`) and the step's mask, in (example, step) order, for the loss
    `mean_n ‖h_T - y‖²` (`h_T` the last output, the state carried over
    masked steps); and `h_T`. `h0` is `(h_0, c_0)` or `None` for zeros."""
    W, U, b = (tf.constant(w, tf.float64) for w in weights)
    x = tf.constant(x, tf.float64)
    n, T, _ = x.shape
    units = U.shape[0]
    mask = np.ones((n, T), bool) if mask is None else np.asarray(mask)
    h, c = (
        (tf.zeros((n, units), tf.float64),) * 2
        if h0 is None
        else (tf.constant(s, tf.float64) for s in h0)
    )
    probes = [tf.zeros((n, U.shape[1]), tf.float64) for _ in range(T)]
    a = [None] * T
    with tf.GradientTape() as tape:
        tape.watch(probes)
        for t in reversed(range(T)) if go_backwards else range(T):
            a[t] = tf.concat([x[:, t], h, tf.ones((n, 1), tf.float64)], 1)
            z = x[:, t] @ W + h @ U + b + probes[t]
            if kind == "lstm":
                i, f, g, o = tf.split(z, 4, axis=1)
                c_new = sigmoid(f) * c + sigmoid(i) * tf.tanh(g)
                h_new = sigmoid(o) * tf.tanh(c_new)
            else:
                c_new, h_new = c, tf.tanh(z)
            m = mask[:, t : t + 1]
            h, c = tf.where(m, h_new, h), tf.where(m, c_new, c)
        loss = tf.reduce_mean(tf.reduce_sum(tf.square(h - y), axis=1))
    ds = tape.gradient(loss, probes)
    by_example = lambda rows: np.stack(rows, 1).reshape(n * T, -1)  # noqa: E731
    return by_example(a), by_example(ds), mask.reshape(-1), h.numpy()


def reference_factors(a, ds, mask, n):
    """`A = Σ m a aᵀ / Σ m`, `G = n Σ ds dsᵀ` (expand)."""
    A = (a * mask[:, None]).T @ a / mask.sum()
    return A, n * ds.T @ ds


def layer_statistics(layer, x, y, **call):
    """`(A, G, V, h_T)`: the layer's recorded factors and `V = [∇W; ∇U;
    ∇b]` of the loss `mean_n ‖h_T - y‖²`."""
    with tf.GradientTape() as tape:
        out = layer(tf.constant(x), training=True, **call)
        loss = tf.reduce_mean(tf.reduce_sum(tf.square(out - y), axis=1))
    variables = list(layer.kfac_variables)
    grads = tape.gradient(loss, variables)
    block = layer.block_type(layer, 0, 1, 2)
    V = block.gradient_matrix(*grads).numpy()
    return layer.statistics.A.numpy(), layer.statistics.G.numpy(), V, out


def assert_close(actual, expected, factor):
    """Agreement to `factor` float32 eps of the largest entry: the layer
    computes in float32 what the reference does in float64, through `T`
    steps of the recurrence and sums over the (example, step) rows."""
    atol = factor * EPS * np.abs(expected).max()
    np.testing.assert_allclose(actual, expected, rtol=0, atol=atol)


@pytest.mark.usefixtures("recording_statistics")
@pytest.mark.parametrize("kind", sorted(KINDS))
@pytest.mark.parametrize(
    "go_backwards,unroll,masked",
    [
        (False, False, False),
        (True, False, False),
        (False, True, True),
        (True, False, True),
        (False, False, True),
    ],
)
def test_factors_match_per_step_reference(
    rng, kind, go_backwards, unroll, masked
):
    n, T, d, units = 4, 5, 3, 3
    layer = KINDS[kind](units, go_backwards=go_backwards, unroll=unroll)
    layer.build((None, T, d))
    # Non-zero biases, so that the homogeneous coordinate is tested.
    layer.set_weights(
        [w + 0.3 * rng.normal(size=w.shape) for w in layer.get_weights()]
    )
    x = rng.normal(size=(n, T, d)).astype("float32")
    y = rng.normal(size=(n, units)).astype("float32")
    # Padding after the end, before the start, and a gap.
    mask = np.ones((n, T), bool)
    if masked:
        mask[0, 3:], mask[1, :2], mask[2, 2] = False, False, False
    call = {"mask": tf.constant(mask)} if masked else {}
    A, G, V, out = layer_statistics(layer, x, y, **call)
    a, ds, m, h = reference_rows(
        kind, layer.get_weights(), x, y, mask, go_backwards
    )
    assert_close(out, h, 16)
    # The reference pairs each a_t with its g_t as the loop does: its
    # rows sum to the layer's gradient.
    assert_close(V, a.T @ ds, 64)
    A_ref, G_ref = reference_factors(a, ds, m, n)
    assert_close(A, A_ref, 16)
    assert_close(G, G_ref, 64)
    if masked:
        assert not np.any(ds[~m])


@pytest.mark.usefixtures("recording_statistics")
@pytest.mark.parametrize("kind", sorted(KINDS))
def test_one_step_one_example_block_is_the_exact_fisher(rng, kind):
    """For `T = 1` and one example the gradient is `a gᵀ`, so `A ⊗ G` is
    the exact (empirical) Fisher block `vec(V) vec(V)ᵀ` of `[W; U; b]`;
    the initial state makes `h_0` part of `a`."""
    units = 3
    layer = KINDS[kind](units)
    layer.build((None, 1, 2))
    x = rng.normal(size=(1, 1, 2)).astype("float32")
    y = rng.normal(size=(1, units)).astype("float32")
    states = [rng.normal(size=(1, units)).astype("float32")]
    states *= 2 if kind == "lstm" else 1
    A, G, V, _ = layer_statistics(layer, x, y, initial_state=states)
    np.testing.assert_allclose(
        np.kron(A, G), np.outer(V.ravel(), V.ravel()), rtol=1e-5, atol=1e-7
    )
    assert np.abs(A[2 : 2 + units, 2 : 2 + units]).min() > 0


@pytest.mark.usefixtures("recording_statistics")
def test_padded_steps_contribute_nothing(rng):
    """Masked steps appended to every sequence leave `A` and `G` as they
    are without them, whatever the padding holds."""
    x = rng.normal(size=(3, 4, 2)).astype("float32")
    y = rng.normal(size=(3, 3)).astype("float32")
    padded = np.concatenate([x, rng.normal(size=(3, 2, 2))], 1)
    mask = np.arange(6)[None].repeat(3, 0) < 4
    layer = layers.LSTM(3)
    layer.build((None, None, 2))
    A, G, _, _ = layer_statistics(layer, x, y)
    A_pad, G_pad, _, _ = layer_statistics(
        layer, padded.astype("float32"), y, mask=tf.constant(mask)
    )
    np.testing.assert_allclose(A_pad, A, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(G_pad, G, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("kind", sorted(KINDS))
@pytest.mark.parametrize(
    "options",
    [
        dict(return_sequences=True),
        dict(return_sequences=True, go_backwards=True, unroll=True),
        dict(return_state=True, go_backwards=True),
        dict(dropout=0.3, seed=1),
        dict(return_sequences=True, use_bias=False),
    ],
)
def test_outputs_and_gradients_match_keras(rng, kind, options):
    plain_type = {"lstm": keras.layers.LSTM, "simple": keras.layers.SimpleRNN}
    x = rng.normal(size=(3, 4, 2)).astype("float32")
    mask = tf.constant(np.arange(4)[None].repeat(3, 0) < [[4], [2], [3]])
    results = []
    for layer_type in (plain_type[kind], KINDS[kind]):
        keras.utils.set_random_seed(0)
        layer = layer_type(3, **options)
        layer.build((None, 4, 2))
        with tf.GradientTape() as tape:
            out = tf.nest.flatten(layer(x, mask=mask, training=True))
            loss = tf.add_n([tf.reduce_sum(tf.square(o)) for o in out])
        results.append(out + tape.gradient(loss, layer.trainable_weights))
    for ours, plain in zip(results[1], results[0]):
        np.testing.assert_allclose(ours, plain, rtol=1e-5, atol=1e-6)


def test_one_step_equals_dense_damped_solve(rng):
    """One `KFAC` step on an LSTM is `-lr (A ⊗ G + λI)⁻¹ vec(V)`, the
    factors from the per-step reference."""
    damping, lr, n, T, d, units = 0.03, 0.1, 8, 4, 2, 2
    model = keras.Sequential([keras.Input((T, d)), layers.LSTM(units)])
    x = rng.normal(size=(n, T, d)).astype("float32")
    y = rng.normal(size=(n, units)).astype("float32")
    weights = model.get_weights()
    a, ds, m, _ = reference_rows("lstm", weights, x, y)
    # Keras' mse averages over the units too.
    ds = ds / units
    A, G = reference_factors(a, ds, m, n)
    F = np.kron(A, G) + damping * np.eye(len(A) * len(G))
    expected = -lr * np.linalg.solve(F, (a.T @ ds).ravel())
    model.compile(
        optimizer=keras_kfac.KFAC(
            learning_rate=lr, damping=damping, damping_mode="eigen", **EXACT
        ),
        loss="mse",
    )
    model.train_on_batch(x, y)
    step = np.concatenate(
        [
            (w1 - w0).reshape(-1, 4 * units)
            for w0, w1 in zip(weights, model.get_weights())
        ]
    ).ravel()
    np.testing.assert_allclose(
        step, expected, rtol=0, atol=float32_solve_atol(F, expected)
    )


def sequence_model(recurrent, **options):
    """Embedding-free classifier over 6 steps of 3 features."""
    inputs = keras.Input((6, 3))
    hidden = recurrent(8, **options)(inputs)
    return keras.Model(inputs, keras.layers.Dense(2)(hidden))


def sequence_data(rng, n=32):
    x = rng.normal(size=(n, 6, 3)).astype("float32")
    y = (x[:, :, 0].sum(1) > 0).astype("int32")
    return x, y


@pytest.mark.parametrize("recurrent", [keras.layers.LSTM, keras.layers.GRU])
def test_kfac_trains_converted_recurrent_models(rng, recurrent):
    """Smoke test: the loss falls over a few full-batch steps, no kernel is
    left first-order, and `KFAC.summary()` lists the cell's kernels and
    bias as preconditioned."""
    model = keras_kfac.convert(sequence_model(recurrent))
    model.compile(
        optimizer=keras_kfac.KFAC(learning_rate=0.1, damping=0.01),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    x, y = sequence_data(rng)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        losses = model.fit(x, y, epochs=8, batch_size=32, verbose=0)
    assert not any("first-order" in str(w.message) for w in caught)
    losses = losses.history["loss"]
    assert np.isfinite(losses).all() and losses[-1] < 0.95 * losses[0]
    cell_rows = [
        (path.split("/")[-1], update)
        for path, _, update in model.optimizer.summary_rows()
        if "_cell/" in path
    ]
    assert [name for name, _ in cell_rows] == [
        "kernel",
        "recurrent_kernel",
        "bias",
    ]
    assert all(u.startswith("K-FAC") for _, u in cell_rows)


@pytest.mark.parametrize("recurrent", [keras.layers.LSTM, keras.layers.GRU])
def test_true_fisher_model_trains_a_rolled_layer(rng, recurrent):
    model = keras_kfac.TrueFisherModel(
        keras_kfac.convert(sequence_model(recurrent))
    )
    model.compile(
        optimizer=keras_kfac.KFAC(learning_rate=0.1, damping=0.01),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    x, y = sequence_data(rng)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # no first-order kernel
        losses = model.fit(x, y, epochs=8, batch_size=32, verbose=0)
    losses = losses.history["loss"]
    assert np.isfinite(losses).all() and losses[-1] < 0.9 * losses[0]
    assert model.optimizer.iterations.numpy() == 8


def test_convert_reaches_nested_and_bidirectional_layers(rng):
    inner = keras.Sequential(
        [keras.Input((6, 3)), keras.layers.SimpleRNN(4, return_sequences=True)]
    )
    inputs = keras.Input((6, 3))
    hidden = keras.layers.Bidirectional(keras.layers.LSTM(5))(inner(inputs))
    plain = keras.Model(inputs, keras.layers.Dense(2)(hidden))
    ours = keras_kfac.convert(plain)
    found = [
        type(l)
        for l in ours._flatten_layers()
        if isinstance(l, keras.layers.RNN)
    ]
    assert sorted(t.__name__ for t in found) == ["LSTM", "LSTM", "SimpleRNN"]
    assert all(t.__module__ == "keras_kfac.layers.recurrent" for t in found)
    x = rng.normal(size=(2, 6, 3)).astype("float32")
    np.testing.assert_allclose(ours(x), plain(x), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        ours(x, training=True), plain(x), rtol=1e-5, atol=1e-6
    )
    optimizer = keras_kfac.KFAC()
    optimizer.build(ours.trainable_variables)
    updates = [update for _, _, update in optimizer.summary_rows()]
    assert all(update.startswith("K-FAC") for update in updates)
    assert sum("(A" in update for update in updates) == 4


def test_recurrent_dropout_is_refused_and_left_to_keras_by_convert():
    with pytest.raises(ValueError, match="recurrent_dropout=0.2"):
        layers.LSTM(3, recurrent_dropout=0.2)
    plain = sequence_model(keras.layers.LSTM, recurrent_dropout=0.2)
    ours = keras_kfac.convert(plain)
    assert type(ours.layers[1]) is keras.layers.LSTM


@pytest.mark.parametrize(
    "plain, ours, configured",
    [
        (keras.layers.LSTM, layers.LSTM, layers.SimpleRNN),
        (keras.layers.GRU, layers.GRU, layers.GRU),
    ],
)
def test_recurrent_layers_serialize(rng, tmp_path, plain, ours, configured):
    model = keras_kfac.convert(sequence_model(plain))
    x = rng.normal(size=(2, 6, 3)).astype("float32")
    clone = keras.Model.from_config(model.get_config())
    assert type(clone.layers[1]) is ours
    path = str(tmp_path / "model.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert type(loaded.layers[1]) is ours
    np.testing.assert_allclose(loaded(x), model(x), rtol=1e-6)
    layer = configured(3, go_backwards=True, return_sequences=True)
    config = layer.get_config()
    assert configured.from_config(config).get_config() == config


@pytest.mark.usefixtures("recording_statistics")
def test_stateful_layer_starts_its_rows_from_the_carried_state(rng):
    n, T, d, units = 2, 3, 2, 3
    layer = layers.LSTM(units, stateful=True)
    layer.build((n, T, d))
    x = rng.normal(size=(n, T, d)).astype("float32")
    y = rng.normal(size=(n, units)).astype("float32")
    layer(x)
    carried = [s.numpy() for s in layer.states]
    assert np.abs(carried[0]).min() > 0
    A, G, _, _ = layer_statistics(layer, x, y)
    a, ds, m, _ = reference_rows("lstm", layer.get_weights(), x, y, h0=carried)
    A_ref, G_ref = reference_factors(a, ds, m, n)
    assert_close(A, A_ref, 16)
    assert_close(G, G_ref, 64)
