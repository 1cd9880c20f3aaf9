"""What defines a training run (`Config`), choosing and applying its preset
(`resolve`), what a finished run reports (`Summary`), and reading a
configuration back from JSON.

`Config` is the one declaration of the command line `python -m
agents.train`: every field is an option of the same name (`num_envs`:
`--num-envs`), parsed as the field's type says and described by its
metadata (`option`: help, other names, choices, the algorithms that use
it). Adding an option is adding a field here (and using its value).

Constructing a `Config` only checks the values given. The fields left at
`FROM_PRESET` are filled in by `resolve`, an explicit step that
`agents.build.build` and `agents.training.run` take first: it picks the
preset (`preset="auto"` makes the environment once, to read its action
space) and gives every such field the preset's value for the algorithm.
"""

import dataclasses
import json
import math
import numbers
import os
import types
import typing

from agents.checks import check_positive_integer
from agents.presets import (
    ALGORITHMS,
    AUTO,
    CRITICS,
    DAMPING_MODES,
    FROM_PRESET,
    NETWORKS,
    PRESETS,
    WEIGHT_SHARING,
    preset_for,
    settings,
)

# With `lr_schedule="linear"` and a target KL, `κ` decays linearly to this
# fraction of itself over the run, not to 0, so that the last updates
# still move (BENCHMARKS.md, "A target KL that decays").
TARGET_KL_END = 0.1


@dataclasses.dataclass(frozen=True)
class Option:
    """How a `Config` field reads on the command line.

    Attributes:
        help: What the field sets: one text, or `{algo: text}` when it
            means something else per algorithm.
        aliases: Other flags it answers to, e.g. `("--steps",)`.
        choices: The values it takes, or `None` for any of its type.
        algos: The algorithms that use it; the others accept and ignore it.
        positive: It must be > 0 (an integer >= 1 for an `int`, a finite
            number for a `float`).
    """

    help: str | dict[str, str] = ""
    aliases: tuple[str, ...] = ()
    choices: tuple | None = None
    algos: tuple[str, ...] = ALGORITHMS
    positive: bool = False

    def describe(self) -> str:
        """The help text, naming the algorithms that use the option when
        not all do: `"acktr: K-FAC's damping λ; trpo: ..."`."""
        if isinstance(self.help, dict):
            return "; ".join(f"{a}: {text}" for a, text in self.help.items())
        if self.algos != ALGORITHMS:
            return f"{', '.join(self.algos)}: {self.help}"
        return self.help


def option(default, help="", **kwargs) -> dataclasses.Field:
    """A `Config` field with its default and its `Option(help, **kwargs)`;
    a per-algorithm `help` also gives the algorithms that use it."""
    if isinstance(help, dict):
        kwargs["algos"] = tuple(help)
    return dataclasses.field(
        default=default, metadata={"option": Option(help, **kwargs)}
    )


def value_type(field: dataclasses.Field) -> tuple[type, bool]:
    """`(type, optional)` of a `Config` field: `int | None` is
    `(int, True)`."""
    if isinstance(field.type, types.UnionType):
        kinds = [t for t in typing.get_args(field.type) if t is not type(None)]
        return kinds[0], True
    return field.type, False


