"""Run episodes with an exported policy and print the mean and std return.

    python -m agents.evaluate runs/acktr-CartPole-v1-seed0
    python -m agents.evaluate runs/acktr-CartPole-v1-seed0/policy \
        --env CartPole-v1
    python -m agents.evaluate runs/acktr-CartPole-v1-seed0 --stochastic \
        --video cartpole.gif

The greedy policy (`policy/`) takes the most likely action (a Gaussian
policy's mean); `--stochastic` runs the sampling policy that collected the
training episodes (`collect_policy/`, beside it), so its returns are the
ones the training log shows. The two differ: a policy trained with
exploration noise can do better or worse without it. `--video` records the
first episode to a GIF (`rgb_array` rendering, offscreen, in a child
process; MuJoCo renders with `MUJOCO_GL=egl` unless the variable is set).

The policy is the `PolicySaver` SavedModel that `agents.train` writes. A
policy in a run directory (`RUN/policy`, `RUN/collect_policy` beside
`RUN/config.json`) sees the environment as it did in training: the run's
observation features (`time_feature`, `previous_observation`) are rebuilt,
and the environment is the run's unless `--env` names another (which must
then give the policy the same specs). A policy elsewhere needs `--env`
and is run without features.

This module imports TensorFlow, tf-agents, Gymnasium, NumPy and the
environment side of `agents` (`agents.env_factory`, `agents.spaces`,
`agents.replay`; `agents.config` to read `config.json`), never `keras_kfac`
or the training code. Observations and actions are converted as in
training (`agents.spaces`). An Atari game is preprocessed as in training,
played to the end of the game across its lives, and scored by its own,
unclipped, points.

Bad input (a policy directory that is missing, incomplete or corrupt, an
environment whose observation or action spec differs from the policy's, a
count out of range) is answered with one line on stderr and exit code 2.
"""

import glob
import os
import sys

import gymnasium
import numpy as np

from agents import spaces
from agents.arguments import ArgumentParser
from agents.config import read_config_file
from agents.env_factory import check_env_id, make_env
from agents.quiet import import_tensorflow
from agents.replay import play_step

tf = import_tensorflow()  # before tf-agents, which imports it too

from tf_agents.policies import py_tf_eager_policy  # noqa: E402
from tf_agents.trajectories import time_step as ts  # noqa: E402

# The settings of a run's config.json that change what its policy reads
# (keyword arguments of `agents.env_factory.make_env`).
OBSERVATION_FEATURES = ("time_feature", "previous_observation")
# What `PolicySaver.save` writes besides the variables' data shards.
_POLICY_FILES = (
    "saved_model.pb",
    "policy_specs.pbtxt",
    os.path.join("variables", "variables.index"),
)


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


def _check_policy_dir(policy_dir: str) -> None:
    """Raises `ValueError` unless `policy_dir` holds every exported file."""
    if not os.path.exists(policy_dir):
        raise ValueError(
            f"The policy directory does not exist. "
            f"Received: policy_dir={policy_dir!r}"
        )
    if not os.path.isdir(policy_dir):
        raise ValueError(
            f"The policy path is a file, not a directory. "
            f"Received: policy_dir={policy_dir!r}"
        )
    missing = [
        name
        for name in _POLICY_FILES
        if not os.path.isfile(os.path.join(policy_dir, name))
    ]
    # The shards are `variables.data-00000-of-0000N`, N of them.
    pattern = os.path.join(policy_dir, "variables", "variables.data-*-of-*")
    shards = sorted(glob.glob(pattern))
    count = int(shards[0].rsplit("-of-", 1)[1]) if shards else 1
    for i in range(count):
        name = os.path.join(
            "variables", f"variables.data-{i:05d}-of-{count:05d}"
        )
        if not os.path.isfile(os.path.join(policy_dir, name)):
            missing.append(name)
    if missing:
        raise ValueError(
            f"The policy directory is not a complete PolicySaver export: "
            f"{', '.join(missing)} missing. Received: policy_dir={policy_dir!r}"
        )


