"""Our agents vs SB3 A2C/PPO/TRPO and tf-agents PPO, per task.

    python bench/compare.py            # every task, 3 seeds, full budgets
    python bench/compare.py --quick    # 1 seed, small budgets: minutes
    python bench/compare.py --tasks CartPole-v1 --algos ours-acktr sb3-ppo
    python bench/compare.py --suite mujoco --jobs 1   # the paper's MuJoCo
    python bench/compare.py --suite box --jobs 1      # presets for Box

Four suites of tasks. `default`: five small tasks on budgets two cores
allow for six algorithms, results in `bench/results/compare/full/`
(`quick/`). `mujoco`: the ACKTR paper's continuous-control comparison at
its budget, 1M environment steps on InvertedPendulum-v5,
InvertedDoublePendulum-v5, HalfCheetah-v5, Hopper-v5 and Walker2d-v5, for
our ACKTR, A2C and TRPO and, as what users pick instead, SB3 PPO and
sb3-contrib TRPO with rl-baselines3-zoo's settings; results in
`bench/results/compare/mujoco/` (`mujoco-quick/`). `atari`: the paper's
Atari setting on Pong for the budget two cores allow (1M environment steps,
4M frames, where the paper ran 10M steps), our ACKTR against our A2C, and
SB3's A2C and PPO with rl-baselines3-zoo's Atari settings beside them
(our PPO's `atari` preset is the zoo's), one seed each unless
`--seeds`; results in `bench/results/compare/atari/`.
`box`: Box action spaces beyond MuJoCo (Pendulum-v1,
MountainCarContinuous-v0, LunarLanderContinuous-v3, BipedalWalker-v3 and
`bench/box_tasks.py`'s PointMass-v0), our ACKTR with the `default` preset
against it with the `mujoco` preset, the choice `--preset auto` makes for
them; results in `bench/results/compare/box/`. Every suite takes any of
the algorithms (`--algos`): `ours-reinforce`, `ours-ppo`, `ours-npg` too.

Each run is a subprocess of one runner (`bench/run_ours.py`,
`bench/run_sb3.py`, `bench/run_tfagents_ppo.py`), `--jobs` at a time, each
on one thread, task by task (so that complete tasks come first). A run
whose `summary.json` exists is not run again, so an interrupted benchmark
continues where it stopped (`--rerun` to redo).

Per task and algorithm the `default` suite reports, over seeds:

- steps to target: the environment steps at which the mean return of the
  last `window` training episodes first reaches the target (Gymnasium's
  reward threshold where there is one, else a stated one); `-` where a
  seed never did within the budget;
- final return: the mean return of the last `window` training episodes;
- steps/s: environment steps per wall second of training (median);

The `mujoco` suite reports instead, over seeds:

- final return, as above (mean ± std over seeds);
- area under the curve (AUC): the mean, over 100 evenly spaced
  environment steps (budget/100, 2·budget/100, ..., budget), of the
  moving mean return of the last `window` training episodes as it stood
  at each of those steps (`area_under_curve`), so runs whose episodes end
  at different steps compare; mean ± std over seeds;
- held: the runs that end within 10 % of their best, i.e. whose mean
  return of the last 100 episodes is at least their best 100-episode
  moving mean less a tenth of its magnitude (`holds_its_best`);
- steps/s as above, and the training time (wall and CPU, summed over
  seeds) of each algorithm, and of the whole suite, from the runs'
  `summary.json` files.

Both draw the learning curves (moving mean of `window` episodes vs
environment steps; mean line and min-max band over seeds) into
`<results directory>/<task>.png`, and end with the runs' aggregate
(`agents.aggregate`, rliable): per algorithm the interquartile mean of the
final returns with 95 % stratified-bootstrap intervals, per task and
across the suite's tasks (normalized per task between a random policy and
a reference), and performance profiles in `intervals.png` and
`profile.png`. Prints Markdown for BENCHMARKS.md.
"""

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from agents import episode_log
from agents.plot import draw, moving_mean

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)  # the Markdown's image paths start here
RESULTS = os.path.join(HERE, "results", "compare")

