"""`agents.aggregate`: rliable's interquartile mean, intervals and
performance profiles on hand-made scores, against hand-computed values;
the normalization and its reference scores; `agents.plot --aggregate` and
`bench/compare.py`'s aggregate report on fabricated run directories."""

import functools
import os
import sys

import gymnasium
import numpy as np
import pytest
from run_dirs import run_directory

from agents import aggregate, plot
from agents.aggregate import REFERENCES, Reference

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "bench"))

import compare  # noqa: E402

PNG = b"\x89PNG\r\n\x1a\n"
IDENTITY = Reference(0.0, 1.0, "identity")  # normalized == raw


def _run(directory, returns, config=None):
    """A run directory of `agents.train` with one episode per return."""
    rows = [(10 * (k + 1), r, 5, 0.1 * (k + 1)) for k, r in enumerate(returns)]
    return run_directory(directory, rows, config)


def _iqm(scores, reps=20):
    matrix = np.asarray(scores, dtype=float)
    matrix = matrix[:, None] if matrix.ndim == 1 else matrix
    return aggregate.interval_estimates(matrix, aggregate._IQM, reps=reps)[
        "IQM"
    ].point


def test_the_iqm_is_the_mean_of_the_middle_half_of_all_runs_and_tasks():
    # 8 scores pooled over 2 tasks: -50 1 2 3 | 4 5 7 100 sorted; the
    # middle half is 2, 3, 4, 5.
    matrix = np.array([[1.0, 100.0], [2.0, 5.0], [3.0, 7.0], [4.0, -50.0]])
    assert _iqm(matrix) == pytest.approx(3.5)
    report = aggregate.aggregate(
        {"a": {"x": [1.0, 2.0, 3.0, 4.0], "y": [100.0, 5.0, 7.0, -50.0]}},
        references={"x": IDENTITY, "y": IDENTITY},
        reps=20,
    )
    assert report.summary["a"]["IQM"].point == pytest.approx(3.5)


@pytest.mark.parametrize(
    "scores, expected",
    [
        # rliable trims floor(n / 4) scores from each end (scipy's
        # trim_mean at 25 %), so below 4 runs nothing is trimmed and the
        # IQM is the mean, and for n not divisible by 4 more than half stay.
        ([1.0, 1000.0], 500.5),
        ([1.0, 2.0, 1000.0], 1003.0 / 3),
        ([1.0, 2.0, 3.0, 1000.0], 2.5),  # 2 and 3
        ([1.0, 2.0, 3.0, 4.0, 1000.0], 3.0),  # 2, 3, 4
        ([1.0, 2.0, 3.0, 4.0, 5.0, 1000.0], 3.5),  # 2 .. 5
        ([-9.0, 1.0, 2.0, 3.0, 4.0, 5.0, 1000.0], 3.0),  # 1 .. 5
        ([0.0, 0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 90.0, 90.0], 3.5),  # 1 .. 6
    ],
)
def test_the_iqm_of_sizes_not_divisible_by_four(scores, expected):
    assert _iqm(scores) == pytest.approx(expected)
    assert _iqm(scores[::-1]) == pytest.approx(expected)  # order-free


def test_the_other_metrics_against_hand_computed_values():
    # Task x: 0.5, 1.5 (mean 1.0); task y: 0.8, 0.2 (mean 0.5).
    estimates = aggregate.interval_estimates(
        np.array([[0.5, 0.8], [1.5, 0.2]]), aggregate.ACROSS_TASKS, reps=20
    )
    assert estimates["mean"].point == pytest.approx(0.75)
    assert estimates["median"].point == pytest.approx(0.75)  # of 1.0, 0.5
    # Clipped at 1: 0.5, 1, 0.8, 0.2 average 0.625.
    assert estimates["optimality gap"].point == pytest.approx(0.375)


def test_intervals_hold_the_estimate_and_narrow_as_seeds_grow():
    rng = np.random.default_rng(0)
    widths = []
    for seeds in (4, 16, 64):
        matrix = rng.normal(size=(seeds, 3))
        estimates = aggregate.interval_estimates(
            matrix, aggregate.ACROSS_TASKS, reps=500
        )
        for estimate in estimates.values():
            assert estimate.low <= estimate.point <= estimate.high
        widths.append(estimates["IQM"].high - estimates["IQM"].low)
    # The width falls as 1 / sqrt(seeds): halves from 4 to 16 to 64.
    assert widths[0] > 1.5 * widths[1] > 2.25 * widths[2]


