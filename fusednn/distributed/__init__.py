"""Data-parallel training across processes and GPUs on the engines the field runs: MPI and NCCL.

A :class:`Communicator` joins the processes (ranks) of one job. :func:`fusednn.nn.fit`
takes one as ``distributed=`` (or its kind by name, ``"mpi"`` or ``"nccl"``, which
:func:`connect` turns into one) and then trains data-parallel: every rank takes its
slice of each global batch, and one in-place all-reduce of the flat gradient buffer
per optimizer step makes the ranks' updates identical.

* :class:`~fusednn.distributed.mpi.MPICommunicator` (``"mpi"``): mpi4py's buffer-based
  ``Allreduce`` on host buffers, in place, with no pickling; a GPU model's buffers go
  through the host.
* :class:`~fusednn.distributed.nccl.NCCLCommunicator` (``"nccl"``): NCCL through CuPy
  on the device buffers, on the model's stream, with no host round trip; one rank per
  GPU (:func:`local_device` picks it), bootstrapped through MPI.

Both run the small host-side collectives (step losses once per epoch, setup checks,
errors) through MPI; a one-GPU NCCL job runs without mpi4py. Nothing here is imported
until a run asks for it: a process that trains on one device never loads mpi4py.

Launch a job as MPI jobs are launched::

    mpiexec -n 4 fusednn train --data train-images.idx3-ubyte --labels train-labels.idx1-ubyte --distributed mpi
    mpiexec -n 4 fusednn train --data digits --distributed nccl --device cuda   # one rank per GPU

A failure is never a hang. Where every rank can reach an agreement point (setting up
``fit``, writing a checkpoint) the ranks compare notes (:meth:`Communicator.agreement`)
and all raise the failing rank's error. A rank that fails between agreement points,
while the others wait in an all-reduce, prints its error and aborts the job
(:meth:`Communicator.abort`), as ``python -m mpi4py`` does.
"""

from __future__ import annotations

import contextlib
import pickle
import sys
import traceback
from abc import ABC, abstractmethod
from collections.abc import Iterator
from typing import Any, ClassVar, NoReturn

import numpy as np

from ..backends import Backend
from .launch import local_device, local_rank

Array = Any

KINDS: tuple[str, ...] = ("mpi", "nccl")
"""The communicators :func:`connect` builds by name."""

ABORT_STATUS = 70
"""The exit status a job ends with when a rank aborts it (``EX_SOFTWARE``): distinct from a rank's own errors."""


class RankFailedError(RuntimeError):
    """Another rank failed at an agreement point; the message names it and its error."""


