"""Train an agent on a Gymnasium environment from the command line: a thin
layer over the Python API (`agents.config.Config`, `agents.build.build`,
`agents.training.run`), whose names it re-exports.

    python -m agents.train --algo acktr --env CartPole-v1
    python -m agents.train --algo a2c --env CartPole-v1 --seed 1
    python -m agents.train --algo acktr --env CartPole-v1 --resume   # after a kill
    python -m agents.train --algo trpo --env CartPole-v1
    python -m agents.train --algo acktr --preset mujoco --env HalfCheetah-v5

`--preset` picks the settings of every option not given
(`agents.presets.PRESETS`): `default` (the discrete-action settings),
`mujoco` (the ACKTR paper's continuous-control settings) or `atari` (its
Atari settings); the default, `auto`, takes `atari` for an Atari game,
`mujoco` for a `Box` action space and `default` otherwise.
The command line prints the settings it resolved before training.

Writes into `--logdir` (default `runs/<algo>-<env>-seed<seed>`):

- `config.json`: the run's full configuration;
- TensorBoard summaries against environment steps: episode return and
  length, the loss terms, entropy, KL, clip coefficient, steps/s;
- `episodes.csv`: every finished training episode;
- `checkpoints/`: periodic checkpoints (network, optimizer state, counters,
  the random states and the episodes under way); `--resume` continues from
  the newest one that reads, so that a killed and resumed run ends with the
  weights and episodes of an uninterrupted one;
- `.lock`: held while a process trains there (one run per directory);
- at the end, `policy/` and `collect_policy/` (`PolicySaver` SavedModels
  of the greedy policy and of the sampling one that collected the
  training episodes, which `python -m agents.evaluate` runs) and
  `learning_curve.png`.
"""

import argparse
import dataclasses
import os
import sys
import warnings

from agents.build import build
from agents.config import (
    FROM_PRESET,
    TARGET_KL_END,
    Config,
    Summary,
    differences,
    load_saved_config,
    read_config_file,
)
from agents.presets import (
    ALGORITHMS,
    AUTO,
    COMMON,
    CRITICS,
    PRESETS,
    preset_for,
    settings,
)
from agents.training import (
    RunWriteError,
    TrainingAborted,
    TrainingInterrupted,
    export_policy,
    run,
)

# Re-exported: `from agents.train import Config, run` works as well.
__all__ = [
    "ALGORITHMS",
    "AUTO",
    "COMMON",
    "CRITICS",
    "FROM_PRESET",
    "PRESETS",
    "TARGET_KL_END",
    "Config",
    "RunWriteError",
    "Summary",
    "TrainingAborted",
    "TrainingInterrupted",
    "build",
    "export_policy",
    "load_saved_config",
    "main",
    "parse_args",
    "preset_for",
    "read_config_file",
    "run",
    "settings",
]


def _optional_float(text: str) -> float | None:
    return None if text.lower() == "none" else float(text)


def _optional_int(text: str) -> int | None:
    return None if text.lower() == "none" else int(text)


def _presets_help() -> str:
    """The `--help` epilog: what every preset sets, per algorithm."""

    def listed(values: dict) -> str:
        return ", ".join(f"{key}={value}" for key, value in values.items())

    lines = [
        "presets (what an option not given takes):",
        f"  every preset, unless it says otherwise: {listed(COMMON)}",
    ]
    for preset, algos in PRESETS.items():
        for algo, values in algos.items():
            lines.append(f"  {preset}, {algo}: {listed(values)}")
    return "\n".join(lines)


