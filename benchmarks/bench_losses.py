"""Fused softmax cross-entropy (loss and ``dlogits`` in one call) over integer labels."""

from __future__ import annotations

import numpy as np
import pytest

from .suite import fits_device, grid, random

QUICK = [("float32", (4, 2)), ("float32", (128, 10)), ("float32", (1024, 10))]
FULL = [
    (dtype, shape)
    for dtype in ("float32", "float64")
    for shape in ((128, 10), (1024, 10), (4096, 10), (65536, 10), (1024, 1000))
    if (dtype, shape) not in QUICK
]


@pytest.mark.parametrize("case", grid(QUICK, FULL, ids=lambda c: f"{c[0]}-{'x'.join(map(str, c[1]))}"))
def test_softmax_cross_entropy(backend, device, measure, case):
    dtype, (n, classes) = case
    if not fits_device(device, n * classes):
        pytest.skip("too large for the NumPy reference")
    logits = random(backend, (n, classes), dtype, scale=3.0)
    labels = backend.asindex(np.random.default_rng(1).integers(0, classes, n))
    measure(backend.softmax_cross_entropy, logits, labels, sync=backend.synchronize)
