"""Time to target: keras_kfac against the optimizers Keras ships, on the
models of `bench/workloads.py`.

    python bench/time_to_target.py --set-targets   # first, once: the targets
    python bench/time_to_target.py --quick         # every optimizer, minutes
    python bench/time_to_target.py                 # full budgets, 3 seeds
    python bench/time_to_target.py --trials 8      # and 8 tuning trials
    python bench/time_to_target.py --held-out      # models nothing was tuned on

Optimizers: `kfac-recommended` (the README's recommendation for a user who
does not tune: `keras_kfac.TrueFisherModel` around `keras_kfac.convert` of
the model, compiled with its default, the adaptive `KFAC`), `kfac-reduce`
(the same with `convert(model, weight_sharing="reduce")`: K-FAC-reduce
for the convolutions, attention and Dense layers on sequences; run only
when `--optimizers` names it), `kfac-cosine` and `adam-cosine` (the
recommended K-FAC and Adam with their learning rate decayed to 0 over the
run by `keras.optimizers.schedules.CosineDecay`, which the adaptive K-FAC
takes as the fraction of its update; also only when named), `kfac` (the
KL-clipped `keras_kfac.KFAC()` on the converted model), and Keras' `adam`,
`adamw`, `muon` and `sgd` (momentum 0.9). Trial 0 of each is its defaults;
`--trials N` adds N settings drawn from its declared search space (the same
N for all), run on seed 0, and the best of them by time to target is rerun
on the other seeds.

The targets are fixed before anything is tuned: `--set-targets` trains
each workload once with Keras' Adam at its defaults (seed 0, full budget)
and takes the best validation metric it reached. A run's time to target is
its training time (validation excluded) at the end of the first epoch
whose validation metric reaches the target. Each workload's curves (the
tuned settings with `--trials`, else the defaults; mean over the seeds,
against steps and seconds) go to `bench/results/time_to_target/BUDGET/
WORKLOAD-SETTING.png` (`WORKLOAD-SETTING-OPTIMIZERS.png` for other rows
than the suite's). Every finished run is a JSON
file under `bench/results/time_to_target/`, kept and skipped on a rerun,
so the suite resumes after any stop.
"""

import argparse
import json
import math
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from target_curves import plot_curves  # noqa: E402
from workloads import HELD_OUT, WORKLOADS  # noqa: E402

RESULTS = os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "results", "time_to_target"
)
TARGETS = os.path.join(RESULTS, "targets.json")
SEEDS = (0, 1, 2)
ALL_WORKLOADS = {**WORKLOADS, **HELD_OUT}
REFERENCE = "adam"  # the optimizer whose default run fixes the targets

# Each optimizer's search space: name -> (low, high), drawn log-uniformly.
# The adaptive K-FAC chooses its step and adapts `λ`; its trust radius and
# starting `λ` are what a user would turn.
SEARCH_SPACES = {
    "kfac-recommended": {"kl_clip": (1e-2, 1.0), "damping": (1e-3, 1.0)},
    "kfac": {
        "learning_rate": (0.01, 1.0),
        "damping": (1e-4, 0.1),
        "kl_clip": (1e-4, 0.1),
    },
    "adam": {"learning_rate": (1e-4, 1e-2)},
    "adamw": {"learning_rate": (1e-4, 1e-2), "weight_decay": (1e-4, 0.1)},
    "muon": {"learning_rate": (1e-3, 0.1)},
    "sgd": {"learning_rate": (1e-3, 0.3)},
    "kfac-reduce": {"kl_clip": (1e-2, 1.0), "damping": (1e-3, 1.0)},
    "kfac-cosine": {"kl_clip": (1e-2, 1.0), "damping": (1e-3, 1.0)},
    "adam-cosine": {"learning_rate": (1e-4, 1e-2)},
}
# The adaptive K-FAC through `TrueFisherModel`, by how `convert` shares
# weights over positions.
TRUE_FISHER_WEIGHT_SHARING = {
    "kfac-recommended": "expand",
    "kfac-reduce": "reduce",
    "kfac-cosine": "expand",
}
# The rows whose learning rate decays to 0 over the run's steps by a cosine
# (`keras.optimizers.schedules.CosineDecay`) from its setting or default.
COSINE_DECAYED = {"kfac-cosine": 0.25, "adam-cosine": 1e-3}
OPTIMIZERS = tuple(SEARCH_SPACES)
# The suite's rows; `kfac-reduce` and the cosine-decayed ones run when
# asked for (`--optimizers`).
SUITE_OPTIMIZERS = tuple(
    o for o in OPTIMIZERS if o != "kfac-reduce" and o not in COSINE_DECAYED
)
BATCH_SIZE = 32  # Keras' default, which every run keeps


