"""The training loop (`run`): collect, update, log, checkpoint, export.

A run writes into `config.logdir`: `config.json`, TensorBoard summaries,
`episodes.csv`, checkpoints every `checkpoint_every` updates (the agent,
its optimizers, the counters, the random states and the episodes under
way, so that a resumed run ends as an uninterrupted one would), and at the
end the exported policies and `learning_curve.png`. Signals stop it after
the current update with a checkpoint (`TrainingInterrupted`); a second
signal or the environment timeout stops it inside an environment step
(`TrainingAborted`).

`run` checks the input and holds the run directory; `_train` is the loop,
with `_Checkpoints` (saving and restoring the run), `_Log` (TensorBoard
and the progress bar) and `_finish` (export, learning curve, `Summary`)
beside it.
"""

import dataclasses
import json
import os
import random
import shutil
import signal
import threading
import time
import warnings
from collections import deque

import numpy as np
import tensorflow as tf
from absl import logging as absl_logging
from tf_agents.policies import policy_saver
from tqdm import tqdm

from agents import files, plot
from agents.build import build
from agents.config import Config, Summary, load_saved_config, resolve
from agents.episode_log import EpisodeLog
from agents.optimizers import curvature_scalars
from agents.quiet import held_back
from agents.rollout import RolloutCollector
from agents.run_directory import (
    RunLock,
    check_resume,
    checkpoint_prefixes,
    restore_newest,
)

# Free space below which a run is not started.
MINIMUM_FREE_BYTES = 64 * 2**20


