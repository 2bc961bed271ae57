"""The fused dense layer: forward (GEMM + bias + activation) and backward (epilogue, ``dW``, ``db``, ``dx``)."""

from __future__ import annotations

import pytest

from .suite import fits_device, grid, mlp_layer_shapes, random

QUICK = [("relu", "float32", (4, 2, 3)), ("relu", "float32", (128, 784, 256)), ("relu", "float32", (1024, 784, 1024))]
FULL = [
    (activation, dtype, shape)
    for activation in ("relu", "sigmoid")
    for dtype in ("float32", "float64")
    for shape in mlp_layer_shapes()
    if (activation, dtype, shape) not in QUICK
]
CASES = grid(QUICK, FULL, ids=lambda c: f"{c[0]}-{c[1]}-{'x'.join(map(str, c[2]))}")


def _layer(backend, device, dtype, shape):
    n, n_in, n_out = shape
    if not fits_device(device, n * (n_in + 3 * n_out)):
        pytest.skip("too large for the NumPy reference")
    x = random(backend, (n, n_in), dtype)
    W = random(backend, (n_in, n_out), dtype, seed=1, scale=n_in**-0.5)
    b = random(backend, (n_out,), dtype, seed=2)
    return x, W, b


@pytest.mark.parametrize("case", CASES)
def test_dense_forward(backend, device, measure, case):
    activation, dtype, shape = case
    x, W, b = _layer(backend, device, dtype, shape)
    measure(backend.dense_forward, x, W, b, activation, sync=backend.synchronize)


@pytest.mark.parametrize("case", CASES)
def test_dense_backward(backend, device, measure, case):
    activation, dtype, shape = case
    x, W, b = _layer(backend, device, dtype, shape)
    y, z = backend.dense_forward(x, W, b, activation)
    dy = random(backend, tuple(y.shape), dtype, seed=3)
    dW, db = backend.empty(tuple(W.shape), dtype), backend.empty(tuple(b.shape), dtype)
    measure(backend.dense_backward, x, W, z, y, dy, activation, dW, db, sync=backend.synchronize)
