"""Per-update time of ACKTR against A2C on the same batch and network.

    python bench/update_time.py               # about 2 minutes
    python bench/update_time.py --repeats 50  # a quick look

Times `agent.train` (a `tf.function`) on one fixed batch, the agents
alternating in one process on one thread, after 20 untimed updates (tracing
and ACKTR's cold steps). Two batches: CartPole-v1 at 8 x 20 steps and
HalfCheetah-v5 at 4 x 625 (the `mujoco` preset's 2500). Every agent has the
same separate 64-64 tanh policy and value networks. Rows:

- `a2c`: A2C (RMSprop), critic in the joint step, as `agents.A2CAgent`;
- `acktr`: ACKTR (baselines' K-FAC, `BASELINES_KFAC`: inverses every 10
  updates; the guard on), critic in the joint step;
- `acktr, no guard`: the same without the trust-region guard;
- `a2c, adam critic` / `acktr, adam critic`: both with the critic fitted
  apart by Adam (5 epochs of minibatches of 64), as `agents.train` runs
  them;
- `acktr, adam critic, mujoco K-FAC`: the same with the `mujoco` preset's
  K-FAC settings (inverses every update instead of every 10).

Every row has n-step returns and raw advantages, as the agents' defaults
were when BENCHMARKS.md's table was measured.

Prints Markdown for BENCHMARKS.md: mean milliseconds per update (the mean:
the refreshes of baselines' K-FAC come every 10th update, and a median
would leave them out) and the ratio to the A2C row of the same critic.
"""

import argparse
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from runner_common import one_thread  # noqa: E402

BATCHES = {"CartPole-v1": (8, 20), "HalfCheetah-v5": (4, 625)}

# OpenAI baselines' Atari K-FAC (its kfac_clip=0.001 bounds 2δ), which
# `acktr_optimizer()` defaulted to when BENCHMARKS.md's table was measured.
BASELINES_KFAC = dict(
    learning_rate=0.25,
    kl_clip=0.0005,
    momentum=0.9,
    damping=0.01,
    stats_decay=0.99,
    cold_steps=10,
    inverse_update_freq=10,
    max_grad_norm=0.5,
)


def mujoco_kfac() -> dict:
    """`acktr_optimizer` arguments of the `mujoco` preset's K-FAC
    (`agents.PRESETS`): inverses every update, no momentum."""
    from agents import settings

    preset = settings("mujoco", "acktr")
    return {name: preset[name] for name in BASELINES_KFAC}


def build_agents(env):
    """name -> (agent, reference row for the ratio)."""
    import keras

    from agents import A2CAgent, AcktrAgent, acktr_optimizer
    from agents.networks import ActorCriticNetwork

    def network():
        return ActorCriticNetwork(env.observation_spec(), env.action_spec())

    specs = (env.time_step_spec(), env.action_spec())
    same = dict(gae_lambda=None, normalize_advantages=False)

    def a2c(critic):
        return A2CAgent(*specs, network(), value_optimizer=critic, **same)

    def acktr(critic, kfac=BASELINES_KFAC, **kwargs):
        return AcktrAgent(
            *specs,
            network(),
            acktr_optimizer(**kfac),
            value_optimizer=critic,
            **same,
            **kwargs,
        )

    def adam():
        return keras.optimizers.Adam(1e-3)

    return {
        "a2c": (a2c(None), "a2c"),
        "acktr": (acktr(None), "a2c"),
        "acktr, no guard": (acktr(None, max_kl_ratio=None), "a2c"),
        "a2c, adam critic": (a2c(adam()), "a2c, adam critic"),
        "acktr, adam critic": (acktr(adam()), "a2c, adam critic"),
        "acktr, adam critic, mujoco K-FAC": (
            acktr(adam(), mujoco_kfac()),
            "a2c, adam critic",
        ),
    }


def time_updates(env_id: str, repeats: int) -> dict:
    """name -> (mean seconds per update, reference row)."""
    import tensorflow as tf
    from tf_agents.environments import tf_py_environment

    from agents.envs import GymnasiumEnvironment
    from agents.rollout import RolloutCollector

    num_envs, n_steps = BATCHES[env_id]
    py_env = GymnasiumEnvironment(env_id, num_envs=num_envs, seed=0)
    env = tf_py_environment.TFPyEnvironment(py_env)
    agents = build_agents(env)
    experience = RolloutCollector(
        env, agents["a2c"][0].collect_policy, n_steps
    ).collect()
    py_env.close()
    trains = {name: tf.function(a.train) for name, (a, _) in agents.items()}
    for train in trains.values():
        for _ in range(20):
            train(experience)
    times = {name: [] for name in trains}
    for _ in range(repeats):
        for name, train in trains.items():
            start = time.perf_counter()
            train(experience).loss.numpy()
            times[name].append(time.perf_counter() - start)
    return {
        name: (statistics.mean(t), agents[name][1]) for name, t in times.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=200)
    args = parser.parse_args()
    one_thread()
    print("| batch | agent | ms per update | vs A2C, same critic |")
    print("|---|---|---|---|")
    for env_id, (num_envs, n_steps) in BATCHES.items():
        times = time_updates(env_id, args.repeats)
        for name, (seconds, reference) in times.items():
            ratio = seconds / times[reference][0]
            print(
                f"| {env_id} {num_envs} x {n_steps} | {name} | "
                f"{1e3 * seconds:.2f} | {ratio:.2f}x |"
            )


if __name__ == "__main__":
    main()