def test_the_bootstrap_is_seeded_per_algorithm_and_leaves_numpy_alone():
    scores = {
        "a": {"x": [1.0, 5.0, 2.0, 8.0], "y": [3.0, 0.0, 4.0, 9.0]},
        "b": {"x": [2.0, 2.5, 7.0], "y": [1.0, 6.0, 0.5]},
    }
    references = {"x": IDENTITY, "y": Reference(-1.0, 9.0, "given")}
    np.random.seed(123)
    before = np.random.get_state()[1].copy()
    first = aggregate.aggregate(scores, references, reps=200)
    assert np.array_equal(np.random.get_state()[1], before)
    again = aggregate.aggregate(scores, references, reps=200)
    alone = aggregate.aggregate({"a": scores["a"]}, references, reps=200)
    assert first.summary == again.summary and first.per_task == again.per_task
    for name in ("summary", "profiles"):
        assert repr(getattr(first, name)) == repr(getattr(again, name))
    # "a"'s intervals do not depend on "b" being in the report.
    assert alone.summary["a"] == first.summary["a"]
    other = aggregate.aggregate(scores, references, reps=200, seed=1)
    assert other.summary["a"]["IQM"] != first.summary["a"]["IQM"]


def test_the_performance_profile_is_the_fraction_of_runs_above_tau():
    matrix = np.array([[0.1, 0.5], [0.9, 1.2], [0.3, 0.5]])
    taus = np.array([-1.0, 0.3, 0.5, 1.0, 2.0])
    # Scores > tau, counted by hand: 6, 4 (0.3 is not above 0.3), 2, 1, 0.
    fraction, low, high = aggregate.performance_profile(matrix, taus, reps=50)
    np.testing.assert_allclose(fraction, np.array([6, 4, 2, 1, 0]) / 6)
    assert np.all(low <= fraction) and np.all(fraction <= high)


def test_normalization_maps_random_to_0_and_the_reference_to_1():
    cartpole = aggregate.REFERENCES["CartPole-v1"]
    np.testing.assert_allclose(
        aggregate.normalized([21.61, 475.0, 248.305, 928.39], cartpole),
        [0.0, 1.0, 0.5, 2.0],
    )
    pendulum = aggregate.REFERENCES["Pendulum-v1"]  # negative returns
    np.testing.assert_allclose(
        aggregate.normalized([-1233.66, -200.0, -716.83], pendulum),
        [0.0, 1.0, 0.5],
    )
    # Across tasks the summary is of the normalized scores: x's 10, 30
    # are 0.25, 0.75 between 0 and 40; y's -1, 3 are 0, 1 between -1, 3.
    report = aggregate.aggregate(
        {"a": {"x": [10.0, 30.0], "y": [-1.0, 3.0]}},
        {"x": Reference(0.0, 40.0, "s"), "y": Reference(-1.0, 3.0, "s")},
        reps=20,
    )
    assert report.summary["a"]["mean"].point == pytest.approx(0.5)
    assert report.per_task["x"]["a"].point == pytest.approx(20.0)  # return
    assert report.unit.startswith("normalized score")


@pytest.mark.parametrize(
    "task",
    [
        "CartPole-v1",
        "LunarLander-v3",
        "Pendulum-v1",
        "InvertedPendulum-v5",
        "InvertedDoublePendulum-v5",
        "Hopper-v5",
        "Walker2d-v5",
        "MountainCarContinuous-v0",
        "LunarLanderContinuous-v3",
        "box_tasks:PointMass-v0",
        pytest.param("HalfCheetah-v5", marks=pytest.mark.slow),
        pytest.param("BipedalWalker-v3", marks=pytest.mark.slow),
    ],
)
def test_the_random_scores_are_what_random_actions_earn(task):
    # 100 episodes of uniformly random actions, seed 0, as the table says.
    env = gymnasium.make(task)
    env.action_space.seed(0)
    returns = []
    for episode in range(100):
        env.reset(seed=0 if episode == 0 else None)
        total, done = 0.0, False
        while not done:
            _, reward, terminated, truncated, _ = env.step(
                env.action_space.sample()
            )
            total, done = total + float(reward), terminated or truncated
        returns.append(total)
    env.close()
    assert (
        round(float(np.mean(returns)), 2) == aggregate.REFERENCES[task].random
    )
    threshold = gymnasium.spec(task.split(":")[-1]).reward_threshold
    if threshold is not None:
        assert aggregate.REFERENCES[task].reference == threshold


