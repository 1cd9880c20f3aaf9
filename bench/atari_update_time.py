"""What one batch of Pong costs: collecting it, and each agent's update.

    python bench/atari_update_time.py               # about 15 minutes
    python bench/atari_update_time.py --repeats 3   # a quick look
    python bench/atari_update_time.py --rows "acktr, both" a2c

The agents are built as `python -m agents.train --env ALE/Pong-v5` builds
them (the `atari` preset, the Nature CNN from 84 x 84 x 4 frames), on one
thread. Rows, each timed over `--repeats` batches after untimed ones:
two (tracing, the first refresh), and for ACKTR its cold steps before
them (first-order updates, which skip the preconditioning):

- `collect`: `RolloutCollector.collect` of one ACKTR batch (32 copies x 20
  steps): the emulator, the frame pipeline and the policy's forward pass;
- `acktr`: ACKTR's update of that batch (K-FAC with inverses every 10
  updates, the trust-region guard, the critic in the joint step);
- `acktr, no refresh`: the same with `inverse_update_freq` past the run,
  so only the first update decomposes the factors;
- `acktr, reduced convolutions`: the same with `--weight-sharing reduce`
  (each example's patches averaged before the convolutions' factors);
- `acktr, fisher rows 160`: the Fisher pass over 160 random rows of the
  640 (`--fisher-rows 160`);
- `acktr, factored damping`: Cholesky inverses instead of
  eigendecompositions (`--damping-mode factored`);
- `acktr, both`: the two together;
- `acktr, both, fisher rows 64`: the same with 64 rows;
- `acktr, both, nature32`: both levers on `--network nature32` (32
  filters in the last convolution, the dense layer's `A` 1569 wide);
- `a2c, same batch, nature32`: A2C's update of that batch on that
  network;
- `a2c, same batch`: A2C's update of a batch of the same size (its
  `atari` preset otherwise), the gradient step ACKTR's is measured
  against;
- `a2c`: A2C's update of its own preset's batch (16 x 5 steps).

The mean, not the median: refreshes come every 10th update. Prints
Markdown for BENCHMARKS.md.
"""

import argparse
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from runner_common import one_thread  # noqa: E402

ENV = "ALE/Pong-v5"
# name -> (algorithm, settings over the `atari` preset's)
ROWS = {
    "acktr": ("acktr", {}),
    "acktr, no refresh": ("acktr", {"inverse_update_freq": 10**9}),
    "acktr, reduced convolutions": ("acktr", {"weight_sharing": "reduce"}),
    "acktr, fisher rows 160": ("acktr", {"fisher_rows": 160}),
    "acktr, factored damping": ("acktr", {"damping_mode": "factored"}),
    "acktr, both": (
        "acktr",
        {"fisher_rows": 160, "damping_mode": "factored"},
    ),
    "acktr, both, fisher rows 64": (
        "acktr",
        {"fisher_rows": 64, "damping_mode": "factored"},
    ),
    "acktr, both, nature32": (
        "acktr",
        {"fisher_rows": 160, "damping_mode": "factored", "network": "nature32"},
    ),
    "a2c, same batch": ("a2c", {"num_envs": 32, "n_steps": 20}),
    "a2c, same batch, nature32": (
        "a2c",
        {"num_envs": 32, "n_steps": 20, "network": "nature32"},
    ),
    "a2c": ("a2c", {}),
}


def time_row(algo: str, settings: dict, repeats: int) -> dict:
    """`{"collect": [s], "update": [s], "steps": batch}` of one agent."""
    from agents.build import build
    from agents.config import Config, resolve
    from agents.rollout import RolloutCollector

    config = resolve(
        Config(algo=algo, env=ENV, seed=0, logdir="/dev/null", **settings)
    )
    py_env, tf_env, agent = build(config)
    try:
        agent.initialize()
        collector = RolloutCollector(
            tf_env, agent.collect_policy, config.n_steps
        )
        collect, update = [], []
        untimed = 2 + (config.cold_steps if algo == "acktr" else 0)
        for k in range(repeats + untimed):
            start = time.perf_counter()
            experience = collector.collect()
            collected = time.perf_counter()
            agent.train(experience).loss.numpy()
            if k >= untimed:
                collect.append(collected - start)
                update.append(time.perf_counter() - collected)
    finally:
        py_env.close()
    return dict(
        collect=collect, update=update, steps=config.num_envs * config.n_steps
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument(
        "--rows",
        nargs="+",
        choices=list(ROWS),
        default=list(ROWS),
        metavar="ROW",
        help="the rows to time (default: all of them)",
    )
    args = parser.parse_args()
    one_thread()
    print(f"{ENV}, one thread, mean over {args.repeats} batches.\n")
    print("| row | batch | ms per batch | steps/s |")
    print("|---|---|---|---|")
    for name in args.rows:
        algo, settings = ROWS[name]
        timed = time_row(algo, settings, args.repeats)
        steps = timed["steps"]
        if algo == "acktr" and name == args.rows[0]:
            seconds = statistics.mean(timed["collect"])
            print(
                f"| collect | {steps} | {1e3 * seconds:.0f} | "
                f"{steps / seconds:.0f} |"
            )
        seconds = statistics.mean(timed["update"])
        print(
            f"| {name} | {steps} | {1e3 * seconds:.0f} | "
            f"{steps / seconds:.0f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
