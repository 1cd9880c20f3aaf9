"""The training and evaluation command lines, end to end on tiny budgets."""

import csv
import dataclasses
import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from agents import (
    ALGORITHMS,
    COMMON,
    PRESETS,
    Config,
    Summary,
    evaluate,
    load_saved_config,
    plot,
    resolve,
    train,
)
from agents.build import build

TINY = [
    "--num-envs",
    "2",
    "--n-steps",
    "20",
    "--hidden-units",
    "8",
    "--no-progress",
]


def _episodes(logdir):
    with open(os.path.join(logdir, "episodes.csv")) as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_train_exports_and_evaluate_runs_the_export(tmp_path, capsys):
    logdir = str(tmp_path / "run")
    code = train.main(
        TINY
        + [
            "--total-steps",
            "400",
            "--logdir",
            logdir,
            "--checkpoint-every",
            "4",
        ]
    )
    assert code == 0
    summary = capsys.readouterr().out
    assert "acktr on CartPole-v1 (seed 0): 400 steps" in summary
    for name in (
        "config.json",
        "episodes.csv",
        "learning_curve.png",
        "policy/saved_model.pb",
    ):
        assert os.path.exists(os.path.join(logdir, name)), name
    assert any(f.startswith("events.out.tfevents") for f in os.listdir(logdir))
    rows = _episodes(logdir)
    assert rows and all(int(r["env_steps"]) <= 400 for r in rows)

    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "agents.evaluate",
            os.path.join(logdir, "policy"),
            "--env",
            "CartPole-v1",
            "--episodes",
            "3",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "CartPole-v1: mean return" in result.stdout
    assert "over 3 episodes" in result.stdout


def _config(logdir):
    with open(os.path.join(logdir, "config.json")) as f:
        return json.load(f)


@pytest.mark.parametrize("algo", ALGORITHMS)
@pytest.mark.slow
def test_the_mujoco_preset_trains_gaussian_policies(algo, tmp_path, capsys):
    logdir = str(tmp_path / algo)
    argv = TINY + ["--algo", algo, "--preset", "mujoco", "--env", "Pendulum-v1"]
    argv += ["--total-steps", "240", "--logdir", logdir]
    # REINFORCE's returns are Monte-Carlo: it takes no GAE λ.
    gae_lambda = None if algo == "reinforce" else 0.9
    if gae_lambda is not None:
        argv += ["--gae-lambda", str(gae_lambda)]
    assert train.main(argv) == 0
    assert (
        f"{algo} on Pendulum-v1 (seed 0): 240 steps" in capsys.readouterr().out
    )
    config = _config(logdir)
    preset = {**COMMON, **PRESETS["mujoco"][algo]}
    # What the command line gives wins; the rest comes from the preset.
    assert (config["num_envs"], config["n_steps"]) == (2, 20)
    assert config["gae_lambda"] == gae_lambda
    for key in (
        "learning_rate",
        "value_learning_rate",
        "target_kl",
        "normalize_observations",
    ):
        assert config[key] == preset.get(key), key
    assert config["shared_torso"] is False
    assert os.path.exists(os.path.join(logdir, "policy", "saved_model.pb"))


def test_none_on_the_command_line_turns_a_preset_setting_off(tmp_path):
    logdir = str(tmp_path / "run")
    argv = TINY + ["--total-steps", "40", "--logdir", logdir]
    assert train.main(argv + ["--max-grad-norm", "none"]) == 0
    assert _config(logdir)["max_grad_norm"] is None