def test_an_algorithm_enters_every_task_with_its_first_runs_by_seed():
    report = aggregate.aggregate(
        {"a": {"x": [1.0, 2.0, 3.0, 50.0, 60.0], "y": [4.0, 5.0, 6.0]}},
        {"x": IDENTITY, "y": IDENTITY},
        reps=20,
    )
    assert report.runs_per_task == {"a": 3} and report.runs["a"]["x"] == 5
    assert report.summary["a"]["mean"].point == pytest.approx(3.5)
    assert report.per_task["x"]["a"].point == pytest.approx(
        np.mean([2.0, 3.0, 50.0])  # all 5 runs on the task alone
    )


def test_scores_of_runs_group_by_task_and_algorithm(tmp_path):
    bench = tmp_path / "bench"
    for seed, returns in ((0, [1, 2, 3]), (2, [5, 7]), (10, [9, 9, 0])):
        _run(bench / "CartPole-v1" / f"ours-acktr-seed{seed}", returns)
    _run(bench / "Pendulum-v1" / "ours-acktr-seed0", [-5, -3])
    base = dict(algo="trpo", env="CartPole-v1", damping=0.1, total_steps=30)
    for seed in (1, 0):
        _run(tmp_path / f"t{seed}", [seed, 4.0], {**base, "seed": seed})
    _run(tmp_path / "d", [8.0], {**base, "seed": 0, "damping": 1.0})
    runs = [
        plot.load_run(str(d))
        for d in sorted(bench.glob("*/*")) + sorted(tmp_path.glob("[td]*"))
    ]
    scores = aggregate.scores_of_runs(runs, window=2)
    assert scores == {
        # The mean of the last 2 returns, runs by seed (10 after 2).
        "ours-acktr": {"CartPole-v1": [2.5, 6.0, 4.5], "Pendulum-v1": [-4.0]},
        "trpo damping=0.1": {"CartPole-v1": [2.0, 2.5]},
        "trpo damping=1.0": {"CartPole-v1": [8.0]},
    }


def test_fewer_than_two_runs_make_no_interval():
    with pytest.raises(ValueError, match="Received: 1 run of 'a' on 'y'"):
        aggregate.aggregate({"a": {"x": [1.0, 2.0], "y": [3.0]}})
    with pytest.raises(ValueError, match="Received: reps=0"):
        aggregate.aggregate({"a": {"x": [1.0, 2.0]}}, reps=0)


def _bench_runs(tmp_path, tasks=("CartPole-v1", "Pendulum-v1"), seeds=2):
    directories = []
    for task in tasks:
        for algo, offset in (("ours-acktr", 0.0), ("sb3-ppo", 100.0)):
            for seed in range(seeds):
                directories.append(
                    _run(
                        tmp_path / "runs" / task / f"{algo}-seed{seed}",
                        [offset + 10 * seed, offset + 20 * seed + 5],
                    )
                )
    return directories


