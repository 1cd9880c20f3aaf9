"""What one `model.fit` step costs with KFAC against Adam on plain Keras layers.

    python bench/step_cost.py                 # about 45 minutes
    python bench/step_cost.py --steps 60      # a quick look
    python bench/step_cost.py --models transformer --batch-sizes 32 128
    python bench/step_cost.py --models "CNN 2xconv32-128-10" \
        --weight-sharing reduce

For each model (MLP 64-256-256-10, MLP 64-1024-1024-10, the digits CNN;
`--models transformer`: the time-to-target suite's transformer classifier
on its byte sequences, converted by `keras_kfac.convert` for the
`keras_kfac` rows) and batch size (64, 256, 1024), times the training
batches of `model.fit` on its data (repeated to fill the batches) with a
callback around each batch, after one untimed epoch (tracing, the first
refreshes), and reports the
mean: the refreshes and the steps that record statistics are a fraction of
the steps, so a median would leave them out. The rows, alternating in one
process, each from the same weights:

- `Adam`: `keras.optimizers.Adam` on the model built from plain Keras
  layers, what a user runs without K-FAC; every ratio is to this row;
- `Adam, keras_kfac layers`: the same on `keras_kfac.layers`, which record
  no factors for Adam (the row shows what their taps cost);
- `KFAC`: `keras_kfac.KFAC()` with its defaults (eigen damping, inverses
  every 10 steps, factors every step);
- `KFAC factored`: `damping_mode="factored"` (explicit inverses, two
  matmuls per layer per step);
- `KFAC factored, statistics every 10`: the same with
  `statistics_update_freq=10`;
- `KFAC adaptive, TrueFisherModel`: the default of supervised training,
  `KFAC(adaptive=True)` through `keras_kfac.TrueFisherModel` (its step
  also differentiates a sampled Fisher loss, takes two curvature
  products by forward differences, one forward pass each, and one more
  forward pass for the reduction ratio);
- `KFAC adaptive, TrueFisherModel, statistics every 10`: the same with
  `statistics_update_freq=10` (the Fisher pass and the factors on one
  step in ten).

`--jit` compiles every train step with XLA (`jit_compile=True`);
`--weight-sharing reduce` converts the `keras_kfac` rows' models with
K-FAC-reduce (`keras_kfac.convert(model, weight_sharing="reduce")`);
`--optimizers` times a subset of the rows.
Prints Markdown for BENCHMARKS.md.
"""

import argparse
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
from optimizer import cnn  # noqa: E402  (bench/optimizer.py's digits CNN)
from sklearn.datasets import load_digits  # noqa: E402
from workloads import WORKLOADS  # noqa: E402

import keras_kfac  # noqa: E402


class BatchTimer(keras.callbacks.Callback):
    """Wall time of every training batch after the first epoch."""

    def __init__(self):
        super().__init__()
        self.times, self._epoch = [], 0

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_begin(self, batch, logs=None):
        self._start = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        if self._epoch > 0:
            self.times.append(time.perf_counter() - self._start)


def mlp(width):
    def build():
        return keras.Sequential(
            [
                keras.Input((64,)),
                keras.layers.Dense(width, activation="tanh"),
                keras.layers.Dense(width, activation="tanh"),
                keras.layers.Dense(10),
            ]
        )

    return build


