"""KFAC vs Adam inside `model.fit`: training loss vs epochs and seconds.

    python bench/optimizer.py > bench_out.md     # or: make bench

Trains the digits MLP and CNN from the same initial weights with Adam (on
the model built from plain Keras layers, what a user would run without
K-FAC) and with KFAC at `inverse_update_freq` 1 and 10, and prints each
epoch's loss and the seconds since the start as Markdown for
BENCHMARKS.md. What one step costs is `bench/step_cost.py`'s.
"""

import argparse
import time

import keras
from problems import CNN
from sklearn.datasets import load_digits
from supervised import network

import keras_kfac


class EpochTimer(keras.callbacks.Callback):
    """Seconds from the start of `fit` to the end of each epoch."""

    def __init__(self):
        super().__init__()
        self.epoch_ends, self.start = [], None

    def on_train_begin(self, logs=None):
        self.start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.epoch_ends.append(time.perf_counter() - self.start)


def mlp(layers=keras_kfac.layers):
    return keras.Sequential(
        [
            keras.Input((64,)),
            layers.Dense(256, activation="tanh"),
            layers.Dense(256, activation="tanh"),
            layers.Dense(10),
        ]
    )


def cnn(layers=keras_kfac.layers):
    """The digits CNN of `bench/problems.py`."""
    return network(CNN, layers)


# name -> (optimizer, the layers of the model it trains)
OPTIMIZERS = {
    "Adam": (lambda: keras.optimizers.Adam(1e-3), keras.layers),
    "KFAC freq=1": (
        lambda: keras_kfac.KFAC(inverse_update_freq=1),
        keras_kfac.layers,
    ),
    "KFAC freq=10": (
        lambda: keras_kfac.KFAC(inverse_update_freq=10),
        keras_kfac.layers,
    ),
}


def train(build, initial, optimizer, x, y, epochs, batch_size):
    model = build()
    model.set_weights(initial)
    model.compile(
        optimizer=optimizer,
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    timer = EpochTimer()
    history = model.fit(
        x,
        y,
        epochs=epochs,
        batch_size=batch_size,
        verbose=0,
        shuffle=True,
        callbacks=[timer],
    )
    return history.history["loss"], timer.epoch_ends


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args()
    keras.utils.set_random_seed(0)
    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype("float32")
    y = y.astype("int32")
    inputs = {
        "MLP 64-256-256-10": (mlp, x),
        "CNN 2xconv32-128-10": (cnn, x.reshape(-1, 8, 8, 1)),
    }

    curves = {}
    for label, (build, data) in inputs.items():
        initial = build().get_weights()
        for name, (make, layers) in OPTIMIZERS.items():
            losses, ends = train(
                lambda build=build, layers=layers: build(layers),
                initial,
                make(),
                data,
                y,
                args.epochs,
                args.batch_size,
            )
            curves.setdefault(label, {})[name] = (losses, ends)

    print(f"## Training loss vs epochs and seconds ({args.epochs} epochs)\n")
    for label, runs in curves.items():
        print(f"### {label}\n")
        print(
            "| epoch | " + " | ".join(f"{n} loss | {n} s" for n in runs) + " |"
        )
        print("|---|" + "---|---|" * len(runs))
        for e in range(args.epochs):
            cells = " | ".join(
                f"{losses[e]:.4f} | {ends[e]:.1f}"
                for losses, ends in runs.values()
            )
            print(f"| {e + 1} | {cells} |")
        print()


if __name__ == "__main__":
    main()