@dataclasses.dataclass
class Config:
    """Everything that defines a training run; the fields left at
    `FROM_PRESET` take the preset's value for the algorithm (`PRESETS`)
    when `resolve` runs. A field's metadata is its command-line option
    (`Option`)."""

    algo: str = option("acktr", choices=ALGORITHMS)
    env: str = option(
        "CartPole-v1", "a Gymnasium id ('module:Env-v0' imports module)"
    )
    preset: str = option(
        AUTO,
        "the settings of every option not given (listed below); 'auto' "
        "takes 'atari' for an Atari game, 'mujoco' for a Box action space "
        "and 'default' otherwise",
        choices=(AUTO, *PRESETS),
    )
    seed: int = option(0)
    total_steps: int = option(
        100_000,
        "environment steps; with --resume, the run's own unless given",
        aliases=("--steps", "--n-timesteps", "-n"),
        positive=True,
    )
    num_envs: int = option(FROM_PRESET, "environment copies", positive=True)
    n_steps: int = option(
        FROM_PRESET, "steps per env per update", positive=True
    )
    learning_rate: float = option(
        FROM_PRESET,
        {
            "acktr": "η_max of the K-FAC step",
            "a2c": "RMSprop's rate",
            "ppo": "Adam's rate",
            "reinforce": "Adam's rate",
        },
        positive=True,
    )
    critic: str = option(
        FROM_PRESET,
        "how the value function is trained: fitted apart by Adam or by "
        "K-FAC Gauss-Newton steps, or in the policy's update (not trpo, "
        "npg, reinforce)",
        choices=CRITICS,
    )
    value_learning_rate: float = option(
        FROM_PRESET, "the critic's rate (Adam's; K-FAC's η_max)", positive=True
    )
    value_epochs: int = option(
        FROM_PRESET, "passes of the critic's fit per batch", positive=True
    )
    value_minibatch_size: int | None = option(
        FROM_PRESET,
        "rows per step of the critic's fit; 'none': the whole batch",
        positive=True,
    )
    lr_schedule: str = option(
        FROM_PRESET,
        "'linear' decays the step size across the run: the learning rate "
        "to 0 or, with --target-kl, the target KL to a tenth",
        choices=("constant", "linear"),
        algos=("acktr", "a2c", "ppo"),
    )
    target_kl: float | None = option(
        FROM_PRESET,
        "adapt the learning rate toward this KL per update; 'none': a "
        "fixed rate",
        algos=("acktr", "a2c", "ppo"),
    )
    warm_start: bool = option(
        FROM_PRESET,
        "reach --target-kl in the first updates (square-root rule)",
        algos=("acktr", "a2c", "ppo"),
    )
    ent_coef: float = option(FROM_PRESET, "weight of the entropy bonus")
    vf_coef: float = option(
        FROM_PRESET,
        "weight of the value loss in the joint step",
        algos=("acktr", "a2c", "ppo"),
    )
    gamma: float = option(FROM_PRESET, "the discount γ")
    gae_lambda: float | None = option(
        FROM_PRESET,
        "GAE λ; 'none': n-step returns",
        algos=tuple(a for a in ALGORITHMS if a != "reinforce"),
    )
    normalize_advantages: bool = option(
        FROM_PRESET,
        "standardize the advantages over the batch (ppo: over each minibatch)",
    )
    scale_rewards: bool = option(
        FROM_PRESET,
        "train on rewards divided by the running std of the discounted "
        "return, clipped to ±10 (PPO implementations' reward scaling)",
    )
    max_grad_norm: float | None = option(
        FROM_PRESET,
        "clip the gradient's global norm to this; 'none': no clipping",
        algos=("acktr", "a2c", "ppo", "reinforce"),
        positive=True,
    )
    kl_clip: float = option(
        FROM_PRESET, {"acktr": "the KL radius δ (baselines' kfac_clip = 2δ)"}
    )
    damping: float = option(
        FROM_PRESET,
        {
            "acktr": "K-FAC's damping λ",
            "trpo": "λ added to the Fisher in CG",
            "npg": "λ added to the Fisher in CG",
        },
    )
    inverse_update_freq: int = option(
        FROM_PRESET, {"acktr": "updates between K-FAC's inverses"}
    )
    cold_steps: int = option(
        FROM_PRESET,
        {"acktr": "first-order updates before K-FAC's first inverse"},
    )
    momentum: float = option(
        FROM_PRESET, {"acktr": "K-FAC's μ (v ← μv + (1-μ)ηΔ)"}
    )
    stats_decay: float = option(
        FROM_PRESET,
        {
            "acktr": "K-FAC's running-average decay of the factors A, G "
            "(0: the current batch's only)"
        },
    )
    vf_fisher_coef: float = option(
        FROM_PRESET,
        {"acktr": "weight of the critic's Fisher loss in the joint step"},
    )
    max_kl: float = option(
        FROM_PRESET,
        {
            "trpo": "the trust-region radius δ",
            "npg": "the quadratic KL δ of every step",
        },
    )
    baseline: bool = option(
        FROM_PRESET,
        "subtract the learned V(s) from the Monte-Carlo return",
        algos=("reinforce",),
    )
    objective: str = option(
        FROM_PRESET,
        "PPO's surrogate: clipped, or with the adaptive KL penalty",
        choices=("clip", "kl_penalty"),
        algos=("ppo",),
    )
    clip_range: float = option(
        FROM_PRESET,
        "ε of the clipped surrogate",
        algos=("ppo",),
        positive=True,
    )
    kl_penalty_target: float = option(
        FROM_PRESET,
        "d_targ of the KL penalty (β halves below d_targ/1.5, doubles "
        "above 1.5·d_targ)",
        algos=("ppo",),
        positive=True,
    )
    n_epochs: int = option(
        FROM_PRESET, "passes over each batch", algos=("ppo",), positive=True
    )
    minibatch_size: int = option(
        FROM_PRESET, "rows per optimizer step", algos=("ppo",), positive=True
    )
    max_kl_ratio: float | None = option(
        FROM_PRESET,
        {
            "acktr": "backtrack a step whose measured KL exceeds this times "
            "--kl-clip; 'none': no guard"
        },
    )
    fisher_rows: int | None = option(
        None,
        "rows of each batch, drawn at random, whose Fisher pass gives "
        "K-FAC's factors (a fraction of the cost on a convolutional "
        "torso); 'none': every row",
        algos=("acktr",),
        positive=True,
    )
    damping_mode: str = option(
        "eigen",
        "how K-FAC damps its factors: 'eigen' (λ added to the Kronecker "
        "product, from eigendecompositions) or 'factored' (λ split between "
        "A and G, from Cholesky inverses: far cheaper for wide layers)",
        choices=DAMPING_MODES,
        algos=("acktr",),
    )
    network: str = option(
        "auto",
        "the torso: the Nature CNN (images of at least 36 x 36), "
        "'nature32' (the same with 32 filters in its last convolution, "
        "as baselines' Atari ACKTR: a cheaper K-FAC update), a small "
        "CNN (any image size), an MLP over the flattened observation, or "
        "'auto' (the Nature CNN for images it fits, the small CNN for "
        "smaller ones, the MLP otherwise)",
        choices=NETWORKS,
    )
    weight_sharing: str = option(
        "expand",
        "how K-FAC's factors of a convolutional torso treat the patch "
        "positions: 'expand' (every patch a row) or 'reduce' (each "
        "example's patches averaged first: a fraction of the cost)",
        choices=WEIGHT_SHARING,
        algos=("acktr",),
    )
    hidden_units: tuple[int, ...] = option(
        FROM_PRESET, "comma-separated widths of the MLP torso, e.g. 64,64"
    )
    shared_torso: bool = option(
        FROM_PRESET,
        "one torso for the policy and value heads",
        algos=("acktr", "a2c", "ppo"),
    )
    normalize_observations: bool = option(
        FROM_PRESET, "normalize observations by running moments"
    )
    time_feature: bool = option(
        FROM_PRESET,
        "append t/T (elapsed fraction of the time limit) to observations",
    )
    previous_observation: bool = option(
        FROM_PRESET,
        "prepend the previous observation to observations (at a reset, the "
        "first observation again)",
    )
    initial_log_std: float = option(
        FROM_PRESET,
        "log σ of the Gaussian policy before training (Box actions; SB3's "
        "log_std_init)",
    )
    processes: bool = option(False, "one subprocess per env copy")
    env_timeout: float | None = option(
        None,
        "seconds an environment step may take before the run stops "
        "(keeping its last checkpoint); 'none': no limit",
        positive=True,
    )
    checkpoint_every: int = option(
        50, "updates between checkpoints", positive=True
    )
    logdir: str | None = option(
        None, "the run directory; default: runs/<algo>-<env>-seed<seed>"
    )

    def __post_init__(self):
        """Checks every value given; the fields left to the preset are
        checked when `resolve` fills them in."""
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if isinstance(value, numbers.Number) and hasattr(value, "item"):
                value = value.item()  # a NumPy scalar, as JSON writes it
                setattr(self, field.name, value)
            _check(field, value)
        if self.algo in ("trpo", "npg", "reinforce") and self.critic == "joint":
            raise ValueError(
                f"{self.algo} fits its value function apart; critic must be "
                "'adam' or 'kfac'. Received: critic='joint'"
            )
        if (
            self.warm_start is not FROM_PRESET
            and self.warm_start
            and self.target_kl is None
        ):
            raise ValueError(
                "warm_start sets the first step size from target_kl, which "
                "is None. Received: warm_start=True"
            )

    @property
    def resolved(self) -> bool:
        """Whether `resolve` has filled in the preset."""
        return self.preset != AUTO and not any(
            getattr(self, field.name) is FROM_PRESET
            for field in dataclasses.fields(self)
        )

    def _check_resolved(self) -> None:
        if not self.resolved:
            raise ValueError(
                "This Config still has settings to take from its preset; "
                f"resolve(config) fills them in. Received: preset="
                f"{self.preset!r}"
            )

    def describe(self) -> str:
        """One line: the algorithm, environment, preset and the value of
        every setting the preset gives the algorithm (or the user set)."""
        self._check_resolved()
        values = ", ".join(
            f"{key}={getattr(self, key)}"
            for key in settings(self.preset, self.algo)
        )
        return f"{self.algo} on {self.env}, preset {self.preset}: {values}"

    @property
    def batch_steps(self) -> int:
        """Environment steps per update, `num_envs · n_steps`."""
        self._check_resolved()
        return self.num_envs * self.n_steps

    @property
    def total_updates(self) -> int:
        return math.ceil(self.total_steps / self.batch_steps)