def resolve_policy_dir(path: str, stochastic: bool = False) -> str:
    """The SavedModel to run: `path` itself, or for a run directory of
    `agents.train` its `policy/` (`collect_policy/` if `stochastic`); with
    `stochastic`, a `policy/` directory is replaced by the `collect_policy/`
    beside it. Raises `ValueError` when the sampling policy is not there."""
    if os.path.isdir(os.path.join(path, "policy")):
        return os.path.join(path, "collect_policy" if stochastic else "policy")
    if not stochastic or os.path.basename(os.path.normpath(path)) == (
        "collect_policy"
    ):
        return path
    sibling = os.path.join(
        os.path.dirname(os.path.normpath(path)), "collect_policy"
    )
    if not os.path.isdir(sibling):
        raise ValueError(
            "--stochastic runs the sampling policy that agents.train exports "
            f"as collect_policy/ beside policy/; there is none at {sibling!r}. "
            f"Received: policy_dir={path!r}"
        )
    return sibling


def _check_video_path(path: str) -> None:
    if not path.lower().endswith(".gif"):
        raise ValueError(
            f"video is written as a GIF; give a path ending in .gif. "
            f"Received: video={path!r}"
        )
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise ValueError(
            f"The video's directory does not exist. Received: video={path!r}"
        )


def _record(env_id: str, seed: int, actions: list, total: float, path: str):
    """Renders the episode reset with `seed` that took `actions` and earned
    `total` into the GIF `path`, in a child process (`agents.replay`); raises
    `ValueError` if it cannot render or its replay earns another return.

    The child writes a temporary file beside `path`, which replaces `path`
    only once the replay is checked: a GIF already there survives a failed,
    killed or interrupted recording."""
    import subprocess
    import tempfile

    directory, name = os.path.split(os.path.abspath(path))
    handle, partial = tempfile.mkstemp(prefix=f".{name}.", dir=directory)
    os.close(handle)
    try:
        with tempfile.TemporaryDirectory() as scratch:
            actions_file = os.path.join(scratch, "actions.npy")
            np.save(actions_file, np.array(actions))
            child = subprocess.run(
                [sys.executable, "-m", "agents.replay", env_id, str(seed)]
                + [actions_file, partial],
                capture_output=True,
                text=True,
                env={
                    **os.environ,
                    "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl"),
                },
            )
        _check_replay(child, env_id, total)
        os.replace(partial, path)
    finally:
        if os.path.exists(partial):
            os.remove(partial)


def _check_replay(child, env_id: str, total: float) -> None:
    """Raises `ValueError` unless the replay process rendered the episode
    and earned its return `total`."""
    if child.returncode < 0:
        raise ValueError(
            f"The replay that renders the video was stopped by signal "
            f"{-child.returncode}; no video was written. Received: "
            f"env={env_id!r}"
        )
    if child.returncode != 0:
        lines = child.stderr.strip().splitlines() or [
            f"exit {child.returncode}"
        ]
        raise ValueError(
            f"The environment could not render the episode ({lines[-1]}); "
            "MuJoCo renders offscreen with MUJOCO_GL=egl or osmesa and its "
            f"library. Received: env={env_id!r}"
        )
    replayed = float(child.stdout.strip().splitlines()[-1])
    if not np.isclose(replayed, total, rtol=1e-6, atol=1e-6):
        raise ValueError(
            f"The replayed episode earned {replayed}, the recorded one "
            f"{total}: the environment does not replay from its reset seed "
            f"and actions, so the video would show another episode. "
            f"Received: env={env_id!r}"
        )


def _load_policy(
    policy_dir: str,
) -> py_tf_eager_policy.SavedModelPyTFEagerPolicy:
    """Loads the policy; raises `ValueError` if a file of it is corrupt."""
    _check_policy_dir(policy_dir)
    try:
        # TensorFlow loads a SavedModel with a corrupt fingerprint.pb but
        # logs a traceback; an older export may have none at all.
        if os.path.exists(os.path.join(policy_dir, "fingerprint.pb")):
            tf.saved_model.experimental.read_fingerprint(policy_dir)
        return py_tf_eager_policy.SavedModelPyTFEagerPolicy(
            policy_dir, load_specs_from_pbtxt=True, batch_time_steps=False
        )
    # A truncated or corrupt file fails wherever the reader stops making
    # sense: OSError, tf.errors.OpError, IndexError, KeyError, protobuf's
    # ParseError, UnicodeDecodeError, RuntimeError, ... all mean the same.
    except Exception as error:
        raise ValueError(
            f"Cannot load the policy, a file of it is corrupt or truncated "
            f"({_first_line(error)}). Received: policy_dir={policy_dir!r}"
        ) from error