def trial_settings(optimizer: str, trial: int) -> dict:
    """Trial 0: the defaults (`{}`); trial `k`: a log-uniform draw from the
    search space, the same for every workload."""
    if trial == 0:
        return {}
    rng = np.random.default_rng([OPTIMIZERS.index(optimizer), trial])
    return {
        name: float(math.exp(rng.uniform(math.log(low), math.log(high))))
        for name, (low, high) in SEARCH_SPACES[optimizer].items()
    }


def compiled_model(workload, optimizer: str, settings: dict, steps=None):
    """The workload's model, compiled as a user would for `optimizer`;
    `steps`, the run's, is what a cosine-decayed row decays over."""
    import keras

    import keras_kfac

    if optimizer in COSINE_DECAYED:
        settings = dict(settings)
        settings["learning_rate"] = keras.optimizers.schedules.CosineDecay(
            settings.get("learning_rate", COSINE_DECAYED[optimizer]), steps
        )
    model = workload.build()
    metrics = [] if workload.metric == "loss" else [workload.metric]
    if optimizer in TRUE_FISHER_WEIGHT_SHARING:
        converted = keras_kfac.convert(
            model, TRUE_FISHER_WEIGHT_SHARING[optimizer]
        )
        model = keras_kfac.TrueFisherModel(converted, workload.distribution)
        chosen = keras_kfac.KFAC(adaptive=True, **settings)
    elif optimizer == "kfac":
        model = keras_kfac.convert(model)
        chosen = keras_kfac.KFAC(**settings)
    else:
        kinds = {
            "adam": keras.optimizers.Adam,
            "adam-cosine": keras.optimizers.Adam,
            "adamw": keras.optimizers.AdamW,
            "muon": keras.optimizers.Muon,
            "sgd": lambda **kw: keras.optimizers.SGD(momentum=0.9, **kw),
        }
        chosen = kinds[optimizer](**settings)
    model.compile(optimizer=chosen, loss=workload.loss(), metrics=metrics)
    return model


class TrainingClock:
    """Records, at the end of every epoch, the training seconds (validation
    left out), the optimizer steps and the validation metric."""

    def __init__(self, metric: str):
        import keras

        clock = self

        class Callback(keras.callbacks.Callback):
            def on_train_begin(self, logs=None):
                clock.start = time.perf_counter()
                clock.paused = 0.0

            def on_test_begin(self, logs=None):
                clock.test_start = time.perf_counter()

            def on_test_end(self, logs=None):
                clock.paused += time.perf_counter() - clock.test_start

            def on_epoch_end(self, epoch, logs=None):
                clock.seconds.append(
                    time.perf_counter() - clock.start - clock.paused
                )
                clock.steps.append(int(self.model.optimizer.iterations))
                clock.values.append(float(logs[f"val_{metric}"]))

        self.callback = Callback()
        self.seconds, self.steps, self.values = [], [], []


def run(workload, optimizer, trial, seed, epochs) -> dict:
    """Trains one run; returns its record."""
    import keras

    keras.utils.set_random_seed(seed)
    x, y, x_val, y_val = workload.data(seed)
    settings = trial_settings(optimizer, trial)
    steps = epochs * math.ceil(len(x) / BATCH_SIZE)
    model = compiled_model(workload, optimizer, settings, steps)
    clock = TrainingClock(workload.metric)
    model.fit(
        x,
        y,
        epochs=epochs,
        batch_size=BATCH_SIZE,
        validation_data=(x_val, y_val),
        callbacks=[clock.callback, keras.callbacks.TerminateOnNaN()],
        verbose=0,
    )
    return dict(
        workload=workload.name,
        optimizer=optimizer,
        trial=trial,
        seed=seed,
        settings=settings,
        epochs=epochs,
        seconds=clock.seconds,
        steps=clock.steps,
        values=clock.values,
        finished=len(clock.values) == epochs
        and all(map(math.isfinite, clock.values)),
    )


def run_path(workload, optimizer, trial, seed, quick) -> str:
    name = f"{optimizer}-trial{trial}-seed{seed}.json"
    return os.path.join(RESULTS, budget_name(quick), workload, name)


