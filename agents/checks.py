"""Argument checks that raise `ValueError` naming what was received."""


def check_positive_integer(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(
            f"{name} must be an integer >= 1. Received: {name}={value!r}"
        )


def check_unit_interval(name: str, value) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(
            f"{name} must be in [0, 1]. Received: {name}={value!r}"
        )


def check_non_negative(name: str, value) -> None:
    if not value >= 0.0:
        raise ValueError(f"{name} must be >= 0. Received: {name}={value!r}")


def check_keras_optimizer(name: str, value) -> None:
    # Keras loads on use: agents.config imports this module for `--help`.
    import keras

    if not isinstance(value, keras.optimizers.Optimizer):
        raise ValueError(
            f"{name} must be a keras.optimizers.Optimizer. Received: {value!r}"
        )
