"""Train an agent on a Gymnasium environment from the command line.

    python -m agents.train --algo acktr --env CartPole-v1
    python -m agents.train --algo a2c --env CartPole-v1 --seed 1
    python -m agents.train --algo acktr --env CartPole-v1 --resume   # after a kill
    python -m agents.train --algo trpo --env CartPole-v1
    python -m agents.train --algo acktr --preset mujoco --env HalfCheetah-v5

`--preset` picks the settings of every option not given
(`agents.presets.PRESETS`): `default` (the discrete-action settings) or
`mujoco` (the ACKTR paper's continuous-control settings); the default,
`auto`, takes `mujoco` for a `Box` action space and `default` otherwise.
The command line prints the settings it resolved before training.

Writes into `--logdir` (default `runs/<algo>-<env>-seed<seed>`):

- `config.json`: the run's full configuration;
- TensorBoard summaries against environment steps: episode return and
  length, the loss terms, entropy, KL, clip coefficient, steps/s;
- `episodes.csv`: every finished training episode;
- `checkpoints/`: periodic checkpoints (network, optimizer state, counters,
  the random states and the episodes under way); `--resume` continues from
  the newest one that reads, so that a killed and resumed run ends with the
  weights and episodes of an uninterrupted one;
- `.lock`: held while a process trains there (one run per directory);
- at the end, `policy/` and `collect_policy/` (`PolicySaver` SavedModels
  of the greedy policy and of the sampling one that collected the
  training episodes, which `python -m agents.evaluate` runs) and
  `learning_curve.png`.
"""

import argparse
import dataclasses
import json
import math
import os
import random
import shutil
import signal
import sys
import threading
import time
import warnings
from collections import deque

import numpy as np

