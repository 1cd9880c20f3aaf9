"""Tiny Gymnasium environments with known episodes, registered on import.

Use them as `"toy_envs:Countdown-v0"`: `gymnasium.make` imports this module
first, also in subprocesses.
"""

import os
import signal
import time

import gymnasium
import numpy as np


class Countdown(gymnasium.Env):
    """Observation: steps left. Reward `t + 1` at step `t`. Terminates when
    no steps are left. The action does nothing."""

    observation_space = gymnasium.spaces.Box(-np.inf, np.inf, (1,), np.float32)
    action_space = gymnasium.spaces.Discrete(2)

    def __init__(self, length: int = 3, fail_at: int | None = None):
        self.length = length
        self.fail_at = fail_at

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return np.array([self.length], np.float32), {}

    def step(self, action):
        if self.fail_at is not None and self.t == self.fail_at:
            raise RuntimeError("the simulator blew up")
        self.t += 1
        left = self.length - self.t
        return np.array([left], np.float32), float(self.t), left == 0, False, {}


class FreeSlider(Countdown):
    """An unbounded Box action space; reward = the action received."""

    action_space = gymnasium.spaces.Box(-np.inf, np.inf, (1,), np.float32)

    def step(self, action):
        observation, _, terminated, truncated, info = super().step(action)
        return observation, float(action[0]), terminated, truncated, info


class TwoKnobs(Countdown):
    """An action space the agents do not support."""

    action_space = gymnasium.spaces.MultiDiscrete([2, 3])


class Slider(Countdown):
    """A Box action space in [-1, 1]; reward = the action the env received."""

    action_space = gymnasium.spaces.Box(-1.0, 1.0, (1,), np.float32)

    def step(self, action):
        observation, _, terminated, truncated, info = super().step(action)
        return observation, float(action[0]), terminated, truncated, info


class NanAt(Countdown):
    """Returns `value` (NaN by default) in `what` ("reward" or
    "observation") at its `at`-th step over all episodes, and raises if it
    ever receives an action outside its space."""

    def __init__(
        self, what: str, at: int, length: int = 10, value=float("nan")
    ):
        super().__init__(length=length)
        self.what, self.at, self.value = what, at, value
        self.steps = 0

    def step(self, action):
        if not self.action_space.contains(action):
            raise RuntimeError(f"received an invalid action {action!r}")
        observation, reward, terminated, truncated, info = super().step(action)
        self.steps += 1
        if self.steps == self.at:
            if self.what == "reward":
                reward = self.value
            else:
                observation = np.array([self.value], np.float32)
        return observation, reward, terminated, truncated, info


class Hang(Countdown):
    """A `step` that never returns once `at` steps were taken."""

    def __init__(self, at: int):
        super().__init__(length=10**9)
        self.at = at
        self.steps = 0

    def step(self, action):
        self.steps += 1
        while self.steps > self.at:
            time.sleep(1.0)
        return super().step(action)


class HangsAtStart(Countdown):
    """An environment whose construction never returns; it first creates
    the file `$HANGS_AT_START_MARKER` to say it is hanging."""

    def __init__(self):
        super().__init__()
        open(os.environ["HANGS_AT_START_MARKER"], "w").close()
        while True:
            time.sleep(1.0)


class KillsItsProcess(Countdown):
    """Kills the process it runs in (with SIGKILL) at its `at`-th step: a
    worker of `--processes` that dies. Never run it in the test process."""

    def __init__(self, at: int):
        super().__init__(length=10)
        self.at, self.steps = at, 0

    def step(self, action):
        self.steps += 1
        if self.steps == self.at:
            os.kill(os.getpid(), signal.SIGKILL)
        return super().step(action)


class RaisesAt(Countdown):
    """Raises `error` (a `BaseException` class) at its `at`-th step, as an
    environment that calls `sys.exit` or raises `KeyboardInterrupt`."""

    def __init__(self, error, at: int):
        super().__init__()
        self.error, self.at = error, at
        self.steps = 0

    def step(self, action):
        self.steps += 1
        if self.steps == self.at:
            raise self.error(3)
        return super().step(action)


class WrongShape(Countdown):
    """Declares 1-vectors and returns 2-vectors."""

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return np.zeros(2, np.float32), {}


class Noisy(Countdown):
    """Random rewards and episode lengths from `np_random`, to test that a
    resumed run continues episodes exactly."""

    def reset(self, *, seed=None, options=None):
        observation, info = super().reset(seed=seed)
        self.length = int(self.np_random.integers(3, 30))
        return observation, info

    def step(self, action):
        observation, _, terminated, truncated, info = super().step(action)
        reward = float(self.np_random.normal()) + float(action)
        return observation, reward, terminated, truncated, info


class BrightOrDark(gymnasium.Env):
    """Observation: a `side x side x 4` uint8 image, all bright (200) or
    all dark (50) with noise. Reward 1 for action 1 on a bright image or
    action 0 on a dark one, else 0; 20 steps an episode. A policy that
    reads the image gets 20, a blind one 10 on average."""

    action_space = gymnasium.spaces.Discrete(2)

    def __init__(self, side: int = 10):
        self.observation_space = gymnasium.spaces.Box(
            0, 255, (side, side, 4), np.uint8
        )

    def _draw(self):
        self.bright = bool(self.np_random.integers(2))
        noise = self.np_random.integers(-40, 41, self.observation_space.shape)
        return (noise + (200 if self.bright else 50)).astype(np.uint8)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return self._draw(), {}

    def step(self, action):
        reward = float(int(action) == int(self.bright))
        self.t += 1
        return self._draw(), reward, self.t == 20, False, {}


gymnasium.register("Countdown-v0", entry_point=Countdown)
gymnasium.register("BrightOrDark-v0", entry_point=BrightOrDark)
gymnasium.register("FreeSlider-v0", entry_point=FreeSlider)
gymnasium.register(
    "NanReward-v0", entry_point=NanAt, kwargs={"what": "reward", "at": 50}
)
gymnasium.register(
    "HugeReward-v0",
    entry_point=NanAt,
    kwargs={"what": "reward", "at": 50, "value": -1e30},
)
gymnasium.register(
    "NanObservation-v0",
    entry_point=NanAt,
    kwargs={"what": "observation", "at": 50},
)
gymnasium.register("Hang-v0", entry_point=Hang, kwargs={"at": 50})
gymnasium.register("HangsAtStart-v0", entry_point=HangsAtStart)
gymnasium.register(
    "KillsItsProcess-v0", entry_point=KillsItsProcess, kwargs={"at": 30}
)
gymnasium.register(
    "ExitsInStep-v0",
    entry_point=RaisesAt,
    kwargs={"error": SystemExit, "at": 5},
)
gymnasium.register(
    "InterruptsInStep-v0",
    entry_point=RaisesAt,
    kwargs={"error": KeyboardInterrupt, "at": 5},
)
gymnasium.register("WrongShape-v0", entry_point=WrongShape)
gymnasium.register("Noisy-v0", entry_point=Noisy)
gymnasium.register(
    "Faulty-v0", entry_point=Countdown, kwargs={"length": 10, "fail_at": 4}
)
gymnasium.register(
    "FaultyAtFirstStep-v0",
    entry_point=Countdown,
    kwargs={"length": 10, "fail_at": 0},
)
gymnasium.register("TwoKnobs-v0", entry_point=TwoKnobs)
gymnasium.register("Slider-v0", entry_point=Slider)
