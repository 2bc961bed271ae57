"""Helpers shared by the pytest-benchmark files: the quick/full/smoke case grid and the standard shapes.

Every benchmark function is parametrised over one list of cases built by :func:`grid`:
the quick cases run by default, the full-only ones with ``--bench-full``, and the first
(smallest) quick case is also marked ``smoke`` so ``tests/test_benchmarks_smoke.py``
can run exactly one tiny case per file.

>>> [p.marks[0].name for p in grid([1, 2], [3]) if p.marks]
['smoke', 'full']
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
import pytest

from .configs import CONFIGS, gemm_shapes


def grid(quick: Iterable[Any], full: Iterable[Any] = (), ids: Any = None) -> list[Any]:
    """``pytest.param`` cases: ``quick`` ones (the first marked ``smoke``) then ``full`` ones marked ``full``.

    ``ids`` is a function from a case to its test id (default: ``str``).
    """
    name = ids or str
    cases = [
        pytest.param(case, marks=[pytest.mark.smoke] if i == 0 else [], id=name(case)) for i, case in enumerate(quick)
    ]
    cases += [pytest.param(case, marks=[pytest.mark.full], id=name(case)) for case in full]
    return cases


def mlp_gemm_shapes() -> list[tuple[int, int, int]]:
    """Every distinct ``(m, k, n)`` GEMM of the standard configurations' training steps."""
    return list(dict.fromkeys(shape for config in CONFIGS.values() for shape in gemm_shapes(config)))


def mlp_layer_shapes() -> list[tuple[int, int, int]]:
    """Every distinct ``(batch, in, out)`` dense layer of the standard configurations."""
    return list(
        dict.fromkeys((config.batch, n_in, n_out) for config in CONFIGS.values() for n_in, n_out in config.layer_shapes)
    )


def random(backend: Any, shape: tuple[int, ...], dtype: str, seed: int = 0, scale: float = 1.0) -> Any:
    """A standard-normal array of ``shape`` and ``dtype`` on ``backend``'s device (drawn on the host)."""
    host = np.random.default_rng(seed).standard_normal(shape) * scale
    return backend.asarray(host, dtype=dtype)


def fits_device(device: str, elements: int) -> bool:
    """Whether a case of ``elements`` array elements is worth running on ``device``.

    The NumPy reference backend is there as a baseline, not to be timed on the
    GPU-sized cases (tens of seconds per round); other devices run everything.
    """
    return device != "numpy" or elements <= 2**27