def export_policy(policy, train_step, directory: str) -> None:
    """Saves `policy` with `PolicySaver`, replacing `directory` only once
    the new SavedModel is complete.

    Two messages of every export are known to be harmless and are held
    back: absl's "Sanitizing" of tf-agents' nested argument names, and
    TensorFlow's note that loading a saved distribution spec needs
    TensorFlow Probability imported (tf-agents, which loads it, does).
    """
    verbosity = absl_logging.get_verbosity()
    absl_logging.set_verbosity(absl_logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings(
                "ignore", "Encoding a StructuredValue", UserWarning
            )
            saver = policy_saver.PolicySaver(
                policy, batch_size=None, train_step=train_step
            )
            files.replace_directory(directory, saver.save)
    finally:
        absl_logging.set_verbosity(verbosity)


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
    if not logdir.strip():
        raise ValueError(f"logdir must name a directory. Received: {logdir!r}")
    if os.path.exists(logdir) and not os.path.isdir(logdir):
        raise ValueError(f"logdir is a file, not a directory: {logdir!r}")
    parent = os.path.abspath(logdir)
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise ValueError(f"logdir {logdir!r} lies under a file: {parent!r}")
    longest = max(len(part) for part in os.fsencode(logdir).split(b"/"))
    most = os.pathconf(parent, "PC_NAME_MAX")
    if longest > most:
        raise ValueError(
            f"logdir has a name of {longest} bytes, over the {most} its file "
            f"system takes. Received: {logdir!r}"
        )
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


def _continued(config: Config, saved: Config, given) -> Config:
    """The run `saved` describes, in `config.logdir`, to `config.total_steps`
    unless `given` leaves `total_steps` out.

    Raises:
        ValueError: A field of `config` differs from the saved one: with
            `given=None` any field but `total_steps` and `logdir`, else
            one of those `given` names.
    """
    names = [f.name for f in dataclasses.fields(Config)]
    differ = [
        f"{name}={getattr(config, name)!r} (saved: {getattr(saved, name)!r})"
        for name in (names if given is None else given)
        if name not in ("total_steps", "logdir")
        and getattr(config, name) != getattr(saved, name)
    ]
    if differ:
        advice = (
            "only total_steps may change"
            if given is None
            else "leave out the options that differ"
        )
        raise ValueError(
            "--resume continues the run as its config.json describes it; "
            f"{advice}. Received: " + ", ".join(differ)
        )
    keep = given is not None and "total_steps" not in given
    return dataclasses.replace(
        saved,
        total_steps=saved.total_steps if keep else config.total_steps,
        logdir=config.logdir,
    )


def _run_state(py_env, algo: str) -> str:
    """What a checkpoint needs besides TensorFlow variables to continue
    exactly: the environments' episodes and time step, and the NumPy and
    Python random states, as JSON; and the algorithm that wrote it."""
    numpy_state = np.random.get_state()
    return json.dumps(
        {
            "algo": algo,
            "environment": py_env.get_state(),
            "numpy": [numpy_state[0], numpy_state[1].tolist()]
            + list(numpy_state[2:]),
            "python": random.getstate(),
        }
    )


def _restore_run_state(text: str, py_env, collector, algo: str) -> None:
    """Restores what `_run_state` saved; raises `ValueError` when another
    algorithm than `algo` wrote it (its variables, restored by name into
    this agent's, would mean other things: an edited `config.json`)."""
    state = json.loads(text)
    written_by = state.get("algo", algo)  # older checkpoints do not say
    if written_by != algo:
        raise ValueError(
            f"The checkpoint was written by a {written_by} run, but "
            f"config.json says algo={algo!r}; resume with the algorithm "
            "that trained it."
        )
    py_env.set_state(state["environment"])
    collector.time_step = tf.nest.map_structure(
        tf.convert_to_tensor, py_env.current_time_step()
    )
    kind, keys, *rest = state["numpy"]
    np.random.set_state((kind, np.array(keys, np.uint32), *rest))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


class _Checkpoints:
    """The run's checkpoints in `directory`: the agent, the environment
    steps and the run state (`_run_state`); the newest three are kept.

    Raises `RunWriteError` when one cannot be written, naming the last
    good one.
    """

    def __init__(self, agent, directory: str, algo: str):
        self.directory, self.algo = directory, algo
        self.env_steps = tf.Variable(0, dtype=tf.int64, name="env_steps")
        self._run_state = tf.Variable("", dtype=tf.string, name="run_state")
        self._checkpoint = tf.train.Checkpoint(
            agent=agent, env_steps=self.env_steps, run_state=self._run_state
        )
        self._manager = None

    def start(self, py_env, collector, resume: bool) -> None:
        """With `resume`, restores the newest checkpoint that reads (moving
        damaged ones aside) and the run state; then starts keeping them."""
        if resume:
            self._restore(py_env, collector)
        # After the restore, which rewrites the state file it reads.
        self._manager = tf.train.CheckpointManager(
            self._checkpoint, self.directory, max_to_keep=3
        )

    def _restore(self, py_env, collector) -> None:
        restored, damaged = restore_newest(self._checkpoint, self.directory)
        for prefix, reason in damaged:
            print(
                f"Skipped damaged checkpoint {prefix} ({reason}); moved to "
                f"{os.path.join(self.directory, 'damaged')}."
            )
        if restored is None:
            print("No checkpoint to resume from; starting at step 0.")
            return
        if self._run_state.numpy():
            _restore_run_state(
                self._run_state.numpy().decode(), py_env, collector, self.algo
            )
        print(f"Resumed {restored} at {int(self.env_steps)} steps.")

    @property
    def latest(self) -> str | None:
        """The newest checkpoint written."""
        return self._manager.latest_checkpoint

    def save(self, py_env) -> None:
        self._run_state.assign(_run_state(py_env, self.algo))
        try:
            self._manager.save(checkpoint_number=int(self.env_steps))
        except (OSError, tf.errors.OpError) as error:
            raise RunWriteError(
                f"Could not write the checkpoint at {int(self.env_steps)} "
                f"steps ({str(error).splitlines()[0]}); the last good "
                f"checkpoint ({self.latest}) is kept."
            ) from None


class _Log:
    """What each update reports: TensorBoard summaries in the run directory
    against environment steps, and the progress bar.

    The bar starts after the first update, whose time is mostly tracing,
    so that its estimate of the time left and its rate leave that out; it
    shows one rate, environment steps per second, and the mean return of
    the last 100 episodes.
    """

    def __init__(self, config: Config, recent_returns, progress: bool):
        self._writer = tf.summary.create_file_writer(config.logdir)
        self._recent = deque(recent_returns, maxlen=100)
        self._batch_steps = config.batch_steps
        # The last batch ends past `total_steps` unless it divides them:
        # the bar's total is where the run will stop.
        self._total_steps = config.batch_steps * -(
            -config.total_steps // config.batch_steps
        )
        self._progress = progress
        self._bar = None

    def update(self, steps, finished, loss_info, step_size, rate, agent):
        """Records the update that ended at `steps`: its `finished`
        episodes, `loss_info`, the `step_size` settings it took and the
        `rate` in steps per second."""
        self._recent.extend(row[1] for row in finished)
        with self._writer.as_default(step=steps):
            for _, r, n, _ in finished:
                tf.summary.scalar("episode/return", r)
                tf.summary.scalar("episode/length", n)
            tf.summary.scalar("loss/total", loss_info.loss)
            for name, value in loss_info.extra._asdict().items():
                tf.summary.scalar(f"train/{name}", value)
            for name, value in step_size.items():
                tf.summary.scalar(f"train/{name}", value)
            for name, value in curvature_scalars(agent.optimizer).items():
                tf.summary.scalar(f"kfac/{name}", value)
            tf.summary.scalar("train/steps_per_second", rate)
            tf.summary.scalar("train/skipped_updates", agent.skipped_updates)
        self._advance(steps)

    def _advance(self, steps: int) -> None:
        if self._bar is None:
            self._origin = (steps, time.perf_counter())
            self._bar = tqdm(
                total=self._total_steps,
                initial=steps,
                disable=not self._progress,
                dynamic_ncols=True,
                bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} "
                "[{elapsed}<{remaining}{postfix}]",
            )
            return
        since_first = time.perf_counter() - self._origin[1]
        self._bar.update(self._batch_steps)
        self._bar.set_postfix(
            steps_per_s=f"{(steps - self._origin[0]) / since_first:.0f}",
            recent_return=(
                f"{np.mean(self._recent):.1f}" if self._recent else "-"
            ),
        )

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        self._writer.flush()


