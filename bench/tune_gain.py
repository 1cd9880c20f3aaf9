"""What tuning buys: the best configuration `agents.tune` finds against the
preset it searched from, on seeds the search did not see.

    python bench/tune_gain.py --algo acktr --env Acrobot-v1 --trials 16 \\
        --total-steps 100000

1. `python -m agents.tune` on seed 0, its study in
   `bench/results/tune/<algo>-<env>/` (a stopped search resumes);
2. the preset and the study's `best.json`, each trained on the evaluation
   seeds (`--eval-seeds`, 1-3 by default) for the same budget, their run
   directories beside the study (a finished run is kept, a stopped one
   resumes);
3. a Markdown table: per seed, the mean return of the last 100 episodes
   at the end of the budget, and the mean ± sample standard deviation.
"""

import argparse
import dataclasses
import os
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from agents import tune  # noqa: E402
from agents.config import Config, read_config_file, resolve  # noqa: E402
from agents.run_directory import checkpointed_steps  # noqa: E402

RESULTS = os.path.join(ROOT, "bench", "results", "tune")


def study_directory(algo: str, env: str) -> str:
    return os.path.join(RESULTS, f"{algo}-{env.replace('/', '-')}")


def trained(config: Config) -> float:
    """Trains `config` to its budget unless its run directory already has
    it (resuming a stopped run); returns the mean return of its last 100
    episodes at the budget."""
    from agents.training import run

    batch = resolve(config).batch_steps
    end = -(-config.total_steps // batch) * batch  # runs end on whole batches
    done = checkpointed_steps(os.path.join(config.logdir, "checkpoints"))
    if done < end:
        run(config, resume=done > 0, progress=False)
    return tune.mean_return_at(config.logdir, end)


def evaluate(args, study: str) -> dict:
    """`{"preset": [score per seed], "tuned": [...]}`."""
    best = Config(**read_config_file(os.path.join(study, "best.json")))
    scores = {"preset": [], "tuned": []}
    for seed in args.eval_seeds:
        preset = Config(
            algo=args.algo,
            env=args.env,
            seed=seed,
            total_steps=args.total_steps,
            logdir=os.path.join(study, f"preset-seed{seed}"),
        )
        tuned = dataclasses.replace(
            best,
            seed=seed,
            total_steps=args.total_steps,
            logdir=os.path.join(study, f"tuned-seed{seed}"),
        )
        scores["preset"].append(trained(preset))
        scores["tuned"].append(trained(tuned))
    return scores


def markdown(args, study: str, scores: dict) -> str:
    best = read_config_file(os.path.join(study, "best.json"))
    preset = resolve(Config(algo=args.algo, env=args.env))
    changed = {
        k: v
        for k, v in best.items()
        if k in tune.SEARCH_SPACES[args.algo] and v != getattr(preset, k)
    }
    seeds = " / ".join(str(s) for s in args.eval_seeds)
    lines = [
        f"{args.algo} on {args.env}, {args.total_steps:,} steps; the search: "
        f"{args.trials} trials on seed 0; tuned: {changed}.",
        "",
        f"| configuration | mean return of the last 100 episodes, seeds "
        f"{seeds} | mean ± std |",
        "|---|---|---|",
    ]
    for name, values in scores.items():
        cells = " / ".join(f"{v:.1f}" for v in values)
        lines.append(
            f"| {name} | {cells} | {np.mean(values):.1f} ± "
            f"{np.std(values, ddof=1):.1f} |"
        )
    return "\n".join(lines)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--algo", default="acktr")
    parser.add_argument("--env", default="Acrobot-v1")
    parser.add_argument("--trials", type=int, default=16)
    parser.add_argument("--total-steps", type=int, default=100_000)
    parser.add_argument("--eval-seeds", type=int, nargs="+", default=[1, 2, 3])
    args = parser.parse_args(argv)
    if 0 in args.eval_seeds or len(args.eval_seeds) < 2:
        parser.error(
            "--eval-seeds needs two seeds or more, not the search's seed 0. "
            f"Received: {args.eval_seeds}"
        )
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    study = study_directory(args.algo, args.env)
    status = tune.main(
        [
            "--algo",
            args.algo,
            "--env",
            args.env,
            "--trials",
            str(args.trials),
            "--total-steps",
            str(args.total_steps),
            "--study",
            study,
        ]
    )
    if status != 0:
        return status
    print(markdown(args, study, evaluate(args, study)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
