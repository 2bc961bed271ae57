"""One optimizer step (SGD with momentum, RMSprop, Adam) over a flat parameter buffer of 1e4 to 1e7 elements."""

from __future__ import annotations

import pytest

from .suite import grid, random

OPTIMIZERS = ("sgd", "rmsprop", "adam")
QUICK = [(name, "float32", 10_000) for name in OPTIMIZERS] + [(name, "float32", 1_000_000) for name in OPTIMIZERS]
FULL = [(name, "float32", 10_000_000) for name in OPTIMIZERS] + [
    (name, "float64", size) for name in OPTIMIZERS for size in (10_000, 1_000_000, 10_000_000)
]


def _step(backend, name, dtype, size):
    """The backend's step for ``name`` with PyTorch's usual hyperparameters, bound to fresh flat buffers."""
    param, grad = random(backend, (size,), dtype), random(backend, (size,), dtype, seed=1, scale=1e-2)
    zeros = [backend.zeros(size, dtype) for _ in range(2)]
    if name == "sgd":
        options = dict(lr=1e-2, momentum=0.9, dampening=0.0, nesterov=False, weight_decay=0.0, first_step=False)
        return lambda: backend.sgd_step(param, grad, zeros[0], **options)
    if name == "rmsprop":
        options = dict(lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0.0, momentum=0.0, centered=False)
        return lambda: backend.rmsprop_step(param, grad, zeros[0], None, None, **options)
    options = dict(lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0, amsgrad=False, step=10)
    return lambda: backend.adam_step(param, grad, zeros[0], zeros[1], None, **options)


@pytest.mark.parametrize("case", grid(QUICK, FULL, ids=lambda c: f"{c[0]}-{c[1]}-{c[2]:.0e}"))
def test_optimizer_step(backend, measure, case):
    name, dtype, size = case
    measure(_step(backend, name, dtype, size), sync=backend.synchronize)
