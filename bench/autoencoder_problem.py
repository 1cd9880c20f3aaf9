"""The deep-autoencoder problem, framework-free: data, initial weights, batches.

`bench/autoencoder.py` (Keras) and `bench/kfac_jax_autoencoder.py` (JAX)
both import this module, so every optimizer of either starts from the same
weights and sees the same batches for a seed. Only numpy and scikit-learn.
"""

import numpy as np
from sklearn.datasets import load_digits

ENCODER = (256, 128, 64)
CODE = 8
PIXELS = 64
# Widths of the Dense layers in order; the code layer is linear, the output
# layer gives logits, every other layer is logistic.
WIDTHS = (*ENCODER, CODE, *ENCODER[::-1], PIXELS)
CODE_LAYER = len(ENCODER)
ACTIVATION = "sigmoid"

# (batch size, updates, evaluate every): the full plan and the quick one.
FULL_PLAN = [(128, 2000, 25), (1024, 1000, 10)]
QUICK_PLAN = [(128, 300, 25)]
# Predicting the mean image gives 4.69; the full benchmark's target.
TARGET = 1.0
QUICK_TARGET = 4.0


def images() -> np.ndarray:
    """The 1797 8x8 digits, pixels scaled to [0, 1], shape (1797, 64)."""
    return (load_digits().data / 16.0).astype("float32")


def initial_weights(seed: int) -> list[np.ndarray]:
    """`[W₁, b₁, W₂, b₂, ...]`: Glorot-uniform kernels (Keras' default),
    zero biases, drawn from `seed`."""
    rng = np.random.default_rng(seed)
    weights, fan_in = [], PIXELS
    for width in WIDTHS:
        limit = np.sqrt(6.0 / (fan_in + width))
        weights.append(
            rng.uniform(-limit, limit, (fan_in, width)).astype("float32")
        )
        weights.append(np.zeros(width, "float32"))
        fan_in = width
    return weights


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
