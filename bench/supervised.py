"""K-FAC vs kfac-jax vs Adam vs SGD on a supervised problem: error vs
updates and seconds.

    python bench/supervised.py --problem autoencoder \
        > bench/results/autoencoder/autoencoder.md
    python bench/supervised.py --problem cnn > bench/results/cnn/cnn.md
    python bench/supervised.py --problem cnn --quick   # a smoke test

`bench/problems.py` defines the problems: the deep autoencoder of Martens &
Grosse (2015) scaled down to data that ships offline, scikit-learn's digits
(1797 8x8 images, pixels scaled to [0, 1]; nothing larger ships in the
installed packages, and Keras' MNIST loader needs a download), and the
digits CNN of `bench/optimizer.py`; their plans (batch sizes, updates) and
error targets; the initial weights and batch order of each seed.

The autoencoder's training loss is the Bernoulli negative log-likelihood
of the image, binary cross-entropy *summed* over the 64 pixels and averaged
over the batch. The sum matters for K-FAC: its factors come from outer
products of the loss gradient, which match the loss's curvature only when
the loss is a negative log-likelihood; Keras' `binary_crossentropy`
averages over the pixels, which makes K-FAC's Fisher 64 times too small
relative to the loss it preconditions. The CNN's loss is the softmax
cross-entropy of the digit, already a negative log-likelihood.

Optimizers, all from the same initial weights and batch sequence per seed:

- `KFAC adaptive`: `keras_kfac.KFAC(adaptive=True)` with its defaults,
  trained by `keras_kfac.TrueFisherModel`'s train step: true-Fisher
  factors, the step `α Δ + μ v` minimizing the quadratic model under exact
  Gauss-Newton products, Levenberg-Marquardt damping (Martens & Grosse
  2015, §6.5 and §7). Its one-point "grid" is the default initial damping:
  nothing is tuned;
- `KFAC emp.`: `keras_kfac.KFAC`, factors from the gradient of the training
  loss (the empirical Fisher; what `model.fit` does);
- `KFAC true`: the same optimizer with factors from a second backward pass
  at targets sampled from the model's predictive distribution (the true
  Fisher, as in the paper, what `keras_kfac.TrueFisherModel` does, written
  out here with `keras_kfac.collecting_statistics`);
- `Adam`; `SGD`: Nesterov momentum 0.9.

The KL-clipped K-FAC keeps its defaults except `damping`; each of the
other optimizers has one hyperparameter tuned over a grid of the same size
(`GRIDS`) on seed 0 by the final error, and the chosen value is then run on
the other seeds. `bench/kfac_jax_supervised.py` runs kfac-jax and optax
Adam on the same problem in their own environment; this script adds the
runs it wrote to `--out` to its table and plot.

Measured: the problem's error on the whole set every few updates;
training wall seconds exclude those evaluations and all tracing (each run
makes two warm-up updates, then restores the weights and optimizer state).
ms/update is training seconds over updates, so K-FAC's periodic
refreshes are included. Prints Markdown; writes the plot (one row per batch
size: error vs updates, error vs seconds, mean over seeds and min-max
band) and every curve as CSV to `--out`.
"""

import argparse
import csv
import dataclasses
import gc
import json
import os
import sys
import time

import keras
import numpy as np
import tensorflow as tf
from problems import BERNOULLI, KERNEL, POOL, PROBLEMS, batch_sequence
from problems import reach as reach_target

import keras_kfac

MOMENTUM = 0.9
# The arrays of a run's curve: one entry per evaluation.
COLUMNS = ("updates", "seconds", "errors")

# One tuned hyperparameter per optimizer, grids of equal size.
GRIDS = {
    "KFAC adaptive": ("damping", [1e-2]),
    "KFAC emp.": ("damping", [1e-4, 1e-3, 1e-2]),
    "KFAC true": ("damping", [1e-4, 1e-3, 1e-2]),
    "Adam": ("learning_rate", [1e-3, 3e-3, 1e-2, 3e-2]),
    "SGD": ("learning_rate", [0.01, 0.03, 0.1, 0.3]),
}
QUICK_GRIDS = {
    "KFAC adaptive": ("damping", [1e-2]),
    "KFAC emp.": ("damping", [1e-3, 1e-2]),
    "KFAC true": ("damping", [1e-3, 1e-2]),
    "Adam": ("learning_rate", [1e-3, 1e-2]),
    "SGD": ("learning_rate", [0.03, 0.1]),
}
COLORS = {
    "KFAC adaptive": "tab:purple",
    "kfac-jax adaptive": "black",
    "kfac-jax, λ ≥ 1e-4": "tab:gray",
    "optax Adam": "tab:cyan",
    "KFAC emp.": "tab:orange",
    "KFAC true": "tab:red",
    "Adam": "tab:blue",
    "SGD": "tab:green",
}


