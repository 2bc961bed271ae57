"""Training steps through ``nn.fit`` itself: an epoch per benchmark round, and per-step vs compiled epochs.

Under pytest-benchmark, :func:`test_fit_epoch` times one 100-step epoch of ``nn.fit``
per standard configuration on every device (on the cpu, one compiled call:
``History.params["epoch_path"]``). Run as a script, it compares the two cpu paths side
by side in µs per step. Each (configuration, path) runs in a fresh process: one warm-up
epoch (compiles and fills the caches), then ``--repeats`` timed epochs of ``--steps``
steps each; the best epoch counts (the machine may be shared). Each path is chosen
with ``fit(epoch_path=...)``.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python -m benchmarks.bench_fit --configs xor digits
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from typing import Any

import pytest

from benchmarks.configs import CONFIGS, Config
from benchmarks.suite import grid

PATHS = ("per-step", "compiled")


def _problem(config: Config, device: str, steps: int) -> tuple[Any, Any, Any, Any]:
    """Random inputs and labels for ``steps`` batches of ``config``, its model on ``device`` and an Adam over it."""
    import numpy as np

    from fusednn import nn

    rng = np.random.default_rng(0)
    n = config.batch * steps
    x = rng.standard_normal((n, config.sizes[0])).astype(np.float32)
    y = rng.integers(0, config.sizes[-1], n)
    model = nn.MLP(list(config.sizes), activation=config.activation, device=device, seed=0)
    return x, y, model, nn.Adam(model.parameters(), lr=1e-3)


@pytest.mark.parametrize("case", grid(["xor", "digits", "mnist-s"]))
def test_fit_epoch(device: str, backend: Any, measure: Any, case: str) -> None:
    """One epoch of 100 steps through ``nn.fit`` (data checks, epoch bookkeeping and all)."""
    from fusednn import nn

    config = CONFIGS[case]
    if ("cpu" if device == "numpy" else device) not in config.devices:
        pytest.skip(f"{case} runs on {', '.join(config.devices)} only")
    x, y, model, opt = _problem(config, device, steps=100)
    measure(nn.fit, model, x, y, optimizer=opt, batch_size=config.batch, progress=False, sync=backend.synchronize)


def measure(name: str, path: str, steps: int, repeats: int) -> dict[str, float | str]:
    """Best µs per step over ``repeats`` epochs of ``steps`` steps of configuration ``name`` on ``path``."""
    from fusednn import nn

    x, y, model, opt = _problem(CONFIGS[name], "cpu", steps)
    kwargs = {"batch_size": CONFIGS[name].batch, "progress": False, "epoch_path": path}
    history = nn.fit(model, x, y, optimizer=opt, epochs=1, **kwargs)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        nn.fit(model, x, y, optimizer=opt, epochs=1, **kwargs)
        best = min(best, time.perf_counter() - start)
    return {
        "config": name,
        "path": str(history.params.get("epoch_path", "per-step")),
        "us_per_step": best / steps * 1e6,
    }


def main(argv: list[str] | None = None) -> None:
    """Run every (configuration, path) pair in its own process and print a table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", default=["xor", "digits", "mnist-s"])
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--child", nargs=2, metavar=("CONFIG", "PATH"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(measure(args.child[0], args.child[1], args.steps, args.repeats)))
        return
    print(f"{'config':<10} {'path':<10} {'us/step':>10}")
    for name in args.configs:
        for path in PATHS:
            command = [sys.executable, "-m", "benchmarks.bench_fit", "--child", name, path]
            command += ["--steps", str(args.steps), "--repeats", str(args.repeats)]
            result = json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout)
            print(f"{name:<10} {result['path']:<10} {result['us_per_step']:>10.1f}")


if __name__ == "__main__":
    main()