from agents.checks import check_positive_integer
from agents.episode_log import EpisodeLog
from agents.plot import moving_mean
from agents.presets import (  # re-exported: agents.train.PRESETS, ...
    ALGORITHMS,
    AUTO,
    COMMON,
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
# Measured at 1M steps, seed 0/1: InvertedDoublePendulum AUC 5844 -> 6395,
# Hopper 1587 -> 1777, HalfCheetah 2293 -> 2129 (BENCHMARKS.md).
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


def _value_optimizer(config: Config):
    """The optimizer of a critic fitted apart, or `None` for "joint"."""
    import keras

    from agents.acktr import kfac_value_optimizer

    if config.critic == "joint":
        return None
    if config.critic == "kfac":
        return kfac_value_optimizer(learning_rate=config.value_learning_rate)
    return keras.optimizers.Adam(config.value_learning_rate)


def build(config: Config):
    """`(py_env, tf_env, agent)` for `config`; raises on bad input."""
    import keras
    import tensorflow as tf
    from tf_agents.environments import tf_py_environment

    from agents.a2c import A2CAgent, a2c_optimizer
    from agents.acktr import AcktrAgent, acktr_optimizer
    from agents.envs import GymnasiumEnvironment
    from agents.networks import ActorCriticNetwork
    from agents.trpo import TrpoAgent

    keras.utils.set_random_seed(config.seed)
    py_env = GymnasiumEnvironment(
        config.env,
        config.num_envs,
        seed=config.seed,
        processes=config.processes,
        time_feature=config.time_feature,
        previous_observation=config.previous_observation,
    )
    try:
        tf_env = tf_py_environment.TFPyEnvironment(py_env)
        network = ActorCriticNetwork(
            tf_env.observation_spec(),
            tf_env.action_spec(),
            torso="atari"
            if len(tf_env.observation_spec().shape) == 3
            else "mlp",
            hidden_units=config.hidden_units,
            shared_torso=config.shared_torso,
            normalize_observations=config.normalize_observations,
        )
        learning_rate, target_kl = config.learning_rate, config.target_kl
        if config.lr_schedule == "linear" and target_kl is not None:
            target_kl = keras.optimizers.schedules.PolynomialDecay(
                target_kl,
                config.total_updates,
                end_learning_rate=target_kl * TARGET_KL_END,
            )
        elif config.lr_schedule == "linear" and learning_rate is not None:
            learning_rate = keras.optimizers.schedules.PolynomialDecay(
                config.learning_rate,
                config.total_updates,
                end_learning_rate=0.0,
            )
        common = dict(
            gamma=config.gamma,
            gae_lambda=config.gae_lambda,
            ent_coef=config.ent_coef,
            normalize_advantages=config.normalize_advantages,
            value_optimizer=_value_optimizer(config),
            value_epochs=config.value_epochs,
            value_minibatch_size=config.value_minibatch_size,
            seed=config.seed,
            train_step_counter=tf.Variable(
                0, dtype=tf.int64, name="train_step"
            ),
        )
        specs = (tf_env.time_step_spec(), tf_env.action_spec(), network)
        if config.algo == "acktr":
            optimizer = acktr_optimizer(
                learning_rate=learning_rate,
                kl_clip=config.kl_clip,
                damping=config.damping,
                inverse_update_freq=config.inverse_update_freq,
                cold_steps=config.cold_steps,
                momentum=config.momentum,
                stats_decay=config.stats_decay,
                max_grad_norm=config.max_grad_norm,
            )
            agent = AcktrAgent(
                *specs,
                optimizer,
                vf_fisher_coef=config.vf_fisher_coef,
                vf_coef=config.vf_coef,
                target_kl=target_kl,
                warm_start=config.warm_start,
                max_kl_ratio=config.max_kl_ratio,
                **common,
            )
        elif config.algo == "a2c":
            optimizer = a2c_optimizer(
                learning_rate=learning_rate, max_grad_norm=config.max_grad_norm
            )
            agent = A2CAgent(
                *specs,
                optimizer,
                vf_coef=config.vf_coef,
                target_kl=target_kl,
                warm_start=config.warm_start,
                **common,
            )
        else:
            agent = TrpoAgent(
                *specs,
                max_kl=config.max_kl,
                damping=config.damping,
                **common,
            )
    except BaseException:
        py_env.close()
        raise
    return py_env, tf_env, agent


def plot_learning_curve(episodes: EpisodeLog, path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = np.array([row[0] for row in episodes.rows])
    returns = np.array([row[1] for row in episodes.rows])
    figure, axes = plt.subplots(figsize=(6, 4))
    if len(returns):
        window = min(100, len(returns))
        smooth = moving_mean(returns, window)[window - 1 :]
        axes.plot(steps, returns, ".", alpha=0.2, label="episode")
        axes.plot(steps[window - 1 :], smooth, label=f"mean of last {window}")
        axes.legend()
    axes.set_xlabel("environment steps")
    axes.set_ylabel("episode return")
    axes.set_title(title)
    figure.tight_layout()
    figure.savefig(path + ".tmp.png", dpi=100)
    plt.close(figure)
    os.replace(path + ".tmp.png", path)


def export_policy(policy, train_step, directory: str) -> None:
    """Saves `policy` with `PolicySaver`, replacing `directory` only once
    the new SavedModel is complete.

    Two messages of every export are known to be harmless and are held
    back: absl's "Sanitizing" of tf-agents' nested argument names, and
    TensorFlow's note that loading a saved distribution spec needs
    TensorFlow Probability imported (tf-agents, which loads it, does).
    """
    from absl import logging as absl_logging
    from tf_agents.policies import policy_saver

    temporary = directory + ".tmp"
    shutil.rmtree(temporary, ignore_errors=True)
    verbosity = absl_logging.get_verbosity()
    absl_logging.set_verbosity(absl_logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings(
                "ignore", "Encoding a StructuredValue", UserWarning
            )
            policy_saver.PolicySaver(
                policy, batch_size=None, train_step=train_step
            ).save(temporary)
    finally:
        absl_logging.set_verbosity(verbosity)
    shutil.rmtree(directory, ignore_errors=True)
    os.replace(temporary, directory)


class TrainingInterrupted(Exception):
    """SIGINT or SIGTERM stopped the run after a checkpoint."""


class TrainingAborted(Exception):
    """A second SIGINT or SIGTERM, or the environment timeout, stopped the
    run inside an environment step; the last checkpoint is kept."""


class RunWriteError(Exception):
    """A file of the run could not be written (a full disk, for example);
    the last good checkpoint is kept."""


class _StopRequests:
    """Records SIGINT/SIGTERM; the loop stops at the end of its update, so a
    signal never lands inside an environment step or a checkpoint write.
    A second signal while the loop waits for an environment step that does
    not return aborts the wait (`abort`)."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.received = None
        self.abort = False

    def __call__(self, signum, frame):
        if self.received is not None:
            self.abort = True
        self.received = signum

    def __enter__(self):
        self._previous = [signal.signal(s, self) for s in self.SIGNALS]
        return self

    def __exit__(self, *exc_info):
        for s, handler in zip(self.SIGNALS, self._previous):
            signal.signal(s, handler)


def _collect(collector, py_env, stop: _StopRequests, timeout, steps: int):
    """`collector.collect()` in a worker thread while this (the main)
    thread waits in short slices: TensorFlow runs the environment steps
    of a batch inside its graph, where a blocked step would also block
    the signal handlers if the main thread waited there itself.

    Raises:
        TrainingAborted: A second signal arrived, or an environment call
            ran longer than `timeout` seconds; the batch is abandoned.
    """
    outcome = {}

    def target():
        try:
            outcome["batch"] = collector.collect()
        except BaseException as error:  # handed to the main thread
            outcome["error"] = error

    worker = threading.Thread(target=target, daemon=True)
    worker.start()
    while worker.is_alive():
        worker.join(0.05)
        if stop.abort:
            raise TrainingAborted(
                f"Stopped by a second signal while collecting the batch "
                f"after {steps} steps"
            )
        if timeout is not None and py_env.call_seconds() > timeout:
            raise TrainingAborted(
                f"Environment {py_env.env_id!r} did not return from a step "
                f"within --env-timeout {timeout:g} s after {steps} steps"
            )
    if "error" in outcome:
        if py_env.error is not None:  # the environment's own error, not
            raise py_env.error from None  # TensorFlow's wrapping of it
        raise outcome["error"]
    return outcome["batch"]


def _check_logdir(logdir: str) -> None:
    """Raises `ValueError` unless a run can be written under `logdir`."""
    if os.path.exists(logdir) and not os.path.isdir(logdir):
        raise ValueError(f"logdir is a file, not a directory: {logdir!r}")
    parent = os.path.abspath(logdir)
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise ValueError(f"logdir {logdir!r} lies under a file: {parent!r}")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ValueError(
            f"logdir {logdir!r} cannot be written: {parent!r} is read-only "
            "for this user"
        )
    free = shutil.disk_usage(parent).free
    if free < MINIMUM_FREE_BYTES:
        raise ValueError(
            f"logdir {logdir!r}: {free / 2**20:.1f} MiB free on its disk, "
            f"under the {MINIMUM_FREE_BYTES / 2**20:.0f} MiB a run needs "
            "for its checkpoints"
        )


# Free space below which a run is not started.
MINIMUM_FREE_BYTES = 64 * 2**20


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


def _differences(config: Config, saved: Config, names) -> list[str]:
    """`name=value (saved: value)` for each of `names` but `total_steps`
    and `logdir` where `config` and `saved` differ."""
    return [
        f"{name}={getattr(config, name)!r} (saved: {getattr(saved, name)!r})"
        for name in names
        if name not in ("total_steps", "logdir")
        and getattr(config, name) != getattr(saved, name)
    ]


def _check_resumable(config: Config) -> Config:
    """The saved configuration; raises `ValueError` unless `config` is it,
    up to `total_steps` and `logdir`."""
    saved = load_saved_config(config.logdir)
    differ = _differences(
        config, saved, [f.name for f in dataclasses.fields(Config)]
    )
    if differ:
        raise ValueError(
            "--resume continues the run as its config.json describes it; "
            "only total_steps may change. Received: " + ", ".join(differ)
        )
    return saved


def _run_state(py_env) -> str:
    """What a checkpoint needs besides TensorFlow variables to continue
    exactly: the environments' episodes and time step, and the NumPy and
    Python random states, as JSON."""
    numpy_state = np.random.get_state()
    return json.dumps(
        {
            "environment": py_env.get_state(),
            "numpy": [numpy_state[0], numpy_state[1].tolist()]
            + list(numpy_state[2:]),
            "python": random.getstate(),
        }
    )


def _restore_run_state(text: str, py_env, collector) -> None:
    import tensorflow as tf

    state = json.loads(text)
    py_env.set_state(state["environment"])
    collector.time_step = tf.nest.map_structure(
        tf.convert_to_tensor, py_env.current_time_step()
    )
    kind, keys, *rest = state["numpy"]
    np.random.set_state((kind, np.array(keys, np.uint32), *rest))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


def run(
    config: Config,
    resume: bool = False,
    progress: bool = True,
    on_start=None,
) -> Summary:
    """Trains, checkpointing as it goes; returns the run's `Summary`.

    With `resume`, `config` must be the run's saved one (`config.json` in
    `config.logdir`) up to `total_steps`; `load_saved_config` reads it.
    `on_start`, if given, is called with no argument once the environment
    and the agent are built, before anything is written.

    Raises:
        ValueError: Bad input; nothing was written.
        TrainingInterrupted: SIGINT/SIGTERM; a checkpoint was saved.
        TrainingAborted: A second signal or the environment timeout
            stopped an environment step; the last checkpoint is kept.
        agents.envs.EnvironmentStepError: The environment raised or
            returned NaN/Inf; the last checkpoint is kept.
        RunWriteError: A file could not be written; the last good
            checkpoint is kept.
    """
    from agents.run_directory import RunLock, checkpoint_prefixes

    config_path = os.path.join(config.logdir, "config.json")
    checkpoint_dir = os.path.join(config.logdir, "checkpoints")
    _check_logdir(config.logdir)
    saved = _check_resumable(config) if resume else None
    if not resume and (
        os.path.exists(config_path) or checkpoint_prefixes(checkpoint_dir)
    ):
        raise ValueError(
            f"logdir {config.logdir!r} already holds a run; pass --resume to "
            "continue it or choose another --logdir."
        )

    py_env, tf_env, agent = build(config)  # before anything is written
    aborted = False
    try:
        if on_start is not None:
            on_start()
        os.makedirs(config.logdir, exist_ok=True)
        with RunLock(config.logdir):
            if not resume and os.path.exists(config_path):
                raise ValueError(  # another process, just now
                    f"logdir {config.logdir!r} already holds a run."
                )
            if saved is None or saved.total_steps != config.total_steps:
                with open(config_path + ".tmp", "w") as f:  # new total_steps
                    json.dump(dataclasses.asdict(config), f, indent=2)
                os.replace(config_path + ".tmp", config_path)
            return _train(config, py_env, tf_env, agent, resume, progress)
    except TrainingAborted:
        aborted = True
        raise
    finally:
        py_env.close(terminate=aborted)


def _train(config, py_env, tf_env, agent, resume, progress) -> Summary:
    """The training loop of `run`, in a locked run directory."""
    import tensorflow as tf
    from tqdm import tqdm

    from agents.rollout import RolloutCollector
    from agents.run_directory import restore_newest

    checkpoint_dir = os.path.join(config.logdir, "checkpoints")
    env_steps = tf.Variable(0, dtype=tf.int64, name="env_steps")
    run_state = tf.Variable("", dtype=tf.string, name="run_state")
    checkpoint = tf.train.Checkpoint(
        agent=agent, env_steps=env_steps, run_state=run_state
    )
    collector = RolloutCollector(tf_env, agent.collect_policy, config.n_steps)
    episodes = EpisodeLog(os.path.join(config.logdir, "episodes.csv"))
    if resume:
        restored, damaged = restore_newest(checkpoint, checkpoint_dir)
        for prefix, reason in damaged:
            print(
                f"Skipped damaged checkpoint {prefix} ({reason}); moved to "
                f"{os.path.join(checkpoint_dir, 'damaged')}."
            )
        if restored is None:
            print("No checkpoint to resume from; starting at step 0.")
        else:
            if run_state.numpy():
                _restore_run_state(
                    run_state.numpy().decode(), py_env, collector
                )
            print(f"Resumed {restored} at {int(env_steps)} steps.")
    counts = episodes.load(int(env_steps))
    if counts["malformed"]:
        print(
            f"Dropped {counts['malformed']} partial or malformed rows of "
            f"{episodes.path}."
        )
    manager = tf.train.CheckpointManager(
        checkpoint, checkpoint_dir, max_to_keep=3
    )

    def save():
        run_state.assign(_run_state(py_env))
        try:
            manager.save(checkpoint_number=int(env_steps))
        except (OSError, tf.errors.OpError) as error:
            raise RunWriteError(
                f"Could not write the checkpoint at {int(env_steps)} steps "
                f"({str(error).splitlines()[0]}); the last good checkpoint "
                f"({manager.latest_checkpoint}) is kept."
            ) from None

    train = tf.function(agent.train)
    writer = tf.summary.create_file_writer(config.logdir)
    recent = deque((row[1] for row in episodes.rows[-100:]), maxlen=100)
    start_steps, start_time = int(env_steps), time.perf_counter()
    previous_seconds = episodes.seconds
    # The bar starts after the first update, whose time is mostly tracing,
    # so that its estimate of the time left and its rate leave that out;
    # it shows one rate, environment steps per second.
    bar, bar_origin = None, None
    with _StopRequests() as stop:
        while int(env_steps) < config.total_steps and stop.received is None:
            experience = _collect(
                collector, py_env, stop, config.env_timeout, int(env_steps)
            )
            # The step-size settings this update takes (logged below).
            step_size = {}
            if agent.optimizer is not None:
                step_size["learning_rate"] = float(
                    agent.optimizer.learning_rate
                )
            if getattr(agent, "target_kl", None) is not None:
                step_size["target_kl"] = float(agent.target_kl)
            loss_info = train(experience)
            env_steps.assign_add(config.batch_steps)
            steps = int(env_steps)
            seconds = previous_seconds + time.perf_counter() - start_time
            finished = [
                (steps, r, n, round(seconds, 3))
                for r, n in py_env.pop_completed_episodes()
            ]
            try:
                episodes.append(finished)
            except OSError as error:
                raise RunWriteError(
                    f"Could not append to {episodes.path} ({error}); the last "
                    f"good checkpoint ({manager.latest_checkpoint}) is kept."
                ) from None
            recent.extend(row[1] for row in finished)
            rate = (steps - start_steps) / (time.perf_counter() - start_time)
            with writer.as_default(step=steps):
                for _, r, n, _ in finished:
                    tf.summary.scalar("episode/return", r)
                    tf.summary.scalar("episode/length", n)
                tf.summary.scalar("loss/total", loss_info.loss)
                for name, value in loss_info.extra._asdict().items():
                    tf.summary.scalar(f"train/{name}", value)
                for name, value in step_size.items():
                    tf.summary.scalar(f"train/{name}", value)
                tf.summary.scalar("train/steps_per_second", rate)
                tf.summary.scalar(
                    "train/skipped_updates", agent.skipped_updates
                )
            if bar is None:
                bar_origin = (steps, time.perf_counter())
                bar = tqdm(
                    total=config.total_steps,
                    initial=steps,
                    disable=not progress,
                    dynamic_ncols=True,
                    bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} "
                    "[{elapsed}<{remaining}{postfix}]",
                )
            else:
                since_first = time.perf_counter() - bar_origin[1]
                bar.update(config.batch_steps)
                bar.set_postfix(
                    steps_per_s=f"{(steps - bar_origin[0]) / since_first:.0f}",
                    recent_return=f"{np.mean(recent):.1f}" if recent else "-",
                )
            if int(agent.train_step_counter) % config.checkpoint_every == 0:
                save()
        if bar is not None:
            bar.close()
        writer.flush()
        save()
    if stop.received is not None:
        raise TrainingInterrupted(
            f"Interrupted at {int(env_steps)} steps; checkpoint saved. "
            f"Continue with --resume --logdir {config.logdir}"
        )
    policy_dir = os.path.join(config.logdir, "policy")
    export_policy(agent.policy, agent.train_step_counter, policy_dir)
    export_policy(
        agent.collect_policy,
        agent.train_step_counter,
        os.path.join(config.logdir, "collect_policy"),
    )
    plot_learning_curve(
        episodes,
        os.path.join(config.logdir, "learning_curve.png"),
        f"{config.algo} on {config.env}, seed {config.seed}",
    )
    seconds = time.perf_counter() - start_time
    return Summary(
        algo=config.algo,
        env=config.env,
        seed=config.seed,
        env_steps=int(env_steps),
        seconds=seconds,
        steps_per_second=(int(env_steps) - start_steps) / seconds,
        episodes=len(episodes.rows),
        mean_return_last_100=episodes.mean_return(),
        policy_dir=policy_dir,
        skipped_updates=int(agent.skipped_updates),
    )


def _optional_float(text: str) -> float | None:
    return None if text.lower() == "none" else float(text)


def _optional_int(text: str) -> int | None:
    return None if text.lower() == "none" else int(text)


def _presets_help() -> str:
    """The `--help` epilog: what every preset sets, per algorithm."""

    def listed(values: dict) -> str:
        return ", ".join(f"{key}={value}" for key, value in values.items())

    lines = [
        "presets (what an option not given takes):",
        f"  every preset, unless it says otherwise: {listed(COMMON)}",
    ]
    for preset, algos in PRESETS.items():
        for algo, values in algos.items():
            lines.append(f"  {preset}, {algo}: {listed(values)}")
    return "\n".join(lines)


def parse_args(argv=None) -> tuple[Config, argparse.Namespace]:
    """`(Config, namespace)`; options not given take the preset's value."""
    parser = argparse.ArgumentParser(
        prog="python -m agents.train",
        description=__doc__.split("\n\n")[0],
        argument_default=argparse.SUPPRESS,
        epilog=_presets_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add = parser.add_argument
    add("--algo", choices=ALGORITHMS, help="default: acktr")
    add("--env", help="a Gymnasium id; default: CartPole-v1")
    add(
        "--preset",
        choices=(AUTO, *PRESETS),
        help="the settings of every option not given (listed below); "
        "default: auto, which takes 'mujoco' for a Box action space and "
        "'default' otherwise",
    )
    add("--seed", type=int, help="default: 0")
    add(
        "--total-steps",
        "--steps",
        "--n-timesteps",
        "-n",
        dest="total_steps",
        type=int,
        help="environment steps; default: 100000; with --resume, the run's own",
    )
    add("--num-envs", type=int)
    add("--n-steps", type=int, help="steps per env per update")
    add(
        "--learning-rate",
        type=float,
        help="acktr: η_max; a2c: RMSprop's rate (trpo has none)",
    )
    add(
        "--critic",
        choices=CRITICS,
        help="how the value function is trained: fitted apart by Adam or by "
        "K-FAC Gauss-Newton steps, or in the policy's update (not trpo)",
    )
    add(
        "--value-learning-rate",
        type=float,
        help="the critic's rate (Adam's; K-FAC's η_max)",
    )
    add("--value-epochs", type=int, help="passes of the critic's fit per batch")
    add(
        "--value-minibatch-size",
        type=_optional_int,
        help="rows per step of the critic's fit; 'none': the whole batch",
    )
    add(
        "--lr-schedule",
        choices=("constant", "linear"),
        help="linear: the step size decays across the run, the learning "
        "rate to 0 or, with --target-kl, the target KL to a tenth",
    )
    add(
        "--target-kl",
        type=_optional_float,
        help="adapt the learning rate toward this KL per update (acktr, a2c)",
    )
    add(
        "--warm-start",
        action=argparse.BooleanOptionalAction,
        help="reach --target-kl in the first updates (square-root rule)",
    )
    add("--ent-coef", type=float)
    add("--vf-coef", type=float)
    add("--gamma", type=float)
    add(
        "--gae-lambda",
        type=_optional_float,
        help="GAE λ; 'none': n-step returns",
    )
    add("--normalize-advantages", action=argparse.BooleanOptionalAction)
    add("--max-grad-norm", type=_optional_float, help="'none': no clipping")
    add(
        "--kl-clip",
        type=float,
        help="acktr: the KL radius δ (baselines' kfac_clip = 2δ)",
    )
    add("--damping", type=float, help="acktr: K-FAC's; trpo: CG's")
    add("--inverse-update-freq", type=int, help="acktr: K-FAC's")
    add(
        "--cold-steps",
        type=int,
        help="acktr: first-order updates before K-FAC's first inverse",
    )
    add("--momentum", type=float, help="acktr: K-FAC's μ (v ← μv + (1-μ)ηΔ)")
    add(
        "--stats-decay",
        type=float,
        help="acktr: K-FAC's running-average decay of the factors A, G "
        "(0: the current batch's only)",
    )
    add("--vf-fisher-coef", type=float, help="acktr")
    add("--max-kl", type=float, help="trpo: the trust-region radius δ")
    add(
        "--max-kl-ratio",
        type=_optional_float,
        help="acktr: backtrack a step whose measured KL exceeds this times "
        "--kl-clip; 'none': no guard",
    )
    add(
        "--hidden-units",
        type=lambda s: tuple(int(u) for u in s.split(",")),
        help="comma-separated widths, e.g. 64,64",
    )
    add("--shared-torso", action=argparse.BooleanOptionalAction)
    add("--normalize-observations", action=argparse.BooleanOptionalAction)
    add(
        "--time-feature",
        action=argparse.BooleanOptionalAction,
        help="append t/T (elapsed fraction of the time limit) to observations",
    )
    add(
        "--previous-observation",
        action=argparse.BooleanOptionalAction,
        help="append the previous observation to observations",
    )
    add(
        "--processes",
        action="store_true",
        help="one subprocess per env copy",
    )
    add(
        "--env-timeout",
        type=_optional_float,
        help="seconds an environment step may take before the run stops "
        "(keeping its last checkpoint); default: none",
    )
    add("--checkpoint-every", type=int, help="updates between checkpoints")
    add("--logdir", help="default: runs/<algo>-<env>-seed<seed>")
    add(
        "--resume",
        action="store_true",
        default=False,
        help="continue the run in --logdir",
    )
    add("--no-progress", action="store_true", default=False)
    add(
        "--config",
        help="a JSON object of settings (a run's config.json, say); the "
        "options given here override it",
    )
    args = parser.parse_args(argv)
    fields = {f.name for f in dataclasses.fields(Config)}
    given = {k: v for k, v in vars(args).items() if k in fields}
    if "config" in args:
        given = {**read_config_file(args.config), **given}
    config = Config(**given)
    if args.resume:
        config = _resumed_config(config, given)
    return config, args


def _resumed_config(config: Config, given: dict) -> Config:
    """The saved configuration of `config.logdir`, with `total_steps` if
    given; raises `ValueError` when another given option contradicts it."""
    saved = load_saved_config(config.logdir)
    differ = _differences(config, saved, given)
    if differ:
        raise ValueError(
            "--resume continues the run as its config.json describes it; "
            "leave out the options that differ. Received: " + ", ".join(differ)
        )
    if "total_steps" in given:
        saved.total_steps = config.total_steps
    saved.logdir = config.logdir
    return saved


def main(argv=None) -> int:
    """The command line; returns the exit code: 0 done, 1 stopped by a
    failure (the last checkpoint kept), 2 bad input (nothing written),
    130 interrupted."""
    from agents.envs import EnvironmentStepError, check_env_id

    # AutoGraph's generated code compares with literals (`x is not ()`),
    # which Python flags once per traced function: not this project's code.
    warnings.filterwarnings("ignore", '"is not" with a literal', SyntaxWarning)
    try:
        config, args = parse_args(argv)
        check_env_id(config.env)
        summary = run(
            config,
            resume=args.resume,
            progress=not args.no_progress,
            on_start=lambda: print(config.describe(), flush=True),
        )
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except (EnvironmentStepError, RunWriteError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except TrainingInterrupted as interrupted:
        print(interrupted, file=sys.stderr)
        return 130
    except TrainingAborted as aborted:
        print(
            f"{aborted}; the last checkpoint is kept. Continue with --resume "
            f"--logdir {config.logdir}",
            file=sys.stderr,
        )
        return ABORTED
    print(summary.line())
    return 0


# The exit code after an aborted environment step: the thread that runs it
# may never return, so the process exits without waiting for it.
ABORTED = 131


if __name__ == "__main__":
    code = main()
    if code == ABORTED:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)
