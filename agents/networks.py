"""Actor-critic networks built from `keras_kfac.layers`.

An actor-critic network is a `tf_agents.networks.Network` whose `call` maps
observations to `((action_distribution, value), network_state)`:
a `tfp.distributions.Distribution` over actions and `V(s)` of shape
`[batch]`. The agents accept any network with that contract; its layers
must be `keras_kfac.layers` for K-FAC to precondition them.

`ActorCriticNetwork` builds the ones of the ACKTR paper:

- torso `"mlp"` (dense, tanh, over the flattened observation), `"nature"`
  (the convolutional network of Mnih et al. 2015 for `84×84×4` frames,
  ReLU; images of at least 36 x 36), `"nature32"` (the same with 32
  filters in its last convolution, as baselines' Atari ACKTR has it: the
  dense layer's K-FAC factor `A` is half as wide, 1569 instead of 3137
  on 84 x 84 frames) or `"small"` (3 x 3 convolutions that
  halve the image until it is at most 4 x 4, then a dense layer: any
  image size), shared by both heads (`shared_torso=True`, one joint
  Fisher over the torso) or one each; `torso_for` picks one for an
  observation;
- a Categorical head (logits) for `Discrete` actions, a diagonal Gaussian
  head (mean, learned state-independent `log σ`) for `Box` actions;
- optional observation normalization, kept in the network so that an
  exported policy normalizes the same way without this package.
"""

import functools
from collections.abc import Sequence

import keras
import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp
from tf_agents.networks import network
from tf_agents.specs import tensor_spec

import keras_kfac
from keras_kfac.layers.weight_sharing import check_weight_sharing

TORSOS = ("mlp", "nature", "nature32", "small")
NATURE_TORSOS = ("nature", "nature32")
# The Nature CNNs' valid convolutions (8 stride 4, 4 stride 2, 3 stride 1)
# leave a position of an image of at least this side.
NATURE_MIN_SIDE = 36
# The small CNN halves the image until neither side exceeds this.
SMALL_CNN_SIDE = 4


def torso_for(observation_shape, network: str = "auto") -> str:
    """The torso of `network` (`"auto"` or one of `TORSOS`) for
    observations of `observation_shape`: under `"auto"`, the Nature CNN
    for an image (`(height, width, channels)`) it fits, the small CNN for
    a smaller image, the MLP for anything else. Raises `ValueError` for an
    unknown network or a convolutional one the observations do not fit."""
    shape = tuple(observation_shape)
    image = len(shape) == 3
    if network == "auto":
        if not image:
            return "mlp"
        return "nature" if min(shape[:2]) >= NATURE_MIN_SIDE else "small"
    if network not in TORSOS:
        raise ValueError(
            f"network must be 'auto' or one of {TORSOS}. "
            f"Received: network={network!r}"
        )
    if network != "mlp" and not image:
        raise ValueError(
            f"The {network} network convolves images of shape (height, "
            f"width, channels). Received: observations of shape {shape}; "
            "use network 'mlp' (or 'auto')."
        )
    if network in NATURE_TORSOS and min(shape[:2]) < NATURE_MIN_SIDE:
        raise ValueError(
            f"The {network} network needs images of at least {NATURE_MIN_SIDE}"
            f" x {NATURE_MIN_SIDE}. Received: observations of shape {shape}; "
            "use network 'small' (or 'auto')."
        )
    return network