def repeated(x, y, batch_size, steps):
    """`x`, `y` repeated and cut to `steps` batches of `batch_size`."""
    n = batch_size * steps
    reps = -(-n // len(x))
    tile = (reps,) + (1,) * (x.ndim - 1)
    return np.tile(x, tile)[:n], np.tile(y, reps)[:n]


def digits_batches(shape):
    def batches(batch_size, steps):
        """Digits of `shape`, in `steps` batches of `batch_size`."""
        x, y = load_digits(return_X_y=True)
        x = (x / 16.0).astype("float32").reshape((-1,) + shape)
        return repeated(x, y.astype("int32"), batch_size, steps)

    return batches


def transformer_batches(batch_size, steps):
    """The suite's byte sequences, in `steps` batches of `batch_size`."""
    x, y, _, _ = WORKLOADS["transformer"].data(0)
    return repeated(x, y, batch_size, steps)


# label -> (build() of Keras' layers, batches(batch_size, steps))
MODELS = {
    "MLP 64-256-256-10": (mlp(256), digits_batches((64,))),
    "MLP 64-1024-1024-10": (mlp(1024), digits_batches((64,))),
    "CNN 2xconv32-128-10": (
        lambda: cnn(keras.layers),
        digits_batches((8, 8, 1)),
    ),
    "transformer": (WORKLOADS["transformer"].build, transformer_batches),
}
DIGITS_MODELS = [label for label in MODELS if label != "transformer"]

# name -> (optimizer, whether it trains the model `keras_kfac.convert`ed,
# the model's wrapper)
OPTIMIZERS = {
    "Adam": (lambda: keras.optimizers.Adam(1e-3), False, None),
    "Adam, keras_kfac layers": (
        lambda: keras.optimizers.Adam(1e-3),
        True,
        None,
    ),
    "KFAC": (lambda: keras_kfac.KFAC(), True, None),
    "KFAC factored": (
        lambda: keras_kfac.KFAC(damping_mode="factored"),
        True,
        None,
    ),
    "KFAC factored, statistics every 10": (
        lambda: keras_kfac.KFAC(
            damping_mode="factored", statistics_update_freq=10
        ),
        True,
        None,
    ),
    "KFAC adaptive, TrueFisherModel": (
        lambda: keras_kfac.KFAC(adaptive=True),
        True,
        lambda model: keras_kfac.TrueFisherModel(model, "categorical"),
    ),
    "KFAC adaptive, TrueFisherModel, statistics every 10": (
        lambda: keras_kfac.KFAC(adaptive=True, statistics_update_freq=10),
        True,
        lambda model: keras_kfac.TrueFisherModel(model, "categorical"),
    ),
}


def step_times(model, optimizer, x, y, batch_size, steps, jit):
    model.compile(
        optimizer=optimizer,
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        jit_compile=jit,
    )
    timer = BatchTimer()
    model.fit(
        x, y, batch_size=batch_size, epochs=2, verbose=0, callbacks=[timer]
    )
    return timer.times


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument(
        "--batch-sizes", type=int, nargs="+", default=[64, 256, 1024]
    )
    parser.add_argument(
        "--models", nargs="+", choices=list(MODELS), default=DIGITS_MODELS
    )
    parser.add_argument("--jit", action="store_true")
    parser.add_argument(
        "--optimizers",
        nargs="+",
        choices=list(OPTIMIZERS),
        default=list(OPTIMIZERS),
        help="the rows to time (Adam's, the ratios' base, always)",
    )
    parser.add_argument(
        "--weight-sharing",
        choices=("expand", "reduce"),
        default="expand",
        help="how `keras_kfac.convert` treats positions sharing weights",
    )
    args = parser.parse_args()
    rows = {
        name: OPTIMIZERS[name]
        for name in OPTIMIZERS
        if name == "Adam" or name in args.optimizers
    }
    keras.utils.set_random_seed(0)

    print(
        f"Mean ms per `model.fit` step ({args.steps} steps after one "
        f"untimed epoch, {args.repeats} alternating runs"
        f"{', jit_compile=True' if args.jit else ''}); ratio to Adam on plain "
        "Keras layers.\n"
    )
    sizes = args.batch_sizes
    print(
        "| model | optimizer | "
        + " | ".join(f"batch {b}" for b in sizes)
        + " |"
    )
    print("|---|---|" + "---|" * len(sizes))
    for label in args.models:
        build, batches = MODELS[label]
        initial = build().get_weights()
        means = {name: [] for name in rows}
        for batch_size in sizes:
            x, y = batches(batch_size, args.steps)
            times = {name: [] for name in rows}
            for _ in range(args.repeats):
                for name, (make, converted, wrap) in rows.items():
                    model = build()
                    model.set_weights(initial)
                    if converted:
                        model = keras_kfac.convert(model, args.weight_sharing)
                    model = wrap(model) if wrap else model
                    times[name] += step_times(
                        model, make(), x, y, batch_size, args.steps, args.jit
                    )
            for name in rows:
                means[name].append(statistics.mean(times[name]))
        for name, row in means.items():
            cells = " | ".join(
                f"{1000 * t:.2f} ms ({t / adam:.2f}x)"
                for t, adam in zip(row, means["Adam"])
            )
            print(f"| {label} | {name} | {cells} |", flush=True)


if __name__ == "__main__":
    main()
