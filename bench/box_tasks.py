"""A small custom task with a `Box` action space, written as a user would.

    python -m agents.train --env box_tasks:PointMass-v0   # from bench/

`PointMass-v0`: a point in the plane, pushed by a force toward a goal.
The observation is `(x, y, vx, vy, gx, gy)`, the action the force
`a ∈ [-1, 1]²`; each step `v ← 0.9 v + 0.1 a`, `p ← clip(p + 0.1 v, ±1)`,
and the reward is `-‖p - g‖ - 0.01 ‖a‖²`. The start and the goal are
uniform in the square; an episode lasts 100 steps (truncated, never
terminated). `reference_controller` is the hand-written proportional-
derivative controller whose return the benchmark normalizes by.
"""

import gymnasium
import numpy as np

EPISODE_STEPS = 100


class PointMass(gymnasium.Env):
    """See the module docstring."""

    observation_space = gymnasium.spaces.Box(-np.inf, np.inf, (6,), np.float32)
    action_space = gymnasium.spaces.Box(-1.0, 1.0, (2,), np.float32)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self._position = self.np_random.uniform(-1.0, 1.0, 2)
        self._velocity = np.zeros(2)
        self._goal = self.np_random.uniform(-1.0, 1.0, 2)
        self._steps = 0
        return self._observation(), {}

    def step(self, action):
        force = np.clip(np.asarray(action, dtype=np.float64), -1.0, 1.0)
        self._velocity = 0.9 * self._velocity + 0.1 * force
        self._position = np.clip(self._position + 0.1 * self._velocity, -1, 1)
        self._steps += 1
        distance = float(np.linalg.norm(self._position - self._goal))
        reward = -distance - 0.01 * float(np.sum(np.square(force)))
        truncated = self._steps >= EPISODE_STEPS
        return self._observation(), reward, False, truncated, {}

    def _observation(self):
        return np.concatenate(
            [self._position, self._velocity, self._goal]
        ).astype(np.float32)


def reference_controller(observation: np.ndarray) -> np.ndarray:
    """`a = clip(5 (g - p) - 3 v, ±1)`: a proportional-derivative push
    toward the goal."""
    position, velocity, goal = np.split(np.asarray(observation), 3)
    return np.clip(5.0 * (goal - position) - 3.0 * velocity, -1.0, 1.0)


gymnasium.register("PointMass-v0", entry_point=PointMass)
