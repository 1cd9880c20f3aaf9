"""`Config` as the one declaration of a run: the command line it generates,
preset resolution as an explicit step, and the Python API's defaults
against what the command line builds."""

import argparse
import dataclasses
import json
import os

import gymnasium
import numpy as np
import pytest
from tf_agents.environments import tf_py_environment

import agents.envs
from agents import (
    ALGORITHMS,
    FROM_PRESET,
    A2CAgent,
    AcktrAgent,
    Config,
    GymnasiumEnvironment,
    NpgAgent,
    PpoAgent,
    ReinforceAgent,
    TrpoAgent,
    defaults,
    load_saved_config,
    resolve,
    train,
)
from agents.build import build
from agents.networks import ActorCriticNetwork


def _parser():
    """The parser `train.parse_args` generates."""
    captured = {}
    parse = argparse.ArgumentParser.parse_args

    def grab(self, *args, **kwargs):
        captured["parser"] = self
        return parse(self, *args, **kwargs)

    argparse.ArgumentParser.parse_args = grab
    try:
        train.parse_args([])
    finally:
        argparse.ArgumentParser.parse_args = parse
    return captured["parser"]


def test_every_option_but_three_is_a_config_field_of_the_same_name():
    destinations = {
        action.dest: action.option_strings
        for action in _parser()._actions
        if action.dest != "help"
    }
    fields = [field.name for field in dataclasses.fields(Config)]
    assert set(destinations) == {*fields, "resume", "no_progress", "config"}
    for name in fields:
        assert "--" + name.replace("_", "-") in destinations[name], name
    assert destinations["total_steps"] == [
        "--total-steps",
        "--steps",
        "--n-timesteps",
        "-n",
    ]


