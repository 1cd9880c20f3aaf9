"""`keras_kfac.layers.GRU`: its two blocks' factors against a per-example,
per-step float64 reference (which probes the recurrent pre-activation
itself), each block against the exact Fisher where it must equal it, the
step of the blocks that share the bias against a dense solve, and
training, conversion and serialization."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from reference import EXACT, float32_solve_atol
from test_recurrent import (
    EPS,
    assert_close,
    reference_factors,
    sequence_model,
    sigmoid,
)

import keras_kfac
from keras_kfac import estimator, layers


def reference_rows(weights, x, y, mask=None, go_backwards=False, h0=None):
    """The rows of both blocks' per-step factors from an explicit float64
    loop, in (example, step) order, for the loss `mean_n ‖h_T - y‖²`:
    `a_in = [x_t; 1]`, `ds_in = ∂L/∂(x_t W + b_in)`, `a_rec = [h_{t-1};
    1]`, `ds_rec = ∂L/∂(h_{t-1} U + b_rec)` (each through a zero probe
    added to it), the step's mask and `h_T`."""
    W, U, b = (tf.constant(w, tf.float64) for w in weights)
    x = tf.constant(x, tf.float64)
    n, T, _ = x.shape
    units = U.shape[0]
    mask = np.ones((n, T), bool) if mask is None else np.asarray(mask)
    h = tf.zeros((n, units), tf.float64) if h0 is None else tf.constant(h0)
    h = tf.cast(h, tf.float64)
    probes_in = [tf.zeros((n, 3 * units), tf.float64) for _ in range(T)]
    probes_rec = [tf.zeros((n, 3 * units), tf.float64) for _ in range(T)]
    ones = tf.ones((n, 1), tf.float64)
    a_in, a_rec = [None] * T, [None] * T
    with tf.GradientTape() as tape:
        tape.watch(probes_in + probes_rec)
        for t in reversed(range(T)) if go_backwards else range(T):
            a_in[t] = tf.concat([x[:, t], ones], 1)
            a_rec[t] = tf.concat([h, ones], 1)
            x_z, x_r, x_h = tf.split(x[:, t] @ W + b[0] + probes_in[t], 3, 1)
            r_z, r_r, r_h = tf.split(h @ U + b[1] + probes_rec[t], 3, 1)
            z, r = sigmoid(x_z + r_z), sigmoid(x_r + r_r)
            h_new = z * h + (1 - z) * tf.tanh(x_h + r * r_h)
            h = tf.where(mask[:, t : t + 1], h_new, h)
        loss = tf.reduce_mean(tf.reduce_sum(tf.square(h - y), axis=1))
    ds_in, ds_rec = tape.gradient(loss, [probes_in, probes_rec])
    by_example = lambda rows: np.stack(rows, 1).reshape(n * T, -1)  # noqa: E731
    return (
        (by_example(a_in), by_example(ds_in)),
        (by_example(a_rec), by_example(ds_rec)),
        mask.reshape(-1),
        h.numpy(),
    )


def layer_statistics(layer, x, y, **call):
    """`[(A, G, V)]` of the input and the recurrent block, `V` of the loss
    `mean_n ‖h_T - y‖²`, and `h_T`."""
    with tf.GradientTape() as tape:
        out = layer(tf.constant(x), training=True, **call)
        loss = tf.reduce_mean(tf.reduce_sum(tf.square(out - y), axis=1))
    kernel, recurrent, bias = tape.gradient(loss, layer.trainable_weights)
    results = []
    for owner, grad in ((layer, kernel), (layer.recurrent_stage, recurrent)):
        V = owner.block_type(owner, 0, 1).gradient_matrix(grad, bias)
        statistics = owner.statistics
        results.append((statistics.A.numpy(), statistics.G.numpy(), V.numpy()))
    return results, out


