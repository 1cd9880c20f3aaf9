"""Tiny Gymnasium environments with known episodes, registered on import.

Use them as `"toy_envs:Countdown-v0"`: `gymnasium.make` imports this module
first, also in subprocesses.
"""

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


class TwoKnobs(Countdown):
    """An action space the agents do not support."""

    action_space = gymnasium.spaces.MultiDiscrete([2, 3])


class Slider(Countdown):
    """A Box action space in [-1, 1]; reward = the action the env received."""

    action_space = gymnasium.spaces.Box(-1.0, 1.0, (1,), np.float32)

    def step(self, action):
        observation, _, terminated, truncated, info = super().step(action)
        return observation, float(action[0]), terminated, truncated, info


gymnasium.register("Countdown-v0", entry_point=Countdown)
gymnasium.register(
    "Faulty-v0", entry_point=Countdown, kwargs={"length": 10, "fail_at": 4}
)
gymnasium.register("TwoKnobs-v0", entry_point=TwoKnobs)
gymnasium.register("Slider-v0", entry_point=Slider)
