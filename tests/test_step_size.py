"""The target-KL step-size controller against hand-computed factors."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from agents import step_size

KAPPA = 0.01


def _factor(kl, warming=False, kappa=KAPPA):
    factor, still_warming = step_size.learning_rate_factor(
        tf.constant(kl, tf.float32),
        tf.constant(kappa, tf.float32),
        tf.constant(warming),
    )
    return float(factor), bool(still_warming)


@pytest.mark.parametrize(
    "kl, factor",
    [
        (0.05, 1 / 1.5),  # above 2κ = 0.02
        (0.0201, 1 / 1.5),
        (0.02, 1.0),  # 2κ itself is inside
        (0.01, 1.0),
        (0.005, 1.0),  # κ / 2 itself is inside
        (0.0049, 1.5),
        (0.0, 1.5),
    ],
)
def test_the_rate_moves_by_1_5_outside_half_to_twice_the_target(kl, factor):
    assert _factor(kl) == (pytest.approx(factor, rel=1e-6), False)


@pytest.mark.parametrize(
    "kl, factor",
    [
        (4e-4, 5.0),  # √(0.01 / 4e-4)
        (1e-3, np.sqrt(10.0)),
        (1e-4, 10.0),  # √100, at the cap
        (1e-6, 10.0),  # √1e4 = 100, capped
        (0.0, 10.0),  # KL floored at 1e-12: √1e10, capped
    ],
)
def test_the_warm_start_takes_the_root_of_the_kl_ratio(kl, factor):
    assert _factor(kl, warming=True) == (pytest.approx(factor, rel=1e-6), True)


@pytest.mark.parametrize("kl, factor", [(0.005, 1.0), (0.05, 1 / 1.5)])
def test_the_warm_start_ends_at_the_first_kl_of_half_the_target(kl, factor):
    assert _factor(kl, warming=True) == (pytest.approx(factor, rel=1e-6), False)


def test_the_scaled_rate_stays_within_1e_8_and_1():
    def scaled(rate, factor):
        return float(step_size.scaled_learning_rate(rate, factor))

    assert scaled(0.02, 1.5) == pytest.approx(0.03)
    assert scaled(0.9, 1.5) == 1.0
    assert scaled(1.2e-8, 1 / 1.5) == pytest.approx(1e-8)
    assert scaled(tf.Variable(0.5, dtype=tf.float64), 10.0) == 1.0


def test_the_target_follows_a_schedule_of_the_update_count():
    schedule = keras.optimizers.schedules.PolynomialDecay(
        0.02, decay_steps=10, end_learning_rate=0.002
    )
    # Linear from 0.02 at update 0 to 0.002 at update 10.
    assert float(step_size.target_kl_at(schedule, 5)) == pytest.approx(0.011)
    assert float(step_size.target_kl_at(0.02, 5)) == pytest.approx(0.02)


def test_check_target_kl_keeps_a_float_a_callable_or_none():
    optimizer = keras.optimizers.SGD(0.1)
    assert step_size.check_target_kl(None, optimizer, False) is None
    kappa = step_size.check_target_kl(np.float32(0.5), optimizer, True)
    assert type(kappa) is float and kappa == 0.5
    schedule = keras.optimizers.schedules.PolynomialDecay(0.02, 10)
    assert step_size.check_target_kl(schedule, optimizer, False) is schedule


@pytest.mark.parametrize(
    "target_kl, optimizer, warm_start, message",
    [
        (0.01, None, False, "this agent has none. Received: target_kl=0.01"),
        (
            0.0,
            keras.optimizers.SGD(0.1),
            False,
            r"> 0. Received: target_kl=0.0",
        ),
        (
            keras.optimizers.schedules.PolynomialDecay(0.0, 10),
            keras.optimizers.SGD(0.1),
            False,
            r"at update 0: 0.0",
        ),
        (
            0.01,
            keras.optimizers.SGD(
                keras.optimizers.schedules.PolynomialDecay(0.1, 10)
            ),
            False,
            "needs a constant one",
        ),
        (0.01, keras.optimizers.SGD(lambda: 0.1), False, "needs a constant"),
        (None, keras.optimizers.SGD(0.1), True, "warm_start=True"),
    ],
    ids=[
        "no optimizer",
        "zero",
        "schedule at zero",
        "rate schedule",
        "rate callable",
        "warm start alone",
    ],
)
def test_bad_target_kl_arguments_raise_with_what_was_received(
    target_kl, optimizer, warm_start, message
):
    with pytest.raises(ValueError, match=message):
        step_size.check_target_kl(target_kl, optimizer, warm_start)
