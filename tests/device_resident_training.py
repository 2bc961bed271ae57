"""One nn training setup with every array already on the device, shared by the no-host-sync tests.

``tests/test_cuda_backend.py`` runs it on a real GPU under ``cupyx.allow_synchronize(False)``;
``tests/test_cuda_simulated_training.py`` runs it on the simulated GPU under ``no_host_reads()``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

import fusednn
from fusednn import nn

CASES = [
    ("categorical_crossentropy", None, "adam"),
    ("binary_crossentropy", "sigmoid", "rmsprop"),
    ("mse", None, "sgd"),
]
"""(loss, output activation, optimizer) triples covering every loss and optimizer."""


def training_step(device: str, loss: str, output_activation: str | None, optimizer: str) -> Callable[[], Any]:
    """A function running one forward, loss, backward and optimizer step of a small L1/L2 MLP; returns the loss.

    Inputs and targets are moved to ``device`` here, once, as a training script keeps them.
    """
    backend = fusednn.backend(device)
    rng = np.random.default_rng(2)
    x = backend.asarray(rng.normal(size=(32, 6)), "float32")
    labels = rng.integers(0, 3, size=32)
    targets = {
        "categorical_crossentropy": backend.asindex(labels),
        "binary_crossentropy": backend.asarray(np.eye(3)[labels], "float32"),
        "mse": backend.asarray(rng.normal(size=(32, 3)), "float32"),
    }[loss]
    model = nn.MLP([6, 8, 3], activation="relu", output_activation=output_activation, device=device, l1=1e-4, l2=1e-3)
    opt = nn.get_optimizer(optimizer, model.parameters(), lr=0.01)
    loss_fn = nn.get_loss(loss, device=device)

    def step() -> Any:
        value, dout = loss_fn(model.forward(x), targets)
        model.backward(dout, need_input_grad=False)
        opt.step()
        return value

    return step
