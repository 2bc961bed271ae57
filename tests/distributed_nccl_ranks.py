"""One rank of the two-rank NCCL test of ``test_distributed_nccl_simulated.py``, started by ``mpiexec``.

    mpiexec -n 2 python -m mpi4py tests/distributed_nccl_ranks.py SHIM_LIBRARY OUT_DIR

(``-m mpi4py``: an error on one rank aborts both, rather than leave the other waiting in a collective.)

Each rank has simulated GPUs (:mod:`cuda_shim.simulated`) and the fake NCCL over
``MPI.COMM_WORLD`` (:mod:`cuda_shim.fake_nccl`). First both ranks put their model on
``cuda:0``, which :class:`~fusednn.distributed.nccl.NCCLCommunicator` must refuse on
both; then each trains on ``local_device()`` (``cuda:0`` and ``cuda:1`` of the two
simulated GPUs each rank counts) with ``fit(distributed="nccl")``. Each rank writes what it saw to
``OUT_DIR/rank<r>.json`` and its weights to ``OUT_DIR/rank<r>.npz``.
"""

from __future__ import annotations

import ctypes
import json
import os
import sys
from pathlib import Path

import numpy as np
from cuda_shim.fake_nccl import FakeNccl
from cuda_shim.simulated import simulated_cuda_backend

from fusednn import distributed, nn
from fusednn.backends import registry
from fusednn.backends.device import parse_device
from fusednn.distributed import launch, nccl

ROWS, FEATURES, CLASSES = 96, 6, 3
EPOCHS, BATCH = 2, 16
"""Per rank: the one-process reference trains with ``2 * BATCH``."""


def data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(5)
    return rng.normal(size=(ROWS, FEATURES)), rng.integers(0, CLASSES, size=ROWS)


def model(device: str, seed: int) -> nn.MLP:
    return nn.MLP([FEATURES, 8, CLASSES], activation="tanh", device=device, dtype="float64", seed=seed)


def fit(network: nn.MLP, batch: int, **kwargs: object) -> nn.History:
    x, y = data()
    return nn.fit(
        network, x, y, optimizer="adam", lr=0.02, epochs=EPOCHS, batch_size=batch, seed=3, metrics=["accuracy"],
        progress=False, **kwargs,
    )  # fmt: skip


def main(library_path: str, out: Path) -> None:
    from mpi4py import MPI  # here, so that the test imports data, model and fit without it

    library = ctypes.CDLL(library_path)
    rank = MPI.COMM_WORLD.Get_rank()
    fake = FakeNccl(MPI.COMM_WORLD)
    nccl.load_nccl = lambda: fake

    shared = registry._cache.setdefault(parse_device("cuda:0"), simulated_cuda_backend(library, 0))
    try:
        nccl.NCCLCommunicator(shared)
        shared_gpu_error = None
    except RuntimeError as error:
        shared_gpu_error = str(error)
    refused_before_joining = not fake.communicators

    told = {name: os.environ.pop(name) for name in launch.LOCAL_RANK_VARIABLES if name in os.environ}
    local_rank_from_mpi = distributed.local_rank()  # what a launcher that sets none of them gets
    os.environ.update(told)
    launch.device_count = lambda kind: 2  # the simulated GPUs, whatever real ones this machine has
    device = distributed.local_device()
    index = parse_device(device).index
    registry._cache.setdefault(parse_device(device), simulated_cuda_backend(library, index))
    network = model(device, seed=rank)  # rank 1's own initial weights: fit starts every rank from rank 0's
    history = fit(network, BATCH, distributed="nccl")
    report = {
        "device": device,
        "local_rank_from_mpi": local_rank_from_mpi,
        "shared_gpu_error": shared_gpu_error,
        "refused_before_joining": refused_before_joining,
        "communicator_devices": [communicator.device for communicator in fake.communicators],
        "calls": fake.calls,
        "history": history.history,
        "ranks": history.params["ranks"],
    }
    (out / f"rank{rank}.json").write_text(json.dumps(report))
    np.savez(out / f"rank{rank}.npz", *network.get_weights())


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]))
