"""The loss terms of the actor-critic agents, one function each.

All are weighted means over the rows of a batch, `mean_w(x) = Σ w x / Σ w`,
with `w` zero on transitions that train nothing (episode boundaries).

Training loss (Mnih et al. 2016; Wu et al. 2017, §3.2):
`L = pg_loss - ent_coef · H + vf_coef · vf_loss` with
`pg_loss = -mean_w(Â log π(a|s))`, `H = mean_w(entropy of π(·|s))`,
`vf_loss = mean_w((R - V(s))²)`.

PPO's policy losses (Schulman et al. 2017, §3-4), with the probability
ratio `r = π(a|s) / π_old(a|s)`:
`clip_loss = -mean_w(min(r Â, clip(r, 1 - ε, 1 + ε) Â))` and
`penalty_loss = -mean_w(r Â) + β · mean_w(KL(π_old(·|s) || π(·|s)))`.

Fisher losses (ACKTR; OpenAI baselines `acktr.py`): K-FAC reads its factors
from the backward pass of `joint_fisher = pg_fisher + vf_fisher`:

- `pg_fisher = mean_w(log π(a|s))`. The actions were sampled from `π`, so the
  per-example gradients `∇ log π(a|s)` have the true Fisher of the policy
  as their second moment (the sign does not matter to `g gᵀ`);
- `vf_fisher = -vf_fisher_coef · mean_w((V(s) - sg(V(s) + ε))²)`,
  `ε ~ N(0, 1)`: the per-example gradient at `V` is `2ε`, so the critic
  is treated as a Gaussian predictor `N(V(s), ¼)`, whose Fisher is
  the Gauss-Newton matrix `4 ∇V ∇Vᵀ` (scaled by `vf_fisher_coef²`).

A critic fitted apart by K-FAC (ACKTR paper §3.1 takes the Gauss-Newton
matrix as the critic's Fisher) needs no noise: `V` is a scalar, so the
backward pass of `value_gauss_newton_loss = √2 · mean_w(V(s))` gives every
example the gradient `√2 ∇V` exactly (rows of weight 1), and K-FAC's `F̂`
approximates `2 E[∇V ∇Vᵀ]`, the Gauss-Newton matrix of `vf_loss` itself.
(The joint pass needs the noise: there the policy's and the critic's per-example
gradients meet in shared layers, and only zero-mean noise keeps their
cross terms out of `G`.)
"""

import math

import tensorflow as tf


def weighted_mean(x: tf.Tensor, weights: tf.Tensor) -> tf.Tensor:
    """`Σ w x / Σ w`, 0 when all weights are 0."""
    x = tf.cast(x, tf.float32)
    weights = tf.cast(weights, tf.float32)
    return tf.math.divide_no_nan(
        tf.reduce_sum(weights * x), tf.reduce_sum(weights)
    )


def policy_gradient_loss(
    log_prob: tf.Tensor, advantages: tf.Tensor, weights: tf.Tensor
) -> tf.Tensor:
    """`-mean_w(Â log π(a|s))`; the advantages carry no gradient."""
    return -weighted_mean(tf.stop_gradient(advantages) * log_prob, weights)


def standardized(advantages: tf.Tensor, weights: tf.Tensor) -> tf.Tensor:
    """`w (Â - mean_w Â) / (std_w Â + 1e-8)`: the advantages standardized
    over the rows of weight `w` (zero on the others)."""
    mean = weighted_mean(advantages, weights)
    variance = weighted_mean(tf.square(advantages - mean), weights)
    return weights * (advantages - mean) / (tf.sqrt(variance) + 1e-8)


def clipped_surrogate_loss(
    ratio: tf.Tensor,
    advantages: tf.Tensor,
    clip_range: float,
    weights: tf.Tensor,
) -> tf.Tensor:
    """`clip_loss = -mean_w(min(r Â, clip(r, 1 - ε, 1 + ε) Â))`, `ε =
    clip_range`: no gradient on a row whose ratio has left `[1 - ε, 1 + ε]`
    in the direction its advantage favours."""
    advantages = tf.stop_gradient(advantages)
    clipped = tf.clip_by_value(ratio, 1.0 - clip_range, 1.0 + clip_range)
    return -weighted_mean(
        tf.minimum(ratio * advantages, clipped * advantages), weights
    )


def penalized_surrogate_loss(
    ratio: tf.Tensor,
    advantages: tf.Tensor,
    kl: tf.Tensor,
    kl_coef: tf.Tensor,
    weights: tf.Tensor,
) -> tf.Tensor:
    """`penalty_loss = -mean_w(r Â) + β · mean_w(KL)`, `β = kl_coef`, `KL`
    per row `KL(π_old(·|s) || π(·|s))`."""
    advantages = tf.stop_gradient(advantages)
    return -weighted_mean(ratio * advantages, weights) + tf.stop_gradient(
        kl_coef
    ) * weighted_mean(kl, weights)


def value_loss(
    values: tf.Tensor, returns: tf.Tensor, weights: tf.Tensor
) -> tf.Tensor:
    """`mean_w((R - V(s))²)`; the returns carry no gradient."""
    return weighted_mean(tf.square(tf.stop_gradient(returns) - values), weights)


def entropy(entropies: tf.Tensor, weights: tf.Tensor) -> tf.Tensor:
    """`H = mean_w(entropy of π(·|s))`."""
    return weighted_mean(entropies, weights)


def policy_fisher_loss(log_prob: tf.Tensor, weights: tf.Tensor) -> tf.Tensor:
    """`pg_fisher = mean_w(log π(a|s))`, `a` sampled from `π`."""
    return weighted_mean(log_prob, weights)


def value_fisher_loss(
    values: tf.Tensor,
    noise: tf.Tensor,
    weights: tf.Tensor,
    vf_fisher_coef: float,
) -> tf.Tensor:
    """`vf_fisher = -vf_fisher_coef · mean_w((V - sg(V + ε))²)`, `ε = noise`."""
    sampled = tf.stop_gradient(values + noise)
    return -vf_fisher_coef * weighted_mean(tf.square(values - sampled), weights)


def value_gauss_newton_loss(values: tf.Tensor, weights: tf.Tensor) -> tf.Tensor:
    """`√2 · mean_w(V(s))`: K-FAC factors of the value loss's Gauss-Newton."""
    return math.sqrt(2.0) * weighted_mean(values, weights)