def cached_run(workload, optimizer, trial, seed, quick) -> dict:
    """The run's record, trained and written only when missing."""
    path = run_path(workload.name, optimizer, trial, seed, quick)
    if os.path.exists(path):
        with open(path) as f:
            return json.load(f)
    epochs = workload.quick_epochs if quick else workload.epochs
    record = run(workload, optimizer, trial, seed, epochs)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path + ".tmp", "w") as f:
        json.dump(record, f, indent=1)
    os.replace(path + ".tmp", path)
    return record


def to_target(workload, record, target) -> tuple[float, int] | None:
    """`(seconds, steps)` at the first epoch whose validation metric
    reaches `target`, or `None`."""
    for seconds, steps, value in zip(
        record["seconds"], record["steps"], record["values"]
    ):
        if math.isfinite(value) and workload.better(value, target):
            return seconds, steps
    return None


def best(workload, values) -> float:
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return math.nan
    return max(finite) if workload.direction == "higher" else min(finite)


def budget_name(quick: bool) -> str:
    return "quick" if quick else "full"


def set_targets(names, quick) -> dict:
    """The best validation metric of the reference run of each workload,
    kept per budget (the quick budget has its own, lower targets)."""
    everything = {"full": {}, "quick": {}, **load_all_targets()}
    targets = everything[budget_name(quick)]
    for name in names:
        record = cached_run(ALL_WORKLOADS[name], REFERENCE, 0, 0, quick)
        targets[name] = best(ALL_WORKLOADS[name], record["values"])
    os.makedirs(RESULTS, exist_ok=True)
    with open(TARGETS + ".tmp", "w") as f:
        json.dump(everything, f, indent=1, sort_keys=True)
    os.replace(TARGETS + ".tmp", TARGETS)
    return targets


def load_all_targets() -> dict:
    if not os.path.exists(TARGETS):
        return {}
    with open(TARGETS) as f:
        return json.load(f)


def runs_of(workload, optimizer, trials, seeds, quick, target) -> dict:
    """`{"default": [records], "tuned": [records]}`: trial 0 on every seed,
    and the trial fastest to target on seed 0 on every seed."""
    default = [cached_run(workload, optimizer, 0, s, quick) for s in seeds]
    candidates = [default[0]] + [
        cached_run(workload, optimizer, t, seeds[0], quick)
        for t in range(1, trials + 1)
    ]

    def time_of(record):
        reached = to_target(workload, record, target)
        return math.inf if reached is None else reached[0]

    chosen = min(candidates, key=time_of)["trial"]
    tuned = [cached_run(workload, optimizer, chosen, s, quick) for s in seeds]
    return {"default": default, "tuned": tuned}


def median_or_none(values):
    values = [v for v in values if v is not None]
    return float(np.median(values)) if values else None


def summary_row(workload, records, target) -> dict:
    reached = [to_target(workload, r, target) for r in records]
    finals = [r["values"][-1] if r["values"] else math.nan for r in records]
    return dict(
        trial=records[0]["trial"],
        reached=sum(r is not None for r in reached),
        seconds=median_or_none([r[0] for r in reached if r]),
        steps=median_or_none([r[1] for r in reached if r]),
        final=(float(np.mean(finals)), float(np.std(finals))),
    )


def kfac_coverage(workload) -> str:
    """Which of the workload's trainable variables `keras_kfac` puts in a
    K-FAC block (from `KFAC.summary_rows` of the converted model), and
    the ones it trains first-order, by name."""
    import keras_kfac

    model = keras_kfac.convert(workload.build())
    optimizer = keras_kfac.KFAC()
    optimizer.build(model.trainable_variables)
    rows = optimizer.summary_rows()
    first_order = [path for path, _, update in rows if "K-FAC" not in update]
    blocks = len(optimizer.estimator.blocks)
    return (
        f"K-FAC: {len(rows) - len(first_order)} of {len(rows)} trainable "
        f"variables in {blocks} blocks; first-order: "
        f"{', '.join(first_order) or 'none'}."
    )


def markdown(name, rows, target) -> str:
    workload = ALL_WORKLOADS[name]
    lines = [
        f"#### {name}",
        "",
        f"Target: validation {workload.metric} "
        f"{'≥' if workload.direction == 'higher' else '≤'} {target:.4g}.",
        "",
        "| optimizer | setting | reached | time to target, s "
        "| steps to target | final (mean ± std) |",
        "|---|---|---|---|---|---|",
    ]
    for (optimizer, setting), row in rows.items():
        seconds = "–" if row["seconds"] is None else f"{row['seconds']:.1f}"
        steps = "–" if row["steps"] is None else f"{row['steps']:.0f}"
        mean, std = row["final"]
        lines.append(
            f"| {optimizer} | {setting} (trial {row['trial']}) "
            f"| {row['reached']} | {seconds} | {steps} "
            f"| {mean:.4g} ± {std:.2g} |"
        )
    return "\n".join(lines) + "\n"


