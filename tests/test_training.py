"""model.fit end to end: saving, resuming, XLA, faults, mixed precision."""

import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_kfac
from keras_kfac import layers

SETTINGS = dict(
    learning_rate=0.2,
    damping=0.01,
    kl_clip=1e-2,
    momentum=0.9,
    stats_decay=0.9,
    inverse_update_freq=3,
    cold_steps=2,
)


def classifier():
    return keras.Sequential(
        [
            keras.Input((6, 6, 1)),
            layers.Conv2D(4, 3, strides=2, padding="same", activation="relu"),
            keras.layers.Flatten(),
            layers.Dense(16, activation="tanh"),
            layers.Dense(3),
        ]
    )


def data(rng, n=96):
    x = rng.normal(size=(n, 6, 6, 1)).astype("float32")
    y = (x.reshape(n, -1)[:, :3].argmax(1)).astype("int32")
    return x, y


def compile_(model, jit_compile=False, **overrides):
    model.compile(
        optimizer=keras_kfac.KFAC(**dict(SETTINGS, **overrides)),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
        jit_compile=jit_compile,
    )
    return model


def fit(model, x, y, epochs, **kwargs):
    return model.fit(
        x, y, epochs=epochs, batch_size=16, shuffle=False, verbose=0, **kwargs
    )


def test_fit_reduces_loss(rng):
    x, y = data(rng)
    history = fit(compile_(classifier()), x, y, epochs=6)
    losses = history.history["loss"]
    assert losses[-1] < 0.7 * losses[0]


@pytest.mark.slow
def test_save_load_resume_equals_uninterrupted(rng, tmp_path):
    x, y = data(rng)
    initial = classifier().get_weights()

    straight = classifier()
    straight.set_weights(initial)
    fit(compile_(straight), x, y, epochs=4)

    first = classifier()
    first.set_weights(initial)
    fit(compile_(first), x, y, epochs=2)
    path = tmp_path / "m.keras"
    first.save(path)
    resumed = keras.saving.load_model(path)
    assert isinstance(resumed.optimizer, keras_kfac.KFAC)
    assert resumed.optimizer.get_config() == first.optimizer.get_config()
    for a, b in zip(resumed.optimizer.variables, first.optimizer.variables):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    fit(resumed, x, y, epochs=2)
    for a, b in zip(resumed.get_weights(), straight.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_jit_compile_agrees_with_graph_mode(rng):
    x, y = data(rng)
    initial = classifier().get_weights()
    results = []
    for jit in (False, True):
        model = classifier()
        model.set_weights(initial)
        fit(compile_(model, jit_compile=jit), x, y, epochs=2)
        results.append(model.get_weights())
    for a, b in zip(*results):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("damping_mode", ["eigen", "factored"])
@pytest.mark.slow
def test_xla_refresh_on_cpu_warns_once(rng, damping_mode):
    """XLA compiles the refresh with its own, far slower CPU linear
    algebra: one warning when it does, none without XLA or with an
    accelerator (where XLA's kernels are the vendor's)."""
    x, y = data(rng)
    expected = 0 if tf.config.list_physical_devices("GPU") else 1
    for jit, count in ((False, 0), (True, expected)):
        model = compile_(
            classifier(), jit_compile=jit, damping_mode=damping_mode
        )
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            fit(model, x, y, epochs=2)
        messages = [str(w.message) for w in caught]
        assert sum("with XLA" in m for m in messages) == count, messages


@pytest.mark.slow
def test_nan_batch_is_skipped_and_changes_nothing(rng):
    x, y = data(rng, n=64)
    bad = x.copy()
    bad[16:32] = np.nan  # the second of four batches
    initial = classifier().get_weights()

    poisoned = classifier()
    poisoned.set_weights(initial)
    compile_(poisoned)
    fit(poisoned, bad, y, epochs=1)
    assert int(poisoned.optimizer.skipped_steps) == 1
    assert int(poisoned.optimizer.update_count) == 3
    assert all(np.all(np.isfinite(w)) for w in poisoned.get_weights())
    assert all(
        np.all(np.isfinite(np.asarray(v))) for v in poisoned.optimizer.variables
    )

    clean = classifier()
    clean.set_weights(initial)
    keep = np.r_[0:16, 32:64]
    fit(compile_(clean), x[keep], y[keep], epochs=1)
    for a, b in zip(poisoned.get_weights(), clean.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    # Training goes on after the bad batch.
    fit(poisoned, x, y, epochs=1)
    assert int(poisoned.optimizer.skipped_steps) == 1


@pytest.mark.slow
def test_mixed_float16_keeps_factors_float32_and_undoes_loss_scale(rng):
    x, y = data(rng, n=32)
    initial = classifier().get_weights()
    factors = {}
    for policy in ("float32", "mixed_float16"):
        keras.config.set_dtype_policy(policy)
        model = classifier()
        model.set_weights(initial)
        compile_(model, **dict(cold_steps=0, stats_decay=0.0))
        fit(model, x[:16], y[:16], epochs=1)
        kfac = getattr(model.optimizer, "inner_optimizer", model.optimizer)
        assert all(
            f.G.dtype == "float32" and f.derived.Q_A.dtype == "float32"
            for f in kfac.estimator.states
        )
        factors[policy] = [np.asarray(f.G) for f in kfac.estimator.states]
    keras.config.set_dtype_policy("float32")
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    for g32, g16 in zip(factors["float32"], factors["mixed_float16"]):
        np.testing.assert_allclose(
            g16, g32, rtol=0.05, atol=1e-3 * np.abs(g32).max()
        )


def test_weight_decay_clipnorm_and_ema_work_together(rng):
    x, y = data(rng)
    model = compile_(
        classifier(), weight_decay=1e-3, global_clipnorm=1.0, use_ema=True
    )
    history = fit(model, x, y, epochs=3)
    assert np.isfinite(history.history["loss"][-1])
    assert history.history["loss"][-1] < history.history["loss"][0]
