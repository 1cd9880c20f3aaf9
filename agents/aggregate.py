"""Scores aggregated over runs, by rliable: interquartile means with
stratified-bootstrap confidence intervals, and performance profiles.

    python -m agents.plot runs/* --aggregate report/

(the report, its tables and figures: `agents.aggregate_report`).

Agarwal et al. (2021), "Deep reinforcement learning at the edge of the
statistical precipice": with the few seeds RL comparisons afford, report
intervals, and summarize by the interquartile mean (IQM), which an
outlying run moves less than the mean, yet which uses half of the runs.

**The score of a run** is the mean return of its last `window` training
episodes (all of them when fewer), `bench/compare.py`'s final return.
**Per task**, an algorithm's IQM over its runs (seeds), in return, with a
percentile-bootstrap interval (95 % by default). **Across tasks** returns
differ in scale (CartPole-v1 ends near 500, Pendulum-v1 starts near
-1200), so each score is normalized per task first,

    normalized = (score - random) / (reference - random),

0 a policy acting uniformly at random and 1 the reference: Gymnasium's
`reward_threshold`, the return at which the environment's authors count
it solved, or a stated score where it declares none (`REFERENCES`, printed
with every report). The random policy is the floor because it is what
learning nothing earns, whatever the algorithm, and it stays put as
algorithms are added (a min-max over the runs would move). Then the IQM
over all runs and tasks, the median of the per-task means, the mean and
the optimality gap (the mean shortfall below 1), with stratified-bootstrap
intervals (runs resampled within each task); an algorithm enters with the
same number of runs on each task, its first by seed. **Performance
profile**: the fraction of runs whose score exceeds each threshold τ.

**Bit for bit.** rliable 1.2's stratified bootstrap draws its resamples
from NumPy's global generator (`np.random.choice`) whatever `random_state`
it is given, so each estimate here seeds that generator with `seed` and
restores its state after: an algorithm's intervals depend on its own
scores, `reps` and `seed` only, not on the other algorithms of the report
nor on the caller's random state.
"""

import dataclasses
import json
import os
import re

import numpy as np
from numpy.typing import ArrayLike
from rliable import library, metrics

from agents import plot

# Bootstrap resamples per interval (rliable's default: 50000). With 2000 a
# report of 6 algorithms on 5 tasks takes about 20 s on one core.
REPS = 2000


@dataclasses.dataclass(frozen=True)
class Reference:
    """How one task's scores are normalized: `random` is 0, `reference` 1."""

    random: float
    reference: float
    source: str


_SOLVED = "Gymnasium's reward_threshold"
_ZOO = "stated (none declared): in rl-baselines3-zoo's benchmark, "

# random: the mean return of 100 episodes of uniformly random actions,
# seed 0 (tests/test_aggregate.py measures it again); the Atari game takes
# the random and human scores Atari results are normalized by.
REFERENCES = {
    "CartPole-v1": Reference(21.61, 475.0, _SOLVED),
    "LunarLander-v3": Reference(-192.5, 200.0, _SOLVED),
    "Pendulum-v1": Reference(
        -1233.66, -200.0, _ZOO + "tuned agents end at -150 to -215"
    ),
    "InvertedPendulum-v5": Reference(5.35, 950.0, _SOLVED),
    "InvertedDoublePendulum-v5": Reference(48.58, 9100.0, _SOLVED),
    "HalfCheetah-v5": Reference(-286.54, 4800.0, _SOLVED),
    "Hopper-v5": Reference(18.43, 3800.0, _SOLVED),
    "Walker2d-v5": Reference(1.76, 3500.0, _ZOO + "PPO's after 1M steps"),
    "ALE/Pong-v5": Reference(-20.7, 14.6, "Atari's random and human scores"),
    "MountainCarContinuous-v0": Reference(-33.25, 90.0, _SOLVED),
    "LunarLanderContinuous-v3": Reference(-199.18, 200.0, _SOLVED),
    "BipedalWalker-v3": Reference(-102.44, 300.0, _SOLVED),
    "box_tasks:PointMass-v0": Reference(
        -115.88,
        -13.79,
        "stated: bench/box_tasks.py's proportional-derivative controller",
    ),
}

