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
        self._policy = policy
        self._n_steps = n_steps
        self._time_step = None
        # One graph for the whole batch: the T policy calls and environment
        # steps (through TFPyEnvironment's numpy_function) run in a
        # tf.while_loop instead of T eager round trips.
        self._collect = common.function(self._collect_batch, autograph=False)

    def reset(self) -> None:
        """Starts over from fresh episodes."""
        self._time_step = self._env.reset()

    @property
    def time_step(self):
        """The time step the next batch starts from (`None` before the
        first `collect` or `reset`); set it to continue saved episodes."""
        return self._time_step

    @time_step.setter
    def time_step(self, time_step) -> None:
        self._time_step = time_step

    def collect(self) -> trajectory.Trajectory:
        if self._time_step is None:
            self.reset()
        batch, self._time_step = self._collect(self._time_step)
        return batch

    def _transition(self, time_step):
        action_step = self._policy.action(time_step)
        next_time_step = self._env.step(action_step.action)
        return (
            trajectory.from_transition(time_step, action_step, next_time_step),
            action_step,
            next_time_step,
        )

    def _collect_batch(self, time_step):
        """`([B, T + 1] Trajectory, the time step after the batch)`."""
        first, action_step, time_step = self._transition(time_step)
        arrays = tf.nest.map_structure(
            lambda x: tf.TensorArray(x.dtype, size=self._n_steps).write(0, x),
            first,
        )

        def step(i, time_step, arrays):
            entry, _, next_time_step = self._transition(time_step)
            arrays = tf.nest.map_structure(
                lambda array, x: array.write(i, x), arrays, entry
            )
            return i + 1, next_time_step, arrays

        _, time_step, arrays = tf.while_loop(
            lambda i, *_: i < self._n_steps,
            step,
            (tf.constant(1), time_step, arrays),
        )
        placeholder = policy_step.PolicyStep(
            tf.nest.map_structure(tf.zeros_like, action_step.action),
            action_step.state,
            action_step.info,
        )
        last = trajectory.from_transition(time_step, placeholder, time_step)
        batch = tf.nest.map_structure(
            lambda array, x: tf.concat(
                [_batch_major(array.stack()), x[:, None]], axis=1
            ),
            arrays,
            last,
        )
        return batch, time_step


def _batch_major(x: tf.Tensor) -> tf.Tensor:
    """`[T, B, ...]` -> `[B, T, ...]`."""
    return tf.transpose(x, tf.concat([[1, 0], tf.range(2, tf.rank(x))], 0))
