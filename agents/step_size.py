"""The adaptive step size of the on-policy agents: a target KL per update.

Schulman et al. (2016), used by the ACKTR paper for continuous control:
with `target_kl = κ`, the optimizer's learning rate is divided by 1.5
after an update whose realized KL exceeds `2κ` and multiplied by 1.5 after
one below `κ / 2`, within `[1e-8, 1]`. `κ` may follow a schedule of the
update count (a Keras `LearningRateSchedule`), e.g. a linear decay that
makes the late steps smaller, as a decaying learning rate does for a
fixed-rate optimizer. With `warm_start`, until the first update whose KL
reaches `κ / 2` the rate is instead multiplied by `min(sqrt(κ / KL), 10)`:
the KL of a small step grows as the square of its size, so the first steps
reach the target in one or two updates instead of climbing by 1.5x per
update from a KL of 1e-6.

`learning_rate_factor` and `scaled_learning_rate` are the arithmetic, pure
tensor functions; the agent keeps the warm-start flag and the optimizer.
"""

from collections.abc import Callable

import keras
import tensorflow as tf

# The rate is divided by FACTOR above 2κ and multiplied by it below κ / 2.
FACTOR = 1.5
MIN_LEARNING_RATE = 1e-8
MAX_LEARNING_RATE = 1.0
# The warm start's largest factor per update.
MAX_WARM_FACTOR = 10.0
# Floor of the KL in √(κ / KL), for an update that left the policy as it was.
MIN_KL = 1e-12


def check_target_kl(
    target_kl, optimizer, warm_start: bool
) -> float | Callable | None:
    """`target_kl` as an agent keeps it: `None`, a float, or a callable of
    the update count.

    Raises:
        ValueError: `target_kl` is set for an agent without an optimizer,
            is not > 0 (at update 0 for a callable), or is set for an
            optimizer whose learning rate is not a constant; or
            `warm_start` is set without `target_kl`.
    """
    if target_kl is not None:
        if optimizer is None:
            raise ValueError(
                "target_kl adapts the optimizer's learning rate; this "
                f"agent has none. Received: target_kl={target_kl}"
            )
        first = target_kl(0) if callable(target_kl) else target_kl
        if not float(first) > 0:
            raise ValueError(
                f"target_kl must be > 0. Received: target_kl={target_kl!r}"
                + (
                    f" (at update 0: {float(first)})"
                    if callable(target_kl)
                    else ""
                )
            )
        # A float rate is a variable, which the controller assigns; a
        # schedule or a callable gives a tensor computed from it.
        if not isinstance(optimizer.learning_rate, keras.Variable):
            raise ValueError(
                "target_kl adapts the learning rate, so the optimizer "
                "needs a constant one (a float), not a schedule or a "
                "callable. Received: optimizer.learning_rate="
                f"{optimizer.learning_rate!r}"
            )
    if warm_start and target_kl is None:
        raise ValueError(
            "warm_start scales the learning rate toward target_kl, "
            "which is None. Received: warm_start=True"
        )
    if target_kl is None or callable(target_kl):
        return target_kl
    return float(target_kl)


def target_kl_at(target_kl: float | Callable, step) -> tf.Tensor:
    """`κ` at the update count `step`: `target_kl(step)` for a callable."""
    if callable(target_kl):
        return tf.cast(target_kl(step), tf.float32)
    return tf.constant(target_kl, tf.float32)


def learning_rate_factor(
    kl: tf.Tensor, kappa: tf.Tensor, warming: tf.Tensor
) -> tuple[tf.Tensor, tf.Tensor]:
    """The factor of the learning rate after an update of realized `kl`.

    Args:
        kl: The update's realized mean KL.
        kappa: `κ`, the target KL of the update.
        warming: Boolean, whether the warm start is still on.

    Returns:
        `(factor, warming)`: `1 / 1.5` above `2κ`, `1.5` below `κ / 2`,
        `1` between; while warming and below `κ / 2`,
        `min(sqrt(κ / KL), 10)` instead. `warming` stays on while the KL
        is below `κ / 2`.
    """
    factor = tf.where(
        kl > 2.0 * kappa,
        1.0 / FACTOR,
        tf.where(kl < 0.5 * kappa, FACTOR, 1.0),
    )
    warming = tf.logical_and(warming, kl < 0.5 * kappa)
    warm_factor = tf.minimum(
        tf.sqrt(kappa / tf.maximum(kl, MIN_KL)), MAX_WARM_FACTOR
    )
    return tf.where(warming, warm_factor, factor), warming


def scaled_learning_rate(learning_rate, factor: tf.Tensor) -> tf.Tensor:
    """`learning_rate · factor`, within `[1e-8, 1]`."""
    return tf.clip_by_value(
        tf.cast(learning_rate, tf.float32) * factor,
        MIN_LEARNING_RATE,
        MAX_LEARNING_RATE,
    )
