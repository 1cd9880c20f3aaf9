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
import warnings

import gymnasium
import numpy as np
from tf_agents.environments import py_environment
from tf_agents.specs import array_spec
from tf_agents.trajectories import time_step as ts

from agents import spaces
from agents.checks import check_positive_integer
from agents.env_factory import check_env_id, make_env


class EnvironmentStepError(RuntimeError):
    """An environment raised while being reset or stepped, or returned
    data that cannot be trained on."""


class NonFiniteDataError(EnvironmentStepError):
    """An environment returned a NaN or infinite observation or reward, or
    a reward beyond `REWARD_LIMIT`."""


# The largest |reward| trained on. A return sums up to 1 / (1 - γ) rewards
# (10⁴ at γ = 0.9999) and the value loss squares it: beyond about 1.8e19
# that square overflows float32 and the critic turns NaN.
REWARD_LIMIT = 1e15


def _array_spec(spec: spaces.Spec, name: str) -> array_spec.ArraySpec:
    """`spec` as tf-agents' `ArraySpec`, a `BoundedArraySpec` if bounded."""
    if spec.minimum is None:
        return array_spec.ArraySpec(spec.shape, spec.dtype, name=name)
    return array_spec.BoundedArraySpec(
        spec.shape, spec.dtype, spec.minimum, spec.maximum, name=name
    )


def _check_observations(env_id: str, env: gymnasium.Env) -> None:
    """Raises `ValueError` unless a reset and a step of `env` return
    observations of its observation space's shape, `EnvironmentStepError`
    if either raises."""
    space = env.observation_space
    observations = []
    for what, call in (
        ("reset", lambda: env.reset(seed=0)),
        ("step", lambda: env.step(env.action_space.sample())),
    ):
        try:
            observations.append((what, call()[0]))
        except (Exception, SystemExit, KeyboardInterrupt) as error:
            raise EnvironmentStepError(
                f"Environment {env_id!r} raised in its first {what} (a "
                f"probe of its observations): {type(error).__name__}: {error}"
            ) from None
    for what, observation in observations:
        shape = np.shape(observation)
        if shape != space.shape:
            raise ValueError(
                f"Environment {env_id!r} returned an observation of shape "
                f"{shape} from {what}; its observation_space is {space}."
            )


class GymnasiumEnvironment(py_environment.PyEnvironment):
    """`num_envs` copies of a Gymnasium environment as one batched env.

    Observations and actions cross between the policy and the copies as
    `agents.spaces` converts them (`Discrete` observations one-hot, `Box`
    actions clipped to their bounds, ...).

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
            observations, as their last entry. Defaults to `False`.
        previous_observation: Put the previous observation before the
            current one (the first one again after a reset;
            `FrameStackObservation` of 2, flattened): with both features,
            an observation is `[o_{t-1}, o_t, t / T]`. Defaults to `False`.
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
            self._observation_spec = _array_spec(
                spaces.observation_spec(self._observation_space), "observation"
            )
            self._action_spec = _array_spec(
                spaces.action_spec(self._action_space), "action"
            )
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
        self._closed = False

    @property
    def batched(self) -> bool:
        return True

    @property
    def batch_size(self) -> int:
        return self._num_envs

    def observation_spec(self) -> array_spec.ArraySpec:
        return self._observation_spec

    def action_spec(self) -> array_spec.BoundedArraySpec:
        return self._action_spec

    def pop_completed_episodes(self) -> list[tuple[float, int]]:
        """`(return, length)` of the episodes finished since the last call."""
        completed, self._completed = self._completed, []
        return completed

    def call_seconds(self) -> float:
        """Seconds the current `reset` or `step` has been running; 0 when
        none is."""
        started = self._call_started
        return 0.0 if started is None else time.monotonic() - started

    def _call(self, what: str, fn, **kwargs):
        self._call_started = time.monotonic()
        try:
            return fn(**kwargs)
        # `sys.exit` or a `KeyboardInterrupt` raised by the environment's own
        # code is its failure too (the run's signals have their handlers).
        except (Exception, SystemExit, KeyboardInterrupt) as error:
            cause = f"{type(error).__name__}: {error}"
            if isinstance(
                self._vector, gymnasium.vector.AsyncVectorEnv
            ) and isinstance(error, (EOFError, ConnectionError)):
                cause += " (a copy's subprocess ended: killed or crashed)"
            self.error = EnvironmentStepError(
                f"Environment {self.env_id!r} ({self._num_envs} copies) raised "
                f"in {what} after {self._steps} steps: {cause}"
            )
            self._close_broken()
            raise self.error from error
        finally:
            self._call_started = None

    def _check_finite(self, what: str, observation, reward=None) -> None:
        """Raises `NonFiniteDataError` for a NaN or infinite entry, or a
        reward beyond `REWARD_LIMIT`."""
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
            huge = np.isfinite(reward) & (np.abs(reward) > REWARD_LIMIT)
            for i in np.flatnonzero(huge):
                problems.append(
                    f"reward of copy {i}: {reward[i]:.3g}, beyond ±"
                    f"{REWARD_LIMIT:.0e} (its returns would overflow float32 "
                    "in the value loss; scale the rewards down)"
                )
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
            observation=spaces.encode_observations(
                self._observation_space, observation
            ),
        )

    def _step(self, action) -> ts.TimeStep:
        self._steps += 1
        observation, reward, terminated, truncated, info = self._call(
            "step",
            self._vector.step,
            actions=spaces.env_actions(self._action_space, action),
        )
        reward = np.asarray(reward, np.float64)
        self._check_finite("step", observation, reward)
        restarted = self._ended
        ended = np.logical_or(terminated, truncated)
        score, life_lost = spaces.game_score(reward, info)

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
            observation=spaces.encode_observations(
                self._observation_space, observation
            ),
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
        step that does not return); nothing if they were closed after a
        copy failed."""
        if self._closed:
            return
        if terminate and isinstance(
            self._vector, gymnasium.vector.AsyncVectorEnv
        ):
            self._vector.close(terminate=True)
        elif not terminate:
            self._vector.close()

    def _close_broken(self) -> None:
        """Closes the copies after one failed. A subprocess that died (killed,
        or crashed) breaks the pipes the closing reads, and what that raises
        says nothing the error does not: the copies are terminated anyway."""
        self._closed = True
        try:
            with warnings.catch_warnings():  # "while waiting for `step`"
                warnings.simplefilter("ignore")
                self._vector.close(terminate=True)
        except (Exception, SystemExit, KeyboardInterrupt):
            if isinstance(self._vector, gymnasium.vector.AsyncVectorEnv):
                for process in self._vector.processes:
                    if process.is_alive():
                        process.terminate()
            # Else Gymnasium closes it again, as loudly, when it is deleted.
            self._vector.closed = True

    def render(self, mode: str = "rgb_array"):
        raise NotImplementedError("Rendering is not supported.")