def geometric_mean_ratio(
    tables, optimizer, setting, keras_setting
) -> float | None:
    """The geometric mean over workloads of `optimizer`'s time to target
    (its `setting` row) over the fastest Keras optimizer's (their
    `keras_setting` rows); `None` when some workload lacks a time or was
    not run for `optimizer`."""
    ratios = []
    for rows in tables.values():
        if (optimizer, setting) not in rows:
            return None
        ours = rows[(optimizer, setting)]["seconds"]
        keras_times = [
            row["seconds"]
            for (name, kind), row in rows.items()
            if kind == keras_setting
            and not name.startswith("kfac")
            and row["seconds"] is not None
        ]
        if ours is None or not keras_times:
            return None
        ratios.append(ours / min(keras_times))
    return float(np.exp(np.mean(np.log(ratios)))) if ratios else None


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--workloads", nargs="+", choices=sorted(ALL_WORKLOADS), default=None
    )
    parser.add_argument(
        "--held-out",
        action="store_true",
        help="the workloads no setting was chosen on (`HELD_OUT`)",
    )
    parser.add_argument(
        "--optimizers",
        nargs="+",
        choices=OPTIMIZERS,
        default=SUITE_OPTIMIZERS,
        help="default: all but kfac-reduce, kfac-cosine and adam-cosine",
    )
    parser.add_argument("--seeds", type=int, default=len(SEEDS))
    parser.add_argument("--trials", type=int, default=0)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--set-targets", action="store_true")
    args = parser.parse_args(argv)
    if not 1 <= args.seeds <= len(SEEDS) or args.trials < 0:
        parser.error(
            f"--seeds must be 1 to {len(SEEDS)} and --trials >= 0. "
            f"Received: --seeds {args.seeds} --trials {args.trials}"
        )
    return args


def plot_name(workload: str, setting: str, optimizers) -> str:
    """`WORKLOAD-SETTING.png` for the suite's rows; a run of other rows
    (`--optimizers`) names them, so it leaves the suite's plot alone."""
    if tuple(optimizers) == SUITE_OPTIMIZERS:
        return f"{workload}-{setting}.png"
    return f"{workload}-{setting}-{'+'.join(optimizers)}.png"


def main(argv=None) -> None:
    args = parse_args(argv)
    names = args.workloads or sorted(HELD_OUT if args.held_out else WORKLOADS)
    if args.set_targets:
        print(json.dumps(set_targets(names, args.quick), indent=1))
        return
    targets = load_all_targets().get(budget_name(args.quick), {})
    missing = [n for n in names if n not in targets]
    if missing:
        sys.exit(
            f"No target for {', '.join(missing)}: run with --set-targets "
            f"{'--quick ' if args.quick else ''}first (before any tuning)."
        )
    # Without trials the tuned setting is the default one: shown once.
    shown_settings = ("default", "tuned") if args.trials else ("default",)
    tables = {}
    for name in names:
        workload, target = ALL_WORKLOADS[name], targets[name]
        rows, plotted = {}, {}
        for optimizer in args.optimizers:
            runs = runs_of(
                workload,
                optimizer,
                args.trials,
                SEEDS[: args.seeds],
                args.quick,
                target,
            )
            for setting, records in runs.items():
                rows[(optimizer, setting)] = summary_row(
                    workload, records, target
                )
            plotted[optimizer] = runs[shown_settings[-1]]
        tables[name] = rows
        plot_curves(
            workload,
            plotted,
            target,
            os.path.join(
                RESULTS,
                budget_name(args.quick),
                plot_name(name, shown_settings[-1], args.optimizers),
            ),
        )
        shown = {k: row for k, row in rows.items() if k[1] in shown_settings}
        print(markdown(name, shown, target))
        print(kfac_coverage(workload) + "\n")
    for setting in shown_settings:
        keras_setting = "tuned" if args.trials else "default"
        ratio = geometric_mean_ratio(
            tables, "kfac-recommended", setting, keras_setting
        )
        shown = "–" if ratio is None else f"{ratio:.2f}x"
        print(
            f"kfac-recommended ({setting}) time to target over the fastest "
            f"Keras optimizer ({keras_setting}), geometric mean: {shown}"
        )


if __name__ == "__main__":
    main()
