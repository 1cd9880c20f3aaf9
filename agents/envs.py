"""Gymnasium environments as batched tf-agents `PyEnvironment`s.

tf-agents' own suites wrap the old `gym` package. `GymnasiumEnvironment`
wraps `N` copies of any registered Gymnasium id in one batched
`PyEnvironment` (`batch_size = N`), in this process or one subprocess per
copy, and keeps the distinction Gymnasium makes between the two ways an
episode ends:

- `terminated` (the MDP reached a terminal state): a `LAST` time step with
  `discount = 0`, so nothing is bootstrapped past it;
- `truncated` (a time limit cut the episode): a `LAST` time step with
  `discount = 1`, so returns still bootstrap from `V(s_T)`, the value of
  the final observation, which that `LAST` time step carries.

The step after a `LAST` one resets that copy and returns its `FIRST` time
step (the action is ignored), which is both Gymnasium's `NEXT_STEP`
autoreset and tf-agents' convention for auto-resetting environments.
"""

import functools
import time

import gymnasium
import numpy as np
from tf_agents.environments import py_environment
from tf_agents.specs import array_spec
from tf_agents.trajectories import time_step as ts

from agents.checks import check_positive_integer
from agents.env_factory import make_env, registered_id


class EnvironmentStepError(RuntimeError):
    """An environment raised while being reset or stepped, or returned
    data that cannot be trained on."""


class NonFiniteDataError(EnvironmentStepError):
    """An environment returned a NaN or infinite observation or reward."""


def _observation_spec(space: gymnasium.Space) -> array_spec.ArraySpec:
    if isinstance(space, gymnasium.spaces.Box):
        if space.dtype == np.uint8:  # images stay bytes; networks rescale
            return array_spec.BoundedArraySpec(
                space.shape, np.uint8, 0, 255, name="observation"
            )
        return array_spec.ArraySpec(space.shape, np.float32, name="observation")
    if isinstance(space, gymnasium.spaces.Discrete):  # one-hot encoded
        return array_spec.BoundedArraySpec(
            (int(space.n),), np.float32, 0.0, 1.0, name="observation"
        )
    raise ValueError(
        "Observation spaces must be Box or Discrete. "
        f"Received: observation_space={space}"
    )


def _action_spec(space: gymnasium.Space) -> array_spec.BoundedArraySpec:
    if isinstance(space, gymnasium.spaces.Discrete):
        return array_spec.BoundedArraySpec(
            (), np.int64, 0, int(space.n) - 1, name="action"
        )
    if isinstance(space, gymnasium.spaces.Box) and len(space.shape) == 1:
        return array_spec.BoundedArraySpec(
            space.shape,
            np.float32,
            space.low.astype(np.float32),
            space.high.astype(np.float32),
            name="action",
        )
    raise ValueError(
        "Action spaces must be Discrete or a one-dimensional Box. "
        f"Received: action_space={space}"
    )


def _game_score(info: dict, reward: np.ndarray):
    """`(score, life_lost)` per copy from a vector step's `info`: the
    unclipped reward where `info["score"]` has one (else the reward) and
    whether the step lost a life without ending the game."""
    score, life_lost = reward, np.zeros(reward.shape, bool)
    if "score" in info:
        score = np.where(info["_score"], info["score"], reward)
    if "life_lost" in info:
        life_lost = info["_life_lost"] & np.asarray(info["life_lost"], bool)
    return score, life_lost


def _check_observations(env_id: str, env: gymnasium.Env) -> None:
    """Raises `ValueError` unless a reset and a step of `env` return
    observations of its observation space's shape."""
    space = env.observation_space
    observation, _ = env.reset(seed=0)
    observations = [("reset", observation)]
    observations.append(("step", env.step(env.action_space.sample())[0]))
    for what, observation in observations:
        shape = np.shape(observation)
        if shape != space.shape:
            raise ValueError(
                f"Environment {env_id!r} returned an observation of shape "
                f"{shape} from {what}; its observation_space is {space}."
            )


