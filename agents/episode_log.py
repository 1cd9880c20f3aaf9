"""`episodes.csv`: one row per finished training episode.

Header `env_steps,return,length,wall_seconds`. Each row holds the
environment steps and the training seconds (over all sessions of a resumed
run) at the end of the update in which the episode finished, its return
and its length. Rows are appended after every update; that append is the
one write that is not atomic, so a crash can leave a partial last row,
which `load` drops and reports. `agents.train` and the benchmark's runners
(`bench/runner_common.py`) write it through `EpisodeLog`.
"""

import csv
import math
import os

import numpy as np

from agents import files

FIELDS = ("env_steps", "return", "length", "wall_seconds")


def _parse(row: dict) -> tuple[int, float, int, float] | None:
    """The row's values, or `None` for a partial or malformed row."""
    try:
        values = (
            int(row["env_steps"]),
            float(row["return"]),
            int(row["length"]),
            float(row["wall_seconds"]),
        )
    except (KeyError, TypeError, ValueError):
        return None
    if None in row or not math.isfinite(values[3]):  # extra fields
        return None
    return values


def read(path: str) -> tuple[list[tuple[int, float, int, float]], int]:
    """`(rows, malformed)`: the well-formed rows of the file at `path`
    (none if it does not exist) and the count of partial or malformed ones.
    Only reads: a training process may be appending to the file."""
    rows, malformed = [], 0
    if os.path.exists(path):
        with open(path, newline="") as f:
            for row in csv.DictReader(f):
                values = _parse(row)
                if values is None:
                    malformed += 1
                else:
                    rows.append(values)
    return rows, malformed


class EpisodeLog:
    """The rows of `episodes.csv` in memory and on disk.

    Args:
        path: The file; created by the first `append`, `load` or `clear`.
    """

    def __init__(self, path: str):
        self.path = path
        self.rows: list[tuple[int, float, int, float]] = []

    @property
    def seconds(self) -> float:
        """Training seconds at the last row (0 for none)."""
        return self.rows[-1][3] if self.rows else 0.0

    def load(self, up_to_env_steps: int) -> dict:
        """Keeps the rows of a resumed run up to its checkpoint and rewrites
        the file with them.

        Returns:
            `{"kept": n, "after_checkpoint": n, "malformed": n}`: rows
            kept, rows past `up_to_env_steps` (the checkpoint's; they are
            trained again), and partial or malformed rows dropped.
        """
        rows, malformed = read(self.path)
        self.rows = [row for row in rows if row[0] <= up_to_env_steps]
        counts = {
            "kept": len(self.rows),
            "after_checkpoint": len(rows) - len(self.rows),
            "malformed": malformed,
        }
        self._rewrite()
        return counts

    def clear(self) -> None:
        """Starts the log afresh: no rows, and a file with the header alone
        (replacing any earlier one)."""
        self.rows = []
        self._rewrite()

    def _rewrite(self) -> None:
        def write(file):
            writer = csv.writer(file)
            writer.writerow(FIELDS)
            writer.writerows(self.rows)

        files.replace_file(self.path, write)

    def append(self, rows) -> None:
        """Adds `rows` of `(env_steps, return, length, wall_seconds)` to the
        file (flushed) and to `self.rows`: integers, a float and the
        seconds rounded to the millisecond."""
        rows = [
            (int(steps), float(r), int(length), round(float(seconds), 3))
            for steps, r, length, seconds in rows
        ]
        if not os.path.exists(self.path):
            self._rewrite()
        with files.open_for_append(self.path) as f:
            csv.writer(f).writerows(rows)
            f.flush()
        self.rows.extend(rows)

    def mean_return(self, last: int = 100) -> float:
        """Mean return of the last `last` episodes (NaN for none)."""
        returns = [row[1] for row in self.rows[-last:]]
        return float(np.mean(returns)) if returns else float("nan")
