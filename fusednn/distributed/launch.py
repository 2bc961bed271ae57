"""What a process learns from the launcher that started it: the job's size, and its place on its node.

``mpiexec`` (Open MPI, MPICH, Intel MPI) and Slurm's ``srun`` tell each process its
rank among the processes of its node in the environment, before MPI is initialised.
:func:`local_device` turns that into the GPU a rank should train on, one rank per GPU,
which is what :class:`~fusednn.distributed.nccl.NCCLCommunicator` needs.
"""

from __future__ import annotations

import os

from ..backends.registry import device_count

LOCAL_RANK_VARIABLES: tuple[str, ...] = ("OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID", "SLURM_LOCALID")
"""Where Open MPI, MPICH / Intel MPI (Hydra) and Slurm put a process's rank on its node, read in this order."""

WORLD_SIZE_VARIABLES: tuple[str, ...] = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE")
"""Where Open MPI and the PMI launchers (MPICH / Intel MPI's Hydra, ``srun --mpi=pmi2``) put the job's size."""


def _from_environment(names: tuple[str, ...]) -> int | None:
    for name in names:
        value = os.environ.get(name, "").strip()
        if value:
            try:
                return int(value)
            except ValueError:
                raise ValueError(f"${name} should be a whole number (set by the MPI launcher), got {value!r}") from None
    return None


def launched_size() -> int:
    """How many processes the launcher started in this job: 1 for a process started without one.

    >>> launched_size()  # a plain ``python`` process (the doctests)
    1
    """
    size = _from_environment(WORLD_SIZE_VARIABLES)
    return 1 if size is None else size


def local_rank() -> int:
    """This process's rank among the job's processes on its node (its host), from 0.

    Read from the launcher's environment (:data:`LOCAL_RANK_VARIABLES`). Under a launcher that
    sets none of them, MPI answers (a ``COMM_TYPE_SHARED`` split of ``COMM_WORLD``: every rank
    must call it then); without mpi4py a process is a job of one, rank 0.

    >>> local_rank()  # a plain ``python`` process
    0
    """
    rank = _from_environment(LOCAL_RANK_VARIABLES)
    if rank is not None:
        return rank
    from .mpi import import_mpi

    try:
        MPI = import_mpi()
    except ImportError:
        return 0
    node = MPI.COMM_WORLD.Split_type(MPI.COMM_TYPE_SHARED)
    try:
        return int(node.Get_rank())
    finally:
        node.Free()


def local_device() -> str:
    """The CUDA device this rank trains on with one rank per GPU: ``cuda:{local_rank() % visible GPUs}``.

    With every GPU of the node visible to every rank, rank ``i`` of the node takes GPU ``i``;
    where the scheduler shows each rank its own GPU (``CUDA_VISIBLE_DEVICES``), each takes
    ``cuda:0``. With more ranks on a node than GPUs, two ranks get one GPU, which
    :class:`~fusednn.distributed.nccl.NCCLCommunicator` refuses with an error naming them.

    >>> from fusednn.distributed import local_device
    >>> local_device()  # rank 0 of its node (here without a GPU, where a model would refuse cuda:0)
    'cuda:0'

    In a script that ``mpiexec -n 4`` runs on a node with four GPUs, each rank builds its
    model on its own GPU and trains it data-parallel::

        model = nn.MLP([784, 256, 10], device=local_device())
        nn.fit(model, x, y, distributed="nccl")
    """
    rank = local_rank()
    visible = device_count("cuda")
    return f"cuda:{rank % visible if visible else rank}"
