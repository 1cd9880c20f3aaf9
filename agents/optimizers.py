"""The agents' optimizers, with the `"default"` preset's settings as their
defaults (`agents.presets.defaults`), and the agents' other defaults.

`python -m agents.train` and `agents.build.build` pass every setting of
the run; a Python caller who leaves one out gets the value the command
line takes on a discrete-action task, so the two agree.
"""

import keras

import keras_kfac
from agents.presets import defaults

_ACKTR = defaults("acktr")
_A2C = defaults("a2c")
_TRPO = defaults("trpo")
_PPO = defaults("ppo")
_REINFORCE = defaults("reinforce")

# The `OnPolicyActorCriticAgent` arguments a preset sets.
AGENT_SETTINGS = (
    "gamma",
    "gae_lambda",
    "ent_coef",
    "vf_coef",
    "normalize_advantages",
    "scale_rewards",
    "target_kl",
    "warm_start",
    "value_epochs",
    "value_minibatch_size",
)


def acktr_optimizer(
    learning_rate=_ACKTR["learning_rate"],
    kl_clip: float = _ACKTR["kl_clip"],
    momentum: float = _ACKTR["momentum"],
    damping: float = _ACKTR["damping"],
    stats_decay: float = _ACKTR["stats_decay"],
    cold_steps: int = _ACKTR["cold_steps"],
    inverse_update_freq: int = _ACKTR["inverse_update_freq"],
    max_grad_norm: float | None = _ACKTR["max_grad_norm"],
    **kwargs,
) -> keras_kfac.KFAC:
    """`keras_kfac.KFAC` for ACKTR's policy step.

    `kl_clip` is the KL radius `δ` (baselines' `kfac_clip` bounds
    `Δᵀ F̂ Δ = 2δ`, so their `0.001` is `δ = 0.0005`). `max_grad_norm`
    clips the global norm of the gradient before preconditioning. The
    defaults are the `"default"` preset's (`agents.presets.PRESETS`);
    baselines' Atari settings are its `"atari"` ones. Other keyword
    arguments go to `keras_kfac.KFAC`.
    """
    return keras_kfac.KFAC(
        learning_rate=learning_rate,
        kl_clip=kl_clip,
        momentum=momentum,
        damping=damping,
        stats_decay=stats_decay,
        cold_steps=cold_steps,
        inverse_update_freq=inverse_update_freq,
        global_clipnorm=max_grad_norm,
        **kwargs,
    )


def kfac_value_optimizer(
    learning_rate=_ACKTR["value_learning_rate"],
    damping: float = 0.01,
    kl_clip: float | None = None,
    momentum: float = 0.0,
    stats_decay: float = 0.95,
    inverse_update_freq: int = 1,
    **kwargs,
) -> keras_kfac.KFAC:
    """`keras_kfac.KFAC` for a critic fitted apart (`value_optimizer`).

    With the value loss's Gauss-Newton `F̂` (`agents.losses`), a step of
    `learning_rate = 1` with no damping is the Gauss-Newton step of
    `mean_w((R - V)²)` under K-FAC's approximation; its "KL" `½ Δᵀ F̂ Δ`
    is `mean_w((ΔV)²)`, the mean squared change of the predictions, so a
    `kl_clip` here is in squared units of the returns. `learning_rate`
    defaults to the `"default"` preset's `value_learning_rate`, what
    `--critic kfac` takes. Other keyword arguments go to `keras_kfac.KFAC`.
    """
    return keras_kfac.KFAC(
        learning_rate=learning_rate,
        damping=damping,
        kl_clip=kl_clip,
        momentum=momentum,
        stats_decay=stats_decay,
        inverse_update_freq=inverse_update_freq,
        **kwargs,
    )


def a2c_optimizer(
    learning_rate=_A2C["learning_rate"],
    rho: float = 0.99,
    epsilon: float = 1e-5,
    max_grad_norm: float | None = _A2C["max_grad_norm"],
    **kwargs,
) -> keras.optimizers.Optimizer:
    """`keras.optimizers.RMSprop` with OpenAI baselines' A2C settings (the
    `"default"` preset's rate and clipping)."""
    return keras.optimizers.RMSprop(
        learning_rate=learning_rate,
        rho=rho,
        epsilon=epsilon,
        global_clipnorm=max_grad_norm,
        **kwargs,
    )


def ppo_optimizer(
    learning_rate=_PPO["learning_rate"],
    epsilon: float = 1e-5,
    max_grad_norm: float | None = _PPO["max_grad_norm"],
    **kwargs,
) -> keras.optimizers.Optimizer:
    """`keras.optimizers.Adam` for PPO's minibatch steps: the `"default"`
    preset's rate and gradient clipping, and the `ε` of the PPO
    implementations (OpenAI baselines, Stable-Baselines3)."""
    return keras.optimizers.Adam(
        learning_rate=learning_rate,
        epsilon=epsilon,
        global_clipnorm=max_grad_norm,
        **kwargs,
    )


def reinforce_optimizer(
    learning_rate=_REINFORCE["learning_rate"],
    max_grad_norm: float | None = _REINFORCE["max_grad_norm"],
    **kwargs,
) -> keras.optimizers.Optimizer:
    """`keras.optimizers.Adam` for REINFORCE's policy step, at the
    `"default"` preset's rate and gradient clipping."""
    return keras.optimizers.Adam(
        learning_rate=learning_rate, global_clipnorm=max_grad_norm, **kwargs
    )


def trpo_value_optimizer(
    learning_rate: float = _TRPO["value_learning_rate"],
) -> keras.optimizers.Optimizer:
    """Adam for TRPO's value function (the rate baselines' TRPO uses, the
    `"default"` preset's)."""
    return keras.optimizers.Adam(learning_rate=learning_rate)


def value_optimizer(
    critic: str, learning_rate: float
) -> keras.optimizers.Optimizer | None:
    """The optimizer of the value function trained as `critic` says
    (`agents.presets.CRITICS`): Adam or `kfac_value_optimizer` at
    `learning_rate`, fitting it apart, or `None` for `"joint"`, the
    policy's own update."""
    if critic == "joint":
        return None
    if critic == "kfac":
        return kfac_value_optimizer(learning_rate=learning_rate)
    return keras.optimizers.Adam(learning_rate)


def agent_arguments(algo: str, arguments: dict) -> dict:
    """`arguments` of an `OnPolicyActorCriticAgent` with the `"default"`
    preset's value of every `AGENT_SETTINGS` entry not in them, and of
    `value_optimizer` (its critic) if that is not in them."""
    preset = defaults(algo)
    completed = {name: preset[name] for name in AGENT_SETTINGS}
    if "value_optimizer" not in arguments:
        completed["value_optimizer"] = value_optimizer(
            preset["critic"], preset["value_learning_rate"]
        )
    return {**completed, **arguments}


def curvature_scalars(optimizer) -> dict[str, float]:
    """What an update's log shows of a K-FAC optimizer beside the losses:
    `step_size` (`η` of its last update), `damping` (`λ`),
    `failed_refreshes` (block refreshes so far whose result was not
    finite) and the running factors' spectra per block
    (`keras_kfac.estimator.KroneckerFactoredCurvature.factor_statistics`);
    empty for another optimizer, or for one not built yet."""
    if not isinstance(optimizer, keras_kfac.KFAC) or not optimizer.built:
        return {}
    return {
        "step_size": float(optimizer.step_size),
        "damping": float(optimizer.current_damping),
        "failed_refreshes": float(optimizer.failed_refreshes),
        **optimizer.estimator.factor_statistics(),
    }