@dataclasses.dataclass
class Section:
    """One batch size of the benchmark: its table in the report.

    Attributes:
        batch_size: Examples per update.
        updates: Updates per run.
        grid_runs: `(optimizer, value) -> run` of the grid on the first
            seed.
        chosen: `optimizer -> value` of the lowest final error.
        runs: `optimizer -> [run of each seed]` at the chosen value.
    """

    batch_size: int
    updates: int
    grid_runs: dict
    chosen: dict
    runs: dict


def make_optimizer(name, value):
    if name == "KFAC adaptive":
        return keras_kfac.KFAC(adaptive=True, damping=value)
    if name.startswith("KFAC"):
        return keras_kfac.KFAC(damping=value)
    if name == "Adam":
        return keras.optimizers.Adam(value)
    return keras.optimizers.SGD(value, momentum=MOMENTUM, nesterov=True)


def network(problem, layers=keras_kfac.layers):
    """The problem's layers as a Keras model; its Dense and Conv2D come from
    `layers` (`keras_kfac.layers`, or `keras.layers` for a model without
    K-FAC's taps)."""
    stack = []
    for spec in problem.layers:
        kind = spec[0]
        if kind == "dense":
            stack.append(layers.Dense(spec[1], activation=spec[2]))
        elif kind == "conv":
            stack.append(
                layers.Conv2D(
                    spec[1], KERNEL, padding="same", activation=spec[2]
                )
            )
        elif kind == "pool":
            stack.append(keras.layers.MaxPooling2D(POOL))
        else:
            stack.append(keras.layers.Flatten())
    return keras.Sequential([keras.Input(problem.input_shape), *stack])


def per_example_nll(problem, y, logits):
    """`-log p(y | x)` of each example: Bernoulli over the pixels, or
    softmax over the digits."""
    if problem.loss == BERNOULLI:
        per_pixel = tf.nn.sigmoid_cross_entropy_with_logits(
            labels=y, logits=logits
        )
        return tf.reduce_sum(per_pixel, axis=1)
    # Keras' compiled loss hands the digits over cast to the logits' dtype.
    return tf.nn.sparse_softmax_cross_entropy_with_logits(
        labels=tf.cast(y, tf.int32), logits=logits
    )


def sample_targets(problem, logits, generator):
    """Targets drawn from the model's predictive distribution."""
    u = generator.uniform(tf.shape(logits))
    if problem.loss == BERNOULLI:
        return tf.cast(u < tf.sigmoid(logits), tf.float32)
    # Gumbel-max: argmax(logits + Gumbel noise) is a categorical draw.
    return tf.argmax(
        logits - tf.math.log(-tf.math.log(u)), axis=-1, output_type=tf.int32
    )


def make_step(problem, model, optimizer, x, y, true_fisher, generator):
    variables = model.trainable_variables

    def loss_of(targets, logits):
        return tf.reduce_mean(per_example_nll(problem, targets, logits))

    @tf.function
    def step(indices):
        batch, targets = tf.gather(x, indices), tf.gather(y, indices)
        with tf.GradientTape(persistent=true_fisher) as tape:
            logits = model(batch, training=True)
            loss = loss_of(targets, logits)
            if true_fisher:
                sampled = tf.stop_gradient(
                    sample_targets(problem, logits, generator)
                )
                fisher = loss_of(sampled, logits)
        if true_fisher:
            # Factors from the sampled loss, the gradient from the real one.
            grads = keras_kfac.fisher_then_loss_gradients(
                tape, fisher, loss, variables
            )
            del tape
        else:
            grads = tape.gradient(loss, variables)
        optimizer.apply_gradients(zip(grads, variables))
        return loss

    return step


def make_adaptive_step(problem, model, optimizer, x, y):
    """`keras_kfac.TrueFisherModel`'s own train step: true-Fisher factors,
    the adaptive update from exact Gauss-Newton products."""
    trainer = keras_kfac.TrueFisherModel(model, distribution=problem.loss)
    trainer.compile(
        optimizer=optimizer,
        loss=lambda targets, logits: per_example_nll(problem, targets, logits),
    )

    @tf.function
    def step(indices):
        batch = (tf.gather(x, indices), tf.gather(y, indices))
        return trainer.train_step(batch)["loss"]

    return step


