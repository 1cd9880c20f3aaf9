"""ACKTR vs A2C on CartPole-v1: sample efficiency and per-update time.

    python bench/cartpole.py                 # 3 seeds each, about 12 minutes
    python bench/cartpole.py --seeds 1 --a2c-steps 100000   # a quick look

Both agents use the same network (separate 64-64 tanh policy and value
MLPs) and the same batch (8 environments x 20 steps); each algorithm keeps
its own optimizer settings (ACKTR: the paper's K-FAC settings; A2C: RMSprop
at the learning rate given by `--a2c-learning-rate`). Every run is a fresh
`python -m agents.train` process.

Sample efficiency: environment steps until the mean return of the last 100
training episodes reaches 475 (CartPole-v1's reward threshold). Per-update
time: the median wall time of `agent.train` on one fixed batch, ACKTR and
A2C alternating in one process (K-FAC's eigendecompositions every
`inverse_update_freq` updates included). Prints Markdown for BENCHMARKS.md;
writes the learning curves to `--out`.
"""

import argparse
import csv
import os
import statistics
import subprocess
import sys
import time

import numpy as np

THRESHOLD = 475.0
BATCH = ["--num-envs", "8", "--n-steps", "20"]


def steps_to_threshold(rows, threshold=THRESHOLD, window=100):
    """First `env_steps` at which the last `window` episodes average
    `threshold`, or `None`."""
    returns = []
    for steps, episode_return in rows:
        returns.append(episode_return)
        if len(returns) >= window and np.mean(returns[-window:]) >= threshold:
            return steps
    return None


def read_episodes(logdir):
    with open(os.path.join(logdir, "episodes.csv")) as f:
        return [
            (int(r["env_steps"]), float(r["return"])) for r in csv.DictReader(f)
        ]


def train_run(algo, seed, total_steps, out, extra):
    logdir = os.path.join(out, f"{algo}-seed{seed}")
    command = [
        sys.executable,
        "-m",
        "agents.train",
        "--algo",
        algo,
        "--seed",
        str(seed),
        "--total-steps",
        str(total_steps),
        "--logdir",
        logdir,
        "--no-progress",
        *BATCH,
        *extra,
    ]
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    return read_episodes(logdir), time.perf_counter() - start


def per_update_times(repeats, num_envs=8):
    """Median seconds per `train` call for ACKTR and A2C on one batch of
    `num_envs x 20` steps."""
    import tensorflow as tf
    from tf_agents.environments import tf_py_environment
    from update_time import build_agents

    from agents.envs import GymnasiumEnvironment
    from agents.rollout import RolloutCollector

    py_env = GymnasiumEnvironment("CartPole-v1", num_envs=num_envs, seed=0)
    env = tf_py_environment.TFPyEnvironment(py_env)
    # The paper's settings (baselines' K-FAC, the joint step, n-step
    # returns): the rows `acktr` and `a2c` of bench/update_time.py.
    agents = build_agents(env)
    trainers = {}
    for name, row in (("ACKTR", "acktr"), ("A2C", "a2c")):
        agent = agents[row][0]
        trainers[name] = (agent, tf.function(agent.train))
    experience = RolloutCollector(
        env, trainers["ACKTR"][0].collect_policy, n_steps=20
    ).collect()
    times = {name: [] for name in trainers}
    for _, train in trainers.values():
        for _ in range(20):  # trace, and pass ACKTR's cold steps
            train(experience)
    for _ in range(repeats):
        for name, (_, train) in trainers.items():
            start = time.perf_counter()
            train(experience).loss.numpy()
            times[name].append(time.perf_counter() - start)
    py_env.close()
    return {name: statistics.median(t) for name, t in times.items()}


def plot(curves, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4))
    for algo, runs in curves.items():
        grid = np.linspace(0, max(rows[-1][0] for rows in runs if rows), 200)
        smoothed = []
        for rows in runs:
            steps = np.array([s for s, _ in rows])
            returns = np.array([r for _, r in rows])
            means = [
                returns[max(0, i - 99) : i + 1].mean()
                for i in range(len(returns))
            ]
            smoothed.append(np.interp(grid, steps, means, right=np.nan))
        smoothed = np.array(smoothed)
        mean = np.nanmean(smoothed, axis=0)
        axes.plot(grid, mean, label=algo)
        axes.fill_between(
            grid, np.nanmin(smoothed, 0), np.nanmax(smoothed, 0), alpha=0.2
        )
    axes.axhline(THRESHOLD, color="gray", linestyle="--", linewidth=1)
    axes.set_xlabel("environment steps")
    axes.set_ylabel("mean return, last 100 episodes")
    axes.set_title("CartPole-v1 (mean, min-max over seeds)")
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--acktr-steps", type=int, default=300_000)
    parser.add_argument("--a2c-steps", type=int, default=500_000)
    # The best of 7e-4, 2e-3 and 5e-3 for A2C at this batch (7e-4, the
    # default for 8 x 5 batches, does not reach 475 in 500k steps at 8 x 20).
    parser.add_argument("--a2c-learning-rate", type=float, default=5e-3)
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--out", default="bench/results/cartpole")
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)

    budgets = {"acktr": args.acktr_steps, "a2c": args.a2c_steps}
    extra = {
        # The critic trained by the joint K-FAC step, as these figures
        # were first measured (agents.train's ACKTR now fits it apart).
        "acktr": ["--critic", "joint"],
        "a2c": ["--learning-rate", str(args.a2c_learning_rate)],
    }
    curves, solved, seconds = {}, {}, {}
    for algo in ("acktr", "a2c"):
        curves[algo], solved[algo], seconds[algo] = [], [], []
        for seed in range(args.seeds):
            rows, wall = train_run(
                algo, seed, budgets[algo], args.out, extra[algo]
            )
            curves[algo].append(rows)
            solved[algo].append(steps_to_threshold(rows))
            seconds[algo].append(wall)
            print(
                f"{algo} seed {seed}: {solved[algo][-1]} steps to {THRESHOLD}",
                file=sys.stderr,
            )
    plot(curves, os.path.join(args.out, "cartpole.png"))
    times = {n: per_update_times(args.repeats, n) for n in (8, 32)}

    print(
        "| algorithm | budget | steps to 475, per seed | solved "
        "| median steps | run time, s |"
    )
    print("|---|---|---|---|---|---|")
    for algo in ("acktr", "a2c"):
        done = [s for s in solved[algo] if s is not None]
        per_seed = ", ".join("-" if s is None else str(s) for s in solved[algo])
        median = (
            f"{int(np.median(done))}" if len(done) == len(solved[algo]) else "-"
        )
        print(
            f"| {algo} | {budgets[algo]} | {per_seed} "
            f"| {len(done)}/{args.seeds} "
            f"| {median} | {np.mean(seconds[algo]):.0f} |"
        )
    print()
    for n, t in times.items():
        print(
            f"Per update ({n} x 20 batch): ACKTR {1e3 * t['ACKTR']:.2f} ms, "
            f"A2C {1e3 * t['A2C']:.2f} ms, ratio {t['ACKTR'] / t['A2C']:.2f}x"
        )


if __name__ == "__main__":
    main()
