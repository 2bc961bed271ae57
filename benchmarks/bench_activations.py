"""Every activation, forward ``h = act(z)`` and backward ``dz = dh * act'(z)``, on every device."""

from __future__ import annotations

import pytest

from fusednn import ACTIVATIONS

from .suite import grid, random

QUICK = [
    ("relu", "float32", (32, 16)),
    ("relu", "float32", (128, 256)),
    ("sigmoid", "float32", (128, 256)),
    ("gelu", "float32", (128, 256)),
    ("relu", "float32", (1024, 1024)),
]
FULL = [
    (name, dtype, shape)
    for name in ACTIVATIONS
    for dtype in ("float32", "float64")
    for shape in ((128, 256), (1024, 1024), (4096, 2048))
    if (name, dtype, shape) not in QUICK
]
CASES = grid(QUICK, FULL, ids=lambda c: f"{c[0]}-{c[1]}-{'x'.join(map(str, c[2]))}")


@pytest.mark.parametrize("case", CASES)
def test_activation_forward(backend, measure, case):
    name, dtype, shape = case
    z = random(backend, shape, dtype)
    h = backend.empty(shape, dtype)
    measure(backend.activation, name, z, out=h, sync=backend.synchronize)


@pytest.mark.parametrize("case", CASES)
def test_activation_backward(backend, measure, case):
    name, dtype, shape = case
    z = random(backend, shape, dtype)
    h = backend.activation(name, z)
    dh = random(backend, shape, dtype, seed=1)
    dz = backend.empty(shape, dtype)
    measure(backend.activation_backward, name, z, h, dh, out=dz, sync=backend.synchronize)