def check_env_id(env_id: str) -> None:
    """Raises `ValueError` unless `env_id` is a registered Gymnasium id.

    `"module:Env-v0"` imports `module` first (which registers `Env-v0`), as
    `gymnasium.make` does.
    """
    env_id = registered_id(env_id)
    if env_id not in gymnasium.registry:
        close = [k for k in gymnasium.registry if k.lower() == env_id.lower()]
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(
            f"Unknown Gymnasium environment id. Received: env_id={env_id!r}."
            + hint
        )


class GymnasiumEnvironment(py_environment.PyEnvironment):
    """`num_envs` copies of a Gymnasium environment as one batched env.

    Actions outside a Box action space are clipped to its bounds before the
    environment sees them (the policy's Gaussian samples are unbounded; the
    trajectory keeps the sampled action, so its log-probability is exact).

    Episode returns and lengths are tallied per copy from the environment's
    own rewards; `pop_completed_episodes()` hands over the finished ones.
    An Atari game (`agents.atari`) is tallied whole, from its unclipped
    score (`info["score"]`), across the lives that end the learner's
    episodes (`info["life_lost"]`).

    A NaN or infinite reward or (float) observation raises
    `NonFiniteDataError` naming the copy, the step and the entries, before
    a policy sees the observation or an agent trains on the reward.
    `get_state()` / `set_state()` save and rebuild the copies' episodes
    (`agents.env_factory.EpisodeRecorder`), so a resumed run continues them
    exactly. `call_seconds()` tells how long the current `reset` or `step`
    has been running, for a caller that enforces a time limit.

    Args:
        env_id: A registered Gymnasium id, for example `"CartPole-v1"`.
        num_envs: Number of copies. Defaults to `1`.
        seed: Copy `i` is reset with seed `seed + i` the first time.
            Defaults to `None` (unseeded).
        processes: Run each copy in its own subprocess
            (`gymnasium.vector.AsyncVectorEnv`) instead of in this process.
            Defaults to `False`.
        env_kwargs: Keyword arguments for `gymnasium.make`.
        time_feature: Append `t / T`, the elapsed fraction of the time
            limit (Gymnasium's `TimeAwareObservation`), to the
            observations. Defaults to `False`.
        previous_observation: Append the previous observation (the first
            one again after a reset; `FrameStackObservation` of 2,
            flattened). Defaults to `False`.
    """

    def __init__(
        self,
        env_id: str,
        num_envs: int = 1,
        seed: int | None = None,
        processes: bool = False,
        env_kwargs: dict | None = None,
        time_feature: bool = False,
        previous_observation: bool = False,
    ):
        super().__init__(handle_auto_reset=False)
        check_env_id(env_id)
        check_positive_integer("num_envs", num_envs)
        self.env_id = env_id
        self._num_envs = num_envs
        self._seed = seed
        # A partial of make_env pickles by reference, so subprocesses
        # import gymnasium only, not TensorFlow.
        make = functools.partial(
            make_env,
            env_id,
            env_kwargs,
            time_feature=time_feature,
            previous_observation=previous_observation,
        )
        probe = make()
        try:
            self._observation_space = probe.observation_space
            self._action_space = probe.action_space
            self._observation_spec = _observation_spec(self._observation_space)
            self._action_spec = _action_spec(self._action_space)
            _check_observations(env_id, probe)
        finally:
            probe.close()
        mode = gymnasium.vector.AutoresetMode.NEXT_STEP
        if processes:
            self._vector = gymnasium.vector.AsyncVectorEnv(
                [make] * num_envs, context="spawn", autoreset_mode=mode
            )
        else:
            self._vector = gymnasium.vector.SyncVectorEnv(
                [make] * num_envs, autoreset_mode=mode
            )
        self._steps = 0
        self._episode_return = np.zeros(num_envs, np.float64)
        self._episode_length = np.zeros(num_envs, np.int64)
        self._ended = np.zeros(num_envs, bool)
        self._life_lost = np.zeros(num_envs, bool)
        self._completed: list[tuple[float, int]] = []
        self._call_started = None
        self.error: EnvironmentStepError | None = None

    @property
    def batched(self) -> bool:
        return True

    @property
    def batch_size(self) -> int:
        return self._num_envs

    @property
    def gymnasium_spaces(self) -> tuple[gymnasium.Space, gymnasium.Space]:
        """`(observation_space, action_space)` of one copy."""
        return self._observation_space, self._action_space

    def observation_spec(self) -> array_spec.ArraySpec:
        return self._observation_spec

    def action_spec(self) -> array_spec.BoundedArraySpec:
        return self._action_spec

    def pop_completed_episodes(self) -> list[tuple[float, int]]:
        """`(return, length)` of the episodes finished since the last call."""
        completed, self._completed = self._completed, []
        return completed

    def _observation(self, observation: np.ndarray) -> np.ndarray:
        if isinstance(self._observation_space, gymnasium.spaces.Discrete):
            one_hot = np.zeros(
                (self._num_envs, self._observation_space.n), np.float32
            )
            one_hot[
                np.arange(self._num_envs),
                observation - self._observation_space.start,
            ] = 1.0
            return one_hot
        return np.asarray(observation, self._observation_spec.dtype)

    def call_seconds(self) -> float:
        """Seconds the current `reset` or `step` has been running; 0 when
        none is."""
        started = self._call_started
        return 0.0 if started is None else time.monotonic() - started

    def _call(self, what: str, fn, **kwargs):
        self._call_started = time.monotonic()
        try:
            return fn(**kwargs)
        except Exception as error:
            self._vector.close(terminate=True)
            self.error = EnvironmentStepError(
                f"Environment {self.env_id!r} ({self._num_envs} copies) raised "
                f"in {what} after {self._steps} steps: "
                f"{type(error).__name__}: {error}"
            )
            raise self.error from error
        finally:
            self._call_started = None

    def _check_finite(self, what: str, observation, reward=None) -> None:
        """Raises `NonFiniteDataError` for a NaN or infinite entry."""
        problems = []
        observation = np.asarray(observation)
        if np.issubdtype(observation.dtype, np.floating):
            rows = observation.reshape(self._num_envs, -1)
            for i in np.flatnonzero(~np.isfinite(rows).all(axis=1)):
                index = np.flatnonzero(~np.isfinite(rows[i]))
                problems.append(
                    f"observation of copy {i}: {rows[i, index[0]]} at index "
                    f"{index[0]} ({len(index)} non-finite entries)"
                )
        if reward is not None:
            for i in np.flatnonzero(~np.isfinite(reward)):
                problems.append(f"reward of copy {i}: {reward[i]}")
        if problems:
            self.error = NonFiniteDataError(
                f"Environment {self.env_id!r} returned non-finite data from "
                f"{what} number {self._steps} of its {self._num_envs} copies: "
                + "; ".join(problems)
            )
            raise self.error

    def _reset(self) -> ts.TimeStep:
        seed = self._seed if self._steps == 0 else None
        observation, _ = self._call("reset", self._vector.reset, seed=seed)
        self._check_finite("reset", observation)
        self._episode_return[:] = 0.0
        self._episode_length[:] = 0
        self._ended[:] = False
        self._life_lost[:] = False
        n = self._num_envs
        return ts.TimeStep(
            step_type=np.full(n, ts.StepType.FIRST, np.int32),
            reward=np.zeros(n, np.float32),
            discount=np.ones(n, np.float32),
            observation=self._observation(observation),
        )

    def _env_action(self, action: np.ndarray) -> np.ndarray:
        action = np.asarray(action)
        if isinstance(self._action_space, gymnasium.spaces.Discrete):
            return action.astype(np.int64) + int(self._action_space.start)
        return np.clip(action, self._action_space.low, self._action_space.high)

    def _step(self, action) -> ts.TimeStep:
        self._steps += 1
        observation, reward, terminated, truncated, info = self._call(
            "step", self._vector.step, actions=self._env_action(action)
        )
        reward = np.asarray(reward, np.float64)
        self._check_finite("step", observation, reward)
        restarted = self._ended
        ended = np.logical_or(terminated, truncated)
        score, life_lost = _game_score(info, reward)

        # A copy restarted after a lost life continues its game's tally.
        new_game = restarted & ~self._life_lost
        self._episode_return = np.where(
            new_game, 0.0, self._episode_return + np.where(restarted, 0, score)
        )
        self._episode_length = np.where(
            new_game, 0, self._episode_length + ~restarted
        )
        self._life_lost = life_lost & ended & ~restarted
        for i in np.flatnonzero(ended & ~restarted & ~self._life_lost):
            self._completed.append(
                (float(self._episode_return[i]), int(self._episode_length[i]))
            )
        self._ended = ended & ~restarted

        step_type = np.where(
            restarted,
            ts.StepType.FIRST,
            np.where(ended, ts.StepType.LAST, ts.StepType.MID),
        ).astype(np.int32)
        discount = np.where(
            ~restarted & np.asarray(terminated), 0.0, 1.0
        ).astype(np.float32)
        return ts.TimeStep(
            step_type=step_type,
            reward=np.where(restarted, 0.0, reward).astype(np.float32),
            discount=discount,
            observation=self._observation(observation),
        )

    def get_state(self) -> dict:
        """What `set_state` needs to continue every copy's episode and the
        episode tallies, as JSON-compatible values; call between steps."""
        records = self._vector.call("episode_record")
        time_step = self.current_time_step()
        return {
            "time_step": None
            if time_step is None
            else [np.asarray(x).tolist() for x in time_step],
            "steps": self._steps,
            "records": list(records),
            "episode_return": self._episode_return.tolist(),
            "episode_length": self._episode_length.tolist(),
            "ended": self._ended.tolist(),
            "life_lost": self._life_lost.tolist(),
            "completed": list(self._completed),
        }

    def set_state(self, state: dict) -> None:
        """Rebuilds the episodes of `get_state()` in this environment's
        copies (reset from the recorded seed or generator state, then the
        recorded actions replayed) and the current time step, from which
        the next `step` continues."""
        if len(state["records"]) != self._num_envs:
            raise ValueError(
                f"The saved state holds {len(state['records'])} environment "
                f"copies; this environment has {self._num_envs}."
            )
        records = [
            dict(record, ended=ended)
            for record, ended in zip(state["records"], state["ended"])
        ]
        self._vector.set_attr("record_to_restore", records)
        self._call("restore", self._vector.call, name="restore")
        self._steps = int(state["steps"])
        self._episode_return = np.array(state["episode_return"], np.float64)
        self._episode_length = np.array(state["episode_length"], np.int64)
        self._ended = np.array(state["ended"], bool)
        self._life_lost = np.array(
            state.get("life_lost", [False] * self._num_envs), bool
        )
        self._completed = [tuple(c) for c in state["completed"]]
        if state["time_step"] is not None:
            step_type, reward, discount, observation = state["time_step"]
            self._current_time_step = ts.TimeStep(
                step_type=np.array(step_type, np.int32),
                reward=np.array(reward, np.float32),
                discount=np.array(discount, np.float32),
                observation=np.array(observation, self._observation_spec.dtype),
            )

    def close(self, terminate: bool = False) -> None:
        """Closes the copies; `terminate` kills subprocesses at once (for a
        step that does not return)."""
        if terminate and isinstance(
            self._vector, gymnasium.vector.AsyncVectorEnv
        ):
            self._vector.close(terminate=True)
        elif not terminate:
            self._vector.close()

    def render(self, mode: str = "rgb_array"):
        raise NotImplementedError("Rendering is not supported.")
