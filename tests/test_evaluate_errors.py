"""`python -m agents.evaluate` answers bad input with one line and exit 2.

Each test damages a copy of one tiny exported policy (trained once for the
module) and checks that `agents.evaluate.main` prints one `error: ...` line
naming what it received, returns 2, raises nothing, and writes nothing.
"""

import hashlib
import os
import shutil

import gymnasium
import numpy as np
import pytest

from agents import evaluate, train

DATA = os.path.join("variables", "variables.data-00000-of-00001")
INDEX = os.path.join("variables", "variables.index")
CARTPOLE = "observation float32 (4,), action Discrete(2)"
PENDULUM = "observation float32 (3,), action Box(-2.0, 2.0, (1,), float32)"


class ThreeArmedCartPole(gymnasium.Env):
    """CartPole's observation space with a third action."""

    observation_space = gymnasium.spaces.Box(-np.inf, np.inf, (4,), np.float32)
    action_space = gymnasium.spaces.Discrete(3)


class TwoKnobCartPole(ThreeArmedCartPole):
    """An action space neither the agents nor `evaluate` support."""

    action_space = gymnasium.spaces.MultiDiscrete([2, 3])


gymnasium.register("ThreeArmedCartPole-v0", entry_point=ThreeArmedCartPole)
gymnasium.register("TwoKnobCartPole-v0", entry_point=TwoKnobCartPole)


def _train(logdir, env_id):
    argv = ["--algo", "a2c", "--env", env_id, "--total-steps", "80"]
    argv += ["--num-envs", "2", "--n-steps", "5", "--hidden-units", "8"]
    assert train.main(argv + ["--logdir", logdir, "--no-progress"]) == 0
    return os.path.join(logdir, "policy")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """The policy directories of tiny CartPole-v1 and Pendulum-v1 runs."""
    root = tmp_path_factory.mktemp("runs")
    return {
        "CartPole-v1": _train(str(root / "cartpole"), "CartPole-v1"),
        "Pendulum-v1": _train(str(root / "pendulum"), "Pendulum-v1"),
    }


@pytest.fixture
def policy(exported, tmp_path):
    """A copy of the CartPole-v1 policy in this test's `tmp_path`."""
    return shutil.copytree(exported["CartPole-v1"], tmp_path / "policy")


def _tree(root):
    """Every path under `root` with its size, mtime and content hash."""
    tree = {}
    for folder, _, files in os.walk(root):
        tree[folder] = os.stat(folder).st_mtime_ns
        for name in files:
            path = os.path.join(folder, name)
            with open(path, "rb") as f:
                digest = hashlib.sha256(f.read()).hexdigest()
            tree[path] = (os.stat(path).st_mtime_ns, digest)
    return tree


def _fails(capsys, root, argv):
    """Runs the command line; returns its one error line."""
    before = _tree(root)
    assert evaluate.main([str(a) for a in argv]) == 2
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    assert out == ""
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert _tree(root) == before
    return lines[0]


