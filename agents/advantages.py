"""Returns and advantages over a batch of trajectories.

Time steps come as tf-agents lays them out, `[B, T + 1]`: transition `t`
goes from the observation of time step `t` to that of `t + 1`, with reward
`r_t` and the discount `d_t` of time step `t + 1`. The last time step only
supplies `V(s_T)` to bootstrap from. Episode ends are read from the step
types:

- a transition *from* a `LAST` time step is the reset into the next episode
  (a boundary): it trains nothing, `valid_t = 0`;
- a transition *into* a `LAST` time step ends its episode: nothing flows
  back across it, `continues_t = 0`. If the episode terminated, `d_t = 0`
  and `V(s_{t+1})` drops out; if it was truncated, `d_t = 1` and the final
  observation's value `V(s_{t+1})` is bootstrapped.

With `δ_t = r_t + γ d_t V(s_{t+1}) - V(s_t)`:

- GAE (Schulman et al. 2016, eq. 16): `Â_t = δ_t + γ λ d_t continues_t Â_{t+1}`;
- n-step returns (Mnih et al. 2016):
  `R_t = r_t + γ d_t [continues_t R_{t+1} + (1 - continues_t) V(s_{t+1})]`,
  with `R_T = V(s_T)`, and `Â_t = R_t - V(s_t)`. This is GAE with `λ = 1`.
"""

import tensorflow as tf
from tf_agents.trajectories import time_step as ts


def episode_masks(
    step_type: tf.Tensor, next_step_type: tf.Tensor
) -> tuple[tf.Tensor, tf.Tensor]:
    """`(valid, continues)`, float32 `[B, T]`, from `[B, T]` step types."""
    valid = tf.cast(tf.not_equal(step_type, ts.StepType.LAST), tf.float32)
    continues = tf.cast(
        tf.not_equal(next_step_type, ts.StepType.LAST), tf.float32
    )
    return valid, continues


def _scan_backwards(fn, elements, initial):
    """`tf.scan` from `t = T - 1` down to `0` over time-major `[T, B]`
    inputs."""
    return tf.scan(fn, elements, initializer=initial, reverse=True)


def _time_major(*tensors):
    return [tf.transpose(tf.cast(t, tf.float32)) for t in tensors]


def generalized_advantages(
    rewards: tf.Tensor,
    discounts: tf.Tensor,
    values: tf.Tensor,
    valid: tf.Tensor,
    continues: tf.Tensor,
    gamma: float,
    lambda_: float,
) -> tf.Tensor:
    """GAE `Â_t`, `[B, T]`, zero on invalid transitions.

    Args:
        rewards: `r_t`, `[B, T]`.
        discounts: `d_t`, `[B, T]` (0 where the episode terminated).
        values: `V(s_t)`, `[B, T + 1]`.
        valid: 1 for transitions inside an episode, `[B, T]`.
        continues: 0 where the episode ends at `t + 1`, `[B, T]`.
        gamma: `γ`.
        lambda_: `λ`.
    """
    values = tf.cast(values, tf.float32)
    deltas = (
        tf.cast(rewards, tf.float32)
        + gamma * tf.cast(discounts, tf.float32) * values[:, 1:]
        - values[:, :-1]
    )
    decay = (
        gamma
        * lambda_
        * tf.cast(discounts, tf.float32)
        * tf.cast(continues, tf.float32)
    )
    deltas, decay, valid_t = _time_major(deltas, decay, valid)

    def step(next_advantage, inputs):
        delta, decay, valid = inputs
        return valid * (delta + decay * next_advantage)

    advantages = _scan_backwards(
        step, (deltas, decay, valid_t), tf.zeros_like(deltas[0])
    )
    return tf.transpose(advantages)


def nstep_returns(
    rewards: tf.Tensor,
    discounts: tf.Tensor,
    values: tf.Tensor,
    valid: tf.Tensor,
    continues: tf.Tensor,
    gamma: float,
) -> tf.Tensor:
    """n-step returns `R_t`, `[B, T]`, bootstrapped from `V(s_T)`; zero on
    invalid transitions. Arguments as in `generalized_advantages`."""
    values = tf.cast(values, tf.float32)
    rewards, discounts, next_values, valid_t, continues_t = _time_major(
        rewards, discounts, values[:, 1:], valid, continues
    )

    def step(next_return, inputs):
        reward, discount, next_value, valid, continues = inputs
        tail = continues * next_return + (1.0 - continues) * next_value
        return valid * (reward + gamma * discount * tail)

    returns = _scan_backwards(
        step,
        (rewards, discounts, next_values, valid_t, continues_t),
        values[:, -1],
    )
    return tf.transpose(returns)


def reward_to_go(
    rewards: tf.Tensor, valid: tf.Tensor, continues: tf.Tensor, gamma: float
) -> tf.Tensor:
    """Monte-Carlo returns `R_t = Σ_{k ≥ 0} γᵏ r_{t+k}` to the end of the
    episode, `[B, T]`, with nothing bootstrapped:
    `R_t = r_t + γ continues_t R_{t+1}`; zero on invalid transitions. Exact
    only where the episode ends within the batch (`ends_in_batch`).
    Arguments as in `generalized_advantages`."""
    rewards, valid_t, continues_t = _time_major(rewards, valid, continues)

    def step(next_return, inputs):
        reward, valid, continues = inputs
        return valid * (reward + gamma * continues * next_return)

    returns = _scan_backwards(
        step, (rewards, valid_t, continues_t), tf.zeros_like(rewards[0])
    )
    return tf.transpose(returns)


def ends_in_batch(continues: tf.Tensor) -> tf.Tensor:
    """1 on the transitions whose episode ends within the batch (at the
    transition itself or a later one), 0 on those of an episode the
    batch cuts off, `[B, T]`: `e_t = (1 - continues_t) + continues_t e_{t+1}`,
    `e_T = 0`."""
    (continues_t,) = _time_major(continues)

    def step(next_ends, continues):
        return (1.0 - continues) + continues * next_ends

    ends = _scan_backwards(step, continues_t, tf.zeros_like(continues_t[0]))
    return tf.transpose(ends)
