"""The critic fitted apart by K-FAC: Gauss-Newton factors, and one step
against a dense damped Gauss-Newton solve."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from tf_agents.environments import tf_py_environment

import keras_kfac
from agents import A2CAgent, AcktrAgent, kfac_value_optimizer, losses
from agents.envs import GymnasiumEnvironment
from agents.networks import ActorCriticNetwork
from agents.rollout import RolloutCollector


def test_the_gauss_newton_loss_gives_every_row_root_2_grad_v():
    values = tf.constant([0.3, -1.2, 2.0])
    weights = tf.constant([1.0, 1.0, 0.0])
    with tf.GradientTape() as tape:
        tape.watch(values)
        loss = losses.value_gauss_newton_loss(values, weights)
    # n · ∂loss/∂V_i = n · √2 · w_i / Σw: √2 on rows of weight 1 when n = Σw.
    gradient = tape.gradient(loss, values).numpy()
    np.testing.assert_allclose(gradient, np.sqrt(2) * np.array([0.5, 0.5, 0]))
    np.testing.assert_allclose(
        float(loss), np.sqrt(2) * (0.3 - 1.2) / 2, rtol=1e-6
    )


@pytest.mark.parametrize("damping", [1e-3, 0.1])
def test_one_kfac_critic_step_is_the_damped_gauss_newton_solve(damping):
    # A linear critic V(s) = sᵀw + b (no hidden layer): its Jacobian is the
    # layer input a = [s; 1], so K-FAC's A ⊗ G with G = 2 is the exact
    # Gauss-Newton matrix 2 E[a aᵀ] of mean((R - V)²), and one step of rate
    # 1 is (2 E[a aᵀ] + λ I)⁻¹ ∇. Pendulum never ends an episode within the
    # batch, so every row trains.
    gamma, steps = 0.9, 6
    py_env = GymnasiumEnvironment("Pendulum-v1", num_envs=3, seed=0)
    env = tf_py_environment.TFPyEnvironment(py_env)
    net = ActorCriticNetwork(
        env.observation_spec(), env.action_spec(), hidden_units=()
    )
    value_optimizer = kfac_value_optimizer(
        learning_rate=1.0, damping=damping, stats_decay=0.0, cold_steps=0
    )
    agent = A2CAgent(
        env.time_step_spec(),
        env.action_spec(),
        net,
        gamma=gamma,
        value_optimizer=value_optimizer,
        value_epochs=1,
        value_minibatch_size=None,
    )
    experience = RolloutCollector(env, agent.collect_policy, steps).collect()
    py_env.close()
    head = net._value_head
    w, b = head.kernel.numpy().astype(np.float64), float(head.bias.numpy()[0])

    s = experience.observation.numpy().astype(np.float64)  # [B, T + 1, 3]
    r = experience.reward.numpy()[:, :-1].astype(np.float64)
    v = s @ w[:, 0] + b
    returns = np.zeros_like(r)
    running = v[:, -1]
    for t in reversed(range(steps)):
        running = r[:, t] + gamma * running
        returns[:, t] = running
    a = np.concatenate([s[:, :-1].reshape(-1, 3), np.ones((r.size, 1))], axis=1)
    residual = returns.ravel() - v[:, :-1].ravel()
    n = len(a)
    gradient = -2.0 * a.T @ residual / n
    F = 2.0 * a.T @ a / n
    expected = -np.linalg.solve(F + damping * np.eye(4), gradient)

    agent.train(experience)
    step = np.concatenate(
        [head.kernel.numpy()[:, 0], head.bias.numpy()]
    ).astype(np.float64) - np.append(w[:, 0], b)
    # float32 factors, eigendecomposition and rotations: the error of the
    # solve is about eps · cond(F + λI) relative to the step.
    eps = np.finfo(np.float32).eps
    tolerance = 64 * eps * np.linalg.cond(F + damping * np.eye(4))
    np.testing.assert_allclose(
        step, expected, atol=tolerance * np.abs(expected).max()
    )


def test_the_kfac_critic_factors_come_from_its_gauss_newton_pass():
    # ACKTR with the K-FAC critic: the policy's factors come from pg_fisher,
    # the critic's from √2·mean V; the value head's G is then exactly 2.
    keras.utils.set_random_seed(0)
    py_env = GymnasiumEnvironment("CartPole-v1", num_envs=4, seed=0)
    env = tf_py_environment.TFPyEnvironment(py_env)
    net = ActorCriticNetwork(
        env.observation_spec(), env.action_spec(), hidden_units=(8,)
    )
    value_optimizer = kfac_value_optimizer(stats_decay=0.0, cold_steps=0)
    agent = AcktrAgent(
        env.time_step_spec(),
        env.action_spec(),
        net,
        value_optimizer=value_optimizer,
        value_epochs=1,
        value_minibatch_size=None,
    )
    # 6 steps from a reset: no CartPole episode ends, every row trains.
    experience = RolloutCollector(env, agent.collect_policy, 6).collect()
    py_env.close()
    agent.train(experience)
    policy_layers = {id(b.layer) for b in agent.optimizer.estimator.blocks}
    value_layers = {id(b.layer) for b in value_optimizer.estimator.blocks}
    assert id(net._policy_head) in policy_layers
    assert id(net._value_head) in value_layers
    assert not policy_layers & value_layers
    G_value = {
        id(b.layer): f.G
        for b, f in zip(
            value_optimizer.estimator.blocks, value_optimizer.estimator.states
        )
    }[id(net._value_head)]
    np.testing.assert_allclose(G_value.numpy(), [[2.0]], rtol=1e-6)
    assert isinstance(agent.value_optimizer, keras_kfac.KFAC)
