"""Run episodes with an exported policy and print the mean and std return.

    python -m agents.evaluate runs/acktr-CartPole-v1-seed0/policy --env CartPole-v1

The policy is the `PolicySaver` SavedModel that `agents.train` writes. This
module imports only TensorFlow, tf-agents, Gymnasium and NumPy, never
`keras_kfac` or the rest of `agents`: an exported policy runs anywhere those
are installed (it can also be run as a plain script, `python evaluate.py`).
Observations are converted as `agents.envs` converts them (float32; uint8
images kept; Discrete one-hot), and Box actions clipped to the bounds.
"""

import argparse
import importlib
import sys

import gymnasium
import numpy as np
from tf_agents.policies import py_tf_eager_policy
from tf_agents.trajectories import time_step as ts


def _make_env(env_id: str) -> gymnasium.Env:
    if ":" in env_id:  # "module:Env-v0" registers Env-v0 by importing module
        module, env_id = env_id.split(":", 1)
        importlib.import_module(module)
    if env_id not in gymnasium.registry:
        raise ValueError(
            f"Unknown Gymnasium environment id. Received: env={env_id!r}"
        )
    return gymnasium.make(env_id)


def _observation(space: gymnasium.Space, observation, dtype) -> np.ndarray:
    if isinstance(space, gymnasium.spaces.Discrete):
        one_hot = np.zeros((1, space.n), np.float32)
        one_hot[0, observation - space.start] = 1.0
        return one_hot
    return np.asarray(observation, dtype)[None]


def _time_step(step_type, reward, discount, observation) -> ts.TimeStep:
    """A batch of one time step."""
    return ts.TimeStep(
        step_type=np.array([step_type], np.int32),
        reward=np.array([reward], np.float32),
        discount=np.array([discount], np.float32),
        observation=observation,
    )


def evaluate(
    policy_dir: str, env_id: str, episodes: int = 10, seed: int = 0
) -> np.ndarray:
    """Returns of `episodes` episodes of the SavedModel policy in `policy_dir`."""
    if episodes < 1:
        raise ValueError(
            f"episodes must be >= 1. Received: episodes={episodes}"
        )
    env = _make_env(env_id)
    policy = py_tf_eager_policy.SavedModelPyTFEagerPolicy(
        policy_dir, load_specs_from_pbtxt=True, batch_time_steps=False
    )
    dtype = policy.time_step_spec.observation.dtype
    space = env.action_space
    returns = []
    try:
        for episode in range(episodes):
            observation, _ = env.reset(seed=seed + episode)
            time_step = _time_step(
                ts.StepType.FIRST,
                0.0,
                1.0,
                _observation(env.observation_space, observation, dtype),
            )
            total, done = 0.0, False
            while not done:
                action = policy.action(time_step).action[0]
                if isinstance(space, gymnasium.spaces.Discrete):
                    action = int(action) + int(space.start)
                else:
                    action = np.clip(action, space.low, space.high)
                observation, reward, terminated, truncated, _ = env.step(action)
                total += float(reward)
                done = terminated or truncated
                time_step = _time_step(
                    ts.StepType.LAST if done else ts.StepType.MID,
                    reward,
                    0.0 if terminated else 1.0,
                    _observation(env.observation_space, observation, dtype),
                )
            returns.append(total)
    finally:
        env.close()
    return np.array(returns)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m agents.evaluate", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("policy_dir", help="a PolicySaver SavedModel directory")
    parser.add_argument("--env", required=True, help="a Gymnasium id")
    parser.add_argument("--episodes", type=int, default=10)
    parser.add_argument("--seed", type=int, default=1000)
    args = parser.parse_args(argv)
    try:
        returns = evaluate(args.policy_dir, args.env, args.episodes, args.seed)
    except (ValueError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(
        f"{args.env}: mean return {returns.mean():.2f} ± {returns.std():.2f} "
        f"over {len(returns)} episodes"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
