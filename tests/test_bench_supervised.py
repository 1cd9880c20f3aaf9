"""The supervised benchmark's problems, losses and report, against Keras,
formulas and hand-written Markdown."""

import json
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


def _run(final, clip=None, skipped=0):
    return dict(
        updates=np.array([0, 10, 20]),
        seconds=np.array([0.0, 1.5, 3.25]),
        errors=np.array([5.0, 2.0, final]),
        second=2 * final,
        ms=12.345,
        clip=clip,
        skipped=skipped,
    )


def test_the_report_of_a_section(capsys):
    grids = {"KFAC emp.": ("damping", [1e-3, 1e-2]), "Adam": ("lr", [1e-3])}
    grid_runs = {
        ("KFAC emp.", 1e-3): _run(0.9, clip=0.5),
        ("KFAC emp.", 1e-2): _run(1.5, clip=0.25, skipped=1),
        ("Adam", 1e-3): _run(3.0),
    }
    section = supervised.Section(
        batch_size=128,
        updates=20,
        grid_runs=grid_runs,
        chosen={"KFAC emp.": 1e-3, "Adam": 1e-3},
        runs={
            "KFAC emp.": [grid_runs["KFAC emp.", 1e-3], _run(0.8, skipped=2)],
            "Adam": [grid_runs["Adam", 1e-3], _run(2.0)],
        },
    )
    supervised.report(
        problems.AUTOENCODER,
        section,
        grids=grids,
        seeds=[0, 1],
        target=1.0,
        examples=64,
    )
    # 20 updates of 128 = 40 epochs of 64; errors 0.9 and 0.8: mean 0.85,
    # sample std 0.0707; both K-FAC seeds reach 1.0 at update 20, 3.25 s.
    assert capsys.readouterr().out == (
        "### Batch 128, 20 updates (40 epochs)\n\n"
        "Error target 1; mean ± sample std over seeds [0, 1]; "
        "updates/seconds to target averaged over the seeds that reached it."
        "\n\n"
        "| optimizer | tuned | final reconstruction error | final NLL "
        "| updates to target | seconds to target | ms/update |\n"
        "|---|---|---|---|---|---|---|\n"
        "| KFAC emp. | damping=0.001 | 0.85 ± 0.071 | 1.7 | 20 | 3.2 "
        "| 12.35 |\n"
        "| Adam | lr=0.001 | 2.5 ± 0.71 | 5 | not reached | not reached "
        "| 12.35 |\n\n"
        "Grid (seed 0, final error; chosen in bold; for K-FAC also the mean "
        "clip coefficient η/η_max at the evaluations):\n\n"
        "| optimizer | value | final error | η/η_max |\n"
        "|---|---|---|---|\n"
        "| KFAC emp. | **damping=0.001** | 0.9 | 0.500 |\n"
        "| KFAC emp. | damping=0.01 | 1.5 | 0.250 |\n"
        "| Adam | **lr=0.001** | 3 | — |\n\n"
        "K-FAC steps skipped as non-finite (all seeds): {'KFAC emp.': 2}\n\n"
    )


def test_kfac_jax_runs_join_the_section_of_their_batch_size(tmp_path):
    def theirs(final):
        return dict(
            updates=[0, 10], seconds=[0.0, 1.0], errors=[5.0, final], ms=1.0
        )

    path = tmp_path / "kfac_jax.json"
    path.write_text(
        json.dumps(
            {
                "128": {
                    "grids": {"optax Adam": ["learning_rate", [0.001]]},
                    "grid_runs": {"optax Adam": {"0.001": theirs(2.0)}},
                    "chosen": {"optax Adam": 0.001},
                    "runs": {"optax Adam": [theirs(2.0), theirs(1.0)]},
                },
                "versions": {"jax": "0.7.2"},
            }
        )
    )
    sections = [
        supervised.Section(batch, 10, {}, {}, {}) for batch in (128, 1024)
    ]
    grids = {}
    versions = supervised.add_kfac_jax_runs(str(path), sections, grids)
    assert versions == {"jax": "0.7.2"}
    assert grids == {"optax Adam": ("learning_rate", [0.001])}
    ours, other = sections
    assert ours.chosen == {"optax Adam": 0.001}
    assert [r["errors"][-1] for r in ours.runs["optax Adam"]] == [2.0, 1.0]
    run = ours.grid_runs["optax Adam", 0.001]
    assert isinstance(run["seconds"], np.ndarray) and run["clip"] is None
    assert (other.grid_runs, other.chosen, other.runs) == ({}, {}, {})
    assert supervised.add_kfac_jax_runs(str(tmp_path / "no"), [], {}) is None
