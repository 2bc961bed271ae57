"""The benchmarks' MPI jobs: the ``mpiexec`` command line they start with, and the environment they run in."""

from __future__ import annotations

import os
import shutil

from .compare import REPO_ROOT, THREAD_VARIABLES


def mpiexec(ranks: int, *options: str) -> list[str]:
    """``mpiexec -n ranks`` with ``options``, for this machine: ``--oversubscribe`` lets two ranks share a
    2-core machine, ``--allow-run-as-root`` lets containers, which run as root, start them.

    Raises:
        RuntimeError: ``mpiexec`` is not on ``PATH``; the message says what to install.
    """
    found = shutil.which("mpiexec")
    if found is None:
        raise RuntimeError("mpiexec is not on PATH: pip install -e '.[distributed]' (mpi4py and Open MPI)")
    return [found, "--allow-run-as-root", "--oversubscribe", "-n", str(ranks), *options]


def job_environment(threads: int) -> dict[str, str]:
    """This process's environment with every thread pool held to ``threads`` and the repository importable.

    >>> env = job_environment(1)
    >>> env["NUMBA_NUM_THREADS"], env["PYTHONPATH"].split(os.pathsep)[0] == str(REPO_ROOT)
    ('1', True)
    """
    env = dict(os.environ, **dict.fromkeys(THREAD_VARIABLES, str(threads)))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))
    return env