# Metric name -> function of a (runs x tasks) matrix, across tasks.
ACROSS_TASKS = {
    "IQM": metrics.aggregate_iqm,
    "median": metrics.aggregate_median,
    "mean": metrics.aggregate_mean,
    "optimality gap": metrics.aggregate_optimality_gap,
}
_IQM = {"IQM": metrics.aggregate_iqm}  # per task, and on a single task


@dataclasses.dataclass(frozen=True)
class Estimate:
    """A point estimate and its confidence interval `[low, high]`."""

    point: float
    low: float
    high: float


@dataclasses.dataclass
class Report:
    """What `aggregate` found: `per_task`, task -> algorithm -> the IQM of
    its runs' scores (return); `runs`, algorithm -> task -> its runs;
    `summary`, algorithm -> metric -> estimate over `tasks` (every task all
    the algorithms ran, when two or more, normalized; else the report's one
    task, or none), each algorithm with `runs_per_task` runs of each;
    `references`, their normalization; `profiles`, algorithm -> `(fraction,
    low, high)` at each of `taus`; the bootstrap's settings."""

    per_task: dict
    runs: dict
    tasks: list
    runs_per_task: dict
    summary: dict
    references: dict
    taus: np.ndarray
    profiles: dict
    reps: int
    seed: int
    confidence: float

    @property
    def unit(self) -> str:
        """What `summary` and `profiles` measure."""
        if self.references:
            return "normalized score (0 random, 1 reference)"
        return f"return on {self.tasks[0]}" if self.tasks else ""


def final_score(returns: ArrayLike, window: int) -> float:
    """The mean of the last `window` returns (of all, when fewer)."""
    returns = np.asarray(returns, dtype=float)
    if not len(returns) or window < 1:
        raise ValueError(
            "a score needs at least one return and a window >= 1. Received: "
            f"{len(returns)} returns, window={window}"
        )
    return float(np.mean(returns[-window:]))


def normalized(scores: ArrayLike, reference: Reference) -> np.ndarray:
    """`(scores - random) / (reference - random)`: 0 at the random
    policy's return, 1 at the reference."""
    scale = reference.reference - reference.random
    return (np.asarray(scores, dtype=float) - reference.random) / scale


def task_of(run: plot.Run) -> str:
    """The run's environment: its `config.json`'s, or else the name of the
    directory holding it (`bench/compare.py`'s `<task>/<algo>-seed<N>`)."""
    if run.config is not None:
        return run.config["env"]
    return os.path.basename(os.path.dirname(os.path.abspath(run.directory)))


def _seed_order(run: plot.Run) -> tuple[int, str]:
    """Runs sort by seed (`config.json`'s, or a `-seed<N>` name), then by
    directory."""
    if run.config is not None and isinstance(run.config.get("seed"), int):
        return run.config["seed"], run.directory
    name = os.path.basename(os.path.normpath(run.directory))
    match = re.search(r"-seed(\d+)$", name)
    return (int(match.group(1)) if match else -1), run.directory


def scores_of_runs(runs: list[plot.Run], window: int) -> dict:
    """Algorithm -> task -> the scores (`final_score`) of its runs, by seed.

    Within a task, runs group as `agents.plot` groups seeds of one
    configuration; the algorithm is that group's label less the task (the
    algorithm and the settings that tell its configurations apart, or the
    directory's name less `-seed<N>`).
    """
    by_task = {}
    for run in runs:
        by_task.setdefault(task_of(run), []).append(run)
    scores = {}
    for task, members in by_task.items():
        for label, group in plot.group_runs(members).items():
            config = group[0].config
            algorithm = label
            if config is not None:  # "acktr CartPole-v1 damping=1.0"
                prefix = f"{config['algo']} {config['env']}"
                algorithm = config["algo"] + label[len(prefix) :]
            scores.setdefault(algorithm, {})[task] = [
                final_score(run.returns, window)
                for run in sorted(group, key=_seed_order)
            ]
    return scores