@pytest.mark.usefixtures("recording_statistics")
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
def test_factors_match_per_step_reference(rng, go_backwards, unroll, masked):
    n, T, d, units = 4, 5, 3, 3
    layer = layers.GRU(units, go_backwards=go_backwards, unroll=unroll)
    layer.build((None, T, d))
    # Non-zero biases, so that the homogeneous coordinates are tested.
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
    recorded, out = layer_statistics(layer, x, y, **call)
    *blocks, m, h = reference_rows(
        layer.get_weights(), x, y, mask, go_backwards
    )
    assert_close(out, h, 16)
    for (A, G, V), (a, ds) in zip(recorded, blocks):
        # Each block's rows sum to its gradient, as the loop pairs them.
        assert_close(V, a.T @ ds, 64)
        A_ref, G_ref = reference_factors(a, ds, m, n)
        assert_close(A, A_ref, 16)
        assert_close(G, G_ref, 64)
        if masked:
            assert not np.any(ds[~m])


@pytest.mark.usefixtures("recording_statistics")
def test_one_step_one_example_blocks_are_the_exact_fisher(rng):
    """For `T = 1` and one example each block's gradient is `a gᵀ`, so its
    `A ⊗ G` is the exact (empirical) Fisher block `vec(V) vec(V)ᵀ`, of
    `[W; b_in]` and of `[U; b_rec]`."""
    units = 3
    layer = layers.GRU(units)
    layer.build((None, 1, 2))
    x = rng.normal(size=(1, 1, 2)).astype("float32")
    y = rng.normal(size=(1, units)).astype("float32")
    state = rng.normal(size=(1, units)).astype("float32")
    recorded, _ = layer_statistics(layer, x, y, initial_state=[state])
    for A, G, V in recorded:
        np.testing.assert_allclose(
            np.kron(A, G), np.outer(V.ravel(), V.ravel()), rtol=1e-5, atol=1e-7
        )
    A_rec = recorded[1][0]
    np.testing.assert_allclose(A_rec[:units, :units], state.T @ state, 1e-6)


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
def test_outputs_and_gradients_match_keras(rng, options):
    x = rng.normal(size=(3, 4, 2)).astype("float32")
    mask = tf.constant(np.arange(4)[None].repeat(3, 0) < [[4], [2], [3]])
    results = []
    for layer_type in (keras.layers.GRU, layers.GRU):
        keras.utils.set_random_seed(0)
        layer = layer_type(3, **options)
        layer.build((None, 4, 2))
        with tf.GradientTape() as tape:
            out = tf.nest.flatten(layer(x, mask=mask, training=True))
            loss = tf.add_n([tf.reduce_sum(tf.square(o)) for o in out])
        results.append(out + tape.gradient(loss, layer.trainable_weights))
    for ours, plain in zip(results[1], results[0]):
        np.testing.assert_allclose(ours, plain, rtol=1e-5, atol=1e-6)


def test_one_step_equals_dense_damped_solves(rng):
    """One `KFAC` step on a GRU is `-lr (A ⊗ G + λI)⁻¹ vec(V)` per block,
    the factors from the per-step reference; the bias takes row 0 of its
    step from the input block and row 1 from the recurrent one. Then the
    estimator's `vᵀ F̂ v` is the sum of the blocks' over the rows."""
    damping, lr, n, T, d, units = 0.03, 0.1, 8, 4, 2, 2
    model = keras.Sequential([keras.Input((T, d)), layers.GRU(units)])
    x = rng.normal(size=(n, T, d)).astype("float32")
    y = rng.normal(size=(n, units)).astype("float32")
    weights = model.get_weights()
    *blocks, m, _ = reference_rows(weights, x, y)
    optimizer = keras_kfac.KFAC(
        learning_rate=lr, damping=damping, damping_mode="eigen", **EXACT
    )
    model.compile(optimizer=optimizer, loss="mse")
    model.train_on_batch(x, y)
    W, U, b = (w1 - w0 for w0, w1 in zip(weights, model.get_weights()))
    for (a, ds), step in zip(blocks, ([W, b[0]], [U, b[1]])):
        # Keras' mse averages over the units too.
        A, G = reference_factors(a, ds / units, m, n)
        F = np.kron(A, G) + damping * np.eye(len(A) * len(G))
        expected = -lr * np.linalg.solve(F, (a.T @ ds / units).ravel())
        step = np.concatenate([step[0], step[1][None]]).ravel()
        np.testing.assert_allclose(
            step, expected, rtol=0, atol=float32_solve_atol(F, expected)
        )

    curvature = optimizer.estimator
    v = [rng.normal(size=w.shape).astype("float32") for w in weights]
    expected, bound = 0.0, 0.0
    for block, state in zip(curvature.blocks, curvature.states):
        kernel, bias = (v[i] for i in block.variable_indices)
        V = np.concatenate([kernel, bias[block.layer.kfac_bias_row][None]])
        A, G = state.A.numpy(), state.G.numpy()
        expected += V.ravel() @ np.kron(A, G) @ V.ravel()
        bound += np.linalg.norm(A, 2) * np.linalg.norm(G, 2) * np.sum(V**2)
    actual = curvature.quadratic_form(dict(enumerate(v)), tf.constant(False))
    # Float32 eigendecompositions perturb F̂ by a few eps of its norm.
    np.testing.assert_allclose(actual, expected, rtol=0, atol=64 * EPS * bound)


