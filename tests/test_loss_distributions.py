"""The predictive distribution `TrueFisherModel` reads from the compiled
loss: each loss it recognizes is that distribution's negative
log-likelihood, and every loss it cannot sample from is refused at
`compile` with what to change."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_kfac
from keras_kfac import layers
from keras_kfac.loss_distributions import distribution_of

CATEGORICAL_LOSSES = [
    keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    keras.losses.CategoricalCrossentropy(from_logits=True),
    [keras.losses.SparseCategoricalCrossentropy(from_logits=True)],
    {"logits": keras.losses.SparseCategoricalCrossentropy(from_logits=True)},
]
BERNOULLI_LOSSES = [keras.losses.BinaryCrossentropy(from_logits=True)]
GAUSSIAN_LOSSES = [
    "mse",
    "mean_squared_error",
    "MeanSquaredError",
    keras.losses.mean_squared_error,
    keras.losses.MeanSquaredError(),
]
PROBABILITY_LOSSES = [
    "sparse_categorical_crossentropy",
    "categorical_crossentropy",
    "binary_crossentropy",
    keras.losses.sparse_categorical_crossentropy,
    keras.losses.SparseCategoricalCrossentropy(),
    keras.losses.BinaryCrossentropy(from_logits=False),
]


@pytest.mark.parametrize(
    "loss,expected",
    [(loss, "categorical") for loss in CATEGORICAL_LOSSES]
    + [(loss, "bernoulli") for loss in BERNOULLI_LOSSES]
    + [(loss, "gaussian") for loss in GAUSSIAN_LOSSES],
)
def test_a_likelihood_loss_names_its_distribution(loss, expected):
    assert distribution_of(loss) == expected
    assert distribution_of(loss, expected) == expected


def test_each_recognized_loss_is_its_distributions_negative_log_likelihood(
    rng,
):
    """Against the closed forms: `-log softmax(z)_y` for the categorical,
    `-[y log σ(z) + (1 - y) log σ(-z)]` per output for the Bernoulli, and for
    the Gaussian of variance `σ² = d / 2` (`TrueFisherModel`'s default),
    `Σ (y - μ)² / (2σ²)` plus a constant: the mean squared error."""
    z = rng.normal(size=(6, 5))
    labels = rng.integers(0, 5, size=6)
    log_softmax = z - np.log(np.exp(z).sum(1, keepdims=True))
    expected = -log_softmax[np.arange(6), labels].mean()
    for loss in CATEGORICAL_LOSSES[:2]:
        y = labels if "Sparse" in type(loss).__name__ else np.eye(5)[labels]
        np.testing.assert_allclose(float(loss(y, z)), expected, rtol=1e-6)
    bits = rng.integers(0, 2, size=(6, 5)).astype("float64")
    log_sigmoid = -np.logaddexp(0.0, -z)
    log_sigmoid_minus = -np.logaddexp(0.0, z)
    expected = -(bits * log_sigmoid + (1 - bits) * log_sigmoid_minus).mean()
    np.testing.assert_allclose(
        float(BERNOULLI_LOSSES[0](bits, z)), expected, rtol=1e-6
    )
    y = rng.normal(size=(6, 5))
    variance = 5 / 2
    nll_without_constant = ((y - z) ** 2).sum(1) / (2 * variance)
    for loss in GAUSSIAN_LOSSES:
        value = keras.losses.get(loss)(y, z)
        np.testing.assert_allclose(
            np.mean(value), nll_without_constant.mean(), rtol=1e-6
        )


@pytest.mark.parametrize("loss", PROBABILITY_LOSSES)
def test_a_loss_on_probabilities_is_refused(loss):
    with pytest.raises(ValueError, match="from_logits=True"):
        distribution_of(loss)


@pytest.mark.parametrize(
    "loss,given,family",
    [
        ("mse", "categorical", "gaussian"),
        (
            keras.losses.BinaryCrossentropy(from_logits=True),
            "gaussian",
            "bernoulli",
        ),
        (CATEGORICAL_LOSSES[0], "bernoulli", "categorical"),
    ],
)
def test_a_loss_of_another_family_than_the_distribution_is_refused(
    loss, given, family
):
    with pytest.raises(
        ValueError, match=f"distribution={given!r}.*distribution={family!r}"
    ):
        distribution_of(loss, given)


def custom_loss(y_true, y_pred):
    return keras.ops.mean(keras.ops.abs(y_true - y_pred))


@pytest.mark.parametrize(
    "loss", ["mae", keras.losses.Huber(), custom_loss, None, ["mse", "mse"]]
)
def test_a_loss_of_no_known_family_needs_the_distribution(loss):
    with pytest.raises(ValueError, match="pass distribution="):
        distribution_of(loss)
    # Given, it is trusted.
    assert distribution_of(loss, "gaussian") == "gaussian"


def test_an_unknown_loss_name_gets_keras_own_error():
    with pytest.raises(ValueError, match="meen_squared"):
        distribution_of("meen_squared_error")


def _net(activation=None):
    return keras.Sequential(
        [
            keras.Input((4,)),
            layers.Dense(8, activation="tanh"),
            layers.Dense(3, activation=activation),
        ]
    )


def test_true_fisher_model_reads_the_distribution_at_compile(rng, tmp_path):
    """A regression compiled with "mse" and no `distribution` samples the
    Gaussian's targets: `N ∂(Fisher loss)/∂μ = -(ŷ - μ) / σ²` per example,
    of covariance `I / σ² = 2/d I` (a categorical one would have rows
    summing to zero); and a saved model keeps the distribution."""
    model = keras_kfac.TrueFisherModel(_net())
    assert model.distribution is None
    model.compile(loss="mse")
    assert model.distribution == "gaussian"
    means = tf.constant(rng.normal(size=(3000, 3)), tf.float32)
    with tf.GradientTape() as tape:
        tape.watch(means)
        fisher_loss = model.fisher_loss(means)
    scores = 3000 * tape.gradient(fisher_loss, means).numpy()
    # The mean of 9000 squares of N(0, 2/3): standard error 0.010.
    np.testing.assert_allclose(np.mean(scores**2), 2 / 3, atol=0.05)
    assert np.abs(scores.sum(1)).mean() > 0.5
    x = rng.normal(size=(64, 4)).astype("float32")
    y = rng.normal(size=(64, 3)).astype("float32")
    model.fit(x, y, epochs=1, batch_size=32, verbose=0)
    path = tmp_path / "regression.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert loaded.distribution == "gaussian"
    classifier = keras_kfac.TrueFisherModel(_net())
    classifier.compile(
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    )
    assert classifier.distribution == "categorical"


def test_true_fisher_model_refuses_a_softmax_model_at_compile():
    model = keras_kfac.TrueFisherModel(_net("softmax"))
    with pytest.raises(ValueError, match="without the softmax activation"):
        model.compile(loss="sparse_categorical_crossentropy")
    with pytest.raises(ValueError, match="distribution='categorical'"):
        keras_kfac.TrueFisherModel(_net(), "categorical").compile(loss="mse")
