"""What defines a training run (`Config`), what a finished one reports
(`Summary`), and reading a configuration back from JSON.

`Config` holds every option of `python -m agents.train` under the same
names; the fields left at `FROM_PRESET` take the preset's value for the
algorithm (`agents.presets`), and construction checks every value.
"""

import dataclasses
import json
import math
import os

from agents.checks import check_positive_integer
from agents.presets import (
    ALGORITHMS,
    AUTO,
    CRITICS,
    PRESETS,
    preset_for,
    settings,
)


class _FromPreset:
    """Default of the `Config` fields a preset fills in (`None` is a value:
    no gradient clipping, n-step returns, a fixed step size)."""

    def __repr__(self) -> str:
        return "FROM_PRESET"


FROM_PRESET = _FromPreset()

# With `lr_schedule="linear"` and a target KL, `κ` decays linearly to this
# fraction of itself over the run (not to 0: the last updates still move).
# ACKTR at 1M steps, AUC against a constant κ (BENCHMARKS.md):
# InvertedDoublePendulum 6391 -> 6666 and Hopper 1700 -> 1813 (3 seeds,
# every seed up), Walker2d 2033 -> 2111 (seed 0), HalfCheetah 2141 -> 1958
# (2 seeds, both down).
TARGET_KL_END = 0.1


@dataclasses.dataclass
class Config:
    """Everything that defines a training run; fields left at
    `FROM_PRESET` take the preset's value for the algorithm (`PRESETS`)."""

    algo: str = "acktr"
    env: str = "CartPole-v1"
    preset: str = AUTO
    seed: int = 0
    total_steps: int = 100_000
    num_envs: int = FROM_PRESET
    n_steps: int = FROM_PRESET
    learning_rate: float = FROM_PRESET
    critic: str = FROM_PRESET
    value_learning_rate: float = FROM_PRESET
    value_epochs: int = FROM_PRESET
    value_minibatch_size: int | None = FROM_PRESET
    lr_schedule: str = FROM_PRESET
    target_kl: float | None = FROM_PRESET
    warm_start: bool = FROM_PRESET
    ent_coef: float = FROM_PRESET
    vf_coef: float = FROM_PRESET
    gamma: float = FROM_PRESET
    gae_lambda: float | None = FROM_PRESET
    normalize_advantages: bool = FROM_PRESET
    max_grad_norm: float | None = FROM_PRESET
    kl_clip: float = FROM_PRESET
    damping: float = FROM_PRESET
    inverse_update_freq: int = FROM_PRESET
    cold_steps: int = FROM_PRESET
    momentum: float = FROM_PRESET
    stats_decay: float = FROM_PRESET
    vf_fisher_coef: float = 1.0
    max_kl: float = FROM_PRESET
    max_kl_ratio: float | None = FROM_PRESET
    hidden_units: tuple[int, ...] = FROM_PRESET
    shared_torso: bool = FROM_PRESET
    normalize_observations: bool = FROM_PRESET
    time_feature: bool = FROM_PRESET
    previous_observation: bool = FROM_PRESET
    initial_log_std: float = FROM_PRESET
    processes: bool = False
    env_timeout: float | None = None
    checkpoint_every: int = 50
    logdir: str | None = None

    def __post_init__(self):
        if self.algo not in ALGORITHMS:
            raise ValueError(
                f"algo must be one of {ALGORITHMS}. Received: algo={self.algo!r}"
            )
        if self.preset == AUTO:
            self.preset = preset_for(self.env)
        if self.preset not in PRESETS:
            raise ValueError(
                f"preset must be one of {(AUTO, *PRESETS)}. "
                f"Received: preset={self.preset!r}"
            )
        for key, value in settings(self.preset, self.algo).items():
            if getattr(self, key) is FROM_PRESET:
                setattr(self, key, value)
        for field in dataclasses.fields(self):  # unused by this algorithm
            if getattr(self, field.name) is FROM_PRESET:
                setattr(self, field.name, None)
        self.hidden_units = tuple(int(u) for u in self.hidden_units)
        if self.lr_schedule not in ("constant", "linear"):
            raise ValueError(
                "lr_schedule must be 'constant' or 'linear'. "
                f"Received: lr_schedule={self.lr_schedule!r}"
            )
        for name in (
            "total_steps",
            "num_envs",
            "n_steps",
            "checkpoint_every",
            "value_epochs",
        ):
            check_positive_integer(name, getattr(self, name))
        if self.value_minibatch_size is not None:
            check_positive_integer(
                "value_minibatch_size", self.value_minibatch_size
            )
        for name in (
            "learning_rate",
            "value_learning_rate",
            "max_grad_norm",
            "env_timeout",
        ):
            value = getattr(self, name)
            if value is not None and not 0 < value < math.inf:
                raise ValueError(
                    f"{name} must be > 0 and finite. Received: {name}={value!r}"
                )
        if self.critic not in CRITICS:
            raise ValueError(
                f"critic must be one of {CRITICS}. "
                f"Received: critic={self.critic!r}"
            )
        if self.algo == "trpo" and self.critic == "joint":
            raise ValueError(
                "trpo fits its value function apart; critic must be 'adam' "
                "or 'kfac'. Received: critic='joint'"
            )
        if self.warm_start and self.target_kl is None:
            raise ValueError(
                "warm_start sets the first step size from target_kl, which "
                "is None. Received: warm_start=True"
            )
        if self.logdir is None:
            self.logdir = os.path.join(
                "runs", f"{self.algo}-{self.env}-seed{self.seed}"
            )

    def describe(self) -> str:
        """One line: the algorithm, environment, preset and the value of
        every setting the preset gives the algorithm (or the user set)."""
        values = ", ".join(
            f"{key}={getattr(self, key)}"
            for key in settings(self.preset, self.algo)
        )
        return f"{self.algo} on {self.env}, preset {self.preset}: {values}"

    @property
    def batch_steps(self) -> int:
        """Environment steps per update, `num_envs · n_steps`."""
        return self.num_envs * self.n_steps

    @property
    def total_updates(self) -> int:
        return math.ceil(self.total_steps / self.batch_steps)


