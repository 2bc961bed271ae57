"""Checkpoints: a model, its optimizer and training counters in one ``.npz`` file, written atomically.

Layout of the archive (no pickles anywhere, so loading runs no code):

* ``__header__``: UTF-8 JSON as a uint8 array: the format tag ``"fusednn-checkpoint"``,
  the format version, the model config (:meth:`Sequential.get_config`), the optimizer
  config, the optimizer step count, the epoch counter, the caller's ``extra`` values,
  the layers' host counters (``"layer_state"``, :meth:`Sequential.layer_states`, when a
  layer keeps any, e.g. :class:`~fusednn.nn.Dropout`'s step) and a SHA-256 checksum over
  every array (name, dtype, shape and bytes).
* ``model/<name>``: weights and buffers from :meth:`Sequential.state_dict` (``0.W``, ``0.b``,
  ``1.running_mean``, ...).
* ``optimizer/<name>``: optimizer state arrays (``exp_avg``, ``exp_avg_sq``, ...).

Writing goes to a temporary file in the destination's directory, which is flushed,
fsynced and then renamed over the destination with :func:`os.replace`: a crash at
any point leaves either the old file or the new one, never a torn one (see
:mod:`fusednn.nn.atomic`, which also clears the temporaries of killed writers).

What :func:`save` accepts, :func:`load` rebuilds: weights and optimizer state must be
finite, optimizer hyperparameters are checked whenever they are set, and extras must
be JSON values (dicts with string keys; tuples come back as lists).

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

import errno
import hashlib
import json
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .atomic import check_can_write, naming, retold, write_atomically
from .callbacks import NonFiniteStateError
from .hyperparameters import as_real
from .model import Sequential
from .optim import Optimizer, optimizer_from_config

FORMAT = "fusednn-checkpoint"
"""The format tag every checkpoint's header carries."""

VERSION = 1
"""The newest format version this code writes and reads."""

