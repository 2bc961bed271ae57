"""Samples per second of data-parallel ``fit`` on one configuration, for as many ranks as the job has.

Run it once per rank count, a thread per rank, and hand the files to the scaling model, which
sets them beside its prediction (``python -m benchmarks.scaling_model ... --cpu-dp dp1.json dp2.json``)::

    export OMP_NUM_THREADS=1 NUMBA_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1
    mpiexec -n 1 python -m benchmarks.dp_throughput --config mnist-l --json dp1.json
    mpiexec -n 2 python -m benchmarks.dp_throughput --config mnist-l --json dp2.json

One rank runs under ``mpiexec`` too, so that both are launched alike: on the 2-core machine
of 2026-12-01 a plain ``python`` process trained mnist-l up to about 15 % slower than one
that ``mpiexec -n 1`` started, which passed for a super-linear speed-up at 2 ranks.

Every rank trains the configuration's MLP (float32, Adam at 0.001, its batch per rank, the
``cpu`` backend) on random rows through the per-step path (data-parallel ``fit`` has no
compiled epochs, so one rank takes that path too), in one ``fit`` call of ``epochs + 2``
epochs of ``steps`` global batches: a warm-up, the timed ones, and one whose start stops
the clock. The clock is read as each epoch starts (by a constant learning-rate "schedule",
which ``fit`` asks once per epoch), so an epoch's time holds its steps and its own end (the
step losses summed over the ranks, the check that the ranks' weights agree), and not the
call's set-up (the ranks checking they hold the same data, the weights broadcast). The best
epoch counts.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from .configs import CONFIGS


class EpochClock:
    """A constant learning rate that notes the time, and a counter, whenever ``fit`` asks for an epoch's rate.

    >>> clock = EpochClock(0.1, counter=lambda: 7.0)
    >>> clock(0.0), clock.counters
    (0.1, [7.0])
    """

    def __init__(self, lr: float, counter: Callable[[], float] = lambda: 0.0) -> None:
        self.lr = lr
        self.counter = counter
        self.stamps: list[float] = []
        self.counters: list[float] = []

    def __call__(self, t: float) -> float:
        self.stamps.append(time.perf_counter())
        self.counters.append(self.counter())
        return self.lr


def _timed(comm: Any) -> Any:
    """``comm`` adding up the seconds its array all-reduces take (the gradient's, once per step, waits included)."""
    allreduce = comm.allreduce

    def timed(array: Any) -> None:
        started = time.perf_counter()
        allreduce(array)
        comm.allreduce_seconds += time.perf_counter() - started

    comm.allreduce_seconds = 0.0
    comm.allreduce = timed
    return comm


def samples_per_s(
    config_name: str, steps: int, epochs: int, batch_per_rank: int | None = None, epoch_path: str = "per-step"
) -> dict[str, Any]:
    """The job's samples/s on ``config_name`` in its best of ``epochs`` timed epochs, on every rank.

    ``batch_per_rank`` defaults to the configuration's batch; ``epoch_path`` is ``fit``'s (a job of
    several ranks trains per step).
    """
    from fusednn import nn
    from fusednn.distributed.mpi import MPICommunicator

    comm = _timed(MPICommunicator())
    config = CONFIGS[config_name]
    batch = config.batch if batch_per_rank is None else batch_per_rank
    rows = batch * comm.size * steps
    rng = np.random.default_rng(0)
    x = rng.standard_normal((rows, config.sizes[0]), dtype=np.float32)
    y = rng.integers(0, config.sizes[-1], rows)
    model = nn.MLP(list(config.sizes), activation=config.activation, device="cpu", seed=0)
    clock = EpochClock(1e-3, lambda: comm.allreduce_seconds)
    nn.fit(
        model,
        x,
        y,
        optimizer="adam",
        epochs=epochs
        + 2,  # the first compiles the kernels and connects the ranks; the last starts only to stop the clock
        batch_size=batch,
        schedule=clock,
        schedule_interval="epoch",
        progress=False,
        epoch_path=epoch_path,
        distributed=comm if comm.size > 1 else None,
    )
    epoch_s = [end - start for start, end in zip(clock.stamps[1:], clock.stamps[2:], strict=False)]
    allreduce_s = [end - start for start, end in zip(clock.counters[1:], clock.counters[2:], strict=False)]
    best = int(np.argmin(epoch_s))
    return {
        "config": config_name,
        "ranks": comm.size,
        "batch_per_rank": batch,
        "steps": steps,
        "epoch_path": epoch_path,
        "samples_per_s": rows / epoch_s[best],
        "epoch_s": epoch_s,
        "allreduce_share": allreduce_s[best] / epoch_s[best],
        "is_root": comm.is_root,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.dp_throughput", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="mnist-l", choices=list(CONFIGS), help="the benchmark configuration")
    parser.add_argument("--steps", type=int, default=12, help="global batches per epoch")
    parser.add_argument("--epochs", type=int, default=4, help="timed epochs (after a warm-up one); the best counts")
    parser.add_argument("--batch-per-rank", type=int, default=None, help="rows per rank (default: the config's batch)")
    parser.add_argument("--epoch-path", default="per-step", choices=["per-step", "compiled"], help="fit's epoch_path")
    parser.add_argument("--json", help="write the figures here (rank 0)")
    args = parser.parse_args(argv)
    if args.steps < 1 or args.epochs < 1:
        parser.error(f"--steps and --epochs must be at least 1, got {args.steps} and {args.epochs}")
    record = samples_per_s(args.config, args.steps, args.epochs, args.batch_per_rank, args.epoch_path)
    if not record.pop("is_root"):
        return
    print(json.dumps(record))
    if args.json:
        Path(args.json).write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main()