def test_a_block_sharing_the_bias_with_a_left_out_one_is_left_out():
    layer = layers.GRU(3, name="g")
    layer.build((None, 4, 2))
    cell = layer.cell
    found = estimator.find_blocks(
        [cell.kernel, cell.recurrent_kernel, cell.bias]
    )
    assert [b.layer.name for b in found] == ["g", "g_recurrent"]
    # In the order of the kernels, whichever variable comes first.
    found = estimator.find_blocks(
        [cell.bias, cell.recurrent_kernel, cell.kernel]
    )
    assert [b.layer.name for b in found] == ["g_recurrent", "g"]
    with pytest.warns(UserWarning) as caught:
        assert estimator.find_blocks([cell.kernel, cell.bias]) == []
    messages = " ".join(str(w.message) for w in caught)
    assert "'g_recurrent' has a kernel or bias" in messages
    assert "'g' shares a variable" in messages


def test_convert_reaches_nested_and_bidirectional_grus(rng):
    inner = keras.Sequential(
        [keras.Input((6, 3)), keras.layers.GRU(4, return_sequences=True)]
    )
    inputs = keras.Input((6, 3))
    hidden = keras.layers.Bidirectional(keras.layers.GRU(5))(inner(inputs))
    plain = keras.Model(inputs, keras.layers.Dense(2)(hidden))
    ours = keras_kfac.convert(plain)
    found = [
        l for l in ours._flatten_layers() if isinstance(l, keras.layers.RNN)
    ]
    assert [type(l) for l in found] == [layers.GRU] * 3
    x = rng.normal(size=(2, 6, 3)).astype("float32")
    np.testing.assert_allclose(ours(x), plain(x), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        ours(x, training=True), plain(x), rtol=1e-5, atol=1e-6
    )
    optimizer = keras_kfac.KFAC()
    optimizer.build(ours.trainable_variables)
    rows = optimizer.summary_rows()
    assert all(update.startswith("K-FAC") for _, _, update in rows)
    # Two blocks per GRU and the Dense's.
    assert sum("(A" in update for _, _, update in rows) == 7
    biases = [u for path, _, u in rows if path.endswith("gru_cell/bias")]
    assert len(biases) == 3
    assert all(
        "GRU block" in u and "+ GRU recurrent block" in u for u in biases
    )


@pytest.mark.parametrize(
    "options,received",
    [
        (dict(reset_after=False), "reset_after=False"),
        (dict(recurrent_dropout=0.2), "recurrent_dropout=0.2"),
    ],
)
def test_unsupported_grus_are_refused_and_left_to_keras(options, received):
    with pytest.raises(ValueError, match=received):
        layers.GRU(3, **options)
    ours = keras_kfac.convert(sequence_model(keras.layers.GRU, **options))
    assert type(ours.layers[1]) is keras.layers.GRU
    with pytest.raises(ValueError, match="implementation=1"):
        layers.GRU(3, implementation=1, dropout=0.2)
