""":class:`SingleProcess`: the collectives of a job of one process, which need no MPI."""

from __future__ import annotations

from typing import Any, NoReturn

import numpy as np

from . import Communicator

Array = Any


class SingleProcess(Communicator):
    """A job of one rank: each collective is the identity (a sum over one rank, every rank's value).

    :class:`~fusednn.distributed.nccl.NCCLCommunicator` runs its host collectives here when
    mpi4py is not installed and no launcher started other processes, so a one-GPU job needs
    no MPI. :meth:`abort` raises :class:`SystemExit`: no other rank waits to be stopped.

    >>> import numpy as np
    >>> from fusednn.distributed.single import SingleProcess
    >>> comm = SingleProcess()
    >>> values = np.array([1.0, 2.0])
    >>> comm.allreduce_host(values)
    >>> values.tolist(), comm.allgather_object("mine"), comm.size
    ([1.0, 2.0], ['mine'], 1)
    """

    kind = "single"

    def __init__(self) -> None:
        self.rank = 0
        self.size = 1

    def allreduce(self, array: Array) -> None:
        pass

    def broadcast(self, array: Array, root: int = 0) -> None:
        if root != 0:
            raise ValueError(f"root must be a rank of the job, 0 (the one process), got {root!r}")

    def allreduce_host(self, values: np.ndarray) -> None:
        pass

    def allgather_object(self, value: Any) -> list[Any]:
        return [value]

    def _abort_job(self, status: int) -> NoReturn:
        raise SystemExit(status)
