"""Train SB3 A2C/PPO or sb3-contrib TRPO with rl-baselines3-zoo's settings.

    python bench/run_sb3.py --algo ppo --env CartPole-v1 --seed 0 \\
        --total-steps 100000 --out runs/sb3-ppo-CartPole-v1-seed0

Needs `requirements-bench.lock` on top of `requirements.lock`.

Hyperparameters are rl-baselines3-zoo's (`hyperparams/a2c.yml`,
`hyperparams/ppo.yml` and `hyperparams/trpo.yml`), written out in `ZOO`
below with the entry each set came from (`source` in `summary.json`).
Where the zoo has no entry for an environment's version, the entry of the
closest version is used (`LunarLander-v2` for v3, the MuJoCo v4 or v2
entries for v5); where it has none at all, the zoo's `default` entry, which
is the library's defaults. Interpreted as the zoo does:

- anything not listed is the library's default (`n_envs` defaults to 1);
- `normalize: true` wraps the vector env in `VecNormalize` (observations
  and rewards, with the algorithm's `gamma` as the reward discount);
- `lin_X` is a schedule decaying linearly from `X` to 0 over the run
  (here over `--total-steps`, where the zoo uses its own `n_timesteps`,
  kept as `zoo_n_timesteps` in `summary.json` for reference).
- a `policy_kwargs` string (`"dict(..., activation_fn=nn.ReLU, ...)"`)
  is written out as the dict it evaluates to, the activation and the
  optimizer class by name.

An ALE game (`ALE/Pong-v5`) takes the zoo's `atari` entry: its
`AtariWrapper` (up to 30 no-ops after a reset, each action repeated for 4
frames with the last two max-pooled, 84 x 84 grayscale, a lost life ends
the learner's episode, rewards clipped to their sign) over the game with
its own frame skip set to 1 and its sticky actions kept, 4 frames stacked,
and `CnnPolicy` (the Nature CNN): the preprocessing of `agents.atari`.
The `Monitor` sits under the wrapper, so `episodes.csv` holds whole games
and their unclipped scores, as our runs report them.

`--settings ours` trains SB3 PPO instead with this project's own PPO
settings for the task (`agents.presets`, the preset `--preset auto` picks):
the same copies, steps, minibatches, passes, rates, coefficients and
clipping, `VecNormalize` for what the preset normalizes (observations,
rewards), the policy SB3's `MlpPolicy` (64-64 tanh, as the presets'
networks): a comparison of two implementations on one set of settings.

Training runs on the CPU with one torch thread (intra- and inter-op), so
that two runs can share the machine's two cores without oversubscribing
them. Each environment copy sits in a `Monitor` under the vector env (and
under `VecNormalize`), so `episodes.csv` holds the raw, undiscounted
returns. See `runner_common.py` for the output files; `train_seconds` is
the wall time of `learn()`.
"""

import time

import sb3_contrib
import stable_baselines3
import torch
from runner_common import (
    new_episode_log,
    parse_run_arguments,
    summary_line,
    write_summary,
)
from sb3_contrib import TRPO
from stable_baselines3 import A2C, PPO
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.env_util import make_atari_env, make_vec_env
from stable_baselines3.common.sb2_compat.rmsprop_tf_like import RMSpropTFLike
from stable_baselines3.common.utils import LinearSchedule
from stable_baselines3.common.vec_env import (
    DummyVecEnv,
    VecFrameStack,
    VecNormalize,
)

from agents import atari
from agents.episode_log import EpisodeLog

ALGORITHMS = {"a2c": A2C, "ppo": PPO, "trpo": TRPO}

ACTIVATIONS = {"tanh": torch.nn.Tanh, "relu": torch.nn.ReLU}
OPTIMIZERS = {"RMSpropTFLike": RMSpropTFLike}
# The key of the zoo's entry for every ALE game.
ATARI = "atari"

# MuJoCo-tuned PPO policy of the zoo (its `nn.ReLU` written as "relu").
_PPO_MUJOCO_POLICY = {
    "log_std_init": -2,
    "ortho_init": False,
    "activation_fn": "relu",
    "net_arch": {"pi": [256, 256], "vf": [256, 256]},
}

