"""The settings a training run starts from (`PRESETS`), the preset that
fits an environment (`preset_for`), and the defaults of the Python API
(`defaults`).

A preset holds, per algorithm, the value of every `agents.config.Config`
field it fills; what the user sets overrides it. `"default"` holds the
discrete-action settings of the papers and of baselines / rl-baselines-zoo
for classic control, `"mujoco"` the ACKTR paper's continuous-control ones
as measured here (BENCHMARKS.md), `"atari"` the paper's Atari ones.
`preset_for` picks one from the environment, which is what `--preset
auto`, the command line's default, does.

The `"default"` preset is the only layer of defaults: the optimizer
factories (`agents.optimizers`) and the agents (`AcktrAgent`, `A2CAgent`,
`TrpoAgent`, `NpgAgent`, `PpoAgent`, `ReinforceAgent`) take theirs from
`defaults(algo)`, so an agent built from Python with its defaults is the
one `python -m agents.train --algo ALGO` trains on a discrete-action
task.
"""

import gymnasium

from agents import atari

ALGORITHMS = ("acktr", "a2c", "trpo", "npg", "ppo", "reinforce")
# How the value function is trained: "adam", fitted apart by Adam;
# "kfac", fitted apart by K-FAC Gauss-Newton steps; "joint", in the
# policy's own update (not for trpo and npg).
CRITICS = ("adam", "kfac", "joint")
# The actor-critic network's torso (`agents.networks.torso_for`): `auto`
# takes the Nature CNN for images it fits, the small CNN for smaller
# images, the MLP for the rest.
NETWORKS = ("auto", "nature", "nature32", "small", "mlp")
# How K-FAC's factors of a convolutional torso treat the patch positions
# (`keras_kfac.layers.weight_sharing`; named here, where `agents.config`
# reads its choices without loading TensorFlow).
WEIGHT_SHARING = ("expand", "reduce")
# How K-FAC damps its factors (`keras_kfac.linalg.DAMPING_MODES`, named
# here for the same reason).
DAMPING_MODES = ("eigen", "factored")
AUTO = "auto"


class _FromPreset:
    """Default of the settings a preset fills in (`None` is a value: no
    gradient clipping, n-step returns, a fixed step size)."""

    def __repr__(self) -> str:
        return "FROM_PRESET"


FROM_PRESET = _FromPreset()

# Settings every preset starts from; a preset's per-algorithm entries
# override them, and what the user sets overrides both.
COMMON = dict(
    gamma=0.99,
    gae_lambda=None,
    vf_coef=0.5,
    vf_fisher_coef=1.0,
    max_grad_norm=0.5,
    hidden_units=(64, 64),
    shared_torso=False,
    normalize_observations=False,
    normalize_advantages=False,
    scale_rewards=False,
    target_kl=None,
    lr_schedule="constant",
    critic="adam",
    value_learning_rate=1e-3,
    value_epochs=5,
    value_minibatch_size=64,
    max_kl_ratio=None,
    time_feature=False,
    previous_observation=False,
    warm_start=False,
    initial_log_std=0.0,
)

# PPO's settings in every preset unless the preset says otherwise: the
# PPO paper's (Schulman et al. 2017, Table 3), Stable-Baselines3's
# defaults; the value function in the joint loss, as both train it.
_PPO = dict(
    learning_rate=3e-4,
    critic="joint",
    objective="clip",
    clip_range=0.2,
    kl_penalty_target=0.01,
    n_epochs=10,
    minibatch_size=64,
)

# REINFORCE's in every preset unless the preset says otherwise: Adam at
# 3e-3 (against 1e-3, tf-agents' example's rate: better on CartPole-v1
# and on LunarLander-v3, which it was not chosen on; BENCHMARKS.md), the
# baseline fitted apart by Adam; a batch long enough to hold several whole
# episodes, since the episodes it cuts off do not train.
_REINFORCE = dict(
    learning_rate=3e-3,
    baseline=True,
    normalize_advantages=True,
    ent_coef=0.0,
)

