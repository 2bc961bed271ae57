"""Would all-reducing the gradient bucket by bucket, while backward still runs, pay with MPI on this machine?

Run under ``mpiexec -n 2`` (one thread per rank)::

    OPENBLAS_NUM_THREADS=1 mpiexec --allow-run-as-root --oversubscribe -n 2 \\
        python -m benchmarks.allreduce_overlap

It times mnist-l's backward GEMMs at 512 rows per rank (the gradient products ``x^T dz``
and ``dz W^T`` of its three layers, last layer first, as backward computes them) and the
all-reduce of its 1.86 M float32 gradient three ways, alternating, best of ``--repeats``:

* ``backward, then one Allreduce``: what ``fit(distributed="mpi")`` does;
* ``bucket by bucket``: each layer's gradient handed to a non-blocking ``Iallreduce`` as
  soon as its GEMM is done, all waited for at the end (the overlap of the issue);
* ``backward alone`` and ``Allreduce alone``: the parts, for the bound ``max`` of the two.

Overlap pays only if MPI moves data while the rank computes. Open MPI's shared-memory
transport progresses a non-blocking collective only inside MPI calls, and on two cores
both are busy with GEMMs, so the expectation is no gain; this measures it.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

SIZES = (784, 1024, 1024, 10)
ROWS_PER_RANK = 512


def main() -> None:
    from mpi4py import MPI

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    comm = MPI.COMM_WORLD
    rng = np.random.default_rng(comm.rank)
    layers = list(zip(SIZES[:-1], SIZES[1:], strict=True))
    inputs = [rng.standard_normal((ROWS_PER_RANK, n_in), dtype=np.float32) for n_in, _ in layers]
    deltas = [rng.standard_normal((ROWS_PER_RANK, n_out), dtype=np.float32) for _, n_out in layers]
    weights = [rng.standard_normal((n_in, n_out), dtype=np.float32) for n_in, n_out in layers]
    grads = [np.empty((n_in, n_out), dtype=np.float32) for n_in, n_out in layers]
    flat = np.zeros(sum(g.size for g in grads), dtype=np.float32)

    def layer_backward(k: int) -> None:
        np.matmul(inputs[k].T, deltas[k], out=grads[k])
        if k > 0:
            deltas[k] @ weights[k].T  # dx, which the earlier layer's delta comes from

    def backward_alone() -> None:
        for k in reversed(range(len(layers))):
            layer_backward(k)

    def allreduce_alone() -> None:
        comm.Allreduce(MPI.IN_PLACE, flat, op=MPI.SUM)

    def then_allreduce() -> None:
        backward_alone()
        allreduce_alone()

    def bucket_by_bucket() -> None:
        requests = []
        for k in reversed(range(len(layers))):
            layer_backward(k)
            requests.append(comm.Iallreduce(MPI.IN_PLACE, grads[k], op=MPI.SUM))
        MPI.Request.Waitall(requests)

    variants = {
        "backward alone": backward_alone,
        "Allreduce alone (7.4 MB)": allreduce_alone,
        "backward, then one Allreduce": then_allreduce,
        "bucket by bucket (Iallreduce per layer)": bucket_by_bucket,
    }
    best = dict.fromkeys(variants, float("inf"))
    for variant in variants.values():
        variant()  # warm-up
    for _ in range(args.repeats):
        for name, variant in variants.items():
            comm.Barrier()
            started = time.perf_counter()
            variant()
            elapsed = comm.allreduce(time.perf_counter() - started, op=MPI.MAX)
            best[name] = min(best[name], elapsed)
    if comm.rank == 0:
        bound = max(best["backward alone"], best["Allreduce alone (7.4 MB)"])
        print(f"| variant (2 ranks, {ROWS_PER_RANK} rows each, 1 thread) | ms, best of {args.repeats} |")
        print("| --- | ---: |")
        for name, seconds in best.items():
            print(f"| {name} | {seconds * 1e3:.2f} |")
        print(f"| perfect overlap bound: max(backward, Allreduce) | {bound * 1e3:.2f} |")


if __name__ == "__main__":
    main()
