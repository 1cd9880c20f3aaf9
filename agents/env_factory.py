"""Builds one Gymnasium environment as a policy sees it: the observation
features asked for, an Atari game preprocessed.

Training (`agents.envs`), evaluation (`agents.evaluate`) and the video
replay (`agents.replay`) all build theirs with `make_env`. Kept apart from
`agents.envs` and importing only Gymnasium, so that the subprocesses of
`GymnasiumEnvironment(..., processes=True)`, which receive `make_env` by
reference, and the video replay start without TensorFlow.
"""

import copy
import importlib

import gymnasium
import numpy as np
from gymnasium import wrappers

from agents import atari
from agents.spaces import game_score


def registered_id(env_id: str, name: str = "env_id") -> str:
    """The Gymnasium id in `env_id`, registered if it can be: `"module:Env-v0"`
    imports `module` first (which registers `Env-v0`), as `gymnasium.make`
    does, and an ALE id registers the Atari games. Raises `ValueError`,
    naming the argument `name`, when the module cannot be imported."""
    received = env_id
    if ":" in env_id:
        module, env_id = env_id.split(":", 1)
        if not module or module.startswith("."):
            raise ValueError(
                "The module of an environment id is an absolute module name "
                f"('package.module:Env-v0'). Received: {name}={received!r}"
            )
        try:
            importlib.import_module(module)
        # Importing runs the module: whatever it raises means the same.
        except Exception as error:
            raise ValueError(
                "Cannot import the module of the environment id "
                f"({type(error).__name__}: {error}). "
                f"Received: {name}={received!r}"
            ) from None
    atari.register(env_id)
    return env_id


def check_env_id(env_id: str, name: str = "env_id") -> None:
    """Raises `ValueError`, naming the argument `name`, unless `env_id` is
    a registered Gymnasium id.

    `"module:Env-v0"` imports `module` first (which registers `Env-v0`), as
    `gymnasium.make` does.
    """
    received = env_id
    env_id = registered_id(env_id, name)
    if env_id not in gymnasium.registry:
        close = [k for k in gymnasium.registry if k.lower() == env_id.lower()]
        hint = f". Did you mean {close[0]!r}?" if close else ""
        raise ValueError(
            "Unknown Gymnasium environment id. "
            f"Received: {name}={received!r}{hint}"
        )


def make_env(
    env_id: str,
    env_kwargs: dict | None = None,
    time_feature: bool = False,
    previous_observation: bool = False,
    render_mode: str | None = None,
) -> gymnasium.Env:
    """`gymnasium.make(env_id, **env_kwargs)` with optional extra features,
    inside an `EpisodeRecorder`; an Atari game comes preprocessed as in the
    ACKTR paper (`agents.atari`).

    Args:
        env_id: A registered Gymnasium id.
        env_kwargs: Keyword arguments for `gymnasium.make`.
        time_feature: Append `t / T`, the elapsed fraction of the time
            limit `T`, as the last observation entry.
        previous_observation: Put the previous observation (at a reset,
            the first observation again) before the current one: with both
            features, an observation is `[o_{t-1}, o_t, t / T]`.
        render_mode: Gymnasium's `render_mode`, for example `"rgb_array"`;
            `None` renders nothing. Defaults to `None`.

    Raises:
        ValueError: A feature was asked for an environment whose
            observations are not vectors, or `time_feature` for one
            without a time limit.
    """
    kwargs = dict(env_kwargs or {})
    if render_mode is not None:
        kwargs["render_mode"] = render_mode
    if atari.is_atari(env_id):
        if time_feature or previous_observation:
            raise ValueError(
                "time_feature and previous_observation need vector "
                f"observations; {env_id!r} is an Atari game (stacked frames)."
            )
        return EpisodeRecorder(atari.make(env_id, kwargs), seed_resets=True)
    env = gymnasium.make(env_id, **kwargs)
    if not (time_feature or previous_observation):
        return EpisodeRecorder(env)
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
    return EpisodeRecorder(env)


class EpisodeRecorder(gymnasium.Wrapper):
    """Records what rebuilds the current episode, so that a resumed run
    continues each environment copy exactly where it was.

    Gymnasium has no general way to save an environment's state (MuJoCo
    and Box2D environments do not pickle theirs), but an environment whose
    randomness comes from its `np_random`, as Gymnasium asks, is rebuilt
    by resetting from the same seed or generator state and replaying the
    same actions. This wrapper keeps both for the current episode;
    `restore` replays them in a fresh copy.

    An environment whose randomness lives outside `np_random` (the ALE
    emulator's, which drives sticky actions) needs `seed_resets`: every
    reset is then seeded, from a seed drawn from `np_random`, which the
    record keeps. A reset that continues a game after a step that lost a
    life (`agents.spaces.game_score`) is recorded among the actions (as
    `None`), since the game it continues is one episode here.
    """

    def __init__(self, env: gymnasium.Env, seed_resets: bool = False):
        super().__init__(env)
        self._seed_resets = seed_resets
        self._start = None
        self._actions = []
        self._reset_on_next_step = False
        self._life_lost = False
        self.record_to_restore = None

    def reset(self, *, seed=None, options=None):
        continues_game = seed is None and self._life_lost
        self._life_lost = False
        if continues_game:
            self._actions.append(None)
            self._reset_on_next_step = False
            return self.env.reset(options=options)
        if seed is None and self._seed_resets:
            seed = int(self.env.unwrapped.np_random.integers(2**31 - 1))
        if seed is None:
            state = self.env.unwrapped.np_random.bit_generator.state
            self._start = {"state": copy.deepcopy(state), "options": options}
        else:
            self._start = {"seed": int(seed), "options": options}
        self._actions = []
        self._reset_on_next_step = False
        return self.env.reset(seed=seed, options=options)

    def step(self, action):
        if self._reset_on_next_step:  # the restored episode had ended
            observation, info = self.reset()
            return observation, 0.0, False, False, info
        self._actions.append(np.asarray(action).tolist())
        observation, reward, terminated, truncated, info = self.env.step(action)
        self._life_lost = bool(game_score(reward, info)[1])
        return observation, reward, terminated, truncated, info

    def episode_record(self) -> dict:
        """The start of the current episode and the actions since, as
        JSON-compatible values."""
        return {"start": self._start, "actions": list(self._actions)}

    def restore(self) -> None:
        """Rebuilds the episode in `record_to_restore`, a dict of
        `episode_record()` plus `"ended"`: whether it ended on its last
        step, so that the next step resets it."""
        record, self.record_to_restore = self.record_to_restore, None
        start = record["start"]
        if "seed" in start:
            self.reset(seed=start["seed"], options=start["options"])
        else:
            generator = self.env.unwrapped.np_random
            generator.bit_generator.state = start["state"]
            self.reset(options=start["options"])
        dtype = self.action_space.dtype
        for action in record["actions"]:
            if action is None:  # a reset that continued the game
                self.reset(options=start["options"])
            else:
                self.step(np.asarray(action, dtype=dtype))
        self._reset_on_next_step = bool(record["ended"])
