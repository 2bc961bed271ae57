"""The per-step path's own cost: a training loop written with the public API against the minimal loop.

Issue 11's target: a per-step loop written by hand with fusednn's public API
(``model.forward``, the loss, ``model.backward``, ``optimizer.step``) should cost
within 1.5x of the minimal per-step Python loop around the same kernels — preallocated
buffers, ``np.matmul(..., out=)`` and direct calls of the Numba kernels, no checks.
Both run float32 softmax cross-entropy with Adam on the cpu backend, on one fixed
batch. Each (configuration, loop) runs in a fresh process, alternating, best block of
``--steps`` steps over ``--repeats`` counts (the machine may be shared; ``--clock cpu``
counts the process's CPU time instead of wall time, which other work on the machine
disturbs less)::

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python -m benchmarks.bench_step_overhead --configs xor digits
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import pytest

from benchmarks.configs import CONFIGS, Config
from benchmarks.peers import fusednn_step, make_batch
from benchmarks.suite import grid

LOOPS = ("public", "minimal")
CLOCKS: dict[str, Callable[[], float]] = {"wall": time.perf_counter, "cpu": time.process_time}
TARGET = 1.5
"""The public loop's step may cost at most this many minimal steps."""


def public_step(config: Config, device: str = "cpu") -> Callable[[], Any]:
    """One step as a user writes it: forward, loss, backward, step (the runner's fusednn step-mode peer)."""
    return fusednn_step(config, device).run


def minimal_step(config: Config) -> Callable[[], Any]:
    """The same step with nothing but the kernels: buffers preallocated, no checks, no dispatch."""
    import numpy as np

    from fusednn import nn
    from fusednn.backends.base import adam_scalars
    from fusednn.kernels.activation_codes import ACTIVATION_CODES
    from fusednn.kernels.cpu import dense, losses, optim

    model = nn.MLP(list(config.sizes), activation=config.activation, device="cpu", dtype="float32", seed=0)
    x, y = make_batch(config)  # the public step's batch
    params = model.parameters()
    weights = [(layer.W, layer.b, layer.dW, layer.db) for layer in model.layers]
    epilogues = [dense.for_activation(ACTIVATION_CODES[layer.activation]) for layer in model.layers]
    widths = [w.shape[1] for w, *_ in weights]
    z = [np.empty((config.batch, n), np.float32) for n in widths]
    h = [x] + [np.empty((config.batch, n), np.float32) for n in widths]
    dz = [np.empty((config.batch, n), np.float32) for n in widths]
    dh = [np.empty((config.batch, n), np.float32) for n in widths]
    exp_avg, exp_avg_sq, empty = (np.zeros_like(params.data) for _ in range(3))
    beta1, beta2 = 0.9, 0.999
    one = np.float32
    count = [0]

    def step() -> Any:
        for i, (W, b, _, _) in enumerate(weights):
            np.matmul(h[i], W, out=z[i])
            epilogues[i].bias_activation(z[i], b, h[i + 1])
        total = losses.cross_entropy_labels(h[-1], y, dh[-1])
        for i in range(len(weights) - 1, -1, -1):
            W, _, dW, db = weights[i]
            epilogues[i].activation_grad_bias(dh[i], z[i], h[i + 1], dz[i], db)
            np.matmul(h[i].T, dz[i], out=dW)
            if i:
                np.matmul(dz[i], W.T, out=dh[i - 1])
        count[0] += 1
        step_size, bc2 = adam_scalars(1e-3, beta1, beta2, count[0])
        optim.adam(
            params.data, params.grad, exp_avg, exp_avg_sq, empty,
            one(step_size), one(bc2), one(1 - beta1), one(beta2), one(1 - beta2), one(1e-8), one(0.0), False,
        )  # fmt: skip
        return total

    return step


@pytest.mark.parametrize("case", grid(["xor", "digits"]))
def test_public_step(device: str, backend: Any, measure: Any, case: str) -> None:
    """One training step written with the public API, on every device (the script compares it with the minimal loop)."""
    measure(public_step(CONFIGS[case], device), sync=backend.synchronize)


def measure(name: str, loop: str, steps: int, repeats: int, clock: Callable[[], float] = time.perf_counter) -> float:
    """Best µs per step of ``loop`` on configuration ``name`` over ``repeats`` blocks of ``steps``."""
    config = CONFIGS[name]
    step = (public_step if loop == "public" else minimal_step)(config)
    for _ in range(max(100, steps // 10)):
        step()
    best = float("inf")
    for _ in range(repeats):
        start = clock()
        for _ in range(steps):
            step()
        best = min(best, clock() - start)
    return best / steps * 1e6


def main(argv: list[str] | None = None) -> None:
    """Run each (configuration, loop) in its own process, alternating, and print the ratio and the target."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", default=["xor", "digits"])
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=2, help="fresh processes per (configuration, loop)")
    parser.add_argument("--clock", choices=CLOCKS, default="wall")
    parser.add_argument("--child", nargs=2, metavar=("CONFIG", "LOOP"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(measure(args.child[0], args.child[1], args.steps, args.repeats, CLOCKS[args.clock])))
        return
    print(f"| config | public µs | minimal µs | public ÷ minimal | target ≤ {TARGET}× |")
    print("| --- | ---: | ---: | ---: | --- |")
    for name in args.configs:
        best = dict.fromkeys(LOOPS, float("inf"))
        for _ in range(args.rounds):
            for loop in LOOPS:
                command = [sys.executable, "-m", "benchmarks.bench_step_overhead", "--child", name, loop]
                command += ["--steps", str(args.steps), "--repeats", str(args.repeats), "--clock", args.clock]
                done = subprocess.run(command, check=True, capture_output=True, text=True)
                best[loop] = min(best[loop], json.loads(done.stdout))
        ratio = best["public"] / best["minimal"]
        verdict = "pass" if ratio <= TARGET else "**FAIL**"
        print(f"| {name} | {best['public']:.1f} | {best['minimal']:.1f} | {ratio:.2f} | {verdict} |")


if __name__ == "__main__":
    main()
