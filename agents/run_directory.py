"""The directory of one training run: one process at a time, checkpoints
that survive damage.

`RunLock` holds an exclusive `flock` on the run directory for as long as
a run trains there; the operating system drops it when the process ends,
so a killed run never leaves the directory locked, and deleting the
directory's `.lock` file (which names the owner) does not free it.

`restore_newest` restores the newest checkpoint under `checkpoints/` that
restores, found by listing the `ckpt-<steps>.index` files rather than by
trusting the `checkpoint` state file; damaged ones (truncated, empty,
missing a file) are moved to `checkpoints/damaged/`, never deleted, and
reported, under a name of their own when an earlier damaged file had the
same one. A checkpoint that reads fine but does not fit the agent (another
algorithm or network than `config.json` describes) is an error, not damage.

`check_resume` refuses a resume that would lose what the directory holds:
one whose checkpoints were removed while `episodes.csv` still logs the
episodes they covered (resuming from step 0 would drop those rows), or
one asked to stop below the steps already done.

TensorFlow is imported only by the functions that read checkpoints, so
that a process which only locks or lists a run directory starts quickly.
"""

import fcntl
import os
import re
import shutil

from agents import episode_log, files

_CHECKPOINT = re.compile(r"^ckpt-(\d+)\.index$")


class RunLock:
    """An exclusive lock on a run directory.

    The lock is an `flock` on the directory itself, which a process cannot
    remove from under its owner; `<logdir>/.lock` only names the owner's
    pid for the message a second process gets. It is opened without
    following a symlink, so a link planted there writes nothing elsewhere.

    Raises `ValueError` on entry when another process holds the lock,
    naming that process, or when `.lock` is a symlink or not a file.
    """

    def __init__(self, logdir: str):
        self.logdir = logdir
        self.path = os.path.join(logdir, ".lock")
        self._directory = None

    def __enter__(self):
        self._directory = os.open(self.logdir, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fcntl.flock(self._directory, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._directory)
            raise ValueError(
                f"Another training process (pid {self._holder()}) is using "
                f"logdir {self.logdir!r}; one run per directory. Wait for "
                "it, stop it, or choose another --logdir."
            ) from None
        try:
            handle = os.open(
                self.path, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW, 0o644
            )
            with os.fdopen(handle, "w") as file:
                file.truncate()
                file.write(str(os.getpid()))
        except OSError as error:
            self.__exit__()
            raise ValueError(
                f"Cannot write the lock file {self.path!r} "
                f"({error.strerror}); a run directory's .lock must be a "
                "plain file (not a symlink or a directory). Remove it."
            ) from None
        return self

    def _holder(self) -> str:
        """The pid the lock file names, as far as it can be read."""
        try:
            handle = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW)
            with os.fdopen(handle) as file:
                return file.read(32).strip() or "unknown"
        except (OSError, UnicodeDecodeError):
            return "unknown"

    def __exit__(self, *exc_info):
        fcntl.flock(self._directory, fcntl.LOCK_UN)
        os.close(self._directory)


def checkpoint_prefixes(directory: str) -> list[str]:
    """The `ckpt-<steps>` prefixes in `directory`, newest first."""
    if not os.path.isdir(directory):
        return []
    found = [
        (int(match.group(1)), name[: -len(".index")])
        for name in os.listdir(directory)
        if (match := _CHECKPOINT.match(name))
    ]
    return [os.path.join(directory, name) for _, name in sorted(found)[::-1]]


def checkpointed_steps(directory: str) -> int:
    """The environment steps of the newest checkpoint in `directory`, 0
    without one."""
    prefixes = checkpoint_prefixes(directory)
    if not prefixes:
        return 0
    name = os.path.basename(prefixes[0]) + ".index"
    return int(_CHECKPOINT.match(name).group(1))