# budget / quick: environment steps per run, what 2 CPU cores allow for
# 6 algorithms x 3 seeds in about an hour (the libraries' own tuned budgets
# are 10-100x larger: rl-zoo trains LunarLander and the MuJoCo tasks for
# 1M steps). target: Gymnasium's reward_threshold, or a stated one where
# the environment has none or where it is out of reach of the budget.
TASKS = {
    "CartPole-v1": dict(
        budget=100_000,
        quick=20_000,
        target=475.0,
        window=100,
        target_source="Gymnasium reward_threshold",
    ),
    "LunarLander-v3": dict(
        budget=100_000,
        quick=10_000,
        target=0.0,
        window=100,
        target_source="stated: a positive return (Gymnasium's 200 is out of "
        "reach of this budget)",
    ),
    "Pendulum-v1": dict(
        budget=50_000,
        quick=10_000,
        target=-400.0,
        window=20,
        target_source="stated (no threshold in Gymnasium)",
    ),
    "InvertedPendulum-v5": dict(
        budget=40_000,
        quick=10_000,
        target=950.0,
        window=20,
        target_source="Gymnasium reward_threshold",
    ),
    "HalfCheetah-v5": dict(
        budget=50_000,
        quick=10_000,
        target=1500.0,
        window=10,
        target_source="stated: a positive return (Gymnasium's 4800 is out of "
        "reach of this budget)",
    ),
}

# Five of the ACKTR paper's MuJoCo tasks at its budget of 1M environment
# steps. No target: the paper compares learning curves, hence the AUC.
# Every episode lasts at most 1000 steps, so 1M steps give at least 1000
# episodes per run and a window of 10 episodes stays local in time.
MUJOCO_TASKS = {
    task: dict(budget=1_000_000, quick=10_000, window=10)
    for task in (
        "InvertedPendulum-v5",
        "InvertedDoublePendulum-v5",
        "HalfCheetah-v5",
        "Hopper-v5",
        "Walker2d-v5",
    )
}

# Box action spaces beyond MuJoCo, where `--preset auto` must pick between
# the `default` and `mujoco` presets: Gymnasium's classic-control and Box2D
# tasks and a custom one (`bench/box_tasks.py`), at budgets where ACKTR
# learns them. No target: the presets compare by their curves (AUC).
BOX_TASKS = {
    "Pendulum-v1": dict(budget=200_000, quick=10_000, window=20),
    "MountainCarContinuous-v0": dict(budget=300_000, quick=10_000, window=10),
    "LunarLanderContinuous-v3": dict(budget=500_000, quick=10_000, window=20),
    "BipedalWalker-v3": dict(budget=1_000_000, quick=10_000, window=10),
    "box_tasks:PointMass-v0": dict(budget=100_000, quick=10_000, window=20),
}

# The paper's Atari setting, on the budget two cores allow. A game of Pong
# lasts 800-4000 agent steps, so 1M steps give 250 or more games.
ATARI_TASKS = {"ALE/Pong-v5": dict(budget=1_000_000, quick=20_000, window=10)}

# name -> (runner script, its extra arguments)
ALGOS = {
    "ours-acktr": ("run_ours.py", ["--algo", "acktr"]),
    "ours-a2c": ("run_ours.py", ["--algo", "a2c"]),
    "ours-trpo": ("run_ours.py", ["--algo", "trpo"]),
    "ours-npg": ("run_ours.py", ["--algo", "npg"]),
    "ours-ppo": ("run_ours.py", ["--algo", "ppo"]),
    "ours-reinforce": ("run_ours.py", ["--algo", "reinforce"]),
    "sb3-a2c": ("run_sb3.py", ["--algo", "a2c"]),
    "sb3-ppo": ("run_sb3.py", ["--algo", "ppo"]),
    # SB3's PPO on our PPO's settings (`run_sb3.py --settings ours`).
    "sb3-ppo-our-settings": (
        "run_sb3.py",
        ["--algo", "ppo", "--settings", "ours"],
    ),
    "sb3-trpo": ("run_sb3.py", ["--algo", "trpo"]),
    "tfagents-ppo": ("run_tfagents_ppo.py", []),
}
# Our algorithms that have both presets for Box actions, each preset named
# (`ours-ppo-default`, `ours-ppo-mujoco`, ...): what `--preset auto`
# should pick off MuJoCo.
PRESET_ALGOS = ("acktr", "ppo", "trpo", "a2c")
PRESETS = ("default", "mujoco")
ALGOS.update(
    {
        f"ours-{algo}-{preset}": (
            "run_ours.py",
            ["--algo", algo, "--preset", preset],
        )
        for algo in PRESET_ALGOS
        for preset in PRESETS
    }
)