class ObservationNormalizer(keras.layers.Layer):
    """`clip((x - μ) / sqrt(σ² + 1e-8), ±clip)` with running `μ`, `σ²`.

    The moments are non-trainable weights, merged batch by batch with
    `update(x)` (Chan et al. 1979), so they are saved with the network.

    Args:
        clip: Bound of the normalized values. Defaults to `10.0`.
    """

    def __init__(self, clip: float = 10.0, **kwargs):
        super().__init__(**kwargs)
        self.clip = float(clip)

    def build(self, input_shape):
        shape = tuple(input_shape[1:])
        self.count = self.add_weight(
            shape=(), initializer="zeros", trainable=False, name="count"
        )
        self.mean = self.add_weight(
            shape=shape, initializer="zeros", trainable=False, name="mean"
        )
        self.variance = self.add_weight(
            shape=shape, initializer="ones", trainable=False, name="variance"
        )

    def update(self, x: tf.Tensor) -> None:
        """Merges the moments of the batch `x` into the running ones."""
        x = tf.cast(x, tf.float32)
        batch_mean, batch_variance = tf.nn.moments(x, axes=[0])
        n = tf.cast(tf.shape(x)[0], tf.float32)
        total = self.count + n
        delta = batch_mean - self.mean
        mean = self.mean + delta * n / total
        m2 = (
            self.variance * self.count
            + batch_variance * n
            + tf.square(delta) * self.count * n / total
        )
        self.mean.assign(mean)
        self.variance.assign(m2 / total)
        self.count.assign(total)

    def call(self, x):
        x = tf.cast(x, tf.float32)
        normalized = (x - self.mean) / tf.sqrt(self.variance + 1e-8)
        return tf.clip_by_value(normalized, -self.clip, self.clip)

    def get_config(self):
        return {**super().get_config(), "clip": self.clip}


def _orthogonal(gain: float) -> keras.initializers.Initializer:
    return keras.initializers.Orthogonal(gain=gain)


def _torso(
    kind: str,
    hidden_units: Sequence[int],
    activation: str,
    name: str,
    image_side: tuple[int, int],
    weight_sharing: str,
):
    """The layers of one torso, in call order; `image_side` is the
    observations' `(height, width)` (for the small CNN), `weight_sharing`
    the convolutions' (`keras_kfac.layers.weight_sharing`)."""
    if kind == "small":
        return _small_cnn(image_side, name, weight_sharing)
    if kind == "mlp":
        layers = [keras.layers.Flatten()]
        for i, units in enumerate(hidden_units):
            layers.append(
                keras_kfac.layers.Dense(
                    units,
                    activation=activation,
                    kernel_initializer=_orthogonal(np.sqrt(2.0)),
                    name=f"{name}_dense_{i}",
                )
            )
        return layers
    # Mnih et al. 2015, as used by the ACKTR paper for Atari; "nature32"
    # narrows the last convolution to 32 filters.
    last_filters = 32 if kind == "nature32" else 64
    conv = dict(
        activation="relu",
        kernel_initializer=_orthogonal(np.sqrt(2.0)),
        weight_sharing=weight_sharing,
    )
    return [
        keras_kfac.layers.Conv2D(
            32, 8, strides=4, name=f"{name}_conv_0", **conv
        ),
        keras_kfac.layers.Conv2D(
            64, 4, strides=2, name=f"{name}_conv_1", **conv
        ),
        keras_kfac.layers.Conv2D(
            last_filters, 3, strides=1, name=f"{name}_conv_2", **conv
        ),
        keras.layers.Flatten(),
        keras_kfac.layers.Dense(512, name=f"{name}_dense", **conv),
    ]


