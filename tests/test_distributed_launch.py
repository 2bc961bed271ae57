"""Where a rank trains (its place on its node, from the launcher) and the job of one process, with no MPI."""

from __future__ import annotations

import numpy as np
import pytest

from fusednn import distributed
from fusednn.distributed import ABORT_STATUS, launch
from fusednn.distributed.single import SingleProcess


@pytest.fixture
def no_launcher(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (*launch.LOCAL_RANK_VARIABLES, *launch.WORLD_SIZE_VARIABLES):
        monkeypatch.delenv(name, raising=False)


@pytest.mark.parametrize("variable", launch.LOCAL_RANK_VARIABLES)
def test_local_rank_is_what_the_launcher_says(
    no_launcher: None, monkeypatch: pytest.MonkeyPatch, variable: str
) -> None:
    monkeypatch.setenv(variable, "3")
    assert distributed.local_rank() == 3


def test_local_rank_without_a_launcher_or_mpi4py_is_0(no_launcher: None, without_mpi4py: None) -> None:
    assert distributed.local_rank() == 0


def test_a_garbled_launcher_variable_is_named(no_launcher: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OMPI_COMM_WORLD_SIZE", "two")
    with pytest.raises(ValueError, match=r"^\$OMPI_COMM_WORLD_SIZE should be a whole number .*, got 'two'$"):
        launch.launched_size()


@pytest.mark.parametrize(
    ("rank", "visible", "device"), [(0, 4, "cuda:0"), (5, 4, "cuda:1"), (3, 1, "cuda:0"), (2, 0, "cuda:2")]
)
def test_local_device_puts_the_ranks_of_a_node_on_its_gpus(
    no_launcher: None, monkeypatch: pytest.MonkeyPatch, rank: int, visible: int, device: str
) -> None:
    """Rank i of a node takes GPU i, modulo the GPUs it sees (one each with CUDA_VISIBLE_DEVICES per rank)."""
    monkeypatch.setenv("OMPI_COMM_WORLD_LOCAL_RANK", str(rank))
    monkeypatch.setattr(launch, "device_count", lambda kind: visible if kind == "cuda" else 0)
    assert distributed.local_device() == device


def test_a_single_process_is_its_own_job() -> None:
    comm = SingleProcess()
    grad = np.arange(3.0)
    comm.allreduce(grad)
    comm.broadcast(grad, root=0)
    np.testing.assert_array_equal(grad, np.arange(3.0))
    with pytest.raises(ValueError, match=r"^root must be a rank of the job, 0 \(the one process\), got 1$"):
        comm.broadcast(grad, root=1)
    with pytest.raises(RuntimeError, match="checking"), comm.agreement("checking"):
        raise RuntimeError("checking")
    with pytest.raises(SystemExit) as stopped:
        comm.abort(RuntimeError("a step failed"))
    assert stopped.value.code == ABORT_STATUS
