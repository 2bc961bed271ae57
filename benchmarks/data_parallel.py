"""Samples per second of data-parallel training on this machine: 1 and 2 MPI ranks against 1 process with 2 threads.

Each setting trains the same model on the same rows with the same global batch (so the
same weights, to rounding): mnist-l's 784-1024-1024-10 ReLU MLP with softmax cross-entropy
and Adam at a global batch of 1,024, on random float32 rows, through ``nn.fit``:

* ``1 rank, 1 thread`` and ``1 rank, 2 threads``: one process, its BLAS and Numba pools
  held to that many threads, on the per-step path and on compiled epochs;
* ``2 ranks, 1 thread each``: ``mpiexec -n 2``, ``fit(distributed=...)``, 512 rows per rank.

The all-reduce's share of a step is timed inside the ranks: the communicator adds up the
seconds its gradient all-reduces take (including waiting for the slower rank).

Every setting runs in fresh processes, alternating, ``--rounds`` times; each process times
one ``fit`` call of ``--epochs`` epochs after a warm-up epoch. The table gives the best and
median over the rounds.

    python -m benchmarks.data_parallel --json benchmarks/results/data-parallel.json

``OPENBLAS_CORETYPE`` and ``OPENBLAS_L2_SIZE`` are removed from the workers' environment (they
can halve OpenBLAS's GEMM on this machine).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

SIZES = (784, 1024, 1024, 10)
GLOBAL_BATCH = 1024

SETTINGS: dict[str, dict[str, Any]] = {
    "1 rank, 1 thread, per-step": {"ranks": 1, "threads": 1, "epoch_path": "per-step"},
    "1 rank, 1 thread, compiled": {"ranks": 1, "threads": 1, "epoch_path": "compiled"},
    "1 rank, 2 threads, per-step": {"ranks": 1, "threads": 2, "epoch_path": "per-step"},
    "1 rank, 2 threads, compiled": {"ranks": 1, "threads": 2, "epoch_path": "compiled"},
    "2 ranks, 1 thread each": {"ranks": 2, "threads": 1, "epoch_path": "per-step"},
}


def _timed_communicator() -> Any:
    """An MPI communicator that adds up the seconds spent in its array all-reduces (the gradient's, per step)."""
    from fusednn.distributed.mpi import MPICommunicator

    class Timed(MPICommunicator):
        seconds = 0.0
        calls = 0

        def allreduce(self, array: Any) -> None:
            started = time.perf_counter()
            super().allreduce(array)
            self.seconds += time.perf_counter() - started
            self.calls += 1

    return Timed()


def worker(rows: int, epochs: int, epoch_path: str) -> dict[str, Any]:
    """Train in this process (or rank); returns the best epoch's seconds and, on ranks, the all-reduce share."""
    from fusednn import nn

    comm = None
    if "OMPI_COMM_WORLD_SIZE" in os.environ:
        comm = _timed_communicator()
    ranks = 1 if comm is None else comm.size
    rng = np.random.default_rng(0)
    x = rng.standard_normal((rows, SIZES[0]), dtype=np.float32)
    y = rng.integers(0, SIZES[-1], rows)
    model = nn.MLP(list(SIZES), activation="relu", device="cpu", seed=0)
    optimizer = nn.Adam(model.parameters(), lr=1e-3)

    def seconds_per_epoch(count: int) -> float:
        started = time.perf_counter()
        nn.fit(
            model, x, y, optimizer=optimizer, epochs=count, batch_size=GLOBAL_BATCH // ranks, progress=False,
            distributed=comm, epoch_path=epoch_path,
        )  # fmt: skip
        return (time.perf_counter() - started) / count

    seconds_per_epoch(1)  # compiles or loads the kernels, warms the allocator
    if comm is not None:
        comm.seconds, comm.calls = 0.0, 0
    seconds = seconds_per_epoch(epochs)  # one fit call: its per-call checks are spread over the epochs
    share = None if comm is None else comm.seconds / (seconds * epochs)
    return {"epoch_s": seconds, "allreduce_share": share, "steps": rows // GLOBAL_BATCH}


def _environment(threads: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")}
    for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
        env[name] = str(threads)
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).resolve().parent.parent), env.get("PYTHONPATH", "")])
    return env


def run_setting(setting: dict[str, Any], rows: int, epochs: int) -> dict[str, Any]:
    """One fresh process (or MPI job) of ``setting``; rank 0's report."""
    command = [sys.executable, "-m", "benchmarks.data_parallel", "--worker", "--rows", str(rows)]
    command += ["--epochs", str(epochs), "--epoch-path", setting["epoch_path"]]
    if setting["ranks"] > 1:
        mpiexec = shutil.which("mpiexec")
        if mpiexec is None:
            raise RuntimeError("mpiexec is not on PATH: pip install -e '.[distributed]'")
        command = [mpiexec, "--allow-run-as-root", "--oversubscribe", "-n", str(setting["ranks"]), *command]
    result = subprocess.run(command, env=_environment(setting["threads"]), capture_output=True, text=True, check=False)
    if result.returncode:
        raise RuntimeError(f"{' '.join(command)} failed:\n{result.stderr}")
    reports = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    return reports[0]


def table(results: dict[str, list[dict[str, Any]]], rows: int) -> str:
    """The markdown table of ``results`` (setting -> one report per round)."""
    base = statistics.median(r["epoch_s"] for r in results["1 rank, 1 thread, per-step"])
    lines = [
        "| setting | samples/s best | samples/s median | × 1 rank, 1 thread (per-step) | all-reduce share |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for name, reports in results.items():
        seconds = [r["epoch_s"] for r in reports]
        shares = [r["allreduce_share"] for r in reports if r["allreduce_share"] is not None]
        share = f"{statistics.median(shares):.1%}" if shares else "-"
        lines.append(
            f"| {name} | {rows / min(seconds):,.0f} | {rows / statistics.median(seconds):,.0f} | "
            f"{base / statistics.median(seconds):.2f} | {share} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=16 * GLOBAL_BATCH, help="training rows (a multiple of 1,024)")
    parser.add_argument("--epochs", type=int, default=3, help="epochs of the timed fit call, after one warm-up")
    parser.add_argument("--rounds", type=int, default=3, help="fresh processes per setting, alternating")
    parser.add_argument("--json", type=Path, default=None, help="write the reports here")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--epoch-path", default="per-step", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args.rows, args.epochs, args.epoch_path)), flush=True)
        return
    results: dict[str, list[dict[str, Any]]] = {name: [] for name in SETTINGS}
    for round_ in range(args.rounds):
        names = list(SETTINGS)
        names = names[round_ % len(names) :] + names[: round_ % len(names)]  # rotate who goes first
        for name in names:
            results[name].append(run_setting(SETTINGS[name], args.rows, args.epochs))
            print(f"round {round_ + 1}: {name}: {results[name][-1]}", file=sys.stderr, flush=True)
    print(table(results, args.rows))
    if args.json is not None:
        args.json.write_text(json.dumps({"rows": args.rows, "global_batch": GLOBAL_BATCH, "results": results}))


if __name__ == "__main__":
    main()
