"""Fitting the value function apart from the policy.

The ACKTR paper's continuous-control agents and TRPO train `V` with its
own optimizer after each policy update, as a regression on the update's
batch: `epochs` passes of minibatch steps on `mean_w((R - V(s))²)`,
minibatches reshuffled every pass. With a `keras_kfac.KFAC` value
optimizer each step is a Gauss-Newton step: the backward pass of
`losses.value_gauss_newton_loss` on the minibatch records the factors, so
`F̂` approximates `2 E[∇V ∇Vᵀ]`, the Gauss-Newton matrix of the value loss
(`agents.acktr.kfac_value_optimizer`). The policy's optimizer then trains
only the policy's variables, so the two must not share any
(`split_variables`).
"""

import keras
import tensorflow as tf
from tf_agents.networks import network as network_lib
from tf_agents.trajectories import time_step as ts

import keras_kfac
from agents import losses
from agents.checks import check_keras_optimizer, check_positive_integer
from agents.gradients import apply_gradients, fisher_then_loss_gradients
from agents.minibatches import shuffled_rows
from agents.on_policy_checks import probe_observations


def check_arguments(
    value_optimizer, epochs: int, minibatch_size: int | None
) -> None:
    """Raises `ValueError` unless the arguments describe a value fit."""
    check_keras_optimizer("value_optimizer", value_optimizer)
    check_positive_integer("value_epochs", epochs)
    if minibatch_size is not None:
        check_positive_integer("value_minibatch_size", minibatch_size)


def split_variables(
    network: network_lib.Network,
    time_step_spec: ts.TimeStep,
    agent_name: str,
) -> tuple[list, list]:
    """`(policy, value)`: the network's trainable variables that feed the
    distribution and those that feed the value; raises `ValueError` if a
    variable feeds both."""
    observation = probe_observations(time_step_spec)
    variables = network.trainable_variables
    with tf.GradientTape(persistent=True) as tape:
        (distribution, value), _ = network(observation, training=False)
        actions = tf.stop_gradient(distribution.sample(seed=0))
        policy_output = tf.reduce_sum(
            distribution.log_prob(actions)
        ) + tf.reduce_sum(distribution.entropy())
    policy_gradients = tape.gradient(policy_output, variables)
    value_gradients = tape.gradient(value, variables)
    del tape
    policy, value = [], []
    for variable, p, v in zip(variables, policy_gradients, value_gradients):
        if p is not None and v is not None:
            raise ValueError(
                f"{agent_name} fits the value function separately, so the "
                "network's policy and value must not share parameters "
                "(e.g. ActorCriticNetwork(..., shared_torso=False)). "
                f"Received a network whose {variable.path} feeds both"
            )
        (policy if p is not None else value).append(variable)
    return policy, value


def fit_value(
    network: network_lib.Network,
    optimizer: keras.optimizers.Optimizer,
    variables: list,
    batch,
    epochs: int,
    minibatch_size: int | None,
    seed: int,
    step: tf.Variable,
) -> None:
    """Fits `V` to the batch's returns (see the module docstring).

    Args:
        network: The actor-critic network.
        optimizer: The value optimizer.
        variables: The value function's variables (`split_variables`).
        batch: The update's `agents.on_policy.UpdateBatch`: its
            `observation`, `returns` and `weights` rows.
        epochs: Passes over the batch.
        minibatch_size: Rows per step; `None` takes the whole batch in
            every step.
        seed: The agent's seed.
        step: The agent's update count; with `seed`, it seeds each pass's
            shuffle.
    """
    gauss_newton = isinstance(optimizer, keras_kfac.KFAC)
    rows = tf.shape(batch.returns)[0]
    size = rows if minibatch_size is None else tf.minimum(minibatch_size, rows)
    for epoch in tf.range(epochs):
        order = shuffled_rows(rows, seed, step, epochs, epoch)
        for i in tf.range(rows // size):
            index = order[i * size : (i + 1) * size]
            weights = tf.gather(batch.weights, index)
            with tf.GradientTape(persistent=gauss_newton) as tape:
                (_, values), _ = network(
                    tf.gather(batch.observation, index), training=True
                )
                loss = losses.value_loss(
                    values, tf.gather(batch.returns, index), weights
                )
                gauss_newton_loss = losses.value_gauss_newton_loss(
                    values, weights
                )
            gradients = fisher_then_loss_gradients(
                tape,
                gauss_newton_loss if gauss_newton else None,
                loss,
                variables,
            )
            del tape
            apply_gradients(optimizer, gradients, variables)
