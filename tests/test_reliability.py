"""Faults injected into training runs and their directories: non-finite
data, damaged checkpoints and episode logs, two processes on one logdir,
kill -9 then resume, a hanging environment, bad input."""

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

from agents import Config, load_saved_config, resolve, train
from agents.build import build
from agents.run_directory import RunLock

TINY = ["--num-envs", "2", "--n-steps", "20", "--hidden-units", "8"]
TINY += ["--no-progress"]
HERE = os.path.dirname(__file__)


def _main(argv, capsys):
    """`(exit code, stdout, stderr)` of `agents.train.main(argv)`."""
    code = train.main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def _checkpoint_tensors(prefix):
    reader = tf.train.load_checkpoint(prefix)
    return {
        name: reader.get_tensor(name)
        for name in reader.get_variable_to_shape_map()
        if name.split("/")[0]
        not in ("run_state", "save_counter", "_CHECKPOINTABLE_OBJECT_GRAPH")
    }


def _newest(logdir):
    return tf.train.latest_checkpoint(os.path.join(logdir, "checkpoints"))


def _rows(logdir):
    """`episodes.csv` without the wall-clock column."""
    with open(os.path.join(logdir, "episodes.csv")) as f:
        return [
            (r["env_steps"], r["return"], r["length"])
            for r in csv.DictReader(f)
        ]


def _tree(path):
    """Every file under `path` with its size and modification time, but
    the lock file, which any process that checks the run rewrites."""
    found = {}
    for root, _, files in os.walk(path):
        for name in set(files) - {".lock"}:
            full = os.path.join(root, name)
            found[full] = (os.path.getsize(full), os.path.getmtime(full))
    return found


# Non-finite data from an environment.


@pytest.mark.parametrize("what", ["reward", "observation"])
def test_non_finite_environment_data_stops_with_one_clear_error(
    what, tmp_path, capsys
):
    logdir = str(tmp_path / "run")
    argv = TINY + ["--env", f"toy_envs:Nan{what.title()}-v0"]
    argv += ["--total-steps", "400", "--logdir", logdir]
    code, out, err = _main(argv + ["--checkpoint-every", "1"], capsys)
    assert code == 1, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert f"Nan{what.title()}-v0' returned non-finite data from step" in err
    assert f"{what} of copy" in err and "nan" in err
    assert "mean return" not in out  # no success line
    # The environment received no action drawn from NaN logits, and every
    # saved tensor is finite.
    assert "invalid action" not in err
    assert _newest(logdir).endswith("ckpt-80")  # the last good update
    for name, value in _checkpoint_tensors(_newest(logdir)).items():
        if np.issubdtype(np.asarray(value).dtype, np.floating):
            assert np.all(np.isfinite(value)), name


def test_a_reward_too_large_for_float32_returns_stops_before_the_critic(
    tmp_path, capsys
):
    # -1e30 is finite, but its returns squared in the value loss are not:
    # before this check the critic and its Adam state were NaN in every
    # checkpoint and the run reported success.
    logdir = str(tmp_path / "run")
    argv = TINY + ["--env", "toy_envs:HugeReward-v0", "--total-steps", "400"]
    code, out, err = _main(
        argv + ["--logdir", logdir, "--checkpoint-every", "1"], capsys
    )
    assert code == 1 and len(err.strip().splitlines()) == 1, err
    assert "reward of copy" in err and "-1e+30, beyond ±1e+15" in err
    assert "scale the rewards down" in err and "mean return" not in out
    assert _newest(logdir).endswith("ckpt-80")
    for name, value in _checkpoint_tensors(_newest(logdir)).items():
        if np.issubdtype(np.asarray(value).dtype, np.floating):
            assert np.all(np.isfinite(value)), name


def test_an_environment_that_raises_at_its_first_step_is_one_line(
    tmp_path, capsys
):
    logdir = str(tmp_path / "run")
    argv = TINY + ["--env", "toy_envs:FaultyAtFirstStep-v0"]
    code, out, err = _main(argv + ["--logdir", logdir], capsys)
    assert code == 1 and len(err.strip().splitlines()) == 1, err
    assert "raised in its first step" in err and "blew up" in err


@pytest.mark.parametrize(
    "env, raised",
    [("ExitsInStep", "SystemExit"), ("InterruptsInStep", "KeyboardInterrupt")],
)
def test_an_environment_that_exits_or_interrupts_itself_is_one_line(
    env, raised, tmp_path, capsys
):
    logdir = str(tmp_path / "run")
    argv = TINY + ["--env", f"toy_envs:{env}-v0", "--total-steps", "400"]
    code, out, err = _main(argv + ["--logdir", logdir], capsys)
    assert code == 1 and len(err.strip().splitlines()) == 1, err
    assert "raised in step after" in err and f"{raised}: 3" in err
    assert "mean return" not in out


