"""`agents.evaluate`: the sampling policy next to the greedy one, the
recorded episode, and the environment rebuilt as a run trained on it."""

import math
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import readme
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


def test_a_killed_recording_leaves_the_earlier_video_as_it_was(
    run_dir, tmp_path, capsys, monkeypatch
):
    gif = tmp_path / "episode.gif"
    gif.write_bytes(b"GIF89a an earlier recording")
    real_run = subprocess.run

    def replay_killed_midway(command, **kwargs):
        if command[1:3] != ["-m", "agents.replay"]:
            return real_run(command, **kwargs)
        with open(command[-1], "wb") as partial:
            partial.write(b"GIF89a half")  # what a killed writer leaves
        return subprocess.CompletedProcess(command, -9, "", "")

    monkeypatch.setattr(subprocess, "run", replay_killed_midway)
    argv = [run_dir, "--env", "CartPole-v1", "--episodes", "1"]
    assert evaluate.main(argv + ["--video", str(gif)]) == 2
    err = capsys.readouterr().err
    assert "stopped by signal 9" in err and "MuJoCo" not in err
    assert gif.read_bytes() == b"GIF89a an earlier recording"
    assert os.listdir(tmp_path) == ["episode.gif"]  # no partial file left


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


@pytest.fixture(scope="module")
def featured_run(tmp_path_factory):
    """A tiny Pendulum-v1 run whose policy reads `[o_{t-1}, o_t, t / T]`:
    3 + 3 + 1 entries."""
    logdir = str(tmp_path_factory.mktemp("runs") / "pendulum")
    argv = ["--algo", "a2c", "--env", "Pendulum-v1", "--total-steps", "20"]
    argv += ["--num-envs", "2", "--n-steps", "5", "--hidden-units", "8"]
    argv += ["--time-feature", "--previous-observation"]
    assert train.main(argv + ["--logdir", logdir, "--no-progress"]) == 0
    return logdir


class _Recording:
    """A loaded policy that keeps the observations it is given."""

    def __init__(self, policy):
        self._policy = policy
        self.observations = []

    def __getattr__(self, name):
        return getattr(self._policy, name)

    def action(self, time_step):
        self.observations.append(np.array(time_step.observation))
        return self._policy.action(time_step)


@pytest.mark.slow
def test_a_run_with_observation_features_is_evaluated_as_trained(
    featured_run, monkeypatch, capsys
):
    policies = []

    def load(policy_dir):
        policies.append(_Recording(load_policy(policy_dir)))
        return policies[-1]

    load_policy = evaluate._load_policy
    monkeypatch.setattr(evaluate, "_load_policy", load)
    # The environment and its features come from the run's config.json.
    assert evaluate.main([featured_run, "--episodes", "1", "--seed", "4"]) == 0
    assert "Pendulum-v1: mean return" in capsys.readouterr().out
    observations = np.concatenate(policies[0].observations)
    # Pendulum is cut at T = 200 steps; the policy acts before each.
    assert observations.shape == (200, 7)
    assert observations.dtype == np.float32
    t = np.arange(200)
    np.testing.assert_array_equal(observations[:, 6], np.float32(t / 200))
    # Each step's previous observation is the step before's current one,
    # and at the reset the first observation again.
    np.testing.assert_array_equal(observations[1:, :3], observations[:-1, 3:6])
    np.testing.assert_array_equal(observations[0, :3], observations[0, 3:6])
    # The current observation is Pendulum's: (cos θ, sin θ, θ').
    np.testing.assert_allclose(
        observations[:, 3] ** 2 + observations[:, 4] ** 2, 1.0, rtol=1e-6
    )


def test_the_training_environment_comes_from_the_run(featured_run, tmp_path):
    policy = os.path.join(featured_run, "policy")
    features = {"time_feature": True, "previous_observation": True}
    for path in (policy, os.path.join(featured_run, "collect_policy")):
        environment = evaluate.training_environment(path)
        assert environment == {"env_id": "Pendulum-v1", **features}
    # An explicit environment replaces the run's; the features stay.
    environment = evaluate.training_environment(policy, "CartPole-v1")
    assert environment == {"env_id": "CartPole-v1", **features}
    # A policy out of its run is shown the environment as it is.
    alone = str(tmp_path / "policy")
    shutil.copytree(policy, alone)
    environment = evaluate.training_environment(alone, "Pendulum-v1")
    assert environment == {"env_id": "Pendulum-v1"}
    with pytest.raises(ValueError, match="policy_dir=.*, env=None$"):
        evaluate.training_environment(alone)


def test_another_environment_gets_the_features_and_the_spec_check(
    featured_run, tmp_path, capsys
):
    # CartPole with both features reads 4 + 4 + 1 entries, not 7.
    argv = [featured_run, "--env", "CartPole-v1", "--episodes", "1"]
    assert evaluate.main(argv) == 2
    err = capsys.readouterr().err
    assert "with observation float32 (7,), action Box(-2.0, 2.0, (1,)" in err
    assert "env='CartPole-v1' with observation float32 (9,)" in err
    # Out of its run, the policy is refused the plain Pendulum (3 entries).
    alone = str(tmp_path / "policy")
    shutil.copytree(os.path.join(featured_run, "policy"), alone)
    argv = [alone, "--env", "Pendulum-v1", "--episodes", "1"]
    assert evaluate.main(argv) == 2
    assert "env='Pendulum-v1' with observation float32 (3,)" in (
        capsys.readouterr().err
    )


def test_a_run_naming_a_module_needs_an_explicit_env(tmp_path):
    # Importing is running code: a run directory is data.
    os.makedirs(tmp_path / "policy")
    with open(tmp_path / "config.json", "w") as f:
        f.write('{"env": "toy_envs:Countdown-v0", "time_feature": false}')
    with pytest.raises(ValueError, match="pass --env toy_envs:Countdown-v0"):
        evaluate.training_environment(str(tmp_path / "policy"))
    environment = evaluate.training_environment(
        str(tmp_path / "policy"), "toy_envs:Countdown-v0"
    )
    assert environment == {
        "env_id": "toy_envs:Countdown-v0",
        "time_feature": False,
        "previous_observation": False,
    }


def test_an_unbounded_box_policy_evaluates_as_it_trained(tmp_path, capsys):
    # The export stores the infinite bounds as float32's largest value.
    logdir = str(tmp_path / "free")
    argv = ["--algo", "a2c", "--env", "toy_envs:FreeSlider-v0"]
    argv += ["--total-steps", "40", "--num-envs", "2", "--n-steps", "20"]
    argv += ["--hidden-units", "8", "--no-progress", "--logdir", logdir]
    assert train.main(argv) == 0
    capsys.readouterr()
    argv = [logdir, "--env", "toy_envs:FreeSlider-v0", "--episodes", "1"]
    assert evaluate.main(argv) == 0, capsys.readouterr().err
    assert "mean return" in capsys.readouterr().out


def test_the_readme_loads_a_policy_in_plain_tensorflow(run_dir):
    code = readme.block("**A policy in plain TensorFlow.**")
    code = code.replace(
        "runs/acktr-CartPole-v1-seed0/policy", os.path.join(run_dir, "policy")
    )
    # What the process imported besides TensorFlow and its probability
    # library: none of tf-agents, Gymnasium, Keras-K-FAC or the agents.
    code += (
        "\nimport sys\n"
        "print(sorted(m for m in ('tf_agents', 'gymnasium', 'keras_kfac', "
        "'agents') if m in sys.modules))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    actions, imported = result.stdout.strip().splitlines()[-2:]
    assert actions in ("[0]", "[1]")
    assert imported == "[]"