def test_the_help_names_the_algorithms_that_use_an_option(capsys):
    with pytest.raises(SystemExit):
        train.parse_args(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--damping DAMPING acktr: K-FAC's damping λ; trpo: λ added" in text
    assert "--max-kl MAX_KL trpo: the trust-region radius δ" in text
    assert "--seed SEED default: 0" in text
    damping = Config.__dataclass_fields__["damping"].metadata["option"]
    assert damping.algos == ("acktr", "trpo", "npg")


def test_options_parse_as_their_fields_types():
    config, args = train.parse_args(
        ["--hidden-units", "8,16", "--target-kl", "none", "--no-shared-torso"]
        + ["--value-minibatch-size", "32", "--processes", "--logdir", "none"]
    )
    assert config.hidden_units == (8, 16) and config.target_kl is None
    assert config.shared_torso is False and config.processes is True
    assert config.value_minibatch_size == 32
    assert config.logdir == "none"  # a directory's name, not None
    assert args.given == [
        "hidden_units",
        "target_kl",
        "shared_torso",
        "value_minibatch_size",
        "processes",
        "logdir",
    ]
    assert config.num_envs is FROM_PRESET  # not given


def test_a_config_checks_what_it_is_given_and_makes_no_environment(
    monkeypatch,
):
    def refuse(*args, **kwargs):
        raise AssertionError("an environment was made")

    monkeypatch.setattr(gymnasium, "make", refuse)
    monkeypatch.setattr(agents.envs, "check_env_id", refuse)
    config = Config(algo="trpo", env="Pendulum-v1", num_envs=3)
    assert config.preset == "auto" and not config.resolved
    with pytest.raises(ValueError, match="resolve"):
        config.describe()
    with pytest.raises(ValueError, match="num_envs=0"):
        Config(num_envs=0)
    for algo in ("trpo", "npg"):
        with pytest.raises(ValueError, match=f"{algo} .*critic='joint'"):
            Config(algo=algo, critic="joint")
    with pytest.raises(ValueError, match=r"preset=.pong."):
        Config(preset="pong")


@pytest.mark.parametrize(
    "values, message",
    [
        ({"env": 5}, "env must be a string. Received: env=5"),
        ({"gamma": "0.99"}, "gamma must be a number. Received: gamma='0.99'"),
        ({"hidden_units": "64"}, "hidden_units must be a tuple of integers"),
        ({"hidden_units": [64, 6.5]}, "a tuple of integers"),
        ({"num_envs": 4.0}, "num_envs must be an integer"),
        ({"normalize_advantages": 1}, "must be true or false"),
        ({"seed": True}, "seed must be an integer"),
    ],
)
def test_values_of_the_wrong_type_are_named(values, message, tmp_path, capsys):
    with pytest.raises(ValueError, match=message.replace(".", r"\.")):
        Config(**values)
    # A --config file goes through the same check: one line, exit 2.
    path = tmp_path / "config.json"
    path.write_text(json.dumps(values))
    logdir = tmp_path / "run"
    assert train.main(["--config", str(path), "--logdir", str(logdir)]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not logdir.exists()


def test_numpy_numbers_are_taken_as_the_python_ones_json_writes():
    config = Config(
        gamma=np.float32(0.5), num_envs=np.int64(3), learning_rate=1
    )
    assert config.num_envs == 3 and type(config.num_envs) is int
    assert config.gamma == 0.5 and type(config.gamma) is float
    assert config.learning_rate == 1
    json.dumps([config.gamma, config.num_envs])  # as config.json holds them


def test_resolve_applies_the_preset_once():
    config = Config(algo="trpo", env="Pendulum-v1", num_envs=3, seed=2)
    resolved = resolve(config)
    assert resolved.resolved and resolved.preset == "mujoco"
    assert resolved.num_envs == 3  # given
    assert resolved.n_steps == 625  # the preset's
    assert resolved.learning_rate is None  # not a trpo setting
    assert resolved.logdir == os.path.join("runs", "trpo-Pendulum-v1-seed2")
    assert resolve(resolved) == resolved
    assert config.n_steps is FROM_PRESET  # left as it was
    with pytest.raises(ValueError, match="warm_start=True"):
        resolve(Config(warm_start=True))  # the default preset has no κ


def test_a_setting_the_algorithm_does_not_take_is_refused(tmp_path, capsys):
    # On the command line: one line naming the option and who takes it.
    with pytest.raises(ValueError) as error:
        train.parse_args(["--algo", "acktr", "--max-kl", "0.3"])
    assert str(error.value) == (
        "--max-kl is not a setting of acktr (only of trpo, npg). Received: "
        "--max-kl 0.3 with algo acktr"
    )
    logdir = tmp_path / "run"
    assert (
        train.main(
            ["--algo", "trpo", "--kl-clip", "0.1", "--logdir", str(logdir)]
        )
        == 2
    )
    assert capsys.readouterr().err.count("\n") == 1
    assert not logdir.exists()
    # The algorithm may come from --config; a file may hold any field (a
    # run's config.json holds them all): kept there, and ignored.
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"algo": "trpo", "kl_clip": 0.5}))
    config, _ = train.parse_args(["--config", str(path), "--max-kl", "0.02"])
    assert (config.algo, config.kl_clip, config.max_kl) == ("trpo", 0.5, 0.02)
    with pytest.raises(ValueError, match="--kl-clip is not a setting of trpo"):
        train.parse_args(["--config", str(path), "--kl-clip", "0.1"])


