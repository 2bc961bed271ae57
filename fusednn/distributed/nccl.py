""":class:`NCCLCommunicator`: data-parallel collectives of GPU buffers through NCCL, via CuPy.

The gradient all-reduce of every optimizer step is one ``ncclAllReduce`` on the flat
gradient buffer, in place, on the model's GPU and its current stream: queued behind the
backward kernels and ahead of the optimizer's, with no copy to the host and no wait.
The few host-side collectives of a job (losses once per epoch, setup checks, errors)
go through MPI, which also carries NCCL's unique id from rank 0 to the others.

NCCL drives one GPU per rank: run one rank per GPU, each on its own device
(:func:`~fusednn.distributed.local_device`)::

    mpiexec -n 4 python train.py   # with model = nn.MLP(..., device=local_device())
                                   # and nn.fit(model, x, y, distributed="nccl")

A job of one process needs no MPI: without mpi4py, and without a launcher that started
other processes, the host collectives are those of :class:`~fusednn.distributed.single.SingleProcess`.
"""

from __future__ import annotations

import socket
from collections.abc import Sequence
from typing import Any, NoReturn

import numpy as np

from ..backends import Backend
from ..backends.cuda_backend import CudaBackend
from ..backends.device import describe_location
from . import Communicator
from .launch import launched_size
from .mpi import MPICommunicator
from .single import SingleProcess

Array = Any

NCCL_INSTALL_HINT = (
    "install CuPy (pip install 'fusednn[cuda12]' or 'fusednn[cuda13]') and NCCL for its CUDA "
    "(pip install nvidia-nccl-cu12, or nvidia-nccl-cu13), or use distributed='mpi'"
)


def load_nccl() -> Any:
    """CuPy's NCCL binding, ``cupy.cuda.nccl``, or an ``ImportError`` that says what to install.

    Raises:
        ImportError: CuPy is not installed, or it found no NCCL library.
    """
    try:
        from cupy.cuda import nccl
    except ImportError as error:
        raise ImportError(f"distributed='nccl' needs CuPy's NCCL binding ({error}); {NCCL_INSTALL_HINT}") from None
    if not getattr(nccl, "available", False):
        raise ImportError(f"distributed='nccl' needs NCCL, which CuPy did not find; {NCCL_INSTALL_HINT}")
    return nccl


def check_one_gpu_per_rank(gpus: Sequence[tuple[str, str, str]]) -> None:
    """Raise ``RuntimeError`` if two ranks would drive one GPU, which NCCL refuses (or hangs on).

    Args:
        gpus: each rank's ``(host name, PCI bus id, device name)``, in rank order. A GPU is its
            bus id on its host: with ``CUDA_VISIBLE_DEVICES`` two ranks may both call different
            GPUs ``cuda:0``, or one GPU by two names.

    >>> check_one_gpu_per_rank([("node1", "0000:3B:00.0", "cuda:0"), ("node1", "0000:5E:00.0", "cuda:1")])
    >>> check_one_gpu_per_rank([("node1", "0000:3B:00.0", "cuda:0"), ("node1", "0000:3B:00.0", "cuda:0")])
    Traceback (most recent call last):
    ...
    RuntimeError: ranks 0 and 1 both use cuda:0 on host node1 (PCI bus 0000:3B:00.0); NCCL needs one GPU per rank: \
run one rank per GPU, each with device=fusednn.distributed.local_device() (cuda:{local rank})
    """
    ranks_of: dict[tuple[str, str], list[int]] = {}
    for rank, (host, bus, _) in enumerate(gpus):
        ranks_of.setdefault((host, bus), []).append(rank)
    for (host, bus), ranks in ranks_of.items():
        if len(ranks) > 1:
            names = " and ".join(dict.fromkeys(gpus[rank][2] for rank in ranks))
            listed = f"{', '.join(map(str, ranks[:-1]))} and {ranks[-1]}"
            raise RuntimeError(
                f"ranks {listed} both use {names} on host {host} (PCI bus {bus}); NCCL needs one GPU per rank: "
                "run one rank per GPU, each with device=fusednn.distributed.local_device() (cuda:{local rank})"
            )


