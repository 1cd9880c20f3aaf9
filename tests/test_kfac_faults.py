"""Faults: what a non-finite step, zero damping or a NaN batch change.

The promise (README, "Faults"): an update whose gradients or statistics hold
NaN/Inf changes no weight, momentum or factor; only `iterations` and
`skipped_steps` move. When most updates are skipped, the optimizer says so.
"""

import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_kfac
from keras_kfac import layers

COUNTERS = ("iteration", "skipped_steps")


def mlp():
    return keras.Sequential(
        [
            keras.Input((3,)),
            layers.Dense(4, activation="tanh"),
            layers.Dense(2),
        ]
    )


def snapshot(variables):
    return [(v.path, v.numpy()) for v in variables]


def assert_bit_identical(before, after, skip=()):
    assert [path for path, _ in after] == [path for path, _ in before]
    for (path, value), (_, now) in zip(before, after):
        if path.rsplit("/", 1)[-1] not in skip:
            np.testing.assert_array_equal(now, value, err_msg=path)


@pytest.mark.parametrize("fault", ["nan_label", "nan_gradient"])
def test_skipped_step_with_weight_decay_changes_no_variable(rng, fault):
    x = rng.normal(size=(8, 3)).astype("float32")
    y = rng.normal(size=(8, 2)).astype("float32")
    model = mlp()
    optimizer = keras_kfac.KFAC(learning_rate=0.1, weight_decay=0.1)
    model.compile(optimizer=optimizer, loss="mse")
    # One applied step first, so velocities and factors are not all zero.
    model.train_on_batch(x, y)
    weights = snapshot(model.weights)
    state = snapshot(optimizer.variables)
    if fault == "nan_label":
        y[3, 1] = np.nan  # NaN loss: NaN gradients and a NaN G
        model.train_on_batch(x, y)
    else:
        # Only one gradient element is NaN; the statistics are not fresh.
        grads = [np.ones(v.shape, "float32") for v in model.trainable_weights]
        grads[2][0, 0] = np.nan
        optimizer.apply_gradients(zip(grads, model.trainable_weights))
    assert int(optimizer.skipped_steps) == 1
    assert int(optimizer.update_count) == 1
    assert int(optimizer.iterations) == 2
    assert_bit_identical(weights, snapshot(model.weights))
    assert_bit_identical(state, snapshot(optimizer.variables), skip=COUNTERS)


def single_dense_with_an_ignored_output():
    """`G` is exactly singular: the loss ignores the second output.

    Its gradient `g` is exactly 0, so `G = diag(G_00, 0)` and the
    eigendecomposition of a diagonal matrix is exact on every CPU: the
    undamped solve divides exactly 0 by exactly 0. (A 2-way softmax makes
    `G` singular too, but only up to roundoff, whose sign differs between
    CPUs.)
    """
    return keras.Sequential([keras.Input((4,)), layers.Dense(2)])


def first_output_mse(y_true, y_pred):
    return tf.reduce_mean(tf.square(y_pred[:, 0] - y_true[:, 0]))


def kfac_warnings(caught):
    return [
        str(w.message) for w in caught if "KFAC optimizer" in str(w.message)
    ]