_HEADER = "__header__"
_ZIP_MAGIC = b"PK\x03\x04"
_NPY_MAGIC = b"\x93NUMPY"


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
    over it. ``extra`` values must be JSON values (None, bools, numbers, strings, lists,
    dicts with string keys). The file is written at exactly ``path`` (no ``.npz`` is appended).

    Raises:
        TypeError: an ``extra`` value is not a JSON value (the message says which), or
            ``optimizer`` is not an Optimizer.
        ValueError: the optimizer does not update this model's parameters.
        NonFiniteStateError: a weight or optimizer state array holds NaN or infinity; nothing is written.
        OSError: the directory is missing or not writable, the disk is full, ...: the message
            names ``path``, and ``path`` is left as it was.
    """
    write_checkpoint(path, model, optimizer, extra)


def write_checkpoint(
    path: str | os.PathLike, model: Sequential, optimizer: Optimizer | None, extra: dict[str, Any]
) -> None:
    """:func:`save` with the extras as one dict, so that any key (``"model"``, ``"path"``) can be an extra."""
    if optimizer is not None:
        if not isinstance(optimizer, Optimizer):
            raise TypeError(f"optimizer must be an nn.Optimizer or None, got {type(optimizer).__name__}")
        if optimizer.params is not model.parameters():
            raise ValueError("The optimizer updates another model's parameters; save it with its own model")
    check_json(extra, "extra")
    arrays = {f"model/{name}": value for name, value in model.state_dict().items()}
    optimizer_config = None
    step = 0
    if optimizer is not None:
        state = optimizer.state_dict()
        step = int(state.pop("step"))
        arrays.update({f"optimizer/{name}": value for name, value in state.items()})
        optimizer_config = optimizer.get_config()
    # The arrays are host copies already, so this last line of defence costs one pass over memory.
    non_finite = [_describe(name) for name, value in arrays.items() if not np.isfinite(value).all()]
    if non_finite:
        raise NonFiniteStateError.refusing_to_save(str(path), non_finite)
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
    layer_states = model.layer_states()
    if any(layer_states):  # absent when no layer keeps any: the header of a Dense stack is as it always was
        header["layer_state"] = layer_states
    arrays[_HEADER] = np.frombuffer(json.dumps(header).encode("utf-8"), dtype=np.uint8)
    # NumPy's stub reads a splatted dict as possibly filling savez's own ``allow_pickle: bool``;
    # our keys are "__header__" and "model/..." / "optimizer/..." names, never that.
    write_atomically(path, lambda handle: np.savez(handle, **arrays))  # type: ignore[arg-type]


def _describe(array_name: str) -> str:
    """``"model/0.W"`` as a user reads it: ``"model weight '0.W'"``."""
    kind, _, name = array_name.partition("/")
    return f"model weight {name!r}" if kind == "model" else f"optimizer state {name!r}"


def check_json(value: Any, where: str) -> None:
    """Check that ``value`` is a JSON value that :func:`json.loads` gives back as it was (tuples aside).

    ``where`` names ``value`` in the message, e.g. ``"checkpoint_extra"``; nested values
    are named by their keys and indices (``checkpoint_extra['args']['hidden'][0]``).

    Raises:
        TypeError: a value JSON cannot hold (an array, a NumPy integer, a set, ...), a dict key
            that is not a string (JSON would turn ``1`` into ``"1"``), or a reference cycle.
    """
    _check_json(value, where, set())


def _check_json(value: Any, where: str, enclosing: set[int]) -> None:
    if value is None or isinstance(value, (bool, int, float, str)):
        return
    if not isinstance(value, (list, tuple, dict)):
        raise TypeError(
            f"{where} is a {type(value).__module__}.{type(value).__qualname__}; checkpoint extras must be "
            "JSON-serialisable (None, bool, int, float, str, lists, and dicts with string keys)"
        )
    if id(value) in enclosing:
        raise TypeError(f"{where} contains itself; checkpoint extras must be JSON-serialisable (no cycles)")
    enclosing.add(id(value))
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(
                    f"{where} has the key {key!r}; checkpoint extras must be JSON-serialisable, "
                    "and JSON object keys are strings"
                )
            _check_json(item, f"{where}[{key!r}]", enclosing)
    else:
        for index, item in enumerate(value):
            _check_json(item, f"{where}[{index}]", enclosing)
    enclosing.discard(id(value))


def _read(path: Path) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    where = repr(str(path))
    if path.is_dir():
        raise IsADirectoryError(
            errno.EISDIR, f"{where} is a directory, not a fusednn checkpoint (a file that nn.save wrote)"
        )
    if not path.exists():
        raise FileNotFoundError(f"No checkpoint at {where}")
    try:
        handle = open(path, "rb")
    except OSError as error:
        raise naming(path, error, "read") from None
    with handle:
        magic = handle.read(len(_NPY_MAGIC))
        if magic.startswith(_NPY_MAGIC):
            raise ValueError(f"{where} is a .npy array file, not a fusednn checkpoint (an .npz archive nn.save wrote)")
        if not magic.startswith(_ZIP_MAGIC):
            what = "an empty file" if not magic else "not an .npz archive"
            raise ValueError(f"{where} is not a fusednn checkpoint ({what})")
        handle.seek(0)
        try:
            with np.load(handle, allow_pickle=False) as archive:
                if _HEADER not in archive.files:
                    raise KeyError(_HEADER)
                arrays = {name: archive[name] for name in archive.files}
        except KeyError:
            raise ValueError(f"{where} is not a fusednn checkpoint (an .npz without a {_HEADER} entry)") from None
        except (zipfile.BadZipFile, OSError, EOFError, ValueError) as error:
            raise ValueError(
                f"{where} is not a readable fusednn checkpoint (truncated or corrupted?): {error}"
            ) from None
    try:
        header = json.loads(arrays.pop(_HEADER).tobytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{where} has a corrupted checkpoint header: {error}") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise ValueError(f"{where} is not a fusednn checkpoint (format tag missing)")
    if not isinstance(header.get("version"), int) or header["version"] > VERSION:
        raise ValueError(
            f"{where} has checkpoint format version {header.get('version')!r}; this fusednn reads up to {VERSION}"
        )
    if _checksum(arrays) != header.get("checksum"):
        raise ValueError(f"{where} is corrupted: its arrays do not match the checksum in its header")
    return header, arrays


def load(path: str | os.PathLike, device: str | None = None, dtype: Any = None) -> Checkpoint:
    """Read a checkpoint written by :func:`save` and rebuild the model and optimizer on ``device``.

    ``device=None`` means the default device (as for a new model), whatever device
    the checkpoint was saved from; ``dtype=None`` keeps the saved dtype.

    Raises:
        FileNotFoundError: nothing at ``path``.
        IsADirectoryError: ``path`` is a directory.
        OSError: ``path`` cannot be read (the message names it).
        ValueError: the file is not a fusednn checkpoint (a ``.npy`` file, another ``.npz``,
            text, an empty file), is truncated, corrupted (checksum mismatch), from a newer
            format version, or holds values this fusednn cannot rebuild; the message names the path.
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
        if "layer_state" in header:
            model.load_layer_states(header["layer_state"])
        model.epochs_trained = int(header.get("epoch", 0))
        extra = dict(header.get("extra") or {})
    except (KeyError, TypeError, ValueError) as error:
        raise ValueError(f"{str(path)!r} holds a checkpoint this fusednn cannot rebuild: {error}") from None
    return Checkpoint(model, optimizer, extra, model.epochs_trained, str(path))


