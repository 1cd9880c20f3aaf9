"""The loss terms against hand-computed numbers."""

import numpy as np
import pytest
import tensorflow as tf

from agents import losses


def test_weighted_mean():
    assert float(losses.weighted_mean([1.0, 2.0, 3.0], [1.0, 0.0, 1.0])) == 2.0
    assert float(losses.weighted_mean([1.0], [0.0])) == 0.0


def test_policy_gradient_loss():
    log_prob = tf.constant([-0.5, -1.0, -2.0])
    advantages = tf.constant([1.0, -2.0, 3.0])
    # -((-0.5)(1) + (-1)(-2)) / 2; the third row has weight 0.
    loss = losses.policy_gradient_loss(log_prob, advantages, [1.0, 1.0, 0.0])
    assert float(loss) == pytest.approx(-0.75)


def test_policy_gradient_loss_does_not_differentiate_advantages():
    advantages = tf.Variable([1.0, 2.0])
    with tf.GradientTape() as tape:
        loss = losses.policy_gradient_loss(
            tf.constant([-1.0, -1.0]), advantages, [1.0, 1.0]
        )
    assert tape.gradient(loss, advantages) is None


def test_value_loss_and_gradient():
    values = tf.Variable([1.0, 2.0])
    with tf.GradientTape() as tape:
        loss = losses.value_loss(values, tf.constant([2.0, 0.0]), [1.0, 1.0])
    assert float(loss) == pytest.approx((1.0 + 4.0) / 2)
    # d/dV mean((R - V)²) = -2 (R - V) / n
    np.testing.assert_allclose(tape.gradient(loss, values), [-1.0, 2.0])


def test_entropy_of_a_categorical():
    import tensorflow_probability as tfp

    logits = tf.math.log([[0.25, 0.75], [0.5, 0.5]])
    entropies = tfp.distributions.Categorical(logits=logits).entropy()
    expected = (-(0.25 * np.log(0.25) + 0.75 * np.log(0.75)) + np.log(2.0)) / 2
    assert float(losses.entropy(entropies, [1.0, 1.0])) == pytest.approx(
        expected, rel=1e-5
    )


def test_policy_fisher_loss():
    log_prob = tf.Variable([-0.5, -1.5, -4.0])
    with tf.GradientTape() as tape:
        loss = losses.policy_fisher_loss(log_prob, [1.0, 1.0, 0.0])
    assert float(loss) == pytest.approx(-1.0)
    np.testing.assert_allclose(tape.gradient(loss, log_prob), [0.5, 0.5, 0.0])


def test_value_fisher_loss_and_its_gradient():
    values = tf.Variable([1.0, 2.0])
    noise = tf.constant([0.5, -1.0])
    with tf.GradientTape() as tape:
        loss = losses.value_fisher_loss(
            values, noise, [1.0, 1.0], vf_fisher_coef=2.0
        )
    # -c mean(ε²) = -2 (0.25 + 1) / 2
    assert float(loss) == pytest.approx(-1.25)
    # d/dV = 2 c ε / n with c = 2, n = 2.
    np.testing.assert_allclose(tape.gradient(loss, values), [1.0, -2.0])