def make_evaluate(problem, model, x, y):
    """The problem's error and second figure on the whole set."""

    @tf.function
    def evaluate():
        logits = model(x, training=False)
        nll = tf.reduce_mean(per_example_nll(problem, y, logits))
        if problem.loss == BERNOULLI:
            error = tf.reduce_mean(
                tf.reduce_sum(tf.square(tf.sigmoid(logits) - x), axis=1)
            )
            return error, nll
        wrong = tf.not_equal(tf.argmax(logits, -1, output_type=tf.int32), y)
        return nll, 100 * tf.reduce_mean(tf.cast(wrong, tf.float32))

    return evaluate


def train(problem, name, value, initial, data, batches, eval_every, seed):
    """One run; returns updates, training seconds and errors at each
    evaluation."""
    keras.utils.set_random_seed(seed)  # the sampled Fisher targets
    x, y = data
    model = network(problem)
    model.set_weights(initial)
    optimizer = make_optimizer(name, value)
    optimizer.build(model.trainable_variables)
    generator = tf.random.Generator.from_seed(seed)
    adaptive = getattr(optimizer, "adaptive", False)
    if adaptive:
        step = make_adaptive_step(problem, model, optimizer, x, y)
    else:
        step = make_step(
            problem, model, optimizer, x, y, name == "KFAC true", generator
        )
    evaluate = make_evaluate(problem, model, x, y)

    state = model.weights + optimizer.variables
    saved = [v.numpy() for v in state]
    for indices in batches[:2]:  # trace and warm up, then undo
        step(indices).numpy()
    evaluate()
    for v, value_ in zip(state, saved):
        v.assign(value_)
    generator.reset_from_seed(seed)

    error, second = evaluate()
    updates, seconds, errors = [0], [0.0], [float(error)]
    clip = []
    clock = 0.0
    for start in range(0, len(batches), eval_every):
        t = time.perf_counter()
        for indices in batches[start : start + eval_every]:
            loss = step(indices)
        loss.numpy()
        clock += time.perf_counter() - t
        error, second = evaluate()
        updates.append(min(start + eval_every, len(batches)))
        seconds.append(clock)
        errors.append(float(error))
        if name.startswith("KFAC") and not adaptive:
            clip.append(float(optimizer.clip_coefficient))
    skipped = int(optimizer.skipped_steps) if name.startswith("KFAC") else 0
    result = dict(
        updates=np.array(updates),
        seconds=np.array(seconds),
        errors=np.array(errors),
        second=float(second),
        ms=1000 * clock / len(batches),
        clip=float(np.mean(clip)) if clip else None,
        skipped=skipped,
    )
    del model, optimizer, step, evaluate
    gc.collect()
    print(
        f"  {name} {value:g} seed {seed}: error {errors[-1]:.4g}, "
        f"{result['ms']:.2f} ms/update",
        file=sys.stderr,
        flush=True,
    )
    return result


def final(run):
    e = run["errors"][-1]
    return e if np.isfinite(e) else np.inf


def reach(run, target):
    return reach_target(run["updates"], run["seconds"], run["errors"], target)


def fmt(value):
    return f"{value:g}"


def benchmark(
    problem, data, batch_size, updates, grids, seeds, eval_every
) -> Section:
    """Every optimizer's grid on the first seed, then its chosen value on
    the other seeds."""
    initial = {seed: problem.initial_weights(seed) for seed in seeds}
    n = len(data[0])
    batches = {s: batch_sequence(n, batch_size, updates, s) for s in seeds}

    grid_runs = {}
    for name, (_, values) in grids.items():
        for value in values:
            grid_runs[name, value] = train(
                problem,
                name,
                value,
                initial[seeds[0]],
                data,
                batches[seeds[0]],
                eval_every,
                seeds[0],
            )
    chosen, runs = {}, {}
    for name, (_, values) in grids.items():
        chosen[name] = min(values, key=lambda v: final(grid_runs[name, v]))
        runs[name] = [grid_runs[name, chosen[name]]]
    for seed in seeds[1:]:
        for name in grids:
            runs[name].append(
                train(
                    problem,
                    name,
                    chosen[name],
                    initial[seed],
                    data,
                    batches[seed],
                    eval_every,
                    seed,
                )
            )
    return Section(batch_size, updates, grid_runs, chosen, runs)


