"""`KroneckerFactoredCurvature.factor_statistics` against the factors it
reports on (an agent run's `kfac/` scalars: `tests/test_cli.py`)."""

import keras
import numpy as np
import pytest

import keras_kfac
from keras_kfac import layers


def _trained(rng, **settings):
    model = keras.Sequential(
        [
            keras.Input((4, 4, 2)),
            layers.Conv2D(3, 3, activation="tanh"),
            keras.layers.Flatten(),
            layers.Dense(5, activation="tanh"),
            layers.Dense(3),
        ]
    )
    model.compile(
        optimizer=keras_kfac.KFAC(inverse_update_freq=1, **settings),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    x = rng.normal(size=(64, 4, 4, 2)).astype("float32")
    y = rng.integers(0, 3, 64)
    model.fit(x, y, batch_size=16, epochs=2, verbose=0)
    return model.optimizer.estimator


def test_means_are_traces_over_size_and_extremes_the_refreshed_spectrum(rng):
    # With a refresh on every update, the last refresh decomposed the
    # running factors as they are now.
    estimator = _trained(rng)
    statistics = estimator.factor_statistics()
    assert len(statistics) == 6 * len(estimator.blocks)
    for block, state in zip(estimator.blocks, estimator.states):
        name = block.layer.name
        for key, factor in (("A", state.A), ("G", state.G)):
            M = np.asarray(factor, dtype=np.float64)
            eigenvalues = np.linalg.eigvalsh(0.5 * (M + M.T))
            scale = eigenvalues.max()
            assert statistics[f"{name}/{key}_mean"] == pytest.approx(
                np.trace(M) / M.shape[0], rel=1e-12
            )
            # float32 eigh of an n x n factor (n ≤ 19 here): backward
            # stable, eigenvalue errors about n ε λ_max ≈ 2.3e-6 λ_max.
            tolerance = 1e-5 * scale
            assert abs(statistics[f"{name}/{key}_max"] - scale) <= tolerance
            assert (
                abs(statistics[f"{name}/{key}_min"] - max(eigenvalues.min(), 0))
                <= tolerance
            )


def test_factored_damping_reports_the_means_only(rng):
    estimator = _trained(rng, damping_mode="factored")
    statistics = estimator.factor_statistics()
    names = [block.layer.name for block in estimator.blocks]
    assert sorted(statistics) == sorted(
        f"{name}/{key}_mean" for name in names for key in "AG"
    )


def test_blocks_of_layers_with_one_name_are_told_apart():
    # Two models trained by one optimizer may each have a layer "head".
    first, second = (
        keras.Sequential(
            [keras.Input((3,)), layers.Dense(2, name="head")], name=n
        )
        for n in ("first", "second")
    )
    optimizer = keras_kfac.KFAC()
    variables = first.trainable_variables + second.trainable_variables
    optimizer.build(variables)
    assert sorted(optimizer.estimator.factor_statistics()) == sorted(
        f"head{suffix}/{key}_{kind}"
        for suffix in ("", "#2")
        for key in "AG"
        for kind in ("max", "mean", "min")
    )