def parse_args(argv=None) -> tuple[Config, argparse.Namespace]:
    """`(Config, namespace)`; options not given take the preset's value."""
    parser = argparse.ArgumentParser(
        prog="python -m agents.train",
        description=__doc__.split("\n\n")[0],
        argument_default=argparse.SUPPRESS,
        epilog=_presets_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add = parser.add_argument
    add("--algo", choices=ALGORITHMS, help="default: acktr")
    add("--env", help="a Gymnasium id; default: CartPole-v1")
    add(
        "--preset",
        choices=(AUTO, *PRESETS),
        help="the settings of every option not given (listed below); "
        "default: auto, which takes 'mujoco' for a Box action space and "
        "'default' otherwise",
    )
    add("--seed", type=int, help="default: 0")
    add(
        "--total-steps",
        "--steps",
        "--n-timesteps",
        "-n",
        dest="total_steps",
        type=int,
        help="environment steps; default: 100000; with --resume, the run's own",
    )
    add("--num-envs", type=int)
    add("--n-steps", type=int, help="steps per env per update")
    add(
        "--learning-rate",
        type=float,
        help="acktr: η_max; a2c: RMSprop's rate (trpo has none)",
    )
    add(
        "--critic",
        choices=CRITICS,
        help="how the value function is trained: fitted apart by Adam or by "
        "K-FAC Gauss-Newton steps, or in the policy's update (not trpo)",
    )
    add(
        "--value-learning-rate",
        type=float,
        help="the critic's rate (Adam's; K-FAC's η_max)",
    )
    add("--value-epochs", type=int, help="passes of the critic's fit per batch")
    add(
        "--value-minibatch-size",
        type=_optional_int,
        help="rows per step of the critic's fit; 'none': the whole batch",
    )
    add(
        "--lr-schedule",
        choices=("constant", "linear"),
        help="linear: the step size decays across the run, the learning "
        "rate to 0 or, with --target-kl, the target KL to a tenth",
    )
    add(
        "--target-kl",
        type=_optional_float,
        help="adapt the learning rate toward this KL per update (acktr, a2c)",
    )
    add(
        "--warm-start",
        action=argparse.BooleanOptionalAction,
        help="reach --target-kl in the first updates (square-root rule)",
    )
    add("--ent-coef", type=float)
    add("--vf-coef", type=float)
    add("--gamma", type=float)
    add(
        "--gae-lambda",
        type=_optional_float,
        help="GAE λ; 'none': n-step returns",
    )
    add("--normalize-advantages", action=argparse.BooleanOptionalAction)
    add("--max-grad-norm", type=_optional_float, help="'none': no clipping")
    add(
        "--kl-clip",
        type=float,
        help="acktr: the KL radius δ (baselines' kfac_clip = 2δ)",
    )
    add("--damping", type=float, help="acktr: K-FAC's; trpo: CG's")
    add("--inverse-update-freq", type=int, help="acktr: K-FAC's")
    add(
        "--cold-steps",
        type=int,
        help="acktr: first-order updates before K-FAC's first inverse",
    )
    add("--momentum", type=float, help="acktr: K-FAC's μ (v ← μv + (1-μ)ηΔ)")
    add(
        "--stats-decay",
        type=float,
        help="acktr: K-FAC's running-average decay of the factors A, G "
        "(0: the current batch's only)",
    )
    add("--vf-fisher-coef", type=float, help="acktr")
    add("--max-kl", type=float, help="trpo: the trust-region radius δ")
    add(
        "--max-kl-ratio",
        type=_optional_float,
        help="acktr: backtrack a step whose measured KL exceeds this times "
        "--kl-clip; 'none': no guard",
    )
    add(
        "--hidden-units",
        type=lambda s: tuple(int(u) for u in s.split(",")),
        help="comma-separated widths, e.g. 64,64",
    )
    add(
        "--initial-log-std",
        type=float,
        help="log σ of the Gaussian policy before training (Box actions; "
        "SB3's log_std_init)",
    )
    add("--shared-torso", action=argparse.BooleanOptionalAction)
    add("--normalize-observations", action=argparse.BooleanOptionalAction)
    add(
        "--time-feature",
        action=argparse.BooleanOptionalAction,
        help="append t/T (elapsed fraction of the time limit) to observations",
    )
    add(
        "--previous-observation",
        action=argparse.BooleanOptionalAction,
        help="append the previous observation to observations",
    )
    add(
        "--processes",
        action="store_true",
        help="one subprocess per env copy",
    )
    add(
        "--env-timeout",
        type=_optional_float,
        help="seconds an environment step may take before the run stops "
        "(keeping its last checkpoint); default: none",
    )
    add("--checkpoint-every", type=int, help="updates between checkpoints")
    add("--logdir", help="default: runs/<algo>-<env>-seed<seed>")
    add(
        "--resume",
        action="store_true",
        default=False,
        help="continue the run in --logdir",
    )
    add("--no-progress", action="store_true", default=False)
    add(
        "--config",
        help="a JSON object of settings (a run's config.json, say); the "
        "options given here override it",
    )
    args = parser.parse_args(argv)
    fields = {f.name for f in dataclasses.fields(Config)}
    given = {k: v for k, v in vars(args).items() if k in fields}
    if "config" in args:
        given = {**read_config_file(args.config), **given}
    config = Config(**given)
    if args.resume:
        config = _resumed_config(config, given)
    return config, args


def _resumed_config(config: Config, given: dict) -> Config:
    """The saved configuration of `config.logdir`, with `total_steps` if
    given; raises `ValueError` when another given option contradicts it."""
    saved = load_saved_config(config.logdir)
    differ = differences(config, saved, given)
    if differ:
        raise ValueError(
            "--resume continues the run as its config.json describes it; "
            "leave out the options that differ. Received: " + ", ".join(differ)
        )
    if "total_steps" in given:
        saved.total_steps = config.total_steps
    saved.logdir = config.logdir
    return saved


def main(argv=None) -> int:
    """The command line; returns the exit code: 0 done, 1 stopped by a
    failure (the last checkpoint kept), 2 bad input (nothing written),
    130 interrupted."""
    from agents.quiet import import_tensorflow

    import_tensorflow()  # without its start-up notices
    from agents.envs import EnvironmentStepError, check_env_id

    # AutoGraph's generated code compares with literals (`x is not ()`),
    # which Python flags once per traced function: not this project's code.
    warnings.filterwarnings("ignore", '"is not" with a literal', SyntaxWarning)
    try:
        config, args = parse_args(argv)
        check_env_id(config.env)
        summary = run(
            config,
            resume=args.resume,
            progress=not args.no_progress,
            on_start=lambda: print(config.describe(), flush=True),
        )
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except (EnvironmentStepError, RunWriteError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except TrainingInterrupted as interrupted:
        print(interrupted, file=sys.stderr)
        return 130
    except TrainingAborted as aborted:
        print(
            f"{aborted}; the last checkpoint is kept. Continue with --resume "
            f"--logdir {config.logdir}",
            file=sys.stderr,
        )
        return ABORTED
    print(summary.line())
    return 0


# The exit code after an aborted environment step: the thread that runs it
# may never return, so the process exits without waiting for it.
ABORTED = 131


if __name__ == "__main__":
    code = main()
    if code == ABORTED:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)