def load_references(path: str) -> dict:
    """`REFERENCES` with the tasks of a JSON file `{task: [random,
    reference]}` added or replaced; raises `ValueError` naming the file."""
    try:
        with open(path) as f:
            given = json.load(f)
        references = {
            task: Reference(float(low), float(high), f"given in {path}")
            for task, (low, high) in given.items()
        }
    except (OSError, ValueError, TypeError, AttributeError) as error:
        raise ValueError(
            f"--reference-scores wants a JSON file of {{task: [random, "
            f"reference]}}. Received: {path!r} ({error})"
        ) from None
    return {**REFERENCES, **references}


def _references_for(tasks: list, references: dict) -> dict:
    """Task -> its normalization (`ALE/Pong-v5` also answers to its
    directory name `ALE-Pong-v5`); raises `ValueError` naming the tasks
    without one."""
    by_name = {name.replace("/", "-"): r for name, r in references.items()}
    found = {t: by_name.get(t.replace("/", "-")) for t in tasks}
    missing = [t for t, r in found.items() if r is None]
    if missing:
        raise ValueError(
            "no random and reference score to normalize "
            f"{', '.join(map(repr, missing))} by, across tasks; give them "
            f'with --reference-scores FILE (JSON {{"{missing[0]}": [random, '
            f"reference], ...}}). Known: {', '.join(references)}"
        )
    for task, reference in found.items():
        if reference.reference == reference.random:
            raise ValueError(
                f"{task}'s reference score equals its random score, so no "
                f"score normalizes. Received: {reference}"
            )
    return found


def _bootstrap(estimate, matrix, argument, reps, seed, confidence):
    """`(point, low, high)` of one of rliable's stratified-bootstrap
    estimates (`library.get_interval_estimates` or
    `library.create_performance_profile`) of one `(runs x tasks)` matrix.

    rliable 1.2 draws its resamples from NumPy's global generator whatever
    `random_state` it is given, so that generator is seeded with `seed`
    here and its former state restored after."""
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        points, intervals = estimate(
            {"runs": matrix},
            argument,
            reps=reps,
            confidence_interval_size=confidence,
        )
    finally:
        np.random.set_state(state)
    low, high = intervals["runs"]
    return np.asarray(points["runs"]), low, high


def interval_estimates(
    matrix: np.ndarray,
    functions: dict,
    reps: int = REPS,
    seed: int = 0,
    confidence: float = 0.95,
) -> dict:
    """Metric name -> `Estimate` of `functions` (each of a `(runs x
    tasks)` matrix) on `matrix`, by rliable's stratified bootstrap: `reps`
    resamples of the runs within each task, percentile intervals."""

    def all_metrics(scores):
        return np.array([function(scores) for function in functions.values()])

    points, low, high = _bootstrap(
        library.get_interval_estimates,
        matrix,
        all_metrics,
        reps,
        seed,
        confidence,
    )
    return {
        name: Estimate(float(p), float(lo), float(hi))
        for name, p, lo, hi in zip(functions, points, low, high)
    }


