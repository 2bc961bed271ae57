"""Dropout under data-parallel ``fit``: 2 MPI ranks with batch B train the weights of 1 process with batch 2B.

Each rank runs its rows of every batch, and the model tells dropout where they start, so the
ranks draw between them the one process's masks (not each the masks of a batch of its own).
One ``mpiexec -n 2`` job trains on every host device (:mod:`dropout_data_parallel_job`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from dropout_data_parallel_job import ROWS_PER_RANK, train
from mpi_jobs import needs_mpi, run_python_job

DEVICES = ["numpy", "cpu"]


@needs_mpi
def test_two_ranks_with_dropout_train_the_weights_of_one_process_with_their_combined_batch(tmp_path: Path) -> None:
    run_python_job(2, "dropout_data_parallel_job.py", str(tmp_path), *DEVICES, cwd=tmp_path)
    for device in DEVICES:
        expected = train(device, 2 * ROWS_PER_RANK, None)
        for rank in range(2):
            with np.load(tmp_path / f"{device}-rank{rank}.npz") as saved:
                weights = [saved[f"arr_{i}"] for i in range(len(saved.files))]
            assert len(weights) == len(expected)
            for got, want in zip(weights, expected, strict=True):
                np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-14, err_msg=f"{device}, rank {rank}")
