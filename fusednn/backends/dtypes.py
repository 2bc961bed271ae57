"""The floating-point dtypes fusednn computes in, and their validation."""

from __future__ import annotations

from typing import Any

import numpy as np

FLOAT_DTYPES: tuple[np.dtype, ...] = (np.dtype(np.float32), np.dtype(np.float64))
"""Every backend computes in exactly these dtypes."""

DEFAULT_DTYPE = np.dtype(np.float32)


def resolve_dtype(dtype: Any = None) -> np.dtype:
    """Return the NumPy dtype for ``dtype`` (``None`` means float32).

    Raises:
        TypeError: ``dtype`` is not float32 or float64, e.g. ``"float16"`` or ``int``.
    """
    if dtype is None:
        return DEFAULT_DTYPE
    try:
        resolved = np.dtype(dtype)
    except TypeError as error:
        raise TypeError(f"Unknown dtype {dtype!r}; expected 'float32' or 'float64'") from error
    if resolved not in FLOAT_DTYPES:
        raise TypeError(f"Unsupported dtype {resolved.name!r}; fusednn computes in 'float32' or 'float64'")
    return resolved
