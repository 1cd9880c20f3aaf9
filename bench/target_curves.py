"""The time-to-target suite's plots: each optimizer's validation metric
against training steps and against training seconds, with the target."""

import os

import numpy as np


def plot_curves(workload, runs: dict, target: float, path: str) -> None:
    """Writes `path`: for each optimizer of `runs` (`{optimizer: [records
    of its seeds]}`), the mean over its seeds of the validation metric at
    the end of each epoch, against the steps and against the mean
    training seconds there; the target as a dashed line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (by_steps, by_seconds) = plt.subplots(
        1, 2, figsize=(11, 4), sharey=True
    )
    for optimizer, records in runs.items():
        epochs = min(len(r["values"]) for r in records)
        if epochs == 0:
            continue
        values = np.mean([r["values"][:epochs] for r in records], axis=0)
        seconds = np.mean([r["seconds"][:epochs] for r in records], axis=0)
        steps = records[0]["steps"][:epochs]
        label = f"{optimizer} ({len(records)} seeds)"
        (line,) = by_steps.plot(steps, values, label=label)
        by_seconds.plot(seconds, values, color=line.get_color())
    for axes, x in ((by_steps, "training steps"), (by_seconds, "seconds")):
        axes.axhline(target, color="black", linestyle="--", linewidth=1)
        axes.set_xlabel(x)
        if workload.direction == "lower":
            axes.set_yscale("log")
    by_steps.set_ylabel(f"validation {workload.metric}")
    by_steps.set_title(f"{workload.name}: mean over seeds; dashed: target")
    by_seconds.legend(
        *by_steps.get_legend_handles_labels(),
        fontsize=8,
        loc="upper left",
        bbox_to_anchor=(1.02, 1.0),
    )
    figure.tight_layout()
    os.makedirs(os.path.dirname(path), exist_ok=True)
    figure.savefig(path + ".tmp.png", dpi=90, bbox_inches="tight")
    os.replace(path + ".tmp.png", path)
    plt.close(figure)
