"""The separate value fit: SGD steps against a plain numpy regression on a
linear critic, and the split of the network's variables."""

import collections

import keras
import numpy as np
import pytest
import tensorflow as tf
from tf_agents.specs import tensor_spec
from tf_agents.trajectories import time_step as ts

from agents import value_fit
from agents.networks import ActorCriticNetwork

OBSERVATION = 3
ACTION_SPEC = tensor_spec.BoundedTensorSpec((), tf.int32, 0, 1)
TIME_STEP_SPEC = ts.time_step_spec(tf.TensorSpec((OBSERVATION,), tf.float32))
Batch = collections.namedtuple("Batch", ("observation", "returns", "weights"))


def _linear_critic():
    """`V(s) = sᵀw + b`: no hidden layer, the value head on the observation."""
    net = ActorCriticNetwork(
        TIME_STEP_SPEC.observation, ACTION_SPEC, hidden_units=()
    )
    net.create_variables()
    _, value = value_fit.split_variables(net, TIME_STEP_SPEC, "Agent")
    return net, value


def _batch(rng, rows):
    return Batch(
        observation=tf.constant(
            rng.normal(size=(rows, OBSERVATION)), tf.float32
        ),
        returns=tf.constant(rng.normal(size=rows), tf.float32),
        weights=tf.constant(rng.integers(0, 2, rows), tf.float32),
    )


def _sgd_step(w, b, batch, index, rate):
    """One SGD step on `mean_w((R - sᵀw - b)²)` over the rows `index`."""
    s = batch.observation.numpy()[index].astype(np.float64)
    r = batch.returns.numpy()[index].astype(np.float64)
    weights = batch.weights.numpy()[index].astype(np.float64)
    residual = r - s @ w - b
    # ∂/∂w mean_w(residual²) = -2 Σ wᵢ residualᵢ sᵢ / Σ wᵢ.
    total = weights.sum()
    grad_w = -2.0 * (weights * residual) @ s / total
    grad_b = -2.0 * (weights * residual).sum() / total
    return w - rate * grad_w, b - rate * grad_b


def _head(net):
    """`[w; b]` of the value head."""
    head = net._value_head
    return np.append(head.kernel.numpy()[:, 0], head.bias.numpy())


def _split(parameters):
    return parameters[:-1].astype(np.float64), float(parameters[-1])


def test_one_full_batch_epoch_is_one_sgd_step_on_the_weighted_loss(rng):
    net, variables = _linear_critic()
    batch = _batch(rng, 8)
    w, b = _split(_head(net))
    expected = np.append(*_sgd_step(w, b, batch, np.arange(8), 0.1))
    value_fit.fit_value(
        net,
        keras.optimizers.SGD(0.1),
        variables,
        batch,
        epochs=1,
        minibatch_size=None,
        seed=0,
        step=tf.Variable(0, dtype=tf.int64),
    )
    np.testing.assert_allclose(_head(net), expected, rtol=1e-5, atol=1e-6)


def test_minibatches_follow_the_seeded_shuffle_of_each_epoch(rng):
    # 7 rows in minibatches of 3: 2 steps per epoch, one row left out of
    # each; epoch e of update k is shuffled with the seed (seed, k·E + e).
    seed, update, epochs, rows, size = 5, 3, 2, 7, 3
    net, variables = _linear_critic()
    batch = _batch(rng, rows)
    batch = batch._replace(weights=tf.ones(rows))
    w, b = _split(_head(net))
    for epoch in range(epochs):
        order = tf.random.experimental.stateless_shuffle(
            tf.range(rows),
            tf.constant([seed, update * epochs + epoch], tf.int64),
        ).numpy()
        for i in range(rows // size):
            w, b = _sgd_step(w, b, batch, order[i * size : (i + 1) * size], 0.1)
    optimizer = keras.optimizers.SGD(0.1)
    value_fit.fit_value(
        net,
        optimizer,
        variables,
        batch,
        epochs=epochs,
        minibatch_size=size,
        seed=seed,
        step=tf.Variable(update, dtype=tf.int64),
    )
    assert int(optimizer.iterations) == epochs * (rows // size)
    np.testing.assert_allclose(
        _head(net), np.append(w, b), rtol=1e-5, atol=1e-6
    )


def test_the_split_gives_each_head_its_own_torso():
    net = ActorCriticNetwork(
        TIME_STEP_SPEC.observation, ACTION_SPEC, hidden_units=(4,)
    )
    net.create_variables()
    policy, value = value_fit.split_variables(net, TIME_STEP_SPEC, "Agent")
    assert len(policy) + len(value) == len(net.trainable_variables)
    layers = [v.path.split("/")[-2] for v in policy]
    assert layers == ["policy_dense_0"] * 2 + ["policy_head"] * 2
    layers = [v.path.split("/")[-2] for v in value]
    assert layers == ["value_dense_0"] * 2 + ["value_head"] * 2


def test_a_shared_torso_cannot_be_split():
    net = ActorCriticNetwork(
        TIME_STEP_SPEC.observation,
        ACTION_SPEC,
        hidden_units=(4,),
        shared_torso=True,
    )
    net.create_variables()
    with pytest.raises(
        ValueError, match="TrpoAgent fits .*policy_dense_0/kernel feeds both"
    ):
        value_fit.split_variables(net, TIME_STEP_SPEC, "TrpoAgent")


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(value_optimizer="adam"), "Received: 'adam'"),
        (dict(epochs=0), "value_epochs=0"),
        (dict(minibatch_size=2.5), "value_minibatch_size=2.5"),
    ],
)
def test_bad_value_fit_arguments_raise_with_what_was_received(kwargs, message):
    arguments = dict(
        value_optimizer=keras.optimizers.SGD(0.1), epochs=1, minibatch_size=None
    )
    with pytest.raises(ValueError, match=message):
        value_fit.check_arguments(**{**arguments, **kwargs})
