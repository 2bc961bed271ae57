"""Built-in data sets that need no network, and :func:`load_dataset`, the command line's entry point.

* ``digits``: scikit-learn's bundled 8x8 handwritten digits (1797 rows, 64 features, 10 classes).
* ``xor``: points in the unit square labelled by the XOR of their coordinates' halves (2 classes).
* ``synthetic``: classification of any size labelled by a random "teacher" network,
  generated chunk by chunk so that memory beyond the result stays bounded.

>>> from fusednn.nn.data import load_dataset
>>> data = load_dataset("xor", rows=8, seed=0)
>>> data.x.shape, data.num_classes
((8, 2), 2)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from . import files

BUILTIN_DATASETS: tuple[str, ...] = ("digits", "xor", "synthetic")
"""Names :func:`load_dataset` accepts besides file paths."""

SYNTHETIC_CHUNK_ROWS = 65536
"""Rows generated per chunk; each chunk's randomness derives from ``(seed, chunk index)`` alone."""


@dataclass
class Dataset:
    """Features, targets and what they mean.

    Attributes:
        x: ``(N, features)`` float32 or float64 features on the host.
        y: ``(N,)`` int64 class labels, or float regression targets ``(N,)``/``(N, T)``.
        num_classes: number of classes, or ``None`` for regression targets.
        name: where the data came from (a built-in name or a path).
    """

    x: np.ndarray
    y: np.ndarray
    num_classes: int | None
    name: str

    def __post_init__(self) -> None:
        if self.x.ndim != 2 or self.x.shape[0] != self.y.shape[0]:
            raise ValueError(f"{self.name}: x {self.x.shape} and y {self.y.shape} do not describe the same rows")