@pytest.mark.slow
def test_resume_continues_from_the_checkpoint(tmp_path, capsys):
    logdir = str(tmp_path / "run")
    assert (
        train.main(
            TINY + ["--algo", "a2c", "--total-steps", "200", "--logdir", logdir]
        )
        == 0
    )
    first = _episodes(logdir)
    assert (
        train.main(
            TINY
            + [
                "--algo",
                "a2c",
                "--total-steps",
                "400",
                "--logdir",
                logdir,
                "--resume",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "Resumed" in out and "at 200 steps" in out
    assert "a2c on CartPole-v1 (seed 0): 400 steps" in out
    rows = _episodes(logdir)
    assert rows[: len(first)] == first and len(rows) > len(first)


def test_bad_input_fails_cleanly_and_writes_nothing(tmp_path, capsys):
    logdir = tmp_path / "run"
    assert train.main(["--env", "CartPole-v7", "--logdir", str(logdir)]) == 2
    assert "Received: env_id='CartPole-v7'" in capsys.readouterr().err
    assert train.main(["--learning-rate", "-1", "--logdir", str(logdir)]) == 2
    assert "learning_rate=-1" in capsys.readouterr().err
    assert (
        train.main(["--env", "toy_envs:TwoKnobs-v0", "--logdir", str(logdir)])
        == 2
    )
    assert "MultiDiscrete" in capsys.readouterr().err
    assert train.main(["--resume", "--logdir", str(logdir)]) == 2
    assert not logdir.exists()
    with pytest.raises(SystemExit):
        train.main(["--algo", "sac"])
    with pytest.raises(SystemExit):
        train.main(["--preset", "pong"])
    for argv, received in (
        (["--algo", "trpo", "--critic", "joint"], "critic='joint'"),
        (["--warm-start", "--target-kl", "none"], "warm_start=True"),
        (["--value-minibatch-size", "0"], "value_minibatch_size=0"),
        (["--max-kl-ratio", "0"], "max_kl_ratio=0.0"),
        (["--fisher-rows", "0"], "fisher_rows=0"),
        (
            ["--algo", "a2c", "--damping-mode", "factored"],
            "--damping-mode is not a setting of a2c",
        ),
        (["--initial-log-std", "nan"], "initial_log_std=nan"),
        (
            ["--env", "Pendulum-v1", "--initial-log-std", "1e6"],
            "within [-40, 40]",
        ),
        (["--initial-log-std", "-1"], "initial_log_std=-1.0 for the action"),
        (["--network", "nature"], "shape (4,); use network 'mlp'"),
        (
            ["--algo", "a2c", "--weight-sharing", "reduce"],
            "--weight-sharing is not a setting of a2c",
        ),
        (
            ["--env", "toy_envs:BrightOrDark-v0", "--network", "nature"],
            "at least 36 x 36. Received: observations of shape (10, 10, 4)",
        ),
        (
            ["--env", "toy_envs:BrightOrDark-v0", "--network", "nature32"],
            "The nature32 network needs images of at least 36 x 36",
        ),
    ):
        assert train.main(argv + ["--logdir", str(logdir)]) == 2
        assert received in capsys.readouterr().err
    assert not logdir.exists()


def test_a_run_whose_every_update_was_skipped_is_not_a_success(
    tmp_path, capsys, monkeypatch
):
    from agents import training

    summary = Summary(
        algo="a2c",
        env="CartPole-v1",
        seed=0,
        env_steps=80,
        seconds=1.0,
        steps_per_second=80.0,
        episodes=3,
        mean_return_last_100=20.0,
        policy_dir=str(tmp_path / "policy"),
        skipped_updates=2,
        updates=2,
    )
    assert summary.learned_nothing
    monkeypatch.setattr(training, "run", lambda *args, **kwargs: summary)
    assert train.main(["--logdir", str(tmp_path / "run")]) == 1
    err = capsys.readouterr().err
    assert "every one of the 2 updates was skipped" in err
    partly = dataclasses.replace(summary, skipped_updates=1)
    assert not partly.learned_nothing
    monkeypatch.setattr(training, "run", lambda *args, **kwargs: partly)
    assert train.main(["--logdir", str(tmp_path / "run")]) == 0


@pytest.mark.slow
def test_kfac_critic_guard_and_observation_features(tmp_path, capsys):
    logdir = str(tmp_path / "run")
    argv = TINY + ["--preset", "mujoco", "--env", "Pendulum-v1"]
    argv += ["--total-steps", "120", "--logdir", logdir, "--critic", "kfac"]
    argv += ["--value-minibatch-size", "none", "--value-epochs", "3"]
    argv += ["--warm-start", "--time-feature", "--previous-observation"]
    assert train.main(argv) == 0
    config = _config(logdir)
    assert config["critic"] == "kfac"
    assert config["value_minibatch_size"] is None
    assert config["max_kl_ratio"] == 2.0  # the preset's guard
    assert config["warm_start"] and config["time_feature"]
    # The export's input is the 7 features: previous, current, t / T.
    with open(os.path.join(logdir, "policy", "policy_specs.pbtxt")) as f:
        sizes = re.findall(
            r'name: "observation"\s*shape \{\s*dim \{\s*size: (\d+)', f.read()
        )
    assert sizes and set(sizes) == {"7"}


@pytest.mark.slow
def test_initial_log_std_is_the_gaussian_policys_first_sigma(tmp_path):
    import numpy as np
    import tensorflow as tf

    logdir = str(tmp_path / "run")
    argv = TINY + ["--preset", "mujoco", "--env", "Pendulum-v1"]
    argv += ["--total-steps", "40", "--logdir", logdir]
    assert train.main(argv + ["--initial-log-std", "-1.5"]) == 0
    assert _config(logdir)["initial_log_std"] == -1.5
    config = Config(
        algo="trpo", env="Pendulum-v1", initial_log_std=-1.5, num_envs=1
    )
    py_env, tf_env, agent = build(config)
    py_env.close()
    observation = tf.zeros((3, *tf_env.observation_spec().shape))
    (distribution, _), _ = agent.actor_critic_network(observation)
    # σ = exp(log σ) in every row and action dimension, before any update.
    np.testing.assert_allclose(
        distribution.stddev().numpy(), np.full((3, 1), np.exp(-1.5)), rtol=1e-6
    )
    assert resolve(Config(env="Pendulum-v1")).initial_log_std == (
        PRESETS["mujoco"]["acktr"].get(
            "initial_log_std", COMMON["initial_log_std"]
        )
    )


@pytest.mark.slow
def test_an_existing_run_is_not_overwritten(tmp_path, capsys):
    logdir = str(tmp_path / "run")
    assert train.main(TINY + ["--total-steps", "40", "--logdir", logdir]) == 0
    before = os.listdir(os.path.join(logdir, "checkpoints"))
    assert train.main(TINY + ["--total-steps", "40", "--logdir", logdir]) == 2
    assert "--resume" in capsys.readouterr().err
    assert os.listdir(os.path.join(logdir, "checkpoints")) == before


@pytest.mark.slow
def test_sigterm_checkpoints_and_resume_picks_up(tmp_path, capsys):
    logdir = str(tmp_path / "run")
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "agents.train",
            *TINY,
            "--total-steps",
            "10000000",
            "--checkpoint-every",
            "1000000",
            "--logdir",
            logdir,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 120
    while time.time() < deadline and not os.path.exists(
        os.path.join(logdir, "episodes.csv")
    ):
        time.sleep(0.5)
    time.sleep(2.0)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130, err
    assert "checkpoint saved" in err
    steps = int(err.split("Interrupted at ")[1].split(" steps")[0])
    assert steps > 0
    total = steps + 80
    assert (
        train.main(
            TINY + ["--total-steps", str(total), "--logdir", logdir, "--resume"]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert f"at {steps} steps" in out and f"{total} steps in" in out


@pytest.mark.slow
def test_kfac_momentum_and_statistics_decay_reach_the_optimizer(tmp_path):
    logdir = str(tmp_path / "run")
    argv = TINY + ["--total-steps", "40", "--logdir", logdir]
    assert train.main(argv + ["--momentum", "0", "--stats-decay", "0.5"]) == 0
    config = _config(logdir)
    assert (config["momentum"], config["stats_decay"]) == (0.0, 0.5)
    py_env, _, agent = build(load_saved_config(logdir))
    py_env.close()
    assert (agent.optimizer.momentum, agent.optimizer.stats_decay) == (0.0, 0.5)
    for name, expected in (
        ("default", (0.0, 0.9)),
        ("mujoco", (0.0, 0.9)),
        ("atari", (0.9, 0.99)),
    ):
        preset = resolve(Config(algo="acktr", preset=name))
        assert (preset.momentum, preset.stats_decay) == expected, name
    assert resolve(Config(algo="a2c")).momentum is None  # not an a2c setting


def test_fisher_rows_and_damping_mode_reach_the_agent(tmp_path):
    logdir = str(tmp_path / "run")
    argv = TINY + ["--total-steps", "40", "--logdir", logdir]
    extra = ["--fisher-rows", "7", "--damping-mode", "factored"]
    assert train.main(argv + extra) == 0
    config = _config(logdir)
    assert (config["fisher_rows"], config["damping_mode"]) == (7, "factored")
    py_env, _, agent = build(load_saved_config(logdir))
    py_env.close()
    assert agent._fisher_rows == 7
    assert agent.optimizer.damping_mode == "factored"


def test_the_preset_follows_the_action_space_unless_one_is_given():
    def preset(**kwargs):
        return resolve(Config(**kwargs)).preset

    assert preset(env="Pendulum-v1") == "mujoco"  # Box
    assert preset(env="CartPole-v1") == "default"  # Discrete
    assert preset(env="Pendulum-v1", preset="default") == "default"
    mujoco = resolve(Config(algo="trpo", env="Pendulum-v1"))
    assert mujoco.n_steps == PRESETS["mujoco"]["trpo"]["n_steps"]
    with pytest.raises(ValueError, match="env_id='Pendulum-v9'"):
        resolve(Config(env="Pendulum-v9"))
    with pytest.raises(ValueError, match="env_id='Pendulum-v9'"):
        resolve(Config(env="Pendulum-v9", preset="mujoco"))


def test_total_steps_takes_the_names_users_type():
    for name in ("--total-steps", "--steps", "--n-timesteps", "-n"):
        config, _ = train.parse_args([name, "1234"])
        assert config.total_steps == 1234, name


@pytest.mark.slow
def test_the_command_line_prints_the_settings_it_resolved(tmp_path, capsys):
    logdir = str(tmp_path / "run")
    argv = TINY + ["--env", "Pendulum-v1", "--total-steps", "40"]
    assert train.main(argv + ["--damping", "0.5", "--logdir", logdir]) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert first.startswith("acktr on Pendulum-v1, preset mujoco: ")
    preset = PRESETS["mujoco"]["acktr"]
    assert f"kl_clip={preset['kl_clip']}," in first  # from the preset
    assert "damping=0.5," in first and "num_envs=2," in first  # as given


def test_help_lists_every_preset(capsys):
    with pytest.raises(SystemExit):
        train.parse_args(["--help"])
    text = capsys.readouterr().out
    for preset, algos in PRESETS.items():
        for algo, values in algos.items():
            key, value = next(iter(values.items()))
            assert f"  {preset}, {algo}: {key}={value}," in text


def test_a_config_file_gives_settings_the_command_line_overrides(tmp_path):
    saved = resolve(Config(algo="a2c", env="Pendulum-v1", seed=1, gamma=0.95))
    path = tmp_path / "config.json"
    path.write_text(json.dumps(dataclasses.asdict(saved)))
    config, _ = train.parse_args(
        ["--config", str(path), "--seed", "3", "--logdir", "elsewhere"]
    )
    expected = dataclasses.replace(saved, seed=3, logdir="elsewhere")
    assert resolve(config) == expected  # every saved setting, but the given
    path.write_text(json.dumps({"algo": "a2c", "learning_rat": 0.1}))
    assert train.main(["--config", str(path)]) == 2
    path.write_text("[1, 2]")
    with pytest.raises(ValueError, match="must hold a JSON object"):
        train.parse_args(["--config", str(path)])
    with pytest.raises(ValueError, match="cannot be read"):
        train.parse_args(["--config", str(tmp_path / "missing.json")])


def test_the_progress_bar_shows_one_rate_and_starts_after_tracing(
    tmp_path, capsys
):
    logdir = str(tmp_path / "run")
    argv = ["--num-envs", "2", "--n-steps", "20", "--hidden-units", "8"]
    assert train.main(argv + ["--total-steps", "200", "--logdir", logdir]) == 0
    bar = capsys.readouterr().err
    # 5 updates of 40 steps: the bar opens at 40 (after the first update,
    # mostly tracing) and ends at 200; its only rate is steps_per_s.
    counts = {int(n) for n in re.findall(r"\b(\d+)/200\b", bar)}
    assert min(counts) == 40 and max(counts) == 200
    assert "steps_per_s=" in bar
    assert "it/s" not in bar and "step/s" not in bar
    # 190 steps take the same 5 updates: the bar counts to where the run
    # stops, never past its total.
    logdir = str(tmp_path / "run190")
    assert train.main(argv + ["--total-steps", "190", "--logdir", logdir]) == 0
    bar = capsys.readouterr().err
    assert re.findall(r"\b(\d+)/(\d+|\?)", bar)[-1] == ("200", "200")
    assert "/?" not in bar and "/190" not in bar


@pytest.mark.parametrize(
    "command, argv, expected",
    [
        (train, ["--algo", "foo"], "invalid choice: 'foo'"),
        (train, ["--env-id", "x"], "--env-id x; did you mean --env?"),
        (train, ["--total_steps=5"], "did you mean --total-steps?"),
        (evaluate, [], "required: policy_dir"),
        (plot, ["run", "--bogus"], "unrecognized arguments: --bogus"),
    ],
)
def test_a_bad_option_is_one_line_pointing_to_help(
    command, argv, expected, capsys
):
    with pytest.raises(SystemExit) as exit_:
        command.main(argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and expected in err
    assert err.endswith(f"(see python -m {command.__name__} --help)\n")


def test_the_export_holds_back_only_its_known_harmless_messages(
    tmp_path, caplog, recwarn
):
    logdir = str(tmp_path / "run")
    argv = ["--num-envs", "2", "--n-steps", "5", "--hidden-units", "8"]
    argv += ["--total-steps", "10", "--no-progress", "--logdir", logdir]
    with caplog.at_level("INFO"):
        assert train.main(argv) == 0
    assert not [r for r in caplog.records if "Sanitizing" in r.getMessage()]
    assert not [w for w in recwarn if "StructuredValue" in str(w.message)]
    assert not [
        w for w in recwarn if '"is not" with a literal' in str(w.message)
    ]
    # Held back around the export only: absl logs again afterwards.
    from absl import logging as absl_logging

    with caplog.at_level("WARNING"):
        absl_logging.warning("still heard")
    assert "still heard" in caplog.text


def _scalars(logdir, tag):
    """`{step: value}` of a TensorBoard scalar in the run's event files."""
    import tensorflow as tf

    values = {}
    for name in os.listdir(logdir):
        if name.startswith("events.out.tfevents"):
            path = os.path.join(logdir, name)
            for event in tf.compat.v1.train.summary_iterator(path):
                for value in event.summary.value:
                    if value.tag == tag:
                        values[event.step] = float(
                            tf.make_ndarray(value.tensor)
                        )
    return values


def test_a_linear_schedule_with_a_target_kl_decays_the_target(tmp_path):
    # 4 updates of 40 steps: update k takes κ(k) = κ_end + (κ - κ_end)(1 -
    # k/4), κ_end = κ/10, logged at the environment step it ends at.
    logdir = str(tmp_path / "run")
    argv = TINY + ["--algo", "a2c", "--total-steps", "160"]
    argv += ["--lr-schedule", "linear", "--target-kl", "0.01"]
    assert train.main(argv + ["--logdir", logdir]) == 0
    target = _scalars(logdir, "train/target_kl")
    expected = {40 * (k + 1): 0.001 + 0.009 * (1 - k / 4) for k in range(4)}
    assert target.keys() == expected.keys()
    for step, value in expected.items():
        assert target[step] == pytest.approx(value, rel=1e-6)


def test_an_acktr_run_logs_its_curvature_and_an_a2c_run_none(tmp_path):
    # ACKTR's λ is fixed at its preset's damping; A2C has no K-FAC.
    logdirs = {}
    for algo in ("acktr", "a2c"):
        logdirs[algo] = str(tmp_path / algo)
        argv = TINY + ["--algo", algo, "--total-steps", "80"]
        assert train.main(argv + ["--logdir", logdirs[algo]]) == 0
    damping = _scalars(logdirs["acktr"], "kfac/damping")
    assert list(damping) == [40, 80]
    expected = PRESETS["default"]["acktr"]["damping"]
    assert all(v == pytest.approx(expected, rel=1e-6) for v in damping.values())
    assert _scalars(logdirs["acktr"], "kfac/step_size")
    failed = _scalars(logdirs["acktr"], "kfac/failed_refreshes")
    assert failed == {40: 0.0, 80: 0.0}
    assert _scalars(logdirs["a2c"], "kfac/damping") == {}
