"""ACKTR's trust region in fact: the backtracking guard on the measured KL,
the predicted KL of the step taken, and the line search they share with
TRPO."""

import keras
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_probability as tfp
from tf_agents.environments import tf_py_environment

from agents import AcktrAgent, acktr_optimizer, trust_region
from agents.envs import GymnasiumEnvironment
from agents.networks import ActorCriticNetwork
from agents.rollout import RolloutCollector

# One exact K-FAC step: no momentum, factors of this batch alone, fresh
# eigenbases, no cold step, no gradient clipping.
EXACT = dict(
    momentum=0.0,
    stats_decay=0.0,
    inverse_update_freq=1,
    cold_steps=0,
    max_grad_norm=None,
)


def _acktr(env_id="CartPole-v1", optimizer_kwargs=None, **agent_kwargs):
    """A fresh agent (same initial weights for the same arguments) and one
    batch of experience."""
    keras.utils.set_random_seed(0)
    py_env = GymnasiumEnvironment(env_id, num_envs=4, seed=0)
    env = tf_py_environment.TFPyEnvironment(py_env)
    net = ActorCriticNetwork(
        env.observation_spec(), env.action_spec(), hidden_units=(8,)
    )
    optimizer = acktr_optimizer(**{**EXACT, **(optimizer_kwargs or {})})
    # The joint step, whose KL the guard bounds for actor and critic alike.
    agent = AcktrAgent(
        env.time_step_spec(),
        env.action_spec(),
        net,
        optimizer,
        **{"value_optimizer": None, **agent_kwargs},
    )
    experience = RolloutCollector(env, agent.collect_policy, 16).collect()
    py_env.close()
    return agent, experience


def _weights(agent):
    return [
        v.numpy().astype(np.float64)
        for v in agent.actor_critic_network.trainable_variables
    ]


def _mean_kl(agent, experience, old_distribution):
    """Mean KL(π_old || π) over the batch's rows (CartPole never yields a
    row that trains nothing within 16 steps of a reset)."""
    rows = tf.reshape(experience.observation[:, :-1], (-1, 4))
    (distribution, _), _ = agent.actor_critic_network(rows, training=False)
    return float(
        tf.reduce_mean(
            tfp.distributions.kl_divergence(old_distribution, distribution)
        )
    )


def _old_distribution(agent, experience):
    rows = tf.reshape(experience.observation[:, :-1], (-1, 4))
    (distribution, _), _ = agent.actor_critic_network(rows, training=False)
    return tfp.distributions.Categorical(
        logits=tf.identity(distribution.logits)
    )


def test_a_step_inside_the_bound_is_kept_bit_for_bit():
    unguarded, experience = _acktr(max_kl_ratio=None)
    unguarded_kl = float(unguarded.train(experience).extra.kl)
    guarded, experience = _acktr(max_kl_ratio=1e6)
    info = guarded.train(experience)
    assert float(info.extra.step_fraction) == 1.0
    for a, b in zip(_weights(unguarded), _weights(guarded)):
        np.testing.assert_array_equal(a, b)
    # The guard's own measurement is logged: the KL measured after an
    # unguarded update of the same weights.
    assert float(info.extra.kl) == pytest.approx(unguarded_kl, rel=1e-6)


def test_a_step_outside_the_bound_is_halved_until_the_kl_is_inside():
    kl_clip = 1e-3
    optimizer_kwargs = dict(learning_rate=10.0, kl_clip=kl_clip)
    full, experience = _acktr(
        optimizer_kwargs=optimizer_kwargs, max_kl_ratio=None
    )
    before = _weights(full)
    old = _old_distribution(full, experience)
    full_kl = float(full.train(experience).extra.kl)
    step = [a - b for a, b in zip(_weights(full), before)]
    velocities = [v.numpy() for v in full.optimizer._velocities]
    # A bound at a fifth of the full step's KL: a few halvings must go.
    ratio = full_kl / 5 / kl_clip

    guarded, experience = _acktr(
        optimizer_kwargs=optimizer_kwargs, max_kl_ratio=ratio
    )
    info = guarded.train(experience)
    fraction = float(info.extra.step_fraction)
    bound = ratio * kl_clip
    assert guarded.max_kl == pytest.approx(bound)
    k = -np.log2(fraction)
    assert k >= 1 and k == int(k)
    # The kept step is the fraction of the full one, and so is the momentum.
    for w, b, s in zip(_weights(guarded), before, step):
        np.testing.assert_allclose(w, b + fraction * s, rtol=1e-5, atol=1e-7)
    for v, v_full in zip(guarded.optimizer._velocities, velocities):
        np.testing.assert_allclose(v.numpy(), fraction * v_full, rtol=1e-6)
    # Inside the bound as kept; outside it at twice the kept fraction.
    assert float(info.extra.kl) <= bound
    assert _mean_kl(guarded, experience, old) <= bound
    for variable, b, s in zip(
        guarded.actor_critic_network.trainable_variables, before, step
    ):
        variable.assign(b + 2 * fraction * s)
    assert _mean_kl(guarded, experience, old) > bound