_TYPE_NAMES = {
    bool: "true or false",
    int: "an integer",
    float: "a number",
    str: "a string",
}


def _is_a(value, kind) -> bool:
    """Whether `value` is of a `Config` field's type `kind` (an `int` for
    a `float` too, a list for a tuple, as JSON gives; never a `bool` for a
    number)."""
    if kind is bool or kind is str:
        return isinstance(value, kind)
    if kind is int or kind is float:
        number = int if kind is int else (int, float)
        return isinstance(value, number) and not isinstance(value, bool)
    return isinstance(value, (list, tuple)) and all(
        _is_a(unit, int) for unit in value
    )


def _check(field: dataclasses.Field, value) -> None:
    """Raises `ValueError` unless `value` suits `field`'s `Option`. `None`
    suits a field a preset fills (a setting the algorithm does not use)
    and an optional one (a setting turned off)."""
    if value is FROM_PRESET:
        return
    kind, optional = value_type(field)
    if value is None and (optional or field.default is FROM_PRESET):
        return
    name, spec = field.name, field.metadata["option"]
    if not _is_a(value, kind):
        raise ValueError(
            f"{name} must be {_TYPE_NAMES.get(kind, 'a tuple of integers')}. "
            f"Received: {name}={value!r}"
        )
    if spec.choices is not None and value not in spec.choices:
        raise ValueError(
            f"{name} must be one of {spec.choices}. Received: {name}={value!r}"
        )
    if spec.positive and kind is int:
        check_positive_integer(name, value)
    elif spec.positive and not 0 < value < math.inf:
        raise ValueError(
            f"{name} must be > 0 and finite. Received: {name}={value!r}"
        )


