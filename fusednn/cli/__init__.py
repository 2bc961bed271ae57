"""The ``fusednn`` command line: ``fusednn train ...`` (also ``python -m fusednn train ...``).

``train`` loads a data set, holds out a seeded, stratified test split and a
validation split, scales the features on the training rows, trains an MLP with
:func:`fusednn.nn.fit`, prints progress, then the test metrics, the classification
report and the confusion matrix, and writes to ``--out``:

* ``checkpoint.npz``: model, optimizer, epoch counter, scaler, history and the run's settings (every epoch);
* ``metrics.json``: the per-epoch history, the test metrics and the confusion matrix, as strict JSON
  (``null`` stands for a value that was not finite);
* ``curves.png``: training and validation loss and accuracy per epoch.

A fresh run refuses an ``--out`` that already holds a checkpoint, unless ``--overwrite``.
``--resume`` continues a run from its checkpoint up to ``--epochs`` epochs in total, with
the run's saved settings: flags left out keep their saved values, so ``--resume
<out>/checkpoint.npz`` alone finishes an interrupted run with the weights an uninterrupted
one would have had. A flag that would change what the saved run computes is refused
rather than ignored; ``--epochs``, ``--device``, ``--out``, ``--no-progress`` and
``--overwrite`` may change.

Every failure a user can cause ends with one line on stderr and an exit status of its kind
(a traceback means a bug in fusednn):

    0  the run finished and its outputs are written
    1  training diverged: a loss or the weights became NaN or infinite
    2  a flag has a bad value, or flags contradict each other
    3  --data cannot be loaded, or it does not fit --task, the splits or the model
    4  --resume: the checkpoint is unreadable, malformed, or conflicts with the flags or data
    5  --out cannot be written (read-only, full disk, a file or directory in the way), or holds a checkpoint
    6  --device names a device this machine cannot use
    7  the host or the device ran out of memory
   70  --distributed: a rank failed mid-epoch, printed its error and aborted every rank
  130  interrupted (Ctrl-C); what was saved is said on the way out
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from .errors import ExitStatus
from .flags import BASE_BATCH, FlagError, build_parsers, given_flags
from .run import train

__all__ = ["BASE_BATCH", "ExitStatus", "build_parser", "main", "train"]


def _parsers() -> tuple[argparse.ArgumentParser, argparse.ArgumentParser]:
    return build_parsers(__doc__.split("\n\n")[1])


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``fusednn`` and its ``train`` command."""
    return _parsers()[0]


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``fusednn`` console script; returns the exit status.

    Bad flag values end as argparse ends them (usage, one error line,
    ``SystemExit(2)``); every other failure returns its :class:`ExitStatus`.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    parser, train_parser = _parsers()
    try:
        args = parser.parse_args(argv)
        given = given_flags(argv)
    except FlagError as error:
        argparse.ArgumentParser.error(error.parser, str(error))  # usage, one line, exit status 2
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    return train(args, train_parser, given)
