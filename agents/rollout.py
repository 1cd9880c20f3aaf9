"""Collects on-policy batches shaped the way the agents train on them.

`RolloutCollector.collect()` steps a batched `TFPyEnvironment` `T` times with
the collect policy and returns a `Trajectory` of shape `[B, T + 1]`: the `T`
transitions, then one entry holding the current time step, whose observation
bootstraps `V(s_T)` (its action, reward and next step are placeholders the
agents never read). The next batch starts from that time step, so no
transition is lost between batches.
"""

import tensorflow as tf
from tf_agents.environments import tf_environment
from tf_agents.trajectories import policy_step, trajectory
from tf_agents.utils import common

from agents.checks import check_positive_integer


class RolloutCollector:
    """`n_steps` transitions per environment copy per `collect()`.

    Args:
        env: A batched `TFPyEnvironment`.
        policy: The agent's `collect_policy`.
        n_steps: `T`, transitions per copy per batch.
    """

    def __init__(self, env: tf_environment.TFEnvironment, policy, n_steps: int):
        check_positive_integer("n_steps", n_steps)
        self._env = env
        self._action = common.function(policy.action)
        self._n_steps = n_steps
        self._time_step = None

    def reset(self) -> None:
        """Starts over from fresh episodes."""
        self._time_step = self._env.reset()

    def collect(self) -> trajectory.Trajectory:
        if self._time_step is None:
            self.reset()
        time_step = self._time_step
        entries = []
        for _ in range(self._n_steps):
            action_step = self._action(time_step)
            next_time_step = self._env.step(action_step.action)
            entries.append(
                trajectory.from_transition(
                    time_step, action_step, next_time_step
                )
            )
            time_step = next_time_step
        placeholder = policy_step.PolicyStep(
            tf.nest.map_structure(tf.zeros_like, action_step.action),
            action_step.state,
            action_step.info,
        )
        entries.append(
            trajectory.from_transition(time_step, placeholder, time_step)
        )
        self._time_step = time_step
        return tf.nest.map_structure(lambda *x: tf.stack(x, axis=1), *entries)
