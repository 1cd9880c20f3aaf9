"""The backward passes and the guarded apply that the agents share.

`fisher_then_loss_gradients` (`keras_kfac`'s) runs K-FAC's two backward
passes on one tape: the Fisher loss's, which records the factors, then the
loss's, which gives the gradient. `apply_gradients` applies a step unless
its gradients hold NaN or Inf. ACKTR's policy step and the separate value
fit (`agents.value_fit`) use both; A2C uses the second.
"""

import tensorflow as tf

import keras_kfac
from keras_kfac import linalg
from keras_kfac.fisher import fisher_then_loss_gradients

__all__ = ["apply_gradients", "fisher_then_loss_gradients"]


def apply_gradients(optimizer, gradients, variables) -> tf.Tensor:
    """`optimizer.apply` on the variables that received a gradient; a
    first-order step whose gradients hold NaN or Inf is skipped whole
    (`keras_kfac.KFAC` skips such steps itself). Returns the gradients'
    global norm `‖∇‖`, before the optimizer clips it to `max_grad_norm`
    (its `global_clipnorm`)."""
    pairs = [(g, v) for g, v in zip(gradients, variables) if g is not None]
    gradients, variables = [g for g, _ in pairs], [v for _, v in pairs]
    norm = tf.linalg.global_norm(gradients)
    if isinstance(optimizer, keras_kfac.KFAC):
        optimizer.apply(gradients, variables)
        return norm
    finite = linalg.all_finite(gradients)
    tf.cond(
        finite,
        lambda: optimizer.apply(gradients, variables) or tf.constant(True),
        lambda: tf.constant(False),
    )
    return norm
