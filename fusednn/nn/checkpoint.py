"""Checkpoints: a model, its optimizer and training counters in one ``.npz`` file, written atomically.

Layout of the archive (no pickles anywhere, so loading runs no code):

* ``__header__``: UTF-8 JSON as a uint8 array: the format tag ``"fusednn-checkpoint"``,
  the format version, the model config (:meth:`Sequential.get_config`), the optimizer
  config, the optimizer step count, the epoch counter, the caller's ``extra`` values,
  and a SHA-256 checksum over every array (name, dtype, shape and bytes).
* ``model/<name>``: weights from :meth:`Sequential.state_dict` (``0.W``, ``0.b``, ...).
* ``optimizer/<name>``: optimizer state arrays (``exp_avg``, ``exp_avg_sq``, ...).

Writing goes to a temporary file in the destination's directory, which is flushed,
fsynced and then renamed over the destination with :func:`os.replace`: a crash at
any point leaves either the old file or the new one, never a torn one.

>>> import numpy as np, tempfile, os
>>> from fusednn import nn
>>> model = nn.MLP([3, 4, 2], device="numpy", seed=0)
>>> opt = nn.Adam(model.parameters(), lr=0.01)
>>> path = os.path.join(tempfile.mkdtemp(), "run.npz")
>>> nn.save(path, model, opt, note="example")
>>> restored = nn.load(path, device="numpy")
>>> restored.extra["note"], np.array_equal(restored.model.get_weights()[0], model.get_weights()[0])
('example', True)
"""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .atomic import write_atomically
from .model import Sequential
from .optim import Optimizer, optimizer_from_config

FORMAT = "fusednn-checkpoint"
"""The format tag every checkpoint's header carries."""

VERSION = 1
"""The newest format version this code writes and reads."""

_HEADER = "__header__"


@dataclass
class Checkpoint:
    """What :func:`load` returns.

    Attributes:
        model: the rebuilt model with its weights, on the requested device; its
            ``epochs_trained`` holds the saved epoch counter.
        optimizer: the rebuilt optimizer with its state and step count, or ``None``.
        extra: the JSON values passed to :func:`save` as keywords.
        epoch: epochs trained when saved.
        path: the file that was read.
    """

    model: Sequential
    optimizer: Optimizer | None
    extra: dict[str, Any] = field(default_factory=dict)
    epoch: int = 0
    path: str = ""


def _checksum(arrays: dict[str, np.ndarray]) -> str:
    digest = hashlib.sha256()
    for name in sorted(arrays):
        array = np.ascontiguousarray(arrays[name])
        digest.update(f"{name}|{array.dtype.str}|{array.shape}|".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def save(path: str | os.PathLike, model: Sequential, optimizer: Optimizer | None = None, **extra: Any) -> None:
    """Write ``model`` (architecture and weights), ``optimizer`` (config and state) and ``extra`` to ``path``.

    The write is atomic: a temporary file beside ``path`` is fsynced, then renamed
    over it. ``extra`` values must be JSON-serialisable (numbers, strings, lists, dicts).
    The file is written at exactly ``path`` (no ``.npz`` is appended).

    Raises:
        TypeError: an ``extra`` value is not JSON-serialisable, or ``optimizer`` is not an Optimizer.
        ValueError: the optimizer does not update this model's parameters.
        OSError: the directory is missing or not writable (nothing is changed then).
    """
    if optimizer is not None:
        if not isinstance(optimizer, Optimizer):
            raise TypeError(f"optimizer must be an nn.Optimizer or None, got {type(optimizer).__name__}")
        if optimizer.params is not model.parameters():
            raise ValueError("The optimizer updates another model's parameters; save it with its own model")
    arrays = {f"model/{name}": value for name, value in model.state_dict().items()}
    optimizer_config = None
    step = 0
    if optimizer is not None:
        state = optimizer.state_dict()
        step = int(state.pop("step"))
        arrays.update({f"optimizer/{name}": value for name, value in state.items()})
        optimizer_config = optimizer.get_config()
    header = {
        "format": FORMAT,
        "version": VERSION,
        "model": model.get_config(),
        "device": model.device,
        "optimizer": optimizer_config,
        "step": step,
        "epoch": int(model.epochs_trained),
        "extra": extra,
        "checksum": _checksum(arrays),
    }
    try:
        header_bytes = json.dumps(header).encode("utf-8")
    except (TypeError, ValueError) as error:
        raise TypeError(f"Checkpoint extras must be JSON-serialisable: {error}") from None
    arrays[_HEADER] = np.frombuffer(header_bytes, dtype=np.uint8)
    # NumPy's stub reads a splatted dict as possibly filling savez's own ``allow_pickle: bool``;
    # our keys are "__header__" and "model/..." / "optimizer/..." names, never that.
    write_atomically(path, lambda handle: np.savez(handle, **arrays))  # type: ignore[arg-type]


def _read(path: Path) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    where = str(path)
    if not path.is_file():
        raise FileNotFoundError(f"No checkpoint at {where!r}")
    try:
        with np.load(path, allow_pickle=False) as archive:
            if _HEADER not in archive.files:
                raise ValueError(f"{where!r} is not a fusednn checkpoint (an .npz without a {_HEADER} entry)")
            arrays = {name: archive[name] for name in archive.files}
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, KeyError) as error:
        if isinstance(error, ValueError) and "not a fusednn checkpoint" in str(error):
            raise
        raise ValueError(f"{where!r} is not a readable fusednn checkpoint (truncated or corrupted?): {error}") from None
    try:
        header = json.loads(arrays.pop(_HEADER).tobytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{where!r} has a corrupted checkpoint header: {error}") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise ValueError(f"{where!r} is not a fusednn checkpoint (format tag missing)")
    if not isinstance(header.get("version"), int) or header["version"] > VERSION:
        raise ValueError(
            f"{where!r} has checkpoint format version {header.get('version')!r}; this fusednn reads up to {VERSION}"
        )
    if _checksum(arrays) != header.get("checksum"):
        raise ValueError(f"{where!r} is corrupted: its arrays do not match the checksum in its header")
    return header, arrays


def load(path: str | os.PathLike, device: str | None = None, dtype: Any = None) -> Checkpoint:
    """Read a checkpoint written by :func:`save` and rebuild the model and optimizer on ``device``.

    ``device=None`` means the default device (as for a new model), whatever device
    the checkpoint was saved from; ``dtype=None`` keeps the saved dtype.

    Raises:
        FileNotFoundError: nothing at ``path``.
        ValueError: the file is truncated, corrupted (checksum mismatch), not a fusednn
            checkpoint, or from a newer format version; the message names the path.
    """
    path = Path(path)
    header, arrays = _read(path)
    try:
        model = Sequential.from_config(header["model"], device=device, dtype=dtype)
        prefix = "model/"
        model.load_state_dict({k[len(prefix) :]: v for k, v in arrays.items() if k.startswith(prefix)})
        optimizer = None
        if header.get("optimizer") is not None:
            optimizer = optimizer_from_config(header["optimizer"], model.parameters())
            prefix = "optimizer/"
            state = {k[len(prefix) :]: v for k, v in arrays.items() if k.startswith(prefix)}
            optimizer.load_state_dict({"step": int(header["step"]), **state})
    except (KeyError, TypeError, ValueError) as error:
        raise ValueError(f"{str(path)!r} holds a checkpoint this fusednn cannot rebuild: {error}") from None
    model.epochs_trained = int(header.get("epoch", 0))
    return Checkpoint(model, optimizer, dict(header.get("extra") or {}), model.epochs_trained, str(path))
