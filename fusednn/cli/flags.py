"""The flags of ``fusednn train``: the parser, which flags a user typed, and a run's saved record of them.

A checkpoint written by ``fusednn train`` keeps its run's settings as ``args``, the
parsed flags as a JSON dict. :func:`parse_record` reads such a record back through
the same parser, so a saved value passes the same checks a typed one does and a
record that does not describe a run is rejected rather than half-used.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable, Sequence
from typing import Any

import fusednn

from .. import nn
from ..nn import schedules
from ..nn.data import BUILTIN_DATASETS, SCALERS, TASKS
from .errors import exit_status_table

BASE_BATCH = 256
"""The batch size ``--lr-scaling linear`` scales the learning rate from (Goyal et al., 2017)."""


MAY_CHANGE_ON_RESUME = frozenset(
    {"epochs", "device", "epoch_path", "distributed", "out", "overwrite", "resume", "no_progress"}
)
"""Flags a resumed run may set anew: how long, where and how verbosely it runs, not what it computes.

A run resumed on another number of ranks keeps its global batch (see :func:`fusednn.cli.resume.settings`).
"""

NOT_FROM_THE_RECORD = frozenset({"device", "epoch_path", "distributed", "overwrite", "resume", "no_progress"})
"""Flags a resumed run takes from its own command line (given or default), never from the saved record."""


DISTRIBUTED = ("mpi", "nccl")
"""``--distributed`` choices: :data:`fusednn.distributed.KINDS`, named here so that parsing imports nothing of it."""


class FlagError(Exception):
    """A flag's value failed the parser's checks; ``parser`` is the (sub)parser that found it."""

    def __init__(self, parser: argparse.ArgumentParser, message: str) -> None:
        super().__init__(message)
        self.parser = parser


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors raise :class:`FlagError` instead of exiting.

    :func:`fusednn.cli.main` prints them as argparse does (usage, one error line, exit
    status 2); a saved record that fails the same checks is a malformed checkpoint.
    """

    def error(self, message: str):  # type: ignore[no-untyped-def]  # argparse declares NoReturn
        raise FlagError(self, message)


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults in the help, and the description and epilog (the exit-status table) as written."""


def _integer_from(least: int, expected: str) -> Callable[[str], int]:
    """An argparse ``type`` for integers >= ``least``; ``expected`` is how its errors describe them."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
        if value < least:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {value}")
        return value

    return parse


_positive_int = _integer_from(1, "a positive integer")
_non_negative_int = _integer_from(0, "an integer >= 0")


def _non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not (value >= 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0, got {text}")
    return value


def _positive_float(text: str) -> float:
    value = _non_negative_float(text)
    if value == 0:
        raise argparse.ArgumentTypeError("expected a number > 0, got 0")
    return value


def _fraction(text: str) -> float:
    value = _non_negative_float(text)
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"expected a fraction strictly between 0 and 1, got {text}")
    return value


def _sizes(text: str) -> list[int]:
    try:
        sizes = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated layer widths such as 128,128, got {text!r}"
        ) from None
    if any(size < 1 for size in sizes):
        raise argparse.ArgumentTypeError(f"layer widths must be positive, got {text!r}")
    return sizes