# TRPO's MuJoCo entries (HalfCheetah-v4, Hopper-v4, Walker2d-v4) are the
# YAML anchor `mujoco-defaults`, itself `pybullet-defaults` with
# n_timesteps 1e6, written out here after the merge.
_TRPO_MUJOCO = {
    "normalize": True,
    "n_envs": 2,
    "batch_size": 128,
    "n_steps": 1024,
    "gamma": 0.99,
    "gae_lambda": 0.95,
    "sub_sampling_factor": 1,
    "cg_max_steps": 25,
    "cg_damping": 0.1,
    "n_critic_updates": 20,
    "learning_rate": 1e-3,
}

# algo -> env -> the zoo entry used ("source"), its n_timesteps, and its
# hyperparameters as the YAML gives them (policy "MlpPolicy" everywhere),
# read from DLR-RM/rl-baselines3-zoo at commits c6c209e7 (a2c.yml),
# 208b6fdf (ppo.yml: CartPole to HalfCheetah) and 22e3ff24 (ppo.yml:
# InvertedDoublePendulum, Hopper, Walker2d; trpo.yml).
# The `atari` entries: a2c.yml at 02846e4d, ppo.yml at 00128b5d.
ZOO = {
    "a2c": {
        ATARI: {
            "source": "a2c.yml: atari",
            "n_timesteps": 10_000_000,
            "hyperparameters": {
                "n_envs": 16,
                "ent_coef": 0.01,
                "vf_coef": 0.25,
                "policy_kwargs": {
                    "optimizer_class": "RMSpropTFLike",
                    "optimizer_kwargs": {"eps": 1e-5},
                },
            },
        },
        "CartPole-v1": {
            "source": "a2c.yml: CartPole-v1",
            "n_timesteps": 500_000,
            "hyperparameters": {"n_envs": 8, "ent_coef": 0.0},
        },
        "LunarLander-v3": {
            "source": "a2c.yml: LunarLander-v2",
            "n_timesteps": 200_000,
            "hyperparameters": {
                "n_envs": 8,
                "gamma": 0.995,
                "n_steps": 5,
                "learning_rate": "lin_0.00083",
                "ent_coef": 0.00001,
            },
        },
        "Pendulum-v1": {
            "source": "a2c.yml: Pendulum-v1 (tuned)",
            "n_timesteps": 1_000_000,
            "hyperparameters": {
                "normalize": True,
                "n_envs": 8,
                "ent_coef": 0.0,
                "max_grad_norm": 0.5,
                "n_steps": 8,
                "gae_lambda": 0.9,
                "vf_coef": 0.4,
                "gamma": 0.9,
                "use_rms_prop": True,
                "normalize_advantage": False,
                "learning_rate": "lin_7e-4",
                "use_sde": True,
                "policy_kwargs": {"log_std_init": -2, "ortho_init": False},
            },
        },
        "InvertedPendulum-v5": {
            "source": "none: a2c.yml has no InvertedPendulum entry; "
            "SB3 defaults",
            "n_timesteps": None,
            "hyperparameters": {},
        },
        "HalfCheetah-v5": {
            "source": "a2c.yml: HalfCheetah-v4",
            "n_timesteps": 1_000_000,
            "hyperparameters": {"normalize": True},
        },
    },
    "ppo": {
        ATARI: {
            "source": "ppo.yml: atari",
            "n_timesteps": 10_000_000,
            "hyperparameters": {
                "n_envs": 8,
                "n_steps": 128,
                "n_epochs": 4,
                "batch_size": 256,
                "learning_rate": "lin_2.5e-4",
                "clip_range": "lin_0.1",
                "vf_coef": 0.5,
                "ent_coef": 0.01,
            },
        },
        "CartPole-v1": {
            "source": "ppo.yml: CartPole-v1 (tuned)",
            "n_timesteps": 100_000,
            "hyperparameters": {
                "n_envs": 8,
                "n_steps": 32,
                "batch_size": 256,
                "gae_lambda": 0.8,
                "gamma": 0.98,
                "n_epochs": 20,
                "ent_coef": 0.0,
                "learning_rate": "lin_0.001",
                "clip_range": "lin_0.2",
            },
        },
        "LunarLander-v3": {
            "source": "ppo.yml: LunarLander-v2",
            "n_timesteps": 1_000_000,
            "hyperparameters": {
                "n_envs": 16,
                "n_steps": 1024,
                "batch_size": 64,
                "gae_lambda": 0.98,
                "gamma": 0.999,
                "n_epochs": 4,
                "ent_coef": 0.01,
            },
        },
        "Pendulum-v1": {
            "source": "ppo.yml: Pendulum-v1 (tuned)",
            "n_timesteps": 100_000,
            "hyperparameters": {
                "n_envs": 4,
                "n_steps": 1024,
                "gae_lambda": 0.95,
                "gamma": 0.9,
                "n_epochs": 10,
                "ent_coef": 0.0,
                "learning_rate": 1e-3,
                "clip_range": 0.2,
                "use_sde": True,
                "sde_sample_freq": 4,
            },
        },
        "InvertedPendulum-v5": {
            "source": "ppo.yml: InvertedPendulum-v2 (tuned)",
            "n_timesteps": 1_000_000,
            "hyperparameters": {
                "normalize": True,
                "n_envs": 1,
                "batch_size": 64,
                "n_steps": 32,
                "gamma": 0.999,
                "learning_rate": 0.000222425,
                "ent_coef": 1.37976e-07,
                "clip_range": 0.4,
                "n_epochs": 5,
                "gae_lambda": 0.9,
                "max_grad_norm": 0.3,
                "vf_coef": 0.19816,
            },
        },
        "HalfCheetah-v5": {
            "source": "ppo.yml: HalfCheetah-v4 (tuned)",
            "n_timesteps": 1_000_000,
            "hyperparameters": {
                "normalize": True,
                "n_envs": 1,
                "batch_size": 64,
                "n_steps": 512,
                "gamma": 0.98,
                "learning_rate": 2.0633e-05,
                "ent_coef": 0.000401762,
                "clip_range": 0.1,
                "n_epochs": 20,
                "gae_lambda": 0.92,
                "max_grad_norm": 0.8,
                "vf_coef": 0.58096,
                "policy_kwargs": _PPO_MUJOCO_POLICY,
            },
        },
        "InvertedDoublePendulum-v5": {
            "source": "ppo.yml: InvertedDoublePendulum-v2 (tuned)",
            "n_timesteps": 1_000_000,
            "hyperparameters": {
                "normalize": True,
                "n_envs": 1,
                "batch_size": 512,
                "n_steps": 128,
                "gamma": 0.98,
                "learning_rate": 0.000155454,
                "ent_coef": 1.05057e-06,
                "clip_range": 0.4,
                "n_epochs": 10,
                "gae_lambda": 0.8,
                "max_grad_norm": 0.5,
                "vf_coef": 0.695929,
            },
        },
        "Hopper-v5": {
            "source": "ppo.yml: Hopper-v4 (tuned)",
            "n_timesteps": 1_000_000,
            "hyperparameters": {
                "normalize": True,
                "n_envs": 1,
                "batch_size": 32,
                "n_steps": 512,
                "gamma": 0.999,
                "learning_rate": 9.80828e-05,
                "ent_coef": 0.00229519,
                "clip_range": 0.2,
                "n_epochs": 5,
                "gae_lambda": 0.99,
                "max_grad_norm": 0.7,
                "vf_coef": 0.835671,
                "policy_kwargs": _PPO_MUJOCO_POLICY,
            },
        },
        "Walker2d-v5": {
            "source": "ppo.yml: Walker2d-v4 (tuned)",
            "n_timesteps": 1_000_000,
            "hyperparameters": {
                "normalize": True,
                "n_envs": 1,
                "batch_size": 32,
                "n_steps": 512,
                "gamma": 0.99,
                "learning_rate": 5.05041e-05,
                "ent_coef": 0.000585045,
                "clip_range": 0.1,
                "n_epochs": 20,
                "gae_lambda": 0.95,
                "max_grad_norm": 1,
                "vf_coef": 0.871923,
            },
        },
    },
    "trpo": {
        # No InvertedPendulum or InvertedDoublePendulum entry in trpo.yml
        # (only the PyBullet ones, another simulator): the zoo then takes
        # its `default` entry, which sets nothing but the policy.
        "InvertedPendulum-v5": {
            "source": "trpo.yml: default (no InvertedPendulum entry)",
            "n_timesteps": 1_000_000,
            "hyperparameters": {},
        },
        "InvertedDoublePendulum-v5": {
            "source": "trpo.yml: default (no InvertedDoublePendulum entry)",
            "n_timesteps": 1_000_000,
            "hyperparameters": {},
        },
        "HalfCheetah-v5": {
            "source": "trpo.yml: HalfCheetah-v4 (tuned)",
            "n_timesteps": 1_000_000,
            "hyperparameters": {**_TRPO_MUJOCO, "target_kl": 0.04},
        },
        "Hopper-v5": {
            "source": "trpo.yml: Hopper-v4 (tuned)",
            "n_timesteps": 1_000_000,
            "hyperparameters": _TRPO_MUJOCO,
        },
        "Walker2d-v5": {
            "source": "trpo.yml: Walker2d-v4 (tuned)",
            "n_timesteps": 1_000_000,
            "hyperparameters": _TRPO_MUJOCO,
        },
    },
}

