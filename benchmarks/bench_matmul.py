"""Matrix products: squares and every GEMM of the standard MLPs, float32 and float64, on every device."""

from __future__ import annotations

import pytest

from .suite import fits_device, grid, mlp_gemm_shapes, random

QUICK = [("float32", (32, 32, 32)), ("float32", (512, 512, 512)), ("float32", (128, 784, 256))]
FULL = [
    (dtype, shape)
    for dtype in ("float32", "float64")
    for shape in [(n, n, n) for n in (64, 256, 1024, 2048)] + mlp_gemm_shapes()
    if (dtype, shape) not in QUICK
]


@pytest.mark.parametrize("case", grid(QUICK, FULL, ids=lambda c: f"{c[0]}-{'x'.join(map(str, c[1]))}"))
def test_matmul(backend, device, measure, case):
    dtype, (m, k, n) = case
    if not fits_device(device, m * k + k * n + m * n):
        pytest.skip("too large for the NumPy reference")
    a, b = random(backend, (m, k), dtype), random(backend, (k, n), dtype, seed=1)
    out = backend.empty((m, n), dtype)
    measure(backend.matmul, a, b, out=out, sync=backend.synchronize)