def build_parsers(description: str) -> tuple[argparse.ArgumentParser, argparse.ArgumentParser]:
    """The ``fusednn`` parser and its ``train`` subparser (described by ``description``)."""
    parser = _Parser(prog="fusednn", description="Train neural networks with fused kernels.")
    parser.add_argument("--version", action="version", version=f"fusednn {fusednn.__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)
    train = commands.add_parser(
        "train",
        help="train an MLP classifier (or regressor) and report test metrics",
        description=description,
        epilog=f"exit status:\n{exit_status_table()}",
        formatter_class=_HelpFormatter,
    )
    data = train.add_argument_group("data")
    data.add_argument(
        "--data",
        default="digits",
        help=f"built-in data set ({', '.join(BUILTIN_DATASETS)}) or a path: .npz, .npy/.csv (last column = label), "
        "an MNIST directory, or an IDX images file with --labels",
    )
    data.add_argument("--labels", help="IDX labels file that goes with an IDX images file given to --data")
    data.add_argument(
        "--task",
        choices=TASKS,
        default="auto",
        help="what the targets are; auto: integer targets (a CSV's whole-number label column) are class labels, "
        "other targets regression targets",
    )
    data.add_argument("--rows", type=_positive_int, help="rows to generate for xor/synthetic")
    data.add_argument("--features", type=_positive_int, help="features of the synthetic data set (default 32)")
    data.add_argument("--classes", type=_positive_int, help="classes of the synthetic data set (default 10)")
    data.add_argument("--test-split", type=_fraction, default=0.2, help="fraction held out for the final test")
    data.add_argument("--val-split", type=_fraction, default=0.1, help="fraction of the rest used for validation")
    data.add_argument("--scale", choices=[*SCALERS, "none"], default="standard", help="feature scaling")

    model = train.add_argument_group("model")
    model.add_argument("--hidden", type=_sizes, default=[128, 128], help="hidden layer widths, comma-separated")
    model.add_argument("--activation", default="relu", choices=fusednn.ACTIVATIONS, help="hidden activation")
    model.add_argument("--dtype", choices=["float32", "float64"], default="float32", help="compute dtype")
    model.add_argument(
        "--device", default=None, help="numpy, cpu, cuda, cuda:N or auto (default: $FUSEDNN_DEVICE or cpu)"
    )
    model.add_argument(
        "--epoch-path",
        choices=list(nn.EPOCH_PATHS),
        default="auto",
        help="auto: compiled epochs where the device has them, per step while they first compile; "
        "compiled: wait for them (every epoch one path); per-step: never compile them",
    )
    model.add_argument(
        "--distributed",
        choices=list(DISTRIBUTED),
        default=None,
        help="train data-parallel over the ranks mpiexec starts (mpiexec -n N fusednn train ...): mpi on any "
        "device, nccl on one GPU per rank (--device cuda picks each rank's own); --batch-size is each rank's",
    )

    opt = train.add_argument_group("optimisation")
    opt.add_argument("--optimizer", choices=list(nn.OPTIMIZERS), default="adam", help="optimizer")
    opt.add_argument(
        "--lr",
        type=_positive_float,
        default=2e-3,
        help="learning rate; with --lr-scaling linear, the rate for a batch of 256 rows",
    )
    opt.add_argument("--momentum", type=_non_negative_float, default=None, help="momentum for sgd/rmsprop/lars")
    opt.add_argument(
        "--weight-decay",
        type=_non_negative_float,
        default=0.0,
        help="weight decay in the optimizer (L2 in the gradient; decoupled for adamw)",
    )
    opt.add_argument("--epochs", type=_positive_int, default=20, help="epochs in total (a resumed run finishes these)")
    opt.add_argument("--batch-size", type=_positive_int, default=64, help="rows per (micro-)batch")
    opt.add_argument("--accumulate", type=_positive_int, default=1, help="micro-batches per optimizer step")
    opt.add_argument(
        "--lr-scaling",
        choices=["none", "linear"],
        default="none",
        help=f"linear: multiply --lr by batch-size * accumulate / {BASE_BATCH}",
    )
    opt.add_argument("--warmup-epochs", type=_non_negative_float, default=0.0, help="linear learning-rate warm-up")
    opt.add_argument(
        "--schedule",
        choices=list(schedules.SCHEDULES),
        default="constant",
        help="learning-rate decay: step multiplies by 0.1 every third of --epochs, cosine anneals to 0 over --epochs",
    )
    opt.add_argument(
        "--early-stopping",
        type=_positive_int,
        default=None,
        metavar="PATIENCE",
        help="stop when val_loss has not improved for PATIENCE epochs; keep the best weights",
    )
    opt.add_argument(
        "--seed", type=_non_negative_int, default=0, help="seed of the splits, the weights and the batch order"
    )

    run = train.add_argument_group("output")
    run.add_argument("--out", default=None, help="output directory (default: runs/<data set name>)")
    run.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the checkpoint a fresh run finds in --out (without it the run refuses to start)",
    )
    run.add_argument(
        "--resume",
        default=None,
        metavar="PATH",
        help="continue the run saved in this checkpoint up to --epochs, with its saved settings: "
        "flags not given keep their saved values, and a given flag that differs is refused; "
        f"{_flags(MAY_CHANGE_ON_RESUME - NOT_FROM_THE_RECORD)} may change, and "
        f"{_flags(NOT_FROM_THE_RECORD - {'resume'})} apply to this run only",
    )
    run.add_argument("--no-progress", action="store_true", help="no progress bar (log lines only)")
    return parser, train


def _flag(dest: str) -> str:
    return "--" + dest.replace("_", "-")


def _flags(dests: set[str] | frozenset[str]) -> str:
    """``--a, --b and --c``."""
    names = sorted(_flag(dest) for dest in dests)
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"


def given_flags(argv: Sequence[str]) -> set[str]:
    """The ``train`` flags (their ``dest`` names) that ``argv`` sets, as opposed to their defaults.

    ``argv`` is parsed a second time by a parser whose defaults are suppressed, so
    only the flags present in ``argv`` appear in the result.
    """
    parser, train = build_parsers("")
    for action in train._actions:
        action.default = argparse.SUPPRESS
    return set(vars(parser.parse_args(list(argv)))) - {"command"}


def format_value(value: Any) -> str:
    """A parsed flag value as it would be typed (``[128, 128]`` becomes ``128,128``)."""
    if isinstance(value, list):
        return ",".join(str(item) for item in value)
    return str(value)


def describe(dest: str, value: Any) -> str:
    """``--flag value`` as a user would type it."""
    return _flag(dest) if value is True else f"{_flag(dest)} {format_value(value)}"


def parse_record(record: Any, train: argparse.ArgumentParser) -> argparse.Namespace:
    """A saved ``args`` record read back through the ``train`` parser, with its checks.

    Keys the parser does not know (``command``, or flags of a newer fusednn) are
    ignored; flags missing from the record (added since it was written) take their
    defaults, which is what the older fusednn that wrote it ran with.

    Raises:
        FlagError: a value fails the flag's checks, or ``record`` is not a dict.
    """
    if not isinstance(record, dict):
        raise FlagError(train, f"the saved args are a {type(record).__name__}, not a dict of flags")
    argv: list[str] = []
    for action in train._actions:
        if not action.option_strings or action.dest not in record or record[action.dest] is None:
            continue
        value = record[action.dest]
        if action.nargs == 0:  # a switch such as --no-progress
            if not isinstance(value, bool):
                raise FlagError(train, f"argument {action.option_strings[0]}: expected true or false, got {value!r}")
            argv += [action.option_strings[0]] if value else []
        elif isinstance(value, (dict, bool)) or (isinstance(value, list) and action.type is not _sizes):
            raise FlagError(train, f"argument {action.option_strings[0]}: invalid saved value {value!r}")
        else:
            argv.append(f"{action.option_strings[0]}={format_value(value)}")  # "=": a value may start with "-"
    return train.parse_args(argv)
