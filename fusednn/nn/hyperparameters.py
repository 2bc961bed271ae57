"""One check for every numeric hyperparameter: optimizers, learning-rate schedules and their outputs.

A hyperparameter must be a real number (a Python or NumPy int or float; not a bool,
not a string that happens to parse) that is finite and lies in its interval. NaN and
infinity can only produce garbage weights, so they are refused at the door with the
wording PyTorch uses (``Invalid learning rate: nan``) and the interval that was expected.

>>> from fusednn.nn.hyperparameters import check_real
>>> check_real("learning rate", 0.1)
0.1
>>> check_real("learning rate", float("nan"))
Traceback (most recent call last):
    ...
ValueError: Invalid learning rate: nan (expected a finite number >= 0)
"""

from __future__ import annotations

import math
import numbers
from typing import Any


def as_real(value: Any) -> float | None:
    """``value`` as a float when it is a real number, else ``None``.

    Bools are refused although Python counts them as integers: ``lr=True`` is a slip, not a rate.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return None
    return float(value)


def interval(low: float, high: float, low_open: bool, high_open: bool) -> str:
    """The interval ``[low, high)`` and its kin in words, as error messages state them."""
    if math.isinf(high):
        return f"> {low:g}" if low_open else f">= {low:g}"
    return f"in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"


def check_real(
    label: str,
    value: Any,
    low: float = 0.0,
    high: float = math.inf,
    *,
    low_open: bool = False,
    high_open: bool = False,
) -> float:
    """``value`` as a float if it is a finite real number in the interval from ``low`` to ``high``.

    The bounds are inclusive unless ``low_open``/``high_open``; ``high=inf`` means no upper bound
    (the value must still be finite).

    Raises:
        TypeError: ``value`` is not a real number (``Invalid <label>: '0.1' is not a real number``).
        ValueError: ``value`` is NaN, infinite or outside the interval (``Invalid <label>: nan (expected ...)``).
    """
    number = as_real(value)
    if number is None:
        raise TypeError(f"Invalid {label}: {value!r} is not a real number")
    above = number > low if low_open else number >= low
    below = number < high if high_open else number <= high
    if not (math.isfinite(number) and above and below):
        expected = interval(low, high, low_open, high_open)
        raise ValueError(f"Invalid {label}: {number} (expected a finite number {expected})")
    return number
