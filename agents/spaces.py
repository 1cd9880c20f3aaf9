"""What a Gymnasium environment looks like to a policy.

One home for the conversions that training (`agents.envs`), evaluation
(`agents.evaluate`) and the video replay (`agents.replay`) share:

- the specs a policy is built for: `observation_spec` and `action_spec`
  of a Gymnasium space;
- `encode_observations`: Gymnasium observations as the policy reads them
  (a `Discrete` one one-hot, a `Box` one in the spec's dtype);
- `env_actions`: the policy's actions as the environment takes them
  (a `Discrete` space's `start` added, a `Box` one's bounds enforced);
- `game_score`: the points an Atari game (`agents.atari`) credits a step
  with, and whether the step lost a life without ending the game.

It imports Gymnasium and NumPy only, so that the environment subprocesses
and the video replay start without TensorFlow; `Spec` is therefore a plain
description that `agents.envs` turns into tf-agents' `ArraySpec`.
"""

import dataclasses

import gymnasium
import numpy as np


@dataclasses.dataclass(frozen=True, eq=False)
class Spec:
    """The shape, dtype and (for a bounded spec) bounds of what a policy
    reads or writes, in the terms of tf-agents' `BoundedArraySpec`.

    Attributes:
        shape: The shape of one observation or action.
        dtype: Its NumPy dtype.
        minimum: The smallest value, a scalar or an array of `shape`;
            `None` for an unbounded spec.
        maximum: The largest value, likewise.
    """

    shape: tuple[int, ...]
    dtype: np.dtype
    minimum: int | float | np.ndarray | None = None
    maximum: int | float | np.ndarray | None = None


def _observation_dtype(space: gymnasium.spaces.Box) -> np.dtype:
    # Images stay bytes (4x smaller batches); the networks rescale them.
    return np.dtype(np.uint8 if space.dtype == np.uint8 else np.float32)


def observation_spec(space: gymnasium.Space) -> Spec:
    """The spec of the observations `encode_observations` makes of `space`.

    A `Box` of `uint8` (images) keeps its bytes, bounded by `[0, 255]`; any
    other `Box` becomes unbounded `float32`; a `Discrete(n)` becomes a
    one-hot `float32` vector of `n` entries in `[0, 1]`.

    Raises:
        ValueError: If `space` is neither `Box` nor `Discrete`.
    """
    if isinstance(space, gymnasium.spaces.Box):
        dtype = _observation_dtype(space)
        if dtype == np.uint8:
            return Spec(tuple(space.shape), dtype, 0, 255)
        return Spec(tuple(space.shape), dtype)
    if isinstance(space, gymnasium.spaces.Discrete):
        return Spec((int(space.n),), np.dtype(np.float32), 0.0, 1.0)
    raise ValueError(
        "Observation spaces must be Box or Discrete. "
        f"Received: observation_space={space}"
    )


def action_spec(space: gymnasium.Space) -> Spec:
    """The spec of the actions a policy for `space` writes.

    A `Discrete(n, start)` policy writes `int64` scalars `0, ..., n - 1`
    (`env_actions` adds `start`); a one-dimensional `Box` policy writes
    `float32` vectors bounded by the space's bounds.

    Raises:
        ValueError: If `space` is neither `Discrete` nor a one-dimensional
            `Box`.
    """
    if isinstance(space, gymnasium.spaces.Discrete):
        return Spec((), np.dtype(np.int64), 0, int(space.n) - 1)
    if isinstance(space, gymnasium.spaces.Box) and len(space.shape) == 1:
        return Spec(
            tuple(space.shape),
            np.dtype(np.float32),
            space.low.astype(np.float32),
            space.high.astype(np.float32),
        )
    raise ValueError(
        "Action spaces must be Discrete or a one-dimensional Box. "
        f"Received: action_space={space}"
    )


def encode_observations(
    space: gymnasium.Space, observations: np.ndarray
) -> np.ndarray:
    """A batch of `space`'s observations (leading axis: the batch) as the
    policy reads them (`observation_spec`).

    Args:
        space: A `Box` or `Discrete` observation space.
        observations: The batch, for example a vector environment's
            observations, or `np.asarray(observation)[None]` for one.

    Returns:
        One-hot rows `(batch, n)` of `float32` for `Discrete(n, start)`
        (observation `k` sets entry `k - start`); for a `Box`, the
        observations in `observation_spec(space).dtype`.
    """
    if isinstance(space, gymnasium.spaces.Discrete):
        index = np.asarray(observations) - space.start
        one_hot = np.zeros((len(index), space.n), np.float32)
        one_hot[np.arange(len(index)), index] = 1.0
        return one_hot
    return np.asarray(observations, _observation_dtype(space))


def env_actions(space: gymnasium.Space, actions: np.ndarray) -> np.ndarray:
    """A batch of the policy's actions (`action_spec`) as the environment
    takes them.

    A `Discrete(n, start)` space gets `int64` actions shifted by `start`. A
    `Box` space gets the actions clipped to its bounds (a Gaussian policy's
    samples are unbounded, and the trajectory keeps the sampled action, so
    that its log-probability stays exact), in its dtype: an integer `Box`
    gets them rounded to the nearest integer first.

    Args:
        space: A `Discrete` or one-dimensional `Box` action space.
        actions: The batch, leading axis first.
    """
    actions = np.asarray(actions)
    if isinstance(space, gymnasium.spaces.Discrete):
        return actions.astype(np.int64) + int(space.start)
    if np.issubdtype(space.dtype, np.integer):
        actions = np.rint(actions)
    return np.clip(actions, space.low, space.high).astype(space.dtype)


def game_score(reward, info: dict) -> tuple[np.ndarray, np.ndarray]:
    """`(score, life_lost)` of a step: the points it earned and whether it
    lost a life without ending the game.

    An Atari game (`agents.atari`) learns from clipped rewards and keeps
    the game's own points in `info["score"]`; its lost lives end the
    learner's episodes (`info["life_lost"]`) but not the game, whose next
    reset continues it. So a game is scored whole, by `score` summed across
    its lives. Other environments have neither key: their score is their
    reward, and they lose no lives.

    Args:
        reward: One environment's reward, or a vector environment's
            rewards (one per copy).
        info: The step's `info`; a vector environment's holds arrays, with
            the masks `info["_score"]` and `info["_life_lost"]` telling
            which copies reported the key.

    Returns:
        `score` (the reward where the step has no `"score"`) and
        `life_lost`, NumPy arrays of `reward`'s shape.
    """
    reward = np.asarray(reward)
    score, life_lost = reward, np.zeros(reward.shape, bool)
    if "score" in info:
        score = np.where(info.get("_score", True), info["score"], reward)
    if "life_lost" in info:
        life_lost = info.get("_life_lost", True) & np.asarray(
            info["life_lost"], bool
        )
    return score, life_lost
