"""The report of an aggregate over runs (`agents.aggregate`): Markdown
tables per task and across tasks, the normalization used, and the
figures (interval estimates and performance profiles, drawn by rliable).

    python -m agents.plot runs/* --aggregate report/
"""

import functools
import os
from collections.abc import Sequence

import numpy as np

from agents import files, plot
from agents.aggregate import (
    ACROSS_TASKS,
    REPS,
    Estimate,
    Report,
    aggregate,
    load_references,
    scores_of_runs,
)


def _cell(estimate: Estimate, digits: int) -> str:
    """`point [low, high]`."""
    e, d = estimate, digits
    return f"{e.point:.{d}f} [{e.low:.{d}f}, {e.high:.{d}f}]"


def _row(*cells) -> str:
    """A Markdown table row."""
    return "| " + " | ".join(map(str, cells)) + " |"


def markdown(
    report: Report, score: str, images: Sequence = (), heading: str = "###"
) -> str:
    """The report as Markdown under a `heading` (its level): the per-task
    table, the table across tasks with the normalization used, and
    `images` (paths of its figures). `score` says what a run's score is
    ("the mean return of ...")."""
    tasks = list(report.per_task)
    lines = [
        f"{heading} Aggregate over runs",
        "",
        f"Score of a run: {score}. Intervals: "
        f"{100 * report.confidence:g} % stratified-bootstrap confidence "
        f"intervals ({report.reps} resamples of the runs, seed "
        f"{report.seed}; rliable, Agarwal et al. 2021).",
        "",
        "Per task: the interquartile mean (IQM: the mean of the middle half) "
        "of the runs' scores, in return, [interval] (runs).",
        "",
        _row("algorithm", *tasks),
        "|---" * (len(tasks) + 1) + "|",
    ]
    for algorithm, runs in report.runs.items():
        cells = [
            f"{_cell(report.per_task[t][algorithm], 1)} ({runs[t]})"
            if t in runs
            else "-"
            for t in tasks
        ]
        lines.append(_row(algorithm, *cells))
    if report.references:
        lines += _across_tasks(report)
    elif len(tasks) > 1:
        lines += [
            "",
            "No aggregate across tasks: fewer than two tasks have runs of "
            "every algorithm.",
        ]
    lines += ["", *(f"![{os.path.basename(p)}]({p})" for p in images)]
    return "\n".join(lines).rstrip() + "\n"


def _across_tasks(report: Report) -> list[str]:
    """The table across tasks and the normalization's."""
    lines = [
        "",
        f"Across {', '.join(report.tasks)}: each score normalized per task, "
        "(score - random) / (reference - random), 0 a uniformly random "
        "policy and 1 the reference below. IQM over all runs and tasks; "
        "median of the per-task mean scores; mean; optimality gap, the mean "
        "shortfall below 1 (a score above 1 counts as 1; lower is better). "
        "An algorithm enters with as many runs per task as it has on its "
        "task with the fewest, the first by seed.",
        "",
        _row("algorithm", "runs per task", *ACROSS_TASKS),
        "|---" * (len(ACROSS_TASKS) + 2) + "|",
    ]
    for algorithm, estimates in report.summary.items():
        cells = [_cell(estimates[name], 2) for name in ACROSS_TASKS]
        runs = report.runs_per_task[algorithm]
        lines.append(_row(algorithm, runs, *cells))
    lines += ["", _row("task", "random", "reference", "source")]
    lines.append("|---" * 4 + "|")
    for task, r in report.references.items():
        lines.append(_row(task, f"{r.random:g}", f"{r.reference:g}", r.source))
    return lines


def write_figures(report: Report, directory: str) -> list[str]:
    """Writes `intervals.png` (the summary's estimates and intervals) and
    `profile.png` (the performance profiles) into `directory`; returns
    their paths, none when the report has no summary."""
    if not report.summary:
        return []
    import matplotlib  # loaded only to draw, as in agents.plot

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    os.makedirs(directory, exist_ok=True)
    figures = {
        "intervals.png": _intervals_figure(report),
        "profile.png": _profile_figure(report),
    }
    try:
        for name, figure in figures.items():
            save = functools.partial(
                figure.savefig, dpi=100, bbox_inches="tight"
            )
            files.replace_with_saved(
                os.path.join(directory, name), save, ".png"
            )
    finally:
        for figure in figures.values():
            plt.close(figure)
    return [os.path.join(directory, name) for name in figures]


def _intervals_figure(report: Report):
    """One panel per metric: each algorithm's interval as a bar and its
    point estimate as a tick (rliable's `plot_interval_estimates`)."""
    from rliable import plot_utils

    names = list(next(iter(report.summary.values())))
    columns = {  # algorithm -> rows point, low, high; a column per metric
        a: np.array([[e[n].point, e[n].low, e[n].high] for n in names]).T
        for a, e in report.summary.items()
    }
    figure, _ = plot_utils.plot_interval_estimates(
        {a: c[0] for a, c in columns.items()},
        {a: c[1:] for a, c in columns.items()},
        names,
        xlabel=report.unit,
        row_height=0.6,
        xlabel_y_coordinate=-0.3 / len(columns) - 0.1,
        wspace=0.25,  # rliable's 0.11 lets the panels' tick labels touch
    )
    return figure


def _profile_figure(report: Report):
    """The fraction of runs above each threshold, with its band, one line
    per algorithm (rliable's `plot_performance_profiles`)."""
    import matplotlib.pyplot as plt
    from rliable import plot_utils

    figure, axes = plt.subplots(figsize=(7, 4.5))
    plot_utils.plot_performance_profiles(
        {a: p[0] for a, p in report.profiles.items()},
        report.taus,
        performance_profile_cis={
            a: (p[1], p[2]) for a, p in report.profiles.items()
        },
        ax=axes,
        xlabel=f"τ: {report.unit}",
        ylabel="fraction of runs with score > τ",
        labelsize="large",
        ticklabelsize="medium",
    )
    axes.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    figure.tight_layout()
    return figure


def write_report(
    runs: list[plot.Run],
    directory: str,
    window: int = 100,
    reps: int = REPS,
    reference_scores: str | None = None,
) -> str:
    """Aggregates `runs` (`scores_of_runs`, `aggregate`) and writes into
    `directory` the figures (`write_figures`) and `aggregate.md`; returns
    the Markdown. Raises `ValueError` on bad input, before writing."""
    if os.path.exists(directory) and not os.path.isdir(directory):
        raise ValueError(
            f"--aggregate wants a directory to write into. Received: "
            f"{directory!r}, a file"
        )
    references = None
    if reference_scores is not None:
        references = load_references(reference_scores)
    report = aggregate(scores_of_runs(runs, window), references, reps=reps)
    paths = write_figures(report, directory)
    text = markdown(
        report,
        f"the mean return of its last {window} training episodes",
        [os.path.basename(p) for p in paths],
    )
    os.makedirs(directory, exist_ok=True)
    files.replace_file(
        os.path.join(directory, "aggregate.md"), lambda f: f.write(text)
    )
    return text