@dataclasses.dataclass
class Summary:
    """What a finished run reports."""

    algo: str
    env: str
    seed: int
    env_steps: int
    seconds: float
    steps_per_second: float
    episodes: int
    mean_return_last_100: float
    policy_dir: str
    skipped_updates: int = 0

    def line(self) -> str:
        mean = (
            f"mean return of the last {min(self.episodes, 100)}: "
            f"{self.mean_return_last_100:.1f}"
            if self.episodes
            else "no episode finished"
        )
        skipped = (
            f", {self.skipped_updates} updates skipped (NaN/Inf in the batch)"
            if self.skipped_updates
            else ""
        )
        return (
            f"{self.algo} on {self.env} (seed {self.seed}): {self.env_steps} steps "
            f"in {self.seconds:.0f} s ({self.steps_per_second:.0f} steps/s), "
            f"{self.episodes} episodes, {mean}{skipped}; policy: "
            f"{self.policy_dir}"
        )


def read_config_file(path: str) -> dict:
    """The `Config` fields in the JSON object at `path`; raises `ValueError`
    for a missing or unreadable file, or keys `Config` does not have."""
    try:
        with open(path) as f:
            values = json.load(f)
    except (OSError, ValueError) as error:
        raise ValueError(f"{path} cannot be read: {error}") from None
    if not isinstance(values, dict):
        raise ValueError(
            f"{path} must hold a JSON object. Received: {type(values).__name__}"
        )
    known = {f.name for f in dataclasses.fields(Config)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(
            f"{path} has keys this version does not know: {unknown}"
        )
    return values


def load_saved_config(logdir: str) -> Config:
    """The `Config` in `logdir/config.json`; raises `ValueError` for a
    missing, unreadable or unknown configuration."""
    path = os.path.join(logdir, "config.json")
    if not os.path.exists(path):
        raise ValueError(
            f"--resume needs a previous run in logdir. Received: "
            f"logdir={logdir!r} (no config.json)"
        )
    try:
        return Config(**read_config_file(path))
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from None


def differences(config: Config, saved: Config, names) -> list[str]:
    """`name=value (saved: value)` for each of `names` but `total_steps`
    and `logdir` where `config` and `saved` differ."""
    return [
        f"{name}={getattr(config, name)!r} (saved: {getattr(saved, name)!r})"
        for name in names
        if name not in ("total_steps", "logdir")
        and getattr(config, name) != getattr(saved, name)
    ]