def _dense_quadratic(optimizer, steps_by_index):
    """½ Σ vec(V)ᵀ (A ⊗ G) vec(V) in float64 from the optimizer's factors,
    plus ½ ‖v‖² for variables outside the blocks."""
    total, seen = 0.0, set()
    for block, state in zip(
        optimizer.estimator.blocks, optimizer.estimator.states
    ):
        kernel = steps_by_index[block.kernel_index]
        V = kernel.reshape(-1, block.dim_G)
        seen.add(block.kernel_index)
        if block.bias_index is not None:
            V = np.concatenate([V, steps_by_index[block.bias_index][None]])
            seen.add(block.bias_index)
        A = state.A.numpy().astype(np.float64)
        G = state.G.numpy().astype(np.float64)
        F = np.kron(A, G)  # row-major vec: (A ⊗ G) vec(V) = vec(A V G)
        total += 0.5 * V.ravel() @ F @ V.ravel()
    for i, v in steps_by_index.items():
        if i not in seen:
            total += 0.5 * np.sum(v**2)
    return total


@pytest.mark.parametrize(
    "env_id", ["CartPole-v1", "Pendulum-v1"], ids=["categorical", "gaussian"]
)
def test_predicted_kl_is_the_quadratic_model_of_the_step_taken(env_id):
    # Momentum 0.9: the second step carries the first; the prediction must
    # be of the step actually taken. inverse_update_freq=1 and ε=0 make the
    # eigenbases those of the latest batch's factors.
    agent, experience = _acktr(
        env_id,
        optimizer_kwargs=dict(momentum=0.9, learning_rate=0.1, kl_clip=0.01),
        max_kl_ratio=None,
    )
    optimizer = agent.optimizer
    variables = agent.actor_critic_network.trainable_variables
    index = [optimizer._get_variable_index(v) for v in variables]
    for _ in range(2):
        before = _weights(agent)
        info = agent.train(experience)
        steps = {
            i: (b - a).astype(np.float64)
            for i, a, b in zip(index, _weights(agent), before)
        }
        expected = _dense_quadratic(optimizer, steps)
        # float32 eigendecomposition of factors with entries up to ~1 and
        # float32 steps: the relative error is a few hundred ulps.
        np.testing.assert_allclose(
            float(info.extra.predicted_kl), expected, rtol=1e-4
        )
        assert expected > 0


def test_backtracking_keeps_the_longest_acceptable_step():
    parameter = tf.Variable([4.0, 0.0])
    old, step = [tf.constant([0.0, 0.0])], [tf.constant([4.0, 0.0])]
    tried = []

    def acceptable(fraction):
        tried.append(float(fraction))
        # A stand-in for the KL: the squared distance from the old point.
        kl = tf.reduce_sum(tf.square(parameter))
        return parameter[0] <= 1.0, kl

    fraction, kl = trust_region.backtracking_line_search(
        [parameter], old, step, acceptable, max_tries=10
    )
    assert float(fraction) == 0.25
    assert tried == [1.0, 0.5, 0.25]
    np.testing.assert_array_equal(parameter.numpy(), [1.0, 0.0])
    assert float(kl) == 1.0  # measured at the kept step, 0.25 · 4


def test_backtracking_restores_the_old_parameters_when_nothing_passes():
    parameter = tf.Variable([1.0 + 4.0])
    old = [tf.constant([1.0])]
    fraction, kl = trust_region.backtracking_line_search(
        [parameter],
        old,
        [tf.constant([4.0])],
        lambda f: (tf.constant(False), tf.constant(9.0)),
        max_tries=3,
    )
    assert float(fraction) == 0.0 and float(kl) == 0.0
    np.testing.assert_array_equal(parameter.numpy(), [1.0])


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(max_kl_ratio=0.0), "max_kl_ratio=0.0"),
        (dict(guard_steps=0), "guard_steps"),
    ],
)
def test_bad_guard_arguments_raise_with_what_was_received(kwargs, message):
    with pytest.raises(ValueError, match=message):
        _acktr(**kwargs)


def test_the_guard_needs_a_kl_clip():
    with pytest.raises(ValueError, match="kl_clip=None"):
        _acktr(optimizer_kwargs=dict(kl_clip=None))
