"""ActorCriticNetwork's heads fit the action spec, and other specs raise
with what was received."""

import numpy as np
import pytest
import tensorflow as tf
from tf_agents.specs import tensor_spec

from agents.networks import ActorCriticNetwork, torso_for

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


@pytest.mark.parametrize(
    "shape, torso",
    [
        ((84, 84, 4), "nature"),
        ((36, 40, 1), "nature"),  # the Nature CNN's smallest image
        ((35, 84, 4), "small"),
        ((10, 10, 4), "small"),
        ((8, 8, 1), "small"),
        ((1, 1, 3), "small"),
        ((4,), "mlp"),
        ((3, 4), "mlp"),
    ],
)
def test_auto_picks_the_torso_the_observations_fit(shape, torso):
    assert torso_for(shape, "auto") == torso


@pytest.mark.parametrize(
    "shape, network, message",
    [
        ((10, 10, 4), "nature", r"at least 36 x 36.*\(10, 10, 4\)"),
        ((35, 84, 4), "nature32", r"nature32 network.*\(35, 84, 4\)"),
        ((4,), "small", r"\(height, width, channels\).*\(4,\)"),
        ((4,), "nature", r"\(height, width, channels\).*\(4,\)"),
        ((84, 84, 4), "resnet", "network='resnet'"),
    ],
)
def test_a_network_the_observations_do_not_fit_is_refused(
    shape, network, message
):
    with pytest.raises(ValueError, match=message):
        torso_for(shape, network)


@pytest.mark.parametrize(
    "side, strided, flattened",
    [
        # Each stride-2 "same" convolution takes a side s to ceil(s / 2),
        # until it is at most 4 (one at least): 64 channels remain.
        (1, 1, 64 * 1 * 1),
        (4, 1, 64 * 2 * 2),
        (8, 1, 64 * 4 * 4),
        (10, 2, 64 * 3 * 3),
        (35, 4, 64 * 3 * 3),
        (84, 5, 64 * 3 * 3),
    ],
)
def test_the_small_cnn_halves_any_image_to_at_most_4_x_4(
    side, strided, flattened
):
    observation_spec = tensor_spec.BoundedTensorSpec(
        (side, side, 4), tf.uint8, 0, 255
    )
    net = ActorCriticNetwork(
        observation_spec, _spec((), tf.int32, 0, 2), torso="small"
    )
    (distribution, value), _ = net(tf.zeros((2, side, side, 4), tf.uint8))
    assert distribution.logits.shape == (2, 3) and value.shape == (2,)
    convolutions = [
        layer for layer in net._policy_torso if "conv" in layer.name
    ]
    assert [c.strides for c in convolutions] == [(1, 1)] + [(2, 2)] * strided
    dense = net._policy_torso[-1]
    assert dense.kernel.shape == (flattened, 256)
    assert net._value_torso is None  # shared, as the Nature CNN's


@pytest.mark.parametrize(
    "side, last_filters, torso",
    [(84, 64, "nature"), (84, 32, "nature32"), (36, 32, "nature32")],
)
def test_the_nature_cnns_flatten_their_last_convolution(
    side, last_filters, torso
):
    observation_spec = tensor_spec.BoundedTensorSpec(
        (side, side, 4), tf.uint8, 0, 255
    )
    net = ActorCriticNetwork(
        observation_spec, _spec((), tf.int32, 0, 2), torso=torso
    )
    (distribution, value), _ = net(tf.zeros((2, side, side, 4), tf.uint8))
    assert distribution.logits.shape == (2, 3) and value.shape == (2,)
    # Valid convolutions 8/4, 4/2, 3/1: s -> (s - 8) // 4 + 1, then
    # (s - 4) // 2 + 1, then s - 2 (84 -> 20 -> 9 -> 7, 36 -> 8 -> 3 -> 1).
    out = (((side - 8) // 4 + 1) - 4) // 2 + 1 - 2
    dense = net._policy_torso[-1]
    assert dense.kernel.shape == (out * out * last_filters, 512)
    assert net._value_torso is None


@pytest.mark.parametrize(
    "torso, side", [("nature", 84), ("nature32", 84), ("small", 10)]
)
def test_the_convolutional_torsos_take_the_weight_sharing(torso, side):
    import keras_kfac
    from agents.presets import DAMPING_MODES, WEIGHT_SHARING
    from keras_kfac.layers import weight_sharing

    # agents.config names the choices without importing TensorFlow.
    assert WEIGHT_SHARING == weight_sharing.WEIGHT_SHARING
    assert DAMPING_MODES == keras_kfac.linalg.DAMPING_MODES
    observation_spec = tensor_spec.BoundedTensorSpec(
        (side, side, 4), tf.uint8, 0, 255
    )
    action_spec = _spec((), tf.int32, 0, 2)
    net = ActorCriticNetwork(
        observation_spec, action_spec, torso=torso, weight_sharing="reduce"
    )
    convolutions = [
        layer
        for layer in net._policy_torso
        if isinstance(layer, keras_kfac.layers.Conv2D)
    ]
    assert len(convolutions) >= 2
    assert {c.weight_sharing for c in convolutions} == {"reduce"}
    with pytest.raises(ValueError, match="weight_sharing='mean'"):
        ActorCriticNetwork(
            observation_spec, action_spec, torso=torso, weight_sharing="mean"
        )
