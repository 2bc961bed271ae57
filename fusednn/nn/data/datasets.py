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

from ..validation import check_seed, entry_location, first_outside
from . import files

BUILTIN_DATASETS: tuple[str, ...] = ("digits", "xor", "synthetic")
"""Names :func:`load_dataset` accepts besides file paths."""

TASKS: tuple[str, ...] = ("auto", "classification", "regression")
"""What :func:`load_dataset` may be told the targets mean; ``"auto"`` decides from the targets."""

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
        task_reason: why ``task="auto"`` chose :attr:`task`, e.g. ``"the targets are stored
            as integers (int64, 0..9)"``; empty when the caller chose the task.
    """

    x: np.ndarray
    y: np.ndarray
    num_classes: int | None
    name: str
    task_reason: str = ""

    def __post_init__(self) -> None:
        if self.x.ndim != 2 or self.x.shape[0] != self.y.shape[0]:
            raise ValueError(f"{self.name}: x {self.x.shape} and y {self.y.shape} do not describe the same rows")
        if self.x.shape[1] == 0:
            raise ValueError(f"{self.name!r} has no feature column: x has shape {self.x.shape}")

    @property
    def task(self) -> str:
        """``"classification"`` (``num_classes`` is set) or ``"regression"``."""
        return "regression" if self.num_classes is None else "classification"


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
    rng = np.random.default_rng(check_seed(seed))
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
    check_seed(seed)
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


def _check_finite(array: np.ndarray, what: str, name: str) -> None:
    """Reject NaN and infinity up front, naming the first bad row (and column) of the file."""
    if array.dtype.kind != "f":
        return
    limit = float(np.finfo(array.dtype).max)  # every finite value of the array's own dtype passes
    found = first_outside(array, -limit, limit)
    if found is not None:
        index, value = found
        raise ValueError(
            f"{name!r}: the {what} hold {value} at {entry_location(index)} (counted from 0 among the data rows); "
            "fusednn needs finite numbers: drop or fill in the missing values first"
        )


def _with_task(x: np.ndarray, y: np.ndarray, name: str, task: str, labels_in_table: bool) -> Dataset:
    """Targets ``y`` as class labels or regression targets, as ``task`` says or ``"auto"`` decides.

    ``"auto"`` reads integer targets (a CSV's or ``.npy`` table's whole-number label
    column arrives as int64 from the loaders) as class labels, anything else as
    regression targets; ``task_reason`` records the grounds.
    """
    whole = y.dtype.kind in "iub"
    if task == "auto":
        task = "classification" if whole and y.ndim == 1 else "regression"
        if y.ndim != 1:
            reason = f"the targets have {y.shape[1]} columns"
        elif labels_in_table:
            held = f"whole numbers only ({y.min()}..{y.max()})" if whole else "fractions"
            reason = f"the label column holds {held}"
        else:
            reason = f"the targets are stored as {'integers' if whole else 'floats'} ({y.dtype}"
            reason += f", {y.min()}..{y.max()})" if whole else ")"
        if task == "classification" and y.min() < 0:
            raise ValueError(
                f"{name!r}: {reason}, read as class labels, but class labels must be >= 0, found {y.min()}; "
                "pass task='regression' if they are quantities"
            )
    else:
        reason = ""
    if task == "regression":
        return Dataset(x, y.astype(x.dtype), None, name, reason)
    if y.ndim != 1:
        raise ValueError(f"{name!r}: classification needs one class label per row, got targets of shape {y.shape}")
    if not whole:
        fractional = np.flatnonzero(y != np.round(y))
        if fractional.size:
            row = int(fractional[0])
            raise ValueError(
                f"{name!r}: classification needs whole-number class labels, found {y[row]} in row {row}; "
                "pass task='regression' for quantities"
            )
    labels = y.astype(np.int64)
    if labels.min() < 0:
        raise ValueError(f"{name!r}: class labels must be >= 0, found {labels.min()}")
    if np.unique(labels).size < 2:
        raise ValueError(f"{name!r}: classification needs at least 2 classes, but every label is {labels[0]}")
    return Dataset(x, labels, int(labels.max()) + 1, name, reason)


def _from_arrays(x: np.ndarray, y: np.ndarray | None, name: str, task: str, labels_in_table: bool = False) -> Dataset:
    if y is None:
        raise ValueError(f"{name!r} holds no labels or targets")
    if x.dtype.kind not in "biuf":
        raise ValueError(f"{name!r}: features must be numeric, got dtype {x.dtype.name!r}")
    if y.dtype.kind not in "biuf":
        raise ValueError(f"{name!r}: targets must be numeric, got dtype {y.dtype.name!r}")
    if y.size == 0 or y.shape[0] == 0:
        raise ValueError(f"{name!r} holds no rows")
    _check_finite(x, "features", name)
    _check_finite(y, "targets", name)
    x = x if x.dtype in (np.float32, np.float64) else x.astype(np.float32)
    return _with_task(x, y, name, task, labels_in_table)


def load_dataset(
    name: str,
    *,
    rows: int | None = None,
    seed: int = 0,
    labels: str | None = None,
    label_column: int = -1,
    task: str = "auto",
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
        task: what the targets are. ``"classification"``: whole-number class labels
            ``0..C-1`` (``num_classes = max + 1``); ``"regression"``: quantities, kept
            as floats; ``"auto"``: integer targets (and a CSV's whole-number label
            column) are class labels, other targets regression targets, with the
            grounds in :attr:`Dataset.task_reason`.
        options: extra keywords for :func:`synthetic` (``features``, ``classes``...).

    File data must be finite: NaN or infinity is reported with its row and column.

    >>> load_dataset("xor", rows=4, task="regression").y.dtype
    dtype('float32')

    Raises:
        ValueError: an unknown name or task, a bad option, an unreadable file, or
            targets that do not fit ``task``.
        FileNotFoundError: the path does not exist.
    """
    if task not in TASKS:
        raise ValueError(f"task must be one of {', '.join(map(repr, TASKS))}, got {task!r}")
    if name in BUILTIN_DATASETS:
        builtin = _builtin(name, rows, seed, options)
        if task == "regression":
            return Dataset(builtin.x, builtin.y.astype(builtin.x.dtype), None, builtin.name)
        reason = f"{name} is a classification data set" if task == "auto" else ""
        return Dataset(builtin.x, builtin.y, builtin.num_classes, builtin.name, reason)
    path = Path(name)
    if not path.exists():
        raise FileNotFoundError(
            f"Unknown data set {name!r}: not one of {', '.join(BUILTIN_DATASETS)} and no file or directory there"
        )
    if path.is_dir():
        return _from_arrays(*files.load_idx_pair(*files.find_mnist_files(path)), name, task)
    suffixes = "".join(path.suffixes[-2:]).lower()
    if suffixes.endswith(".npz"):
        return _from_arrays(*files.load_npz(path), name, task)
    if suffixes.endswith(".npy"):
        return _from_arrays(*files.load_npy(path, label_column), name, task, labels_in_table=True)
    if suffixes.endswith(".csv"):
        return _from_arrays(*files.load_csv(path, label_column), name, task, labels_in_table=True)
    if labels is not None:
        return _from_arrays(*files.load_idx_pair(path, labels), name, task)
    raise ValueError(
        f"Cannot tell how to read {name!r}: expected .npz, .npy, .csv, an MNIST directory, "
        "or an IDX images file together with labels=<IDX labels file>"
    )


def _builtin(name: str, rows: int | None, seed: int, options: dict[str, Any]) -> Dataset:
    if name == "digits":
        if rows is not None or options:
            raise ValueError("The digits data set has a fixed size and takes no rows or options")
        return digits()
    size = {} if rows is None else {"rows": rows}
    if name == "xor":
        return xor(seed=seed, **size, **options)
    return synthetic(seed=seed, **size, **options)
