"""Loaders for data on disk: ``.npz``, ``.npy``, ``.csv`` and MNIST-format IDX files.

Each loader returns ``(x, y)`` as host NumPy arrays, ``x`` of shape
``(N, features)``. Every failure raises an error that names the file.

The IDX format (used by MNIST) is a big-endian header ``0x00 0x00 <type>
<ndim>``, then ``ndim`` 32-bit sizes, then the data; type ``0x08`` is uint8,
``0x09`` int8, ``0x0B`` int16, ``0x0C`` int32, ``0x0D`` float32, ``0x0E`` float64.
Files ending in ``.gz`` are decompressed on the fly.
"""

from __future__ import annotations

import gzip
import os
import zipfile
from pathlib import Path

import numpy as np

_X_KEYS = ("x", "X", "data", "features", "inputs")
_Y_KEYS = ("y", "Y", "labels", "label", "target", "targets")

_IDX_TYPES: dict[int, str] = {0x08: "u1", 0x09: "i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}

PathLike = str | os.PathLike


def _existing(path: PathLike) -> Path:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No data file at {str(path)!r}")
    return path


def _split_columns(table: np.ndarray, label_column: int | None, path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    if table.ndim != 2:
        raise ValueError(f"{str(path)!r} holds an array of shape {table.shape}; expected a 2-D table")
    if label_column is None:
        return table, None
    try:
        y = table[:, label_column]
    except IndexError:
        raise ValueError(
            f"label_column={label_column} is out of range for {str(path)!r} with {table.shape[1]} columns"
        ) from None
    if table.shape[1] < 2:
        raise ValueError(
            f"{str(path)!r} has a single column, the label column (label_column={label_column}): "
            "a feature column is missing; expected at least one feature column besides the labels"
        )
    x = np.delete(table, label_column % table.shape[1], axis=1)
    return x, _labels_if_whole(y)


_EXACT_INTEGERS = 2.0**53
"""Floats below this magnitude convert to int64 and back without loss."""


def _labels_if_whole(y: np.ndarray) -> np.ndarray:
    """Whole-number float labels (as a CSV yields) become int64 class labels; other targets stay floats.

    Only values that survive the round trip are converted, so a caller that wants
    regression targets (``load_dataset(task="regression")``) gets the same numbers back.
    """
    if y.dtype.kind == "f" and y.size and np.all(np.abs(y) < _EXACT_INTEGERS) and np.all(y == np.round(y)):
        return y.astype(np.int64)
    return y


def load_npz(
    path: PathLike, x_key: str | None = None, y_key: str | None = None
) -> tuple[np.ndarray, np.ndarray | None]:
    """Load ``(x, y)`` from a ``.npz`` archive.

    Without explicit keys, ``x`` is the first of ``x, X, data, features, inputs``
    present and ``y`` the first of ``y, Y, labels, label, target, targets``
    (``None`` when the archive has none).
    """
    path = _existing(path)
    if not zipfile.is_zipfile(path):  # else NumPy reads it as a pickle and talks about allow_pickle
        raise ValueError(f"{str(path)!r} is not a readable .npz archive: it is not a zip file")
    try:
        archive = np.load(path, allow_pickle=False)
    except (OSError, ValueError, zipfile.BadZipFile) as error:
        raise ValueError(f"{str(path)!r} is not a readable .npz archive: {error}") from None
    with archive:
        names = list(archive.files)
        x_name = x_key or next((key for key in _X_KEYS if key in names), None)
        y_name = y_key or next((key for key in _Y_KEYS if key in names), None)
        if x_name not in names:
            raise ValueError(f"{str(path)!r} has no features array; found {names}, expected one of {_X_KEYS}")
        if y_key is not None and y_key not in names:
            raise ValueError(f"{str(path)!r} has no array {y_key!r}; found {names}")
        x = archive[x_name]
        y = archive[y_name] if y_name else None
    if x.ndim == 1:
        x = x[:, None]
    elif x.ndim > 2:
        x = x.reshape(x.shape[0], -1)  # images (N, H, W) become rows of pixels
    if y is not None and y.shape[0] != x.shape[0]:
        raise ValueError(f"{str(path)!r}: {x_name!r} has {x.shape[0]} rows but {y_name!r} has {y.shape[0]}")
    return x, y


def load_npy(path: PathLike, label_column: int | None = -1) -> tuple[np.ndarray, np.ndarray | None]:
    """Load a 2-D ``.npy`` table; column ``label_column`` (default: the last) is ``y``, the rest ``x``."""
    path = _existing(path)
    try:
        table = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as error:
        raise ValueError(f"{str(path)!r} is not a readable .npy file: {error}") from None
    return _split_columns(table, label_column, path)


def load_csv(
    path: PathLike, label_column: int | None = -1, delimiter: str = ","
) -> tuple[np.ndarray, np.ndarray | None]:
    """Load a numeric CSV table; a first line that is not numeric is taken as a header and skipped.

    Column ``label_column`` (default: the last) is ``y``; whole-number labels become int64.
    """
    path = _existing(path)
    try:
        with open(path, encoding="utf-8") as handle:
            first = handle.readline()
        try:
            [float(cell) for cell in first.strip().split(delimiter)]
            skip = 0
        except ValueError:
            skip = 1
        table = np.loadtxt(path, delimiter=delimiter, skiprows=skip, dtype=np.float64, ndmin=2, encoding="utf-8")
    except ValueError as error:  # UnicodeDecodeError included: a binary file named .csv
        raise ValueError(f"{str(path)!r} is not a numeric CSV table: {error}") from None
    if table.size == 0:
        raise ValueError(f"{str(path)!r} holds no rows")
    return _split_columns(table, label_column, path)


def load_idx(path: PathLike) -> np.ndarray:
    """Read one IDX file (optionally gzipped) into an array of its stored shape and a native dtype."""
    path = _existing(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as handle:
            raw = handle.read()
    except OSError as error:
        raise ValueError(f"{str(path)!r} could not be read as IDX: {error}") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_TYPES:
        raise ValueError(f"{str(path)!r} is not an IDX file (bad magic number {raw[:4].hex() or 'empty'})")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if ndim == 0 or len(raw) < header:
        raise ValueError(f"{str(path)!r} is a truncated IDX file (header of {ndim} dimensions is incomplete)")
    shape = tuple(int(v) for v in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    dtype = np.dtype(_IDX_TYPES[raw[2]])
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(raw) - header != expected:
        raise ValueError(
            f"{str(path)!r} is a truncated or padded IDX file: shape {shape} needs {expected} data bytes, "
            f"found {len(raw) - header}"
        )
    data = np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape)
    return data.astype(dtype.newbyteorder("="))


def load_idx_pair(images: PathLike, labels: PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Load MNIST-style images and labels; images ``(N, H, W)`` become rows ``(N, H * W)``."""
    x = load_idx(images)
    y = load_idx(labels)
    if y.ndim != 1:
        raise ValueError(f"{str(labels)!r} holds an array of shape {y.shape}; labels must be 1-D")
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"{str(images)!r} has {x.shape[0]} images but {str(labels)!r} has {y.shape[0]} labels")
    return x.reshape(x.shape[0], -1), y.astype(np.int64)


def find_mnist_files(directory: PathLike, split: str = "train") -> tuple[Path, Path]:
    """Find ``<split>-images-idx3-ubyte[.gz]`` and ``<split>-labels-idx1-ubyte[.gz]`` in ``directory``."""
    directory = Path(directory)
    found = []
    for kind, ndim in (("images", 3), ("labels", 1)):
        stem = f"{split}-{kind}-idx{ndim}-ubyte"
        candidates = [directory / stem, directory / f"{stem}.gz", directory / stem.replace("-idx", ".idx")]
        match = next((c for c in candidates if c.is_file()), None)
        if match is None:
            raise FileNotFoundError(f"No {stem}[.gz] in {str(directory)!r}")
        found.append(match)
    return found[0], found[1]
