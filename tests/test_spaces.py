"""`agents.spaces`: specs, observation encoding, action conversion and the
Atari score rule, against hand-computed values."""

import subprocess
import sys

import gymnasium
import numpy as np
import pytest

from agents import spaces
from agents.env_factory import make_env

Box, Discrete = gymnasium.spaces.Box, gymnasium.spaces.Discrete


def _spec(spec):
    """`(shape, dtype, minimum, maximum)` with the bounds as lists."""
    bounds = [
        None if b is None else np.asarray(b).tolist()
        for b in (spec.minimum, spec.maximum)
    ]
    return (spec.shape, spec.dtype, *bounds)


@pytest.mark.parametrize(
    "space, expected",
    [
        # Float vectors of any precision: unbounded float32.
        (Box(-1.0, 1.0, (3,), np.float64), ((3,), np.float32, None, None)),
        # Images keep their bytes and their byte bounds.
        (Box(0, 255, (84, 84, 4), np.uint8), ((84, 84, 4), np.uint8, 0, 255)),
        # Discrete(5, start=2): five one-hot entries, whatever the start.
        (Discrete(5, start=2), ((5,), np.float32, 0.0, 1.0)),
    ],
)
def test_observation_specs(space, expected):
    assert _spec(spaces.observation_spec(space)) == expected


@pytest.mark.parametrize(
    "space, expected",
    [
        # The policy writes 0, 1, 2; the start is added for the env.
        (Discrete(3, start=-1), ((), np.int64, 0, 2)),
        (
            Box(np.array([-1.0, -2.0]), np.array([1.0, 0.5]), dtype=np.float64),
            ((2,), np.float32, [-1.0, -2.0], [1.0, 0.5]),
        ),
    ],
)
def test_action_specs(space, expected):
    assert _spec(spaces.action_spec(space)) == expected


def test_unsupported_spaces_raise_with_what_was_received():
    multi = gymnasium.spaces.MultiDiscrete([2, 3])
    with pytest.raises(ValueError, match=r"observation_space=MultiDiscrete"):
        spaces.observation_spec(multi)
    with pytest.raises(ValueError, match=r"action_space=MultiDiscrete"):
        spaces.action_spec(multi)
    with pytest.raises(ValueError, match=r"action_space=Box\(.*\(2, 2\)"):
        spaces.action_spec(Box(-1.0, 1.0, (2, 2)))


def test_discrete_observations_are_one_hot_from_the_start():
    encoded = spaces.encode_observations(Discrete(4, start=2), [2, 5, 3])
    expected = [[1, 0, 0, 0], [0, 0, 0, 1], [0, 1, 0, 0]]
    assert encoded.dtype == np.float32
    np.testing.assert_array_equal(encoded, expected)


def test_box_observations_take_the_spec_dtype():
    floats = np.array([[0.1, -2.5]], np.float64)
    encoded = spaces.encode_observations(Box(-3.0, 3.0, (2,)), floats)
    assert encoded.dtype == np.float32
    np.testing.assert_array_equal(encoded, floats.astype(np.float32))
    frames = np.arange(12, dtype=np.uint8).reshape(1, 2, 2, 3)
    images = Box(0, 255, (2, 2, 3), np.uint8)
    encoded = spaces.encode_observations(images, frames)
    assert encoded.dtype == np.uint8
    np.testing.assert_array_equal(encoded, frames)


def test_discrete_actions_are_shifted_by_the_start():
    actions = spaces.env_actions(Discrete(3, start=-1), np.array([0, 2, 1]))
    assert actions.dtype == np.int64
    np.testing.assert_array_equal(actions, [-1, 1, 0])


def test_box_actions_are_clipped_to_the_bounds_per_entry():
    space = Box(np.float32([-1.0, -2.0]), np.float32([1.0, 0.5]))
    actions = np.array([[5.0, -3.0], [0.25, 0.5], [-1.5, 0.75]], np.float32)
    expected = [[1.0, -2.0], [0.25, 0.5], [-1.0, 0.5]]
    np.testing.assert_array_equal(spaces.env_actions(space, actions), expected)


def test_integer_box_actions_are_rounded_into_the_space():
    space = gymnasium.spaces.Box(-2, 3, shape=(3,), dtype=np.int64)
    actions = spaces.env_actions(space, np.array([[1.37, -0.6, 7.2]]))
    np.testing.assert_array_equal(actions, [[1, -1, 3]])
    assert actions.dtype == np.int64 and space.contains(actions[0])


def test_the_score_of_one_environment_step():
    # An Atari step: 30 points, clipped to a reward of 1, a life lost.
    score, lost = spaces.game_score(1.0, {"score": 30.0, "life_lost": True})
    assert (float(score), bool(lost)) == (30.0, True)
    # Any other environment: its reward, no lives.
    score, lost = spaces.game_score(-0.5, {})
    assert (float(score), bool(lost)) == (-0.5, False)


def test_the_score_of_a_vector_step_reads_only_the_reported_copies():
    reward = np.array([1.0, -1.0, 0.0])
    info = {
        "score": np.array([30.0, 0.0, 0.0]),
        "_score": np.array([True, False, True]),  # copy 1 was resetting
        "life_lost": np.array([True, True, False]),
        "_life_lost": np.array([True, False, True]),
    }
    score, lost = spaces.game_score(reward, info)
    np.testing.assert_array_equal(score, [30.0, -1.0, 0.0])
    np.testing.assert_array_equal(lost, [True, False, False])
    score, lost = spaces.game_score(reward, {})
    np.testing.assert_array_equal(score, reward)
    np.testing.assert_array_equal(lost, [False, False, False])


def test_the_environment_side_imports_no_tensorflow():
    # Environment subprocesses and the video replay start light.
    code = (
        "import sys, agents.spaces, agents.env_factory, agents.replay; "
        "print('tensorflow' in sys.modules)"
    )
    child = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True
    )
    assert child.stdout.strip() == "False", child.stderr


def test_make_env_renders_when_asked():
    env = make_env("CartPole-v1", render_mode="rgb_array")
    env.reset(seed=0)
    assert env.render().shape == (400, 600, 3)
    env.close()
    env = make_env("CartPole-v1")
    assert env.render_mode is None
    env.close()
