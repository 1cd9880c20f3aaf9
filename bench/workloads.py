"""The workloads of the time-to-target suite: Keras models as a user writes
them, on data that ships offline or is generated.

Each workload is a plain Keras model (Keras' own layers, Keras' default
batch size of 32), its data split into training and validation, its loss
and the validation metric it is judged by. Its target is fixed before any
optimizer is tuned, by one reference run (`bench/time_to_target.py
--set-targets`: Keras' Adam at its defaults, seed 0, the full budget) and
kept in `bench/results/time_to_target/targets.json`.

- `autoencoder`: the 8x8 digits through a 64-256-128-32-128-256-64
  autoencoder with sigmoid units; validation pixel MSE.
- `cnn`: the digits through two convolution blocks with batch
  normalization, a residual connection and dropout; validation accuracy.
- `transformer`: lines of the Python standard library's source, as bytes,
  classified by the package they come from, by a one-block transformer
  encoder (embeddings, multi-head attention, layer normalization, a
  feed-forward block); validation accuracy.
- `language_model`: the same source, next-byte prediction by a causal
  one-block transformer; validation cross-entropy in nats per byte.
- `lstm`: regression of the next value of a noisy sine wave from the 20
  before it by an LSTM(32); validation MSE (the noise floor is 0.01).
- `tabular`: a generated 20-feature, 4-class problem (informative,
  redundant and noise features) by an MLP with dropout; validation
  accuracy.

`HELD_OUT` holds four more, that no default or search space of the suite
was chosen on; a setting chosen on `WORKLOADS` is checked on them before
it becomes a default:

- `gru`: the frequency (one of four) of a noisy sine wave of 30 steps
  with a random amplitude and phase, by a GRU(32); validation accuracy.
- `conv1d`: the `transformer` workload's task by a byte embedding, a
  Conv1D(64, 5) and global max pooling; validation accuracy.
- `regression`: Friedman's regression problem #1 (ten features, five of
  them noise) by a 64-64 ReLU MLP; validation MSE of the standardized
  target.
- `bn_mlp`: the flattened digits by a 256-256 MLP with batch
  normalization before each ReLU; validation accuracy.
- `vit`: the digits as a sequence of 16 patches of 2 x 2 pixels, by a
  one-block vision transformer (a Dense patch embedding, learned position
  embeddings, multi-head attention, layer normalization, a feed-forward
  block, average pooling over the patches); validation accuracy.
"""

import dataclasses
import os
import sysconfig
from collections.abc import Callable

import numpy as np

HIGHER, LOWER = "higher", "lower"  # which way a metric improves

# Packages of the standard library whose source the text workloads read.
SOURCE_PACKAGES = (
    "asyncio",
    "email",
    "json",
    "logging",
    "unittest",
    "xml",
    "http",
    "concurrent",
)
SEQUENCE_LENGTH = 64
FREQUENCIES = (0.25, 0.5, 0.75, 1.0)  # radians per step, `gru`'s classes


@dataclasses.dataclass(frozen=True)
class Workload:
    """One model, its data and the target it is judged by.

    Attributes:
        name: The workload's key.
        build: `build()` returns the uncompiled Keras model.
        data: `data(seed)` returns `(x_train, y_train, x_val, y_val)`.
        loss: The Keras loss, by name or object factory.
        metric: The validation metric's name in `fit`'s logs, without
            `val_`.
        direction: `HIGHER` or `LOWER`: which way `metric` improves.
        epochs: The full budget; `quick_epochs` for `--quick`.
        distribution: The predictive distribution for
            `keras_kfac.TrueFisherModel`.
    """

    name: str
    build: Callable
    data: Callable
    loss: Callable
    metric: str
    direction: str
    epochs: int
    quick_epochs: int
    distribution: str

    def better(self, value: float, than: float) -> bool:
        """Whether a validation metric `value` is at least as good as
        `than`."""
        if self.direction == HIGHER:
            return value >= than
        return value <= than


def _split(x, y, validation: int, seed: int):
    order = np.random.default_rng(seed).permutation(len(x))
    x, y = x[order], y[order]
    return x[validation:], y[validation:], x[:validation], y[:validation]


