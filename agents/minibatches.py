"""Seeded minibatch orders for the updates that pass over a batch several
times (PPO's policy epochs, the separate value fit)."""

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
