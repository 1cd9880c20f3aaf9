"""Every Python block of the README runs, on a short version of its
budget, and does what the README says of it."""

import csv
import os

import keras
import numpy as np
import pytest
import readme

from agents import Config, run

# A distinctive line of each block -> the test that runs it.
RUN_BY = {
    "x = np.random.default_rng(0).normal(size=(2048, 64))": "the K-FAC tour",
    "model = keras_kfac.TrueFisherModel(net)": "the K-FAC tour",
    "keras.models.clone_model(net)": "the K-FAC tour",
    "tensorflow_probability": (
        "test_evaluate.py::test_the_readme_loads_a_policy_in_plain_tensorflow"
    ),
    'Config(algo="acktr", env="HalfCheetah-v5"': "the Python API",
    "RolloutCollector(env, agent.collect_policy": "the tf-agents loop",
}


def lines_of(code: str) -> list[str]:
    """The lines of `RUN_BY` that `code` holds."""
    return [line for line in RUN_BY if line in code]


def test_every_block_is_run_by_a_test():
    for code in readme.blocks():
        owners = {RUN_BY[line] for line in lines_of(code)}
        assert len(owners) == 1, f"not one test runs this README block:\n{code}"


def test_the_k_fac_tour_trains_and_saves(tmp_path, monkeypatch):
    # The three K-FAC blocks in order, in one namespace as a user runs
    # them: the KL-clipped KFAC on Keras-K-FAC layers, then the true
    # Fisher of a converted model, then the adaptive KFAC.
    monkeypatch.chdir(tmp_path)
    tour = [
        code
        for code in readme.blocks()
        if any(RUN_BY[line] == "the K-FAC tour" for line in lines_of(code))
    ]
    assert len(tour) == 3
    namespace = {}
    losses = []
    for code in tour:
        exec(compile(code, "README.md", "exec"), namespace)
        history = namespace["model"].history.history
        losses.append((history["loss"][0], history["loss"][-1]))
    # Each trains: its loss falls over its 5 epochs.
    for first, last in losses:
        assert last < 0.8 * first
    assert os.path.exists(tmp_path / "m.keras")
    assert isinstance(namespace["model"], keras.Model)
    assert namespace["model"].history.history["accuracy"][-1] > 0.5


@pytest.mark.slow
def test_the_python_api_block_trains_resumes_and_exports(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code = readme.shortened(
        readme.block("**From Python.**"),
        # One update of the mujoco preset's 4 x 625 steps, then one more.
        {
            "total_steps=1_000_000": "total_steps=2_500",
            "total_steps=2_000_000": "total_steps=5_000",
        },
    )
    exec(compile(code, "README.md", "exec"), {})
    logdir = tmp_path / "runs" / "acktr-HalfCheetah-v5-seed0"
    assert (logdir / "policy" / "saved_model.pb").exists()
    with open(logdir / "config.json") as file:
        assert '"total_steps": 5000' in file.read()


@pytest.mark.slow
def test_the_tf_agents_loop_is_the_command_lines_run(tmp_path, capsys):
    # The README's own loop, 3 batches instead of 30, against agents.run
    # of the same settings: the defaults are the command line's, so the
    # episodes are the same, return for return.
    code = readme.shortened(
        readme.block("In a tf-agents program the agents are like any other"),
        {"range(30)": "range(3)"},
    )
    namespace = {}
    exec(compile(code, "README.md", "exec"), namespace)
    assert "mean return of the last 20 episodes" in capsys.readouterr().out
    logdir = str(tmp_path / "cli")
    run(
        Config(
            algo="acktr",
            env="CartPole-v1",
            seed=0,
            total_steps=3 * 1024,
            logdir=logdir,
        ),
        progress=False,
    )
    with open(os.path.join(logdir, "episodes.csv")) as file:
        cli = [float(row["return"]) for row in csv.DictReader(file)]
    assert len(cli) > 20
    np.testing.assert_array_equal(namespace["returns"], cli)
