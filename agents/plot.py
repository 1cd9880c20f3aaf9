"""Learning curves of several training runs in one PNG.

    python -m agents.plot runs/*
    python -m agents.plot runs/acktr-* runs/trpo-* --x seconds --out cmp.png

Each argument is a run directory of `agents.train` (its `episodes.csv`, and
its `config.json` when there is one). Runs whose configurations differ only
in the seed (and run directory and budget) are seeds of one configuration:
they are drawn as one curve, the mean over seeds of the moving mean return
of the last `--window` episodes, with the band between the lowest and the
highest seed. Directories without `config.json` (the benchmark's results)
group by name, less a trailing `-seed<N>`. The x axis is environment steps
or training seconds (`--x seconds`, from the log's wall seconds).

    python -m agents.plot runs/* --aggregate report/

writes instead the runs' aggregate (`agents.aggregate`: interquartile
means with 95 % bootstrap intervals per task and across tasks, performance
profiles) into `report/`: `aggregate.md`, `intervals.png`, `profile.png`.
"""

import dataclasses
import json
import os
import re
import sys
import warnings

import numpy as np

from agents import episode_log, files
from agents.arguments import ArgumentParser

# Fields that tell seeds of one configuration apart, not configurations.
_PER_RUN = ("seed", "logdir", "total_steps")


@dataclasses.dataclass
class Run:
    """One run's episodes: where each ended (steps, seconds) and its return."""

    directory: str
    config: dict | None
    steps: np.ndarray
    seconds: np.ndarray
    returns: np.ndarray

    @classmethod
    def from_rows(cls, directory: str, config: dict | None, rows) -> "Run":
        """The run of `episodes.csv` rows `(steps, return, length,
        seconds)`."""
        rows = np.array(rows, dtype=float).reshape(-1, len(episode_log.FIELDS))
        return cls(directory, config, rows[:, 0], rows[:, 3], rows[:, 1])


def moving_mean(returns: np.ndarray, window: int) -> np.ndarray:
    """Mean of the last `window` returns at every episode (fewer at the
    start)."""
    returns = np.asarray(returns, dtype=float)
    cumulative = np.cumsum(np.insert(returns, 0, 0.0))
    ends = np.arange(1, len(returns) + 1)
    counts = np.minimum(ends, window)
    return (cumulative[ends] - cumulative[ends - counts]) / counts


def load_run(directory: str) -> Run:
    """The run in `directory`; raises `ValueError` if it has no episodes."""
    path = os.path.join(directory, "episodes.csv")
    if not os.path.isfile(path):
        raise ValueError(
            f"{directory!r} is not a run directory: it has no episodes.csv."
        )
    rows, _ = episode_log.read(path)  # a partial last row is left out
    if not rows:
        raise ValueError(f"{path!r} holds no finished episode yet.")
    config = None
    if os.path.isfile(os.path.join(directory, "config.json")):
        with open(os.path.join(directory, "config.json")) as f:
            config = json.load(f)
    return Run.from_rows(directory, config, rows)


def group_runs(runs: list[Run]) -> dict[str, list[Run]]:
    """Label -> the runs that are seeds of one configuration.

    A label names the algorithm and environment, plus every setting in
    which the configurations of that algorithm and environment differ
    (`damping=0.1`); runs without a `config.json` are labelled by their
    directory's name less `-seed<N>`.
    """
    keyed = {}
    for run in runs:
        if run.config is None:
            name = os.path.basename(os.path.normpath(run.directory))
            key = ("name", re.sub(r"-seed\d+$", "", name))
        else:
            shared = {k: v for k, v in run.config.items() if k not in _PER_RUN}
            key = ("config", json.dumps(shared, sort_keys=True))
        keyed.setdefault(key, []).append(run)
    configs = [json.loads(key[1]) for key in keyed if key[0] == "config"]
    groups = {}
    for (kind, value), members in keyed.items():
        if kind == "name":
            label = value
        else:
            config = json.loads(value)
            family = [  # the configurations of the same algorithm and task
                c
                for c in configs
                if (c["algo"], c["env"]) == (config["algo"], config["env"])
            ]
            differing = sorted(
                k for k in config if any(c.get(k) != config[k] for c in family)
            )
            label = " ".join(
                [f"{config['algo']} {config['env']}"]
                + [f"{k}={config[k]}" for k in differing]
            )
        groups[label] = members
    return groups


