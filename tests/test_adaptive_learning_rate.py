"""The learning rate in `KFAC(adaptive=True)`: below `reference_learning_rate`
the update is that fraction of the quadratic model's, so a schedule or an
assignment (`ReduceLROnPlateau`) shapes the steps."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_kfac
from keras_kfac import layers

EPS = float(np.finfo(np.float32).eps)


def bernoulli_nll(y, logits):
    return tf.reduce_sum(
        tf.nn.sigmoid_cross_entropy_with_logits(labels=y, logits=logits), -1
    )


def batch(seed=0, rows=8):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, 4)).astype("float32")
    y = (rng.uniform(size=(rows, 3)) < 0.5).astype("float32")
    return x, y


def twin(**kwargs):
    """The same network (seed 0) under `KFAC(adaptive=True, **kwargs)`."""
    keras.utils.set_random_seed(0)
    net = keras.Sequential(
        [
            keras.Input((4,)),
            layers.Dense(5, activation="tanh"),
            layers.Dense(3),
        ]
    )
    model = keras_kfac.TrueFisherModel(net, "bernoulli")
    optimizer = keras_kfac.KFAC(adaptive=True, **kwargs)
    model.compile(optimizer=optimizer, loss=bernoulli_nll)
    return model, optimizer


def weights(model):
    return np.concatenate([v.numpy().ravel() for v in model.trainable_weights])


def one_step(model, x, y) -> np.ndarray:
    """The change of the weights one full-batch step makes, and the
    weights before it."""
    before = weights(model)
    model.fit(x, y, batch_size=len(x), epochs=1, verbose=0, shuffle=False)
    return weights(model) - before, before


def assert_scaled(step, full, fraction, before, previous=0.0):
    """`step = fraction · full`, to float32 rounding: of `θ - v` (the
    weights), of `v = μ v_prev + α Δ` (its two terms, which may cancel:
    `|v_prev|` bounds the first, `|v| + |v_prev|` the second) and of the
    fraction itself, a few ulps of each."""
    bound = 4 * EPS * (np.abs(before) + np.abs(full) + np.abs(previous))
    np.testing.assert_array_less(np.abs(step - fraction * full), bound + 1e-30)


def test_a_lower_learning_rate_takes_that_fraction_of_the_update():
    """Same state, same batch: the update at `η = 0.1` with `η_ref = 0.25`
    is 0.4 of the update at 0.25, and the predicted change is the model's
    at that fraction, `M₀(f w) = f² Q - f L` (`Q = ½ wᵀ C w`, `L = wᵀ b`):
    `Q` and `L` solved from `f = 1` and `f = 0.4` predict `f = 0.2`."""
    x, y = batch()
    steps, changes = {}, {}
    for fraction in (1.0, 0.4, 0.2):
        model, optimizer = twin(
            learning_rate=0.25 * fraction, reference_learning_rate=0.25
        )
        steps[fraction], before = one_step(model, x, y)
        changes[fraction] = float(optimizer.predicted_change)
    assert np.abs(steps[1.0]).max() > 1e-3
    for fraction in (0.4, 0.2):
        assert_scaled(steps[fraction], steps[1.0], fraction, before)
    Q, L = np.linalg.solve(
        [[1.0, -1.0], [0.16, -0.4]], [changes[1.0], changes[0.4]]
    )
    assert changes[1.0] < 0.0
    assert changes[0.2] == pytest.approx(0.04 * Q - 0.2 * L, rel=1e-4)


def test_an_assigned_learning_rate_scales_the_next_update():
    """What `ReduceLROnPlateau` does: a new value assigned to the learning
    rate between steps scales the next update by its ratio to the
    reference, which stays the value the optimizer was built with (and
    survives `get_config`)."""
    x, y = batch()
    reference, _ = twin()
    reduced, optimizer = twin()
    assert optimizer.reference_learning_rate == 0.25
    previous, _ = one_step(reference, x, y)
    one_step(reduced, x, y)
    optimizer.learning_rate = 0.05
    full, before = one_step(reference, x, y)
    step, _ = one_step(reduced, x, y)
    assert np.abs(full).max() > 1e-3
    assert_scaled(step, full, 0.2, before, previous)
    clone = keras_kfac.KFAC.from_config(optimizer.get_config())
    assert clone.reference_learning_rate == 0.25
    assert float(clone.learning_rate) == pytest.approx(0.05)


def test_a_schedule_that_falls_to_zero_stops_the_updates():
    """`η` is the schedule's value at the step: 1 (the reference, its value
    at step 0) on the first, then 0, which leaves the weights exactly where
    the first step put them, momentum included."""
    schedule = keras.optimizers.schedules.PiecewiseConstantDecay(
        [0], [1.0, 0.0]
    )
    model, optimizer = twin(learning_rate=schedule)
    assert optimizer.reference_learning_rate == 1.0
    x, y = batch(rows=24)
    first, _ = one_step(model, x[:8], y[:8])
    after_first = weights(model)
    model.fit(x[8:], y[8:], batch_size=8, epochs=1, verbose=0, shuffle=False)
    assert np.abs(first).max() > 1e-3
    np.testing.assert_array_equal(weights(model), after_first)
    assert int(optimizer.iterations) == 3


def test_the_default_learning_rate_is_the_reference():
    assert keras_kfac.KFAC(adaptive=True).reference_learning_rate == 0.25
    assert keras_kfac.KFAC().reference_learning_rate is None


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (
            dict(
                adaptive=True,
                learning_rate=keras.optimizers.schedules.CosineDecay(
                    0.0, 100, warmup_target=1.0, warmup_steps=10
                ),
            ),
            r"reference_learning_rate.*starts at 0.*Received: "
            r"reference_learning_rate=0.0",
        ),
        (
            dict(adaptive=True, reference_learning_rate=-1.0),
            "Received: reference_learning_rate=-1.0",
        ),
        (
            dict(reference_learning_rate=0.1),
            "only with adaptive=True",
        ),
        (
            dict(adaptive=True, learning_rate="fast"),
            "learning_rate=fast",
        ),
    ],
)
def test_bad_learning_rate_arguments_are_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        keras_kfac.KFAC(**kwargs)
