"""What :func:`~fusednn.nn.fit` does differently when it trains data-parallel: :class:`DataParallel`.

The semantics, chosen so that N ranks with batch ``B`` each train the weights one process
trains with batch ``N * B`` (to float tolerance):

* Global micro-batch ``i`` is rows ``[i * N * B, (i + 1) * N * B)`` of the epoch's one
  seeded permutation, drawn alike on every rank; rank ``r`` takes the ``r``-th of ``N``
  near-equal contiguous parts of it (:meth:`DataParallel.rows`). A short last batch
  splits the same way, so a rank may get no rows of it.
* Each rank weighs its mean-loss gradient by its share of the rows of the optimizer
  step (of the micro-batch, or of the ``accumulate`` group) and the ranks sum them:
  one in-place all-reduce of the flat gradient buffer per optimizer step, exactly the
  weighting gradient accumulation uses, so the two compose.
* The weights, layer buffers and optimizer state start as rank 0's (broadcast); after
  that every rank applies the same update to the same values, and each epoch checks that
  they still agree bit for bit.
* Step losses are weighted the same way and summed over ranks once per epoch, with the
  outputs metrics are computed on; validation splits its rows over the ranks. So every
  rank logs the same numbers, and makes the same early-stopping decisions.
* Dropout draws the one process's masks: its mask counts an element by its index in the
  global micro-batch, and each rank's forward pass starts at its first row's index
  (``lo - a`` for rows ``[lo, hi)`` of batch ``[a, b)``), so between them the ranks apply
  exactly the masks of the whole batch, not each the masks of a batch of its own.
* A layer's running statistics (:class:`~fusednn.nn.BatchNorm`) are averaged over the
  ranks after every epoch. Its batch statistics are each rank's own, as with
  ``torch.nn.parallel.DistributedDataParallel`` without ``SyncBatchNorm``, so a model with
  batch norm is the one case where N ranks differ from one process with ``N * B``.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..backends import Backend

Array = Any


class DataParallel:
    """One rank's view of a data-parallel :func:`~fusednn.nn.fit`: its rows, and the collectives around them.

    Args:
        comm: a :class:`fusednn.distributed.Communicator`.

    >>> from fusednn.nn.data_parallel import DataParallel
    >>> class TwoRanks:  # rank 1 of a job of 2
    ...     rank, size = 1, 2
    >>> DataParallel(TwoRanks()).rows(0, 64), DataParallel(TwoRanks()).rows(64, 69)
    ((32, 64), (66, 69))
    """

    def __init__(self, comm: Any) -> None:
        self.comm = comm
        self.rank: int = comm.rank
        self.size: int = comm.size

    def rows(self, start: int, stop: int) -> tuple[int, int]:
        """This rank's contiguous part of rows ``[start, stop)``: the ``rank``-th of ``size`` near-equal parts."""
        count = stop - start
        return start + count * self.rank // self.size, start + count * (self.rank + 1) // self.size

    def reduce(self, array: Array) -> None:
        """Sum a device array over the ranks, in place: the share-weighted gradient of each optimizer step,
        and the outputs of an epoch (each rank fills its rows)."""
        self.comm.allreduce(array)

    def reduce_host(self, values: np.ndarray) -> np.ndarray:
        """Sum a host vector over the ranks (in float64, in place) and return it."""
        values = np.ascontiguousarray(values, dtype=np.float64)
        self.comm.allreduce_host(values)
        return values

    def check_same(self, what: str, facts: dict[str, Any]) -> None:
        """Raise ``ValueError`` on every rank unless every rank has the same ``facts`` (small values, by name).

        Every rank compares the same gathered values, so all raise or none does.
        """
        every = self.comm.allgather_object(facts)
        differing = [name for name in facts if any(other.get(name) != every[0].get(name) for other in every)]
        if differing:
            name = differing[0]
            values = ", ".join(f"rank {rank}: {other.get(name)!r}" for rank, other in enumerate(every))
            raise ValueError(
                f"data-parallel training needs the same {what} on every rank, but {name} differs ({values})"
            )

    def start(self, model: Any, optimizer: Any) -> None:
        """Give every rank rank 0's weights, buffers and optimizer state (one broadcast each)."""
        self.comm.broadcast(model.parameters().data)
        for buffer in [*model.buffers(), *optimizer.state.values()]:
            self.comm.broadcast(buffer)

    def average_buffers(self, model: Any) -> None:
        """Replace each layer buffer (running statistics) by its mean over the ranks."""
        backend = model.backend
        for buffer in model.buffers():
            self.comm.allreduce(buffer)
            with backend.activate():
                buffer *= buffer.dtype.type(1.0 / self.size)

    def check_in_sync(self, model: Any, optimizer: Any, epoch: int) -> None:
        """Raise ``RuntimeError`` on every rank if their weights, buffers, optimizer state or layer counters differ.

        Every rank applies the same update to the same values, so they agree bit for bit
        unless a collective or a kernel is not deterministic: then the run would silently
        train N different models.
        """
        arrays = [model.parameters().data, *model.buffers(), *optimizer.state.values()]
        local = (checksum(model.backend, arrays), model.layer_states())
        every = self.comm.allgather_object(local)
        if any(value != every[0] for value in every):
            raise RuntimeError(
                f"after epoch {epoch + 1} the ranks' weights, optimizer state or layer counters differ "
                f"(checksums {', '.join(f'{value[0]:08x}' for value in every)}; layer states "
                f"{', '.join(repr(value[1]) for value in every)}): the all-reduce or an update is not deterministic"
            )


def checksum(backend: Backend, arrays: Sequence[Array]) -> int:
    """CRC-32 of the arrays' bytes, in order (a host copy of each, once per epoch)."""
    value = 0
    for array in arrays:
        value = zlib.crc32(np.ascontiguousarray(backend.to_numpy(array)).data, value)
    return value


def data_fingerprint(*arrays: np.ndarray) -> list[Any]:
    """Shapes, dtypes and CRC-32 of host arrays: what must match for the ranks to train on the same data."""
    return [(array.shape, array.dtype.str, zlib.crc32(np.ascontiguousarray(array).data)) for array in arrays]