# Damaged run directories.


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A finished a2c run with a checkpoint after every update."""
    logdir = str(tmp_path_factory.mktemp("finished") / "run")
    argv = TINY + ["--algo", "a2c", "--total-steps", "200"]
    argv += ["--checkpoint-every", "1", "--logdir", logdir]
    assert train.main(argv) == 0
    return logdir


def _copy(run, tmp_path):
    logdir = str(tmp_path / "run")
    shutil.copytree(run, logdir)
    return logdir


def _prefixes(logdir):
    from agents.run_directory import checkpoint_prefixes

    return checkpoint_prefixes(os.path.join(logdir, "checkpoints"))


@pytest.mark.slow
def test_a_garbage_checkpoint_state_file_still_resumes_the_newest(
    finished_run, tmp_path, capsys
):
    logdir = _copy(finished_run, tmp_path)
    with open(os.path.join(logdir, "checkpoints", "checkpoint"), "w") as f:
        f.write("garbage {{{")
    argv = TINY + ["--logdir", logdir, "--resume", "--total-steps", "240"]
    code, out, err = _main(argv, capsys)
    assert code == 0, err
    assert "at 200 steps" in out


@pytest.mark.parametrize(
    "damage", ["truncated data", "zeroed data", "empty index", "missing data"]
)
def test_a_damaged_newest_checkpoint_falls_back_to_an_older_one(
    damage, finished_run, tmp_path, capsys
):
    logdir = _copy(finished_run, tmp_path)
    newest, older = _prefixes(logdir)[:2]
    data, index = newest + ".data-00000-of-00001", newest + ".index"
    size = os.path.getsize(data)
    if damage == "truncated data":
        os.truncate(data, size // 2)
    elif damage == "zeroed data":
        with open(data, "wb") as f:
            f.write(bytes(size))
    elif damage == "empty index":
        os.truncate(index, 0)
    else:
        os.remove(data)
    older_steps = int(older.rsplit("-", 1)[1])
    expected_older = _checkpoint_tensors(older)
    rows_before = _rows(logdir)
    argv = TINY + ["--logdir", logdir, "--resume", "--total-steps", "200"]
    code, out, err = _main(argv, capsys)
    assert code == 0, err
    assert f"Skipped damaged checkpoint {newest}" in out
    assert f"Resumed {older} at {older_steps} steps" in out
    # The damaged files are kept aside, the older history is intact, and
    # the run trained again from the older checkpoint to 200 steps.
    damaged = os.listdir(os.path.join(logdir, "checkpoints", "damaged"))
    assert any(name.startswith(os.path.basename(newest)) for name in damaged)
    rows = _rows(logdir)
    kept = [r for r in rows_before if int(r[0]) <= older_steps]
    assert rows[: len(kept)] == kept
    assert int(rows[-1][0]) == 200 or not rows_before[len(kept) :]
    del expected_older


def test_resume_restores_the_fallback_checkpoint_exactly(
    finished_run, tmp_path
):
    """The variables after a fallback restore equal the older checkpoint."""
    from agents.run_directory import restore_newest

    logdir = _copy(finished_run, tmp_path)
    newest, older = _prefixes(logdir)[:2]
    os.truncate(newest + ".index", 10)
    config = load_saved_config(logdir)
    py_env, _, agent = build(config)
    try:
        env_steps = tf.Variable(0, dtype=tf.int64, name="env_steps")
        run_state = tf.Variable("", dtype=tf.string, name="run_state")
        checkpoint = tf.train.Checkpoint(
            agent=agent, env_steps=env_steps, run_state=run_state
        )
        restored, damaged = restore_newest(
            checkpoint, os.path.join(logdir, "checkpoints")
        )
    finally:
        py_env.close()
    assert restored == older and [p for p, _ in damaged] == [newest]
    expected = _checkpoint_tensors(older)
    assert int(env_steps) == expected["env_steps/.ATTRIBUTES/VARIABLE_VALUE"]
    for variable in agent.variables:
        matches = [
            value
            for name, value in expected.items()
            if name.endswith(".ATTRIBUTES/VARIABLE_VALUE")
            and np.shape(value) == tuple(variable.shape)
            and np.array_equal(value, variable.numpy())
        ]
        assert matches, variable.path


def test_a_partial_last_row_of_the_episode_log_is_dropped_and_reported(
    finished_run, tmp_path, capsys
):
    logdir = _copy(finished_run, tmp_path)
    rows = _rows(logdir)
    with open(os.path.join(logdir, "episodes.csv"), "a") as f:
        f.write("200,17.0")  # cut mid-row
    argv = TINY + ["--logdir", logdir, "--resume", "--total-steps", "240"]
    code, out, err = _main(argv, capsys)
    assert code == 0, err
    assert "Dropped 1 partial or malformed rows" in out
    assert _rows(logdir)[: len(rows)] == rows


def test_no_readable_checkpoint_is_an_error_that_writes_nothing(
    finished_run, tmp_path, capsys
):
    logdir = _copy(finished_run, tmp_path)
    for prefix in _prefixes(logdir):
        os.truncate(prefix + ".index", 0)
    before = _tree(logdir)
    code, _, err = _main(TINY + ["--logdir", logdir, "--resume"], capsys)
    assert code == 2 and "No checkpoint in" in err and "can be read" in err
    assert _tree(logdir).keys() == before.keys()


@pytest.mark.parametrize("damage", ["deleted", "replaced by a file"])
def test_a_resume_without_the_checkpoints_keeps_the_episode_log(
    damage, finished_run, tmp_path, capsys
):
    logdir = _copy(finished_run, tmp_path)
    checkpoints = os.path.join(logdir, "checkpoints")
    shutil.rmtree(checkpoints)
    if damage == "replaced by a file":
        with open(checkpoints, "w") as f:
            f.write("not a directory")
    before = _tree(logdir)
    code, out, err = _main(TINY + ["--logdir", logdir, "--resume"], capsys)
    assert code == 2 and "Traceback" not in err, err
    assert len(err.strip().splitlines()) == 1
    if damage == "deleted":
        assert "holds no checkpoint" in err and "up to 200 steps" in err
    else:
        assert "is not a directory" in err
    assert "Resumed" not in out
    assert _tree(logdir) == before  # episodes.csv and config.json intact


def test_a_run_stopped_before_its_first_checkpoint_resumes_from_step_0(
    finished_run, tmp_path, capsys
):
    # The episodes before the first checkpoint (40 steps: every update,
    # 2 envs x 20 steps) are the ones a resume from step 0 trains again.
    logdir = _copy(finished_run, tmp_path)
    shutil.rmtree(os.path.join(logdir, "checkpoints"))
    path = os.path.join(logdir, "episodes.csv")
    with open(path) as f:
        lines = f.readlines()
    kept = [lines[0]] + [x for x in lines[1:] if int(x.split(",")[0]) <= 40]
    with open(path, "w") as f:
        f.writelines(kept)
    argv = TINY + ["--logdir", logdir, "--resume"]
    code, out, err = _main(argv, capsys)
    assert code == 0, err
    assert "No checkpoint to resume from; starting at step 0." in out
    assert _rows(logdir) == _rows(finished_run)


def test_a_resume_below_the_steps_done_is_refused(
    finished_run, tmp_path, capsys
):
    logdir = _copy(finished_run, tmp_path)
    before = _tree(logdir)
    argv = TINY + ["--logdir", logdir, "--resume", "--total-steps", "120"]
    code, out, err = _main(argv, capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "total_steps 120 is below the 200 steps the run has done" in err
    assert _tree(logdir) == before
    assert load_saved_config(logdir).total_steps == 200


def test_damaged_checkpoints_of_one_name_are_all_kept(tmp_path):
    from agents.run_directory import _set_aside

    directory = tmp_path / "checkpoints"
    directory.mkdir()
    for content in (b"first", b"second", b"third"):
        for suffix in (".index", ".data-00000-of-00001"):
            path = directory / f"ckpt-200{suffix}"
            path.write_bytes(content + suffix.encode())
        _set_aside(str(directory / "ckpt-200"))
    damaged = directory / "damaged"
    names = sorted(os.listdir(damaged))
    assert len(names) == 6
    contents = {(damaged / n).read_bytes() for n in names}
    assert contents == {
        c + s
        for c in (b"first", b"second", b"third")
        for s in (b".index", b".data-00000-of-00001")
    }
    assert os.listdir(directory) == ["damaged"]


def _acktr_config(saved):
    """The config.json of an acktr run like `saved`'s a2c run."""
    import dataclasses

    return dataclasses.asdict(
        resolve(
            Config(
                algo="acktr",
                num_envs=2,
                n_steps=20,
                hidden_units=(8,),
                total_steps=saved["total_steps"],
                logdir=saved["logdir"],
            )
        )
    )