# suite -> its tasks, its algorithms (the default for --algos), the
# directories under RESULTS of its full and quick runs, and the metric its
# table leads with: steps to a target, or the area under the curve.
SUITES = {
    "default": dict(
        tasks=TASKS,
        algos=(
            "ours-acktr",
            "ours-a2c",
            "ours-trpo",
            "sb3-a2c",
            "sb3-ppo",
            "tfagents-ppo",
        ),
        directories=("full", "quick"),
        metric="steps to target",
    ),
    "mujoco": dict(
        tasks=MUJOCO_TASKS,
        algos=("ours-acktr", "ours-a2c", "ours-trpo", "sb3-ppo", "sb3-trpo"),
        directories=("mujoco", "mujoco-quick"),
        metric="area under the curve",
    ),
    "box": dict(
        tasks=BOX_TASKS,
        algos=tuple(
            f"ours-{algo}-{preset}"
            for algo in PRESET_ALGOS
            for preset in PRESETS
        ),
        directories=("box", "box-quick"),
        metric="area under the curve",
    ),
    "atari": dict(
        tasks=ATARI_TASKS,
        algos=("ours-acktr", "ours-a2c", "ours-ppo", "sb3-a2c", "sb3-ppo"),
        directories=("atari", "atari-quick"),
        metric="area under the curve",
        seeds=1,
    ),
}


def task_directory(task: str) -> str:
    """A task's name as one path component (`ALE/Pong-v5`: `ALE-Pong-v5`)."""
    return task.replace("/", "-")


# Evenly spaced environment steps the AUC averages the curve over.
AUC_POINTS = 100


def suite_directory(suite: str, quick: bool) -> str:
    """Where a suite's runs, plots and log go."""
    full, short = SUITES[suite]["directories"]
    return os.path.join(RESULTS, short if quick else full)


def plot_path(suite: str, task: str, quick: bool) -> str:
    """Where a task's learning curves are drawn."""
    return os.path.join(
        suite_directory(suite, quick), f"{task_directory(task)}.png"
    )


def image(suite: str, task: str, quick: bool) -> str:
    """The Markdown image of a task's plot, from the repository's root."""
    return f"![{task}]({os.path.relpath(plot_path(suite, task, quick), ROOT)})"


def run_directory(
    suite: str, task: str, algo: str, seed: int, quick: bool
) -> str:
    return os.path.join(
        suite_directory(suite, quick),
        task_directory(task),
        f"{algo}-seed{seed}",
    )


def launch(suite, task, algo, seed, quick, rerun) -> str:
    """Runs one training subprocess unless its summary exists; returns a
    line for the log."""
    out = run_directory(suite, task, algo, seed, quick)
    summary = os.path.join(out, "summary.json")
    if os.path.exists(summary) and not rerun:
        return f"kept  {task} {algo} seed {seed}"
    os.makedirs(out, exist_ok=True)
    script, extra = ALGOS[algo]
    steps = SUITES[suite]["tasks"][task]["quick" if quick else "budget"]
    command = [sys.executable, os.path.join(HERE, script), *extra]
    command += ["--env", task, "--seed", str(seed)]
    command += ["--total-steps", str(steps), "--out", out]
    environment = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    start = time.perf_counter()
    with open(os.path.join(out, "log.txt"), "w") as log:
        code = subprocess.call(
            command, stdout=log, stderr=subprocess.STDOUT, env=environment
        )
    seconds = time.perf_counter() - start
    status = "done " if code == 0 else f"FAILED (exit {code}, see log.txt)"
    return f"{status} {task} {algo} seed {seed} in {seconds:.0f} s"


