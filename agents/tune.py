"""`python -m agents.tune`: Optuna's search over an algorithm's settings.

    python -m agents.tune --algo acktr --env Acrobot-v1 --trials 16 \\
        --total-steps 100000 --study runs/tune-acktr-Acrobot

Each trial trains one run (`agents.run`) in `STUDY/trial-N` with settings
that Optuna's TPE sampler draws from the algorithm's search space
(`SEARCH_SPACES`, or `--search-space FILE`) over the preset's others. The
run goes in `--stages` legs of equal length, each resuming the last one's
checkpoint; after each leg the trial reports the mean return of its last
100 episodes and Optuna's median pruner stops a trial below the median of
the earlier trials after the same leg. A trial's value is that mean at
its last step; legs end on whole batches, so a trial may run up to one
batch past `--total-steps`.

The study is the SQLite file `STUDY/study.db`. Several processes given the
same `--study` share it, each taking the next trial, until `--trials`
trials have finished or been pruned. A killed search resumes with the same
command: a trial whose process died is failed once its heartbeat is
stale (`GRACE_SECONDS`) and retried with its settings, from its run's
last checkpoint. The best trial's configuration is written to
`STUDY/best.json`, which `python -m agents.train --config` trains.

A search-space file is a JSON object of `Config` fields, each a list of
choices (`"n_steps": [32, 64, 128]`) or a log-uniform range
(`"kl_clip": {"log": [1e-4, 0.1]}`).
"""

import dataclasses
import json
import math
import os
import sys
import warnings

import numpy as np

from agents import episode_log, files
from agents.arguments import ArgumentParser
from agents.config import Config, resolve
from agents.presets import ALGORITHMS
from agents.run_directory import checkpointed_steps

# name -> a list of choices, or {"log": [low, high]}. Declared before any
# search ran; each holds the settings its algorithm's results turn on
# (BENCHMARKS.md, the ablations and the presets' notes).
SEARCH_SPACES = {
    "acktr": {
        "kl_clip": {"log": [1e-3, 0.1]},
        "damping": {"log": [1e-3, 1.0]},
        "n_steps": [32, 64, 128, 256],
        "gae_lambda": [0.9, 0.95, 0.98, 1.0],
        "ent_coef": [0.0, 0.001, 0.01],
    },
    "a2c": {
        "learning_rate": {"log": [1e-4, 3e-3]},
        "n_steps": [5, 16, 32, 128],
        "gae_lambda": [0.9, 0.95, 0.98, 1.0],
        "ent_coef": [0.0, 0.001, 0.01],
        "max_grad_norm": [0.5, 1.0, 5.0],
    },
    "trpo": {
        "max_kl": {"log": [1e-3, 0.1]},
        "damping": {"log": [1e-3, 1.0]},
        "n_steps": [32, 64, 128, 256],
        "gae_lambda": [0.9, 0.95, 0.98, 1.0],
        "value_learning_rate": {"log": [1e-4, 1e-2]},
    },
}
SEARCH_SPACES["npg"] = dict(SEARCH_SPACES["trpo"])
SEARCH_SPACES["reinforce"] = {
    "learning_rate": {"log": [1e-4, 1e-2]},
    "n_steps": [128, 256, 512, 1024],
    "ent_coef": [0.0, 0.001, 0.01],
    "value_learning_rate": {"log": [1e-4, 1e-2]},
}
SEARCH_SPACES["ppo"] = {
    "learning_rate": {"log": [1e-5, 3e-3]},
    "n_steps": [64, 128, 256, 512],
    "minibatch_size": [32, 64, 128, 256],
    "n_epochs": [4, 10, 20],
    "clip_range": [0.1, 0.2, 0.3],
    "gae_lambda": [0.9, 0.95, 0.98, 1.0],
    "ent_coef": [0.0, 0.001, 0.01],
}
HEARTBEAT_SECONDS = 30
GRACE_SECONDS = 120  # a trial silent this long is taken as dead
# Settings a search may not draw: they name the run, not the algorithm.
_NOT_SEARCHED = ("algo", "env", "seed", "total_steps", "logdir", "preset")


