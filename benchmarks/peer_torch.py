"""The PyTorch eager peer, as fast as its users make it: ``zero_grad(set_to_none=True)`` and a chosen Adam.

The runner times three variants, one per ``torch.optim.Adam`` implementation: the
default (for-loop on the CPU, foreach on CUDA), ``foreach=True`` and ``fused=True``;
the targets compare fusednn with the fastest of them.
"""

from __future__ import annotations

import importlib.util
import itertools
from typing import Any

from .peers import LEARNING_RATE, PeerStep, PeerUnavailable, Workload, epoch_order, initial_weights


def torch_peer(workload: Workload, device: str, implementation: str | None) -> PeerStep:
    """PyTorch's ``nn.Sequential`` of ``nn.Linear`` layers, ``CrossEntropyLoss`` and Adam (``implementation``).

    ``fit`` mode is the loop a PyTorch user writes over device tensors: per step,
    ``index_select`` the batch rows of the epoch's permutation (on the device), zero the
    gradients, forward, backward, step; the step losses go into a device vector read
    once per epoch.

    Raises:
        PeerUnavailable: PyTorch is missing, sees no such device, or lacks that Adam here.
    """
    if importlib.util.find_spec("torch") is None:
        raise PeerUnavailable("PyTorch is not installed")
    import torch

    if device == "cuda" and not torch.cuda.is_available():
        raise PeerUnavailable("PyTorch sees no CUDA device (a CPU-only build, or no GPU)")
    config = workload.config
    act = {"relu": torch.nn.ReLU, "sigmoid": torch.nn.Sigmoid}[config.activation]
    layers: list[torch.nn.Module] = []
    weights = initial_weights(config)
    for i, (n_in, n_out) in enumerate(config.layer_shapes):
        linear = torch.nn.Linear(n_in, n_out)
        with torch.no_grad():
            linear.weight.copy_(torch.from_numpy(weights[2 * i].T.copy()))
            linear.bias.copy_(torch.from_numpy(weights[2 * i + 1]))
        layers.append(linear)
        if i < len(config.layer_shapes) - 1:
            layers.append(act())
    model = torch.nn.Sequential(*layers).to(device)
    options = {None: {}, "foreach": {"foreach": True}, "fused": {"fused": True}}[implementation]
    try:
        optimizer = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE, **options)
    except RuntimeError as error:  # e.g. fused Adam on a device without a fused kernel
        raise PeerUnavailable(f"torch.optim.Adam({implementation}=True) is not supported here: {error}") from error
    loss_fn = torch.nn.CrossEntropyLoss()
    x_host, y_host = workload.data()
    x, y = torch.from_numpy(x_host).to(device), torch.from_numpy(y_host).to(device)

    def train(xb: Any, yb: Any) -> Any:
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(model(xb), yb)
        loss.backward()
        optimizer.step()
        return loss.detach()

    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    info: dict[str, Any] = {"library": f"torch {torch.__version__}", "adam": implementation or "default"}
    if device == "cpu":
        info["threads"] = torch.get_num_threads()
    if workload.mode == "step":
        return PeerStep(lambda: train(x, y), sync, info)
    batch, epochs = config.batch, itertools.count()

    def run_epoch() -> float:
        order = torch.from_numpy(epoch_order(next(epochs), workload.rows)).to(device)
        losses = torch.empty(workload.steps, device=device)
        for i in range(workload.steps):
            rows = order[i * batch : (i + 1) * batch]
            losses[i] = train(x.index_select(0, rows), y.index_select(0, rows))
        return losses.mean().item()

    return PeerStep(run_epoch, sync, info, workload.steps)
