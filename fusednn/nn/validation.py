"""Host-side checks of what users hand to :func:`~fusednn.nn.fit`, :func:`~fusednn.nn.evaluate` and models.

Like scikit-learn's ``check_array``, :func:`check_data` looks at the data once per
``fit``/``evaluate`` call, on the host, before anything moves to the device or
trains; nothing here runs per step. Every error names the array as the user
knows it (``"training x"``, ``"validation y"``, ``"evaluation x"``, ...) and the
first offending entry by its 0-based row (and column).

Whether a value is acceptable is a range test, ``low <= value <= high``, which
NaN always fails. It reads the array in row blocks of about a megabyte and
reduces each with ``min``/``max``: NumPy's SIMD reductions propagate NaN, allocate
nothing, and the block stays in cache for the second pass. On a 65,536 x 784
float32 array that is about 20 ms, against about 50 MB and 38 ms for
``np.isfinite(x).all()`` and about 1 s for one epoch of a 784-256-256-10 model
at batch 128 on the cpu backend. Only when a block fails is it searched
entry by entry, to name the first bad one.

>>> import numpy as np
>>> x = np.ones((3, 2)); x[1, 0] = np.nan
>>> check_finite(x, "training x", np.dtype("float32"))
Traceback (most recent call last):
...
ValueError: training x contains nan at row 1, column 0; fusednn needs finite data: drop or impute these entries first
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from ..backends.base import as_real_host_array, check_label_range

if TYPE_CHECKING:
    from .losses import Loss

_BLOCK_BYTES = 1 << 20
"""Rows are checked in blocks of about this many bytes: big enough to amortise the loop, small enough for cache."""


def check_seed(seed: Any, name: str = "seed") -> int | None:
    """Return ``seed`` as an ``int`` (or ``None``), the values NumPy's ``default_rng`` takes.

    >>> check_seed(3), check_seed(None)
    (3, None)

    Raises:
        TypeError: ``seed`` is not an integer (a float, a string, a bool, ...).
        ValueError: ``seed`` is negative.
    """
    if seed is None:
        return None
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"{name} must be a non-negative integer or None, got {seed!r}")
    if seed < 0:
        raise ValueError(f"{name} must be a non-negative integer or None, got {seed!r}")
    return int(seed)


def entry_location(index: tuple[int, ...]) -> str:
    """``"row 3"``, ``"row 3, column 1"`` or ``"index (3, 1, 0)"``: where an entry is, as error messages say it.

    >>> entry_location((3, 1))
    'row 3, column 1'
    """
    row = index[0]
    if len(index) == 1:
        return f"row {row}"
    if len(index) == 2:
        return f"row {row}, column {index[1]}"
    return f"index {(row, *index[1:])}"


def first_outside(a: np.ndarray, low: float, high: float) -> tuple[tuple[int, ...], Any] | None:
    """The index and value of the first entry of ``a`` (row-major) outside ``[low, high]``, or ``None``.

    NaN counts as outside. Reads ``a`` in row blocks with ``min``/``max`` (no
    allocation the size of ``a``) and searches only a block that fails.

    >>> first_outside(np.array([[0.5, 0.2], [1.5, np.nan]]), 0.0, 1.0)
    ((1, 0), np.float64(1.5))
    """
    if a.size == 0:
        return None
    if a.ndim == 0:
        a = a.reshape(1)
    rows = max(1, _BLOCK_BYTES // max(1, a[0].nbytes))
    # Compare in float64: NumPy would cast a Python float bound to a float32 array's dtype, and
    # float64's range as a float32 bound is -inf..inf, which lets infinities through.
    low64, high64 = np.float64(low), np.float64(high)
    for start in range(0, a.shape[0], rows):
        block = a[start : start + rows]
        if low64 <= np.float64(block.min()) and np.float64(block.max()) <= high64:  # NaN fails: min/max propagate it
            continue
        outside = ~((block >= low64) & (block <= high64))
        index = tuple(int(i) for i in np.argwhere(outside)[0])
        return (index[0] + start, *index[1:]), block[index]
    return None


def check_finite(a: np.ndarray, name: str, dtype: np.dtype) -> None:
    """Check that every entry of ``a`` is finite and stays finite when converted to ``dtype`` (the model's).

    Integer and bool arrays always pass. A float64 value beyond float32's range
    would become ``inf`` on the way to a float32 model, so it is refused too.

    Raises:
        ValueError: naming ``name``, the first bad entry's row (and column) and its value.
    """
    if a.dtype.kind != "f":
        return
    limit = float(np.finfo(dtype).max)
    found = first_outside(a, -limit, limit)
    if found is None:
        return
    index, value = found
    if np.isfinite(value):
        raise ValueError(
            f"{name} contains {value:g} at {entry_location(index)}, beyond the range of {dtype.name}, the model's "
            "dtype; rescale the data (e.g. nn.data.StandardScaler) or build the model with dtype='float64'"
        )
    raise ValueError(
        f"{name} contains {value} at {entry_location(index)}; "
        "fusednn needs finite data: drop or impute these entries first"
    )


def check_probabilities(t: np.ndarray, name: str, loss_name: str) -> None:
    """Check that every entry of ``t`` is a probability, in ``[0, 1]`` (targets of ``loss_name``).

    Raises:
        ValueError: naming ``name``, the first entry outside ``[0, 1]``, its value and the loss.
    """
    found = first_outside(t, 0.0, 1.0)
    if found is not None:
        index, value = found
        raise ValueError(
            f"{name} contains {value:g} at {entry_location(index)}; {loss_name} targets must be probabilities in [0, 1]"
        )


def probability_sum_tolerance(n_classes: int) -> float:
    """How far from 1 a row of ``n_classes`` probabilities may sum: float32 rounding with a margin.

    Normalising ``C`` float32 values and summing them again errs by at most about
    ``C`` units of float32's epsilon (1.2e-7), whatever the dtype the rows arrive
    in (soft targets are often a float32 model's output); 8 of those, and no less
    than 1e-5, still refuses every row that is not a distribution by mistake
    (unnormalised scores, multi-hot or empty rows).

    >>> probability_sum_tolerance(10)
    1e-05
    """
    return max(1e-5, 8 * n_classes * float(np.finfo(np.float32).eps))


def check_probability_rows(t: np.ndarray, name: str, loss_name: str) -> None:
    """Check that each row of ``t (N, C)`` is a distribution: entries in ``[0, 1]`` that sum to 1.

    The tolerance on the sum is :func:`probability_sum_tolerance`.

    Raises:
        ValueError: naming ``name``, the first bad row and what it sums to (or the bad entry).
    """
    check_probabilities(t, name, loss_name)
    if t.ndim != 2 or t.size == 0:
        return
    tolerance = probability_sum_tolerance(t.shape[1])
    sums = t.sum(axis=1, dtype=np.float64)
    bad = np.flatnonzero(np.abs(sums - 1.0) > tolerance)
    if bad.size:
        row = int(bad[0])
        raise ValueError(
            f"{name} row {row} sums to {sums[row]:.7g}; {loss_name} takes class probabilities or one-hot rows "
            f"that sum to 1 (within {tolerance:.2g}), or integer class labels of shape (N,)"
        )


def check_class_labels(y: np.ndarray, n_classes: int, name: str) -> None:
    """Check that ``y (N,)`` holds whole-number class labels in ``[0, n_classes)``.

    Raises:
        TypeError: ``y`` is not an integer array or a float array of whole numbers
            (naming the first value that is not one).
        ValueError: a label lies outside ``[0, n_classes)`` (naming the first one).
    """
    if y.dtype.kind == "f":
        fractional = np.flatnonzero(y != np.round(y))  # NaN is fractional too
        if fractional.size:
            row = int(fractional[0])
            raise TypeError(f"{name} class labels must be integers, got {y[row]} at row {row}")
    elif y.dtype.kind not in "iu":
        raise TypeError(f"{name} class labels must be integers, got an array of dtype {y.dtype.name!r}")
    check_label_range(y, n_classes, f"{name} class labels", f" for {n_classes} output columns")


def check_data(
    x: Any, y: Any, name: str, *, in_features: int, out_features: int, dtype: np.dtype, loss: Loss
) -> tuple[np.ndarray, np.ndarray]:
    """Check a data set for a model and loss on the host; return it as NumPy arrays.

    ``name`` is what the user calls the data (``"training"``, ``"validation"``,
    ``"evaluation"``); the arrays are called ``"<name> x"`` and ``"<name> y"``.
    Checked, in order: real numbers without masked entries, shapes
    (``x (N, in_features)`` with ``N >= 1``, ``y`` with ``N`` rows), finite values
    within ``dtype``'s range, then what ``loss`` asks of its targets
    (:meth:`~fusednn.nn.Loss.check_target`).

    Raises:
        ValueError, TypeError: naming the array and, for values, the first bad entry.
    """
    x = as_real_host_array(x, f"{name} x")
    y = as_real_host_array(y, f"{name} y")
    if x.ndim != 2 or x.shape[1] != in_features:
        raise ValueError(f"{name} x has shape {x.shape}; the model expects (N, {in_features})")
    if y.ndim == 0 or y.shape[0] != x.shape[0]:
        raise ValueError(f"{name} x has {x.shape[0]} rows but y has shape {y.shape}")
    if x.shape[0] == 0:
        raise ValueError(f"{name} data is empty")
    check_finite(x, f"{name} x", dtype)
    check_finite(y, f"{name} y", dtype)
    loss.check_target(y, out_features, f"{name} y")
    return x, y
