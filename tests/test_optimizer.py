import os
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
    numpy_patches,
    stacked_gradient,
    with_ones,
)

import keras_kfac
from keras_kfac import layers


def mlp(d_in=3, hidden=4, d_out=2):
    return keras.Sequential(
        [
            keras.Input((d_in,)),
            layers.Dense(hidden, activation="tanh"),
            layers.Dense(d_out),
        ]
    )


def mlp_reference(model, x, y):
    """Independent forward/backward of `mlp`: per-layer (A, G) and [∇W; ∇b]."""
    W1, b1, W2, b2 = [tf.constant(w) for w in model.get_weights()]
    with tf.GradientTape(persistent=True) as tape:
        tape.watch([W1, b1, W2, b2])
        s1 = x @ W1 + b1
        h = tf.tanh(s1)
        s2 = h @ W2 + b2
        tape.watch([s1, s2])
        loss = tf.reduce_mean(tf.reduce_mean(tf.square(s2 - y), axis=-1))
    n = len(x)
    ds1, ds2, dW1, db1, dW2, db2 = [
        t.numpy() for t in tape.gradient(loss, [s1, s2, W1, b1, W2, b2])
    ]
    blocks = [
        factors(with_ones(x), ds1, n),
        factors(with_ones(h.numpy()), ds2, n),
    ]
    grads = [stacked_gradient(dW1, db1), stacked_gradient(dW2, db2)]
    return blocks, grads


def cnn():
    return keras.Sequential(
        [
            keras.Input((5, 5, 2)),
            layers.Conv2D(3, 3, padding="same", activation="tanh"),
            keras.layers.Flatten(),
            layers.Dense(2),
        ]
    )


def cnn_reference(model, x, y):
    K, c, W, b = [tf.constant(w) for w in model.get_weights()]
    with tf.GradientTape(persistent=True) as tape:
        tape.watch([K, c, W, b])
        s1 = tf.nn.conv2d(x, K, 1, "SAME") + c
        h = tf.reshape(tf.tanh(s1), (len(x), -1))
        s2 = h @ W + b
        tape.watch([s1, s2])
        loss = tf.reduce_mean(tf.reduce_mean(tf.square(s2 - y), axis=-1))
    n = len(x)
    ds1, ds2, dK, dc, dW, db = [
        t.numpy() for t in tape.gradient(loss, [s1, s2, K, c, W, b])
    ]
    a, _ = numpy_patches(x, (3, 3), (1, 1), (1, 1), "same")
    blocks = [
        factors(with_ones(a), ds1.reshape(-1, 3), n),
        factors(with_ones(h.numpy()), ds2, n),
    ]
    grads = [stacked_gradient(dK, dc), stacked_gradient(dW, db)]
    return blocks, grads


def stacked_weights(model):
    w = model.get_weights()
    return [stacked_gradient(w[i], w[i + 1]) for i in range(0, len(w), 2)]


def one_step(model, x, y, **kwargs):
    model.compile(optimizer=keras_kfac.KFAC(**kwargs), loss="mse")
    before = flat(stacked_weights(model))
    model.train_on_batch(x, y)
    return flat(stacked_weights(model)) - before


@pytest.mark.parametrize("mode", ["eigen", "factored"])
@pytest.mark.parametrize("net", ["mlp", "cnn"])
def test_one_step_equals_dense_damped_solve(rng, mode, net):
    damping, lr = 0.03, 0.1
    if net == "mlp":
        model, reference = mlp(), mlp_reference
        x = rng.normal(size=(16, 3)).astype("float32")
    else:
        model, reference = cnn(), cnn_reference
        x = rng.normal(size=(4, 5, 5, 2)).astype("float32")
    y = rng.normal(size=(len(x), 2)).astype("float32")
    blocks, grads = reference(model, x, y)
    if mode == "eigen":
        F = dense_fisher(blocks) + damping * np.eye(len(flat(grads)))
    else:
        F = factored_damped_fisher(blocks, damping)
    expected = -lr * np.linalg.solve(F, flat(grads))
    step = one_step(
        model,
        x,
        y,
        learning_rate=lr,
        damping=damping,
        damping_mode=mode,
        **EXACT,
    )
    np.testing.assert_allclose(
        step, expected, rtol=0, atol=float32_solve_atol(F, expected)
    )