def digits_data(seed: int, images: bool):
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype("float32")
    if images:
        x = x.reshape(-1, 8, 8, 1)
    return _split(x, y.astype("int32"), 360, seed)


def autoencoder_data(seed: int):
    """The digits as inputs and targets."""
    x_train, _, x_val, _ = digits_data(seed, images=False)
    return x_train, x_train, x_val, x_val


def source_lines() -> tuple[list[bytes], np.ndarray]:
    """The distinct lines of at least 24 characters (cut to
    `SEQUENCE_LENGTH`) of the `SOURCE_PACKAGES` source files, tests left
    out, in sorted order, and the index of each line's package; a line
    found in several packages is kept once, with the first."""
    root = sysconfig.get_paths()["stdlib"]
    lines, labels, seen = [], [], set()
    for label, package in enumerate(SOURCE_PACKAGES):
        for directory, _, files in sorted(os.walk(os.path.join(root, package))):
            if os.path.basename(directory) in ("test", "tests"):
                continue
            for name in sorted(f for f in files if f.endswith(".py")):
                with open(os.path.join(directory, name), "rb") as f:
                    for line in f.read().splitlines():
                        line = line.strip()[:SEQUENCE_LENGTH]
                        if len(line) >= 24 and line not in seen:
                            seen.add(line)
                            lines.append(line)
                            labels.append(label)
    return lines, np.asarray(labels, "int32")


def _bytes_matrix(lines: list[bytes]) -> np.ndarray:
    """Byte ids, padded with 0 to `SEQUENCE_LENGTH`."""
    ids = np.zeros((len(lines), SEQUENCE_LENGTH), "int32")
    for row, line in enumerate(lines):
        ids[row, : len(line)] = np.frombuffer(line, np.uint8)
    return ids


