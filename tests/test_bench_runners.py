"""What the benchmark's runners share (`bench/runner_common.py`), and the
tf-agents runner's episode bookkeeping, against hand-written files."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from tf_agents.trajectories import time_step as ts
from tf_agents.trajectories import trajectory

from agents import episode_log

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "bench"))

import run_tfagents_ppo  # noqa: E402
import runner_common  # noqa: E402

F, M, L = ts.StepType.FIRST, ts.StepType.MID, ts.StepType.LAST


def _read_bytes(path):
    with open(path, "rb") as f:
        return f.read()


def test_the_episode_log_starts_afresh_and_writes_typed_rows(tmp_path):
    out = tmp_path / "run"
    log = runner_common.new_episode_log(str(out))
    path = out / "episodes.csv"
    assert _read_bytes(path) == b"env_steps,return,length,wall_seconds\r\n"
    log.append([(np.int64(17), np.float32(0.5), np.int64(17), 3.14159)])
    log.append([])
    log.append([(30, -2.25, 13, 4.0)])
    assert _read_bytes(path) == (
        b"env_steps,return,length,wall_seconds\r\n"
        b"17,0.5,17,3.142\r\n"
        b"30,-2.25,13,4.0\r\n"
    )
    assert episode_log.read(str(path)) == (
        [(17, 0.5, 17, 3.142), (30, -2.25, 13, 4.0)],
        0,
    )
    # A new run in the same directory replaces the old rows.
    log = runner_common.new_episode_log(str(out))
    assert log.rows == []
    assert episode_log.read(str(path)) == ([], 0)


def test_the_summary_is_written_in_its_order_with_rounded_times(tmp_path):
    summary = runner_common.write_summary(
        str(tmp_path),
        library="lib",
        algo="ppo",
        env="CartPole-v1",
        seed=2,
        env_steps=1000,
        seconds=3.00049,
        cpu_seconds=1.23456,
        episodes=7,
        hyperparameters={"gamma": 0.99},
        source="here",
        versions={"lib": "1.0"},
    )
    with open(tmp_path / "summary.json") as f:
        assert json.load(f) == summary
    assert list(summary) == [
        "library",
        "algo",
        "env",
        "seed",
        "env_steps",
        "train_seconds",
        "train_cpu_seconds",
        "steps_per_second",
        "episodes",
        "hyperparameters",
        "source",
        "versions",
    ]
    assert summary["train_seconds"] == 3.0
    assert summary["train_cpu_seconds"] == 1.235
    assert summary["steps_per_second"] == 333.3  # 1000 / 3.00049
    assert _read_bytes(tmp_path / "summary.json").endswith(b"}\n")
    assert os.listdir(tmp_path) == ["summary.json"]
    assert runner_common.summary_line(summary) == (
        "lib ppo on CartPole-v1 (seed 2): 1000 steps, 7 episodes, 3.0 s "
        "(333 steps/s)"
    )


def test_a_given_rate_is_kept(tmp_path):
    summary = runner_common.write_summary(
        str(tmp_path),
        library="lib",
        algo="a2c",
        env="CartPole-v1",
        seed=0,
        env_steps=1000,
        seconds=10.0,
        cpu_seconds=10.0,
        episodes=1,
        hyperparameters={},
        source="here",
        steps_per_second=12.345,
    )
    assert summary["steps_per_second"] == 12.3


def test_the_runners_command_line():
    doc = "Trains one run.\n\nMore text."
    parser, args = runner_common.parse_run_arguments(
        doc,
        ["CartPole-v1"],
        "--algo a2c --env CartPole-v1 --total-steps 10 --out o".split(),
        ("a2c", "ppo"),
    )
    assert parser.description == "Trains one run."
    assert vars(args) == dict(
        algo="a2c", env="CartPole-v1", seed=0, total_steps=10, out="o"
    )
    _, args = runner_common.parse_run_arguments(
        doc, str, "--env X --seed 3 --total-steps 1 --out o".split()
    )
    assert not hasattr(args, "algo") and args.seed == 3
    _, args = runner_common.parse_run_arguments(
        doc,
        str,
        "--env X --total-steps 1 --out o --preset mujoco".split(),
        more_arguments=lambda p: p.add_argument("--preset"),
    )
    assert args.preset == "mujoco"


@pytest.mark.slow
def test_our_runner_takes_the_preset_it_is_given(tmp_path):
    # A process of its own, as compare.py runs it: the runner sets
    # TensorFlow's thread pools, which only a fresh process can.
    bench = os.path.join(os.path.dirname(__file__), "..", "bench")
    runner = os.path.join(bench, "run_ours.py")
    for preset in ("default", "mujoco"):
        out = str(tmp_path / preset)
        argv = "--algo acktr --env Pendulum-v1 --total-steps 40 --out"
        subprocess.run(
            [sys.executable, runner, *argv.split(), out, "--preset", preset],
            check=True,
            capture_output=True,
        )
        with open(f"{out}/run/config.json") as f:
            assert json.load(f)["preset"] == preset


@pytest.mark.parametrize(
    "argv",
    [
        "--algo trpo --env CartPole-v1 --total-steps 10 --out o",
        "--algo a2c --env Pong --total-steps 10 --out o",
        "--algo a2c --env CartPole-v1 --total-steps 0 --out o",
        "--algo a2c --env CartPole-v1 --seed -1 --total-steps 1 --out o",
    ],
    ids=["algo", "env", "steps", "seed"],
)
def test_bad_runner_arguments_exit_with_usage(argv, capsys):
    with pytest.raises(SystemExit):
        runner_common.parse_run_arguments(
            "Doc.", ["CartPole-v1"], argv.split(), ("a2c",)
        )
    assert "usage:" in capsys.readouterr().err


class _Episodes:
    def __init__(self, finished):
        self.finished = finished

    def pop_completed_episodes(self):
        return self.finished


def _experience(step_type, next_step_type):
    step_type = np.array(step_type, np.int32)
    zeros = np.zeros(step_type.shape, np.float32)
    return trajectory.Trajectory(
        step_type=tf.constant(step_type),
        observation=tf.constant(zeros),
        action=tf.constant(zeros),
        policy_info=(),
        next_step_type=tf.constant(np.array(next_step_type, np.int32)),
        reward=tf.constant(zeros),
        discount=tf.constant(zeros),
    )


def test_episodes_are_logged_at_the_steps_where_they_end(tmp_path):
    # Two copies, 4 items each. Copy 0's episode ends with its 1st item
    # (next step LAST) and its 2nd item, LAST -> FIRST, is a boundary, not
    # a step; copy 1's ends with its 3rd item, and its 4th is a boundary.
    # Steps of both copies after each time: 2, 3, 5, 6.
    experience = _experience(
        [[F, L, F, M], [M, M, M, L]],
        [[L, F, M, M], [M, M, L, F]],
    )
    log = runner_common.new_episode_log(str(tmp_path))
    finished = [(10.0, 2), (-1.5, 30)]
    after = run_tfagents_ppo.log_episodes(
        experience, _Episodes(finished), log, 100, 1.0
    )
    assert after == 106
    assert log.rows == [(102, 10.0, 2, 1.0), (105, -1.5, 30, 1.0)]


def test_a_mismatch_of_episodes_and_ends_raises(tmp_path):
    experience = _experience([[F, M]], [[M, L]])
    log = runner_common.new_episode_log(str(tmp_path))
    with pytest.raises(RuntimeError, match="0 episodes finished but .* 1"):
        run_tfagents_ppo.log_episodes(experience, _Episodes([]), log, 0, 1.0)
