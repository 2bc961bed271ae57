"""One rank of ``tests/test_dropout_data_parallel.py``'s MPI job: fit a small MLP with dropout data-parallel.

``python dropout_data_parallel_job.py OUT DEVICE...`` trains :func:`train` on each device with
``distributed="mpi"`` and writes this rank's weights to ``OUT/<device>-rank<r>.npz``. The test
trains the same model in one process with the ranks' combined batch and compares.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from fusednn import nn

ROWS_PER_RANK = 5
"""The batch of each rank: with 7 features at the dropout layer a rank's rows start inside a block of four words."""


def train(device: str, batch_size: int, distributed: str | None) -> list[np.ndarray]:
    """Two epochs of SGD on 41 rows of a 4-7-7-3 MLP with dropout after each hidden layer.

    The last batch has one row, so rank 0 has none of it and must still count the step.
    """
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(41, 4)), rng.integers(0, 3, 41)
    model = nn.Sequential(
        [
            nn.Dense(4, 7, activation="tanh"),
            nn.Dropout(0.3, seed=11),
            nn.Dense(7, 7, activation="tanh"),
            nn.Dropout(0.5, seed=12),
            nn.Dense(7, 3),
        ],
        device=device,
        dtype="float64",
        seed=1,
    )
    nn.fit(
        model, x, y, optimizer="sgd", lr=0.2, epochs=2, batch_size=batch_size, distributed=distributed, progress=False
    )
    return model.get_weights()


def main(out: Path, devices: list[str]) -> None:
    from mpi4py import MPI

    rank = MPI.COMM_WORLD.Get_rank()
    for device in devices:
        weights = train(device, ROWS_PER_RANK, "mpi")
        np.savez(out / f"{device}-rank{rank}.npz", *weights)


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2:])
