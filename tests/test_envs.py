"""The Gymnasium adapter: specs, episode ends, faults, subprocesses."""

import numpy as np
import pytest
from tf_agents.trajectories import time_step as ts

from agents.env_factory import make_env
from agents.envs import EnvironmentStepError, GymnasiumEnvironment, check_env_id

F, M, L = ts.StepType.FIRST, ts.StepType.MID, ts.StepType.LAST


def _run(env, steps, action=0):
    time_steps = [env.reset()]
    for _ in range(steps):
        time_steps.append(env.step(np.full(env.batch_size, action)))
    return time_steps


def test_specs_of_classic_control():
    env = GymnasiumEnvironment("CartPole-v1", num_envs=2)
    assert env.batched and env.batch_size == 2
    assert env.observation_spec().shape == (4,)
    assert env.observation_spec().dtype == np.float32
    action = env.action_spec()
    assert (action.shape, action.dtype, action.minimum, action.maximum) == (
        (),
        np.int64,
        0,
        1,
    )
    env.close()
    env = GymnasiumEnvironment("Pendulum-v1")
    assert env.action_spec().shape == (1,)
    np.testing.assert_array_equal(env.action_spec().maximum, [2.0])
    env.close()


@pytest.mark.parametrize(
    "env_id, observation, action, bounds",
    [
        ("LunarLander-v3", (8,), (), (0, 3)),
        ("InvertedPendulum-v5", (4,), (1,), (-3.0, 3.0)),
        ("HalfCheetah-v5", (17,), (6,), (-1.0, 1.0)),
    ],
)
def test_box2d_and_mujoco_environments(env_id, observation, action, bounds):
    env = GymnasiumEnvironment(env_id, num_envs=2, seed=0)
    assert env.observation_spec().shape == observation
    spec = env.action_spec()
    assert spec.shape == action
    np.testing.assert_array_equal(spec.minimum, bounds[0])
    np.testing.assert_array_equal(spec.maximum, bounds[1])
    first = env.reset()
    assert first.observation.shape == (2, *observation)
    assert np.all(first.step_type == F)
    step = env.step(np.zeros((2, *action), spec.dtype))
    assert np.all(step.step_type == M) and np.all(np.isfinite(step.reward))
    env.close()


def test_discrete_observations_are_one_hot():
    env = GymnasiumEnvironment("FrozenLake-v1", seed=0)
    first = env.reset()
    assert first.observation.shape == (1, 16)
    np.testing.assert_array_equal(first.observation[0], np.eye(16)[0])
    env.close()


def test_termination_is_terminal_and_truncation_bootstraps():
    # Countdown terminates after 3 steps; a time limit of 2 truncates it.
    for limit, discount in ((None, 0.0), (2, 1.0)):
        env = GymnasiumEnvironment(
            "toy_envs:Countdown-v0", env_kwargs={"max_episode_steps": limit}
        )
        length = 3 if limit is None else limit
        time_steps = _run(env, length + 2)
        step_types = [int(t.step_type[0]) for t in time_steps]
        assert step_types == [F] + [M] * (length - 1) + [L, F, M]
        last = time_steps[length]
        assert last.discount[0] == discount
        # The LAST time step carries the final observation, to bootstrap from.
        assert last.observation[0, 0] == 3 - length
        # The reset step ignores the action, has reward 0, starts afresh.
        assert time_steps[length + 1].reward[0] == 0.0
        assert time_steps[length + 1].observation[0, 0] == 3
        assert env.pop_completed_episodes() == [
            (sum(range(1, length + 1)), length)
        ]
        assert env.pop_completed_episodes() == []
        env.close()


def test_box_actions_are_clipped_for_the_environment():
    env = GymnasiumEnvironment("toy_envs:Slider-v0")
    env.reset()
    assert env.step(np.array([[5.0]], np.float32)).reward[0] == 1.0
    assert env.step(np.array([[-0.25]], np.float32)).reward[0] == -0.25
    env.close()


def test_bad_ids_and_spaces_raise_with_what_was_received():
    with pytest.raises(ValueError, match="'CartPole-v7'"):
        GymnasiumEnvironment("CartPole-v7")
    with pytest.raises(ValueError, match="Did you mean 'CartPole-v1'"):
        check_env_id("cartpole-v1")
    with pytest.raises(ValueError, match="MultiDiscrete"):
        GymnasiumEnvironment("toy_envs:TwoKnobs-v0")
    with pytest.raises(ValueError, match="num_envs=0"):
        GymnasiumEnvironment("CartPole-v1", num_envs=0)


@pytest.mark.parametrize("processes", [False, True])
def test_a_raising_environment_names_itself_and_the_step(processes):
    env = GymnasiumEnvironment(
        "toy_envs:Faulty-v0", num_envs=2, processes=processes
    )
    with pytest.raises(
        EnvironmentStepError, match=r"Faulty-v0.*after 5 steps.*blew up"
    ):
        _run(env, 10)
    env.close()


def test_subprocesses_match_in_process():
    runs = []
    for processes in (False, True):
        env = GymnasiumEnvironment(
            "CartPole-v1", num_envs=2, seed=3, processes=processes
        )
        rng = np.random.default_rng(0)
        time_steps = [env.reset()]
        for _ in range(30):
            time_steps.append(env.step(rng.integers(0, 2, size=2)))
        runs.append(time_steps)
        env.close()
    for a, b in zip(*runs):
        for x, y in zip(a, b):
            np.testing.assert_array_equal(x, y)


def test_time_feature_and_previous_observation():
    # Pendulum: 3 observation entries, a time limit of 200 steps.
    env = GymnasiumEnvironment(
        "Pendulum-v1", seed=0, time_feature=True, previous_observation=True
    )
    assert env.observation_spec().shape == (7,)
    first = env.reset().observation[0]
    np.testing.assert_array_equal(first[:3], first[3:6])  # previous = first
    assert first[6] == 0.0
    second = env.step(np.zeros((1, 1), np.float32)).observation[0]
    np.testing.assert_array_equal(second[:3], first[3:6])
    assert second[6] == pytest.approx(1 / 200)
    env.close()


def test_observation_features_need_vectors_and_a_time_limit():
    with pytest.raises(ValueError, match="vector"):
        make_env("FrozenLake-v1", previous_observation=True)
    with pytest.raises(ValueError, match="time limit"):
        make_env("toy_envs:Countdown-v0", time_feature=True)
