"""`python -m agents.tune`: the search space, the legs of a trial, the
study that resumes, and bad input in one line."""

import dataclasses
import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest

from agents import episode_log, train, tune
from agents.config import Config, resolve

TINY = ["--total-steps", "600", "--stages", "2"]


def test_search_spaces_are_ones_their_algorithms_take():
    for algo, space in tune.SEARCH_SPACES.items():
        assert tune.check_search_space(space, algo) is space


@pytest.mark.parametrize(
    "space, received",
    [
        ({}, "non-empty JSON object"),
        ({"kl_clip": {"log": [0.0, 0.1]}}, "0 < low < high"),
        ({"kl_clip": {"log": [0.1, 0.01]}}, "0 < low < high"),
        ({"kl_clip": {"uniform": [0.1, 1]}}, "0 < low < high"),
        ({"n_steps": []}, "a list of choices"),
        ({"n_stepz": [8]}, "'n_stepz'"),
        ({"seed": [0, 1]}, "'seed'"),
        ({"critic": ["adam", "jointly"]}, "jointly"),
        ({"damping": [-1.0]}, "damping=-1.0"),
    ],
)
def test_a_bad_search_space_is_named(space, received):
    with pytest.raises(ValueError) as error:
        tune.check_search_space(space, "acktr")
    assert received in str(error.value)


def test_a_setting_the_algorithm_does_not_take_is_refused():
    # TRPO fits its critic apart: it has no joint critic to search.
    with pytest.raises(ValueError, match="critic"):
        tune.check_search_space({"critic": ["adam", "joint"]}, "trpo")


@pytest.mark.parametrize(
    "total, stages, batch, ends",
    [
        (1000, 4, 100, [300, 500, 800, 1000]),
        (1000, 5, 1024, [1024] * 5),
        (3000, 3, 2048, [2048, 2048, 4096]),
    ],
)
def test_legs_end_on_whole_batches(total, stages, batch, ends):
    assert tune.stage_ends(total, stages, batch) == ends