def band(
    curves: list[tuple[np.ndarray, np.ndarray]], grid: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`(mean, low, high)` over curves `(x, y)` on `grid`.

    Each curve is interpolated linearly between its points, holds its last
    value after them, and is missing (NaN) before its first; a grid point
    no curve reaches yet is NaN in all three.
    """
    values = np.array(
        [np.interp(grid, x, y, left=np.nan, right=y[-1]) for x, y in curves]
    )
    with warnings.catch_warnings():  # grid points before any episode
        warnings.simplefilter("ignore", RuntimeWarning)
        return (
            np.nanmean(values, 0),
            np.nanmin(values, 0),
            np.nanmax(values, 0),
        )


def draw(axes, label: str, curves, end: float, style: str = "-") -> None:
    """One configuration on `axes`: the mean of `curves` on 200 points up to
    `end`, and the band between the lowest and the highest."""
    grid = np.linspace(0.0, end, 200)
    mean, low, high = band(curves, grid)
    (line,) = axes.plot(grid, mean, style, label=f"{label} ({len(curves)})")
    axes.fill_between(grid, low, high, color=line.get_color(), alpha=0.15)


def plot(
    runs: list[Run],
    path: str,
    x: str = "steps",
    window: int = 100,
    title: str | None = None,
    episodes: bool = False,
) -> dict[str, list[Run]]:
    """Writes the PNG of `runs` to `path` (replacing it only once the new
    one is complete); returns the groups drawn (`figure_of`)."""
    figure, groups = figure_of(runs, x, window, title, episodes)
    import matplotlib.pyplot as plt

    extension = os.path.splitext(path)[1]
    try:
        files.replace_with_saved(
            path,
            lambda name: figure.savefig(name, dpi=100, bbox_inches="tight"),
            extension,
        )
    finally:
        plt.close(figure)
    return groups


def figure_of(
    runs: list[Run],
    x: str = "steps",
    window: int = 100,
    title: str | None = None,
    episodes: bool = False,
):
    """`(figure, groups)`: the matplotlib figure of `runs`, and the groups
    drawn, the legend beside the axes.

    Each group of seeds (`group_runs`) is drawn as the mean of their moving
    means of `window` returns with the band between the lowest and the
    highest (`draw`), up to where its shortest run got; with `episodes`,
    every episode's return is a dot too (the learning curve a training run
    writes). Runs without an episode are left out.
    """
    # matplotlib loads only to draw: agents.training imports this module.
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = group_runs(runs)
    figure, axes = plt.subplots(figsize=(7, 4.5))
    for label, members in groups.items():
        xs = [
            (run.steps if x == "steps" else run.seconds, run)
            for run in members
            if len(run.returns)
        ]
        if not xs:
            continue
        if episodes:
            for position, run in xs:
                axes.plot(
                    position, run.returns, ".", alpha=0.2, label="episode"
                )
        curves = [
            (position, moving_mean(run.returns, window)) for position, run in xs
        ]
        draw(axes, label, curves, min(c[0][-1] for c in curves))
    axes.set_xlabel("environment steps" if x == "steps" else "training seconds")
    axes.set_ylabel(f"mean return of the last {window} episodes")
    if title is not None:
        axes.set_title(title)
    if axes.get_legend_handles_labels()[0]:
        # Beside the axes, not over the curves: runs of many settings have
        # labels as long as the plot is wide.
        axes.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    figure.tight_layout()
    return figure, groups


def main(argv=None) -> int:
    """The command line; returns 0, or 2 on bad input (nothing written)."""
    parser = ArgumentParser(
        prog="python -m agents.plot", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("runs", nargs="+", help="run directories")
    parser.add_argument("--out", default="curves.png", help="the PNG file")
    parser.add_argument("--x", choices=("steps", "seconds"), default="steps")
    parser.add_argument(
        "--window",
        type=int,
        default=100,
        help="episodes in the moving mean (and in a run's score)",
    )
    parser.add_argument(
        "--aggregate",
        metavar="DIR",
        help="write the runs' aggregate into DIR instead of curves: the "
        "interquartile mean of their scores (the mean return of the last "
        "--window episodes) with 95%% bootstrap intervals, per task and "
        "across tasks, and performance profiles (agents.aggregate)",
    )
    parser.add_argument(
        "--reference-scores",
        metavar="FILE",
        help="with --aggregate: JSON {task: [random, reference]}, the "
        "scores that normalize a task to 0 and 1 across tasks (default: "
        "agents.aggregate.REFERENCES)",
    )
    parser.add_argument(
        "--reps",
        type=int,
        help="with --aggregate: bootstrap resamples per interval "
        "(default: agents.aggregate.REPS)",
    )
    args = parser.parse_args(argv)
    try:
        if args.window < 1:
            raise ValueError(f"--window must be >= 1. Received: {args.window}")
        runs = [load_run(directory) for directory in args.runs]
        if args.aggregate is not None:
            from agents import (  # rliable: when asked
                aggregate,
                aggregate_report,
            )

            print(
                aggregate_report.write_report(
                    runs,
                    args.aggregate,
                    args.window,
                    aggregate.REPS if args.reps is None else args.reps,
                    args.reference_scores,
                ),
                end="",
            )
            print(f"wrote {args.aggregate}")
            return 0
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    groups = plot(runs, args.out, args.x, args.window)
    for label, members in groups.items():
        print(f"{label}: {len(members)} run(s)")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