def affine_pair(rng):
    """Two models computing the same function, on x and on x' = x M + c."""
    M = np.eye(3) + 0.3 * rng.normal(size=(3, 3))
    c = rng.normal(size=(3,))
    base = mlp(hidden=3)
    moved = mlp(hidden=3)
    W1, b1, W2, b2 = base.get_weights()
    M_inv_W1 = np.linalg.solve(M, W1)
    moved.set_weights([M_inv_W1, b1 - c @ M_inv_W1, W2, b2])
    return base, moved, M.astype("float32"), c.astype("float32")


@pytest.mark.parametrize(
    "optimizer,invariant",
    [
        (
            lambda: keras_kfac.KFAC(learning_rate=0.5, damping=0.0, **EXACT),
            True,
        ),
        (lambda: keras.optimizers.SGD(0.5), False),
        (lambda: keras.optimizers.Adam(0.1), False),
    ],
    ids=["kfac", "sgd", "adam"],
)
def test_undamped_step_is_invariant_to_affine_input_change(
    rng, optimizer, invariant
):
    base, moved, M, c = affine_pair(rng)
    x = rng.normal(size=(64, 3)).astype("float32")
    y = rng.normal(size=(64, 2)).astype("float32")
    x_moved = x @ M + c
    np.testing.assert_allclose(base(x), moved(x_moved), atol=1e-5)
    before = base(x).numpy()
    for model, inputs in ((base, x), (moved, x_moved)):
        model.compile(optimizer=optimizer(), loss="mse")
        model.train_on_batch(inputs, y)
    change = np.max(np.abs(base(x) - before))
    gap = np.max(np.abs(base(x) - moved(x_moved)))
    assert change > 0.05  # the step moved the function substantially
    if invariant:
        assert gap < 1e-3 * change
    else:
        assert gap > 0.1 * change


@pytest.mark.parametrize("mode", ["eigen", "factored"])
def test_kl_clip_caps_the_quadratic_form_at_the_radius(rng, mode):
    damping, kl_clip = 0.01, 1e-3
    model = mlp()
    x = rng.normal(size=(16, 3)).astype("float32")
    y = rng.normal(size=(16, 2)).astype("float32")
    blocks, grads = mlp_reference(model, x, y)
    settings = dict(EXACT, kl_clip=kl_clip)
    step = one_step(
        model,
        x,
        y,
        learning_rate=10.0,
        damping=damping,
        damping_mode=mode,
        **settings,
    )
    F = dense_fisher(blocks)
    if mode == "eigen":
        F_damped = F + damping * np.eye(len(F))
    else:
        F_damped = factored_damped_fisher(blocks, damping)
    # The clip is active: ½ Δθᵀ F̂_λ Δθ equals δ, and the undamped F̂ gives less.
    np.testing.assert_allclose(0.5 * step @ F_damped @ step, kl_clip, rtol=1e-3)
    assert 0.5 * step @ F @ step <= kl_clip * (1 + 1e-4)
    assert model.optimizer.clip_coefficient.numpy() < 1.0


def test_small_steps_are_not_clipped(rng):
    model = mlp()
    x = rng.normal(size=(16, 3)).astype("float32")
    y = rng.normal(size=(16, 2)).astype("float32")
    blocks, grads = mlp_reference(model, x, y)
    F = dense_fisher(blocks) + 0.01 * np.eye(len(flat(grads)))
    expected = -1e-3 * np.linalg.solve(F, flat(grads))
    step = one_step(
        model,
        x,
        y,
        learning_rate=1e-3,
        damping=0.01,
        **dict(EXACT, kl_clip=1.0),
    )
    np.testing.assert_allclose(
        step, expected, rtol=0, atol=float32_solve_atol(F, expected)
    )
    assert model.optimizer.clip_coefficient.numpy() == 1.0


def test_cold_steps_are_plain_sgd(rng):
    model = mlp()
    x = rng.normal(size=(16, 3)).astype("float32")
    y = rng.normal(size=(16, 2)).astype("float32")
    _, grads = mlp_reference(model, x, y)
    step = one_step(model, x, y, learning_rate=0.1, **dict(EXACT, cold_steps=1))
    np.testing.assert_allclose(step, -0.1 * flat(grads), rtol=1e-4, atol=1e-7)


