"""ACKTR, with A2C and TRPO beside it, as tf-agents agents on Gymnasium.

    from agents import AcktrAgent, GymnasiumEnvironment
    from agents.networks import ActorCriticNetwork

Names load on first use (PEP 562), so `python -m agents.evaluate` runs
without importing the training code or `keras_kfac`.
"""

import importlib

_EXPORTS = {
    "AcktrAgent": "agents.acktr",
    "acktr_optimizer": "agents.optimizers",
    "kfac_value_optimizer": "agents.optimizers",
    "A2CAgent": "agents.a2c",
    "a2c_optimizer": "agents.optimizers",
    "TrpoAgent": "agents.trpo",
    "trpo_value_optimizer": "agents.optimizers",
    "ActorCriticNetwork": "agents.networks",
    "ActorCriticPolicy": "agents.policies",
    "GymnasiumEnvironment": "agents.envs",
    "settings": "agents.presets",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'agents' has no attribute {name!r}")
