"""Turn a plain Keras model into one built from `keras_kfac.layers`."""

import keras

from keras_kfac import layers
from keras_kfac.layers.einsum_dense import EinsumRoles
from keras_kfac.layers.weight_sharing import (
    WeightShared,
    check_weight_sharing,
)

_REPLACEMENTS = {
    keras.layers.Dense: layers.Dense,
    keras.layers.Conv1D: layers.Conv1D,
    keras.layers.Conv2D: layers.Conv2D,
    keras.layers.Conv3D: layers.Conv3D,
    keras.layers.Conv1DTranspose: layers.Conv1DTranspose,
    keras.layers.Conv2DTranspose: layers.Conv2DTranspose,
    keras.layers.Conv3DTranspose: layers.Conv3DTranspose,
    keras.layers.DepthwiseConv1D: layers.DepthwiseConv1D,
    keras.layers.DepthwiseConv2D: layers.DepthwiseConv2D,
    keras.layers.SeparableConv1D: layers.SeparableConv1D,
    keras.layers.SeparableConv2D: layers.SeparableConv2D,
    keras.layers.EinsumDense: layers.EinsumDense,
    keras.layers.MultiHeadAttention: layers.MultiHeadAttention,
    keras.layers.Embedding: layers.Embedding,
    keras.layers.LayerNormalization: layers.LayerNormalization,
    keras.layers.BatchNormalization: layers.BatchNormalization,
    keras.layers.RMSNormalization: layers.RMSNormalization,
    keras.layers.LSTM: layers.LSTM,
    keras.layers.GRU: layers.GRU,
    keras.layers.SimpleRNN: layers.SimpleRNN,
}


def convert(model: keras.Model, weight_sharing: str = "expand") -> keras.Model:
    """A copy of `model` whose `Dense`, `EinsumDense`, `MultiHeadAttention`,
    `Conv1D`, `Conv2D`, `Conv3D` (and their `Transpose` variants),
    `DepthwiseConv1D`, `DepthwiseConv2D`, `SeparableConv1D`,
    `SeparableConv2D`, `Embedding`, recurrent (`LSTM`, `GRU`, `SimpleRNN`,
    also inside `Bidirectional`) and normalization (`LayerNormalization`,
    `BatchNormalization`, `RMSNormalization`) layers tap K-FAC factors.

    The copy has the same architecture, configuration and weights; every
    layer of exactly those Keras classes (not subclasses; not one with
    LoRA or a quantized kernel, a BatchNormalization with renorm, a grouped
    convolution (`groups > 1`), a dilated Conv3D, a recurrent layer with
    recurrent dropout, a GRU with `reset_after=False`, nor an EinsumDense
    whose equation `keras_kfac.layers.EinsumDense` does not take) becomes its
    `keras_kfac.layers` counterpart, inside nested
    Sequential and functional models, `Bidirectional` and `TimeDistributed`
    too. Other layers are cloned
    unchanged and train first-order under `keras_kfac.KFAC`
    (`KFAC.summary()` lists which).

    Args:
        model: A built Sequential or functional Keras model.
        weight_sharing: How every layer that applies its weights at many
            positions of an example (`Dense` on sequences, `EinsumDense`,
            attention, the convolutions) enters the factors: `"expand"`
            (every (example, position) a row) or `"reduce"` (each example's
            positions reduced first: the factors cost a position's share,
            `keras_kfac.layers.weight_sharing`). Defaults to `"expand"`.

    Returns:
        A new, uncompiled model.
    """
    if not isinstance(model, keras.Model):
        raise TypeError(
            f"convert expects a keras.Model. Received: {type(model).__name__}"
        )
    check_weight_sharing(weight_sharing)
    if not model.built:
        raise ValueError(
            f"convert needs a built model; {model.name!r} has no weights yet. "
            "Call it on data or give it an Input first."
        )

    def clone(layer):
        if type(layer) is keras.layers.Bidirectional:
            return _bidirectional(layer, clone)
        if type(layer) is keras.layers.TimeDistributed:
            return _time_distributed(layer, clone)
        kind = _REPLACEMENTS.get(type(layer))
        if kind is None or _stays_plain(layer, kind):
            return layer.__class__.from_config(layer.get_config())
        config = layer.get_config()
        if issubclass(kind, (WeightShared, layers.MultiHeadAttention)):
            config["weight_sharing"] = weight_sharing
        return kind.from_config(config)

    try:
        converted = keras.models.clone_model(
            model, clone_function=clone, recursive=True
        )
    except ValueError as error:
        raise ValueError(
            f"convert cannot clone {model.name!r}: subclassed models must be "
            "rebuilt from keras_kfac.layers by hand."
        ) from error
    converted.set_weights(model.get_weights())
    return converted


def _stays_plain(layer, kind) -> bool:
    """Whether `layer`, of a class `kind` replaces, has a setting its
    `keras_kfac` counterpart does not take (see `convert`)."""
    return bool(
        getattr(layer, "recurrent_dropout", 0)
        or getattr(layer, "lora_enabled", False)
        or getattr(layer, "quantization_mode", None)
        or getattr(layer, "renorm", False)
        or getattr(layer, "groups", 1) != 1
        or (kind is layers.GRU and not layer.reset_after)
        or (kind is layers.Conv3D and tuple(layer.dilation_rate) != (1, 1, 1))
        or (
            kind is layers.EinsumDense
            and not EinsumRoles.supports(layer.equation)
        )
    )


def _time_distributed(layer, clone):
    """A copy of the `TimeDistributed` wrapper `layer` around a copy of its
    layer by `clone` (which then records every step's call)."""
    config = layer.get_config()
    config["layer"] = keras.saving.serialize_keras_object(clone(layer.layer))
    return keras.layers.TimeDistributed.from_config(config)


def _bidirectional(layer, clone):
    """A copy of the `Bidirectional` wrapper `layer` with its forward and
    backward layers copied by `clone`."""
    config = layer.get_config()
    config["layer"] = keras.saving.serialize_keras_object(
        clone(layer.forward_layer)
    )
    config["backward_layer"] = keras.saving.serialize_keras_object(
        clone(layer.backward_layer)
    )
    return keras.layers.Bidirectional.from_config(config)
