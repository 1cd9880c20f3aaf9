"""`agents.plot`: the curves it aggregates and the runs it groups, against
hand-computed values."""

import os

import numpy as np
import pytest
from run_dirs import run_directory as _run

from agents import plot


def test_moving_mean_averages_the_last_window_returns():
    np.testing.assert_allclose(
        plot.moving_mean(np.array([1.0, 3.0, 5.0, 7.0]), 2), [1, 2, 4, 6]
    )


def test_band_interpolates_holds_the_last_value_and_skips_missing_curves():
    curves = [
        (np.array([0.0, 10.0]), np.array([0.0, 10.0])),
        (np.array([5.0, 15.0]), np.array([4.0, 4.0])),
    ]
    mean, low, high = plot.band(curves, np.array([-1.0, 0.0, 5.0, 10.0, 20.0]))
    # Curve 1 on the grid: -, 0, 5, 10, 10; curve 2: -, -, 4, 4, 4.
    np.testing.assert_allclose(mean, [np.nan, 0.0, 4.5, 7.0, 7.0])
    np.testing.assert_allclose(low, [np.nan, 0.0, 4.0, 4.0, 4.0])
    np.testing.assert_allclose(high, [np.nan, 0.0, 5.0, 10.0, 10.0])


def test_seeds_of_one_configuration_form_one_group(tmp_path):
    rows = [(10, 1.0, 5, 0.5), (20, 2.0, 5, 1.0)]
    base = dict(algo="acktr", env="Pendulum-v1", damping=0.1, total_steps=20)
    runs = [
        _run(tmp_path / "a0", rows, {**base, "seed": 0, "logdir": "a0"}),
        _run(tmp_path / "a1", rows, {**base, "seed": 1, "logdir": "a1"}),
        _run(tmp_path / "b0", rows, {**base, "seed": 0, "damping": 1.0}),
        _run(tmp_path / "t0", rows, {**base, "algo": "trpo", "damping": 5}),
        _run(tmp_path / "ours-a2c-seed3", rows),
    ]
    groups = plot.group_runs([plot.load_run(r) for r in runs])
    sizes = {label: len(members) for label, members in groups.items()}
    assert sizes == {
        "acktr Pendulum-v1 damping=0.1": 2,
        "acktr Pendulum-v1 damping=1.0": 1,
        "trpo Pendulum-v1": 1,  # no other trpo configuration to tell apart
        "ours-a2c": 1,
    }


def test_the_legend_stands_beside_the_curves_not_over_them(tmp_path):
    rows = [(10, 1.0, 5, 0.5), (20, 2.0, 5, 1.0)]
    base = dict(algo="acktr", env="Pendulum-v1", total_steps=20)
    runs = [
        _run(tmp_path / f"r{k}", rows, {**base, "damping": 10.0**-k})
        for k in range(6)
    ]
    figure, groups = plot.figure_of([plot.load_run(r) for r in runs])
    axes = figure.axes[0]
    renderer = figure.canvas.get_renderer()
    legend = axes.get_legend().get_window_extent(renderer)
    assert len(groups) == 6
    assert legend.x0 > axes.get_window_extent(renderer).x1
    assert legend.x1 <= figure.bbox.x1  # and inside the image


def test_load_run_reads_without_rewriting_and_skips_a_partial_row(tmp_path):
    directory = _run(tmp_path / "run", [(10, 1.0, 5, 0.5), (20, 3.0, 5, 1.5)])
    path = os.path.join(directory, "episodes.csv")
    with open(path, "a") as f:
        f.write("30,2.")  # a row being written
    before = open(path).read()
    run = plot.load_run(directory)
    np.testing.assert_array_equal(run.steps, [10, 20])
    np.testing.assert_array_equal(run.seconds, [0.5, 1.5])
    np.testing.assert_array_equal(run.returns, [1.0, 3.0])
    assert open(path).read() == before


def test_the_command_line_writes_a_png_or_names_the_bad_input(tmp_path, capsys):
    rows = [(10, 1.0, 5, 0.5), (20, 2.0, 5, 1.0), (30, 4.0, 5, 2.0)]
    run = _run(tmp_path / "acktr-seed0", rows)
    out = str(tmp_path / "curves.png")
    for x in ("steps", "seconds"):
        assert plot.main([run, "--out", out, "--x", x, "--window", "2"]) == 0
        with open(out, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert "acktr: 1 run(s)" in capsys.readouterr().out
    missing = str(tmp_path / "nothing")
    assert plot.main([missing, "--out", out]) == 2
    assert f"{missing!r} is not a run directory" in capsys.readouterr().err
    empty = _run(tmp_path / "empty", [])
    assert plot.main([empty]) == 2
    assert "no finished episode" in capsys.readouterr().err
    assert plot.main([run, "--window", "0"]) == 2
    assert "Received: 0" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        plot.main([])
