"""The metrics `bench/compare.py` reports, against hand-computed numbers."""

import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "bench"))

import compare  # noqa: E402


def test_moving_mean_averages_the_last_window_episodes():
    returns = np.array([1.0, 3.0, 5.0, 7.0])
    np.testing.assert_allclose(
        compare.moving_mean(returns, 2), [1.0, 2.0, 4.0, 6.0]
    )
    np.testing.assert_allclose(
        compare.moving_mean(returns, 10), [1.0, 2.0, 3.0, 4.0]
    )


def test_steps_to_target_needs_a_full_window_at_the_target():
    steps = np.array([10, 20, 30, 40, 50])
    returns = np.array([9.0, 1.0, 9.0, 9.0, 9.0])
    # Windows of 2: (9, 1) 5, (1, 9) 5, (9, 9) 9 at step 40.
    assert compare.steps_to_target(steps, returns, 2, 9.0) == 40
    # A window of one episode: the first already reaches 9.
    assert compare.steps_to_target(steps, returns, 1, 9.0) == 10
    assert compare.steps_to_target(steps, returns, 2, 10.0) is None
    assert compare.steps_to_target(steps[:1], returns[:1], 2, 0.0) is None


def test_area_under_curve_averages_the_moving_mean_on_a_step_grid():
    # Grid 10, 20, 30, 40; windows of 2: the curve is 1, 2, 2, 4.
    assert compare.area_under_curve(
        np.array([10, 20, 40]), np.array([1.0, 3.0, 5.0]), 2, 40, points=4
    ) == pytest.approx(2.25)
    # Before the first episode the curve takes its return: 2, 2, 2, 6.
    assert compare.area_under_curve(
        np.array([20, 40]), np.array([2.0, 6.0]), 1, 40, points=4
    ) == pytest.approx(3.0)
    # Two episodes ending at one step both count there: 2, 2, 4, 4.
    assert compare.area_under_curve(
        np.array([10, 10, 30]), np.array([1.0, 3.0, 5.0]), 2, 40, points=4
    ) == pytest.approx(3.0)
    with pytest.raises(ValueError, match="one step per episode"):
        compare.area_under_curve(np.array([]), np.array([]), 2, 40)


def test_holds_its_best_compares_the_last_window_with_the_best_one():
    # Windows of 2: 2, 5, 9, 8.5 -> the last (8.5) is at least 0.9 * 9.
    assert compare.holds_its_best(np.array([1.0, 3.0, 7.0, 11.0, 6.0]), 2)
    # Windows 5, 9, 7: 7 < 8.1.
    assert not compare.holds_its_best(np.array([1.0, 9.0, 9.0, 5.0]), 2)
    # A negative best of -10 allows down to -11.
    assert compare.holds_its_best(np.array([-10.0, -10.0, -12.0, -10.0]), 2)
    assert not compare.holds_its_best(np.array([-10.0, -10.0, -12.0, -12.0]), 2)
    # Fewer episodes than the window: one mean of all of them.
    assert compare.holds_its_best(np.array([4.0, -4.0]), 100)
    with pytest.raises(ValueError, match="at least one episode"):
        compare.holds_its_best(np.array([]))


@pytest.mark.parametrize(
    "suite, task, quick, path",
    [
        ("default", "CartPole-v1", False, "full/CartPole-v1"),
        ("default", "CartPole-v1", True, "quick/CartPole-v1"),
        ("mujoco", "Hopper-v5", False, "mujoco/Hopper-v5"),
        ("atari", "ALE/Pong-v5", False, "atari/ALE-Pong-v5"),
    ],
)
def test_the_markdown_links_each_plot_from_the_repository_root(
    suite, task, quick, path
):
    assert compare.image(suite, task, quick) == (
        f"![{task}](bench/results/compare/{path}.png)"
    )


def test_the_steps_to_target_table_of_a_task():
    def row(to_target, final, speed):
        return dict(to_target=to_target, final=final, steps_per_second=speed)

    table = {
        "ours-acktr": [row(30_000, 500.0, 900), row(None, 400.0, 1100)],
        "sb3-ppo": [row(None, 100.0, 2000)],
    }
    # Medians over seeds, a seed that missed the target counting as
    # beyond the budget; finals as mean ± std.
    assert compare.markdown("default", "CartPole-v1", table, False) == (
        "### CartPole-v1\n\n"
        "Budget 100,000 steps per run; target 475 (Gymnasium "
        "reward_threshold), over the last 100 training episodes.\n\n"
        "| algorithm | steps to target, per seed | median | final return "
        "| steps/s |\n"
        "|---|---|---|---|---|\n"
        "| ours-acktr | 30,000 / - | - | 450.0 ± 50.0 | 1000 |\n"
        "| sb3-ppo | - | - | 100.0 ± 0.0 | 2000 |\n\n"
        "![CartPole-v1](bench/results/compare/full/CartPole-v1.png)"
    )
