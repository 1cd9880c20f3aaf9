"""Trains one of this project's agents for the comparison benchmark.

    python bench/run_ours.py --algo acktr --env CartPole-v1 --seed 0 \\
        --total-steps 100000 --out bench/results/compare/CartPole-v1/acktr-seed0

The run is `python -m agents.train` with the preset for the task:
`default` for discrete actions (CartPole-v1, LunarLander-v3) and `mujoco`
(the ACKTR paper's continuous-control settings) for Box actions, what
`--preset auto` (the default) picks; `--preset NAME` takes another. Writes the
files `bench/runner_common.py` describes (`episodes.csv`, `summary.json`),
plus the training run itself under `--out/run`. TensorFlow runs on one
thread, as the third-party runners do, so two runs can share two cores.
A run killed before its summary was written resumes from its last
checkpoint (`agents.train`'s resume) when started again, so long runs
(Atari) can span sessions; its CPU time then counts the last process
only, and `summary.json` says `"resumed": true`.
"""

import os
import shutil
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from runner_common import (  # noqa: E402
    one_thread,
    parse_run_arguments,
    summary_line,
    write_summary,
)

from agents import ALGORITHMS, AUTO, PRESETS, Config, resolve, training  # noqa: E402
from agents.presets import preset_for  # noqa: E402


def run(
    algo: str,
    env_id: str,
    seed: int,
    total_steps: int,
    out: str,
    preset: str = AUTO,
):
    """Trains one run and writes its files; returns the summary."""
    one_thread()
    from agents.run_directory import checkpoint_prefixes

    os.makedirs(out, exist_ok=True)
    logdir = os.path.join(out, "run")
    resume = bool(checkpoint_prefixes(os.path.join(logdir, "checkpoints")))
    if not resume:
        shutil.rmtree(logdir, ignore_errors=True)
    config = resolve(
        Config(
            algo=algo,
            env=env_id,
            # "auto": what agents.train's default takes.
            preset=preset_for(env_id) if preset == AUTO else preset,
            seed=seed,
            total_steps=total_steps,
            logdir=logdir,
        )
    )
    cpu_start = time.process_time()
    result = training.run(config, resume=resume, progress=False)
    cpu_seconds = time.process_time() - cpu_start
    shutil.copyfile(
        os.path.join(logdir, "episodes.csv"),
        os.path.join(out, "episodes.csv"),
    )
    settings = {
        k: v
        for k, v in vars(config).items()
        if v is not None and k not in ("logdir", "env", "algo", "seed")
    }
    return write_summary(
        out,
        library="keras-kfac",
        algo=algo,
        env=env_id,
        seed=seed,
        env_steps=result.env_steps,
        seconds=result.seconds,
        cpu_seconds=cpu_seconds,
        # This session's rate: a resumed run's earlier steps are left out.
        steps_per_second=result.steps_per_second,
        episodes=result.episodes,
        hyperparameters=settings,
        source=f"agents.train preset {config.preset!r}",
        resumed=resume,
    )


def main(argv=None) -> None:
    """Parses the command line, trains, prints a one-line result."""

    def preset_argument(parser):
        parser.add_argument("--preset", choices=(AUTO, *PRESETS), default=AUTO)

    _, args = parse_run_arguments(
        __doc__, str, argv, ALGORITHMS, preset_argument
    )
    summary = run(
        args.algo,
        args.env,
        args.seed,
        args.total_steps,
        args.out,
        args.preset,
    )
    print(summary_line(summary))


if __name__ == "__main__":
    main()