def source_classification_data(seed: int, examples: int = 5000):
    lines, labels = source_lines()
    pick = np.random.default_rng(seed).choice(len(lines), examples, False)
    x = _bytes_matrix([lines[i] for i in pick])
    return _split(x, labels[pick], examples // 5, seed)


def source_language_data(seed: int, examples: int = 5000):
    """Windows of `SEQUENCE_LENGTH + 1` bytes of the concatenated source:
    inputs the first `SEQUENCE_LENGTH`, targets the same shifted by one."""
    lines, _ = source_lines()
    text = np.frombuffer(b"\n".join(lines), np.uint8).astype("int32")
    starts = np.random.default_rng(seed).choice(
        len(text) - SEQUENCE_LENGTH - 1, examples, False
    )
    windows = np.stack([text[s : s + SEQUENCE_LENGTH + 1] for s in starts])
    return _split(windows[:, :-1], windows[:, 1:], examples // 5, seed)


def sine_data(seed: int, examples: int = 4000, window: int = 20):
    """Windows of a sine wave with N(0, 0.1²) noise; the target is the next
    noisy value, so the best possible MSE is 0.01."""
    rng = np.random.default_rng(seed)
    t = rng.uniform(0, 200, size=(examples, 1)) + 0.25 * np.arange(window + 1)
    series = np.sin(t) + 0.1 * rng.normal(size=t.shape)
    x = series[:, :window, None].astype("float32")
    y = series[:, window:].astype("float32")
    return _split(x, y, examples // 5, seed)


def tabular_data(seed: int, examples: int = 5000):
    from sklearn.datasets import make_classification

    x, y = make_classification(
        n_samples=examples,
        n_features=20,
        n_informative=8,
        n_redundant=4,
        n_classes=4,
        n_clusters_per_class=2,
        random_state=1234,  # the problem is fixed; `seed` splits it
    )
    x = ((x - x.mean(0)) / x.std(0)).astype("float32")
    return _split(x, y.astype("int32"), examples // 5, seed)


def frequency_data(seed: int, examples: int = 4000, steps: int = 30):
    """Noisy sine waves of one of four frequencies, with a random
    amplitude in [0.5, 1.5] and phase and N(0, 1) noise; the label is
    the frequency's index."""
    rng = np.random.default_rng(1234)  # the problem is fixed; `seed` splits it
    labels = rng.integers(0, 4, examples)
    frequencies = np.array(FREQUENCIES)[labels, None]
    amplitude = rng.uniform(0.5, 1.5, (examples, 1))
    phase = rng.uniform(0, 2 * np.pi, (examples, 1))
    t = np.arange(steps)
    x = amplitude * np.sin(frequencies * t + phase)
    x = x + rng.normal(size=x.shape)
    return _split(
        x[..., None].astype("float32"),
        labels.astype("int32"),
        examples // 5,
        seed,
    )


def patch_data(seed: int, patch: int = 2):
    """The digits as sequences of their `patch` x `patch` patches, row by
    row, each flattened: shape `(examples, (8 / patch)², patch²)`."""
    x_train, y_train, x_val, y_val = digits_data(seed, images=False)

    def patches(x):
        side = 8 // patch
        x = x.reshape(-1, side, patch, side, patch).transpose(0, 1, 3, 2, 4)
        return x.reshape(-1, side * side, patch * patch)

    return patches(x_train), y_train, patches(x_val), y_val


def friedman_data(seed: int, examples: int = 5000):
    from sklearn.datasets import make_friedman1

    x, y = make_friedman1(
        n_samples=examples, n_features=10, noise=0.5, random_state=1234
    )
    x = ((x - x.mean(0)) / x.std(0)).astype("float32")
    y = ((y - y.mean()) / y.std()).astype("float32")[:, None]
    return _split(x, y, examples // 5, seed)


def autoencoder_model():
    import keras

    layers = [keras.Input((64,))]
    for units in (256, 128, 32, 128, 256):
        layers.append(keras.layers.Dense(units, activation="sigmoid"))
    layers.append(keras.layers.Dense(64, activation="sigmoid"))
    return keras.Sequential(layers)


def cnn_model():
    import keras

    inputs = keras.Input((8, 8, 1))
    h = keras.layers.Conv2D(32, 3, padding="same")(inputs)
    h = keras.layers.BatchNormalization()(h)
    h = keras.layers.Activation("relu")(h)
    skip = h
    h = keras.layers.Conv2D(32, 3, padding="same")(h)
    h = keras.layers.BatchNormalization()(h)
    h = keras.layers.Activation("relu")(keras.layers.Add()([h, skip]))
    h = keras.layers.MaxPooling2D()(h)
    h = keras.layers.Flatten()(h)
    h = keras.layers.Dropout(0.3)(h)
    h = keras.layers.Dense(128, activation="relu")(h)
    h = keras.layers.Dropout(0.3)(h)
    return keras.Model(inputs, keras.layers.Dense(10)(h))


def _transformer_block(h, causal: bool):
    import keras

    attention = keras.layers.MultiHeadAttention(num_heads=4, key_dim=16)
    a = attention(h, h, use_causal_mask=causal)
    h = keras.layers.LayerNormalization()(keras.layers.Add()([h, a]))
    f = keras.layers.Dense(128, activation="relu")(h)
    f = keras.layers.Dense(64)(f)
    return keras.layers.LayerNormalization()(keras.layers.Add()([h, f]))


def _embedded_bytes(inputs):
    import keras

    tokens = keras.layers.Embedding(256, 64)(inputs)
    positions = keras.layers.Embedding(SEQUENCE_LENGTH, 64)(
        keras.ops.arange(SEQUENCE_LENGTH)
    )
    return tokens + positions


def transformer_model():
    import keras

    inputs = keras.Input((SEQUENCE_LENGTH,), dtype="int32")
    h = _transformer_block(_embedded_bytes(inputs), causal=False)
    h = keras.layers.GlobalAveragePooling1D()(h)
    outputs = keras.layers.Dense(len(SOURCE_PACKAGES))(h)
    return keras.Model(inputs, outputs)


def language_model():
    import keras

    inputs = keras.Input((SEQUENCE_LENGTH,), dtype="int32")
    h = _transformer_block(_embedded_bytes(inputs), causal=True)
    return keras.Model(inputs, keras.layers.Dense(256)(h))


def lstm_model():
    import keras

    return keras.Sequential(
        [keras.Input((20, 1)), keras.layers.LSTM(32), keras.layers.Dense(1)]
    )


def tabular_model():
    import keras

    return keras.Sequential(
        [
            keras.Input((20,)),
            keras.layers.Dense(128, activation="relu"),
            keras.layers.Dropout(0.2),
            keras.layers.Dense(128, activation="relu"),
            keras.layers.Dropout(0.2),
            keras.layers.Dense(4),
        ]
    )


def gru_model():
    import keras

    return keras.Sequential(
        [keras.Input((30, 1)), keras.layers.GRU(32), keras.layers.Dense(4)]
    )


def conv1d_model():
    import keras

    return keras.Sequential(
        [
            keras.Input((SEQUENCE_LENGTH,), dtype="int32"),
            keras.layers.Embedding(256, 32),
            keras.layers.Conv1D(64, 5, activation="relu"),
            keras.layers.GlobalMaxPooling1D(),
            keras.layers.Dense(len(SOURCE_PACKAGES)),
        ]
    )


def regression_model():
    import keras

    return keras.Sequential(
        [
            keras.Input((10,)),
            keras.layers.Dense(64, activation="relu"),
            keras.layers.Dense(64, activation="relu"),
            keras.layers.Dense(1),
        ]
    )


def bn_mlp_model():
    import keras

    layers = [keras.Input((64,))]
    for _ in range(2):
        layers += [
            keras.layers.Dense(256),
            keras.layers.BatchNormalization(),
            keras.layers.Activation("relu"),
        ]
    return keras.Sequential(layers + [keras.layers.Dense(10)])


def vit_model():
    import keras

    inputs = keras.Input((16, 4))
    h = keras.layers.Dense(32)(inputs)
    h = h + keras.layers.Embedding(16, 32)(keras.ops.arange(16))
    a = keras.layers.MultiHeadAttention(num_heads=2, key_dim=16)(h, h)
    h = keras.layers.LayerNormalization()(keras.layers.Add()([h, a]))
    f = keras.layers.Dense(64, activation="relu")(h)
    f = keras.layers.Dense(32)(f)
    h = keras.layers.LayerNormalization()(keras.layers.Add()([h, f]))
    h = keras.layers.GlobalAveragePooling1D()(h)
    return keras.Model(inputs, keras.layers.Dense(10)(h))


def _sparse_crossentropy():
    import keras

    return keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def _mse():
    return "mse"


def _classifier(name, build, data, epochs, quick_epochs) -> Workload:
    """A workload judged by validation accuracy, trained on the softmax
    cross-entropy of logits."""
    return Workload(
        name,
        build,
        data,
        _sparse_crossentropy,
        "accuracy",
        HIGHER,
        epochs,
        quick_epochs,
        "categorical",
    )


def _regressor(name, build, data, epochs, quick_epochs) -> Workload:
    """A workload trained and judged by the mean squared error."""
    return Workload(
        name, build, data, _mse, "loss", LOWER, epochs, quick_epochs, "gaussian"
    )


WORKLOADS = {
    w.name: w
    for w in (
        _regressor("autoencoder", autoencoder_model, autoencoder_data, 60, 3),
        _classifier(
            "cnn", cnn_model, lambda seed: digits_data(seed, images=True), 30, 2
        ),
        _classifier(
            "transformer", transformer_model, source_classification_data, 20, 1
        ),
        Workload(  # judged by its loss: nats per byte
            "language_model",
            language_model,
            source_language_data,
            _sparse_crossentropy,
            "loss",
            LOWER,
            20,
            1,
            "categorical",
        ),
        _regressor("lstm", lstm_model, sine_data, 30, 2),
        _classifier("tabular", tabular_model, tabular_data, 40, 2),
    )
}

HELD_OUT = {
    w.name: w
    for w in (
        _classifier("gru", gru_model, frequency_data, 20, 2),
        _classifier("conv1d", conv1d_model, source_classification_data, 15, 1),
        _regressor("regression", regression_model, friedman_data, 40, 2),
        _classifier(
            "bn_mlp",
            bn_mlp_model,
            lambda seed: digits_data(seed, images=False),
            20,
            2,
        ),
        _classifier("vit", vit_model, patch_data, 30, 2),
    )
}
