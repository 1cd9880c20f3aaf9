"""Run directories as `agents.train` writes them, fabricated for the tests
of what reads them (`agents.plot`, `agents.aggregate`)."""

import json
import os

HEADER = "env_steps,return,length,wall_seconds\n"


def run_directory(directory, rows, config=None) -> str:
    """Writes `episodes.csv` with `rows` of `(env_steps, return, length,
    wall_seconds)` and, when given, `config.json`; returns the path."""
    os.makedirs(directory)
    with open(os.path.join(directory, "episodes.csv"), "w") as f:
        f.write(HEADER + "".join(",".join(map(str, r)) + "\n" for r in rows))
    if config is not None:
        with open(os.path.join(directory, "config.json"), "w") as f:
            json.dump(config, f)
    return str(directory)
