"""The supervised benchmark's problems and losses, against Keras and
formulas."""

import os
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_kfac

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "bench"))

import problems  # noqa: E402
import supervised  # noqa: E402


@pytest.mark.parametrize(
    "problem", problems.PROBLEMS.values(), ids=lambda p: p.name
)
def test_initial_weights_fit_the_keras_network_with_glorot_limits(problem):
    model = supervised.network(problem)
    weights = problem.initial_weights(0)
    model.set_weights(weights)  # raises on any shape mismatch
    assert [w.shape for w in model.get_weights()] == [w.shape for w in weights]
    kernels = [w for w in model.trainable_weights if w.path.endswith("kernel")]
    assert len(kernels) == len(weights) // 2
    for variable, kernel, bias in zip(kernels, weights[::2], weights[1::2]):
        # Uniform on [-limit, limit] has variance limit² / 3; the sample
        # variance of n draws has relative standard error sqrt(0.8 / n).
        # Keras' own Glorot-uniform draws for this kernel shape agree.
        reference = keras.initializers.GlorotUniform(seed=1)(variable.shape)
        n = kernel.size
        np.testing.assert_allclose(
            kernel.var(),
            np.var(reference),
            rtol=5 * np.sqrt(2 * 0.8 / n),
        )
        assert np.abs(kernel).max() <= np.sqrt(3 * np.var(reference)) * (
            1 + 5 * np.sqrt(0.8 / n)
        )
        np.testing.assert_array_equal(bias, 0.0)
    assert problem.initial_weights(0)[0].tobytes() == weights[0].tobytes()
    assert problem.initial_weights(1)[0].tobytes() != weights[0].tobytes()


@pytest.mark.parametrize(
    "problem", problems.PROBLEMS.values(), ids=lambda p: p.name
)
def test_data_are_the_digits_in_the_input_shape(problem):
    x, y = problem.data()
    assert x.shape == (1797, *problem.input_shape)
    assert x.dtype == np.float32 and x.min() == 0.0 and x.max() == 1.0
    if problem.loss == problems.BERNOULLI:
        assert y is x
    else:
        assert y.dtype == np.int32 and set(np.unique(y)) == set(range(10))


def test_per_example_nll_matches_keras_losses():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(5, 64)).astype("float32")
    pixels = rng.uniform(size=(5, 64)).astype("float32")
    # Keras' binary cross-entropy is a mean over the pixels; ours sums.
    keras_mean = keras.losses.binary_crossentropy(
        pixels, logits, from_logits=True
    )
    np.testing.assert_allclose(
        supervised.per_example_nll(problems.AUTOENCODER, pixels, logits),
        64 * np.asarray(keras_mean),
        rtol=1e-5,
    )
    logits = logits[:, :10]
    digits = rng.integers(0, 10, 5).astype("int32")
    np.testing.assert_allclose(
        supervised.per_example_nll(problems.CNN, digits, logits),
        keras.losses.sparse_categorical_crossentropy(
            digits, logits, from_logits=True
        ),
        rtol=1e-5,
    )


def test_sampled_targets_follow_the_predictive_distribution():
    n = 20000
    generator = tf.random.Generator.from_seed(0)
    p = np.array([0.05, 0.15, 0.3, 0.5], "float32")
    logits = np.tile(np.log(p), (n, 1))
    digits = supervised.sample_targets(problems.CNN, logits, generator)
    frequencies = np.bincount(digits.numpy(), minlength=4) / n
    # Binomial standard error of each frequency; 5 of them.
    np.testing.assert_allclose(
        frequencies, p, atol=5 * np.sqrt(p.max() * (1 - p.max()) / n)
    )
    q = np.array([[0.1, 0.9]], "float32")
    pixels = supervised.sample_targets(
        problems.AUTOENCODER,
        np.tile(np.log(q / (1 - q)), (n, 1)),
        generator,
    )
    assert set(np.unique(pixels.numpy())) == {0.0, 1.0}
    np.testing.assert_allclose(
        pixels.numpy().mean(axis=0), q[0], atol=5 * np.sqrt(0.25 / n)
    )


@pytest.mark.parametrize(
    "problem", problems.PROBLEMS.values(), ids=lambda p: p.name
)
def test_network_computes_what_keras_layers_compute(problem):
    """The same layers from `keras.layers` (what `bench/optimizer.py` and
    `bench/step_cost.py` give Adam) compute the same function."""
    x, _ = problem.data()
    weights = problem.initial_weights(0)
    tapped = supervised.network(problem)
    plain = supervised.network(problem, keras.layers)
    tapped.set_weights(weights)
    plain.set_weights(weights)
    assert not any(
        isinstance(layer, keras_kfac.layers.KFACLayer) for layer in plain.layers
    )
    np.testing.assert_array_equal(tapped(x[:64]), plain(x[:64]))
