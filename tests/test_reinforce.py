"""REINFORCE: the reward-to-go and the episodes a batch cuts off against
hand computations, and its step against a policy gradient assembled
from them."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from tf_agents.environments import tf_py_environment

from agents import ReinforceAgent, advantages, train
from agents.envs import GymnasiumEnvironment
from agents.networks import ActorCriticNetwork
from agents.rollout import RolloutCollector


def test_reward_to_go_and_the_episodes_that_end_by_hand():
    # γ = 0.5. Row 0: an episode ends at t = 1, t = 2 is the reset, the
    # next episode runs past the batch. Row 1: no end in the batch.
    rewards = np.array([[1.0, 2.0, 0.0, 4.0], [1.0, 1.0, 1.0, 1.0]])
    valid = np.array([[1.0, 1.0, 0.0, 1.0], [1.0, 1.0, 1.0, 1.0]])
    continues = np.array([[1.0, 0.0, 1.0, 1.0], [1.0, 1.0, 1.0, 1.0]])
    returns = advantages.reward_to_go(rewards, valid, continues, 0.5)
    np.testing.assert_allclose(
        returns.numpy(),
        [[1 + 0.5 * 2, 2, 0, 4], [1.875, 1.75, 1.5, 1]],
    )
    np.testing.assert_array_equal(
        advantages.ends_in_batch(continues).numpy(),
        [[1, 1, 0, 0], [0, 0, 0, 0]],
    )


def _setup(baseline: bool):
    py_env = GymnasiumEnvironment("CartPole-v1", num_envs=3, seed=0)
    env = tf_py_environment.TFPyEnvironment(py_env)
    network = ActorCriticNetwork(
        env.observation_spec(), env.action_spec(), hidden_units=(8,)
    )
    agent = ReinforceAgent(
        env.time_step_spec(),
        env.action_spec(),
        network,
        keras.optimizers.SGD(0.1),
        baseline=baseline,
        normalize_advantages=False,
        gamma=0.9,
        ent_coef=0.0,
    )
    return env, network, agent


def _hand_returns(experience, gamma):
    """The reward-to-go of every transition of an episode that ends in
    the batch, and which transitions those are, by a plain loop."""
    step_type = experience.step_type.numpy()[:, :-1]
    next_type = experience.next_step_type.numpy()[:, :-1]
    rewards = experience.reward.numpy()[:, :-1]
    returns = np.zeros_like(rewards)
    trained = np.zeros_like(rewards)
    for b in range(rewards.shape[0]):
        R, ended = 0.0, False
        for t in reversed(range(rewards.shape[1])):
            if next_type[b, t] == 2:  # into LAST: the episode ends here
                R, ended = 0.0, True
            if step_type[b, t] == 2:  # the reset between episodes
                R = 0.0
                continue
            R = rewards[b, t] + gamma * R
            returns[b, t], trained[b, t] = R, float(ended)
    return returns, trained


@pytest.mark.parametrize("baseline", [False, True])
def test_the_step_is_the_policy_gradient_of_the_finished_episodes(baseline):
    env, network, agent = _setup(baseline)
    experience = RolloutCollector(env, agent.collect_policy, 60).collect()
    returns, trained = _hand_returns(experience, 0.9)
    assert 0 < trained.sum() < trained.size  # some cut off, some not
    observations = experience.observation[:, :-1]
    rows = observations.shape[0] * observations.shape[1]
    flat = tf.reshape(observations, (rows, -1))
    actions = tf.reshape(experience.action[:, :-1], (rows,))
    policy = agent._policy_variables
    with tf.GradientTape() as tape:
        (distribution, values), _ = network(flat, training=True)
        advantage = returns.reshape(rows)
        if baseline:
            advantage = advantage - tf.stop_gradient(values).numpy()
        weights = trained.reshape(rows)
        loss = -np.float32(1 / weights.sum()) * tf.reduce_sum(
            weights * advantage * distribution.log_prob(actions)
        )
    # Without a baseline every variable is the policy's; the value head's
    # gradient is zero.
    expected = [
        -0.1 * (tf.zeros_like(v) if g is None else g)
        for v, g in zip(policy, tape.gradient(loss, policy))
    ]
    before = [v.numpy().copy() for v in policy]
    agent.train(experience)
    for start, variable, step in zip(before, policy, expected):
        # The step is read back as (θ + Δ) - θ in float32: good to about
        # one rounding of θ.
        np.testing.assert_allclose(
            variable.numpy() - start,
            step.numpy(),
            rtol=1e-4,
            atol=2 * np.finfo(np.float32).eps * np.abs(start).max(),
        )


@pytest.mark.parametrize(
    "arguments, message",
    [
        (dict(gae_lambda=0.95), "it takes no gae_lambda"),
        (dict(vf_coef=0.5), "it takes no vf_coef"),
        (
            dict(baseline=False, value_optimizer=keras.optimizers.Adam()),
            "baseline=False has none",
        ),
        (dict(optimizer="adam"), "optimizer must be a keras.optimizers"),
    ],
)
def test_bad_arguments_name_what_was_received(arguments, message):
    py_env = GymnasiumEnvironment("CartPole-v1", num_envs=1)
    env = tf_py_environment.TFPyEnvironment(py_env)
    network = ActorCriticNetwork(env.observation_spec(), env.action_spec())
    with pytest.raises(ValueError, match=message) as error:
        ReinforceAgent(
            env.time_step_spec(), env.action_spec(), network, **arguments
        )
    assert "Received" in str(error.value)


def test_the_command_line_refuses_gae_lambda(capsys):
    argv = ["--algo", "reinforce", "--gae-lambda", "0.9"]
    assert train.main(argv) == 2
    assert (
        "--gae-lambda is not a setting of reinforce" in capsys.readouterr().err
    )
