"""What the on-policy core checks of its inputs, with errors that name
what was received: the loss weights, the network (called once on probe
observations) and the experience of each update."""

import tensorflow as tf
import tensorflow_probability as tfp
from tf_agents.networks import network as network_lib
from tf_agents.specs import tensor_spec
from tf_agents.trajectories import time_step as ts
from tf_agents.utils import nest_utils

from agents.checks import check_non_negative, check_unit_interval


def check_loss_arguments(
    gamma: float, gae_lambda: float | None, ent_coef: float, vf_coef: float
) -> None:
    """Raises `ValueError` unless `γ` and `λ` are in `[0, 1]` and the
    weights of the entropy bonus and the value loss are `>= 0`."""
    check_unit_interval("gamma", gamma)
    if gae_lambda is not None:
        check_unit_interval("gae_lambda", gae_lambda)
    check_non_negative("ent_coef", ent_coef)
    check_non_negative("vf_coef", vf_coef)


def probe_observations(time_step_spec: ts.TimeStep):
    """Two observations of `time_step_spec` to call a network on: zeros
    rather than samples, as tf-agents cannot sample a uint8 spec bounded by
    `[0, 255]` (its exclusive upper bound overflows)."""
    return tensor_spec.zero_spec_nest(
        time_step_spec.observation, outer_dims=(2,)
    )


def check_network(
    network, time_step_spec: ts.TimeStep, action_spec, agent_name: str
) -> None:
    """Calls `network` once and checks that it maps observations alone to
    `((distribution, value), state)`, values shaped `[batch]` and actions
    of `action_spec`; raises `ValueError` otherwise."""
    if not isinstance(network, network_lib.Network):
        raise ValueError(
            "actor_critic_network must be a tf_agents.networks.Network. "
            f"Received: {network!r}"
        )
    observation = probe_observations(time_step_spec)
    try:
        outputs, _ = network(observation, training=False)
    except TypeError as error:  # e.g. a network that needs step_type
        raise ValueError(
            f"{agent_name} needs one network that maps observations alone "
            "to ((distribution, value), state), such as "
            "agents.networks.ActorCriticNetwork; a tf-agents actor network "
            "(ActorDistributionNetwork) with a separate ValueNetwork, as "
            f"PPO takes, does not fit. Calling {type(network).__name__}"
            f"(observations) raised: {error}"
        ) from None
    ok = isinstance(outputs, (tuple, list)) and len(outputs) == 2
    if ok:
        distribution, value = outputs
        ok = isinstance(distribution, tfp.distributions.Distribution)
        ok = ok and tuple(value.shape) == (2,)
    if not ok:
        raise ValueError(
            "actor_critic_network must return ((distribution, value), "
            "state) with a tfp distribution and values of shape [batch]. "
            f"Received outputs: {outputs!r}"
        )
    actions = distribution.sample()
    if (
        actions.dtype != action_spec.dtype
        or actions.shape[1:] != action_spec.shape
    ):
        raise ValueError(
            "The network's distribution samples "
            f"{actions.dtype.name}{actions.shape[1:]} actions; the action "
            f"spec wants {action_spec.dtype.name}{action_spec.shape}. "
            f"Received: action_spec={action_spec}"
        )


def check_experience(experience, spec) -> None:
    """Raises `ValueError` unless `experience` fits `spec`, the agent's
    `collect_data_spec`, shaped `[batch, time]` with `time >= 2`."""
    try:
        tf.nest.assert_same_structure(experience, spec)
    except (TypeError, ValueError) as error:
        raise ValueError(
            "experience must be a Trajectory matching the agent's "
            f"collect_data_spec. {error}"
        ) from None
    paths = nest_utils.flatten_with_joined_paths(spec)
    for (path, s), tensor in zip(paths, tf.nest.flatten(experience)):
        tensor = tf.convert_to_tensor(tensor)
        if tensor.dtype != s.dtype or tensor.shape[2:] != s.shape:
            raise ValueError(
                f"experience.{path} must be {s.dtype.name} shaped "
                f"[batch, time] + {s.shape.as_list()}. Received: "
                f"{tensor.dtype.name} shaped {tensor.shape.as_list()}"
            )
    time = tf.convert_to_tensor(experience.step_type).shape[1]
    if time is not None and time < 2:
        raise ValueError(
            "experience needs at least 2 time steps (the last one only "
            f"bootstraps). Received: {time}"
        )
