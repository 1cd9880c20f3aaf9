"""Turn a plain Keras model into one built from `keras_kfac.layers`."""

import keras

from keras_kfac import layers

_REPLACEMENTS = {
    keras.layers.Dense: layers.Dense,
    keras.layers.Conv1D: layers.Conv1D,
    keras.layers.Conv2D: layers.Conv2D,
    keras.layers.Embedding: layers.Embedding,
    keras.layers.LayerNormalization: layers.LayerNormalization,
    keras.layers.BatchNormalization: layers.BatchNormalization,
    keras.layers.RMSNormalization: layers.RMSNormalization,
}


def convert(model: keras.Model) -> keras.Model:
    """A copy of `model` whose `Dense`, `Conv1D`, `Conv2D`, `Embedding` and
    normalization (`LayerNormalization`, `BatchNormalization`,
    `RMSNormalization`) layers tap K-FAC factors.

    The copy has the same architecture, configuration and weights; every
    `keras.layers.Dense`, `Conv1D`, `Conv2D`, `Embedding`,
    `LayerNormalization`, `BatchNormalization` and `RMSNormalization`
    (exactly those classes,
    not subclasses; not an Embedding with LoRA or a quantized table, nor
    a BatchNormalization with renorm) becomes its `keras_kfac.layers` counterpart, inside nested
    Sequential and functional models too. Other layers are cloned
    unchanged and train first-order under `keras_kfac.KFAC`
    (`KFAC.summary()` lists which).

    Args:
        model: A built Sequential or functional Keras model.

    Returns:
        A new, uncompiled model.
    """
    if not isinstance(model, keras.Model):
        raise TypeError(
            f"convert expects a keras.Model. Received: {type(model).__name__}"
        )
    if not model.built:
        raise ValueError(
            f"convert needs a built model; {model.name!r} has no weights yet. "
            "Call it on data or give it an Input first."
        )

    def clone(layer):
        kind = _REPLACEMENTS.get(type(layer))
        if (
            getattr(layer, "lora_enabled", False)
            or getattr(layer, "quantization_mode", None)
            or getattr(layer, "renorm", False)
        ):
            kind = None
        if kind is None:
            return layer.__class__.from_config(layer.get_config())
        return kind.from_config(layer.get_config())

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
