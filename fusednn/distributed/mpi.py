""":class:`MPICommunicator`: data-parallel collectives through mpi4py."""

from __future__ import annotations

from typing import Any, NoReturn

import numpy as np

from ..backends import backend_of, is_host_array
from . import Communicator

Array = Any


def import_mpi() -> Any:
    """mpi4py's ``MPI`` module (initialising MPI), or an ``ImportError`` that says what to install."""
    try:
        from mpi4py import MPI
    except ImportError as error:
        raise ImportError(
            f"distributed training over MPI needs mpi4py and an MPI ({error}); "
            "install them with: pip install 'fusednn[distributed]' (mpi4py and Open MPI from PyPI)"
        ) from None
    return MPI


class MPICommunicator(Communicator):
    """The ranks of an MPI communicator (``MPI.COMM_WORLD`` by default): the processes ``mpiexec -n N`` starts.

    Array collectives are mpi4py's buffer-based ``Allreduce``/``Bcast`` on the array's own
    memory (``MPI.IN_PLACE``, no pickling). An array on a GPU is copied to the host, reduced
    and copied back; :class:`~fusednn.distributed.nccl.NCCLCommunicator` avoids that trip.

    Args:
        comm: an mpi4py communicator (e.g. a ``Split`` of the world), or ``None`` for ``MPI.COMM_WORLD``.

    A process started without ``mpiexec`` is a job of one rank:

    >>> import numpy as np
    >>> from fusednn.distributed.mpi import MPICommunicator
    >>> comm = MPICommunicator()
    >>> values = np.array([1.0, 2.0])
    >>> comm.allreduce(values)           # the sum over one rank
    >>> values.tolist(), comm.rank, comm.size
    ([1.0, 2.0], 0, 1)

    Raises:
        ImportError: mpi4py is not installed.
    """

    kind = "mpi"

    def __init__(self, comm: Any = None) -> None:
        self.MPI = import_mpi()
        self.comm = self.MPI.COMM_WORLD if comm is None else comm
        self.rank = int(self.comm.Get_rank())
        self.size = int(self.comm.Get_size())

    def allreduce(self, array: Array) -> None:
        if is_host_array(array):
            self.comm.Allreduce(self.MPI.IN_PLACE, _contiguous(array), op=self.MPI.SUM)
            return
        backend = backend_of(array)
        host = np.ascontiguousarray(backend.to_numpy(array))
        self.comm.Allreduce(self.MPI.IN_PLACE, host, op=self.MPI.SUM)
        with backend.activate():
            array[...] = backend.asarray(host)

    def broadcast(self, array: Array, root: int = 0) -> None:
        if is_host_array(array):
            self.comm.Bcast(_contiguous(array), root=root)
            return
        backend = backend_of(array)
        host = np.ascontiguousarray(backend.to_numpy(array))
        self.comm.Bcast(host, root=root)
        with backend.activate():
            array[...] = backend.asarray(host)

    def allreduce_host(self, values: np.ndarray) -> None:
        self.comm.Allreduce(self.MPI.IN_PLACE, _contiguous(values), op=self.MPI.SUM)

    def allgather_object(self, value: Any) -> list[Any]:
        return list(self.comm.allgather(value))

    def _abort_job(self, status: int) -> NoReturn:
        self.comm.Abort(status)
        raise SystemExit(status)  # Abort does not return; this tells the type checker so


def _contiguous(array: np.ndarray) -> np.ndarray:
    if not array.flags.c_contiguous:
        raise ValueError("MPI collectives run in place on C-contiguous arrays; got a strided view")
    return array
