"""ACKTR and its lineage (REINFORCE, A2C, NPG, TRPO, PPO): tf-agents agents.

    from agents import AcktrAgent, GymnasiumEnvironment
    from agents.networks import ActorCriticNetwork

    from agents import Config, run
    summary = run(Config(algo="acktr", env="HalfCheetah-v5"))

Names load on first use (PEP 562), so `python -m agents.evaluate` runs
without importing the training code or `keras_kfac`. `build` (the
environment and agent of a `Config`) is `agents.build.build`: the name
`agents.build` is its module.
"""

import importlib

_EXPORTS = {
    "AcktrAgent": "agents.acktr",
    "A2CAgent": "agents.a2c",
    "TrpoAgent": "agents.trpo",
    "NpgAgent": "agents.npg",
    "PpoAgent": "agents.ppo",
    "ReinforceAgent": "agents.reinforce",
    "acktr_optimizer": "agents.optimizers",
    "kfac_value_optimizer": "agents.optimizers",
    "a2c_optimizer": "agents.optimizers",
    "trpo_value_optimizer": "agents.optimizers",
    "ppo_optimizer": "agents.optimizers",
    "reinforce_optimizer": "agents.optimizers",
    "ActorCriticNetwork": "agents.networks",
    "ActorCriticPolicy": "agents.policies",
    "GymnasiumEnvironment": "agents.envs",
    "Config": "agents.config",
    "Summary": "agents.config",
    "TARGET_KL_END": "agents.config",
    "load_saved_config": "agents.config",
    "read_config_file": "agents.config",
    "resolve": "agents.config",
    "ALGORITHMS": "agents.presets",
    "AUTO": "agents.presets",
    "COMMON": "agents.presets",
    "CRITICS": "agents.presets",
    "FROM_PRESET": "agents.presets",
    "PRESETS": "agents.presets",
    "defaults": "agents.presets",
    "preset_for": "agents.presets",
    "settings": "agents.presets",
    "RunWriteError": "agents.training",
    "TrainingAborted": "agents.training",
    "TrainingInterrupted": "agents.training",
    "export_policy": "agents.training",
    "run": "agents.training",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'agents' has no attribute {name!r}")