def performance_profile(
    matrix: np.ndarray,
    taus: np.ndarray,
    reps: int = REPS,
    seed: int = 0,
    confidence: float = 0.95,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`(fraction, low, high)`: at each of `taus`, the fraction of the
    entries of `matrix` above it, and its stratified-bootstrap interval."""
    return _bootstrap(
        library.create_performance_profile, matrix, taus, reps, seed, confidence
    )


def _check(scores: dict, reps: int, confidence: float) -> None:
    """Raises `ValueError` unless every algorithm has two runs or more on
    each of its tasks, and the bootstrap's settings make sense."""
    if not scores or not all(scores.values()):
        raise ValueError(f"no runs to aggregate. Received: {scores}")
    if reps < 1 or not 0.0 < confidence < 1.0:
        raise ValueError(
            "reps must be >= 1 and confidence in (0, 1). Received: "
            f"reps={reps}, confidence={confidence}"
        )
    for algorithm, per_task in scores.items():
        for task, runs in per_task.items():
            if len(runs) < 2:
                raise ValueError(
                    "a confidence interval needs at least 2 runs (seeds) of "
                    f"an algorithm on a task. Received: {len(runs)} run of "
                    f"{algorithm!r} on {task!r}"
                )


def aggregate(
    scores: dict,
    references: dict | None = None,
    reps: int = REPS,
    seed: int = 0,
    confidence: float = 0.95,
) -> Report:
    """The rliable estimates of `scores`, algorithm -> task -> the runs'
    scores (as `scores_of_runs` gives them; each estimate seeded with
    `seed`, see the module's docstring).

    Args:
        scores: algorithm -> task -> a list of at least 2 run scores.
        references: task -> `Reference`, to normalize across tasks.
            Defaults to `REFERENCES`.
        reps: bootstrap resamples per interval. Defaults to `REPS`.
        seed: the bootstrap's seed. Defaults to `0`.
        confidence: the intervals' coverage. Defaults to `0.95`.

    Raises:
        ValueError: fewer than 2 runs somewhere, or a task aggregated
            across has no reference.
    """
    _check(scores, reps, confidence)
    references = REFERENCES if references is None else references
    settings = dict(reps=reps, seed=seed, confidence=confidence)
    tasks = list(dict.fromkeys(t for per in scores.values() for t in per))
    per_task = {
        task: {
            algorithm: interval_estimates(
                np.array(per[task], dtype=float)[:, None], _IQM, **settings
            )["IQM"]
            for algorithm, per in scores.items()
            if task in per
        }
        for task in tasks
    }
    # The summary: across the tasks every algorithm ran, when two or more,
    # or over the one task there is.
    common = [t for t in tasks if all(t in per for per in scores.values())]
    used = common if len(common) > 1 else tasks if len(tasks) == 1 else []
    used_references = {}
    if len(used) > 1:
        used_references = _references_for(used, references)
    counts = {}
    if used:
        counts = {a: min(len(p[t]) for t in used) for a, p in scores.items()}
    matrices = {
        a: _matrix(scores[a], used, n, used_references)
        for a, n in counts.items()
    }
    functions = ACROSS_TASKS if used_references else _IQM
    taus = _thresholds(matrices, bool(used_references))
    return Report(
        per_task=per_task,
        runs={a: {t: len(r) for t, r in p.items()} for a, p in scores.items()},
        tasks=used,
        runs_per_task=counts,
        summary={
            a: interval_estimates(m, functions, **settings)
            for a, m in matrices.items()
        },
        references=used_references,
        taus=taus,
        profiles={
            a: performance_profile(m, taus, **settings)
            for a, m in matrices.items()
        },
        **settings,
    )


def _matrix(per_task: dict, tasks: list, count: int, references: dict):
    """The `(count x tasks)` matrix of an algorithm's first `count` scores
    on each task, normalized when `references` are given."""
    columns = [np.array(per_task[t][:count], dtype=float) for t in tasks]
    if references:
        columns = [normalized(c, references[t]) for c, t in zip(columns, tasks)]
    return np.stack(columns, axis=1)


def _thresholds(matrices: dict, normalized: bool, points: int = 101):
    """`points` thresholds over the scores' range (for normalized scores,
    at least from 0 to 1)."""
    if not matrices:
        return np.zeros(0)
    values = np.concatenate([m.ravel() for m in matrices.values()])
    low, high = float(values.min()), float(values.max())
    if normalized:
        low, high = min(low, 0.0), max(high, 1.0)
    return np.linspace(low, high, points)