@pytest.mark.parametrize(
    "edit, message",
    [
        (
            lambda c: c.update(learning_rat=0.1),
            "does not know: ['learning_rat']",
        ),
        (lambda c: c.update(_acktr_config(c)), "does not fit the agent"),
        (lambda c: c.update(hidden_units=[16]), "does not fit the agent"),
    ],
)
def test_a_config_that_does_not_match_is_refused_before_anything_runs(
    edit, message, finished_run, tmp_path, capsys
):
    logdir = _copy(finished_run, tmp_path)
    path = os.path.join(logdir, "config.json")
    with open(path) as f:
        config = json.load(f)
    edit(config)
    with open(path, "w") as f:
        json.dump(config, f)
    before = _tree(logdir)
    code, out, err = _main(["--logdir", logdir, "--resume"], capsys)
    assert code == 2 and message in err, err
    assert "Resumed" not in out and "Traceback" not in err
    assert _tree(logdir) == before


def test_an_acktr_run_edited_to_a2c_is_refused_before_it_writes(
    tmp_path, capsys
):
    # The a2c agent's variables all exist in an acktr checkpoint, so the
    # restore alone succeeds, with K-FAC's state in RMSprop's slots.
    logdir = str(tmp_path / "run")
    argv = TINY + ["--algo", "acktr", "--total-steps", "80"]
    assert _main(argv + ["--logdir", logdir], capsys)[0] == 0
    path = os.path.join(logdir, "config.json")
    with open(path) as f:
        config = json.load(f)
    config["algo"] = "a2c"
    with open(path, "w") as f:
        json.dump(config, f)
    newest = _newest(logdir)
    saved = _checkpoint_tensors(newest)
    argv = ["--logdir", logdir, "--resume", "--total-steps", "160"]
    code, out, err = _main(argv, capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "written by a acktr run, but config.json says algo='a2c'" in err
    # No checkpoint was written after the refusal, and the newest is as it
    # was (the state file listing them is rewritten by every restore).
    assert _prefixes(logdir)[0] == newest == _newest(logdir)
    for name, value in _checkpoint_tensors(newest).items():
        np.testing.assert_array_equal(value, saved[name], name)


@pytest.mark.slow
def test_resume_keeps_the_runs_total_steps_unless_given(
    finished_run, tmp_path, capsys
):
    logdir = _copy(finished_run, tmp_path)
    code, out, err = _main(["--logdir", logdir, "--resume"], capsys)
    assert code == 0, err
    assert ": 200 steps" in out  # the run's own 200, not the default 100000
    code, out, err = _main(
        ["--logdir", logdir, "--resume", "--total-steps", "240"], capsys
    )
    assert code == 0 and ": 240 steps" in out, err
    assert load_saved_config(logdir).total_steps == 240
    code, out, err = _main(
        ["--logdir", logdir, "--resume", "--algo", "acktr"], capsys
    )
    assert code == 2 and "algo='acktr' (saved: 'a2c')" in err


def test_a_resume_from_python_must_match_every_saved_setting(
    finished_run, tmp_path
):
    """`run(config, resume=True)` compares every field but `total_steps`
    and `logdir`, where the command line compares the options given."""
    import dataclasses

    from agents import run

    logdir = _copy(finished_run, tmp_path)
    before = _tree(logdir)
    saved = load_saved_config(logdir)
    with pytest.raises(
        ValueError,
        match=r"only total_steps may change. Received: seed=5 \(saved: 0\)",
    ):
        run(dataclasses.replace(saved, seed=5), resume=True)
    assert _tree(logdir) == before


# One run per directory.


def test_a_second_process_on_a_logdir_is_refused(
    finished_run, tmp_path, capsys
):
    logdir = _copy(finished_run, tmp_path)
    before = _tree(os.path.join(logdir, "checkpoints"))
    with RunLock(logdir):
        argv = ["--logdir", logdir, "--resume", "--total-steps", "400"]
        code, _, err = _main(argv, capsys)
    assert code == 2
    assert f"(pid {os.getpid()}) is using logdir" in err
    assert _tree(os.path.join(logdir, "checkpoints")) == before


def test_a_killed_process_does_not_leave_the_logdir_locked(tmp_path):
    logdir = str(tmp_path)
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from agents.run_directory import RunLock\n"
            f"with RunLock({logdir!r}):\n"
            "    print('locked', flush=True); time.sleep(600)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout.readline().strip() == "locked"
    with pytest.raises(ValueError, match=f"pid {holder.pid}"):
        with RunLock(logdir):
            pass
    holder.kill()
    holder.wait()
    with RunLock(logdir):  # free again
        pass


def test_a_resume_imports_no_module_that_only_the_run_directory_names(
    finished_run, tmp_path, capsys, monkeypatch
):
    # A config.json naming `payload:CartPole-v1` beside a payload.py: the
    # import would run that file.
    logdir = _copy(finished_run, tmp_path)
    marker = tmp_path / "payload-ran"
    (tmp_path / "payload_of_the_run.py").write_text(
        f"open({str(marker)!r}, 'w').close()\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    path = os.path.join(logdir, "config.json")
    with open(path) as f:
        config = json.load(f)
    config["env"] = "payload_of_the_run:CartPole-v1"
    with open(path, "w") as f:
        json.dump(config, f)
    code, out, err = _main(TINY + ["--logdir", logdir, "--resume"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "pass --env payload_of_the_run:CartPole-v1" in err
    assert not marker.exists() and "payload_of_the_run" not in sys.modules
    # Named by whoever resumes, the module is theirs to run.
    argv = ["--env", "payload_of_the_run:CartPole-v1", "--resume"]
    code, out, err = _main(TINY + argv + ["--logdir", logdir], capsys)
    assert code == 0, err
    assert marker.exists()


def test_symlinks_planted_in_a_run_directory_write_nothing_elsewhere(
    finished_run, tmp_path, capsys
):
    logdir = _copy(finished_run, tmp_path)
    outside = tmp_path / "outside"
    outside.mkdir()
    planted = {}
    # Links at the names a run writes, and at the temporary names it used
    # to write through; each points at a file or directory outside.
    for name in ["episodes.csv.tmp", "config.json.tmp", "policy.tmp"]:
        planted[name] = outside / name
    planted["learning_curve.tmp.png"] = outside / "curve.png"
    for name in ["episodes.csv", "config.json", "learning_curve.png"]:
        target = outside / f"real-{name}"
        shutil.copy(os.path.join(logdir, name), target)
        os.remove(os.path.join(logdir, name))
        planted[name] = target
    planted["policy"] = outside / "real-policy"
    shutil.move(os.path.join(logdir, "policy"), planted["policy"])
    for name, target in planted.items():
        if not target.exists():
            if name.endswith(".tmp") and "policy" in name:
                target.mkdir()
            else:
                target.write_text("outside the run")
        os.symlink(target, os.path.join(logdir, name))
    before = _tree(str(outside))
    argv = TINY + ["--logdir", logdir, "--resume", "--total-steps", "240"]
    code, out, err = _main(argv, capsys)
    assert code == 0, err
    assert _tree(str(outside)) == before
    for name in ["episodes.csv", "config.json", "learning_curve.png"]:
        assert os.path.isfile(os.path.join(logdir, name))
        assert not os.path.islink(os.path.join(logdir, name))
    assert not os.path.islink(os.path.join(logdir, "policy"))
    assert int(_rows(logdir)[-1][0]) == 240


def test_deleting_the_lock_file_does_not_free_the_logdir(tmp_path):
    logdir = str(tmp_path)
    with RunLock(logdir):
        os.remove(os.path.join(logdir, ".lock"))
        with pytest.raises(ValueError, match="is using logdir"):
            with RunLock(logdir):
                pass
    with RunLock(logdir):  # free again once its owner let go
        pass


@pytest.mark.parametrize("planted", ["symlink", "directory"])
def test_a_planted_lock_file_writes_nothing_elsewhere(planted, tmp_path):
    logdir, outside = tmp_path / "run", tmp_path / "outside.txt"
    logdir.mkdir()
    outside.write_text("keep me")
    if planted == "symlink":
        os.symlink(outside, logdir / ".lock")
    else:
        (logdir / ".lock").mkdir()
    with pytest.raises(ValueError, match="must be a plain file"):
        with RunLock(str(logdir)):
            pass
    assert outside.read_text() == "keep me"
    with pytest.raises(ValueError, match="must be a plain file"):
        with RunLock(str(logdir)):  # and the failed attempt left no lock
            pass


# Exact resume.


@pytest.mark.parametrize(
    "setting",
    [
        ["--algo", "acktr", "--preset", "mujoco", "--env", "Pendulum-v1"],
        ["--algo", "a2c", "--env", "toy_envs:Noisy-v0"],
        ["--algo", "trpo", "--env", "toy_envs:Noisy-v0", "--processes"],
    ],
    ids=["acktr-Pendulum", "a2c-Noisy", "trpo-Noisy-subprocesses"],
)
@pytest.mark.slow
def test_a_resumed_run_ends_exactly_as_an_uninterrupted_one(
    setting, tmp_path, capsys
):
    """Stopping after the checkpoint at 120 steps and resuming gives the
    variables (network, optimizer, counters) and the episodes of one run to
    240 steps: the environments are mid-episode at the checkpoint (random
    starts, random episode lengths and rewards from `np_random`)."""
    argv = TINY + setting + ["--checkpoint-every", "1000"]
    whole, parts = str(tmp_path / "whole"), str(tmp_path / "parts")
    code, _, err = _main(
        argv + ["--total-steps", "240", "--logdir", whole], capsys
    )
    assert code == 0, err
    code, _, err = _main(
        argv + ["--total-steps", "120", "--logdir", parts], capsys
    )
    assert code == 0, err
    # A module's environment is imported only when the resume names it.
    env = setting[setting.index("--env") : setting.index("--env") + 2]
    code, out, err = _main(
        env + ["--logdir", parts, "--resume", "--total-steps", "240"], capsys
    )
    assert code == 0 and "at 120 steps" in out, err
    expected = _checkpoint_tensors(_newest(whole))
    resumed = _checkpoint_tensors(_newest(parts))
    assert expected.keys() == resumed.keys()
    for name in expected:
        np.testing.assert_array_equal(resumed[name], expected[name], name)
    assert _rows(parts) == _rows(whole)


# Non-finite batches given to an agent directly (a user's own loop).


@pytest.mark.parametrize(
    "algo, field",
    [("acktr", "reward"), ("a2c", "observation"), ("trpo", "reward")],
)
def test_a_non_finite_batch_changes_no_variable_and_is_counted(algo, field):
    from agents.rollout import RolloutCollector

    config = Config(
        algo=algo,
        preset="mujoco",
        env="Pendulum-v1",
        num_envs=2,
        n_steps=8,
        hidden_units=(8,),
        logdir="unused",
    )
    assert resolve(config).normalize_observations  # the normalizer too
    py_env, tf_env, agent = build(config)
    try:
        collector = RolloutCollector(tf_env, agent.collect_policy, 8)
        update = tf.function(agent.train)
        update(collector.collect())  # optimizer states are not fresh
        good = collector.collect()
    finally:
        py_env.close()
    values = getattr(good, field).numpy().copy()
    values[1, 3] = np.nan
    bad = good._replace(**{field: tf.constant(values)})
    before = [v.numpy().copy() for v in agent.variables]
    counter = int(agent.train_step_counter)
    loss_info = update(bad)
    assert int(agent.skipped_updates) == 1
    assert np.isnan(loss_info.loss.numpy())
    changed = [
        v.path
        for v, old in zip(agent.variables, before)
        if not np.array_equal(v.numpy(), old) and v is not agent.skipped_updates
    ]
    assert changed == []
    assert int(agent.train_step_counter) == counter
    update(good)  # a finite batch still trains
    assert int(agent.train_step_counter) == counter + 1
    assert int(agent.skipped_updates) == 1


def test_a_first_order_step_with_a_nan_gradient_is_skipped_whole():
    import keras

    from agents.gradients import apply_gradients

    variable = tf.Variable([1.0, 2.0])
    optimizer = keras.optimizers.Adam(0.1)
    optimizer.build([variable])
    apply_gradients(optimizer, [tf.constant([0.5, 0.5])], [variable])
    state = [v.numpy().copy() for v in optimizer.variables]
    value = variable.numpy().copy()
    apply_gradients(optimizer, [tf.constant([np.nan, 0.5])], [variable])
    np.testing.assert_array_equal(variable.numpy(), value)
    for v, old in zip(optimizer.variables, state):
        np.testing.assert_array_equal(v.numpy(), old)
    apply_gradients(optimizer, [tf.constant([0.5, 0.5])], [variable])
    assert not np.array_equal(variable.numpy(), value)


# A hanging environment.


def _start(argv, logdir):
    """`python -m agents.train` in a subprocess, in its own session."""
    return subprocess.Popen(
        [sys.executable, "-m", "agents.train", *argv, "--logdir", logdir],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=os.path.dirname(HERE),
        env=dict(os.environ, PYTHONPATH=HERE),
    )


def _wait_for(path, process, seconds=120):
    deadline = time.time() + seconds
    while not os.path.exists(path):
        assert process.poll() is None, process.communicate()
        assert time.time() < deadline, f"no {path} after {seconds} s"
        time.sleep(0.2)


def _wait_for_checkpoint(directory, step, process, seconds=120):
    """Waits until a checkpoint of `step` environment steps or later
    exists: the run keeps only its newest three, so one exact checkpoint
    may come and go between two looks."""
    deadline = time.time() + seconds

    def newest():
        if not os.path.isdir(directory):
            return -1
        steps = [
            int(name[len("ckpt-") : -len(".index")])
            for name in os.listdir(directory)
            if name.startswith("ckpt-") and name.endswith(".index")
        ]
        return max(steps, default=-1)

    while newest() < step:
        assert process.poll() is None, process.communicate()
        assert time.time() < deadline, f"no ckpt-{step} after {seconds} s"
        time.sleep(0.05)


# `python -m agents.train` with SIGINT raising KeyboardInterrupt, as a
# terminal starts it, even where this test process was started with SIGINT
# ignored (a background job of a non-interactive shell), which its children
# would inherit: before the run installs its own handler, only Python's
# default one stops it.
TRAIN_AS_FROM_A_TERMINAL = [
    sys.executable,
    "-c",
    "import runpy, signal; "
    "signal.signal(signal.SIGINT, signal.default_int_handler); "
    "runpy.run_module('agents.train', run_name='__main__', alter_sys=True)",
]


def test_ctrl_c_while_the_environment_hangs_in_start_up_is_one_line(tmp_path):
    marker = str(tmp_path / "hanging")
    process = subprocess.Popen(
        [*TRAIN_AS_FROM_A_TERMINAL, *TINY]
        + ["--env", "toy_envs:HangsAtStart-v0", "--preset", "default"]
        + ["--logdir", str(tmp_path / "run")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=os.path.dirname(HERE),
        env=dict(os.environ, PYTHONPATH=HERE, HANGS_AT_START_MARKER=marker),
    )
    _wait_for(marker, process)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert "Interrupted while the environment" in err
    assert not os.path.exists(tmp_path / "run")


def test_a_killed_environment_process_is_one_line(tmp_path):
    logdir = str(tmp_path / "run")
    argv = TINY + ["--env", "toy_envs:KillsItsProcess-v0", "--processes"]
    process = _start(argv + ["--total-steps", "400"], logdir)
    _, err = process.communicate(timeout=300)
    assert process.returncode == 1, err
    lines = [x for x in err.strip().splitlines() if "0000 00:00" not in x]
    assert len(lines) == 1 and lines[0].startswith("error: Environment"), err
    assert "raised in step" in lines[0] and "subprocess ended" in lines[0]


HANG = TINY + ["--env", "toy_envs:Hang-v0", "--checkpoint-every", "1"]


@pytest.mark.slow
def test_an_environment_step_timeout_stops_the_run_and_keeps_checkpoints(
    tmp_path,
):
    logdir = str(tmp_path / "run")
    process = _start(HANG + ["--env-timeout", "2"], logdir)
    _, err = process.communicate(timeout=180)
    assert process.returncode == train.ABORTED, err
    last = err.strip().splitlines()[-1]
    assert "did not return from a step within --env-timeout 2 s" in last
    assert "the last checkpoint is kept" in last
    # The copies hang at their 51st step: two updates of 20 were saved.
    assert _newest(logdir).endswith("ckpt-80")


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
@pytest.mark.slow
def test_a_second_signal_stops_a_run_blocked_in_an_environment_step(
    signum, tmp_path
):
    logdir = str(tmp_path / "run")
    process = _start(HANG, logdir)
    _wait_for(os.path.join(logdir, "checkpoints", "ckpt-80.index"), process)
    time.sleep(1.0)  # now blocked inside the third batch's step
    process.send_signal(signum)
    time.sleep(1.0)
    assert process.poll() is None  # the first signal waits for the update
    process.send_signal(signum)
    _, err = process.communicate(timeout=60)
    assert process.returncode == train.ABORTED, err
    assert "Stopped by a second signal" in err.strip().splitlines()[-1]
    assert _newest(logdir).endswith("ckpt-80")


# Kill -9 at a random update, then --resume.


@pytest.mark.slow
def test_kill_9_at_a_random_update_then_resume_ends_as_uninterrupted(
    tmp_path, capsys
):
    argv = TINY + ["--algo", "acktr", "--env", "toy_envs:Noisy-v0"]
    argv += ["--checkpoint-every", "1", "--total-steps", "1200"]
    whole = str(tmp_path / "whole")
    assert _main(argv + ["--logdir", whole], capsys)[0] == 0
    killed = str(tmp_path / "killed")
    update = np.random.default_rng().integers(2, 12)
    process = _start(argv, killed)
    _wait_for_checkpoint(
        os.path.join(killed, "checkpoints"), 40 * update, process
    )
    process.kill()
    process.wait()
    resume = ["--env", "toy_envs:Noisy-v0", "--logdir", killed, "--resume"]
    code, out, err = _main(resume, capsys)
    assert code == 0 and "Resumed" in out, err
    expected = _checkpoint_tensors(_newest(whole))
    resumed = _checkpoint_tensors(_newest(killed))
    for name in expected:
        np.testing.assert_array_equal(resumed[name], expected[name], name)
    assert _rows(killed) == _rows(whole)


# Bad input: one line, exit 2, nothing written.


@pytest.mark.parametrize(
    "extra, received",
    [
        (
            ["--env", "no_such_module:Env-v0"],
            "No module named 'no_such_module'",
        ),
        (["--env", ".rel:Foo-v0"], "an absolute module name"),
        (["--env", ":Foo-v0"], "an absolute module name"),
        (["--env", "toy_envs_broken:Foo-v0"], "RuntimeError: broken on import"),
        (["--env", "toy_envs:WrongShape-v0"], "observation of shape (2,)"),
        (["--max-grad-norm", "0"], "max_grad_norm=0.0"),
        (["--max-grad-norm", "-1"], "max_grad_norm=-1.0"),
        (["--env-timeout", "0"], "env_timeout=0.0"),
        (["--learning-rate", "nan"], "learning_rate=nan"),
    ],
)
def test_bad_arguments_and_environments(extra, received, tmp_path, capsys):
    logdir = tmp_path / "run"
    code, out, err = _main(TINY + extra + ["--logdir", str(logdir)], capsys)
    assert code == 2 and received in err, err
    assert len(err.strip().splitlines()) == 1 and not out
    assert not logdir.exists()


def test_bad_logdirs(tmp_path, capsys, monkeypatch):
    file = tmp_path / "file"
    file.write_text("not a directory")
    for logdir, received in (
        (file, "logdir is a file"),
        (file / "run", "lies under a file"),
    ):
        code, _, err = _main(TINY + ["--logdir", str(logdir)], capsys)
        assert code == 2 and received in err, err
    assert file.read_text() == "not a directory"
    occupied = tmp_path / "occupied"
    (occupied / "episodes.csv").mkdir(parents=True)
    code, _, err = _main(TINY + ["--logdir", str(occupied)], capsys)
    assert code == 2 and "episodes.csv' is a directory" in err, err
    assert len(err.strip().splitlines()) == 1
    assert sorted(os.listdir(occupied)) == [".lock", "episodes.csv"]
    for logdir, received in (
        ("", "logdir must name a directory"),
        (str(tmp_path / ("x" * 300)), "a name of 300 bytes, over the 255"),
    ):
        code, _, err = _main(TINY + ["--logdir", logdir], capsys)
        assert code == 2 and received in err, err
        assert len(err.strip().splitlines()) == 1
    # Permissions and free space as the operating system reports them
    # (the suite may run as root, which writes anywhere).
    logdir = tmp_path / "run"
    monkeypatch.setattr(os, "access", lambda path, mode: False)
    code, _, err = _main(TINY + ["--logdir", str(logdir)], capsys)
    assert code == 2 and "is read-only" in err, err
    monkeypatch.undo()
    usage = shutil.disk_usage(tmp_path)._replace(free=2**20)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage)
    code, _, err = _main(TINY + ["--logdir", str(logdir)], capsys)
    assert code == 2 and "1.0 MiB free" in err, err
    assert not logdir.exists()


@pytest.mark.slow
def test_a_full_disk_at_the_export_is_one_line_and_leaves_no_scratch(
    tmp_path, capsys, monkeypatch
):
    from tf_agents.policies import policy_saver

    logdir = str(tmp_path / "run")

    def save(self, directory, *args, **kwargs):
        os.makedirs(os.path.join(directory, "variables"))
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(policy_saver.PolicySaver, "save", save)
    argv = TINY + ["--total-steps", "80", "--logdir", logdir]
    code, out, err = _main(argv, capsys)
    assert code == 1 and len(err.strip().splitlines()) == 1, err
    assert "No space left on device" in err and "exports again" in err
    assert sorted(os.listdir(logdir)) == [
        ".lock",
        "checkpoints",
        "config.json",
        "episodes.csv",
    ] + [n for n in os.listdir(logdir) if n.startswith("events.")]
    monkeypatch.undo()
    code, out, err = _main(["--logdir", logdir, "--resume"], capsys)
    assert code == 0, err
    assert os.path.isdir(os.path.join(logdir, "policy"))


def test_a_failed_checkpoint_write_keeps_the_last_good_one(
    tmp_path, capsys, monkeypatch
):
    """The disk fills mid-run: the write of the third checkpoint fails."""
    logdir = str(tmp_path / "run")
    original = tf.train.CheckpointManager.save
    calls = []

    def save(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise OSError(28, "No space left on device")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(tf.train.CheckpointManager, "save", save)
    argv = TINY + ["--checkpoint-every", "1", "--total-steps", "400"]
    code, out, err = _main(argv + ["--logdir", logdir], capsys)
    assert code == 1 and "No space left on device" in err, err
    assert "the last good checkpoint" in err and "ckpt-80" in err
    assert len(err.strip().splitlines()) == 1 and "mean return" not in out
    monkeypatch.undo()
    code, out, err = _main(["--logdir", logdir, "--resume"], capsys)
    assert code == 0 and "at 80 steps" in out, err