def load_episodes(out: str) -> tuple[np.ndarray, np.ndarray]:
    """`(steps, returns)` of the run's episodes (`agents.episode_log`)."""
    rows, _ = episode_log.read(os.path.join(out, "episodes.csv"))
    steps = np.array([r[0] for r in rows], dtype=np.int64)
    returns = np.array([r[1] for r in rows], dtype=float)
    return steps, returns


def steps_to_target(steps, returns, window, target) -> int | None:
    """First env step at which `window` finished episodes average `target`."""
    if len(returns) < window:
        return None
    means = moving_mean(returns, window)
    hits = np.nonzero(means[window - 1 :] >= target)[0]
    return int(steps[window - 1 + hits[0]]) if len(hits) else None


def holds_its_best(
    returns: np.ndarray, window: int = 100, fraction: float = 0.9
) -> bool:
    """Whether the run ends near its best: the mean of its last `window`
    returns is at least `best - (1 - fraction) · |best|`, `best` the
    largest moving mean of `window` returns (of all of them when the run
    has fewer). For a positive best that is `fraction · best`; a negative
    best, where `fraction · best` would lie above it, allows the same
    relative slack below it.
    """
    returns = np.asarray(returns, dtype=float)
    if not len(returns):
        raise ValueError("holds_its_best needs at least one episode.")
    means = moving_mean(returns, window)[min(window, len(returns)) - 1 :]
    best = float(np.max(means))
    return bool(means[-1] >= best - (1.0 - fraction) * abs(best))


def area_under_curve(
    steps: np.ndarray,
    returns: np.ndarray,
    window: int,
    budget: int,
    points: int = AUC_POINTS,
) -> float:
    """Mean of the moving-mean return over a fixed grid of env steps.

    The grid is `points` evenly spaced steps, `budget / points, ...,
    budget`. At each, the curve is the mean return of the last `window`
    episodes finished at or before it (`moving_mean`, as it stood then);
    a grid step before the first finished episode takes the first
    episode's return. The same grid for every run makes runs whose
    episodes end at different steps comparable, and weighs the run's time
    evenly (an average of episodes would weigh the early, short ones most).

    Args:
        steps: environment steps at which each episode ended,
            non-decreasing.
        returns: each episode's return.
        window: episodes in the moving mean.
        budget: the last grid step, the run's budget.
        points: grid size. Defaults to `100`.

    Returns:
        The mean of the curve over the grid, in units of return.
    """
    if not len(returns) or len(steps) != len(returns):
        raise ValueError(
            "area_under_curve needs one step per episode and at least one "
            f"episode. Received: {len(steps)} steps, {len(returns)} returns"
        )
    if budget <= 0 or points < 1:
        raise ValueError(
            "budget and points must be positive. Received: "
            f"budget={budget}, points={points}"
        )
    grid = budget * np.arange(1, points + 1) / points
    # Index of the last episode ended at or before each grid step (-1: none).
    last = np.searchsorted(steps, grid, side="right") - 1
    means = moving_mean(np.asarray(returns, dtype=float), window)
    return float(np.mean(means[np.maximum(last, 0)]))


def summarize(suite, task, algos, seeds, quick):
    """Per algorithm: per-seed steps to target, final returns, AUC,
    steps/s, training times and curves, for the runs that finished."""
    spec = SUITES[suite]["tasks"][task]
    table = {}
    for algo in algos:
        rows = []
        for seed in seeds:
            out = run_directory(suite, task, algo, seed, quick)
            if not os.path.exists(os.path.join(out, "summary.json")):
                continue
            with open(os.path.join(out, "summary.json")) as f:
                summary = json.load(f)
            steps, returns = load_episodes(out)
            if not len(returns):
                continue
            rows.append(
                dict(
                    seed=seed,
                    to_target=steps_to_target(
                        steps, returns, spec["window"], spec["target"]
                    )
                    if "target" in spec
                    else None,
                    final=float(np.mean(returns[-spec["window"] :])),
                    auc=area_under_curve(
                        steps,
                        returns,
                        spec["window"],
                        spec["quick" if quick else "budget"],
                    ),
                    held=holds_its_best(returns),
                    steps_per_second=summary["steps_per_second"],
                    train_seconds=summary["train_seconds"],
                    train_cpu_seconds=summary.get("train_cpu_seconds"),
                    curve=(steps, moving_mean(returns, spec["window"])),
                    budget=summary["env_steps"],
                )
            )
        if rows:
            table[algo] = rows
    return table


