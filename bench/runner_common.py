"""What the third-party baseline runners share: CLI checks and outputs.

`bench/run_sb3.py` and `bench/run_tfagents_ppo.py` take the same
arguments and write the same two files into `--out`:

- `episodes.csv`, header `env_steps,return,length,wall_seconds`: one row
  per finished training episode, with the environment steps taken so far
  (all copies together) when it ended, its undiscounted return and length
  as the environment gave them, and the seconds since training started;
- `summary.json`: library, algorithm, environment, seed, steps, training
  time (wall and this process's CPU time: on a machine shared with other
  work, steps per CPU second estimates the speed it would have alone),
  steps per second, hyperparameters and where they came from.
"""

import argparse
import csv
import json
import os

FIELDS = ("env_steps", "return", "length", "wall_seconds")


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


class EpisodeLog:
    """Writes `episodes.csv` row by row (flushed, so a killed run keeps
    what it logged)."""

    def __init__(self, out_dir: str):
        os.makedirs(out_dir, exist_ok=True)
        self._file = open(
            os.path.join(out_dir, "episodes.csv"), "w", newline=""
        )
        self._writer = csv.writer(self._file)
        self._writer.writerow(FIELDS)
        self.count = 0

    def write(
        self,
        env_steps: int,
        episode_return: float,
        length: int,
        wall_seconds: float,
    ) -> None:
        """Adds one episode's row."""
        self._writer.writerow(
            (
                int(env_steps),
                float(episode_return),
                int(length),
                round(wall_seconds, 3),
            )
        )
        self.count += 1

    def flush(self) -> None:
        """Pushes the rows written so far to the file."""
        self._file.flush()

    def close(self) -> None:
        """Closes the file."""
        self._file.close()


def write_summary(out_dir: str, summary: dict) -> None:
    """Writes `summary.json` (atomically)."""
    path = os.path.join(out_dir, "summary.json")
    with open(path + ".tmp", "w") as f:
        json.dump(summary, f, indent=2)
        f.write("\n")
    os.replace(path + ".tmp", path)


def summary_line(summary: dict) -> str:
    """One line for the console: who ran what, how far and how fast."""
    return (
        f"{summary['library']} {summary['algo']} on {summary['env']} "
        f"(seed {summary['seed']}): {summary['env_steps']} steps, "
        f"{summary['episodes']} episodes, {summary['train_seconds']:.1f} s "
        f"({summary['steps_per_second']:.0f} steps/s)"
    )
