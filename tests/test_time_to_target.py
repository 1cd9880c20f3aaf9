"""The time-to-target suite's arithmetic against hand-computed numbers, and
its workloads' data against what they promise."""

import math
import os
import sys

import numpy as np
import pytest

sys.path.insert(
    0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "bench")
)

import time_to_target as ttt  # noqa: E402
import workloads  # noqa: E402

TABULAR = workloads.WORKLOADS["tabular"]  # higher is better
LSTM = workloads.WORKLOADS["lstm"]  # lower is better


def record(values, seconds=None, steps=None, trial=0):
    n = len(values)
    return dict(
        trial=trial,
        values=list(values),
        seconds=list(seconds or [10.0 * (k + 1) for k in range(n)]),
        steps=list(steps or [100 * (k + 1) for k in range(n)]),
    )


def test_time_to_target_is_the_first_epoch_that_reaches_it():
    run = record([0.5, 0.7, 0.9, 0.8])
    assert ttt.to_target(TABULAR, run, 0.7) == (20.0, 200)
    assert ttt.to_target(TABULAR, run, 0.95) is None
    falling = record([0.3, 0.02, math.nan, 0.01])
    assert ttt.to_target(LSTM, falling, 0.015) == (40.0, 400)
    assert ttt.best(LSTM, falling["values"]) == 0.01


def test_trial_zero_is_the_defaults_and_draws_stay_in_the_space():
    assert ttt.trial_settings("adam", 0) == {}
    for optimizer, space in ttt.SEARCH_SPACES.items():
        drawn = ttt.trial_settings(optimizer, 3)
        assert drawn == ttt.trial_settings(optimizer, 3)  # the same each run
        assert drawn != ttt.trial_settings(optimizer, 4)
        for name, (low, high) in space.items():
            assert low <= drawn[name] <= high


@pytest.mark.parametrize(
    "optimizer, settings, start",
    [
        ("kfac-cosine", {}, 0.25),
        ("adam-cosine", {}, 1e-3),
        ("adam-cosine", {"learning_rate": 3e-3}, 3e-3),
    ],
)
def test_the_cosine_rows_decay_their_rate_to_zero_over_the_run(
    optimizer, settings, start
):
    """`η(k) = η₀ (1 + cos(π k / K)) / 2` over the run's `K` steps, from the
    trial's learning rate or the row's default; asked for, not the suite's."""
    import keras_kfac

    model = ttt.compiled_model(TABULAR, optimizer, settings, steps=200)
    schedule = model.optimizer._learning_rate
    for step, factor in ((0, 1.0), (50, (1 + math.cos(math.pi / 4)) / 2)):
        assert float(schedule(step)) == pytest.approx(start * factor)
    assert float(schedule(200)) == 0.0
    assert optimizer not in ttt.SUITE_OPTIMIZERS
    if optimizer == "kfac-cosine":
        assert isinstance(model, keras_kfac.TrueFisherModel)
        assert model.optimizer.reference_learning_rate == pytest.approx(start)


def test_a_run_of_other_rows_plots_beside_the_suites_plot():
    suite = ttt.plot_name("cnn", "default", ttt.SUITE_OPTIMIZERS)
    assert suite == "cnn-default.png"
    other = ttt.plot_name("cnn", "default", ["kfac-recommended", "kfac-cosine"])
    assert other == "cnn-default-kfac-recommended+kfac-cosine.png"


def test_the_tuned_trial_is_the_fastest_on_seed_zero(tmp_path, monkeypatch):
    # Trial 2 reaches the target first on seed 0; it is rerun on seed 1.
    runs = {
        (0, 0): record([0.5, 0.8]),
        (1, 0): record([0.6, 0.6]),
        (2, 0): record([0.85, 0.9], trial=2),
        (0, 1): record([0.4, 0.9]),
        (2, 1): record([0.7, 0.9], trial=2),
    }
    asked = []

    def cached_run(workload, optimizer, trial, seed, quick):
        asked.append((trial, seed))
        return runs[(trial, seed)]

    monkeypatch.setattr(ttt, "cached_run", cached_run)
    chosen = ttt.runs_of(TABULAR, "adam", 2, (0, 1), True, 0.8)
    assert [r["trial"] for r in chosen["tuned"]] == [2, 2]
    assert (2, 1) in asked and (1, 1) not in asked
    row = ttt.summary_row(TABULAR, chosen["tuned"], 0.8)
    assert row["reached"] == 2 and row["seconds"] == 15.0
    assert row["final"] == (0.9, 0.0)


def test_the_geometric_mean_of_time_ratios():
    # Ours 20 s vs the fastest tuned Keras 10 s, then 5 s vs 20 s:
    # sqrt(2 · 0.25) = 0.707.
    def row(seconds):
        return dict(seconds=seconds)

    tables = {
        "a": {
            ("kfac-recommended", "default"): row(20.0),
            ("adam", "tuned"): row(10.0),
            ("sgd", "tuned"): row(30.0),
            ("kfac", "tuned"): row(1.0),  # not a Keras optimizer
        },
        "b": {
            ("kfac-recommended", "default"): row(5.0),
            ("adam", "tuned"): row(20.0),
        },
    }

    def ratio(keras_setting="tuned"):
        return ttt.geometric_mean_ratio(
            tables, "kfac-recommended", "default", keras_setting
        )

    assert ratio() == pytest.approx(math.sqrt(0.5))
    # Against the Keras optimizers at their defaults: 20 / 40, 5 / 5.
    tables["a"][("adam", "default")] = row(40.0)
    tables["b"][("sgd", "default")] = row(5.0)
    assert ratio("default") == pytest.approx(math.sqrt(0.5))
    tables["b"][("kfac-recommended", "default")] = row(None)
    assert ratio() is None
    # A run of the Keras optimizers alone has no ratio to show.
    del tables["b"][("kfac-recommended", "default")]
    assert ratio() is None


