"""One optimizer step (SGD with momentum, RMSprop, Adam, AdamW, LAMB, LARS) over a flat buffer of 1e4-1e7 elements."""

from __future__ import annotations

import pytest

from .suite import grid, random

OPTIMIZERS = {
    "sgd": {"lr": 1e-2, "momentum": 0.9},
    "rmsprop": {"lr": 1e-2},
    "adam": {"lr": 1e-3},
    "adamw": {"lr": 1e-3},
    "lamb": {"lr": 1e-3},
    "lars": {"lr": 1.0, "momentum": 0.9},
}
QUICK = [(name, "float32", 10_000) for name in OPTIMIZERS] + [(name, "float32", 1_000_000) for name in OPTIMIZERS]
FULL = [(name, "float32", 10_000_000) for name in OPTIMIZERS] + [
    (name, "float64", size) for name in OPTIMIZERS for size in (10_000, 1_000_000, 10_000_000)
]


def _step(backend, name, dtype, size):
    """``opt.step`` of ``nn.OPTIMIZERS[name]`` with PyTorch's usual hyperparameters over one fresh flat tensor."""
    from fusednn import nn

    params = nn.Parameters([(size,)], backend, dtype)
    params.data[...] = random(backend, (params.size,), dtype)
    params.grad[...] = random(backend, (params.size,), dtype, seed=1, scale=1e-2)
    return nn.OPTIMIZERS[name](params, **OPTIMIZERS[name]).step


@pytest.mark.parametrize("case", grid(QUICK, FULL, ids=lambda c: f"{c[0]}-{c[1]}-{c[2]:.0e}"))
def test_optimizer_step(backend, measure, case):
    name, dtype, size = case
    measure(_step(backend, name, dtype, size), sync=backend.synchronize)