def check_search_space(space, algo: str, env: str = "CartPole-v1") -> dict:
    """`space`, checked: a dict of `Config` fields of `algo`, each a
    non-empty list of choices or `{"log": [low, high]}` with `0 < low <
    high`, every value one that `algo` takes on `env`; raises
    `ValueError` naming the first bad entry."""
    if not isinstance(space, dict) or not space:
        raise ValueError(
            "A search space is a non-empty JSON object of settings. "
            f"Received: {space!r}"
        )
    fields = {f.name for f in dataclasses.fields(Config)}
    for name, values in space.items():
        if name not in fields or name in _NOT_SEARCHED:
            raise ValueError(
                f"The search space names {name!r}, which is not a setting "
                f"a search can draw for {algo}."
            )
        if isinstance(values, dict):
            bounds = values.get("log")
            if (
                set(values) != {"log"}
                or not isinstance(bounds, list)
                or len(bounds) != 2
                or not all(isinstance(b, int | float) for b in bounds)
                or not 0 < bounds[0] < bounds[1]
            ):
                raise ValueError(
                    f'{name}: a range is {{"log": [low, high]}} with 0 < '
                    f"low < high. Received: {values!r}"
                )
        elif not isinstance(values, list) or not values:
            raise ValueError(
                f'{name}: give a list of choices or {{"log": [low, '
                f"high]}}. Received: {values!r}"
            )
    # Every value must be one the algorithm takes: the choices and the
    # ranges' ends build agents, whose checks name a bad one.
    from agents.build import build

    corners = max(
        len(v["log"] if isinstance(v, dict) else v) for v in space.values()
    )
    for corner in range(corners):
        settings = {
            name: _nth(
                values["log"] if isinstance(values, dict) else values, corner
            )
            for name, values in space.items()
        }
        py_env, _, _ = build(Config(algo=algo, env=env, **settings))
        py_env.close()
    return space


def _nth(values: list, k: int):
    return values[min(k, len(values) - 1)]


def sample(trial, space: dict) -> dict:
    """The settings `trial` draws from `space`."""
    settings = {}
    for name, values in space.items():
        if isinstance(values, dict):
            low, high = values["log"]
            settings[name] = trial.suggest_float(name, low, high, log=True)
        else:
            settings[name] = trial.suggest_categorical(name, values)
    return settings


def stage_ends(total_steps: int, stages: int, batch_steps: int) -> list[int]:
    """The steps at which a trial's `stages` legs end: `k / stages` of
    `total_steps` for leg `k`, rounded up to whole batches (two legs end
    together when a batch is longer than a leg)."""
    return [
        math.ceil(total_steps * k / stages / batch_steps) * batch_steps
        for k in range(1, stages + 1)
    ]


def mean_return_at(logdir: str, steps: int) -> float:
    """The mean return of the last 100 episodes the run in `logdir`
    finished by `steps` (NaN before its first)."""
    rows, _ = episode_log.read(os.path.join(logdir, "episodes.csv"))
    returns = [r for s, r, _, _ in rows if s <= steps][-100:]
    return float(np.mean(returns)) if returns else float("nan")


def trial_config(args, settings: dict, logdir: str | None = None) -> Config:
    """The run of a trial of the search `args` with `settings`."""
    return Config(
        algo=args.algo,
        env=args.env,
        seed=args.seed,
        total_steps=args.total_steps,
        logdir=logdir,
        **settings,
    )


class Objective:
    """Trains one trial's run in legs, reporting after each one; a retried
    trial continues the run of the trial it retries."""

    def __init__(self, args, space: dict):
        self._args = args
        self._space = space

    def __call__(self, trial) -> float:
        import optuna

        from agents.training import run

        args = self._args
        (frozen,) = [
            t
            for t in trial.study.get_trials(deepcopy=False)
            if t.number == trial.number
        ]
        with warnings.catch_warnings():  # experimental since Optuna 2.8
            warnings.simplefilter(
                "ignore", optuna.exceptions.ExperimentalWarning
            )
            retry = optuna.storages.RetryHeartbeatStaleTrialCallback
            retried = retry.retried_trial_number(frozen)
        logdir = os.path.join(
            args.study, f"trial-{trial.number if retried is None else retried}"
        )
        trial.set_user_attr("logdir", logdir)
        config = trial_config(args, sample(trial, self._space), logdir)
        checkpoints = os.path.join(logdir, "checkpoints")
        ends = stage_ends(
            args.total_steps, args.stages, resolve(config).batch_steps
        )
        for leg, end in enumerate(ends):
            done = checkpointed_steps(checkpoints)
            if done < end:
                run(
                    dataclasses.replace(config, total_steps=end),
                    resume=done > 0,
                    progress=False,
                )
            value = mean_return_at(logdir, end)
            # Reported at the leg's number: trials of other batch sizes
            # end their legs at other steps, and the pruner compares
            # trials at the same reported step.
            trial.report(value, leg + 1)
            if leg < len(ends) - 1 and trial.should_prune():
                raise optuna.TrialPruned()
        if not math.isfinite(value):
            raise ValueError(
                f"Trial {trial.number} finished no episode in {end} steps: "
                "raise --total-steps."
            )
        return value


def best_config(study, args) -> dict:
    """The configuration of the study's best trial, as `agents.train
    --config` reads it: every `Config` field but `logdir`."""
    config = resolve(trial_config(args, study.best_trial.params))
    values = dataclasses.asdict(config)
    del values["logdir"]
    return values


