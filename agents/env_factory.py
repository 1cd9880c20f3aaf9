"""Builds one Gymnasium environment with the observation features asked for.

Kept apart from `agents.envs` and importing only Gymnasium, so that the
subprocesses of `GymnasiumEnvironment(..., processes=True)`, which receive
`make_env` by reference, start without TensorFlow.
"""

import gymnasium
from gymnasium import wrappers


def make_env(
    env_id: str,
    env_kwargs: dict | None = None,
    time_feature: bool = False,
    previous_observation: bool = False,
) -> gymnasium.Env:
    """`gymnasium.make(env_id, **env_kwargs)` with optional extra features.

    Args:
        env_id: A registered Gymnasium id.
        env_kwargs: Keyword arguments for `gymnasium.make`.
        time_feature: Append `t / T`, the elapsed fraction of the time
            limit `T`, as the last observation entry.
        previous_observation: Prepend the previous observation (at a reset,
            the first observation again).

    Raises:
        ValueError: A feature was asked for an environment whose
            observations are not vectors, or `time_feature` for one
            without a time limit.
    """
    env = gymnasium.make(env_id, **(env_kwargs or {}))
    if not (time_feature or previous_observation):
        return env
    space = env.observation_space
    if not (isinstance(space, gymnasium.spaces.Box) and len(space.shape) == 1):
        env.close()
        raise ValueError(
            "time_feature and previous_observation need vector (1-D Box) "
            f"observations. Received: observation_space={space}"
        )
    if previous_observation:
        env = wrappers.FlattenObservation(
            wrappers.FrameStackObservation(env, 2)
        )
    if time_feature:
        if env.spec is None or env.spec.max_episode_steps is None:
            env.close()
            raise ValueError(
                f"time_feature needs a time limit; {env_id!r} has none "
                "(pass max_episode_steps in env_kwargs)."
            )
        env = wrappers.TimeAwareObservation(
            env, flatten=True, normalize_time=True
        )
    return env