def _specs(observation, action) -> tuple[tuple, tuple]:
    """An observation and an action spec (a policy's `TensorSpec`s or
    `agents.spaces.Spec`s) in a form to compare and print: `(dtype,
    shape)` and `("Discrete", n)` (`n` integer actions from 0; a third
    entry is the smallest if not 0) or `("Box", shape, low, high)`."""
    observation = (np.dtype(observation.dtype).name, tuple(observation.shape))
    shape = tuple(action.shape)
    low, high = (
        np.broadcast_to(b, shape) for b in (action.minimum, action.maximum)
    )
    if np.issubdtype(action.dtype, np.integer) and shape == ():
        action = ("Discrete", int(high) - int(low) + 1)
        if int(low) != 0:
            action += (int(low),)
    else:
        # An export stores an infinite bound as float32's largest value.
        largest = float(np.finfo(np.float32).max)
        low, high = (
            tuple(np.clip(b.astype(np.float32), -largest, largest).tolist())
            for b in (low, high)
        )
        action = ("Box", shape, low, high)
    return observation, action


def _bound(values: tuple) -> str:
    if len(set(values)) == 1:
        return str(values[0])
    return np.array2string(np.array(values), threshold=6, separator=", ")


def _describe(specs: tuple[tuple, tuple]) -> str:
    """`specs` as `observation float32 (4,), action Discrete(2)`."""
    (dtype, shape), action = specs
    if action[0] == "Discrete":
        start = f", start={action[2]}" if len(action) > 2 else ""
        action = f"Discrete({action[1]}{start})"
    else:
        _, size, low, high = action
        action = f"Box({_bound(low)}, {_bound(high)}, {size}, float32)"
    return f"observation {dtype} {shape}, action {action}"


def _check_specs(policy, env: gymnasium.Env, policy_dir: str, env_id: str):
    """Raises `ValueError` unless the policy's specs are the ones
    `agents.spaces` gives `env`'s spaces."""
    expected = _specs(policy.time_step_spec.observation, policy.action_spec)
    given = _specs(
        spaces.observation_spec(env.observation_space),
        spaces.action_spec(env.action_space),
    )
    if expected != given:
        raise ValueError(
            "The policy's observation and action specs differ from the "
            f"environment's. Received: policy_dir={policy_dir!r} with "
            f"{_describe(expected)}; env={env_id!r} with {_describe(given)}"
        )


def _time_step(step_type, reward, discount, observation) -> ts.TimeStep:
    """A batch of one time step."""
    return ts.TimeStep(
        step_type=np.array([step_type], np.int32),
        reward=np.array([reward], np.float32),
        discount=np.array([discount], np.float32),
        observation=observation,
    )


def training_environment(policy_dir: str, env_id: str | None = None) -> dict:
    """The `agents.env_factory.make_env` arguments that show the policy in
    `policy_dir` its environment as training did.

    A policy in a run directory (`RUN/policy` or `RUN/collect_policy`
    beside `RUN/config.json`) gets the run's observation features, on the
    run's environment unless `env_id` names another. A policy elsewhere
    gets `env_id`, without features.

    Args:
        policy_dir: A `PolicySaver` SavedModel directory.
        env_id: A Gymnasium id, or `None` for the run's. Defaults to
            `None`.

    Returns:
        A dict of `env_id` and, for a run, `time_feature` and
        `previous_observation`.

    Raises:
        ValueError: If `config.json` cannot be read; if `env_id` is `None`
            and the policy is not in a run, or the run names no id or one
            that imports a module (`"module:Env-v0"`: a run directory is
            data, so importing what it names is left to an explicit
            `env_id`).
    """
    path = os.path.normpath(policy_dir)
    config_path = os.path.join(os.path.dirname(path), "config.json")
    in_run = os.path.basename(path) in ("policy", "collect_policy")
    if not (in_run and os.path.isfile(config_path)):
        if env_id is None:
            raise ValueError(
                "The policy is not in a run directory of agents.train (no "
                "config.json beside it); give the environment to run it "
                f"on. Received: policy_dir={policy_dir!r}, env=None"
            )
        return {"env_id": env_id}
    config = read_config_file(config_path)
    if env_id is None:
        env_id = config.get("env")
        if not isinstance(env_id, str):
            raise ValueError(
                f"{config_path} names no environment; give one. "
                f"Received: env={env_id!r}"
            )
        if ":" in env_id:
            raise ValueError(
                f"{config_path} names an environment whose module only an "
                f"explicit --env imports; pass --env {env_id} to run it. "
                f"Received: env=None"
            )
    features = {name: bool(config.get(name)) for name in OBSERVATION_FEATURES}
    return {"env_id": env_id, **features}