def test_momentum_averages_steps(rng):
    """v ← μ v + (1 - μ) η Δ, θ ← θ - v, checked over two steps on SGD-like
    cold steps."""
    model = mlp()
    x = rng.normal(size=(16, 3)).astype("float32")
    y = rng.normal(size=(16, 2)).astype("float32")
    model.compile(
        optimizer=keras_kfac.KFAC(
            learning_rate=0.1, momentum=0.5, kl_clip=None, cold_steps=2
        ),
        loss="mse",
    )
    theta0 = flat(stacked_weights(model))
    _, g0 = mlp_reference(model, x, y)
    model.train_on_batch(x, y)
    _, g1 = mlp_reference(model, x, y)
    model.train_on_batch(x, y)
    v1 = 0.5 * 0.1 * flat(g0)
    v2 = 0.5 * v1 + 0.5 * 0.1 * flat(g1)
    np.testing.assert_allclose(
        flat(stacked_weights(model)), theta0 - v1 - v2, rtol=1e-4, atol=1e-7
    )


@pytest.mark.parametrize(
    "kwargs,received",
    [
        (dict(damping=-1.0), "damping=-1.0"),
        (dict(kl_clip=0.0), "kl_clip=0.0"),
        (dict(kl_clip=-1e-3), "kl_clip=-0.001"),
        (dict(stats_decay=1.0), "stats_decay=1.0"),
        (dict(stats_decay=-0.1), "stats_decay=-0.1"),
        (dict(momentum=1.0), "momentum=1.0"),
        (dict(inverse_update_freq=0), "inverse_update_freq=0"),
        (dict(inverse_update_freq=2.5), "inverse_update_freq=2.5"),
        (dict(cold_steps=-1), "cold_steps=-1"),
        (dict(damping_mode="exact"), "damping_mode='exact'"),
        (dict(learning_rate=-0.1), "learning_rate=-0.1"),
        (dict(learning_rate=0.0), "learning_rate=0.0"),
        (dict(learning_rate=float("nan")), "learning_rate=nan"),
        (dict(learning_rate=float("inf")), "learning_rate=inf"),
        (dict(damping=float("nan")), "damping=nan"),
        (dict(damping=float("inf")), "damping=inf"),
        (dict(damping="0.01"), "damping='0.01'"),
        (dict(kl_clip=float("nan")), "kl_clip=nan"),
        (dict(kl_clip=float("inf")), "kl_clip=inf"),
        (dict(momentum=float("nan")), "momentum=nan"),
        (dict(momentum=-0.5), "momentum=-0.5"),
        (dict(stats_decay=float("nan")), "stats_decay=nan"),
        (dict(weight_decay=float("nan")), "weight_decay=nan"),
        (dict(weight_decay=float("inf")), "weight_decay=inf"),
        (dict(weight_decay=-1e-4), "weight_decay=-0.0001"),
        (dict(clipnorm=float("nan")), "clipnorm=nan"),
        (dict(clipnorm=-1.0), "clipnorm=-1.0"),
        (dict(clipvalue=float("inf")), "clipvalue=inf"),
        (dict(global_clipnorm=float("nan")), "global_clipnorm=nan"),
        (dict(global_clipnorm=float("inf")), "global_clipnorm=inf"),
        (dict(loss_scale_factor=0.0), "loss_scale_factor=0.0"),
        (dict(loss_scale_factor=float("nan")), "loss_scale_factor=nan"),
        (dict(use_ema=True, ema_momentum=float("nan")), "ema_momentum=nan"),
        (dict(statistics_update_freq=0), "statistics_update_freq=0"),
    ],
)
def test_invalid_hyperparameters_name_what_was_received(kwargs, received):
    with pytest.raises(
        ValueError, match=received.replace("(", r"\(").replace(".", r"\.")
    ):
        keras_kfac.KFAC(**kwargs)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(damping=0.0),
        dict(damping=0),
        dict(kl_clip=None),
        dict(momentum=0.0, stats_decay=0.0),
        dict(learning_rate=np.float64(0.1), damping=np.float32(1e-3)),
        dict(
            learning_rate=keras.optimizers.schedules.ExponentialDecay(
                0.1, decay_steps=10, decay_rate=0.9
            )
        ),
        dict(weight_decay=0.0, clipnorm=0.0, loss_scale_factor=128.0),
        dict(use_ema=True, ema_momentum=1.0),
    ],
    ids=[
        "zero-damping",
        "int-damping",
        "no-clip",
        "zero-momentum-decay",
        "numpy-floats",
        "schedule",
        "keras-off-values",
        "ema-bound",
    ],
)
def test_edge_values_in_range_are_accepted(kwargs):
    optimizer = keras_kfac.KFAC(**kwargs)
    again = keras_kfac.KFAC.from_config(optimizer.get_config())
    assert again.get_config() == optimizer.get_config()