def _small_cnn(
    image_side: tuple[int, int], name: str, weight_sharing: str
) -> list:
    """A 3 x 3 convolution of 32 filters, then 3 x 3 convolutions of 64
    filters with stride 2 ("same" padding) until neither side exceeds
    `SMALL_CNN_SIDE` (one at least), then a dense layer of 256: at most
    `4 · 4 · 64` flattened inputs whatever the image's size, so the dense
    layer's K-FAC factor stays small."""
    conv = dict(
        activation="relu",
        padding="same",
        kernel_initializer=_orthogonal(np.sqrt(2.0)),
        weight_sharing=weight_sharing,
    )
    layers = [keras_kfac.layers.Conv2D(32, 3, name=f"{name}_conv_0", **conv)]
    side = max(image_side)
    while True:
        layers.append(
            keras_kfac.layers.Conv2D(
                64, 3, strides=2, name=f"{name}_conv_{len(layers)}", **conv
            )
        )
        side = -(-side // 2)
        if side <= SMALL_CNN_SIDE:
            break
    return layers + [
        keras.layers.Flatten(),
        keras_kfac.layers.Dense(
            256,
            activation="relu",
            kernel_initializer=_orthogonal(np.sqrt(2.0)),
            name=f"{name}_dense",
        ),
    ]


# The largest |log σ| a Gaussian policy may start from.
MAX_ABS_LOG_STD = 40


def _policy_outputs(
    action_spec: tensor_spec.BoundedTensorSpec, initial_log_std: float
) -> int:
    """Outputs of the policy head: one logit per action of a scalar
    integer spec starting at 0, or one mean per dimension of a float
    vector; raises `ValueError` for other specs, and for an
    `initial_log_std` outside `[-40, 40]` or set for discrete actions."""
    discrete = action_spec.dtype.is_integer
    # σ² = e^{2 log σ} leaves float32's normal range beyond about ±43, and
    # every update of such a policy is non-finite.
    if not abs(initial_log_std) <= MAX_ABS_LOG_STD:
        raise ValueError(
            f"initial_log_std must be within [-{MAX_ABS_LOG_STD}, "
            f"{MAX_ABS_LOG_STD}] (σ² = e^(2 log σ) overflows or underflows "
            "float32 beyond, and every update would be skipped). "
            f"Received: initial_log_std={initial_log_std!r}"
        )
    if discrete and initial_log_std != 0.0:
        raise ValueError(
            "initial_log_std sets the σ of a Gaussian policy; discrete "
            "actions have none. Received: initial_log_std="
            f"{initial_log_std!r} for the action spec {action_spec}"
        )
    if not discrete:
        if action_spec.shape.rank != 1:
            raise ValueError(
                "Continuous actions must be vectors. "
                f"Received: action_spec.shape={action_spec.shape}"
            )
        return int(action_spec.shape[0])
    if action_spec.shape.rank != 0:
        raise ValueError(
            "Discrete actions must be scalars. "
            f"Received: action_spec.shape={action_spec.shape}"
        )
    minimum = int(np.min(action_spec.minimum))
    if minimum != 0:
        raise ValueError(
            "Discrete actions must start at 0. "
            f"Received: action_spec.minimum={minimum}"
        )
    return int(np.max(action_spec.maximum)) + 1


class ActorCriticNetwork(network.Network):
    """Policy and value heads over one shared torso or one torso each.

    Args:
        observation_spec: `TensorSpec` of one observation. Images
            (`uint8`) are scaled to `[0, 1]`.
        action_spec: `BoundedTensorSpec`, a scalar integer (Categorical
            head) or a float vector (diagonal Gaussian head).
        torso: `"mlp"`, `"nature"`, `"nature32"` or `"small"` (see the
            module docstring; `torso_for` picks one). Defaults to `"mlp"`.
        hidden_units: Widths of the `"mlp"` torso. Defaults to `(64, 64)`.
        activation: Activation of the `"mlp"` torso. Defaults to `"tanh"`.
        shared_torso: One torso for both heads. Defaults to `False` for
            `"mlp"` and `True` for the convolutional torsos (as in the
            paper).
        normalize_observations: Normalize observations with running
            moments (`ObservationNormalizer`; the agents update them).
            Defaults to `False`.
        initial_log_std: Initial `log σ` of the Gaussian head, the same
            for every action dimension (SB3's `log_std_init`); only for
            continuous actions. Defaults to `0.0`.
        weight_sharing: How K-FAC's factors of the convolutional torsos
            treat the patch positions: `"expand"` (every patch a row) or
            `"reduce"` (each example's patches averaged first; a fraction
            of the cost, `keras_kfac.layers.weight_sharing`). Defaults to
            `"expand"`.
        name: Defaults to `"ActorCriticNetwork"`.
    """

    def __init__(
        self,
        observation_spec: tf.TensorSpec,
        action_spec: tensor_spec.BoundedTensorSpec,
        torso: str = "mlp",
        hidden_units: Sequence[int] = (64, 64),
        activation: str = "tanh",
        shared_torso: bool | None = None,
        normalize_observations: bool = False,
        initial_log_std: float = 0.0,
        weight_sharing: str = "expand",
        name: str = "ActorCriticNetwork",
    ):
        super().__init__(
            input_tensor_spec=observation_spec, state_spec=(), name=name
        )
        if torso not in TORSOS:
            raise ValueError(
                f"torso must be one of {TORSOS}. Received: torso={torso!r}"
            )
        torso_for(observation_spec.shape, torso)  # raises where it won't fit
        if tf.nest.flatten(action_spec) != [action_spec]:
            raise ValueError(
                "Nested action specs are not supported. "
                f"Received: {action_spec}"
            )
        if any(int(u) < 1 for u in hidden_units):
            raise ValueError(
                "hidden_units must be positive. "
                f"Received: {tuple(hidden_units)}"
            )
        self._discrete = action_spec.dtype.is_integer
        outputs = _policy_outputs(action_spec, initial_log_std)
        shared = torso != "mlp" if shared_torso is None else bool(shared_torso)
        side = tuple(observation_spec.shape[:2])
        self._action_spec = action_spec
        self._rescale = observation_spec.dtype == tf.uint8
        self._normalizer = (
            ObservationNormalizer(name="observation_normalizer")
            if normalize_observations
            else None
        )
        check_weight_sharing(weight_sharing)
        layers_named = functools.partial(
            _torso,
            torso,
            hidden_units,
            activation,
            image_side=side,
            weight_sharing=weight_sharing,
        )
        self._policy_torso = layers_named("policy")
        self._value_torso = None if shared else layers_named("value")
        self._policy_head = keras_kfac.layers.Dense(
            outputs, kernel_initializer=_orthogonal(0.01), name="policy_head"
        )
        self._value_head = keras_kfac.layers.Dense(
            1, kernel_initializer=_orthogonal(1.0), name="value_head"
        )
        if not self._discrete:
            self._log_std = self.add_weight(
                shape=(outputs,),
                initializer=keras.initializers.Constant(initial_log_std),
                name="log_std",
            )

    @property
    def observation_normalizer(self) -> ObservationNormalizer | None:
        return self._normalizer

    @staticmethod
    def _run(layers, x, training):
        for layer in layers:
            x = layer(x, training=training)
        return x

    def call(
        self, observation, step_type=None, network_state=(), training=False
    ):
        # Any outer dimensions ([batch] or [batch, time]) are folded into
        # one for the layers and restored on the outputs.
        inner_shape = self.input_tensor_spec.shape
        outer_shape = tf.shape(observation)[
            : observation.shape.rank - inner_shape.rank
        ]
        x = tf.reshape(tf.cast(observation, tf.float32), [-1, *inner_shape])
        if self._rescale:
            x = x / 255.0
        if self._normalizer is not None:
            x = self._normalizer(x)
        policy_features = self._run(self._policy_torso, x, training)
        value_features = (
            policy_features
            if self._value_torso is None
            else self._run(self._value_torso, x, training)
        )
        params = self._policy_head(policy_features, training=training)
        params = tf.reshape(
            params, tf.concat([outer_shape, tf.shape(params)[-1:]], 0)
        )
        value = tf.reshape(
            self._value_head(value_features, training=training), outer_shape
        )
        if self._discrete:
            distribution = tfp.distributions.Categorical(
                logits=params, dtype=self._action_spec.dtype
            )
        else:
            distribution = tfp.distributions.MultivariateNormalDiag(
                loc=params,
                scale_diag=tf.exp(self._log_std) * tf.ones_like(params),
            )
        return (distribution, value), network_state