def _play_episode(policy, env: gymnasium.Env, seed: int, actions) -> float:
    """The return of one episode of `policy` in `env`, reset with `seed`;
    appends the environment's actions to `actions` unless it is `None`."""
    observation, _ = env.reset(seed=seed)
    step_type, reward, discount = ts.StepType.FIRST, 0.0, 1.0
    total, done = 0.0, False
    while not done:
        time_step = _time_step(
            step_type,
            reward,
            discount,
            spaces.encode_observations(
                env.observation_space, np.asarray(observation)[None]
            ),
        )
        action = spaces.env_actions(
            env.action_space, policy.action(time_step).action
        )[0]
        observation, reward, terminated, truncated = play_step(env, action)
        if actions is not None:
            actions.append(action)
        total += float(reward)
        done = terminated or truncated
        step_type = ts.StepType.LAST if done else ts.StepType.MID
        discount = 0.0 if terminated else 1.0
    return total


def evaluate(
    policy_dir: str,
    env_id: str | None = None,
    episodes: int = 10,
    seed: int = 0,
    video: str | None = None,
) -> np.ndarray:
    """Returns of `episodes` episodes of the SavedModel policy in `policy_dir`.

    The environment shows the policy what training showed it
    (`training_environment`).

    Args:
        policy_dir: A `PolicySaver` SavedModel directory.
        env_id: A Gymnasium id; `"module:Env-v0"` imports `module` first.
            `None` takes the run's, for a policy in a run directory.
            Defaults to `None`.
        episodes: Number of episodes, at least 1. Defaults to `10`.
        seed: Episode `i` is reset with seed `seed + i`; at least 0.
            Defaults to `0`.
        video: Path of a GIF to record the first episode to, or `None`.
            A child process without TensorFlow replays the episode's
            actions from its reset seed with `rgb_array` rendering, and the
            replay must earn the same return. Defaults to `None`.

    Raises:
        ValueError: If an argument is out of range, `env_id` is unknown
            (or `None` outside a run), `policy_dir` is missing, incomplete
            or corrupt, its run's `config.json` unreadable, or the
            policy's observation or action spec differs from the
            environment's.
    """
    if episodes < 1:
        raise ValueError(
            f"episodes must be >= 1. Received: episodes={episodes}"
        )
    if seed < 0:
        raise ValueError(f"seed must be >= 0. Received: seed={seed}")
    if video is not None:
        _check_video_path(video)
    policy = _load_policy(policy_dir)
    environment = training_environment(policy_dir, env_id)
    env_id = environment["env_id"]
    check_env_id(env_id, name="env")
    env = make_env(**environment)
    returns = []
    try:
        _check_specs(policy, env, policy_dir, env_id)
        for episode in range(episodes):
            recording = video is not None and episode == 0
            actions = [] if recording else None
            total = _play_episode(policy, env, seed + episode, actions)
            returns.append(total)
            if recording:
                _record(env_id, seed, actions, total, video)
    finally:
        env.close()
    return np.array(returns)


def main(argv=None) -> int:
    parser = ArgumentParser(
        prog="python -m agents.evaluate", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "policy_dir",
        help="a PolicySaver SavedModel directory, or a run directory of "
        "agents.train (its policy/)",
    )
    parser.add_argument(
        "--env",
        help="a Gymnasium id; defaults to the run's (config.json) for a "
        "policy in a run directory",
    )
    parser.add_argument("--episodes", type=int, default=10)
    parser.add_argument("--seed", type=int, default=1000)
    parser.add_argument(
        "--stochastic",
        action="store_true",
        help="run the sampling policy (collect_policy/), as in training",
    )
    parser.add_argument(
        "--video", help="record the first episode to this GIF file"
    )
    args = parser.parse_args(argv)
    try:
        policy_dir = resolve_policy_dir(args.policy_dir, args.stochastic)
        returns = evaluate(
            policy_dir, args.env, args.episodes, args.seed, args.video
        )
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    env_id = training_environment(policy_dir, args.env)["env_id"]
    kind = (
        "the sampling policy, as in training"
        if args.stochastic
        else "the greedy policy: the most likely action, where training "
        "sampled; --stochastic runs the sampling one"
    )
    print(
        f"{env_id}: mean return {returns.mean():.2f} ± {returns.std():.2f} "
        f"over {len(returns)} episodes of {kind}"
    )
    if args.video is not None:
        print(f"wrote the first episode to {args.video}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