def test_a_legs_value_is_the_mean_of_the_last_100_episodes(tmp_path):
    log = episode_log.EpisodeLog(str(tmp_path / "episodes.csv"))
    rows = [(10 * (k // 50 + 1), float(k), 5, 0.1) for k in range(300)]
    log.append(rows)  # 50 episodes end at each of 10, 20, ..., 60 steps
    assert tune.mean_return_at(str(tmp_path), 5) != tune.mean_return_at(
        str(tmp_path), 10
    )
    assert np.isnan(tune.mean_return_at(str(tmp_path), 5))
    assert tune.mean_return_at(str(tmp_path), 10) == np.mean(range(50))
    assert tune.mean_return_at(str(tmp_path), 30) == np.mean(range(50, 150))


def _tune(argv, **kwargs):
    return subprocess.run(
        [sys.executable, "-m", "agents.tune", *argv],
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
        cwd=os.path.join(os.path.dirname(__file__), os.pardir),
        **kwargs,
    )


@pytest.mark.parametrize(
    "argv, received",
    [
        (["--algo", "ppo2"], "invalid choice: 'ppo2'"),
        (["--trials", "0"], "--trials must be >= 1"),
        (["--search-space", "missing.json"], "missing.json cannot be read"),
    ],
)
def test_bad_arguments_are_one_line_and_write_nothing(
    argv, received, tmp_path, capsys
):
    study = str(tmp_path / "study")
    base = ["--env", "CartPole-v1", "--study", study]
    try:
        code = tune.main(base + argv)
    except SystemExit as exit_:
        code = exit_.code
    assert code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and received in err
    assert not os.path.exists(study)


@pytest.mark.slow
def test_a_search_writes_a_config_that_trains_and_resumes(tmp_path):
    study = str(tmp_path / "study")
    argv = ["--algo", "a2c", "--env", "CartPole-v1", "--study", study]
    space = tmp_path / "space.json"
    space.write_text(json.dumps({"learning_rate": {"log": [1e-4, 1e-2]}}))
    argv += ["--search-space", str(space)] + TINY
    done = _tune(argv + ["--trials", "2"])
    assert done.returncode == 0, done.stderr
    assert "2 trials finished" in done.stdout
    best = json.loads((tmp_path / "study" / "best.json").read_text())
    assert best["algo"] == "a2c" and "logdir" not in best
    # agents.train takes it as it is.
    config, _ = train.parse_args(
        ["--config", str(tmp_path / "study/best.json")]
    )
    assert config.learning_rate == best["learning_rate"]
    # The same command with more trials continues the study: two more.
    more = _tune(argv + ["--trials", "4"])
    assert more.returncode == 0, more.stderr
    assert "4 trials finished" in more.stdout
    assert sorted(os.listdir(study)) == [
        "best.json",
        "study.db",
        "trial-0",
        "trial-1",
        "trial-2",
        "trial-3",
    ]
    # A study of another environment is refused, and left as it was.
    before = os.path.getmtime(os.path.join(study, "study.db"))
    other = _tune(["--env", "Acrobot-v1", "--study", study] + TINY)
    assert other.returncode == 2
    assert other.stderr.count("\n") == 1 and "choose another --study" in (
        other.stderr
    )
    assert os.path.getmtime(os.path.join(study, "study.db")) == before


def test_a_corrupt_study_file_is_one_line(tmp_path, capsys):
    study = tmp_path / "study"
    study.mkdir()
    (study / "study.db").write_bytes(b"not a database" * 100)
    argv = ["--env", "CartPole-v1", "--study", str(study)] + TINY
    assert tune.main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot be opened as a study" in err
    assert (study / "study.db").read_bytes() == b"not a database" * 100


@pytest.mark.slow
def test_a_killed_trial_is_retried_from_its_runs_checkpoint(tmp_path):
    import optuna

    study = str(tmp_path / "study")
    argv = ["--algo", "a2c", "--env", "CartPole-v1", "--study", study]
    argv += ["--trials", "1", "--total-steps", "4000", "--stages", "2"]
    process = subprocess.Popen(
        [sys.executable, "-m", "agents.tune", *argv],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
        cwd=os.path.join(os.path.dirname(__file__), os.pardir),
    )
    checkpoints = os.path.join(study, "trial-0", "checkpoints")
    deadline = time.monotonic() + 600
    while not os.path.exists(os.path.join(checkpoints, "ckpt-2000.index")):
        assert process.poll() is None and time.monotonic() < deadline
        time.sleep(0.5)
    process.kill()
    process.wait()
    # What Optuna does once the killed trial's heartbeat is stale: fail
    # it, and enqueue a retry with its settings.
    storage = optuna.storages.RDBStorage(
        f"sqlite:///{os.path.join(study, 'study.db')}"
    )
    loaded = optuna.load_study(study_name="agents.tune", storage=storage)
    (running,) = loaded.get_trials(states=(optuna.trial.TrialState.RUNNING,))
    storage.set_trial_state_values(
        running._trial_id, optuna.trial.TrialState.FAIL
    )
    optuna.storages.RetryHeartbeatStaleTrialCallback()(
        loaded, storage.get_trial(running._trial_id)
    )
    resumed = _tune(argv)
    assert resumed.returncode == 0, resumed.stderr
    assert "Resumed" in resumed.stdout and "at 2000 steps" in resumed.stdout
    assert "1 trials finished" in resumed.stdout
    assert not os.path.exists(os.path.join(study, "trial-1"))


def _tune_gain():
    bench = os.path.join(os.path.dirname(os.path.dirname(__file__)), "bench")
    sys.path.insert(0, bench)
    try:
        import tune_gain
    finally:
        sys.path.remove(bench)
    return tune_gain


def test_the_tuning_gain_table_is_the_seeds_scores_and_their_spread(
    tmp_path,
):
    tune_gain = _tune_gain()
    args = tune_gain.parse_args(["--env", "CartPole-v1", "--trials", "3"])
    # A best.json as agents.tune writes it, one searched setting moved.
    config = resolve(Config(algo="acktr", env="CartPole-v1", kl_clip=0.02))
    values = dataclasses.asdict(config)
    del values["logdir"]
    (tmp_path / "best.json").write_text(json.dumps(values))
    text = tune_gain.markdown(
        args, str(tmp_path), {"preset": [1.0, 3.0, 5.0], "tuned": [4.0, 4.0]}
    )
    assert "tuned: {'kl_clip': 0.02}" in text
    assert "| preset | 1.0 / 3.0 / 5.0 | 3.0 ± 2.0 |" in text
    assert "| tuned | 4.0 / 4.0 | 4.0 ± 0.0 |" in text


def test_the_tuning_gain_is_measured_on_seeds_the_search_did_not_see(
    capsys,
):
    tune_gain = _tune_gain()
    for seeds in (["0", "1"], ["1"]):
        with pytest.raises(SystemExit):
            tune_gain.parse_args(["--eval-seeds", *seeds])
        assert "Received: [" in capsys.readouterr().err
