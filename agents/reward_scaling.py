"""Reward scaling by the running standard deviation of the return.

What the PPO implementations do to rewards (OpenAI baselines' and
Stable-Baselines3's `VecNormalize`; Engstrom et al. 2020 measured it as
one of PPO's most consequential details): each environment copy keeps
its discounted return `R ← γ R + r`, reset at its episode ends; the
rewards an update trains on are `clip(r / sqrt(σ²_R + 1e-8), ±clip)`,
`σ²_R` the running variance of every `R` seen so far. The rewards keep
their sign and their ratios, so no constant offset enters the
advantages; only their scale changes, which puts the value function's
targets and the advantages near unit scale whatever the task's units.
The environment's own rewards are untouched: episode returns, logs and
evaluations stay in the task's units.
"""

import tensorflow as tf


class RewardScaler(tf.Module):
    """Scales the rewards of `[B, T]` batches of transitions.

    The running return of each of the `B` environment copies carries over
    from one batch to the next (they continue the copies' trajectories),
    so `B` must stay the same; the moments (count, mean, variance of `R`)
    are merged batch by batch (Chan et al. 1979). All are variables,
    saved with the agent that owns the scaler.

    Args:
        gamma: `γ` of the running return (the agent's discount).
        clip: Bound of the scaled rewards. Defaults to `10.0`.
    """

    def __init__(self, gamma: float, clip: float = 10.0, name=None):
        super().__init__(name=name)
        self.gamma = float(gamma)
        self.clip = float(clip)
        # `[B]`, empty until the first batch says what `B` is.
        self.returns = tf.Variable(
            tf.zeros([0]),
            shape=tf.TensorShape([None]),
            trainable=False,
            name="running_returns",
        )
        self.count = tf.Variable(0.0, trainable=False, name="count")
        self.mean = tf.Variable(0.0, trainable=False, name="mean")
        self.variance = tf.Variable(1.0, trainable=False, name="variance")

    def scale(
        self, rewards: tf.Tensor, valid: tf.Tensor, continues: tf.Tensor
    ) -> tf.Tensor:
        """The scaled rewards of the batch, `[B, T]`, after merging its
        returns into the moments.

        Args:
            rewards: `r`, `[B, T]`.
            valid: 1 on the transitions of an episode, 0 on the resets
                between episodes (`agents.advantages.episode_masks`).
            continues: 0 on the transitions that end an episode.
        """
        rewards = tf.cast(rewards, tf.float32)
        copies = tf.shape(rewards)[0]
        # The returns carried over, or zeros on the first batch (or when
        # the number of copies changed).
        carried_over = tf.concat([self.returns, tf.zeros([copies])], 0)
        start = tf.where(
            tf.equal(tf.size(self.returns), copies),
            carried_over[:copies],
            tf.zeros([copies]),
        )

        def step(state, inputs):
            """`(R carried to t + 1, R_t)` from `R` carried to `t`."""
            previous, _ = state
            r, is_valid, goes_on = inputs
            current = is_valid * (self.gamma * previous + r)
            return current * goes_on, current

        carried, returns = tf.scan(
            step,
            (
                tf.transpose(rewards),
                tf.transpose(valid),
                tf.transpose(continues),
            ),
            initializer=(start, tf.zeros([copies])),
        )
        self.returns.assign(carried[-1])
        self._merge(tf.boolean_mask(returns, tf.transpose(valid) > 0.0))
        scale = tf.sqrt(self.variance + 1e-8)
        return tf.clip_by_value(rewards / scale, -self.clip, self.clip)

    def _merge(self, returns: tf.Tensor) -> None:
        """Merges the moments of the values `returns` into the running
        ones."""
        n = tf.cast(tf.size(returns), tf.float32)
        total = self.count + n
        batch_mean = tf.math.divide_no_nan(tf.reduce_sum(returns), n)
        batch_variance = tf.math.divide_no_nan(
            tf.reduce_sum(tf.square(returns - batch_mean)), n
        )
        delta = batch_mean - self.mean
        m2 = (
            self.variance * self.count
            + batch_variance * n
            + tf.square(delta) * self.count * n / tf.maximum(total, 1.0)
        )
        keep = tf.equal(n, 0.0)
        self.mean.assign(
            tf.where(
                keep, self.mean, self.mean + delta * n / tf.maximum(total, 1.0)
            )
        )
        self.variance.assign(
            tf.where(keep, self.variance, m2 / tf.maximum(total, 1.0))
        )
        self.count.assign(total)