class Communicator(ABC):
    """The processes of one data-parallel job, and the collectives :func:`~fusednn.nn.fit` runs between them.

    Subclasses implement the collectives on arrays of the model's device (:meth:`allreduce`,
    :meth:`broadcast`) and on small host values (:meth:`allreduce_host`, :meth:`allgather_object`);
    :meth:`agreement` and :meth:`abort` are built on them.

    Attributes:
        rank: this process's index in ``[0, size)``; rank 0 writes files and logs.
        size: the number of processes.
    """

    kind: ClassVar[str]
    rank: int
    size: int

    def __repr__(self) -> str:
        return f"{type(self).__name__}(rank={self.rank}, size={self.size})"

    @property
    def is_root(self) -> bool:
        """Whether this is rank 0, the one that writes files, logs and progress."""
        return self.rank == 0

    @abstractmethod
    def allreduce(self, array: Array) -> None:
        """Sum ``array`` (contiguous, of the bound backend's device) over every rank, in place."""

    @abstractmethod
    def broadcast(self, array: Array, root: int = 0) -> None:
        """Overwrite ``array`` on every rank with rank ``root``'s, in place."""

    @abstractmethod
    def allreduce_host(self, values: np.ndarray) -> None:
        """Sum a host float64 array over every rank, in place (a few numbers per epoch)."""

    @abstractmethod
    def allgather_object(self, value: Any) -> list[Any]:
        """Every rank's ``value`` (a small picklable object), in rank order, on every rank."""

    @abstractmethod
    def _abort_job(self, status: int) -> NoReturn:
        """End every process of the job with ``status``."""

    def abort(self, error: BaseException) -> NoReturn:
        """Print ``error`` with its traceback, naming this rank, then end every rank of the job.

        For a failure while the other ranks may wait in a collective that this rank will never
        join: raising would leave them waiting for ever.
        """
        trace = "".join(traceback.format_exception(type(error), error, error.__traceback__))
        print(
            f"{trace}fusednn: rank {self.rank} of {self.size} failed ({type(error).__name__}: {error}); "
            "stopping every rank",
            file=sys.stderr,
            flush=True,
        )
        self._abort_job(ABORT_STATUS)

    @contextlib.contextmanager
    def aborting_on_failure(self) -> Iterator[None]:
        """A block whose failure on any one rank aborts the job (:meth:`abort`): the training steps.

        The other ranks may be waiting in an all-reduce this rank will never join. One rank
        cannot fail alone where every rank raises together, so :class:`KeyboardInterrupt`
        (which ``mpiexec`` forwards to every rank) passes through.
        """
        try:
            yield
        except Exception as error:
            if self.size == 1:
                raise
            self.abort(error)

    @contextlib.contextmanager
    def agreement(self, what: str) -> Iterator[None]:
        """A block every rank runs, after which all ranks go on or all raise.

        If the block raises on any rank, every rank raises: the failing rank (the first, by
        rank) its own error, the others a copy of it of the same type when it can be copied
        (so that a command's exit status is the same on every rank), else a
        :class:`RankFailedError`, with the failing rank named in either case.

        >>> from fusednn.distributed.single import SingleProcess
        >>> with SingleProcess().agreement("checking the data"):
        ...     pass
        """
        failure: BaseException | None = None
        try:
            yield
        except Exception as error:  # KeyboardInterrupt is mpiexec's to forward, to every rank
            failure = error
        reports = self.allgather_object(None if failure is None else _portable(failure))
        failed = [(rank, report) for rank, report in enumerate(reports) if report is not None]
        if not failed:
            return
        rank, report = failed[0]
        if failure is not None and rank == self.rank:
            raise failure
        copy = _revived(report)
        context = f"rank {rank} of {self.size} failed {what}"
        if copy is None:
            raise RankFailedError(f"{context}: {report[1]}: {report[2]}")
        if hasattr(copy, "add_note"):  # Python 3.11+
            copy.add_note(context)
        raise copy


def _portable(error: BaseException) -> tuple[bytes | None, str, str]:
    """``error`` as (its pickle, or ``None`` if it has none; its type's name; its message)."""
    try:
        pickled = pickle.dumps(error)
        pickle.loads(pickled)  # an exception whose __init__ takes other arguments pickles but does not load
    except Exception:
        return None, type(error).__name__, str(error)
    return pickled, type(error).__name__, str(error)


def _revived(report: tuple[bytes | None, str, str]) -> BaseException | None:
    # Only what another rank of this very job pickled, a moment ago, is unpickled here.
    pickled = report[0]
    return None if pickled is None else pickle.loads(pickled)


_CONNECTED: dict[tuple[str, str], Communicator] = {}


def connect(kind: str, backend: Backend) -> Communicator:
    """The communicator of ``kind`` (``"mpi"`` or ``"nccl"``) for a model on ``backend``, made once per process.

    In a process started without ``mpiexec``, MPI makes a job of one rank:

    >>> import fusednn
    >>> from fusednn import distributed
    >>> distributed.connect("mpi", fusednn.backend("numpy"))
    MPICommunicator(rank=0, size=1)

    Raises:
        ValueError: an unknown ``kind``, or NCCL for a model that is not on a GPU.
        ImportError: mpi4py (the ``distributed`` extra) or CuPy's NCCL is missing; the message says what to install.
        RuntimeError: NCCL would put two ranks on one GPU.
    """
    if not isinstance(kind, str) or kind not in KINDS:
        raise ValueError(f"distributed must be one of {KINDS} or a fusednn.distributed.Communicator, got {kind!r}")
    key = (kind, backend.name)
    communicator = _CONNECTED.get(key)
    if communicator is None:
        if kind == "mpi":
            from .mpi import MPICommunicator

            communicator = MPICommunicator()
        else:
            from .nccl import NCCLCommunicator

            communicator = NCCLCommunicator(backend)
        _CONNECTED[key] = communicator
    return communicator


__all__ = ["ABORT_STATUS", "KINDS", "Communicator", "RankFailedError", "connect", "local_device", "local_rank"]
