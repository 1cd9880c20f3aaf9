"""Train an agent on a Gymnasium environment from the command line: a thin
layer over the Python API (`agents.Config`, `agents.build.build`,
`agents.run`), whose options are `Config`'s fields.

    python -m agents.train --algo acktr --env CartPole-v1
    python -m agents.train --algo a2c --env CartPole-v1 --seed 1
    python -m agents.train --algo acktr --env CartPole-v1 --resume  # killed
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
- `.lock`: the pid of the process training there (one run per
  directory: it holds a lock on the directory itself);
- at the end, `policy/` and `collect_policy/` (`PolicySaver` SavedModels
  of the greedy policy and of the sampling one that collected the
  training episodes, which `python -m agents.evaluate` runs) and
  `learning_curve.png`.
"""

import argparse
import dataclasses
import os
import sys
import typing
import warnings

from agents.arguments import ArgumentParser
from agents.config import Config, read_config_file, value_type
from agents.presets import COMMON, FROM_PRESET, PRESETS

# The exit code after an aborted environment step: the thread that runs it
# may never return, so the process exits without waiting for it.
ABORTED = 131


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


def _integers(text: str) -> tuple[int, ...]:
    return tuple(int(u) for u in text.split(","))


def _or_none(parse: typing.Callable) -> typing.Callable:
    """`parse`, but `"none"` (any case) is `None`."""

    def parse_or_none(text: str):
        return None if text.lower() == "none" else parse(text)

    parse_or_none.__name__ = f"{parse.__name__} or 'none'"
    return parse_or_none


def _add_option(parser: argparse.ArgumentParser, field) -> None:
    """`field` of `Config` as an option: `--name` and its aliases, parsed
    as the field's type says; a `bool` a preset sets is `--x/--no-x`, any
    other `bool` a switch; a number that may be `None` also takes `none`."""
    spec = field.metadata["option"]
    flags = ["--" + field.name.replace("_", "-"), *spec.aliases]
    help_text = spec.describe()
    default = field.default
    if not (
        default is FROM_PRESET
        or default is None
        or isinstance(default, bool)
        or "default:" in help_text
    ):
        help_text = "; ".join(filter(None, [help_text, f"default: {default}"]))
    kind, optional = value_type(field)
    if kind is bool:
        action = (
            argparse.BooleanOptionalAction
            if field.default is FROM_PRESET
            else "store_true"
        )
        parser.add_argument(
            *flags, dest=field.name, action=action, help=help_text
        )
        return
    parse = {int: int, float: float, tuple[int, ...]: _integers}.get(kind, str)
    if optional and kind in (int, float):
        parse = _or_none(parse)
    parser.add_argument(
        *flags,
        dest=field.name,
        type=parse,
        choices=spec.choices,
        help=help_text,
    )


def _check_used_by(algo: str, given: dict) -> None:
    """Raises `ValueError` for an option given on the command line that
    `algo` does not take (`Option.algos`), naming the option and the
    algorithms that take it. A `--config` file may hold such settings
    (a run's `config.json` holds every field): those are kept and
    ignored."""
    for name, value in given.items():
        option = Config.__dataclass_fields__[name].metadata["option"]
        if algo not in option.algos:
            flag = "--" + name.replace("_", "-")
            raise ValueError(
                f"{flag} is not a setting of {algo} (only of "
                f"{', '.join(option.algos)}). Received: {flag} {value} "
                f"with algo {algo}"
            )


def parse_args(argv=None) -> tuple[Config, argparse.Namespace]:
    """`(Config, namespace)`: the `Config` of the options given (over the
    settings of `--config`'s file), the others left to the preset, and
    the namespace of `--resume`, `--no-progress` and `given`, the names of
    the fields set."""
    parser = ArgumentParser(
        prog="python -m agents.train",
        description=__doc__.split("\n\n")[0],
        argument_default=argparse.SUPPRESS,
        epilog=_presets_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    for field in dataclasses.fields(Config):
        _add_option(parser, field)
    add = parser.add_argument
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
    on_command_line = {k: v for k, v in vars(args).items() if k in fields}
    given = dict(on_command_line)
    if "config" in args:
        given = {**read_config_file(args.config), **given}
    _check_used_by(given.get("algo", Config.algo), on_command_line)
    args.given = list(given)
    return Config(**given), args


def main(argv=None) -> int:
    """The command line; returns the exit code: 0 done, 1 stopped by a
    failure (the last checkpoint kept), 2 bad input (nothing written),
    130 interrupted, `ABORTED` stopped inside an environment step."""
    try:
        config, args = parse_args(argv)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    # Only now, so that --help and bad options answer without loading
    # TensorFlow, which loads here without its start-up notices.
    from agents.quiet import import_tensorflow

    import_tensorflow()
    from agents.envs import EnvironmentStepError
    from agents.training import (
        RunWriteError,
        TrainingAborted,
        TrainingInterrupted,
        run,
    )

    # AutoGraph's generated code compares with literals (`x is not ()`),
    # which Python flags once per traced function: not this project's code.
    warnings.filterwarnings("ignore", '"is not" with a literal', SyntaxWarning)
    try:
        summary = run(
            config,
            resume=args.resume,
            progress=not args.no_progress,
            on_start=lambda resolved: print(resolved.describe(), flush=True),
            given=args.given,
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
        print(aborted, file=sys.stderr)
        return ABORTED
    except KeyboardInterrupt:  # before training started (its handler's)
        print(
            "Interrupted while the environment or the agent was being "
            "built; no checkpoint was written by this process.",
            file=sys.stderr,
        )
        return 130
    print(summary.line())
    if summary.learned_nothing:
        print(
            f"error: every one of the {summary.updates} updates was skipped "
            "(NaN/Inf in the batch): the policy learned nothing. Check the "
            "rewards' and observations' scale and the settings.",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    code = main()
    if code == ABORTED:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)
