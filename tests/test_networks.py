"""ActorCriticNetwork's heads fit the action spec, and other specs raise
with what was received."""

import numpy as np
import pytest
import tensorflow as tf
from tf_agents.specs import tensor_spec

from agents.networks import ActorCriticNetwork

OBSERVATION_SPEC = tf.TensorSpec((3,), tf.float32)


def _spec(shape, dtype, minimum, maximum):
    return tensor_spec.BoundedTensorSpec(shape, dtype, minimum, maximum)


@pytest.mark.parametrize(
    "action_spec, outputs",
    [
        (_spec((), tf.int32, 0, 4), 5),  # one logit per action
        (_spec((2,), tf.float32, -1.0, 1.0), 2),  # one mean per dimension
    ],
    ids=["discrete", "continuous"],
)
def test_the_policy_head_has_one_output_per_action_parameter(
    action_spec, outputs
):
    net = ActorCriticNetwork(OBSERVATION_SPEC, action_spec, hidden_units=(4,))
    (distribution, value), _ = net(tf.zeros((7, 3)))
    assert net._policy_head.units == outputs
    assert tuple(value.shape) == (7,)
    assert distribution.sample().shape == (7, *action_spec.shape)


def test_the_gaussian_starts_at_the_initial_log_std():
    action_spec = _spec((2,), tf.float32, -1.0, 1.0)
    net = ActorCriticNetwork(
        OBSERVATION_SPEC, action_spec, hidden_units=(4,), initial_log_std=-1.5
    )
    (distribution, _), _ = net(tf.zeros((1, 3)))
    np.testing.assert_allclose(
        distribution.stddev().numpy(), np.exp(-1.5) * np.ones((1, 2)), rtol=1e-6
    )


@pytest.mark.parametrize(
    "action_spec, initial_log_std, message",
    [
        (_spec((2,), tf.int32, 0, 3), 0.0, r"scalars. .*shape=\(2,\)"),
        (_spec((), tf.int32, 1, 3), 0.0, "start at 0. .*minimum=1"),
        (_spec((), tf.float32, -1.0, 1.0), 0.0, r"vectors. .*shape=\(\)"),
        (_spec((2,), tf.float32, -1.0, 1.0), np.nan, "initial_log_std=nan"),
        (_spec((), tf.int32, 0, 3), -1.0, "initial_log_std=-1.0 for the"),
    ],
    ids=[
        "discrete vector",
        "discrete from 1",
        "continuous scalar",
        "nan log std",
        "discrete log std",
    ],
)
def test_other_action_specs_raise_with_what_was_received(
    action_spec, initial_log_std, message
):
    with pytest.raises(ValueError, match=message):
        ActorCriticNetwork(
            OBSERVATION_SPEC, action_spec, initial_log_std=initial_log_std
        )