class NCCLCommunicator(Communicator):
    """The ranks of an MPI job, one per GPU, all-reducing the model's device buffers through NCCL.

    :meth:`allreduce` and :meth:`broadcast` are NCCL's ``allReduce``/``bcast`` in place on
    the array's memory, on the current stream of the backend's GPU (float32 and float64). The
    host collectives are MPI's (:class:`~fusednn.distributed.mpi.MPICommunicator`), or those
    of one process (:class:`~fusednn.distributed.single.SingleProcess`) where mpi4py is
    missing and no launcher started other processes.

    Setting up is collective: every rank checks its backend and NCCL, and that no two ranks
    share a GPU, and all raise together if one fails; then rank 0 makes NCCL's unique id,
    every rank receives it through MPI and joins NCCL's communicator with its GPU current.

    Args:
        backend: the model's backend, a CUDA one (``model.backend``).
        mpi_comm: an mpi4py communicator of the ranks (``None``: ``MPI.COMM_WORLD``).

    Raises:
        ValueError: ``backend`` is not a CUDA backend.
        ImportError: CuPy's NCCL is missing (the message says what to install), or mpi4py is
            missing in a job of several processes.
        RuntimeError: two ranks would share a GPU (the message names them).

    A model on the CPU all-reduces through MPI instead:

    >>> import fusednn
    >>> from fusednn.distributed.nccl import NCCLCommunicator
    >>> NCCLCommunicator(fusednn.backend("numpy"))
    Traceback (most recent call last):
    ...
    ValueError: NCCL all-reduces CUDA device buffers; the model is on 'numpy': use distributed='mpi'
    """

    kind = "nccl"

    def __init__(self, backend: Backend, mpi_comm: Any = None) -> None:
        self.host: Communicator = _host_collectives(mpi_comm)
        self.rank, self.size = self.host.rank, self.host.size
        with self.host.agreement("setting up NCCL"):
            if not isinstance(backend, CudaBackend):
                raise ValueError(
                    f"NCCL all-reduces CUDA device buffers; the model is on {backend.name!r}: use distributed='mpi'"
                )
            nccl = load_nccl()
            gpu = (socket.gethostname(), backend.xp.cuda.runtime.deviceGetPCIBusId(backend.device.index), backend.name)
            unique_id = nccl.get_unique_id() if self.rank == 0 else None
        every = self.host.allgather_object((gpu, unique_id))
        check_one_gpu_per_rank([rank_gpu for rank_gpu, _ in every])
        self.backend: CudaBackend = backend
        self._nccl = nccl
        self._types = {np.dtype(np.float32): nccl.NCCL_FLOAT32, np.dtype(np.float64): nccl.NCCL_FLOAT64}
        with backend.activate():  # NCCL binds the communicator to the current GPU
            self._comm = nccl.NcclCommunicator(self.size, every[0][1], self.rank)

    def allreduce(self, array: Array) -> None:
        pointer, count, dtype = self._buffer(array, "allreduce")
        with self.backend.activate():
            stream = self.backend.xp.cuda.get_current_stream().ptr
            self._comm.allReduce(pointer, pointer, count, dtype, self._nccl.NCCL_SUM, stream)

    def broadcast(self, array: Array, root: int = 0) -> None:
        pointer, count, dtype = self._buffer(array, "broadcast")
        with self.backend.activate():
            stream = self.backend.xp.cuda.get_current_stream().ptr
            self._comm.bcast(pointer, count, dtype, root, stream)

    def allreduce_host(self, values: np.ndarray) -> None:
        self.host.allreduce_host(values)

    def allgather_object(self, value: Any) -> list[Any]:
        return self.host.allgather_object(value)

    def _abort_job(self, status: int) -> NoReturn:
        self.host._abort_job(status)

    def _buffer(self, array: Array, what: str) -> tuple[int, int, int]:
        """``array``'s device pointer, element count and NCCL data type, after checking NCCL can take it."""
        backend = self.backend
        if not isinstance(array, backend.xp.ndarray) or array.device.id != backend.device.index:
            raise ValueError(
                f"NCCL's {what} takes arrays on {backend.device}, the communicator's GPU; got one on "
                f"{describe_location(array)}"
            )
        if not array.flags.c_contiguous:
            raise ValueError(f"NCCL's {what} runs in place on C-contiguous arrays; got a strided view")
        dtype = self._types.get(array.dtype)
        if dtype is None:
            raise TypeError(f"NCCL's {what} takes float32 or float64 arrays, got {array.dtype.name}")
        return array.data.ptr, array.size, dtype


def _host_collectives(mpi_comm: Any) -> Communicator:
    """MPI's, or those of one process where mpi4py is missing and no launcher started other processes."""
    try:
        return MPICommunicator(mpi_comm)
    except ImportError:
        if mpi_comm is not None or launched_size() > 1:
            raise
        return SingleProcess()