# "default": classic control. ACKTR takes TRPO's batch and the `mujoco`
# preset's K-FAC at TRPO's radius, its critic fitted apart, because these
# measured best (BENCHMARKS.md, "CartPole-v1 and LunarLander-v3, 5 seeds,
# the `default` preset"). NPG takes TRPO's settings: the same step without
# its line search.
# PPO's is Stable-Baselines3's defaults (which rl-baselines3-zoo's
# entries start from; the PPO paper's MuJoCo settings but for 8 copies of
# the environment): 2048 steps per update, 10 passes of 64-row minibatches.
# "mujoco": the ACKTR paper's continuous-control settings; ACKTR's K-FAC
# departs from baselines' where those measured badly (BENCHMARKS.md, "The
# paper's MuJoCo comparison at 1M steps", after its tables).
PRESETS = {
    "default": {
        "acktr": dict(
            num_envs=8,
            n_steps=128,
            gae_lambda=0.98,
            normalize_advantages=True,
            learning_rate=1.0,
            ent_coef=0.01,
            kl_clip=0.01,
            damping=0.1,
            inverse_update_freq=1,
            cold_steps=1,
            momentum=0.0,
            stats_decay=0.9,
            max_kl_ratio=2.0,
        ),
        "a2c": dict(
            num_envs=8,
            n_steps=5,
            learning_rate=7e-4,
            ent_coef=0.01,
            critic="joint",
        ),
        "trpo": dict(
            num_envs=8,
            n_steps=128,
            ent_coef=0.0,
            gae_lambda=0.98,
            normalize_advantages=True,
            max_kl=0.01,
            damping=0.1,
        ),
        "reinforce": dict(_REINFORCE, num_envs=8, n_steps=256),
        "ppo": dict(
            _PPO,
            num_envs=8,
            n_steps=256,
            gae_lambda=0.95,
            normalize_advantages=True,
            ent_coef=0.0,
        ),
    },
    "mujoco": {
        algo: {
            **dict(
                num_envs=4,
                n_steps=625,
                gae_lambda=0.97,
                normalize_observations=True,
                normalize_advantages=True,
                ent_coef=0.0,
            ),
            **settings,
        }
        for algo, settings in {
            "acktr": dict(
                learning_rate=0.03,
                target_kl=0.02,
                kl_clip=0.05,
                damping=0.1,
                inverse_update_freq=1,
                cold_steps=1,
                momentum=0.0,
                stats_decay=0.9,
                max_grad_norm=None,
                max_kl_ratio=2.0,
                lr_schedule="linear",
            ),
            "a2c": dict(learning_rate=3e-4, target_kl=0.002),
            "trpo": dict(max_kl=0.01, damping=0.1),
            "npg": dict(max_kl=0.01, damping=0.1),
            # The PPO paper's MuJoCo settings (its Table 3), with the
            # rewards scaled as rl-baselines3-zoo's MuJoCo entries do.
            "ppo": dict(_PPO, n_steps=512, gae_lambda=0.95, scale_rewards=True),
            # Whole episodes of up to 1000 steps: 2000 steps per copy.
            "reinforce": dict(_REINFORCE, n_steps=2000, gae_lambda=None),
        }.items()
    },
}

PRESETS["default"]["npg"] = dict(PRESETS["default"]["trpo"])

# "atari": the paper's Atari settings (its §5.1 and baselines' Atari ACKTR
# and A2C; BENCHMARKS.md, "Atari: ACKTR vs A2C on Pong at 1M steps").
_ATARI = dict(
    shared_torso=True,
    critic="joint",
    ent_coef=0.01,
    lr_schedule="linear",
)
PRESETS["atari"] = {
    "acktr": dict(
        **_ATARI,
        num_envs=32,
        n_steps=20,
        learning_rate=0.25,
        kl_clip=0.001,
        damping=0.01,
        inverse_update_freq=10,
        cold_steps=10,
        momentum=0.9,
        stats_decay=0.99,
        max_kl_ratio=2.0,
    ),
    "a2c": dict(PRESETS["default"]["a2c"], **_ATARI, num_envs=16),
    "trpo": dict(PRESETS["default"]["trpo"], num_envs=8, n_steps=128),
    "npg": dict(PRESETS["default"]["trpo"], num_envs=8, n_steps=128),
    # Episodes of thousands of agent steps: 4096 steps per copy.
    "reinforce": dict(
        _REINFORCE,
        num_envs=8,
        n_steps=4096,
        ent_coef=0.01,
        lr_schedule="linear",
    ),
    # rl-baselines3-zoo's Atari PPO, with the SB3 defaults its entry
    # keeps (GAE with λ = 0.95, advantages standardized per minibatch);
    # its clip range fixed, not decayed.
    "ppo": dict(
        _PPO,
        **_ATARI,
        num_envs=8,
        n_steps=128,
        learning_rate=2.5e-4,
        clip_range=0.1,
        n_epochs=4,
        minibatch_size=256,
        gae_lambda=0.95,
        normalize_advantages=True,
    ),
}


def preset_for(env_id: str) -> str:
    """`"atari"` for an Atari game, `"mujoco"` for an environment with a
    `Box` action space, `"default"` for any other (`Discrete`); raises
    `ValueError` for an unknown id. Makes the environment once, to read
    its action space."""
    # agents.envs loads TensorFlow, which `--help` does without.
    from agents.envs import check_env_id

    check_env_id(env_id)
    if atari.is_atari(env_id):
        return "atari"
    env = gymnasium.make(env_id)
    try:
        continuous = isinstance(env.action_space, gymnasium.spaces.Box)
    finally:
        env.close()
    return "mujoco" if continuous else "default"


def settings(preset: str, algo: str) -> dict:
    """Every setting `preset` gives `algo`: `COMMON` updated by the
    preset's entries for it."""
    return {**COMMON, **PRESETS[preset][algo]}


def defaults(algo: str) -> dict:
    """The Python API's defaults for `algo`: the settings of the
    `"default"` preset."""
    return settings("default", algo)
