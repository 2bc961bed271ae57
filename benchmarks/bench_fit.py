"""Microseconds per training step through ``nn.fit`` on the cpu, per-step path vs compiled epochs.

Each (configuration, path) runs in a fresh process: one warm-up epoch (compiles and
fills the caches), then ``--repeats`` timed epochs of ``--steps`` steps each; the best
epoch counts (the machine may be shared). The per-step path is forced by making the
training loop find no plan for the model, which is what ``fit`` does for a layer without a compiled form.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python -m benchmarks.bench_fit --configs xor digits
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

from benchmarks.configs import CONFIGS

PATHS = ("per-step", "compiled")


def measure(name: str, path: str, steps: int, repeats: int) -> dict[str, float | str]:
    """Best µs per step over ``repeats`` epochs of ``steps`` steps of configuration ``name`` on ``path``."""
    import numpy as np

    from fusednn import nn
    from fusednn.nn import training

    if path == "per-step":
        training.epoch_plan = lambda *args: None  # no plan: fit steps from Python
    config = CONFIGS[name]
    rng = np.random.default_rng(0)
    n = config.batch * steps
    x = rng.standard_normal((n, config.sizes[0])).astype(np.float32)
    y = rng.integers(0, config.sizes[-1], n)
    model = nn.MLP(list(config.sizes), activation=config.activation, device="cpu", seed=0)
    opt = nn.Adam(model.parameters(), lr=1e-3)
    kwargs = {"batch_size": config.batch, "progress": False}
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