ALL_WORKLOADS = {**workloads.WORKLOADS, **workloads.HELD_OUT}


def test_the_held_out_workloads_are_not_the_tuned_ones():
    assert not set(workloads.WORKLOADS) & set(workloads.HELD_OUT)


@pytest.mark.parametrize("name", sorted(ALL_WORKLOADS))
def test_the_data_is_the_same_for_a_seed_and_split_disjointly(name):
    workload = ALL_WORKLOADS[name]
    x, y, x_val, y_val = workload.data(0)
    again = workload.data(0)
    for a, b in zip((x, y, x_val, y_val), again):
        np.testing.assert_array_equal(a, b)
    assert len(x) == len(y) and len(x_val) == len(y_val) > 0
    assert np.all(np.isfinite(x)) and np.all(np.isfinite(x_val))
    rows = {row.tobytes() for row in x}
    assert not any(row.tobytes() in rows for row in x_val[:50])


def test_the_sine_targets_carry_noise_of_variance_0_01():
    x, y, _, _ = workloads.sine_data(0)
    # The next clean value is sin(t + 0.25 · 20); with the clean window
    # unknown, the residual against the true sine measures the noise.
    rng = np.random.default_rng(0)
    t = rng.uniform(0, 200, size=(4000, 1)) + 0.25 * np.arange(21)
    clean = np.sin(t)[:, 20:]
    order = np.random.default_rng(0).permutation(4000)
    residual = y - clean[order][800:]
    assert np.var(residual) == pytest.approx(0.01, rel=0.1)


def test_the_source_lines_are_labelled_by_package():
    lines, labels = workloads.source_lines()
    assert len(lines) == len(labels) > 5000
    assert set(labels) == set(range(len(workloads.SOURCE_PACKAGES)))
    assert all(24 <= len(line) <= workloads.SEQUENCE_LENGTH for line in lines)


def test_the_patches_are_the_images_2x2_blocks_row_by_row():
    x, y, _, _ = workloads.patch_data(0)
    images, labels, _, _ = workloads.digits_data(0, images=True)
    np.testing.assert_array_equal(y, labels)
    assert x.shape == (len(images), 16, 4)
    for k in range(16):
        r, c = divmod(k, 4)
        block = images[:, 2 * r : 2 * r + 2, 2 * c : 2 * c + 2, 0]
        np.testing.assert_array_equal(x[:, k], block.reshape(-1, 4))


def test_the_language_targets_are_the_inputs_shifted_by_one():
    x, y, _, _ = workloads.source_language_data(0, examples=50)
    np.testing.assert_array_equal(x[:, 1:], y[:, :-1])


def test_kfac_coverage_names_what_trains_first_order():
    import keras

    def build():
        return keras.Sequential(
            [
                keras.Input((3,)),
                keras.layers.Dense(4, name="hidden"),
                keras.layers.PReLU(name="slope"),
                keras.layers.Dense(2, name="out"),
            ],
            name="toy",
        )

    workload = workloads.Workload(
        "toy", build, None, None, "loss", workloads.LOWER, 1, 1, "gaussian"
    )
    assert ttt.kfac_coverage(workload) == (
        "K-FAC: 4 of 5 trainable variables in 2 blocks; "
        "first-order: toy/slope/alpha."
    )


def test_the_curves_are_the_mean_over_seeds_against_steps_and_seconds(
    tmp_path,
):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import target_curves  # noqa: E402

    runs = {
        "adam": [
            record([0.4, 0.2], seconds=[1.0, 2.0]),
            record([0.2, 0.1], seconds=[3.0, 4.0]),
        ],
        "kfac-recommended": [record([0.05, 0.01])],
    }
    path = str(tmp_path / "lstm.png")
    captured = []
    close = plt.close
    try:
        plt.close = captured.append  # keep the figure to read it back
        target_curves.plot_curves(LSTM, runs, 0.0117, path)
    finally:
        plt.close = close
    assert os.path.getsize(path) > 0
    (figure,) = captured
    by_steps, by_seconds = figure.axes
    adam_steps, adam_seconds = by_steps.lines[0], by_seconds.lines[0]
    np.testing.assert_allclose(adam_steps.get_xdata(), [100, 200])
    np.testing.assert_allclose(adam_steps.get_ydata(), [0.3, 0.15])
    np.testing.assert_allclose(adam_seconds.get_xdata(), [2.0, 3.0])
    assert by_steps.get_yscale() == "log"  # a loss: lower is better
    texts = [t.get_text() for t in by_seconds.get_legend().get_texts()]
    assert texts == ["adam (2 seeds)", "kfac-recommended (1 seeds)"]
    close(figure)


def test_the_frequency_windows_are_told_apart_by_their_periodogram():
    # A matched filter (the largest periodogram value among the four
    # frequencies) labels about 91 % of the windows at N(0, 1) noise: the
    # classes are those frequencies, and the noise leaves room to learn.
    x, y, _, _ = workloads.frequency_data(0)
    t = np.arange(x.shape[1])
    basis = np.exp(1j * np.outer(workloads.FREQUENCIES, t))
    matched = np.abs(x[..., 0] @ basis.T).argmax(axis=1)
    assert 0.85 < np.mean(matched == y) < 0.97
