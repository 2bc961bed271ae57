"""Helpers shared by the CPU kernels: dtype-preserving constants and chunk bounds.

A Python float literal inside ``@njit`` code is float64, so ``z * 0.01`` with a
float32 ``z`` computes in float64 and keeps the loop from vectorising as float32.
``like(z, 0.01)`` is the constant cast to ``z``'s type at compile time instead.
"""

from __future__ import annotations

from typing import Literal, TypedDict

from numba import njit
from numba.extending import overload


class JitOptions(TypedDict):
    """The ``@njit`` options every CPU kernel module shares (``_JIT``), spelt out for the type checker.

    Numba's stubs type each keyword of ``njit``; a plain dict splatted as
    ``**_JIT`` would be a ``dict[str, object]`` and match no overload.
    """

    cache: bool
    error_model: Literal["python", "numpy"]


def like(x: float, value: float) -> float:
    """Return ``value`` as the scalar type of ``x`` (``like(np.float32(1), 0.5)`` is a float32).

    >>> import numpy as np
    >>> type(like(np.float32(2.0), 0.5)).__name__
    'float32'
    """
    return type(x)(value)


@overload(like)
def _like_numba(x, value):  # noqa: ANN001, ANN202 - Numba typing hook
    scalar_type = x

    def impl(x, value):  # noqa: ANN001, ANN202
        return scalar_type(value)

    return impl


@njit(inline="always", cache=True, error_model="numpy")
def chunk_bounds(n: int, n_chunks: int, chunk: int) -> tuple[int, int]:
    """``[start, stop)`` of chunk ``chunk`` when ``n`` items are split into ``n_chunks`` near-equal parts.

    Parallel drivers slice their arrays with these bounds and hand the views to
    a body that loops from 0: a loop from a runtime offset would not vectorise.
    """
    base, extra = divmod(n, n_chunks)
    start = chunk * base + min(chunk, extra)
    return start, start + base + (1 if chunk < extra else 0)