def _truncate(path):
    with open(path, "rb") as f:
        data = f.read()
    with open(path, "wb") as f:
        f.write(data[: len(data) // 2])


def _zero(path):
    size = os.path.getsize(path)
    with open(path, "wb") as f:
        f.write(bytes(size))


@pytest.mark.slow
def test_the_intact_copy_evaluates(policy, tmp_path, capsys):
    # The checks below must not reject the export they were written for.
    argv = [str(policy), "--env", "CartPole-v1", "--episodes", "2"]
    assert evaluate.main(argv) == 0
    assert "CartPole-v1: mean return" in capsys.readouterr().out


def test_a_box_action_policy_evaluates(exported, capsys):
    argv = [exported["Pendulum-v1"], "--env", "Pendulum-v1", "--episodes", "1"]
    assert evaluate.main(argv) == 0
    assert "Pendulum-v1: mean return" in capsys.readouterr().out


def test_a_directory_that_does_not_exist(tmp_path, capsys):
    missing = tmp_path / "no-such-policy"
    line = _fails(capsys, tmp_path, [missing, "--env", "CartPole-v1"])
    assert "does not exist" in line
    assert f"Received: policy_dir={str(missing)!r}" in line
    assert not missing.exists()


def test_a_file_instead_of_a_directory(policy, capsys):
    path = policy / "saved_model.pb"
    line = _fails(capsys, policy, [path, "--env", "CartPole-v1"])
    assert "is a file, not a directory" in line
    assert f"Received: policy_dir={str(path)!r}" in line


@pytest.mark.parametrize(
    "name", ["saved_model.pb", INDEX, DATA, "policy_specs.pbtxt", "variables"]
)
def test_a_missing_file(policy, name, capsys):
    path = policy / name
    shutil.rmtree(path) if path.is_dir() else path.unlink()
    line = _fails(capsys, policy, [policy, "--env", "CartPole-v1"])
    missing = [INDEX, DATA] if name == "variables" else [name]
    assert f"{', '.join(missing)} missing" in line
    assert f"Received: policy_dir={str(policy)!r}" in line


@pytest.mark.parametrize(
    "name, damage",
    [
        ("saved_model.pb", _truncate),
        (DATA, _truncate),
        (DATA, _zero),
        (INDEX, _truncate),
        ("policy_specs.pbtxt", _truncate),
        ("fingerprint.pb", _truncate),  # TensorFlow would log a traceback
    ],
    ids=lambda x: getattr(x, "__name__", str(x)).strip("_"),
)
def test_a_corrupt_file(policy, name, damage, capsys):
    damage(policy / name)
    line = _fails(capsys, policy, [policy, "--env", "CartPole-v1"])
    assert "corrupt or truncated" in line
    assert line.endswith(f"Received: policy_dir={str(policy)!r}")


@pytest.mark.parametrize(
    "env_id, given",
    [
        ("Pendulum-v1", PENDULUM),
        ("MountainCar-v0", "observation float32 (2,), action Discrete(3)"),
        ("Acrobot-v1", "observation float32 (6,), action Discrete(3)"),
        ("ThreeArmedCartPole-v0", CARTPOLE.replace("(2)", "(3)")),
    ],
)
def test_an_environment_with_other_specs(policy, env_id, given, capsys):
    line = _fails(capsys, policy, [policy, "--env", env_id])
    assert line == (
        "error: The policy's observation and action specs differ from the "
        f"environment's. Received: policy_dir={str(policy)!r} with "
        f"{CARTPOLE}; env={env_id!r} with {given}"
    )


def test_a_box_action_policy_on_a_discrete_environment(
    exported, tmp_path, capsys
):
    policy = shutil.copytree(exported["Pendulum-v1"], tmp_path / "policy")
    line = _fails(capsys, tmp_path, [policy, "--env", "CartPole-v1"])
    assert f"with {PENDULUM}; env='CartPole-v1' with {CARTPOLE}" in line


@pytest.mark.parametrize(
    "argv, received",
    [
        (["--env", "CartPole-v7"], "env='CartPole-v7'"),
        (["--env", "no_such_module:Env-v0"], "env='no_such_module:Env-v0'"),
        (["--env", ".rel:Foo-v0"], "env='.rel:Foo-v0'"),
        (["--env", "CartPole-v1", "--episodes", "0"], "episodes=0"),
        (["--env", "CartPole-v1", "--episodes", "-3"], "episodes=-3"),
        (["--env", "CartPole-v1", "--seed", "-1"], "seed=-1"),
        (["--env", "TwoKnobCartPole-v0"], "action_space=MultiDiscrete([2 3])"),
    ],
)
def test_bad_arguments(policy, argv, received, capsys):
    line = _fails(capsys, policy, [policy] + argv)
    assert line.endswith(f"Received: {received}")


def test_a_policy_outside_a_run_needs_an_environment(policy, capsys):
    line = _fails(capsys, policy, [policy, "--episodes", "1"])
    assert "not in a run directory" in line
    assert line.endswith(f"Received: policy_dir={str(policy)!r}, env=None")
