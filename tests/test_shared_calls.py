"""A layer called several times in one forward pass (shared weights: a
siamese pair, `keras.layers.TimeDistributed`) records every call: the
calls' positions are more positions of the same examples (K-FAC-expand),
so the factors equal those of one call over the calls stacked as
positions, and `‖∇W‖²` is that of the summed kernel gradient."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_kfac import layers

pytestmark = pytest.mark.usefixtures("recording_statistics")

# The factors are means and sums of a few dozen float32 products of O(1)
# values, summed in another order by the two computations compared.
RTOL, ATOL = 1e-5, 1e-6


def twin_dense(rng, units=3, features=4):
    """Two `keras_kfac` Dense layers with the same weights: one to call per
    input, one to call on the inputs stacked as positions."""
    shared = layers.Dense(units)
    shared.build((None, features))
    stacked = layers.Dense(units)
    stacked.build((None, features))
    stacked.set_weights(shared.get_weights())
    return shared, stacked


def two_inputs(rng, n=5, features=4):
    return [
        tf.constant(rng.normal(size=(n, features)), tf.float32)
        for _ in range(2)
    ]


def squared_error(outputs, targets):
    return tf.reduce_mean(
        tf.reduce_sum(tf.square(outputs - targets), axis=[1, 2])
    )


def backward(layer, forward, loss_of):
    with tf.GradientTape() as tape:
        loss = loss_of(forward(layer))
    return tape.gradient(loss, layer.kernel)


def assert_same_factors(a, b):
    for name in ("A", "G"):
        np.testing.assert_allclose(
            getattr(a.statistics, name).numpy(),
            getattr(b.statistics, name).numpy(),
            rtol=RTOL,
            atol=ATOL,
        )


@pytest.mark.parametrize("traced", [False, True])
def test_two_calls_record_the_factors_of_their_stacked_positions(rng, traced):
    shared, stacked = twin_dense(rng)
    x1, x2 = two_inputs(rng)
    targets = tf.constant(rng.normal(size=(5, 2, 3)), tf.float32)

    def per_call(layer):
        return tf.stack([layer(x1, training=True), layer(x2, training=True)], 1)

    def as_positions(layer):
        return layer(tf.stack([x1, x2], 1), training=True)

    def step(layer, forward):
        return backward(layer, forward, lambda y: squared_error(y, targets))

    if traced:
        step = tf.function(step)
    kernel_grad = step(shared, per_call)
    stacked_grad = step(stacked, as_positions)
    np.testing.assert_allclose(kernel_grad, stacked_grad, rtol=RTOL, atol=ATOL)
    assert_same_factors(shared, stacked)
    # ‖∇W‖² of the summed gradient, not of one call's share.
    np.testing.assert_allclose(
        shared.statistics.kernel_grad_sq.numpy(),
        np.sum(np.square(kernel_grad.numpy())),
        rtol=RTOL,
    )


def test_time_distributed_records_every_step(rng):
    """`TimeDistributed` calls its layer once per time step; the factors
    are those of the layer applied to the sequence at once."""
    shared, stacked = twin_dense(rng)
    wrapped = keras.layers.TimeDistributed(shared)
    x = tf.constant(rng.normal(size=(3, 6, 4)), tf.float32)
    targets = tf.constant(rng.normal(size=(3, 6, 3)), tf.float32)
    for layer, call in ((wrapped, wrapped), (stacked, stacked)):
        with tf.GradientTape() as tape:
            loss = squared_error(call(x, training=True), targets)
        tape.gradient(loss, layer.trainable_variables)
    assert_same_factors(shared, stacked)


def test_a_new_backward_pass_or_step_replaces_the_factors(rng):
    """Calls add up within one backward pass only: a second pass over the
    same forward pass (the loss pass after the Fisher pass), or the next
    step, records its own factors."""
    shared, reference = twin_dense(rng)
    x1, x2 = two_inputs(rng)
    first = tf.constant(rng.normal(size=(5, 2, 3)), tf.float32)
    second = tf.constant(rng.normal(size=(5, 2, 3)), tf.float32)

    def per_call(layer):
        return tf.stack([layer(x1, training=True), layer(x2, training=True)], 1)

    with tf.GradientTape(persistent=True) as tape:
        outputs = per_call(shared)
        losses = [squared_error(outputs, t) for t in (first, second)]
    for loss in losses:
        tape.gradient(loss, shared.kernel)
    del tape
    backward(reference, per_call, lambda y: squared_error(y, second))
    assert_same_factors(shared, reference)
    # The next step, a new forward pass: its factors alone.
    backward(shared, per_call, lambda y: squared_error(y, first))
    backward(reference, per_call, lambda y: squared_error(y, first))
    assert_same_factors(shared, reference)
