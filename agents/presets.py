"""The settings a training run starts from (`PRESETS`), and the preset
that fits an environment (`preset_for`).

A preset holds, per algorithm, the value of every `agents.train.Config`
field it fills; what the user sets overrides it. `"default"` holds the
discrete-action settings of the papers and of baselines / rl-baselines-zoo
for classic control, `"mujoco"` the ACKTR paper's continuous-control ones
as measured here (BENCHMARKS.md), `"atari"` the paper's Atari ones.
`preset_for` picks one from the environment, which is what `--preset
auto`, the command line's default, does.
"""

import gymnasium

ALGORITHMS = ("acktr", "a2c", "trpo")
# How the value function is trained: "adam", fitted apart by Adam;
# "kfac", fitted apart by K-FAC Gauss-Newton steps; "joint", in the
# policy's own update (not for trpo).
CRITICS = ("adam", "kfac", "joint")

# Settings every preset starts from; a preset's per-algorithm entries
# override them, and what the user sets overrides both.
COMMON = dict(
    gamma=0.99,
    gae_lambda=None,
    vf_coef=0.5,
    max_grad_norm=0.5,
    hidden_units=(64, 64),
    shared_torso=False,
    normalize_observations=False,
    normalize_advantages=False,
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

# "default": discrete actions (classic control). A2C has the paper's
# settings with the batch of OpenAI baselines / rl-baselines-zoo, TRPO
# 8 envs x 128 steps with GAE 0.98. ACKTR takes TRPO's batch (8 x 128,
# GAE 0.98, standardized advantages) and the `mujoco` preset's K-FAC
# (no momentum, factors averaged with decay 0.9 and inverted every update,
# λ = 0.1) with the radius δ = 0.01 of TRPO and η_max = 1: at 100k steps
# (3 seeds) this took the final return from 457 to 500 on CartPole-v1 and
# from -64 to +31 on LunarLander-v3 over baselines' Atari K-FAC on
# 8 x 20 batches (BENCHMARKS.md). ACKTR fits its critic apart (Adam 1e-3):
# with separate policy and value networks and one joint K-FAC step, the
# critic's share of the KL budget left the policy steps tiny (CartPole-v1,
# 100k steps, 3 seeds: final mean return 258 ± 21 joint vs 443 ± 23 apart).
# "mujoco": the ACKTR paper's continuous-control settings (its §5.2 and
# baselines' `acktr_cont.py`): separate policy and value networks, 2500
# steps per batch (here 4 envs x 625), GAE λ = 0.97, standardized
# advantages, normalized observations, the value function fitted apart
# (Adam 1e-3, 5 epochs of minibatches of 64; the paper uses K-FAC there),
# and a policy step size adapted toward a target KL (A2C: 0.002 as in the
# paper). ACKTR departs from baselines' K-FAC settings where they measured
# badly (BENCHMARKS.md, 2 seeds x 3 tasks at 300k steps): no momentum
# (μ = 0.9 carries earlier directions into every step and fails
# InvertedDoublePendulum outright), factors averaged with decay 0.9 over
# the 2500-step batches instead of 0.99 (a running average over ~100
# updates lags the policy), inverses every update, damping λ = 0.1
# instead of 0.01 (measured: K-FAC's model of the step's KL is 15-20x
# below the exact Fisher's, and a lightly damped inverse steps into the
# directions where the Kronecker factors are near singular, as with
# InvertedDoublePendulum's one action), a target KL of 0.02 decaying
# linearly to 0.002 over the run (the late updates of a constant target
# undo progress on InvertedDoublePendulum and Hopper), KL radius δ = 0.05,
# starting from η = 0.03, with σ = 1 at the start (σ = e⁻¹ measured as a
# trade at 1M steps: HalfCheetah and InvertedDoublePendulum up, Hopper and
# Walker2d down; BENCHMARKS.md). TRPO takes δ = 0.01.
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
    },
    "mujoco": {
        algo: dict(
            num_envs=4,
            n_steps=625,
            gae_lambda=0.97,
            normalize_observations=True,
            normalize_advantages=True,
            ent_coef=0.0,
            **settings,
        )
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
        }.items()
    },
}

# "atari": the paper's Atari settings (its §5.1 and baselines' Atari
# ACKTR and A2C): one convolutional torso (Mnih et al. 2015) shared by
# the policy and value heads, both trained in one step (for ACKTR one
# joint K-FAC step with the critic's Gauss-Newton Fisher), entropy bonus
# 0.01 and learning rates decayed linearly to 0. ACKTR: 32 envs x 20
# steps, η_max = 0.25, δ = 0.001 (baselines' `kfac_clip=0.001` taken as
# the radius of `η = min(η_max, sqrt(2δ / Δᵀ F̂ Δ))`; baselines' code
# clips at the equivalent of δ = 0.0005), λ = 0.01, momentum 0.9, factors averaged with decay 0.99,
# inverses every 10 updates, 10 cold steps, the guard at 2δ; A2C: 16 envs
# x 5 steps, RMSprop 7e-4. TRPO has no shared torso: its value network is
# its own torso, fitted apart.
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
}

AUTO = "auto"


def preset_for(env_id: str) -> str:
    """`"atari"` for an Atari game, `"mujoco"` for an environment with a
    `Box` action space, `"default"` for any other (`Discrete`); raises
    `ValueError` for an unknown id."""
    from agents import atari
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