def test_weight_decay_is_keras_decoupled_decay_on_an_applied_step(rng):
    """θ ← θ - wd · η · θ - η ∇ on a cold step, biases excluded by name."""
    model = mlp()
    x = rng.normal(size=(16, 3)).astype("float32")
    y = rng.normal(size=(16, 2)).astype("float32")
    _, grads = mlp_reference(model, x, y)
    theta = stacked_weights(model)
    optimizer = keras_kfac.KFAC(
        learning_rate=0.1, weight_decay=0.5, **dict(EXACT, cold_steps=1)
    )
    optimizer.exclude_from_weight_decay(var_names=["bias"])
    model.compile(optimizer=optimizer, loss="mse")
    model.train_on_batch(x, y)
    for before, grad, after in zip(theta, grads, stacked_weights(model)):
        decay = 0.5 * 0.1 * before
        decay[-1] = 0.0  # the bias row
        np.testing.assert_allclose(
            after, before - decay - 0.1 * grad, rtol=1e-5, atol=1e-7
        )


def test_config_round_trip():
    opt = keras_kfac.KFAC(
        learning_rate=0.1,
        damping=0.02,
        kl_clip=None,
        momentum=0.5,
        stats_decay=0.9,
        inverse_update_freq=3,
        cold_steps=4,
        damping_mode="factored",
        statistics_update_freq=2,
        clipnorm=1.0,
        weight_decay=1e-4,
    )
    config = opt.get_config()
    again = keras_kfac.KFAC.from_config(config)
    assert again.get_config() == config
    restored = keras.optimizers.deserialize(keras.optimizers.serialize(opt))
    assert type(restored) is keras_kfac.KFAC and restored.get_config() == config


