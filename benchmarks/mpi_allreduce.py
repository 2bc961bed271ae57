"""Time MPI's in-place ``Allreduce`` of float32 host buffers, as data-parallel ``fit(distributed="mpi")`` runs it.

Launch it as a job; rank 0 prints a table and writes the JSON the scaling model reads
(``python -m benchmarks.scaling_model --mpi FILE``)::

    mpiexec -n 2 python -m benchmarks.mpi_allreduce --json mpi.json

Each size is one contiguous float32 array reduced with ``MPI.IN_PLACE`` and ``MPI.SUM``
(what :class:`~fusednn.distributed.mpi.MPICommunicator` calls per optimizer step). After a
warm-up call, every repeat times a block of calls between two barriers and takes the
slowest rank's time; the figure is the best repeat's time per call. Bus bandwidth is
nccl-tests' definition for all-reduce, ``busBW = bytes / t * 2 (P - 1) / P``.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import numpy as np

from fusednn.distributed.mpi import import_mpi

SIZES_BYTES = (4 << 10, 64 << 10, 1 << 20, 2 << 20, 4 << 20, 8 << 20)
"""The sizes timed: two small ones that show the latency, and 1-8 MiB, the gradients of the configurations."""


def time_allreduce(comm: Any, nbytes: int, repeats: int = 25, min_time_s: float = 0.01) -> float:
    """Best seconds per in-place float32 ``Allreduce`` of ``nbytes`` over ``comm`` (the slowest rank's), on every rank.

    Every rank must call it with the same arguments.
    """
    MPI = import_mpi()
    buffer = np.ones(nbytes // 4, dtype=np.float32)
    comm.Allreduce(MPI.IN_PLACE, buffer, op=MPI.SUM)  # first call: connection set-up stays out of the figure
    comm.Barrier()
    start = time.perf_counter()
    comm.Allreduce(MPI.IN_PLACE, buffer, op=MPI.SUM)
    # Every rank must run the same number of calls: agree on the largest count any rank asks for.
    count = comm.allreduce(max(1, int(min_time_s / max(time.perf_counter() - start, 1e-9))), op=MPI.MAX)
    best = float("inf")
    for _ in range(repeats):
        buffer.fill(1.0)  # the sums grow by a factor of P per call; start each block from ones
        comm.Barrier()
        start = time.perf_counter()
        for _ in range(count):
            comm.Allreduce(MPI.IN_PLACE, buffer, op=MPI.SUM)
        elapsed = comm.allreduce(time.perf_counter() - start, op=MPI.MAX)
        best = min(best, elapsed / count)
    return best


def bus_bandwidth(nbytes: float, ranks: int, seconds: float) -> float:
    """nccl-tests' all-reduce bus bandwidth in bytes/s: ``nbytes / seconds * 2 (ranks - 1) / ranks``.

    >>> bus_bandwidth(8e6, 2, 1e-3) / 1e9  # 8 MB in 1 ms over 2 ranks: 8 GB/s of algorithm bandwidth, 8 of bus
    8.0
    """
    return nbytes / seconds * 2 * (ranks - 1) / ranks


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", help="write the measurements here (rank 0)")
    parser.add_argument("--repeats", type=int, default=25, help="timed blocks per size; the best counts")
    parser.add_argument(
        "--sizes",
        type=lambda text: [int(part) for part in text.split(",")],
        default=list(SIZES_BYTES),
        help="bytes to reduce, comma-separated multiples of 4 (default: 4 KiB, 64 KiB, 1, 2, 4 and 8 MiB)",
    )
    args = parser.parse_args(argv)
    if any(nbytes <= 0 or nbytes % 4 for nbytes in args.sizes):
        parser.error(f"--sizes must be positive multiples of 4 bytes (float32), got {args.sizes}")
    MPI = import_mpi()
    comm = MPI.COMM_WORLD
    ranks = comm.Get_size()
    rows = []
    for nbytes in args.sizes:
        seconds = time_allreduce(comm, nbytes, args.repeats)
        rows.append({"bytes": nbytes, "seconds": seconds, "bus_bw": bus_bandwidth(nbytes, ranks, seconds)})
    if comm.Get_rank() != 0:
        return
    print(f"MPI Allreduce, in place, float32, {ranks} ranks ({MPI.Get_library_version().splitlines()[0]})")
    print("| bytes | µs | bus GB/s |\n| ---: | ---: | ---: |")
    for row in rows:
        print(f"| {row['bytes']:,} | {row['seconds'] * 1e6:.1f} | {row['bus_bw'] / 1e9:.2f} |")
    if args.json:
        record = {
            "command": f"mpiexec -n {ranks} python -m benchmarks.mpi_allreduce",
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "ranks": ranks,
            "mpi": MPI.Get_library_version().splitlines()[0],
            "results": rows,
        }
        with open(args.json, "w") as file:
            json.dump(record, file, indent=1)


if __name__ == "__main__":
    main()
