"""Dropout under data-parallel ``fit``: 2 MPI ranks with batch B train the weights of 1 process with batch 2B.

Each rank runs its rows of every batch, and the model tells dropout where they start, so the
ranks draw between them the one process's masks (not each the masks of a batch of its own).
One ``mpiexec -n 2`` job trains on every host device (:mod:`dropout_data_parallel_job`).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from dropout_data_parallel_job import ROWS_PER_RANK, train

MPIEXEC = shutil.which("mpiexec")
DEVICES = ["numpy", "cpu"]


@pytest.mark.skipif(MPIEXEC is None, reason="needs mpiexec (an MPI: pip install -e '.[distributed]')")
@pytest.mark.skipif(importlib.util.find_spec("mpi4py") is None, reason="needs mpi4py (pip install -e '.[distributed]')")
def test_two_ranks_with_dropout_train_the_weights_of_one_process_with_their_combined_batch(tmp_path: Path) -> None:
    tests = Path(__file__).resolve().parent
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(tests.parent), str(tests), env.get("PYTHONPATH", "")])
    env["OMP_NUM_THREADS"] = env["NUMBA_NUM_THREADS"] = env["OPENBLAS_NUM_THREADS"] = "1"  # a core per rank
    assert MPIEXEC is not None
    # --oversubscribe: two ranks may share fewer cores; --allow-run-as-root: CI's containers run as root.
    command = [MPIEXEC, "--allow-run-as-root", "--oversubscribe", "-n", "2", sys.executable]
    command += [str(tests / "dropout_data_parallel_job.py"), str(tmp_path), *DEVICES]
    job = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert job.returncode == 0, f"exit {job.returncode}\nstdout:\n{job.stdout}\nstderr:\n{job.stderr}"
    for device in DEVICES:
        expected = train(device, 2 * ROWS_PER_RANK, None)
        for rank in range(2):
            with np.load(tmp_path / f"{device}-rank{rank}.npz") as saved:
                weights = [saved[f"arr_{i}"] for i in range(len(saved.files))]
            assert len(weights) == len(expected)
            for got, want in zip(weights, expected, strict=True):
                np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-14, err_msg=f"{device}, rank {rank}")