SCHEDULED = ("learning_rate", "clip_range")


def _schedule(value):
    """`"lin_X"` -> linear decay from `X` to 0; numbers stay as they are."""
    if isinstance(value, str):
        kind, initial = value.split("_", 1)
        if kind != "lin":
            raise ValueError(f"Unknown schedule. Received: {value!r}")
        return LinearSchedule(start=float(initial), end=0.0, end_fraction=1.0)
    return value


def model_arguments(hyperparameters: dict) -> tuple[int, bool, dict]:
    """Splits a zoo entry into `(n_envs, normalize, algorithm kwargs)`."""
    kwargs = dict(hyperparameters)
    n_envs = kwargs.pop("n_envs", 1)
    normalize = kwargs.pop("normalize", False)
    for key in SCHEDULED:
        if key in kwargs:
            kwargs[key] = _schedule(kwargs[key])
    if "policy_kwargs" in kwargs:
        policy = dict(kwargs["policy_kwargs"])
        if "activation_fn" in policy:
            policy["activation_fn"] = ACTIVATIONS[policy["activation_fn"]]
        if "optimizer_class" in policy:
            policy["optimizer_class"] = OPTIMIZERS[policy["optimizer_class"]]
        kwargs["policy_kwargs"] = policy
    return n_envs, normalize, kwargs


