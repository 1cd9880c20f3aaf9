"""A keras_kfac layer records its factors only for an optimizer that reads
them: none for a model trained by Adam alone, only its own layers' for a
built KFAC, every layer's for a KFAC not built yet."""

import gc

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_kfac
from keras_kfac import layers


@pytest.fixture(autouse=True)
def no_live_optimizers():
    """KFACs of earlier tests are dropped, so only this test's read."""
    gc.collect()
    yield


def _model(rng):
    model = keras.Sequential(
        [keras.Input((4,)), layers.Dense(5, activation="tanh"), layers.Dense(2)]
    )
    x = rng.normal(size=(16, 4)).astype("float32")
    y = rng.normal(size=(16, 2)).astype("float32")
    return model, x, y


def _recorded(model) -> list[bool]:
    return [bool(layer.statistics.fresh.numpy()) for layer in model.layers]


@pytest.mark.slow
def test_a_model_trained_by_adam_records_nothing(rng):
    model, x, y = _model(rng)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="mse")
    model.fit(x, y, epochs=1, verbose=0)
    assert _recorded(model) == [False, False]
    for layer in model.layers:
        np.testing.assert_array_equal(layer.statistics.A.numpy(), 0.0)
        assert layer.statistics.kernel_grad_sq.numpy() == 0.0


@pytest.mark.slow
def test_kfac_records_its_own_layers_only(rng):
    trained, x, y = _model(rng)
    other, _, _ = _model(rng)
    trained.compile(optimizer=keras_kfac.KFAC(), loss="mse")
    trained.fit(x, y, epochs=1, verbose=0)  # builds the KFAC
    other.compile(optimizer=keras.optimizers.Adam(1e-3), loss="mse")
    other.fit(x, y, epochs=1, verbose=0)
    assert _recorded(other) == [False, False]
    # The KFAC folded its layers' fresh statistics into its factors.
    for factors in trained.optimizer.estimator.states:
        assert np.abs(factors.A.numpy()).max() > 0


def test_a_kfac_not_built_yet_may_read_any_layer(rng):
    model, x, y = _model(rng)
    optimizer = keras_kfac.KFAC()  # alive, not built: it may train model
    with tf.GradientTape() as tape:
        loss = tf.reduce_mean(tf.square(model(x, training=True) - y))
    tape.gradient(loss, model.trainable_weights)
    assert _recorded(model) == [True, True]
    del optimizer


def test_collecting_statistics_overrides_the_readers(rng):
    model, x, y = _model(rng)
    with tf.GradientTape() as tape:
        loss = tf.reduce_mean(tf.square(model(x, training=True) - y))
    with keras_kfac.collecting_statistics(True):
        tape.gradient(loss, model.trainable_weights)
    assert _recorded(model) == [True, True]
