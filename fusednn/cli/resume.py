"""``--resume``: a saved run's settings, reconciled with the flags typed now, and its saved extras checked.

A resumed run is the saved run, continued. Its settings are the record the
checkpoint keeps (``args``); a flag left out of the command line takes its saved
value, not its default, so ``fusednn train --resume <out>/checkpoint.npz``
finishes a run exactly as started. A flag that is typed must agree with the record,
except those in :data:`~fusednn.cli.flags.MAY_CHANGE_ON_RESUME` (how long, where
and how verbosely to run): a flag that would change what the saved run computes
(its model, optimizer, data, split, scaling, schedule, seed) is refused, never
silently dropped. The saved scaler is always the one applied.

Every problem with the checkpoint is a :class:`~fusednn.cli.errors.CommandError`
with :attr:`~fusednn.cli.errors.ExitStatus.CHECKPOINT`.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

from .. import nn
from ..nn.data import SCALERS
from ..nn.hyperparameters import as_real
from .errors import CommandError, ExitStatus, failing_as
from .flags import MAY_CHANGE_ON_RESUME, NOT_FROM_THE_RECORD, FlagError, describe, parse_record


def load(path: str, device: str | None) -> nn.Checkpoint:
    """Read the checkpoint ``--resume`` names onto ``device``."""
    with failing_as(ExitStatus.CHECKPOINT, ValueError, TypeError, OSError, context="--resume"):
        checkpoint = nn.load(path, device=device)
    if checkpoint.optimizer is None:
        raise _malformed(path, "it holds no optimizer state")
    return checkpoint


def settings(
    args: argparse.Namespace,
    given: set[str],
    checkpoint: nn.Checkpoint,
    train: argparse.ArgumentParser,
    ranks: int = 1,
) -> argparse.Namespace:
    """The settings of the resumed run: the saved record, plus the flags typed now that may change.

    A run may resume on another number of ``ranks`` (``--distributed``) than it was saved
    by (the record's ``"ranks"``, 1 if absent): it keeps its global batch, ``--batch-size``
    times the ranks, so each rank's ``--batch-size`` becomes the global batch over ``ranks``.

    Raises:
        CommandError: the checkpoint has no record, a malformed one, one that does
            not describe the model it holds, a typed flag contradicts it, or the saved
            global batch does not split evenly over ``ranks``.
    """
    where = checkpoint.path
    if "args" not in checkpoint.extra:
        raise CommandError(
            ExitStatus.CHECKPOINT,
            f"--resume {where!r} was not written by fusednn train (it holds no saved 'args'), "
            "so the settings of its run are unknown",
        )
    try:
        record = parse_record(checkpoint.extra["args"], train)
    except FlagError as error:
        raise _malformed(where, f"its saved args do not parse: {error}") from None
    _check_record_describes_model(record, checkpoint)
    _share_global_batch(record, checkpoint.extra["args"], ranks, where)
    conflicts = [dest for dest in sorted(given - MAY_CHANGE_ON_RESUME) if not _same(dest, args, record)]
    if conflicts:
        typed = ", ".join(describe(dest, getattr(args, dest)) for dest in conflicts)
        saved = ", ".join(_describe_saved(dest, getattr(record, dest)) for dest in conflicts)
        one = len(conflicts) == 1
        raise CommandError(
            ExitStatus.CHECKPOINT,
            f"{typed} {'conflicts' if one else 'conflict'} with the run saved in {where!r} ({saved}): a resumed run "
            f"keeps its saved settings; drop {'the flag' if one else 'them'} to continue it, "
            "or start a new run without --resume",
        )
    merged = argparse.Namespace(**vars(record))
    for dest in NOT_FROM_THE_RECORD | (given & MAY_CHANGE_ON_RESUME):
        setattr(merged, dest, getattr(args, dest))
    return merged


def _share_global_batch(record: argparse.Namespace, saved: dict[str, Any], ranks: int, where: str) -> None:
    """Set the record's per-rank ``batch_size`` for ``ranks`` ranks, keeping the saved run's global batch."""
    saved_ranks = saved.get("ranks", 1)
    if isinstance(saved_ranks, bool) or not isinstance(saved_ranks, int) or saved_ranks < 1:
        raise _malformed(where, f"its saved args give {saved_ranks!r} ranks; expected a positive integer")
    if saved_ranks == ranks:
        return
    global_batch = record.batch_size * saved_ranks
    if global_batch % ranks:
        raise CommandError(
            ExitStatus.CHECKPOINT,
            f"--resume {where!r} trained with a global batch of {global_batch} rows ({record.batch_size} on each of "
            f"{saved_ranks} ranks), which {ranks} ranks cannot share evenly; resume it on a number of ranks "
            f"that divides {global_batch}",
        )
    record.batch_size = global_batch // ranks


def history(checkpoint: nn.Checkpoint) -> dict[str, list[float]]:
    """The saved per-epoch history: ``{name: [one number per epoch trained]}``."""
    saved = checkpoint.extra.get("history")
    if not isinstance(saved, dict) or not all(isinstance(key, str) for key in saved):
        raise _malformed(checkpoint.path, f"its saved history is not a dict of lists: {saved!r:.60}")
    for key, values in saved.items():
        if not isinstance(values, list) or not all(as_real(value) is not None for value in values):
            raise _malformed(checkpoint.path, f"its saved history {key!r} is not a list of numbers: {values!r:.60}")
        if len(values) != checkpoint.epoch:
            raise _malformed(
                checkpoint.path,
                f"its saved history {key!r} has {len(values)} values for {checkpoint.epoch} epochs trained",
            )
    return {key: [float(value) for value in values] for key, values in saved.items()}


def scaler(checkpoint: nn.Checkpoint, scale: str) -> Any:
    """The scaler the saved run fitted (``None`` for ``--scale none``), checked against its model."""
    state = checkpoint.extra.get("scaler")
    if scale == "none":
        if state is not None:
            raise _malformed(checkpoint.path, "it holds a scaler although its run used --scale none")
        return None
    if state is None:
        raise _malformed(checkpoint.path, f"it holds no scaler although its run used --scale {scale}")
    with failing_as(ExitStatus.CHECKPOINT, ValueError, context=f"--resume {checkpoint.path!r} holds a bad scaler"):
        fitted = SCALERS[scale]().load_state_dict(state)
    if fitted.n_features_in_ != checkpoint.model.in_features:
        raise _malformed(
            checkpoint.path,
            f"its scaler was fitted on {fitted.n_features_in_} features; its model takes "
            f"{checkpoint.model.in_features}",
        )
    return fitted


def _check_record_describes_model(record: argparse.Namespace, checkpoint: nn.Checkpoint) -> None:
    """The record must be that of the model and optimizer the checkpoint holds, or it tells a false story."""
    model, optimizer = checkpoint.model, checkpoint.optimizer
    hidden = [layer for layer in model.layers[:-1] if isinstance(layer, nn.Dense)]
    if len(hidden) != len(model.layers) - 1 or not isinstance(model.layers[-1], nn.Dense):
        raise _malformed(checkpoint.path, "its model has layers other than nn.Dense, which fusednn train never builds")
    held = (
        [layer.out_features for layer in hidden],
        {layer.activation for layer in hidden},
        model.dtype.name,
        type(optimizer).__name__.lower(),
    )
    recorded = (record.hidden, {record.activation} if record.hidden else set(), record.dtype, record.optimizer)
    if held != recorded:
        raise _malformed(
            checkpoint.path,
            f"its saved args describe --hidden {','.join(map(str, record.hidden))} --activation {record.activation} "
            f"--dtype {record.dtype} --optimizer {record.optimizer}, not the model and optimizer it holds",
        )


def _same(dest: str, args: argparse.Namespace, record: argparse.Namespace) -> bool:
    typed, saved = getattr(args, dest), getattr(record, dest)
    if typed == saved:
        return True
    if dest in ("data", "labels") and typed is not None and saved is not None:
        try:
            return os.path.samefile(typed, saved)  # one file, reached from another directory or by another path
        except OSError:
            return False
    return False


def _describe_saved(dest: str, value: Any) -> str:
    return f"no {describe(dest, True)}" if value is None or value is False else describe(dest, value)


def _malformed(path: str, problem: str) -> CommandError:
    return CommandError(ExitStatus.CHECKPOINT, f"--resume {path!r} is malformed: {problem}")
