"""A stand-in for ``cupy.cuda.nccl`` over the simulated GPUs of :mod:`.simulated`, reducing through MPI.

:class:`FakeNccl` is the module: NCCL's constants, ``get_unique_id`` and
``NcclCommunicator``. A communicator's ``allReduce`` and ``bcast`` take raw pointers as
NCCL does and find the simulated arrays behind them (:func:`.simulated.device_memory`),
then sum or broadcast that memory in place across the ranks through mpi4py (one
process: nothing to add). They are as strict as NCCL, and stricter where a mistake
would pass unseen on one GPU:

* ``ncclCommInitRank`` gets the job's size and this rank, and the same unique id on every
  rank (NCCL would hang otherwise); the communicator belongs to the GPU current then.
* every buffer lies inside one allocation of that GPU, ``count`` elements of the dtype
  the data-type code names, which must be the allocation's;
* the stream is the current stream, with the communicator's GPU current (the simulator
  has one current stream per process, CuPy one per GPU);
* the reduction is ``NCCL_SUM``, the only one fusednn asks for.

Each call is logged in :attr:`FakeNccl.calls`, so a test sees that the collectives went
through NCCL, on which stream, and how often.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

from . import simulated


class FakeNccl:
    """``cupy.cuda.nccl`` for the ranks of ``world`` (an mpi4py communicator; ``None``: one process)."""

    available = True
    # ncclDataType_t and ncclRedOp_t, as nccl.h numbers them
    NCCL_INT32, NCCL_FLOAT32, NCCL_FLOAT64 = 2, 7, 8
    NCCL_SUM, NCCL_AVG = 0, 4

    def __init__(self, world: Any = None) -> None:
        self.world = world
        self.calls: list[tuple[str, int, str, int]] = []
        """``(collective, count, dtype name, stream)`` of each call, in order."""
        self.communicators: list[FakeNcclCommunicator] = []
        self.NcclCommunicator = functools.partial(FakeNcclCommunicator, self)

    @property
    def rank(self) -> int:
        return 0 if self.world is None else int(self.world.Get_rank())

    @property
    def size(self) -> int:
        return 1 if self.world is None else int(self.world.Get_size())

    @staticmethod
    def get_unique_id() -> tuple[int, ...]:
        """128 random signed bytes, as CuPy returns ``ncclGetUniqueId``'s."""
        return tuple(int(b) for b in np.random.default_rng().integers(-128, 128, size=128))


_DTYPES = {
    FakeNccl.NCCL_INT32: np.dtype(np.int32),
    FakeNccl.NCCL_FLOAT32: np.dtype(np.float32),
    FakeNccl.NCCL_FLOAT64: np.dtype(np.float64),
}


class FakeNcclCommunicator:
    """``cupy.cuda.nccl.NcclCommunicator(ndev, commId, rank)`` of one rank of :class:`FakeNccl`'s world."""

    def __init__(self, nccl: FakeNccl, ndev: int, commId: tuple[int, ...], rank: int) -> None:  # noqa: N803
        if (ndev, rank) != (nccl.size, nccl.rank):
            raise RuntimeError(
                f"NCCL_ERROR_INVALID_ARGUMENT: ncclCommInitRank(ndev={ndev}, rank={rank}) in rank {nccl.rank} "
                f"of a job of {nccl.size}"
            )
        if len(commId) != 128:
            raise AssertionError("a unique id has 128 bytes")  # CuPy asserts it
        ids = [commId] if nccl.world is None else nccl.world.allgather(commId)
        if any(other != ids[0] for other in ids):
            raise RuntimeError("the ranks passed different unique ids to ncclCommInitRank: NCCL would hang")
        self.nccl = nccl
        self.device = simulated._current_gpu  # NCCL binds a communicator to the GPU current at its creation
        nccl.communicators.append(self)

    def size(self) -> int:
        return self.nccl.size

    def device_id(self) -> int:
        return self.device

    def allReduce(  # noqa: N802 - CuPy's names
        self, sendbuf: int, recvbuf: int, count: int, datatype: int, op: int, stream: int
    ) -> None:
        if op != FakeNccl.NCCL_SUM:
            raise ValueError(f"the fake NCCL sums only (NCCL_SUM = {FakeNccl.NCCL_SUM}), got op {op}")
        send = self._memory(sendbuf, count, datatype, stream, "allReduce")
        recv = send if recvbuf == sendbuf else self._memory(recvbuf, count, datatype, stream, "allReduce")
        world = self.nccl.world
        if world is not None:
            from mpi4py import MPI

            world.Allreduce(MPI.IN_PLACE if recv is send else send, recv, op=MPI.SUM)
        elif recv is not send:
            recv[...] = send

    def bcast(self, buff: int, count: int, datatype: int, root: int, stream: int) -> None:
        if not 0 <= root < self.nccl.size:
            raise ValueError(f"NCCL_ERROR_INVALID_ARGUMENT: root {root} in a job of {self.nccl.size}")
        memory = self._memory(buff, count, datatype, stream, "bcast")
        if self.nccl.world is not None:
            self.nccl.world.Bcast(memory, root=root)

    def _memory(self, pointer: int, count: int, datatype: int, stream: int, call: str) -> np.ndarray:
        """The ``count`` elements at ``pointer`` as a host view, after checking the call as NCCL (and more) would."""
        dtype = _DTYPES.get(datatype)
        if dtype is None:
            raise ValueError(f"{call}: data type {datatype} is not one the fake NCCL knows ({sorted(_DTYPES)})")
        if simulated._current_gpu != self.device or stream != simulated._current_stream:
            raise RuntimeError(
                f"{call} on stream {stream} with cuda:{simulated._current_gpu} current; the communicator's "
                f"cuda:{self.device} must be current and the stream its current one ({simulated._current_stream})"
            )
        gpu, allocated = simulated.device_memory(pointer, count * dtype.itemsize)
        if gpu != self.device:
            raise ValueError(f"{call}: the buffer is on cuda:{gpu} but the communicator on cuda:{self.device}")
        if allocated != dtype:
            raise TypeError(f"{call}: data type {datatype} means {dtype.name}, but the buffer holds {allocated.name}")
        self.nccl.calls.append((call, count, dtype.name, stream))
        buffer = (np.ctypeslib.as_ctypes_type(dtype) * count).from_address(pointer)
        return np.ctypeslib.as_array(buffer)