@pytest.mark.parametrize("damping", [0.0, 1e-2])
def test_zero_damping_on_a_singular_factor_warns_once(rng, damping):
    x = rng.normal(size=(48, 4)).astype("float32")
    y = rng.normal(size=(48, 2)).astype("float32")
    model = single_dense_with_an_ignored_output()
    model.compile(
        optimizer=keras_kfac.KFAC(damping=damping, name="ignored_output"),
        loss=first_output_mse,
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.fit(x, y, batch_size=4, epochs=2, verbose=0)
    messages = kfac_warnings(caught)
    if damping > 0:
        assert int(model.optimizer.skipped_steps) == 0
        assert messages == []
        return
    assert int(model.optimizer.skipped_steps) == 24
    assert int(model.optimizer.update_count) == 0
    # Once, at the first update the rule allows: 10 of 10 skipped.
    assert len(messages) == 1
    assert (
        "'ignored_output' skipped 10 of its 10 updates (100%)" in (messages[0])
    )
    assert "optimizer.skipped_steps" in messages[0]
    assert "damping=0" in messages[0]


def test_a_refresh_that_is_not_finite_keeps_the_inverses_and_counts(rng):
    """Roundoff can leave a running factor indefinite beyond the damping;
    here the first layer's `A` is made negative definite outright, so
    `π = sqrt(mean diag A / mean diag G)` and the Cholesky factor of its
    damped matrix are not finite at every refresh. That block keeps its
    inverses bit for bit, the other one refreshes, no update is skipped,
    and the optimizer counts each failed refresh and warns once."""
    x = rng.normal(size=(48, 3)).astype("float32")
    y = rng.normal(size=(48, 2)).astype("float32")
    model = mlp()
    optimizer = keras_kfac.KFAC(
        damping_mode="factored", inverse_update_freq=1, name="indefinite"
    )
    model.compile(optimizer=optimizer, loss="mse")
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    assert optimizer.failed_refreshes == 0
    first, second = optimizer.estimator.states
    # The running average keeps it negative: `ε ≥ 6/7` weighs the -100.
    first.A.assign(-100.0 * np.eye(4, dtype="float32"))
    before = [snapshot(s.derived) for s in (first, second)]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.fit(x[:16], y[:16], batch_size=8, epochs=1, verbose=0)
    assert optimizer.failed_refreshes == 2  # two updates, one block each
    assert int(optimizer.skipped_steps) == 0
    assert_bit_identical(before[0], snapshot(first.derived))
    for (path, old), (_, new) in zip(before[1], snapshot(second.derived)):
        assert not np.array_equal(old, new), path
    messages = kfac_warnings(caught)
    assert len(messages) == 1
    assert "'indefinite': the refresh of 1 block(s) at update 6" in messages[0]
    assert "optimizer.failed_refreshes" in messages[0]


@pytest.mark.parametrize(
    "bad_batches,expected",
    [
        # At the 10th update, 8 were skipped: the first time the rule holds.
        ((1, 2, 3, 4, 6, 7, 8, 9, 10, 11), "skipped 8 of its 10 updates (80%)"),
        # 5 of 10, 6 of 12: never more than half.
        ((1, 3, 5, 7, 9, 11), None),
        # One bad batch: a skip, no warning.
        ((1,), None),
    ],
)
def test_warning_fires_when_most_of_at_least_10_updates_were_skipped(
    rng, bad_batches, expected
):
    x = rng.normal(size=(12 * 4, 3)).astype("float32")
    y = rng.normal(size=(12 * 4, 2)).astype("float32")
    for batch in bad_batches:
        x[4 * batch] = np.nan
    model = mlp()
    model.compile(optimizer=keras_kfac.KFAC(), loss="mse")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.fit(x, y, batch_size=4, shuffle=False, epochs=1, verbose=0)
    assert int(model.optimizer.skipped_steps) == len(bad_batches)
    messages = kfac_warnings(caught)
    if expected is None:
        assert messages == []
    else:
        assert len(messages) == 1 and expected in messages[0]
        assert "damping=0" not in messages[0]


@pytest.mark.slow
def test_xla_counts_skipped_steps_without_the_host_callback(rng):
    """jit_compile=True cannot compile the callback that warns: no warning,
    but training runs and `skipped_steps` still tells."""
    x = rng.normal(size=(48, 4)).astype("float32")
    y = rng.normal(size=(48, 2)).astype("float32")
    model = single_dense_with_an_ignored_output()
    model.compile(
        optimizer=keras_kfac.KFAC(damping=0.0),
        loss=first_output_mse,
        jit_compile=True,
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.fit(x, y, batch_size=4, epochs=1, verbose=0)
    assert int(model.optimizer.skipped_steps) == 12
    assert [m for m in kfac_warnings(caught) if "skipped" in m] == []


def test_batch_normalization_statistics_take_a_nan_batch(rng):
    """The optimizer cannot guard what a layer updates in its forward pass.

    BatchNormalization updates its moving statistics in `call`, before the
    optimizer sees any gradient: a NaN in input feature 0 makes that
    feature's moving mean and variance NaN, while the skipped update leaves
    every trainable weight as it was.
    """
    x = rng.normal(size=(8, 3)).astype("float32")
    y = rng.normal(size=(8, 2)).astype("float32")
    x[5, 0] = np.nan
    norm = keras.layers.BatchNormalization(momentum=0.9)
    model = keras.Sequential([keras.Input((3,)), norm, layers.Dense(2)])
    model.compile(optimizer=keras_kfac.KFAC(), loss="mse")
    weights = snapshot(model.trainable_weights)
    model.train_on_batch(x, y)
    assert int(model.optimizer.skipped_steps) == 1
    assert_bit_identical(weights, snapshot(model.trainable_weights))
    mean, variance = norm.moving_mean.numpy(), norm.moving_variance.numpy()
    assert np.isnan(mean[0]) and np.isnan(variance[0])
    # The clean features follow Keras' rule m ← 0.9 m + 0.1 μ_batch.
    np.testing.assert_allclose(
        mean[1:], 0.1 * x[:, 1:].mean(0), rtol=1e-5, atol=1e-7
    )
    np.testing.assert_allclose(
        variance[1:], 0.9 + 0.1 * x[:, 1:].var(0), rtol=1e-5, atol=1e-7
    )
    # Inference reads the moving statistics, and the Dense layer mixes
    # feature 0 into every output: all are NaN, although no weight changed.
    assert np.all(np.isnan(model.predict(np.zeros((2, 3)), verbose=0)))


@pytest.mark.parametrize(
    "true_fisher", [False, True], ids=["KFAC", "TrueFisherModel"]
)
def test_backup_and_restore_resumes_an_interrupted_fit_exactly(
    rng, tmp_path, true_fisher
):
    # The README's recipe for a `fit` that may be killed: everything K-FAC
    # keeps (factors, eigenbases, velocities, counters) is optimizer state,
    # and the sampler of `TrueFisherModel`'s targets is model state, so a
    # resumed fit ends where an uninterrupted one does.
    x = rng.normal(size=(96, 6)).astype("float32")
    y = rng.integers(0, 3, size=96)

    def fitted(epochs, callbacks=()):
        keras.utils.set_random_seed(0)
        net = keras.Sequential(
            [
                keras.Input((6,)),
                keras_kfac.layers.Dense(8, activation="tanh"),
                keras_kfac.layers.Dense(3),
            ]
        )
        if true_fisher:  # with its default, the adaptive KFAC
            net = keras_kfac.TrueFisherModel(net, "categorical")
        net.compile(
            optimizer="kfac",
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        )
        net.fit(
            x,
            y,
            batch_size=16,
            epochs=epochs,
            shuffle=False,
            callbacks=list(callbacks),
            verbose=0,
        )
        return net

    class StopAtEpoch(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            if epoch == 2:
                raise KeyboardInterrupt  # as a kill between epochs

    backup = str(tmp_path / "backup")
    restore = keras.callbacks.BackupAndRestore(backup, double_checkpoint=True)
    with pytest.raises(KeyboardInterrupt):
        fitted(4, [restore, StopAtEpoch()])
    restore = keras.callbacks.BackupAndRestore(backup, double_checkpoint=True)
    resumed = fitted(4, [restore])
    whole = fitted(4)
    for a, b in zip(resumed.get_weights(), whole.get_weights()):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(resumed.optimizer.variables, whole.optimizer.variables):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