def check_destination(path: str | os.PathLike, overwrite: bool) -> bool:
    """Check, before any work, that a checkpoint can be written at ``path``; returns whether a file is there.

    Raises:
        IsADirectoryError: ``path`` is a directory.
        FileNotFoundError / NotADirectoryError: its parent directory is missing, or not a directory.
        FileExistsError: a file is at ``path`` and ``overwrite`` is False.
        OSError: the directory does not take new files (read-only, full of inodes, ...).
        Every message names ``path``.
    """
    path = Path(path)
    where = repr(str(path))
    if path.is_dir():
        raise IsADirectoryError(errno.EISDIR, f"Checkpoint {where} is a directory; pass the path of a file to write")
    directory = path.parent
    if not directory.exists():
        raise FileNotFoundError(
            errno.ENOENT, f"Cannot write checkpoint {where}: its directory {str(directory)!r} does not exist"
        )
    if not directory.is_dir():
        raise NotADirectoryError(
            errno.ENOTDIR, f"Cannot write checkpoint {where}: {str(directory)!r} is not a directory"
        )
    exists = path.exists() or path.is_symlink()
    if exists and not overwrite:
        raise FileExistsError(
            errno.EEXIST, f"Checkpoint {where} already exists; pass checkpoint_overwrite=True to replace it"
        )
    check_can_write(path)
    return exists


def check_history(history: Any, where: str) -> dict[str, list[float]]:
    """``history`` if it maps names to lists of numbers (as :attr:`History.history` does); else a TypeError."""
    if not isinstance(history, dict):
        raise TypeError(f"{where} must map names to lists of numbers, got a {type(history).__name__}")
    for key, values in history.items():
        if not isinstance(key, str) or not isinstance(values, (list, tuple)):
            raise TypeError(f"{where} must map names to lists of numbers; its entry {key!r} is {values!r}")
        for index, value in enumerate(values):
            if as_real(value) is None:
                raise TypeError(f"{where}[{key!r}][{index}] is {value!r}; expected a number")
    return history


class EpochCheckpoints:
    """The checkpoint :func:`fit` writes after every epoch, and what can truthfully be said about that file.

    Everything is checked when it is made, before training: the destination (see
    :func:`check_destination`) and ``extra``, which must be JSON values whose
    ``"history"``, if any, maps names to lists of numbers (earlier epochs', continued).

    Args:
        path: the checkpoint file.
        overwrite: whether a file already at ``path`` may be replaced.
        extra: JSON values saved with every checkpoint, or ``None``.
    """

    def __init__(self, path: str | os.PathLike, overwrite: bool, extra: dict[str, Any] | None) -> None:
        if not isinstance(overwrite, bool):
            raise TypeError(f"checkpoint_overwrite must be True or False, got {overwrite!r}")
        if extra is not None and not isinstance(extra, dict):
            raise TypeError(f"checkpoint_extra must be a dict of JSON values, got a {type(extra).__name__}")
        self.extra = dict(extra or {})
        check_json(self.extra, "checkpoint_extra")
        self.earlier = check_history(self.extra.pop("history", {}), "checkpoint_extra['history']")
        self.path = os.fspath(path)
        self.existed = check_destination(path, overwrite)
        self.saved_epoch: int | None = None

    def save(self, model: Sequential, optimizer: Optimizer, history: dict[str, list[float]]) -> None:
        """Write the model, optimizer, the extras and the history so far (earlier epochs' first).

        Raises:
            OSError: the write failed; the message names the path and says what it still holds.
        """
        merged = {key: [*self.earlier.get(key, []), *values] for key, values in history.items()}
        try:
            write_checkpoint(self.path, model, optimizer, {**self.extra, "history": merged})
        except OSError as error:
            raise retold(error, f"{error.strerror or error}; {self.on_disk()}") from None
        self.saved_epoch = int(model.epochs_trained)

    def on_disk(self) -> str:
        """What the file holds now, in words an error message can end with."""
        where = repr(self.path)
        if self.saved_epoch is not None:
            return f"{where} still holds epoch {self.saved_epoch}, the last this run saved"
        return f"this run wrote no checkpoint; {where} {'is as it was' if self.existed else 'was not created'}"
