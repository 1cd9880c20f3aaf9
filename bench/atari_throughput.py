"""Agent steps per second of whole Atari runs: ours and Stable-Baselines3's.

    python bench/atari_throughput.py               # about 25 minutes
    python bench/atari_throughput.py --threads 1   # one thread each

Each row trains a fresh run on `ALE/Pong-v5` twice, for `--steps` and for
`3 · --steps` agent steps, each in its own process, and reports the rate
of the difference, `2 · steps / (T₃ - T₁)`: building the agent, tracing
its functions, starting the emulators and exporting the policy are paid
once by both runs and drop out. Rows:

- `ours-acktr`: `python -m agents.train --algo acktr` with the `atari`
  preset (32 copies x 20 steps);
- `ours-acktr-fast`: the same with `--fisher-rows 160 --damping-mode
  factored` (BENCHMARKS.md, "Two levers that halve ACKTR's update on
  images");
- `ours-acktr-nature32`: `ours-acktr-fast` on `--network nature32` (32
  filters in the last convolution, as baselines' Atari ACKTR);
- `ours-a2c`: `--algo a2c`, the `atari` preset (16 copies x 5 steps);
- `ours-a2c-nature32`: the same on `--network nature32`, the network
  `ours-acktr-nature32` is measured against;
- `sb3-a2c`, `sb3-ppo`: Stable-Baselines3's A2C and PPO as
  `bench/run_sb3.py` trains them, with rl-baselines3-zoo's `atari`
  entries (its `AtariWrapper`, 4 stacked frames, `CnnPolicy`), the copies
  in one process (`DummyVecEnv`), as ours are.

SB3's runs need `requirements-bench.lock` (`.venv-bench`). TensorFlow and
torch take `--threads` intra-op threads (2, both cores, by default);
nothing else should run meanwhile. Prints Markdown for BENCHMARKS.md.
"""

import argparse
import os
import subprocess
import sys
import tempfile
import time

ENV = "ALE/Pong-v5"
# ACKTR's two levers on images (BENCHMARKS.md, "Two levers that halve
# ACKTR's update on images").
LEVERS = ["--fisher-rows", "160", "--damping-mode", "factored"]
OURS = {
    "ours-acktr": ["--algo", "acktr"],
    "ours-acktr-fast": ["--algo", "acktr", *LEVERS],
    "ours-acktr-nature32": [
        "--algo",
        "acktr",
        *LEVERS,
        "--network",
        "nature32",
    ],
    "ours-a2c": ["--algo", "a2c"],
    "ours-a2c-nature32": ["--algo", "a2c", "--network", "nature32"],
}
SB3 = ("sb3-a2c", "sb3-ppo")
ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")


def _thread_environment(threads: int) -> dict:
    return dict(
        os.environ,
        TF_NUM_INTRAOP_THREADS=str(threads),
        TF_NUM_INTEROP_THREADS=str(threads),
        TF_CPP_MIN_LOG_LEVEL="2",
    )


def train_sb3(row: str, steps: int, threads: int) -> None:
    """One SB3 run of `steps` agent steps (in this process), as
    `bench/run_sb3.py` trains it."""
    import run_sb3
    import torch

    torch.set_num_threads(threads)
    torch.set_num_interop_threads(threads)
    algo = row.removeprefix("sb3-")
    with tempfile.TemporaryDirectory() as out:
        run_sb3.run(algo, ENV, 0, steps, out)


def seconds_of(row: str, steps: int, threads: int) -> float:
    """Wall seconds of one whole run of `steps` steps, in a new process."""
    env = _thread_environment(threads)
    with tempfile.TemporaryDirectory() as logdir:
        if row in OURS:
            command = [
                sys.executable,
                "-m",
                "agents.train",
                *OURS[row],
                "--env",
                ENV,
                "--seed",
                "0",
                "--total-steps",
                str(steps),
                "--logdir",
                os.path.join(logdir, "run"),
            ]
        else:
            command = [
                sys.executable,
                os.path.abspath(__file__),
                "--sb3-run",
                row,
                "--steps",
                str(steps),
                "--threads",
                str(threads),
            ]
        start = time.perf_counter()
        subprocess.run(
            command,
            cwd=ROOT,
            env=env,
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=12800)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--rows", nargs="+", default=[*OURS, *SB3], choices=[*OURS, *SB3]
    )
    parser.add_argument("--sb3-run", choices=SB3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.sb3_run:
        train_sb3(args.sb3_run, args.steps, args.threads)
        return
    print(
        f"{ENV}, {args.threads} thread(s), steps/s between runs of "
        f"{args.steps} and {3 * args.steps} steps.\n"
    )
    print("| run | s for the first | s for the second | steps/s |")
    print("|---|---|---|---|")
    for row in args.rows:
        short = seconds_of(row, args.steps, args.threads)
        long = seconds_of(row, 3 * args.steps, args.threads)
        rate = 2 * args.steps / (long - short)
        print(f"| {row} | {short:.0f} | {long:.0f} | {rate:.0f} |", flush=True)


if __name__ == "__main__":
    main()