def _step_sizes(agent) -> dict:
    """The step-size settings the next update takes: the learning rate and
    the target KL, where the agent has them."""
    step_size = {}
    if agent.optimizer is not None:
        step_size["learning_rate"] = float(agent.optimizer.learning_rate)
    if getattr(agent, "target_kl", None) is not None:
        step_size["target_kl"] = float(agent.target_kl)
    return step_size


def run(
    config: Config,
    resume: bool = False,
    progress: bool = True,
    on_start=None,
    given=None,
) -> Summary:
    """Trains `config`, checkpointing as it goes; returns the run's
    `Summary`.

    `config` is resolved first (`agents.config.resolve`). With `resume`,
    the run continues as `config.json` in `config.logdir` describes it,
    to `config.total_steps`: every other field of `config` must equal the
    saved one or, when `given` names the fields the caller set (the
    command line's options), those must, and `total_steps` stays the
    saved one unless given. `on_start`, if given, is called with the
    configuration that trains once the environment and the agent are
    built, before anything is written.

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
    config = resolve(config)
    saved = None
    if resume:
        named = given is None or "env" in given  # else the default env
        saved = load_saved_config(
            config.logdir, env=config.env if named else None
        )
        config = _continued(config, saved, given)
    _check_logdir(config.logdir)
    config_path = os.path.join(config.logdir, "config.json")
    checkpoint_dir = os.path.join(config.logdir, "checkpoints")
    if not resume and (
        os.path.exists(config_path) or checkpoint_prefixes(checkpoint_dir)
    ):
        raise ValueError(
            f"logdir {config.logdir!r} already holds a run; pass --resume to "
            "continue it or choose another --logdir."
        )

    with held_back():  # TensorFlow's notice at the first int64 operation
        py_env, tf_env, agent = build(config)  # before anything is written
    aborted = False
    try:
        if on_start is not None:
            on_start(config)
        os.makedirs(config.logdir, exist_ok=True)
        with RunLock(config.logdir):
            _claim_locked_directory(config, saved, resume)
            checkpoints = _Checkpoints(agent, checkpoint_dir, config.algo)
            return _train(
                config, checkpoints, py_env, tf_env, agent, resume, progress
            )
    except TrainingAborted as error:
        aborted = True
        raise TrainingAborted(
            f"{error}; the last checkpoint is kept. Continue with --resume "
            f"--logdir {config.logdir}"
        ) from None
    finally:
        py_env.close(terminate=aborted)


def _claim_locked_directory(config, saved, resume: bool) -> None:
    """Checks the locked run directory and writes its `config.json` (a new
    run's, or a resumed one's new `total_steps`); raises `ValueError`,
    writing nothing, when another process just started a run there or a
    resume would lose what it holds (`check_resume`)."""
    config_path = os.path.join(config.logdir, "config.json")
    if not resume and os.path.exists(config_path):
        raise ValueError(  # another process, just now
            f"logdir {config.logdir!r} already holds a run."
        )
    episodes_path = os.path.join(config.logdir, "episodes.csv")
    if os.path.isdir(episodes_path):
        raise ValueError(
            f"{episodes_path!r} is a directory; a run keeps its episode log "
            "there. Move it away."
        )
    if resume:
        check_resume(
            os.path.join(config.logdir, "checkpoints"),
            episodes_path,
            config.total_steps,
            config.checkpoint_every * config.batch_steps,
        )
    if saved is None or saved.total_steps != config.total_steps:
        files.replace_file(
            config_path,
            lambda f: json.dump(dataclasses.asdict(config), f, indent=2),
        )


def _train(
    config, checkpoints, py_env, tf_env, agent, resume, progress
) -> Summary:
    """The training loop of `run`, in a locked run directory."""
    collector = RolloutCollector(tf_env, agent.collect_policy, config.n_steps)
    episodes = EpisodeLog(os.path.join(config.logdir, "episodes.csv"))
    checkpoints.start(py_env, collector, resume)
    env_steps = checkpoints.env_steps
    counts = episodes.load(int(env_steps))
    if counts["malformed"]:
        print(
            f"Dropped {counts['malformed']} partial or malformed rows of "
            f"{episodes.path}."
        )
    train = tf.function(agent.train)
    log = _Log(config, (row[1] for row in episodes.rows[-100:]), progress)
    start_steps, start_time = int(env_steps), time.perf_counter()
    previous_seconds = episodes.seconds
    with _StopRequests() as stop:
        while int(env_steps) < config.total_steps and stop.received is None:
            experience = _collect(
                collector, py_env, stop, config.env_timeout, int(env_steps)
            )
            step_size = _step_sizes(agent)  # logged with the update
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
                    f"good checkpoint ({checkpoints.latest}) is kept."
                ) from None
            rate = (steps - start_steps) / (time.perf_counter() - start_time)
            log.update(steps, finished, loss_info, step_size, rate, agent)
            if int(agent.train_step_counter) % config.checkpoint_every == 0:
                checkpoints.save(py_env)
        log.close()
        checkpoints.save(py_env)
    if stop.received is not None:
        raise TrainingInterrupted(
            f"Interrupted at {int(env_steps)} steps; checkpoint saved. "
            f"Continue with --resume --logdir {config.logdir}"
        )
    return _finish(
        config, agent, episodes, start_steps, start_time, int(env_steps)
    )


def _finish(config, agent, episodes, start_steps, start_time, env_steps):
    """Exports the policies and draws the learning curve of a finished
    run; returns its `Summary`."""
    policy_dir = os.path.join(config.logdir, "policy")
    for policy, directory in (
        (agent.policy, policy_dir),
        (agent.collect_policy, os.path.join(config.logdir, "collect_policy")),
    ):
        try:
            export_policy(policy, agent.train_step_counter, directory)
        except (OSError, tf.errors.OpError) as error:
            raise RunWriteError(
                f"Could not export {directory} "
                f"({str(error).splitlines()[0]}); the final checkpoint is "
                f"kept: --resume --logdir {config.logdir} exports again."
            ) from None
    plot.plot(
        [
            plot.Run.from_rows(
                config.logdir, dataclasses.asdict(config), episodes.rows
            )
        ],
        os.path.join(config.logdir, "learning_curve.png"),
        window=max(1, min(100, len(episodes.rows))),
        title=f"{config.algo} on {config.env}, seed {config.seed}",
        episodes=True,
    )
    seconds = time.perf_counter() - start_time
    return Summary(
        algo=config.algo,
        env=config.env,
        seed=config.seed,
        env_steps=env_steps,
        seconds=seconds,
        steps_per_second=(env_steps - start_steps) / seconds,
        episodes=len(episodes.rows),
        mean_return_last_100=episodes.mean_return(),
        policy_dir=policy_dir,
        skipped_updates=int(agent.skipped_updates),
        updates=env_steps // config.batch_steps,
    )
