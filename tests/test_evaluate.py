"""`agents.evaluate`: the sampling policy next to the greedy one, and the
recorded episode."""

import math
import os
import shutil

import numpy as np
import pytest
from PIL import Image, ImageSequence
from tf_agents.trajectories import time_step as ts

from agents import evaluate, train


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A tiny CartPole-v1 run of `agents.train` (untrained: its policy is
    close to uniform over the two actions)."""
    logdir = str(tmp_path_factory.mktemp("runs") / "cartpole")
    argv = ["--algo", "a2c", "--env", "CartPole-v1", "--total-steps", "20"]
    argv += ["--num-envs", "2", "--n-steps", "5", "--hidden-units", "8"]
    assert train.main(argv + ["--logdir", logdir, "--no-progress"]) == 0
    return logdir


def _actions(policy_dir, count=60):
    policy = evaluate._load_policy(policy_dir)
    observation = np.array([[0.01, -0.02, 0.03, 0.04]], np.float32)
    step = evaluate._time_step(ts.StepType.MID, 0.0, 1.0, observation)
    return {int(policy.action(step).action[0]) for _ in range(count)}


def test_stochastic_runs_the_sampling_policy_beside_the_greedy_one(run_dir):
    policy = os.path.join(run_dir, "policy")
    sampling = os.path.join(run_dir, "collect_policy")
    assert evaluate.resolve_policy_dir(run_dir) == policy
    assert evaluate.resolve_policy_dir(run_dir, stochastic=True) == sampling
    assert evaluate.resolve_policy_dir(policy, stochastic=True) == sampling
    assert evaluate.resolve_policy_dir(policy) == policy
    # Greedy: one action for one observation. Sampling from a near-uniform
    # policy: 60 draws all alike has probability about 2 · 2⁻⁶⁰.
    assert len(_actions(policy)) == 1
    assert _actions(sampling) == {0, 1}


def test_the_video_holds_every_other_frame_of_the_first_episode(
    run_dir, tmp_path, capsys
):
    gif = str(tmp_path / "episode.gif")
    argv = [run_dir, "--env", "CartPole-v1", "--episodes", "2"]
    assert evaluate.main(argv + ["--video", gif, "--seed", "3"]) == 0
    assert f"wrote the first episode to {gif}" in capsys.readouterr().out
    # CartPole pays 1 per step, so the first return is its length L; the
    # reset and L steps give L + 1 frames at 50 per second, every 2nd kept.
    length = evaluate.evaluate(
        os.path.join(run_dir, "policy"), "CartPole-v1", 1, seed=3
    )[0]
    # Pillow merges identical consecutive frames and adds up their delays,
    # so the GIF's total time counts the frames: 40 ms each.
    with Image.open(gif) as image:
        delays = []
        for frame in ImageSequence.Iterator(image):
            delays.append(frame.info["duration"])
            assert frame.size == (600, 400)
    assert sum(delays) == 40 * math.ceil((length + 1) / 2)


def test_bad_video_or_sampling_requests_are_named(run_dir, tmp_path, capsys):
    argv = [run_dir, "--env", "CartPole-v1", "--episodes", "1"]
    assert evaluate.main(argv + ["--video", str(tmp_path / "a.mp4")]) == 2
    assert "path ending in .gif" in capsys.readouterr().err
    missing = str(tmp_path / "no" / "a.gif")
    assert evaluate.main(argv + ["--video", missing]) == 2
    assert "directory does not exist" in capsys.readouterr().err
    alone = str(tmp_path / "alone" / "policy")
    shutil.copytree(os.path.join(run_dir, "policy"), alone)
    assert evaluate.main([alone, "--env", "CartPole-v1", "--stochastic"]) == 2
    assert "collect_policy/ beside policy/" in capsys.readouterr().err
    assert not os.path.exists(str(tmp_path / "a.mp4"))