def parse_args(argv=None):
    parser = ArgumentParser(
        prog="python -m agents.tune", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--algo", choices=ALGORITHMS, default="acktr")
    parser.add_argument("--env", required=True, help="a Gymnasium id")
    parser.add_argument(
        "--study", required=True, help="the study's directory (resumable)"
    )
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument(
        "--total-steps", type=int, default=100_000, help="per trial"
    )
    parser.add_argument(
        "--stages", type=int, default=5, help="reports per trial (pruning)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--search-space", help="a JSON file of the settings to search"
    )
    return parser.parse_args(argv)


def _search_space(args) -> dict:
    if args.search_space is None:
        return SEARCH_SPACES[args.algo]
    try:
        with open(args.search_space) as file:
            space = json.load(file)
    except (OSError, ValueError) as error:
        raise ValueError(
            f"{args.search_space} cannot be read: {error}"
        ) from None
    return space


def main(argv=None) -> int:
    """The command line; returns 0, 2 on bad input (nothing written), 1
    when a trial's run failed and 130 when interrupted (the finished
    trials kept in both)."""
    args = parse_args(argv)
    from agents.quiet import held_back, import_tensorflow

    try:
        for name in ("trials", "total_steps", "stages"):
            if getattr(args, name) < 1:
                raise ValueError(
                    f"--{name.replace('_', '-')} must be >= 1. Received: "
                    f"{getattr(args, name)}"
                )
        space = _search_space(args)
        import_tensorflow()
        with held_back():  # TensorFlow's notice at the first int64 op
            check_search_space(space, args.algo, args.env)
        study = open_study(args)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    import optuna

    finished = (
        optuna.trial.TrialState.COMPLETE,
        optuna.trial.TrialState.PRUNED,
    )
    try:
        study.optimize(
            Objective(args, space),
            callbacks=[optuna.study.MaxTrialsCallback(args.trials, finished)],
            catch=(),
        )
    except KeyboardInterrupt:
        print(
            "Interrupted; the finished trials are kept. Run the same "
            "command to continue.",
            file=sys.stderr,
        )
        return 130
    except (ValueError, RuntimeError) as error:  # a run's own failure
        print(f"error: {error} (the finished trials are kept)", file=sys.stderr)
        return 1
    return report(study, args)


def open_study(args):
    """The study in `args.study`, created on the first call; raises
    `ValueError` for a storage that cannot be opened or a study of
    another algorithm or environment."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    os.makedirs(args.study, exist_ok=True)
    path = os.path.join(args.study, "study.db")
    try:
        storage = _storage(path)
        study = optuna.create_study(
            storage=storage,
            study_name="agents.tune",
            direction="maximize",
            pruner=optuna.pruners.MedianPruner(
                n_startup_trials=5, n_warmup_steps=0
            ),
            load_if_exists=True,
        )
    except Exception as error:  # SQLAlchemy's and Optuna's many errors
        raise ValueError(
            f"{path} cannot be opened as a study: {str(error).splitlines()[0]}"
        ) from None
    # Seeded by the trials so far, so that a process joining a running
    # search (or resuming one) does not repeat the settings of the first.
    study.sampler = optuna.samplers.TPESampler(
        seed=args.seed + len(study.trials)
    )
    target = {"algo": args.algo, "env": args.env, "seed": args.seed}
    saved = study.user_attrs.get("target")
    if saved is None:
        study.set_user_attr("target", target)
    elif saved != target:
        raise ValueError(
            f"{args.study} holds a study of {saved}, not of {target}: "
            "choose another --study."
        )
    return study


def _storage(path: str):
    """The SQLite storage at `path`, with the heartbeat that lets a later
    process fail and retry the trial of one that died."""
    import optuna

    with warnings.catch_warnings():  # the heartbeat is "experimental"
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.storages.RDBStorage(
            f"sqlite:///{os.path.abspath(path)}",
            heartbeat_interval=HEARTBEAT_SECONDS,
            grace_period=GRACE_SECONDS,
            heartbeat_stale_trial_callback=(
                optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=2)
            ),
        )


def report(study, args) -> int:
    import optuna

    complete = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    pruned = study.get_trials(states=(optuna.trial.TrialState.PRUNED,))
    if not complete:
        print(f"error: no trial of {args.study} finished", file=sys.stderr)
        return 1
    best = study.best_trial
    path = os.path.join(args.study, "best.json")
    values = best_config(study, args)
    files.replace_file(path, lambda f: json.dump(values, f, indent=2))
    print(
        f"{len(complete)} trials finished, {len(pruned)} pruned; the best, "
        f"trial {best.number} ({best.user_attrs.get('logdir')}), reached a "
        f"mean return of {best.value:.2f} with {best.params}. Wrote {path}: "
        f"python -m agents.train --config {path}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
