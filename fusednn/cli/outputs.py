"""What ``fusednn train`` writes to ``--out``: checked before any work, then written atomically.

:func:`prepare` fails fast, before data is loaded or a step is taken, when ``--out``
cannot take the run's files, and it refuses to let a fresh run replace a checkpoint
unless told to. ``metrics.json`` is strict JSON (a value that is not finite is
written as ``null``); it and ``curves.png`` go through
:func:`fusednn.nn.atomic.write_atomically`, as checkpoints do, so a failed write
leaves the previous file whole.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np

from ..nn.atomic import write_atomically
from .errors import CommandError, ExitStatus, failing_as


@dataclass(frozen=True)
class Outputs:
    """The files of one run in its ``--out`` directory."""

    directory: Path

    @property
    def checkpoint(self) -> Path:
        """``checkpoint.npz``: model, optimizer, scaler, history and settings, updated every epoch."""
        return self.directory / "checkpoint.npz"

    @property
    def metrics(self) -> Path:
        """``metrics.json``: history, test metrics and confusion matrix."""
        return self.directory / "metrics.json"

    @property
    def curves(self) -> Path:
        """``curves.png``: loss and accuracy (or mae) per epoch."""
        return self.directory / "curves.png"


def prepare(outputs: Outputs, resume: str | None, overwrite: bool) -> bool:
    """Check that ``--out`` can take this run's files; returns whether its checkpoint may be replaced.

    Nothing is created: :func:`create` makes the directory once everything else
    has been checked too, so a run that fails early leaves no empty directory behind.
    A checkpoint already in ``--out`` may be replaced only by the run it holds
    (``--resume`` of that very file) or with ``--overwrite``.

    Raises:
        CommandError: (:attr:`ExitStatus.OUTPUT`) ``--out`` or a directory above it
            is a file, cannot be written, has a directory where a file must go, or
            holds a checkpoint that this run must not replace.
    """
    with failing_as(ExitStatus.OUTPUT, OSError, context=f"cannot use --out {str(outputs.directory)!r}"):
        return _check(outputs, resume, overwrite)


def _check(outputs: Outputs, resume: str | None, overwrite: bool) -> bool:
    directory = outputs.directory
    existing = next(path for path in (directory, *directory.absolute().parents) if path.exists())
    if not existing.is_dir():
        where = f"--out {str(directory)!r}" + ("" if existing == directory else f" lies under {str(existing)!r}, which")
        raise CommandError(ExitStatus.OUTPUT, f"{where} is a file, not a directory")
    for path in (outputs.checkpoint, outputs.metrics, outputs.curves):
        if path.is_dir():
            raise CommandError(ExitStatus.OUTPUT, f"cannot write {str(path)!r}: a directory is in the way")
    held = outputs.checkpoint.exists()
    continues = held and resume is not None and os.path.samefile(resume, outputs.checkpoint)
    if held and not (continues or overwrite):
        raise CommandError(
            ExitStatus.OUTPUT,
            f"--out {str(directory)!r} already holds a checkpoint: continue that run with "
            f"--resume {outputs.checkpoint}, or start over with --overwrite",
        )
    try:  # an anonymous file: a read-only directory fails here, before any work, and nothing is left behind
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as error:
        raise CommandError(ExitStatus.OUTPUT, f"cannot write to --out {str(directory)!r}: {error.strerror}") from None
    return continues or overwrite


def create(outputs: Outputs) -> None:
    """Make the ``--out`` directory (and its parents)."""
    try:
        outputs.directory.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise CommandError(
            ExitStatus.OUTPUT, f"cannot create --out {str(outputs.directory)!r}: {error.strerror}"
        ) from None


def snapshot(path: Path) -> tuple[int, int, int] | None:
    """Identity of the file at ``path`` (inode, mtime, size), or ``None``: tells whether a run replaced it."""
    try:
        status = path.stat()
    except OSError:
        return None
    return status.st_ino, status.st_mtime_ns, status.st_size


def strict_json(value: Any) -> Any:
    """``value`` with every non-finite float (NaN, inf) replaced by ``None``, so JSON stays strict.

    >>> strict_json({"loss": float("nan"), "history": [1.0, float("inf")]})
    {'loss': None, 'history': [1.0, None]}
    """
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: strict_json(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict_json(item) for item in value]
    return value


def write_metrics(path: Path, report: dict[str, Any]) -> None:
    """Write ``report`` to ``path`` as strict JSON (``null`` for non-finite numbers), atomically."""
    text = json.dumps(strict_json(report), indent=2, allow_nan=False) + "\n"
    write_atomically(path, lambda handle: handle.write(text.encode("utf-8")))


def write_curves(path: Path, history: dict[str, list[float]]) -> None:
    """Plot training and validation loss and accuracy (or mae) per epoch to a PNG at ``path``, atomically."""
    import matplotlib

    matplotlib.use("Agg")  # headless: no display needed
    import matplotlib.pyplot as plt

    panels = [key for key in ("loss", "accuracy", "mae") if key in history]
    figure, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.6), squeeze=False)
    try:
        for axis, key in zip(axes[0], panels, strict=True):
            epochs = np.arange(1, len(history[key]) + 1)
            axis.plot(epochs, history[key], marker="o", label="train")
            if f"val_{key}" in history:
                axis.plot(epochs, history[f"val_{key}"], marker="o", label="validation")
            axis.set_xlabel("epoch")
            axis.set_title(key)
            axis.grid(alpha=0.3)
            axis.legend()
        figure.tight_layout()

        def save(handle: IO[bytes]) -> None:
            figure.savefig(handle, format="png", dpi=100)

        write_atomically(path, save)
    finally:
        plt.close(figure)