def test_a_config_json_of_the_previous_version_loads(tmp_path):
    # The file a trpo run wrote before the options were declared on the
    # fields: `damping` is CG's for trpo, K-FAC's for acktr.
    # fmt: off
    saved = {
        "algo": "trpo", "env": "Pendulum-v1", "preset": "mujoco", "seed": 0,
        "total_steps": 160, "num_envs": 2, "n_steps": 20,
        "learning_rate": None, "critic": "adam", "value_learning_rate": 0.001,
        "value_epochs": 5, "value_minibatch_size": 64,
        "lr_schedule": "constant", "target_kl": None, "warm_start": False,
        "ent_coef": 0.0, "vf_coef": 0.5, "gamma": 0.99, "gae_lambda": 0.97,
        "normalize_advantages": True, "max_grad_norm": 0.5, "kl_clip": None,
        "damping": 0.1, "inverse_update_freq": None, "cold_steps": None,
        "momentum": None, "stats_decay": None, "vf_fisher_coef": 1.0,
        "max_kl": 0.01, "max_kl_ratio": None, "hidden_units": [8],
        "shared_torso": False, "normalize_observations": True,
        "time_feature": False, "previous_observation": False,
        "initial_log_std": 0.0, "processes": False, "env_timeout": None,
        "checkpoint_every": 50, "logdir": str(tmp_path),
    }
    # fmt: on
    (tmp_path / "config.json").write_text(json.dumps(saved))
    config = load_saved_config(str(tmp_path))
    assert config == resolve(
        Config(
            algo="trpo",
            env="Pendulum-v1",
            total_steps=160,
            num_envs=2,
            n_steps=20,
            max_grad_norm=0.5,
            hidden_units=(8,),
            logdir=str(tmp_path),
        )
    )
    # The settings added since: PPO's are none of trpo's (None); reward
    # scaling is off in every preset trpo has; the network is picked for
    # the observations, as it was.
    added = dict.fromkeys(
        ("objective", "clip_range", "kl_penalty_target", "n_epochs"), None
    )
    assert dataclasses.asdict(config) == {
        **saved,
        **added,
        "minibatch_size": None,
        "baseline": None,
        "scale_rewards": False,
        "network": "auto",
        "weight_sharing": "expand",
        "fisher_rows": None,
        "damping_mode": "eigen",
        "hidden_units": (8,),
    }


AGENTS = {
    "acktr": AcktrAgent,
    "a2c": A2CAgent,
    "trpo": TrpoAgent,
    "npg": NpgAgent,
    "ppo": PpoAgent,
    "reinforce": ReinforceAgent,
}


def _settings(agent) -> dict:
    """The agent's hyperparameters: its plain attributes, and the
    configurations of its optimizers (without their unique names)."""
    plain = (bool, int, float, str, type(None))
    values = {k: v for k, v in vars(agent).items() if isinstance(v, plain)}
    for name in ("optimizer", "value_optimizer"):
        optimizer = getattr(agent, name)
        values[name] = None
        if optimizer is not None:
            config = optimizer.get_config()
            del config["name"]  # unique per instance
            values[name] = (type(optimizer).__name__, config)
    values["warming"] = float(agent._warming.numpy())
    return values


@pytest.mark.parametrize("algo", ALGORITHMS)
def test_the_python_defaults_are_what_the_command_line_builds(algo):
    """`python -m agents.train --algo ALGO` on a discrete-action task (the
    `default` preset) and `ALGOAgent(specs, network)` from Python with
    every default: the same optimizers and hyperparameters."""
    py_env, _, built = build(Config(algo=algo, env="CartPole-v1"))
    py_env.close()
    py_env = GymnasiumEnvironment("CartPole-v1", num_envs=2)
    env = tf_py_environment.TFPyEnvironment(py_env)
    network = ActorCriticNetwork(env.observation_spec(), env.action_spec())
    agent = AGENTS[algo](env.time_step_spec(), env.action_spec(), network)
    py_env.close()
    assert _settings(agent) == _settings(built)
    # The network's defaults are the preset's too (64-64, one torso each,
    # no observation normalizer).
    shapes = [v.shape for v in built.actor_critic_network.variables]
    assert [v.shape for v in network.variables] == shapes
    # One layer of defaults: the preset's values reached the agent.
    preset = defaults(algo)
    assert agent._gae_lambda == preset["gae_lambda"]
    assert agent._normalize_advantages == preset["normalize_advantages"]
    assert (agent.value_optimizer is None) == (preset["critic"] == "joint")
    if algo == "acktr":
        assert agent.optimizer.damping == preset["damping"]
        assert agent.max_kl == preset["max_kl_ratio"] * preset["kl_clip"]
    np.testing.assert_equal(float(agent._ent_coef), preset["ent_coef"])
