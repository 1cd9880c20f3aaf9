"""Seeded row orders: minibatches for the updates that pass over a batch
several times (PPO's policy epochs, the separate value fit), and the
random rows of ACKTR's Fisher pass."""

import tensorflow as tf


def shuffled_rows(
    rows: tf.Tensor, seed: int, step: tf.Tensor, epochs: int, epoch
) -> tf.Tensor:
    """A permutation of `range(rows)` for pass `epoch` of update `step`.

    Seeded by `(seed, step · epochs + epoch)`: every pass of every update
    has its own order, and a rerun (or a resumed run) repeats it.
    """
    pass_seed = tf.stack(
        [
            tf.constant(seed, tf.int64),
            tf.cast(step, tf.int64) * epochs + tf.cast(epoch, tf.int64),
        ]
    )
    return tf.random.experimental.stateless_shuffle(tf.range(rows), pass_seed)


def sampled_rows(rows: tf.Tensor, count: int, seed: tf.Tensor) -> tf.Tensor:
    """`count` distinct indices of `range(rows)` drawn uniformly at random
    (all `rows` of them, shuffled, when `count ≥ rows`), from the stateless
    `seed` (shape `[2]`): a rerun draws the same ones."""
    return tf.random.experimental.stateless_shuffle(tf.range(rows), seed)[
        :count
    ]