def resolve(config: Config) -> Config:
    """`config` with its preset applied; raises `ValueError` for an
    unknown environment or a value that does not suit the preset's.

    `preset="auto"` becomes `preset_for(env)` (which makes the environment
    once); every field left at `FROM_PRESET` takes the preset's value for
    the algorithm, or `None` when the preset gives it none (a setting the
    algorithm does not use); `hidden_units` becomes a tuple (JSON has
    lists) and `logdir` defaults to `runs/<algo>-<env>-seed<seed>`. On a
    resolved `Config` it changes nothing.
    """
    # agents.envs loads TensorFlow, which `--help` does without.
    from agents.envs import check_env_id

    preset = config.preset
    if preset == AUTO:
        preset = preset_for(config.env)  # checks the id
    else:
        check_env_id(config.env)
    values = settings(preset, config.algo)
    changes = {
        field.name: values.get(field.name)
        for field in dataclasses.fields(config)
        if getattr(config, field.name) is FROM_PRESET
    }
    hidden_units = changes.pop("hidden_units", config.hidden_units)
    logdir = config.logdir
    if logdir is None:
        logdir = os.path.join(
            "runs", f"{config.algo}-{config.env}-seed{config.seed}"
        )
    return dataclasses.replace(
        config,
        **changes,
        preset=preset,
        hidden_units=tuple(int(u) for u in hidden_units),
        logdir=logdir,
    )


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
    updates: int = 0

    @property
    def learned_nothing(self) -> bool:
        """Whether every update of the run was skipped."""
        return self.updates > 0 and self.skipped_updates >= self.updates

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
            f"{self.algo} on {self.env} (seed {self.seed}): "
            f"{self.env_steps} steps "
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


def load_saved_config(logdir: str, env: str | None = None) -> Config:
    """The resolved `Config` in `logdir/config.json`; raises `ValueError`
    for a missing, unreadable or unknown configuration.

    A run directory is data: an environment id that imports a module
    (`"module:Env-v0"`, whose import runs that module's code) is resolved
    only when `env`, the id the caller names itself, is the same one;
    otherwise `ValueError` asks for it.
    """
    path = os.path.join(logdir, "config.json")
    if not os.path.exists(path):
        raise ValueError(
            f"--resume needs a previous run in logdir. Received: "
            f"logdir={logdir!r} (no config.json)"
        )
    values = read_config_file(path)
    saved_env = values.get("env")
    if isinstance(saved_env, str) and ":" in saved_env and saved_env != env:
        raise ValueError(
            f"{path} names an environment that importing a module "
            f"registers ({saved_env!r}), and importing runs its code: pass "
            f"--env {saved_env} to resume it if you trust that module."
        )
    try:
        config = Config(**values)
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from None
    return resolve(config)