def digits() -> Dataset:
    """The 8x8 digits of ``sklearn.datasets.load_digits`` (pixel values 0..16, float32)."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return Dataset(bunch.data.astype(np.float32), bunch.target.astype(np.int64), 10, "digits")


def xor(rows: int = 1000, seed: int = 0, noise: float = 0.0) -> Dataset:
    """``rows`` points uniform in ``[0, 1]^2``, label ``(x0 > 0.5) XOR (x1 > 0.5)``.

    ``noise`` adds Gaussian jitter of that standard deviation to the points after labelling.
    """
    _check_positive(rows=rows)
    rng = np.random.default_rng(seed)
    x = rng.random((rows, 2))
    y = ((x[:, 0] > 0.5) ^ (x[:, 1] > 0.5)).astype(np.int64)
    if noise:
        x += rng.normal(scale=noise, size=x.shape)
    return Dataset(x.astype(np.float32), y, 2, "xor")


def synthetic(
    rows: int = 100_000,
    features: int = 32,
    classes: int = 10,
    hidden: int = 64,
    seed: int = 0,
    label_noise: float = 0.0,
    dtype: Any = np.float32,
) -> Dataset:
    """Seeded teacher-network classification: ``y = argmax(tanh(x W1) W2 + c)`` with ``x ~ N(0, I)``.

    The teacher ``(W1, W2, c)`` depends on ``(seed, features, classes, hidden)``;
    ``c`` centres the logits so the classes are roughly balanced. Rows are
    generated in chunks of :data:`SYNTHETIC_CHUNK_ROWS` written straight into the
    result, so the extra memory is one chunk, and the first ``k`` rows are the
    same whatever ``rows >= k`` is asked for. ``label_noise`` is the probability
    that a label is replaced by a uniformly random class.
    """
    _check_positive(rows=rows, features=features, hidden=hidden)
    if classes < 2:
        raise ValueError(f"classes must be at least 2, got {classes}")
    if not 0.0 <= label_noise <= 1.0:
        raise ValueError(f"label_noise must lie in [0, 1], got {label_noise}")
    teacher = np.random.default_rng([seed, features, classes, hidden])
    w1 = (teacher.standard_normal((features, hidden)) / np.sqrt(features)).astype(np.float32)
    w2 = (teacher.standard_normal((hidden, classes)) * (3.0 / np.sqrt(hidden))).astype(np.float32)
    centre = _balancing_offsets(np.tanh(teacher.standard_normal((8192, features), dtype=np.float32) @ w1) @ w2)
    x = np.empty((rows, features), dtype=dtype)
    y = np.empty(rows, dtype=np.int64)
    for chunk, start in enumerate(range(0, rows, SYNTHETIC_CHUNK_ROWS)):
        stop = min(start + SYNTHETIC_CHUNK_ROWS, rows)
        # Draw a whole chunk even for a short last one, so a prefix never depends on `rows`.
        rng = np.random.default_rng([seed, features, classes, hidden, chunk + 1])
        block = rng.standard_normal((SYNTHETIC_CHUNK_ROWS, features), dtype=np.float32)[: stop - start]
        labels = (np.tanh(block @ w1) @ w2 + centre).argmax(axis=1)
        if label_noise:
            flip = rng.random(SYNTHETIC_CHUNK_ROWS)[: stop - start] < label_noise
            labels[flip] = rng.integers(0, classes, SYNTHETIC_CHUNK_ROWS)[: stop - start][flip]
        x[start:stop] = block
        y[start:stop] = labels
    return Dataset(x, y, classes, "synthetic")


def _balancing_offsets(logits: np.ndarray, rounds: int = 50) -> np.ndarray:
    """Per-class offsets that make ``argmax(logits + c)`` pick every class about equally often."""
    classes = logits.shape[1]
    centre = -logits.mean(axis=0)
    for _ in range(rounds):
        share = np.bincount((logits + centre).argmax(axis=1), minlength=classes) / logits.shape[0]
        centre -= 0.5 * np.log(np.maximum(share * classes, 1e-3)).astype(np.float32)
    return centre


def _check_positive(**values: int) -> None:
    for name, value in values.items():
        if not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")


def _from_arrays(x: np.ndarray, y: np.ndarray | None, name: str) -> Dataset:
    if y is None:
        raise ValueError(f"{name!r} holds no labels or targets")
    if x.dtype.kind not in "biuf":
        raise ValueError(f"{name!r}: features must be numeric, got dtype {x.dtype.name!r}")
    x = x if x.dtype in (np.float32, np.float64) else x.astype(np.float32)
    if y.dtype.kind in "iub":
        y = y.astype(np.int64)
        if y.min() < 0:
            raise ValueError(f"{name!r}: class labels must be >= 0, found {y.min()}")
        return Dataset(x, y, int(y.max()) + 1, name)
    return Dataset(x, y.astype(x.dtype), None, name)


def load_dataset(
    name: str,
    *,
    rows: int | None = None,
    seed: int = 0,
    labels: str | None = None,
    label_column: int = -1,
    **options: Any,
) -> Dataset:
    """Load a built-in data set by name or a data file by path.

    Args:
        name: ``"digits"``, ``"xor"``, ``"synthetic"``, or a path: ``.npz``,
            ``.npy``/``.csv`` (a table whose ``label_column`` holds ``y``), an
            IDX images file (with ``labels=`` the IDX labels file), or a
            directory holding MNIST's ``train-images-idx3-ubyte[.gz]`` and
            ``train-labels-idx1-ubyte[.gz]``.
        rows: sample count for ``xor`` and ``synthetic``.
        seed: seed for the generated data sets.
        labels: IDX labels file that goes with an IDX images file.
        label_column: the label column of a ``.npy``/``.csv`` table.
        options: extra keywords for :func:`synthetic` (``features``, ``classes``...).

    Integer targets are class labels (``num_classes = max + 1``); float targets
    mean regression.

    Raises:
        ValueError: an unknown name, a bad option, or an unreadable file.
        FileNotFoundError: the path does not exist.
    """
    if name in BUILTIN_DATASETS:
        if name == "digits":
            if rows is not None or options:
                raise ValueError("The digits data set has a fixed size and takes no rows or options")
            return digits()
        size = {} if rows is None else {"rows": rows}
        if name == "xor":
            return xor(seed=seed, **size, **options)
        return synthetic(seed=seed, **size, **options)
    path = Path(name)
    if not path.exists():
        raise FileNotFoundError(
            f"Unknown data set {name!r}: not one of {', '.join(BUILTIN_DATASETS)} and no file or directory there"
        )
    if path.is_dir():
        return _from_arrays(*files.load_idx_pair(*files.find_mnist_files(path)), name)
    suffixes = "".join(path.suffixes[-2:]).lower()
    if suffixes.endswith(".npz"):
        return _from_arrays(*files.load_npz(path), name)
    if suffixes.endswith(".npy"):
        return _from_arrays(*files.load_npy(path, label_column), name)
    if suffixes.endswith(".csv"):
        return _from_arrays(*files.load_csv(path, label_column), name)
    if labels is not None:
        return _from_arrays(*files.load_idx_pair(path, labels), name)
    raise ValueError(
        f"Cannot tell how to read {name!r}: expected .npz, .npy, .csv, an MNIST directory, "
        "or an IDX images file together with labels=<IDX labels file>"
    )