def check_resume(
    checkpoint_dir: str,
    episodes_path: str,
    total_steps: int,
    first_checkpoint_steps: int,
) -> None:
    """Raises `ValueError`, before anything is written, when resuming from
    `checkpoint_dir` would lose or contradict the run.

    That is when `checkpoint_dir` is not a directory; when it holds no
    checkpoint although `episodes_path` logs episodes past
    `first_checkpoint_steps` (the steps of the first checkpoint a run
    writes, so the checkpoints existed and were removed: a resume from
    step 0 would drop those rows); or when `total_steps` is below the
    steps of the newest checkpoint.
    """
    if os.path.lexists(checkpoint_dir) and not os.path.isdir(checkpoint_dir):
        raise ValueError(
            f"{checkpoint_dir!r} is not a directory, so it holds no "
            "checkpoint to resume from; move it away (a new run starts "
            "at step 0 there) or restore the run's checkpoints."
        )
    prefixes = checkpoint_prefixes(checkpoint_dir)
    if prefixes:
        done = int(prefixes[0].rsplit("-", 1)[1])
        if total_steps < done:
            raise ValueError(
                f"total_steps {total_steps} is below the {done} steps the "
                f"run has done (its newest checkpoint, {prefixes[0]!r}); "
                f"give at least {done}."
            )
        return
    rows = episode_log.read(episodes_path)[0]
    logged = max((row[0] for row in rows), default=0)
    if logged > first_checkpoint_steps:
        raise ValueError(
            f"{checkpoint_dir!r} holds no checkpoint, yet {episodes_path!r} "
            f"logs {len(rows)} episodes up to {logged} steps, past the first "
            f"checkpoint ({first_checkpoint_steps} steps): the checkpoints "
            "were removed, and resuming from step 0 would drop those "
            "episodes. Restore the checkpoints or train in another logdir; "
            "nothing was changed."
        )


def _set_aside(prefix: str) -> None:
    """Moves the files of a damaged checkpoint into `damaged/`, each under
    a name no earlier damaged file holds (`ckpt-200.index`, then
    `ckpt-200.index.1`, ...)."""
    directory, name = os.path.split(prefix)
    damaged = os.path.join(directory, "damaged")
    os.makedirs(damaged, exist_ok=True)
    for file in os.listdir(directory):
        if file.startswith(name + "."):
            target, copy = os.path.join(damaged, file), 0
            while os.path.lexists(target):
                copy += 1
                target = os.path.join(damaged, f"{file}.{copy}")
            shutil.move(os.path.join(directory, file), target)


def restore_newest(checkpoint, directory: str) -> tuple[str | None, list]:
    """Restores the newest checkpoint in `directory` that reads.

    Args:
        checkpoint: The `tf.train.Checkpoint` to restore into; every
            object it tracks must already exist.
        directory: The checkpoint directory.

    Returns:
        `(prefix, damaged)`: the restored prefix (`None` when there is no
        checkpoint at all) and `[(prefix, reason), ...]` of the newer ones
        that did not read, now under `directory/damaged/`.

    Raises:
        ValueError: A checkpoint reads but does not fit `checkpoint`'s
            objects, or checkpoints exist and none of them reads.
    """
    import tensorflow as tf

    damaged = []
    for prefix in checkpoint_prefixes(directory):
        try:
            checkpoint.restore(prefix).assert_existing_objects_matched()
        except (AssertionError, ValueError) as error:
            raise ValueError(
                f"Checkpoint {prefix!r} does not fit the agent that "
                "config.json describes (another algorithm or network?): "
                f"{str(error).splitlines()[0]}"
            ) from None
        except (tf.errors.OpError, IndexError, OSError) as error:
            reason = str(error).splitlines()[0] if str(error) else "unreadable"
            damaged.append((prefix, f"{type(error).__name__}: {reason}"))
            continue
        for bad, _ in damaged:
            _set_aside(bad)
        _write_state(directory, prefix)
        return prefix, damaged
    if damaged:
        raise ValueError(
            f"No checkpoint in {directory!r} can be read: "
            + "; ".join(f"{p}: {r}" for p, r in damaged)
        )
    return None, []


def _write_state(directory: str, latest: str) -> None:
    """Rewrites the `checkpoint` state file to list the valid checkpoints,
    `latest` last, so that `tf.train.CheckpointManager` continues from it.
    The paths are relative: a run directory that moved still resumes."""
    import tensorflow as tf
    from google.protobuf import text_format

    valid = [os.path.basename(p) for p in checkpoint_prefixes(directory)]
    state = tf.compat.v1.train.generate_checkpoint_state_proto(
        directory,
        os.path.basename(latest),
        all_model_checkpoint_paths=valid[::-1],
    )
    files.replace_file(
        os.path.join(directory, "checkpoint"),
        lambda f: f.write(text_format.MessageToString(state)),
    )