def test_the_command_line_writes_the_report_and_its_figures(tmp_path, capsys):
    out = tmp_path / "report"
    argv = _bench_runs(tmp_path) + ["--reps", "100"]
    code = plot.main(argv + ["--aggregate", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    assert printed.endswith(f"wrote {out}\n")
    with open(out / "aggregate.md") as f:
        text = f.read()
    assert printed.startswith(text)
    assert (
        "| CartPole-v1 | 21.61 | 475 | Gymnasium's reward_threshold |" in text
    )
    assert "mean return of its last 100 training episodes" in text
    for name in ("intervals.png", "profile.png"):
        with open(out / name, "rb") as f:
            assert f.read(8) == PNG
        assert f"![{name}]({name})" in text
    # One task: the summary and the profile are in return, not normalized.
    single = tmp_path / "single"
    runs = _bench_runs(tmp_path / "one", tasks=("Acrobot-v1",))
    assert plot.main(runs + ["--aggregate", str(single), "--reps", "50"]) == 0
    assert "Across" not in (single / "aggregate.md").read_text()
    with open(single / "profile.png", "rb") as f:
        assert f.read(8) == PNG


def test_the_command_line_names_the_bad_input_and_writes_nothing(
    tmp_path, capsys
):
    out = str(tmp_path / "report")
    runs = _bench_runs(tmp_path)
    references = tmp_path / "references.json"
    references.write_text('{"Acrobot-v1": [-500, -100]}')
    unknown = _bench_runs(tmp_path / "u", tasks=("Acrobot-v1", "Foo-v0"))
    bad = [
        (runs[:1] + runs[2:], "Received: 1 run of 'ours-acktr' on 'Cart"),
        (runs + ["--reps", "0"], "Received: reps=0"),
        (unknown, "score to normalize 'Acrobot-v1', 'Foo-v0' by"),
        (unknown + ["--reference-scores", str(references)], "'Foo-v0' by"),
        (runs + ["--reference-scores", str(runs[0])], "--reference-scores"),
        (runs + ["--reference-scores", str(tmp_path / "no.json")], "no.json"),
        (runs + [str(_run(tmp_path / "empty", []))], "no finished episode"),
    ]
    for argv, expected in bad:
        assert plot.main(["--aggregate", out, "--reps", "20"] + argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and expected in err, err
        assert not os.path.exists(out)
    references.write_text('{"Acrobot-v1": [-500, -100], "Foo-v0": [0, 1]}')
    good = unknown + ["--reference-scores", str(references), "--reps", "20"]
    assert plot.main(good + ["--aggregate", out]) == 0
    assert "| Foo-v0 | 0 | 1 | given in" in capsys.readouterr().out
    assert plot.main(runs + ["--aggregate", str(references)]) == 2
    assert "wants a directory" in capsys.readouterr().err


def test_compare_reports_the_aggregate_beside_the_task_plots(
    tmp_path, monkeypatch
):
    monkeypatch.setattr(compare, "RESULTS", str(tmp_path / "results"))
    monkeypatch.setattr(compare, "ROOT", str(tmp_path))
    quick = functools.partial(aggregate.aggregate, reps=50)
    monkeypatch.setattr(aggregate, "aggregate", quick)
    tables = {
        task: {
            algo: [{"final": offset + k} for k in range(3)]
            for algo, offset in (("ours-acktr", 100.0), ("sb3-ppo", 300.0))
        }
        for task in ("CartPole-v1", "InvertedPendulum-v5")
    }
    text = compare.aggregate_report("default", tables, quick=True)
    normalized = np.concatenate(
        [
            aggregate.normalized([100.0, 101.0, 102.0], REFERENCES[task])
            for task in tables
        ]
    )
    iqm = np.mean(np.sort(normalized)[1:5])  # 6 scores: the middle 4
    assert f"| ours-acktr | 3 | {iqm:.2f} [" in text
    assert "![profile.png](results/quick/profile.png)" in text
    for name in ("intervals.png", "profile.png"):
        assert os.path.exists(tmp_path / "results" / "quick" / name)
    one_seed = {t: {a: r[:1] for a, r in x.items()} for t, x in tables.items()}
    text = compare.aggregate_report("default", one_seed, quick=True)
    assert text.startswith("No aggregate over runs: a confidence interval")


def test_the_point_mass_reference_is_what_its_controller_earns():
    # The stated reference of bench/box_tasks.py's task: its
    # proportional-derivative controller, 100 episodes from seed 0.
    import box_tasks

    env = gymnasium.make("box_tasks:PointMass-v0")
    returns = []
    for episode in range(100):
        observation, _ = env.reset(seed=0 if episode == 0 else None)
        total, done = 0.0, False
        while not done:
            action = box_tasks.reference_controller(observation)
            observation, reward, terminated, truncated, _ = env.step(action)
            total, done = total + float(reward), terminated or truncated
        returns.append(total)
    env.close()
    reference = aggregate.REFERENCES["box_tasks:PointMass-v0"].reference
    assert round(float(np.mean(returns)), 2) == reference


def test_a_point_mass_step_by_hand():
    import box_tasks

    env = box_tasks.PointMass()
    env.reset(seed=1)
    env._position, env._velocity = np.array([0.5, -0.5]), np.array([1.0, 0.0])
    env._goal = np.array([0.0, 0.0])
    observation, reward, terminated, truncated, _ = env.step([2.0, -1.0])
    # The force is clipped to (1, -1): v = 0.9 (1, 0) + 0.1 (1, -1)
    # = (1, -0.1), p = (0.5, -0.5) + 0.1 v = (0.6, -0.51).
    np.testing.assert_allclose(
        observation, [0.6, -0.51, 1.0, -0.1, 0.0, 0.0], rtol=1e-6
    )
    np.testing.assert_allclose(reward, -np.hypot(0.6, 0.51) - 0.01 * 2)
    assert not terminated and not truncated
