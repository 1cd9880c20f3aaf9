"""K-FAC vs Adam on scikit-learn's handwritten digits (ships offline).

    python examples/digits.py            # or: make demo

Trains the same convolutional net from the same initial weights three times:
with the adaptive K-FAC of `keras_kfac.TrueFisherModel` (no step size or
damping to set), with the KL-clipped `keras_kfac.KFAC` in plain `model.fit`,
and with `keras.optimizers.Adam`; prints the loss per epoch and the test
accuracy of each.
"""

import argparse
import dataclasses
import time

import keras
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

import keras_kfac


@dataclasses.dataclass
class Args:
    epochs: int = 10
    batch_size: int = 64
    seed: int = 0
    kfac_learning_rate: float = 0.25
    damping: float = 1e-2
    kl_clip: float = 1e-3
    adam_learning_rate: float = 1e-3


def parse_args() -> Args:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for field in dataclasses.fields(Args):
        parser.add_argument(
            f"--{field.name.replace('_', '-')}",
            type=field.type,
            default=field.default,
        )
    return Args(**vars(parser.parse_args()))


def digits(seed: int):
    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype("float32").reshape(-1, 8, 8, 1)
    return train_test_split(
        x, y.astype("int32"), test_size=0.25, random_state=seed
    )


def network() -> keras.Model:
    return keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            keras_kfac.layers.Conv2D(16, 3, padding="same", activation="relu"),
            keras.layers.MaxPooling2D(),
            keras.layers.Flatten(),
            keras_kfac.layers.Dense(64, activation="tanh"),
            keras_kfac.layers.Dense(10),
        ]
    )


def main(args: Args) -> None:
    keras.utils.set_random_seed(args.seed)
    x_train, x_test, y_train, y_test = digits(args.seed)
    initial = network().get_weights()
    # (wraps the model in TrueFisherModel, optimizer)
    optimizers = {
        "KFAC-ada": (True, lambda: "kfac"),
        "KFAC": (
            False,
            lambda: keras_kfac.KFAC(
                learning_rate=args.kfac_learning_rate,
                damping=args.damping,
                kl_clip=args.kl_clip,
            ),
        ),
        "Adam": (False, lambda: keras.optimizers.Adam(args.adam_learning_rate)),
    }
    print(f"digits: {len(x_train)} train / {len(x_test)} test images, 8x8")
    results = {}
    for name, (true_fisher, make) in optimizers.items():
        model = network()
        model.set_weights(initial)
        if true_fisher:
            model = keras_kfac.TrueFisherModel(
                model, distribution="categorical"
            )
        model.compile(
            optimizer=make(),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            metrics=["accuracy"],
        )
        start = time.perf_counter()
        history = model.fit(
            x_train,
            y_train,
            epochs=args.epochs,
            batch_size=args.batch_size,
            verbose=0,
        )
        seconds = time.perf_counter() - start
        _, accuracy = model.evaluate(x_test, y_test, verbose=0)
        results[name] = (history.history["loss"], accuracy, seconds)

    print("epoch  " + "  ".join(f"{name:>8}" for name in results))
    for epoch in range(args.epochs):
        print(
            f"{epoch + 1:5d}  "
            + "  ".join(f"{r[0][epoch]:8.4f}" for r in results.values())
        )
    for name, (_, accuracy, seconds) in results.items():
        print(
            f"{name}: test accuracy {accuracy:.3f}, "
            f"{seconds:.1f}s for {args.epochs} epochs"
        )


if __name__ == "__main__":
    main(parse_args())