class EpisodeCallback(BaseCallback):
    """Logs every episode a `Monitor` reports, as it finishes (each row
    reaches the file at once, so a killed run keeps what it logged)."""

    def __init__(self, log: EpisodeLog, start_time: float):
        super().__init__()
        self._log = log
        self._start_time = start_time

    def _on_step(self) -> bool:
        infos = self.locals["infos"]
        finished = [
            info["episode"] for info in infos if info.get("episode") is not None
        ]
        if finished:
            seconds = time.perf_counter() - self._start_time
            # `num_timesteps` already counts this vector step, all copies.
            self._log.append(
                (self.num_timesteps, episode["r"], episode["l"], seconds)
                for episode in finished
            )
        return True


def our_ppo_entry(env_id: str) -> dict:
    """A `ZOO`-style entry of this project's PPO settings for `env_id`,
    in SB3's names, and what `VecNormalize` normalizes."""
    from agents.presets import preset_for, settings

    preset = preset_for(env_id)
    ours = settings(preset, "ppo")
    if ours["lr_schedule"] != "constant" or ours["critic"] != "joint":
        raise ValueError(
            "--settings ours covers PPO with a constant rate and the joint "
            f"critic. Received: the {preset!r} preset's {ours}"
        )
    return {
        "source": f"agents.presets {preset!r} ppo",
        "n_timesteps": None,
        "hyperparameters": {
            "n_envs": ours["num_envs"],
            "n_steps": ours["n_steps"],
            "batch_size": ours["minibatch_size"],
            "n_epochs": ours["n_epochs"],
            "learning_rate": ours["learning_rate"],
            "gamma": ours["gamma"],
            "gae_lambda": ours["gae_lambda"],
            "clip_range": ours["clip_range"],
            "ent_coef": ours["ent_coef"],
            "vf_coef": ours["vf_coef"],
            "max_grad_norm": ours["max_grad_norm"],
            "normalize_advantage": ours["normalize_advantages"],
        },
        "normalize": {
            "norm_obs": ours["normalize_observations"],
            "norm_reward": ours["scale_rewards"],
        },
    }


