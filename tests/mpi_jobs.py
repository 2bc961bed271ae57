"""Launching real MPI jobs from the tests: ``mpiexec -n N python ...``, as users launch them.

Each job is one ``mpiexec`` (about two seconds of start-up and imports per launch on this
machine), so a test module runs several checks inside one job and compares what each
rank wrote. A test that needs a job is skipped, with the reason, where mpi4py or
``mpiexec`` is missing (the ``distributed`` extra installs both).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

MPIEXEC = shutil.which("mpiexec")

needs_mpi = pytest.mark.skipif(
    MPIEXEC is None or importlib.util.find_spec("mpi4py") is None,
    reason="needs mpi4py and mpiexec (the distributed extra: pip install -e '.[distributed]')",
)


def run_job(ranks: int, argv: list[str], cwd: Path, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` (a command after ``mpiexec -n ranks``) and return what it did, output captured.

    ``--oversubscribe`` lets two ranks share this machine's cores; ``--allow-run-as-root``
    lets CI's containers, which run as root, start them.
    """
    assert MPIEXEC is not None
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(ROOT / "tests"), env.get("PYTHONPATH", "")])
    env["OMP_NUM_THREADS"] = env["NUMBA_NUM_THREADS"] = env["OPENBLAS_NUM_THREADS"] = "1"  # a core per rank
    command = [MPIEXEC, "--allow-run-as-root", "--oversubscribe", "-n", str(ranks), *argv]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def run_python_job(ranks: int, script: str, *args: str, cwd: Path, timeout: float = 120.0) -> str:
    """Run ``tests/<script>`` on ``ranks`` ranks with ``args``; returns its stdout, or fails showing its output."""
    result = run_job(ranks, [sys.executable, str(ROOT / "tests" / script), *args], cwd, timeout)
    assert result.returncode == 0, f"exit {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    return result.stdout
