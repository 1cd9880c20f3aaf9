"""Which predictive distribution a compiled Keras loss is the negative
log-likelihood of.

The true Fisher `F = E_x E_{ŷ ~ p(·|x)}[∇ log p(ŷ|x) ∇ log p(ŷ|x)ᵀ]` samples
targets from the model's predictive distribution `p(·|x)`, and the loss the
model is trained on names it: cross-entropy on logits is a categorical
likelihood, binary cross-entropy on logits independent Bernoullis, the mean
squared error a Gaussian of fixed variance around the outputs.
`keras_kfac.TrueFisherModel` reads the distribution from the loss it is
compiled with (`distribution_of`) and refuses a loss it cannot sample
consistently: one on probabilities (`from_logits=False`), whose outputs are
not the natural parameters the samplers take, or one of another family than
the distribution it was given.
"""

import keras

CATEGORICAL = "categorical"
BERNOULLI = "bernoulli"
GAUSSIAN = "gaussian"
DISTRIBUTIONS = (CATEGORICAL, BERNOULLI, GAUSSIAN)

# The Keras losses that are a distribution's negative log-likelihood, as
# functions and as `keras.losses.Loss` classes.
_LIKELIHOODS = {
    CATEGORICAL: (
        keras.losses.sparse_categorical_crossentropy,
        keras.losses.categorical_crossentropy,
        keras.losses.SparseCategoricalCrossentropy,
        keras.losses.CategoricalCrossentropy,
    ),
    BERNOULLI: (
        keras.losses.binary_crossentropy,
        keras.losses.BinaryCrossentropy,
    ),
    GAUSSIAN: (
        keras.losses.mean_squared_error,
        keras.losses.MeanSquaredError,
    ),
}
# The one loss of each distribution to suggest in an error.
_SUGGESTED_LOSS = {
    CATEGORICAL: "keras.losses.SparseCategoricalCrossentropy(from_logits=True)",
    BERNOULLI: "keras.losses.BinaryCrossentropy(from_logits=True)",
    GAUSSIAN: '"mse"',
}


def _single_loss(loss):
    """The one loss of a single-output model's `loss` argument (a list or a
    dict of one loss included), else `None`."""
    if isinstance(loss, (list, tuple)) and len(loss) == 1:
        return _single_loss(loss[0])
    if isinstance(loss, dict) and len(loss) == 1:
        return _single_loss(next(iter(loss.values())))
    if isinstance(loss, (list, tuple, dict)):
        return None
    return loss


def _family(loss) -> tuple[str | None, bool]:
    """`(distribution, on_logits)` of a loss as Keras resolves it
    (`keras.losses.get`): `distribution` `None` for a loss of no known
    family; `on_logits` whether it takes the outputs as logits (a Gaussian's
    mean squared error takes them as means: `True`)."""
    loss = keras.losses.get(loss)
    for distribution, likelihoods in _LIKELIHOODS.items():
        functions = [f for f in likelihoods if not isinstance(f, type)]
        classes = tuple(c for c in likelihoods if isinstance(c, type))
        if isinstance(loss, classes):
            on_logits = loss.get_config().get("from_logits", True)
            return distribution, distribution == GAUSSIAN or on_logits
        if any(loss is f for f in functions):
            # Keras' cross-entropy functions take probabilities by default.
            return distribution, distribution == GAUSSIAN
    return None, False


def _name(loss) -> str:
    if isinstance(loss, str):
        return repr(loss)
    if isinstance(loss, keras.losses.Loss):
        return f"{type(loss).__name__}({loss.get_config()})"
    return getattr(loss, "__name__", repr(loss))


def distribution_of(loss, distribution: str | None = None) -> str:
    """The predictive distribution of a model compiled with `loss`:
    `distribution` if given and consistent with the loss, else the one the
    loss implies.

    Args:
        loss: The `loss` argument of `compile` (a name, a function, a
            `keras.losses.Loss`, or a list or dict of one of them).
        distribution: One of `DISTRIBUTIONS`, or `None` to read it from
            `loss`.

    Returns:
        One of `DISTRIBUTIONS`.

    Raises:
        ValueError: `distribution` is `None` and `loss` is of no known
            family (several losses, none, a custom one); the loss takes
            probabilities (`from_logits=False`) where the distribution's
            sampler needs logits; or the loss is of another family than
            `distribution`. The message says what to change.
    """
    single = _single_loss(loss)
    family, on_logits = (None, False) if single is None else _family(single)
    if family is None:
        if distribution is not None:
            return distribution  # a loss of the user's, trusted
        raise ValueError(
            "TrueFisherModel cannot tell from the compiled loss "
            f"{_name(loss)} which predictive distribution to sample the "
            "Fisher's targets from: pass distribution= 'categorical' "
            "(outputs are class logits), 'bernoulli' (logits of independent "
            "binary outputs) or 'gaussian' (outputs are means), or compile "
            f"with one of {', '.join(_SUGGESTED_LOSS.values())}."
        )
    if distribution is not None and distribution != family:
        raise ValueError(
            f"TrueFisherModel(distribution={distribution!r}) samples targets "
            f"the compiled loss {_name(single)} does not model: that loss is "
            f"the negative log-likelihood of a {family!r} distribution. "
            f"Pass distribution={family!r}, or compile with "
            f"{_SUGGESTED_LOSS[distribution]}."
        )
    if not on_logits:
        raise ValueError(
            f"The compiled loss {_name(single)} takes probabilities "
            "(from_logits=False), and TrueFisherModel samples the Fisher's "
            f"targets from logits: end the model without the "
            f"{'softmax' if family == CATEGORICAL else 'sigmoid'} activation "
            f"and compile with {_SUGGESTED_LOSS[family]}."
        )
    return family