def zoo_entry(algo: str, env_id: str) -> dict | None:
    """The zoo's entry for `algo` on `env_id` (its `atari` one for an ALE
    game), or `None` where `ZOO` has none."""
    key = ATARI if atari.is_atari(env_id) else env_id
    return ZOO[algo].get(key)


def run(
    algo: str,
    env_id: str,
    seed: int,
    total_steps: int,
    out: str,
    entry: dict | None = None,
) -> dict:
    """Trains one run and writes its files; returns the summary. `entry`
    defaults to the zoo's, `ZOO[algo][env_id]` (`ZOO[algo]["atari"]` for
    an ALE game)."""
    game = atari.is_atari(env_id)
    entry = zoo_entry(algo, env_id) if entry is None else entry
    n_envs, normalize, kwargs = model_arguments(entry["hyperparameters"])
    if game:
        env = VecFrameStack(
            make_atari_env(
                env_id,
                n_envs=n_envs,
                seed=seed,
                env_kwargs=dict(frameskip=1),
                vec_env_cls=DummyVecEnv,
            ),
            n_stack=atari.FRAME_STACK,
        )
    else:
        env = make_vec_env(
            env_id, n_envs=n_envs, seed=seed, vec_env_cls=DummyVecEnv
        )
    if normalize:  # as the zoo: VecNormalize discounts with the algo's gamma
        env = VecNormalize(env, gamma=kwargs.get("gamma", 0.99))
    wanted = entry.get("normalize")
    if wanted and any(wanted.values()):
        env = VecNormalize(env, gamma=kwargs.get("gamma", 0.99), **wanted)
    model = ALGORITHMS[algo](
        "CnnPolicy" if game else "MlpPolicy",
        env,
        seed=seed,
        device="cpu",
        verbose=0,
        **kwargs,
    )
    log = new_episode_log(out)
    try:
        start, cpu_start = time.perf_counter(), time.process_time()
        model.learn(
            total_timesteps=total_steps,
            callback=EpisodeCallback(log, start),
        )
        seconds = time.perf_counter() - start
        cpu_seconds = time.process_time() - cpu_start
    finally:
        env.close()
    return write_summary(
        out,
        library="sb3",
        algo=algo,
        env=env_id,
        seed=seed,
        env_steps=int(model.num_timesteps),
        seconds=seconds,
        cpu_seconds=cpu_seconds,
        episodes=len(log.rows),
        hyperparameters={
            "n_envs": n_envs,
            # The zoo's flag, or what `--settings ours` normalizes.
            "normalize": entry.get("normalize", normalize),
            **entry["hyperparameters"],
        },
        source=entry["source"]
        if entry.get("normalize") is not None
        else f"rl-baselines3-zoo {entry['source']}",
        zoo_n_timesteps=entry["n_timesteps"],
        versions={
            "stable_baselines3": stable_baselines3.__version__,
            "sb3_contrib": sb3_contrib.__version__,
            "torch": torch.__version__,
        },
    )


def main(argv=None) -> None:
    """Parses the command line, trains, prints a one-line result."""

    def settings_argument(parser):
        parser.add_argument(
            "--settings", choices=("zoo", "ours"), default="zoo"
        )

    parser, args = parse_run_arguments(
        __doc__, str, argv, sorted(ALGORITHMS), settings_argument
    )
    entry = None
    if args.settings == "ours":
        if args.algo != "ppo":
            parser.error(
                "--settings ours is for ppo, the one algorithm both "
                f"libraries have with the same settings. Received: --algo "
                f"{args.algo}"
            )
        entry = our_ppo_entry(args.env)
    elif zoo_entry(args.algo, args.env) is None:
        parser.error(
            f"no zoo settings for {args.algo} on {args.env} (it has "
            f"{', '.join(sorted(ZOO[args.algo]))}; 'atari' is any ALE "
            f"game). Received: --algo "
            f"{args.algo} --env {args.env}"
        )
    torch.set_num_threads(1)
    torch.set_num_interop_threads(1)
    summary = run(
        args.algo, args.env, args.seed, args.total_steps, args.out, entry
    )
    print(summary_line(summary))


if __name__ == "__main__":
    main()