def report(
    problem, section: Section, *, grids, seeds, target, examples: int
) -> None:
    """Prints a section's Markdown: the table of the chosen values over the
    seeds, the grid on the first seed and the skipped K-FAC steps.
    `examples` is the size of the data set, for the epochs."""
    batch_size, updates = section.batch_size, section.updates
    grid_runs, chosen, runs = section.grid_runs, section.chosen, section.runs
    epochs = updates * batch_size / examples
    print(f"### Batch {batch_size}, {updates} updates ({epochs:.0f} epochs)\n")
    print(
        f"Error target {fmt(target)}; mean ± sample std over seeds {seeds}; "
        "updates/seconds to target averaged over the seeds that reached it.\n"
    )
    print(
        f"| optimizer | tuned | final {problem.error} | final {problem.second} "
        "| updates to target "
        "| seconds to target | ms/update |"
    )
    print("|---|---|---|---|---|---|---|")
    for name, seed_runs in runs.items():
        errors = np.array([r["errors"][-1] for r in seed_runs])
        second = np.array([r["second"] for r in seed_runs])
        hits = [
            h for h in (reach(r, target) for r in seed_runs) if h is not None
        ]
        n = (
            f" ({len(hits)}/{len(seed_runs)})"
            if len(hits) < len(seed_runs)
            else ""
        )
        to_updates = (
            f"{np.mean([h[0] for h in hits]):.0f}{n}" if hits else "not reached"
        )
        to_seconds = (
            f"{np.mean([h[1] for h in hits]):.1f}{n}" if hits else "not reached"
        )
        ms = np.mean([r["ms"] for r in seed_runs])
        param = grids[name][0]
        print(
            f"| {name} | {param}={fmt(chosen[name])} | {errors.mean():.3g} ± "
            f"{errors.std(ddof=1) if len(errors) > 1 else 0:.2g} "
            f"| {second.mean():.3g} | {to_updates} | {to_seconds} | {ms:.2f} |"
        )
    print(
        f"\nGrid (seed {seeds[0]}, final error; chosen in bold; for K-FAC also "
        "the mean clip coefficient η/η_max at the evaluations):\n"
    )
    print("| optimizer | value | final error | η/η_max |")
    print("|---|---|---|---|")
    for name, (param, values) in grids.items():
        for value in values:
            run = grid_runs[name, value]
            cell = f"{param}={fmt(value)}"
            cell = f"**{cell}**" if value == chosen[name] else cell
            clip = "—" if run["clip"] is None else f"{run['clip']:.3f}"
            print(f"| {name} | {cell} | {run['errors'][-1]:.3g} | {clip} |")
    skipped = {
        name: sum(r["skipped"] for r in seed_runs)
        for name, seed_runs in runs.items()
        if name.startswith("KFAC")
    }
    print(f"\nK-FAC steps skipped as non-finite (all seeds): {skipped}\n")