def test_model_without_kfac_layers_warns_once_and_trains_first_order(rng):
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    x = rng.normal(size=(8, 3)).astype("float32")
    y = rng.normal(size=(8, 2)).astype("float32")
    W, b = [w.copy() for w in model.get_weights()]
    with tf.GradientTape() as tape:
        loss = tf.reduce_mean(tf.reduce_mean(tf.square(model(x) - y), -1))
    dW, db = tape.gradient(loss, model.trainable_weights)
    model.compile(
        optimizer=keras_kfac.KFAC(learning_rate=0.1, **EXACT), loss="mse"
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.train_on_batch(x, y)
        model.train_on_batch(x, y)
    messages = [
        str(w.message) for w in caught if "no keras_kfac" in str(w.message)
    ]
    assert len(messages) == 1
    model2 = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    model2.set_weights([W, b])
    model2.compile(
        optimizer=keras_kfac.KFAC(learning_rate=0.1, **EXACT), loss="mse"
    )
    model2.train_on_batch(x, y)
    np.testing.assert_allclose(
        model2.get_weights()[0], W - 0.1 * dW.numpy(), rtol=1e-5, atol=1e-7
    )


def test_gradient_accumulation_applies_the_mean_gradient_once(rng):
    x = rng.normal(size=(16, 3)).astype("float32")
    y = rng.normal(size=(16, 2)).astype("float32")
    once, accumulated = mlp(), mlp()
    accumulated.set_weights(once.get_weights())
    # The weight decay, part of the update, is applied once too.
    settings = dict(EXACT, kl_clip=1e-2, learning_rate=0.1, weight_decay=0.1)
    once.compile(optimizer=keras_kfac.KFAC(**settings), loss="mse")
    accumulated.compile(
        optimizer=keras_kfac.KFAC(gradient_accumulation_steps=2, **settings),
        loss="mse",
    )
    once.train_on_batch(x, y)
    accumulated.train_on_batch(x, y)
    assert int(accumulated.optimizer.update_count) == 0
    accumulated.train_on_batch(x, y)
    assert int(accumulated.optimizer.update_count) == 1
    for a, b in zip(accumulated.get_weights(), once.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_an_embedding_trains_first_order_from_its_sparse_gradient(rng):
    # Tokens -> Embedding (first-order, IndexedSlices gradient) -> Dense.
    # With momentum 0 and no clip, the embedding moves by -η ∇, ∇ its dense
    # gradient on the batch.
    tokens = rng.integers(0, 20, size=(32, 5)).astype("int32")
    y = rng.integers(0, 3, size=(32,)).astype("int32")
    model = keras.Sequential(
        [
            keras.Input((5,), dtype="int32"),
            keras.layers.Embedding(20, 4),
            keras.layers.GlobalAveragePooling1D(),
            keras_kfac.layers.Dense(3),
        ]
    )
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    embedding = model.layers[0].embeddings
    before = embedding.numpy()
    with tf.GradientTape() as tape:
        loss = loss_fn(y, model(tokens, training=True))
    sparse = tape.gradient(loss, embedding)
    assert isinstance(sparse, tf.IndexedSlices)
    dense = tf.convert_to_tensor(sparse).numpy()
    optimizer = keras_kfac.KFAC(learning_rate=0.1, momentum=0.0, kl_clip=None)
    model.compile(optimizer=optimizer, loss=loss_fn)
    model.train_on_batch(tokens, y)
    np.testing.assert_allclose(
        embedding.numpy(), before - 0.1 * dense, rtol=1e-5, atol=1e-7
    )
    model.fit(tokens, y, epochs=2, batch_size=8, verbose=0)
    assert np.all(np.isfinite(embedding.numpy()))


def _mixed_model():
    """A K-FAC layer between an Embedding and a plain Keras Dense."""
    return keras.Sequential(
        [
            keras.Input((5,), dtype="int32"),
            keras.layers.Embedding(20, 4, name="tokens"),
            keras.layers.Flatten(),
            keras_kfac.layers.Dense(8, name="tapped"),
            keras.layers.Dense(3, name="plain"),
        ]
    )


def test_summary_names_every_variables_update():
    model = _mixed_model()
    optimizer = keras_kfac.KFAC()
    with pytest.raises(ValueError, match="needs the optimizer built"):
        optimizer.summary()
    with pytest.warns(
        UserWarning, match=r"2 kernel\(s\).*tokens/embeddings, .*plain/kernel"
    ):
        optimizer.build(model.trainable_variables)
    rows = {
        path.split("/", 1)[1]: update
        for path, _, update in optimizer.summary_rows()
    }
    assert rows == {
        "tokens/embeddings": "first-order (momentum SGD, same step size)",
        "tapped/kernel": "K-FAC Dense block 1 (A 21x21, G 8x8)",
        "tapped/bias": "K-FAC Dense block 1",
        "plain/kernel": "first-order (momentum SGD, same step size)",
        "plain/bias": "first-order (momentum SGD, same step size)",
    }
    lines = []
    optimizer.summary(print_fn=lines.append)
    assert lines[0] == "KFAC: 2 of 5 variables in 1 K-FAC blocks, 3 first-order"
    assert len(lines) == 2 + 5


def test_a_model_of_kfac_layers_builds_without_a_warning(recwarn):
    model = keras.Sequential(
        [
            keras.Input((4,)),
            keras_kfac.layers.Dense(3),
            keras.layers.LayerNormalization(),
        ]
    )
    keras_kfac.KFAC().build(model.trainable_variables)
    assert not [w for w in recwarn if "first-order" in str(w.message)]


def test_compile_takes_kfac_by_name():
    model = keras.Sequential([keras.Input((4,)), keras_kfac.layers.Dense(2)])
    for name in ("kfac", "KFAC"):
        model.compile(optimizer=name, loss="mse")
        assert isinstance(model.optimizer, keras_kfac.KFAC)
        assert (
            model.optimizer.get_config()
            == keras_kfac.KFAC().get_config() | {"name": model.optimizer.name}
        )


def test_factored_predicted_kl_is_half_the_step_under_a_kron_g(rng):
    # One step, momentum 0, stats decay 0 and inverses every step: the
    # factors are the batch's, and ½ vᵀ (A ⊗ G) v is the dense quadratic.
    model = mlp()
    x = rng.normal(size=(16, 3)).astype("float32")
    y = rng.normal(size=(16, 2)).astype("float32")
    blocks, _ = mlp_reference(model, x, y)
    step = one_step(
        model,
        x,
        y,
        learning_rate=0.1,
        damping=0.03,
        damping_mode="factored",
        **EXACT,
    )
    expected = 0.5 * step @ dense_fisher(blocks) @ step
    np.testing.assert_allclose(
        float(model.optimizer.predicted_kl()), expected, rtol=1e-4
    )


def test_factored_damping_needs_positive_damping():
    with pytest.raises(ValueError, match="damping=0.0"):
        keras_kfac.KFAC(damping=0.0, damping_mode="factored")


def test_kfac_logs_reach_history_and_tensorboard(rng, tmp_path):
    model = mlp()
    x = rng.normal(size=(64, 3)).astype("float32")
    y = rng.normal(size=(64, 2)).astype("float32")
    optimizer = keras_kfac.KFAC(learning_rate=10.0, damping=0.02)
    model.compile(optimizer=optimizer, loss="mse")
    logdir = str(tmp_path / "tb")
    history = model.fit(
        x,
        y,
        epochs=2,
        batch_size=16,
        verbose=0,
        callbacks=[keras_kfac.KFACLogs(), keras.callbacks.TensorBoard(logdir)],
    )
    logs = history.history
    clip = float(optimizer.clip_coefficient.numpy())
    # η_max = 10 is far above what δ allows: the clip binds.
    assert 0.0 < clip < 1.0
    assert logs["kfac_clip_coefficient"][-1] == pytest.approx(clip)
    assert logs["kfac_step_size"][-1] == pytest.approx(10.0 * clip)
    # Stored as float32: equal to the argument to float32's precision.
    assert logs["kfac_damping"] == pytest.approx([0.02, 0.02], rel=1e-7)
    assert logs["kfac_momentum"] == pytest.approx([0.9, 0.9], rel=1e-7)
    assert "kfac_reduction_ratio" not in logs
    assert logs["kfac_skipped_steps"] == [0.0, 0.0]
    assert logs["kfac_failed_refreshes"] == [0.0, 0.0]
    tags = set()
    for root, _, files in os.walk(logdir):
        for name in files:
            for event in tf.compat.v1.train.summary_iterator(
                os.path.join(root, name)
            ):
                tags.update(v.tag for v in event.summary.value)
    assert "epoch_kfac_clip_coefficient" in tags


def test_kfac_logs_need_a_kfac_optimizer(rng):
    model = mlp()
    model.compile(optimizer="adam", loss="mse")
    x = rng.normal(size=(8, 3)).astype("float32")
    with pytest.raises(ValueError, match="compiled with Adam"):
        model.fit(x, x[:, :2], verbose=0, callbacks=[keras_kfac.KFACLogs()])


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "function"])
def test_statistics_are_recorded_every_statistics_update_freq_steps(
    rng, compiled
):
    # freq 3: the backward passes of steps 0, 3 and 6 record A and G; the
    # running A then moves on those steps only.
    model = mlp()
    optimizer = keras_kfac.KFAC(
        learning_rate=0.01, statistics_update_freq=3, stats_decay=0.5
    )
    layer = model.layers[0]

    def step(x, y):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.square(model(x, training=True) - y))
        grads = tape.gradient(loss, model.trainable_variables)
        recorded = tf.identity(layer.statistics.fresh)
        optimizer.apply(grads, model.trainable_variables)
        return recorded

    step = tf.function(step) if compiled else step
    # A KFAC not built yet, still alive (another test's, say), reads every
    # layer and records every step; once built, this one decides.
    stray = keras_kfac.KFAC()
    recorded, moved = [], []
    previous = None
    for _ in range(7):
        x = rng.normal(size=(8, 3)).astype("float32")
        y = rng.normal(size=(8, 2)).astype("float32")
        recorded.append(float(step(x, y)))
        A = optimizer.estimator.states[0].A.numpy().copy()
        moved.append(previous is None or not np.array_equal(A, previous))
        previous = A
    assert recorded == [1, 0, 0, 1, 0, 0, 1]
    assert moved == [True, False, False, True, False, False, True]
    del stray
