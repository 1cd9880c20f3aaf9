"""ACKTR vs A2C vs TRPO (ours) vs SB3 A2C/PPO and tf-agents PPO, per task.

    python bench/compare.py            # every task, 3 seeds, full budgets
    python bench/compare.py --quick    # 1 seed, small budgets: minutes
    python bench/compare.py --tasks CartPole-v1 --algos ours-acktr sb3-ppo

Each run is a subprocess of one runner (`bench/run_ours.py`,
`bench/run_sb3.py`, `bench/run_tfagents_ppo.py`), `--jobs` at a time, each
on one thread. A run whose `summary.json` exists is not run again, so an
interrupted benchmark continues where it stopped (`--rerun` to redo).

Per task and algorithm it reports, over seeds:

- steps to target: the environment steps at which the mean return of the
  last `window` training episodes first reaches the target (Gymnasium's
  reward threshold where there is one, else a stated one); `-` where a
  seed never did within the budget;
- final return: the mean return of the last `window` training episodes;
- steps/s: environment steps per wall second of training (median);

and draws the learning curves (moving mean of `window` episodes vs
environment steps; mean line and min-max band over seeds) into
`bench/results/compare/<task>.png`. Prints Markdown for BENCHMARKS.md.
"""

import argparse
import csv
import json
import os
import subprocess
import sys
import time
import warnings
from concurrent.futures import ThreadPoolExecutor

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
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

# name -> (runner script, its extra arguments)
ALGOS = {
    "ours-acktr": ("run_ours.py", ["--algo", "acktr"]),
    "ours-a2c": ("run_ours.py", ["--algo", "a2c"]),
    "ours-trpo": ("run_ours.py", ["--algo", "trpo"]),
    "sb3-a2c": ("run_sb3.py", ["--algo", "a2c"]),
    "sb3-ppo": ("run_sb3.py", ["--algo", "ppo"]),
    "tfagents-ppo": ("run_tfagents_ppo.py", []),
}


def run_directory(task: str, algo: str, seed: int, quick: bool) -> str:
    mode = "quick" if quick else "full"
    return os.path.join(RESULTS, mode, task, f"{algo}-seed{seed}")


def launch(task, algo, seed, quick, rerun) -> str:
    """Runs one training subprocess unless its summary exists; returns a
    line for the log."""
    out = run_directory(task, algo, seed, quick)
    summary = os.path.join(out, "summary.json")
    if os.path.exists(summary) and not rerun:
        return f"kept  {task} {algo} seed {seed}"
    os.makedirs(out, exist_ok=True)
    script, extra = ALGOS[algo]
    steps = TASKS[task]["quick" if quick else "budget"]
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
    with open(os.path.join(out, "episodes.csv"), newline="") as f:
        rows = list(csv.DictReader(f))
    steps = np.array([int(r["env_steps"]) for r in rows], dtype=np.int64)
    returns = np.array([float(r["return"]) for r in rows])
    return steps, returns


def moving_mean(returns: np.ndarray, window: int) -> np.ndarray:
    """Mean of the last `window` episodes (fewer at the start)."""
    cumulative = np.cumsum(np.insert(returns, 0, 0.0))
    counts = np.minimum(np.arange(1, len(returns) + 1), window)
    ends = np.arange(1, len(returns) + 1)
    return (cumulative[ends] - cumulative[ends - counts]) / counts


def steps_to_target(steps, returns, window, target) -> int | None:
    """First env step at which `window` finished episodes average `target`."""
    if len(returns) < window:
        return None
    means = moving_mean(returns, window)
    hits = np.nonzero(means[window - 1 :] >= target)[0]
    return int(steps[window - 1 + hits[0]]) if len(hits) else None


def summarize(task, algos, seeds, quick):
    """Per algorithm: per-seed steps to target, final returns, steps/s and
    curves, for the runs that finished."""
    spec = TASKS[task]
    table = {}
    for algo in algos:
        rows = []
        for seed in seeds:
            out = run_directory(task, algo, seed, quick)
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
                    ),
                    final=float(np.mean(returns[-spec["window"] :])),
                    steps_per_second=summary["steps_per_second"],
                    curve=(steps, moving_mean(returns, spec["window"])),
                    budget=summary["env_steps"],
                )
            )
        if rows:
            table[algo] = rows
    return table


def plot(task, table, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    spec = TASKS[task]
    figure, axes = plt.subplots(figsize=(6.5, 4))
    for algo, rows in table.items():
        end = min(r["budget"] for r in rows)
        grid = np.linspace(0, end, 200)
        curves = []
        for r in rows:
            steps, means = r["curve"]
            if len(steps) >= 2:
                curves.append(
                    np.interp(grid, steps, means, left=np.nan, right=means[-1])
                )
        if not curves:
            continue
        curves = np.array(curves)
        with warnings.catch_warnings():  # grid points before any episode
            warnings.simplefilter("ignore", RuntimeWarning)
            mean, low, high = (
                np.nanmean(curves, 0),
                np.nanmin(curves, 0),
                np.nanmax(curves, 0),
            )
        style = "-" if algo.startswith("ours") else "--"
        (line,) = axes.plot(grid, mean, style, label=f"{algo} ({len(rows)})")
        axes.fill_between(grid, low, high, color=line.get_color(), alpha=0.15)
    axes.axhline(spec["target"], color="grey", linewidth=0.8, linestyle=":")
    axes.set_xlabel("environment steps")
    axes.set_ylabel(f"mean return of the last {spec['window']} episodes")
    axes.set_title(task)
    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def markdown(task, table, quick) -> str:
    spec = TASKS[task]
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
    lines.append(
        f"![{task}](bench/results/compare/{'quick' if quick else 'full'}/"
        f"{task}.png)"
    )
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--tasks", nargs="+", choices=tuple(TASKS))
    parser.add_argument("--algos", nargs="+", choices=tuple(ALGOS))
    parser.add_argument("--seeds", type=int, help="default: 3 (quick: 1)")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--rerun", action="store_true")
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="summarize the runs on disk without starting any",
    )
    args = parser.parse_args(argv)
    tasks = args.tasks or list(TASKS)
    algos = args.algos or list(ALGOS)
    seeds = range(args.seeds or (1 if args.quick else 3))
    if args.jobs < 1 or (args.seeds is not None and args.seeds < 1):
        parser.error(
            f"--jobs and --seeds must be >= 1. Received: --jobs {args.jobs} "
            f"--seeds {args.seeds}"
        )
    if not args.report_only:
        jobs = [(t, a, s) for t in tasks for s in seeds for a in algos]
        with ThreadPoolExecutor(args.jobs) as pool:
            for line in pool.map(
                lambda job: launch(*job, args.quick, args.rerun), jobs
            ):
                print(line, file=sys.stderr, flush=True)
    mode = "quick" if args.quick else "full"
    for task in tasks:
        table = summarize(task, algos, seeds, args.quick)
        if not table:
            continue
        os.makedirs(os.path.join(RESULTS, mode), exist_ok=True)
        plot(task, table, os.path.join(RESULTS, mode, f"{task}.png"))
        print(markdown(task, table, args.quick))
        print()


if __name__ == "__main__":
    main()
