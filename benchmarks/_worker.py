"""Time one peer's training (a step, or an epoch in ``fit`` mode) in a process of its own, driven by the runner.

Each peer runs in its own process so that no two thread pools (Numba's, OpenBLAS's,
PyTorch's) are ever loaded and busy in the process being timed, and so that every
peer starts from the same clean state. The protocol is one JSON object per line::

    python -m benchmarks._worker --peer torch --config mnist-s --device cpu [--mode fit --fit-steps 1000]
    -> {"status": "ready", "build_s": ..., "first_step_s": ..., "steps_per_repeat": k, "info": {...}}
    <- run
    -> {"us_per_step": ...}          (one timed block of k steps, divided by k)
    <- quit

In ``fit`` mode the unit of work is a whole epoch (see :class:`~benchmarks.peers.Workload`):
``first_step_s`` is then the first epoch, a block is a whole number of epochs, and
``us_per_step`` is the block's time over the steps of its epochs.

A peer that cannot run answers ``{"status": "unavailable", "reason": ...}`` and exits.
``--gemm`` instead prints the GEMM throughputs for the named configurations and exits;
``--no-serve`` prints the ready line and exits (the cold-start measurements use it).

The first step or epoch (JIT compilation, kernel loading, allocator warm-up) is timed
on its own and never enters the per-step figures: a few more warm-up steps (one more
epoch) follow it, then the block length ``k`` is fixed so that a block lasts about
``--target-s``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

WARMUP_STEPS = 3
"""Untimed steps after the first, so caches, allocators and thread pools settle..."""
WARMUP_EPOCHS = 1
"""... or untimed epochs in ``fit`` mode (an epoch has a thousand steps)."""


def _emit(payload: dict) -> None:
    print(json.dumps(payload), flush=True)


def _timed_block(step, count: int) -> float:
    """Seconds for ``count`` calls of ``step.run``, the device synchronised before the clock is read."""
    step.sync()
    start = time.perf_counter()
    for _ in range(count):
        step.run()
    step.sync()
    return time.perf_counter() - start


def serve(args: argparse.Namespace) -> int:
    """Build the peer, report the first-step cost and block length, then answer ``run`` lines until ``quit``."""
    from .configs import CONFIGS, fit_epoch_steps
    from .peers import PeerUnavailable, Workload, blas_info, build_peer

    config = CONFIGS[args.config]
    epoch_steps = fit_epoch_steps(config, args.fit_steps, args.fit_max_mb) if args.mode == "fit" else 1
    start = time.perf_counter()
    try:
        step = build_peer(args.peer, Workload(config, args.mode, epoch_steps), args.device)
    except PeerUnavailable as error:
        _emit({"status": "unavailable", "reason": str(error)})
        return 0
    build_s = time.perf_counter() - start
    first_step_s = _timed_block(step, 1)
    warmup = _timed_block(step, WARMUP_STEPS if step.steps == 1 else WARMUP_EPOCHS)
    # An epoch is long enough to time on its own: the warm-up epoch is the estimate.
    estimate = _timed_block(step, 1) if step.steps == 1 else warmup / WARMUP_EPOCHS
    calls = max(1, round(args.target_s / max(estimate, 1e-9)))
    info = dict(step.info, blas=blas_info())
    _emit(
        {
            "status": "ready",
            "build_s": build_s,
            "first_step_s": first_step_s,
            "steps_per_repeat": calls * step.steps,
            "epoch_steps": step.steps,
            "info": info,
        }
    )
    if args.no_serve:
        return 0
    for line in sys.stdin:
        command = line.strip()
        if command == "quit":
            break
        if command != "run":
            _emit({"error": f"unknown command {command!r}; expected 'run' or 'quit'"})
            continue
        _emit({"us_per_step": _timed_block(step, calls) / (calls * step.steps) * 1e6})
    return 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The worker's command line (the runner builds it; see the module docstring)."""
    from .configs import CONFIGS, DEVICE_KINDS, FIT_MAX_MB, FIT_STEPS, MODES
    from .peers import PEERS

    parser = argparse.ArgumentParser(prog="python -m benchmarks._worker", description=__doc__.splitlines()[0])
    parser.add_argument("--peer", choices=PEERS)
    parser.add_argument("--config", choices=list(CONFIGS))
    parser.add_argument("--device", choices=DEVICE_KINDS, default="cpu")
    parser.add_argument(
        "--target-s",
        type=float,
        default=0.2,
        help="length of one timed block (default 0.2 s)",
    )
    parser.add_argument("--mode", choices=MODES, default="step", help="time a step (default) or an epoch")
    parser.add_argument("--fit-steps", type=int, default=FIT_STEPS, help="steps per fit-mode epoch")
    parser.add_argument("--fit-max-mb", type=float, default=FIT_MAX_MB, help="cap on a fit-mode data set in MiB")
    parser.add_argument("--no-serve", action="store_true", help="exit after the ready line")
    parser.add_argument(
        "--gemm",
        nargs="+",
        metavar="CONFIG",
        help="measure GEMM throughput at these configs' shapes",
    )
    args = parser.parse_args(argv)
    if args.gemm is None and (args.peer is None or args.config is None):
        parser.error("--peer and --config are required unless --gemm is given")
    return args


def main(argv: list[str] | None = None) -> int:
    """Entry point: a GEMM measurement or a served peer."""
    args = parse_args(argv)
    if args.gemm is not None:
        from .configs import CONFIGS, gemm_shapes
        from .gemm import measure_gemm

        shapes = [shape for name in args.gemm for shape in gemm_shapes(CONFIGS[name])]
        _emit(measure_gemm(args.device, shapes, min_time_s=args.target_s))
        return 0
    return serve(args)


if __name__ == "__main__":
    sys.exit(main())
