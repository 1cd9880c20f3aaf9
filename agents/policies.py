"""The tf-agents policy of an actor-critic network.

`ActorCriticPolicy` samples actions from the network's distribution (the
collect policy); `tf_agents.policies.GreedyPolicy` around it takes the mode
(the evaluation policy). Both save with `PolicySaver` unchanged.
"""

import tensorflow as tf
from tf_agents.networks import network
from tf_agents.policies import tf_policy
from tf_agents.trajectories import policy_step
from tf_agents.trajectories import time_step as ts


class ActorCriticPolicy(tf_policy.TFPolicy):
    """Actions from the distribution of an actor-critic network.

    Args:
        time_step_spec: The environment's `TimeStep` spec.
        action_spec: The environment's action spec.
        actor_critic_network: A network mapping observations to
            `((distribution, value), state)`.
        clip: Clip sampled actions to the action spec's bounds. Collect
            policies keep the raw sample so that training sees the action
            whose log-probability it differentiates (the environment clips).
            Defaults to `False`.
        seed_generator: A `tf.random.Generator` that seeds each sample
            (stateless sampling) when `action` gets no seed, so that the
            actions follow from the generator's state, which checkpoints
            save and restore. `None` samples with TensorFlow's stateful
            ops. Defaults to `None`.
        name: Optional name.
    """

    def __init__(
        self,
        time_step_spec: ts.TimeStep,
        action_spec,
        actor_critic_network: network.Network,
        clip: bool = False,
        seed_generator: tf.random.Generator | None = None,
        name: str | None = None,
    ):
        super().__init__(
            time_step_spec,
            action_spec,
            clip=clip,
            name=name,
        )
        self._network = actor_critic_network
        self._seed_generator = seed_generator

    def _variables(self):
        return self._network.variables

    def _distribution(self, time_step: ts.TimeStep, policy_state):
        (distribution, _), _ = self._network(
            time_step.observation, step_type=time_step.step_type, training=False
        )
        return policy_step.PolicyStep(distribution, policy_state, ())

    def _action(self, time_step, policy_state, seed):
        if self._seed_generator is None or seed is not None:
            return super()._action(time_step, policy_state, seed)
        step = self._distribution(time_step, policy_state)
        action = step.action.sample(
            seed=tf.cast(self._seed_generator.make_seeds(1)[:, 0], tf.int32)
        )
        return policy_step.PolicyStep(action, step.state, step.info)

    def value(self, observation: tf.Tensor) -> tf.Tensor:
        """`V(s)` of a batch of observations."""
        (_, value), _ = self._network(observation, training=False)
        return value
