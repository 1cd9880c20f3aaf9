"""Reward scaling: the running return and its moments against a hand
computation, their carry-over between batches and through a checkpoint,
and the invariance it buys: an update does not see the rewards' units."""

import keras
import numpy as np
import tensorflow as tf
from tf_agents.environments import tf_py_environment

from agents import A2CAgent
from agents.envs import GymnasiumEnvironment
from agents.networks import ActorCriticNetwork
from agents.reward_scaling import RewardScaler
from agents.rollout import RolloutCollector


def _running_returns(rewards, valid, continues, gamma, start):
    """`R` of every valid transition, row by row, and the carried `R`."""
    returns, carried = [], []
    for row, (r, v, c) in enumerate(zip(rewards, valid, continues)):
        R = start[row]
        for t in range(len(r)):
            R = v[t] * (gamma * R + r[t])
            if v[t]:
                returns.append(R)
            R *= c[t]
        carried.append(R)
    return np.array(returns), np.array(carried)


def test_scaled_rewards_by_hand():
    # Row 0: an episode ends at t = 1 (continues 0), the reset transition
    # t = 2 is not valid; row 1 runs on. γ = 0.5:
    # row 0: R = 1, 0.5 + 2 = 2.5, (reset, invalid); row 1: 4, 2, 1 + 2 = 3.
    rewards = np.array([[1.0, 2.0, 0.0], [4.0, 0.0, 2.0]], np.float32)
    valid = np.array([[1, 1, 0], [1, 1, 1]], np.float32)
    continues = np.array([[1, 0, 1], [1, 1, 1]], np.float32)
    scaler = RewardScaler(gamma=0.5)
    scaled = scaler.scale(rewards, valid, continues).numpy()
    returns = np.array([1.0, 2.5, 4.0, 2.0, 3.0])
    np.testing.assert_allclose(scaler.variance.numpy(), returns.var(), 1e-6)
    np.testing.assert_allclose(scaler.mean.numpy(), returns.mean(), 1e-6)
    np.testing.assert_allclose(
        scaled, rewards / np.sqrt(returns.var() + 1e-8), rtol=1e-6
    )
    # Row 0 starts its next episode at 0; row 1 carries its return, 3.
    np.testing.assert_allclose(scaler.returns.numpy(), [0.0, 3.0])


def test_batches_carry_the_return_and_merge_the_moments():
    rng = np.random.default_rng(0)
    batches = []
    for _ in range(3):
        rewards = rng.normal(size=(4, 6)).astype(np.float32) * 5
        continues = (rng.uniform(size=(4, 6)) > 0.2).astype(np.float32)
        # A transition after an episode's end is the (invalid) reset.
        valid = np.ones_like(continues)
        valid[:, 1:] = continues[:, :-1]
        batches.append((rewards, valid, continues))
    scaler = RewardScaler(gamma=0.9)
    scale = tf.function(scaler.scale)  # as an agent's traced update runs it
    seen, start = [], np.zeros(4)
    for rewards, valid, continues in batches:
        scaled = scale(rewards, valid, continues).numpy()
        returns, start = _running_returns(rewards, valid, continues, 0.9, start)
        seen.extend(returns)
        expected = np.clip(rewards / np.sqrt(np.var(seen) + 1e-8), -10, 10)
        np.testing.assert_allclose(scaled, expected, rtol=1e-5)
        np.testing.assert_allclose(scaler.returns.numpy(), start, rtol=1e-5)
    assert scaler.count.numpy() == len(seen)


def test_the_scaler_resumes_from_a_checkpoint(tmp_path):
    rewards = np.arange(12, dtype=np.float32).reshape(3, 4)
    ones = np.ones_like(rewards)
    scaler = RewardScaler(gamma=0.99)
    scaler.scale(rewards, ones, ones)
    path = tf.train.Checkpoint(scaler=scaler).save(str(tmp_path / "ckpt"))
    restored = RewardScaler(gamma=0.99)
    tf.train.Checkpoint(scaler=restored).restore(path).assert_consumed()
    np.testing.assert_array_equal(
        restored.scale(rewards, ones, ones).numpy(),
        scaler.scale(rewards, ones, ones).numpy(),
    )


def _a2c_steps(scale_rewards: bool) -> list:
    """The steps of one A2C update (plain SGD) on the same batch with its
    rewards as they are and times 100, from the same weights."""
    py_env = GymnasiumEnvironment("CartPole-v1", num_envs=4, seed=0)
    env = tf_py_environment.TFPyEnvironment(py_env)
    first = ActorCriticNetwork(
        env.observation_spec(), env.action_spec(), hidden_units=(8,)
    )
    steps, experience = [], None
    for factor in (1.0, 100.0):
        network = first if experience is None else first.copy(name="twin")
        agent = A2CAgent(
            env.time_step_spec(),
            env.action_spec(),
            network,
            keras.optimizers.SGD(0.01),
            scale_rewards=scale_rewards,
            gae_lambda=0.95,
        )
        if experience is None:
            experience = RolloutCollector(
                env, agent.collect_policy, 16
            ).collect()
            start = [v.numpy().copy() for v in first.variables]
        for variable, value in zip(network.variables, start):
            variable.assign(value)
        agent.train(experience._replace(reward=experience.reward * factor))
        steps.append([v.numpy() - s for v, s in zip(network.variables, start)])
    py_env.close()
    return steps


def test_an_update_does_not_see_the_rewards_units():
    # Rewards x 100 make every R x 100 and σ_R x 100: the scaled rewards,
    # and so the update, are the same (float32: the two divisions round
    # differently in the last bit).
    plain, scaled = _a2c_steps(scale_rewards=True)
    for a, b in zip(plain, scaled):
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-6 * np.abs(a).max())
    # Without the scaling the second update is another one.
    plain, scaled = _a2c_steps(scale_rewards=False)
    assert max(np.abs(b - a).max() for a, b in zip(plain, scaled)) > 1e-3