def plot(problem, results, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = len(results)
    figure, axes = plt.subplots(rows, 2, figsize=(11, 4 * rows), squeeze=False)
    for row, (batch_size, runs) in enumerate(results.items()):
        for name, seed_runs in runs.items():
            errors = np.array([r["errors"] for r in seed_runs])
            mean = errors.mean(axis=0)
            for col, key in enumerate(("updates", "seconds")):
                # Seeds share evaluation points; on the time axis each point
                # sits at the seeds' mean time. Time is on a log scale (the
                # optimizers' costs differ by orders of magnitude), which
                # leaves out the start at 0 s.
                at = np.mean([r[key] for r in seed_runs], axis=0)
                shown = slice(col, None)
                ax = axes[row, col]
                ax.plot(at[shown], mean[shown], color=COLORS[name], label=name)
                ax.fill_between(
                    at[shown],
                    errors.min(axis=0)[shown],
                    errors.max(axis=0)[shown],
                    color=COLORS[name],
                    alpha=0.2,
                    linewidth=0,
                )
        for col, label in enumerate(("updates", "training seconds")):
            ax = axes[row, col]
            ax.set_yscale("log")
            ax.set_xlabel(label)
            ax.set_ylabel(f"{problem.error} (whole set)")
            ax.set_title(f"batch {batch_size}: error vs {label}")
            ax.grid(True, which="both", alpha=0.3)
        axes[row, 1].set_xscale("log")
        axes[row, 0].legend()
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def write_curves(results, path):
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(
            [
                "batch_size",
                "optimizer",
                "seed_index",
                "update",
                "seconds",
                "error",
            ]
        )
        for batch_size, runs in results.items():
            for name, seed_runs in runs.items():
                for i, r in enumerate(seed_runs):
                    for u, s, e in zip(r["updates"], r["seconds"], r["errors"]):
                        writer.writerow(
                            [batch_size, name, i, u, f"{s:.4f}", f"{e:.5f}"]
                        )


def add_kfac_jax_runs(path, sections, grids):
    """Adds the runs `bench/kfac_jax_supervised.py` wrote to `path` (same
    problem, weights and batches) to every section of that batch size, and
    their grids to `grids`; returns their package versions, or None when
    there is no such file."""
    if not os.path.exists(path):
        return None
    with open(path) as f:
        external = json.load(f)
    for section in sections:
        theirs = external.get(str(section.batch_size))
        if theirs is None:
            continue
        for name, (param, values) in theirs["grids"].items():
            grids[name] = (param, values)
            section.chosen[name] = theirs["chosen"][name]
            section.runs[name] = [
                {**r, **{k: np.array(r[k]) for k in COLUMNS}, "clip": None}
                for r in theirs["runs"][name]
            ]
            for value in values:
                run = theirs["grid_runs"][name][str(value)]
                section.grid_runs[name, value] = {
                    **run,
                    **{k: np.array(run[k]) for k in COLUMNS},
                    "clip": None,
                }
    return external["versions"]


def print_introduction(problem, examples: int, jax_versions) -> None:
    """The report's title and what every table shares."""
    print(f"## {problem.title}: K-FAC vs Adam vs SGD\n")
    print(
        f"{problem.description} Error: {problem.error}, mean over all "
        f"{examples} images, inference mode. `KFAC emp.` / `KFAC true`: "
        "`keras_kfac.KFAC` defaults but `damping`, empirical / sampled (true) "
        f"Fisher; SGD: Nesterov momentum {MOMENTUM}. Same initial weights and "
        "batch order per seed for every optimizer. Seconds = training only "
        "(no tracing, no evaluation).\n"
    )
    if jax_versions is not None:
        print(
            "`kfac-jax adaptive` and `optax Adam`: "
            "`bench/kfac_jax_supervised.py` in its own environment (jax "
            f"{jax_versions['jax']}, kfac-jax {jax_versions['kfac_jax']}, "
            f"optax {jax_versions['optax']}; "
            f"{jax_versions['minutes']:.1f} min), same weights and batches.\n"
        )


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--quick",
        action="store_true",
        help="the problem's quick plan, 2-point grids, 2 seeds",
    )
    parser.add_argument(
        "--problem", choices=sorted(PROBLEMS), default="autoencoder"
    )
    parser.add_argument("--seeds", type=int, default=None, help="3 (quick: 2)")
    parser.add_argument(
        "--target",
        type=float,
        default=None,
        help="error target; the problem's own by default (bench/problems.py)",
    )
    parser.add_argument(
        "--out", default=None, help="bench/results/<problem> by default"
    )
    return parser.parse_args(argv)


def main(argv=None) -> None:
    """Runs the benchmark; prints the Markdown, writes the plot and CSV."""
    args = parse_args(argv)
    problem = PROBLEMS[args.problem]
    out = args.out or os.path.join("bench", "results", problem.name)
    if args.quick:
        plan, grids, seeds = problem.quick_plan, QUICK_GRIDS, args.seeds or 2
        target = problem.quick_target
    else:
        plan, grids, seeds = problem.full_plan, GRIDS, args.seeds or 3
        target = problem.target
    grids = dict(grids)  # a copy: add_kfac_jax_runs adds kfac-jax's grids
    target = target if args.target is None else args.target
    seeds = list(range(seeds))
    os.makedirs(out, exist_ok=True)

    data = tuple(tf.constant(a) for a in problem.data())
    examples = len(data[0])
    start, load = time.perf_counter(), os.getloadavg()[0]
    sections = [
        benchmark(problem, data, batch_size, updates, grids, seeds, eval_every)
        for batch_size, updates, eval_every in plan
    ]
    total = time.perf_counter() - start
    suffix = "_quick" if args.quick else ""
    jax_versions = add_kfac_jax_runs(
        os.path.join(out, f"kfac_jax{suffix}.json"), sections, grids
    )
    results = {section.batch_size: section.runs for section in sections}
    plot(problem, results, os.path.join(out, f"{problem.name}{suffix}.png"))
    write_curves(results, os.path.join(out, f"curves{suffix}.csv"))

    print_introduction(problem, examples, jax_versions)
    for section in sections:
        report(
            problem,
            section,
            grids=grids,
            seeds=seeds,
            target=target,
            examples=examples,
        )
    print(
        f"Whole benchmark: {total / 60:.1f} min of wall time (load average "
        f"{load:.1f} at the start, {os.getloadavg()[0]:.1f} at the end, "
        f"{os.cpu_count()} CPUs)."
    )


if __name__ == "__main__":
    main()
