"""What the benchmark's runners share: command line, checks and outputs.

`bench/run_ours.py`, `bench/run_sb3.py` and `bench/run_tfagents_ppo.py`
take the same arguments (`parse_run_arguments`) and write the same two
files into `--out`:

- `episodes.csv` (`agents.episode_log`), header
  `env_steps,return,length,wall_seconds`: one row per finished training
  episode, with the environment steps taken so far (all copies together)
  when it ended, its undiscounted return and length as the environment
  gave them, and the seconds since training started;
- `summary.json` (`write_summary`): library, algorithm, environment, seed,
  steps, training time (wall and this process's CPU time: on a machine
  shared with other work, steps per CPU second estimates the speed it
  would have alone), steps per second, episodes, hyperparameters and
  where they came from, then what the runner adds.
"""

import argparse
import json
import os

from agents.episode_log import EpisodeLog


def one_thread() -> None:
    """TensorFlow on one intra-op and one inter-op thread, so that two
    runs share the machine's two cores (call before any op runs)."""
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)


def int_at_least(minimum: int):
    """`argparse` type: an integer >= `minimum`."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < minimum:
            raise argparse.ArgumentTypeError(
                f"must be an integer >= {minimum}. Received: {text!r}"
            )
        return value

    return parse


def add_run_arguments(parser: argparse.ArgumentParser, env_type) -> None:
    """Adds `--env`, `--seed`, `--total-steps` and `--out`.

    `env_type` checks `--env` (an `argparse` type or a list of choices).
    """
    if isinstance(env_type, (list, tuple)):
        parser.add_argument("--env", required=True, choices=env_type)
    else:
        parser.add_argument("--env", required=True, type=env_type)
    parser.add_argument("--seed", type=int_at_least(0), default=0)
    parser.add_argument(
        "--total-steps",
        type=int_at_least(1),
        required=True,
        help="environment steps, all copies together; a run stops at the "
        "first update boundary at or past it",
    )
    parser.add_argument(
        "--out", required=True, help="directory for the run's files"
    )


def parse_run_arguments(
    doc: str, env_type, argv=None, algorithms=None, more_arguments=None
) -> tuple[argparse.ArgumentParser, argparse.Namespace]:
    """A runner's command line: `--algo` (when `algorithms` lists the
    choices), then `add_run_arguments`, then what `more_arguments(parser)`
    adds; the description is the first paragraph of the runner's
    docstring `doc`.

    Returns:
        `(parser, args)`: the parser, for errors the runner finds in the
        arguments, and the parsed arguments.
    """
    parser = argparse.ArgumentParser(
        description=doc.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    if algorithms is not None:
        parser.add_argument("--algo", required=True, choices=algorithms)
    add_run_arguments(parser, env_type)
    if more_arguments is not None:
        more_arguments(parser)
    return parser, parser.parse_args(argv)


def new_episode_log(out_dir: str) -> EpisodeLog:
    """`out_dir`'s `episodes.csv` started afresh, header alone (the
    directory is created if needed)."""
    os.makedirs(out_dir, exist_ok=True)
    log = EpisodeLog(os.path.join(out_dir, "episodes.csv"))
    log.clear()
    return log


def write_summary(
    out_dir: str,
    *,
    library: str,
    algo: str,
    env: str,
    seed: int,
    env_steps: int,
    seconds: float,
    cpu_seconds: float,
    episodes: int,
    hyperparameters: dict,
    source: str,
    steps_per_second: float | None = None,
    **extra,
) -> dict:
    """Writes `summary.json` (atomically) and returns its contents.

    Args:
        out_dir: The run's directory.
        library, algo, env, seed: Who ran what.
        env_steps: Environment steps trained, all copies together.
        seconds, cpu_seconds: Training time, wall and this process's CPU.
        episodes: Episodes finished.
        hyperparameters: The settings of the run.
        source: Where the settings came from.
        steps_per_second: Defaults to `env_steps / seconds`.
        **extra: Written last, in their order.
    """
    if steps_per_second is None:
        steps_per_second = env_steps / seconds
    summary = {
        "library": library,
        "algo": algo,
        "env": env,
        "seed": seed,
        "env_steps": env_steps,
        "train_seconds": round(seconds, 3),
        "train_cpu_seconds": round(cpu_seconds, 3),
        "steps_per_second": round(steps_per_second, 1),
        "episodes": episodes,
        "hyperparameters": hyperparameters,
        "source": source,
        **extra,
    }
    path = os.path.join(out_dir, "summary.json")
    with open(path + ".tmp", "w") as f:
        json.dump(summary, f, indent=2)
        f.write("\n")
    os.replace(path + ".tmp", path)
    return summary


def summary_line(summary: dict) -> str:
    """One line for the console: who ran what, how far and how fast."""
    return (
        f"{summary['library']} {summary['algo']} on {summary['env']} "
        f"(seed {summary['seed']}): {summary['env_steps']} steps, "
        f"{summary['episodes']} episodes, {summary['train_seconds']:.1f} s "
        f"({summary['steps_per_second']:.0f} steps/s)"
    )
