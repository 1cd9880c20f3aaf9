"""The supervised benchmark problems, framework-free: data, layers, weights,
batches.

`bench/supervised.py` (Keras) and `bench/kfac_jax_supervised.py` (JAX)
both import this module, so every optimizer of either starts from the same
weights and sees the same batches for a problem and a seed. Only numpy and
scikit-learn.

- `AUTOENCODER`: the deep autoencoder of Martens & Grosse (2015) scaled
  down to the 8x8 digits, 64-256-128-64-8-64-128-256-64, logistic hidden
  units, a linear code layer, Bernoulli negative log-likelihood summed over
  the pixels; the error is the squared reconstruction error summed over
  the pixels;
- `CNN`: the digits classifier of `bench/optimizer.py` (two 3x3 convolutions
  of 32 ReLU filters, 2x2 max pooling, a tanh Dense 128, 10 logits),
  softmax cross-entropy; the error is that cross-entropy on the whole set.

Errors are means over all 1797 images, in inference mode.
"""

import dataclasses

import numpy as np
from sklearn.datasets import load_digits

PIXELS = 64
KERNEL = 3  # every convolution is KERNEL x KERNEL, stride 1, "same" padding
POOL = 2  # max pooling POOL x POOL, stride POOL, "valid" padding

BERNOULLI = "bernoulli"  # the targets are the images; outputs are logits
CATEGORICAL = "categorical"  # the targets are the digits; outputs are logits


@dataclasses.dataclass(frozen=True)
class Problem:
    """One supervised problem.

    `layers` lists `("dense", units, activation)`, `("conv", filters,
    activation)`, `("pool",)` and `("flatten",)` in order; activation
    `None` is linear, and the last layer gives logits. A plan lists
    `(batch size, updates, evaluate every)`.
    """

    name: str
    title: str
    description: str  # architecture and loss, for the report
    input_shape: tuple
    layers: tuple
    loss: str
    error: str  # what the error axis measures
    second: str  # the second figure of the table, beside the error
    full_plan: tuple
    quick_plan: tuple
    target: float
    quick_target: float

    def data(self) -> tuple[np.ndarray, np.ndarray]:
        """`(x, y)`: images with pixels scaled to [0, 1] in `input_shape`,
        and targets: the images themselves or the int32 digits."""
        pixels, digits = load_digits(return_X_y=True)
        x = (pixels / 16.0).astype("float32").reshape(-1, *self.input_shape)
        return (x, x) if self.loss == BERNOULLI else (x, digits.astype("int32"))

    def initial_weights(self, seed: int) -> list[np.ndarray]:
        """`[W₁, b₁, W₂, b₂, ...]` in Keras' layouts (Dense `(in, out)`,
        Conv2D `(k, k, in, out)`): Glorot-uniform kernels, Keras' default,
        zero biases, drawn from `seed`."""
        rng = np.random.default_rng(seed)
        weights, shape = [], self.input_shape
        for spec in self.layers:
            kind = spec[0]
            if kind == "dense":
                kernel = (shape[-1], spec[1])
                shape = (*shape[:-1], spec[1])
            elif kind == "conv":
                kernel = (KERNEL, KERNEL, shape[-1], spec[1])
                shape = (*shape[:-1], spec[1])
            elif kind == "pool":
                shape = (shape[0] // POOL, shape[1] // POOL, shape[2])
                continue
            elif kind == "flatten":
                shape = (int(np.prod(shape)),)
                continue
            else:
                raise ValueError(f"unknown layer kind {kind!r} in {spec}")
            receptive = int(np.prod(kernel[:-2]))
            fan_in, fan_out = receptive * kernel[-2], receptive * kernel[-1]
            limit = np.sqrt(6.0 / (fan_in + fan_out))
            weights.append(rng.uniform(-limit, limit, kernel).astype("float32"))
            weights.append(np.zeros(kernel[-1], "float32"))
        return weights


_ENCODER = (256, 128, 64)
AUTOENCODER = Problem(
    name="autoencoder",
    title="Deep autoencoder on digits",
    description="Architecture 64-256-128-64-8-64-128-256-64, sigmoid hidden "
    "units, linear code layer, sigmoid output; loss = Bernoulli NLL "
    "(cross-entropy summed over the 64 pixels, mean over images); "
    "reconstruction error = squared error summed over pixels.",
    input_shape=(PIXELS,),
    layers=(
        *(("dense", w, "sigmoid") for w in _ENCODER),
        ("dense", 8, None),  # the code layer
        *(("dense", w, "sigmoid") for w in _ENCODER[::-1]),
        ("dense", PIXELS, None),
    ),
    loss=BERNOULLI,
    error="reconstruction error",
    second="NLL",
    full_plan=((128, 2000, 25), (1024, 1000, 10)),
    quick_plan=((128, 300, 25),),
    # Predicting the mean image gives 4.69.
    target=1.0,
    quick_target=4.0,
)

CNN = Problem(
    name="cnn",
    title="CNN on digits",
    description="Architecture 8x8x1 → Conv2D 32 3x3 ReLU → Conv2D 32 3x3 "
    "ReLU → max pool 2x2 → Dense 128 tanh → 10 logits; loss = softmax "
    "cross-entropy of the digit, mean over images.",
    input_shape=(8, 8, 1),
    layers=(
        ("conv", 32, "relu"),
        ("conv", 32, "relu"),
        ("pool",),
        ("flatten",),
        ("dense", 128, "tanh"),
        ("dense", 10, None),
    ),
    loss=CATEGORICAL,
    error="cross-entropy",
    second="misclassified %",
    full_plan=((128, 200, 10),),
    quick_plan=((128, 60, 10),),
    # Uniform logits give ln 10 = 2.30.
    target=0.01,
    quick_target=0.5,
)

PROBLEMS = {p.name: p for p in (AUTOENCODER, CNN)}


def batch_sequence(n, batch_size, updates, seed):
    """`updates` batches of indices from consecutive shuffles of the data."""
    rng = np.random.default_rng(seed)
    epochs = updates * batch_size // n + 1
    stream = np.concatenate([rng.permutation(n) for _ in range(epochs)]).astype(
        "int32"
    )
    return [
        stream[k * batch_size : (k + 1) * batch_size] for k in range(updates)
    ]


def reach(updates, seconds, errors, target):
    """(updates, seconds) at the first evaluation with error <= target, or
    None."""
    hit = np.nonzero(np.asarray(errors) <= target)[0]
    return None if len(hit) == 0 else (updates[hit[0]], seconds[hit[0]])