def plot(spec, task, table, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(6.5, 4))
    for algo, rows in table.items():
        curves = [r["curve"] for r in rows if len(r["curve"][0]) >= 2]
        if curves:
            end = min(r["budget"] for r in rows)
            style = "-" if algo.startswith("ours") else "--"
            draw(axes, algo, curves, end, style)
    if "target" in spec:
        axes.axhline(spec["target"], color="grey", linewidth=0.8, linestyle=":")
    axes.set_xlabel("environment steps")
    axes.set_ylabel(f"mean return of the last {spec['window']} episodes")
    axes.set_title(task)
    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def markdown(suite, task, table, quick) -> str:
    """A suite's table led by the steps to target: final return, speed."""
    spec = SUITES[suite]["tasks"][task]
    budget = spec["quick" if quick else "budget"]
    lines = [
        f"### {task}",
        "",
        f"Budget {budget:,} steps per run; target {spec['target']:g} "
        f"({spec['target_source']}), over the last {spec['window']} "
        "training episodes.",
        "",
        "| algorithm | steps to target, per seed | median | final return "
        "| steps/s |",
        "|---|---|---|---|---|",
    ]
    for algo, rows in table.items():
        hits = [r["to_target"] for r in rows]
        per_seed = " / ".join("-" if h is None else f"{h:,}" for h in hits)
        # A seed that never reached the target counts as > budget.
        ranked = sorted(h if h is not None else np.inf for h in hits)
        median = ranked[len(ranked) // 2]
        median = "-" if np.isinf(median) else f"{int(median):,}"
        finals = [r["final"] for r in rows]
        speed = np.median([r["steps_per_second"] for r in rows])
        lines.append(
            f"| {algo} | {per_seed} | {median} | "
            f"{np.mean(finals):.1f} ± {np.std(finals):.1f} | {speed:.0f} |"
        )
    lines.append("")
    lines.append(image(suite, task, quick))
    return "\n".join(lines)


def duration(seconds: float) -> str:
    """`"2.5 h"`, or minutes under an hour, seconds under a minute."""
    if seconds < 60:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def markdown_auc(suite, task, table, quick) -> str:
    """A suite's table led by the AUC: final return, AUC, speed, time."""
    spec = SUITES[suite]["tasks"][task]
    budget = spec["quick" if quick else "budget"]
    lines = [
        f"### {task}",
        "",
        f"Budget {budget:,} steps per run. Final return: the mean of the "
        f"last {spec['window']} training episodes; AUC: the mean of that "
        f"moving mean over {AUC_POINTS} evenly spaced steps up to the "
        "budget (mean ± std over seeds). Held: runs whose last 100 "
        "episodes average at least 90 % of their best 100-episode mean. "
        "Time: training, summed over seeds.",
        "",
        "| algorithm | seeds | final return | AUC | held | steps/s "
        "| wall time | CPU time |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for algo, rows in table.items():
        finals = [r["final"] for r in rows]
        aucs = [r["auc"] for r in rows]
        speed = np.median([r["steps_per_second"] for r in rows])
        wall = sum(r["train_seconds"] for r in rows)
        cpu = [r["train_cpu_seconds"] for r in rows]
        cpu = "-" if None in cpu else duration(sum(cpu))
        lines.append(
            f"| {algo} | {len(rows)} | {np.mean(finals):.1f} ± "
            f"{np.std(finals):.1f} | {np.mean(aucs):.1f} ± "
            f"{np.std(aucs):.1f} | {sum(r['held'] for r in rows)}/{len(rows)} "
            f"| {speed:.0f} | {duration(wall)} | {cpu} |"
        )
    lines.append("")
    lines.append(image(suite, task, quick))
    return "\n".join(lines)


def total_time(tables: dict) -> str:
    """One line: the training time of every run summarized, wall and CPU."""
    rows = [r for table in tables.values() for rs in table.values() for r in rs]
    wall = sum(r["train_seconds"] for r in rows)
    cpu = sum(r["train_cpu_seconds"] or 0.0 for r in rows)
    return (
        f"Training time of the {len(rows)} runs, summed: {duration(wall)} "
        f"wall, {duration(cpu)} CPU (one thread each; with --jobs > 1 the "
        "suite takes less elapsed time than the wall sum)."
    )


def aggregate_report(suite, tables, quick) -> str:
    """The runs' final returns aggregated over seeds and tasks
    (`agents.aggregate`), its figures written beside the tasks' plots."""
    from agents import aggregate, aggregate_report

    scores = {}
    for task, table in tables.items():
        for algo, rows in table.items():
            scores.setdefault(algo, {})[task] = [r["final"] for r in rows]
    try:
        report = aggregate.aggregate(scores)
    except ValueError as error:
        return f"No aggregate over runs: {error}"
    paths = aggregate_report.write_figures(
        report, suite_directory(suite, quick)
    )
    return aggregate_report.markdown(
        report,
        "its final return, the mean return of its last training episodes "
        "(the task's window above)",
        [os.path.relpath(p, ROOT) for p in paths],
        heading="####",  # beside the tasks' tables
    )


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--suite", choices=tuple(SUITES), default="default")
    parser.add_argument("--quick", action="store_true")
    all_tasks = {t: None for s in SUITES.values() for t in s["tasks"]}
    parser.add_argument("--tasks", nargs="+", choices=tuple(all_tasks))
    parser.add_argument(
        "--algos", nargs="+", choices=tuple(ALGOS), help="default: the suite's"
    )
    parser.add_argument(
        "--seeds", type=int, help="default: 3, atari 1 (quick: 1)"
    )
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--rerun", action="store_true")
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="summarize the runs on disk without starting any",
    )
    args = parser.parse_args(argv)
    suite = SUITES[args.suite]
    tasks = args.tasks or list(suite["tasks"])
    algos = args.algos or list(suite["algos"])
    if not set(tasks) <= set(suite["tasks"]):
        parser.error(
            f"the {args.suite} suite has the tasks "
            f"{', '.join(suite['tasks'])}. Received: --tasks "
            f"{' '.join(tasks)}"
        )
    seeds = range(args.seeds or (1 if args.quick else suite.get("seeds", 3)))
    if args.jobs < 1 or (args.seeds is not None and args.seeds < 1):
        parser.error(
            f"--jobs and --seeds must be >= 1. Received: --jobs {args.jobs} "
            f"--seeds {args.seeds}"
        )
    if not args.report_only:
        jobs = [(t, a, s) for t in tasks for s in seeds for a in algos]
        with ThreadPoolExecutor(args.jobs) as pool:
            for line in pool.map(
                lambda job: launch(args.suite, *job, args.quick, args.rerun),
                jobs,
            ):
                print(line, file=sys.stderr, flush=True)
    tables = {}
    for task in tasks:
        table = summarize(args.suite, task, algos, seeds, args.quick)
        if not table:
            continue
        tables[task] = table
        os.makedirs(suite_directory(args.suite, args.quick), exist_ok=True)
        plot(
            suite["tasks"][task],
            task,
            table,
            plot_path(args.suite, task, args.quick),
        )
        if suite["metric"] == "steps to target":
            print(markdown(args.suite, task, table, args.quick))
        else:
            print(markdown_auc(args.suite, task, table, args.quick))
        print()
    if tables and suite["metric"] != "steps to target":
        print(total_time(tables))
    if tables:
        print()
        print(aggregate_report(args.suite, tables, args.quick))


if __name__ == "__main__":
    main()
