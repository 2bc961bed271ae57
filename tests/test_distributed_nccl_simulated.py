"""NCCLCommunicator without a GPU: the simulated CUDA backend and a fake NCCL that reduces through MPI.

The fake (:mod:`cuda_shim.fake_nccl`) takes raw device pointers as NCCL does, finds the
simulated arrays behind them and checks the count, data type, reduction and stream of
every call; two ranks under ``mpiexec`` then train what one process trains with both
ranks' batches. The one-GPU run on real hardware is in ``test_distributed_nccl.py``.
"""

from __future__ import annotations

import ctypes
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from cuda_shim.build import build_shim_library, have
from cuda_shim.fake_nccl import FakeNccl
from cuda_shim.simulated import SimStream, no_host_reads, recording_allocations, simulated_cuda_backend
from mpi_jobs import ROOT, needs_mpi, run_job

import fusednn
from fusednn import distributed, nn
from fusednn.backends import registry
from fusednn.backends.device import Device
from fusednn.distributed import ABORT_STATUS, nccl
from fusednn.distributed.mpi import MPICommunicator
from fusednn.distributed.single import SingleProcess


@pytest.fixture(scope="module")
def shim_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not have("g++"):
        pytest.skip("g++ is not on PATH; it builds the CUDA sources for the CPU")
    return build_shim_library(tmp_path_factory.mktemp("cuda_sim_nccl"))


@pytest.fixture
def sim_backend(shim_path: Path, monkeypatch: pytest.MonkeyPatch) -> fusednn.Backend:
    """The simulated backend registered as ``cuda:0`` for one test, with no communicator cached by ``connect``."""
    backend = simulated_cuda_backend(ctypes.CDLL(str(shim_path)))
    monkeypatch.setitem(registry._cache, Device("cuda", 0), backend)
    monkeypatch.setattr(distributed, "_CONNECTED", {})
    return backend


@pytest.fixture
def fake() -> FakeNccl:
    return FakeNccl()


@pytest.fixture
def comm(sim_backend: fusednn.Backend, fake: FakeNccl, monkeypatch: pytest.MonkeyPatch) -> nccl.NCCLCommunicator:
    """A one-rank NCCLCommunicator on the simulated cuda:0, over the fake NCCL."""
    monkeypatch.setattr(nccl, "load_nccl", lambda: fake)
    return nccl.NCCLCommunicator(sim_backend)


# ---------------------------------------------------------------- two ranks under mpiexec


@needs_mpi
def test_two_ranks_train_the_weights_of_one_process_with_both_batches(shim_path: Path, tmp_path: Path) -> None:
    # -m mpi4py: an error on one rank aborts both, rather than leave the other waiting in a collective
    script = [sys.executable, "-m", "mpi4py", str(ROOT / "tests" / "distributed_nccl_ranks.py")]
    done = run_job(2, [*script, str(shim_path), str(tmp_path)], tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    reports = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in (0, 1)]

    # Both ranks on cuda:0 was refused on both, naming them, before either joined NCCL.
    for report in reports:
        assert "ranks 0 and 1 both use cuda:0 on host" in report["shared_gpu_error"]
        assert report["refused_before_joining"]

    from distributed_nccl_ranks import BATCH, EPOCHS, ROWS, fit, model

    reference = model("numpy", seed=0)
    expected = fit(reference, 2 * BATCH)
    steps = EPOCHS * -(-ROWS // (2 * BATCH))
    for rank, report in enumerate(reports):
        assert report["device"] == f"cuda:{rank}"  # local_device(): one GPU per rank
        assert report["local_rank_from_mpi"] == rank  # both ranks on this one host
        assert report["communicator_devices"] == [rank]  # joined with its own GPU current
        assert report["ranks"] == 2
        for name in ("loss", "accuracy"):
            np.testing.assert_allclose(report["history"][name], expected.history[name], rtol=1e-12)
        weights = np.load(tmp_path / f"rank{rank}.npz")
        for got, want in zip(weights.values(), reference.get_weights(), strict=True):
            np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)
        # Every device collective went through NCCL: rank 0's weights and Adam's two moments broadcast at the
        # start, one gradient all-reduce per step, and each epoch's outputs summed for the accuracy.
        collectives = [call[0] for call in report["calls"]]
        assert collectives.count("bcast") == 3
        assert collectives.count("allReduce") == steps + EPOCHS
        assert {call[2] for call in report["calls"]} == {"float64"}


# ---------------------------------------------------------------- one rank, in process


def test_two_ranks_on_one_gpu_are_refused_before_nccl_is_joined(
    sim_backend: fusednn.Backend, fake: FakeNccl, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("mpi4py", reason="the host collectives of two ranks go through mpi4py")

    class TwoRanksOnOneGpu:  # rank 0 of an MPI world of 2 whose rank 1 reports the same GPU
        def Get_rank(self) -> int:  # noqa: N802 - mpi4py's names
            return 0

        def Get_size(self) -> int:  # noqa: N802
            return 2

        def allgather(self, value: object) -> list[object]:
            return [value, value]

    monkeypatch.setattr(nccl, "load_nccl", lambda: fake)
    with pytest.raises(RuntimeError) as error:
        nccl.NCCLCommunicator(sim_backend, mpi_comm=TwoRanksOnOneGpu())
    message = str(error.value)
    assert message.startswith("ranks 0 and 1 both use cuda:0 on host ")
    assert "(PCI bus 0000:10:00.0); NCCL needs one GPU per rank" in message
    assert fake.communicators == []  # a real ncclCommInitRank would have hung or failed later


def test_the_check_knows_one_gpu_by_its_bus_on_its_host() -> None:
    a, b = ("node1", "0000:3B:00.0"), ("node2", "0000:3B:00.0")
    nccl.check_one_gpu_per_rank([(*a, "cuda:0"), (*b, "cuda:0")])  # the same bus on two hosts: two GPUs
    with pytest.raises(RuntimeError, match=r"^ranks 0, 1 and 3 both use cuda:0 and cuda:1 on host node1 "):
        # CUDA_VISIBLE_DEVICES may give one GPU two names
        nccl.check_one_gpu_per_rank([(*a, "cuda:0"), (*a, "cuda:0"), (*b, "cuda:1"), (*a, "cuda:1")])


def test_allreduce_and_broadcast_run_in_place_on_the_current_stream(
    comm: nccl.NCCLCommunicator, sim_backend: fusednn.Backend, fake: FakeNccl
) -> None:
    grad = sim_backend.asarray(np.arange(6.0), dtype="float32")
    stream = SimStream()
    with stream, no_host_reads(), recording_allocations() as allocated:
        comm.allreduce(grad)
        comm.broadcast(grad)
    assert fake.calls == [("allReduce", 6, "float32", stream.ptr), ("bcast", 6, "float32", stream.ptr)]
    assert allocated == []  # in place: no staging buffer, no host round trip
    np.testing.assert_array_equal(sim_backend.to_numpy(grad), np.arange(6.0))


def test_collectives_refuse_arrays_nccl_cannot_take(comm: nccl.NCCLCommunicator, sim_backend: fusednn.Backend) -> None:
    with pytest.raises(ValueError, match=r"^NCCL's allreduce takes arrays on cuda:0, .* host memory \(numpy\)"):
        comm.allreduce(np.zeros(3))
    with pytest.raises(ValueError, match="C-contiguous arrays; got a strided view"):
        comm.broadcast(sim_backend.zeros(8, "float64")[::2])
    with pytest.raises(TypeError, match="takes float32 or float64 arrays, got int64"):
        comm.allreduce(sim_backend.asindex(np.arange(3)))


@pytest.mark.parametrize(
    ("planted", "error"),
    [
        ({"stream": 0}, "must be current and the stream its current one"),  # the default stream, not the current
        ({"count": 7}, "run 4 bytes past the end of their allocation"),
        ({"datatype": FakeNccl.NCCL_FLOAT64}, "run 24 bytes past the end"),  # float64's code for a float32 buffer
        ({"datatype": FakeNccl.NCCL_INT32}, "data type 2 means int32, but the buffer holds float32"),
        ({"op": FakeNccl.NCCL_AVG}, "the fake NCCL sums only"),
    ],
    ids=["stream", "count", "float64", "int32", "op"],
)
def test_the_fake_nccl_refuses_what_nccl_would_get_wrong(
    comm: nccl.NCCLCommunicator, sim_backend: fusednn.Backend, planted: dict[str, int], error: str
) -> None:
    """A bug in NCCLCommunicator's arguments fails here, where one rank's sum would hide it."""
    grad = sim_backend.zeros(6, "float32")
    with SimStream() as stream:
        good = {"count": 6, "datatype": FakeNccl.NCCL_FLOAT32, "op": FakeNccl.NCCL_SUM, "stream": stream.ptr}
        comm._comm.allReduce(grad.data.ptr, grad.data.ptr, *good.values())
        with pytest.raises((ValueError, TypeError, RuntimeError), match=error):
            comm._comm.allReduce(grad.data.ptr, grad.data.ptr, *(good | planted).values())


def test_one_rank_without_mpi4py_needs_no_mpi(
    without_mpi4py: None, sim_backend: fusednn.Backend, fake: FakeNccl, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(ImportError, match="mpi4py"):
        MPICommunicator()
    monkeypatch.setattr(nccl, "load_nccl", lambda: fake)
    comm = distributed.connect("nccl", sim_backend)
    assert isinstance(comm, nccl.NCCLCommunicator) and isinstance(comm.host, SingleProcess)
    assert (comm.rank, comm.size) == (0, 1)
    values = np.array([1.5, 2.0])
    comm.allreduce_host(values)
    assert values.tolist() == [1.5, 2.0]
    assert comm.allgather_object({"seed": 3}) == [{"seed": 3}]
    grad = sim_backend.zeros(4, "float64")
    comm.allreduce(grad)
    assert [call[0] for call in fake.calls] == ["allReduce"]  # the device collective still goes through NCCL
    with pytest.raises(SystemExit) as stopped:
        comm.abort(RuntimeError("a step failed"))
    assert stopped.value.code == ABORT_STATUS


def test_without_mpi4py_a_rank_of_a_launched_job_says_what_to_install(
    without_mpi4py: None, sim_backend: fusednn.Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OMPI_COMM_WORLD_SIZE", "2")  # one of two processes mpiexec started: it must not train alone
    with pytest.raises(ImportError, match=r"needs mpi4py .* pip install 'fusednn\[distributed\]'"):
        nccl.NCCLCommunicator(sim_backend)


def _one_rank_trains_what_fit_trains(distributed: str) -> nn.Sequential:
    """Fit the simulated cuda:0 model on one rank through ``distributed``; check it against a numpy fit; return it."""
    from distributed_nccl_ranks import BATCH, fit, model

    reference, network = model("numpy", seed=0), model("cuda:0", seed=0)
    expected, history = fit(reference, BATCH), fit(network, BATCH, distributed=distributed)
    assert history.params["ranks"] == 1
    np.testing.assert_allclose(history.history["loss"], expected.history["loss"], rtol=1e-12)
    for got, want in zip(network.get_weights(), reference.get_weights(), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)
    return network


def test_fit_on_one_rank_through_nccl_trains_what_fit_trains(
    without_mpi4py: None, sim_backend: fusednn.Backend, fake: FakeNccl, monkeypatch: pytest.MonkeyPatch
) -> None:
    from distributed_nccl_ranks import BATCH, EPOCHS, ROWS

    monkeypatch.setattr(nccl, "load_nccl", lambda: fake)
    _one_rank_trains_what_fit_trains("nccl")
    steps = EPOCHS * -(-ROWS // BATCH)
    assert [call[0] for call in fake.calls].count("allReduce") == steps + EPOCHS


@needs_mpi
def test_a_gpu_model_all_reduces_through_mpi_via_the_host(
    sim_backend: fusednn.Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``distributed="mpi"`` on a GPU stages each device buffer through the host, and trains what fit trains."""
    staged: list[tuple[int, ...]] = []
    to_numpy = type(sim_backend).to_numpy
    monkeypatch.setattr(
        type(sim_backend), "to_numpy", lambda self, x: staged.append(tuple(x.shape)) or to_numpy(self, x)
    )
    network = _one_rank_trains_what_fit_trains("mpi")
    assert (network.parameters().size,) in staged  # the flat gradient (and parameters) went through the host


class _TwinRanks:
    """An mpi4py communicator stand-in for rank 0 of two ranks holding the same values: Allreduce doubles, Bcast
    writes rank 1's (here: minus ours)."""

    def Get_rank(self) -> int:  # noqa: N802  (mpi4py's names)
        return 0

    def Get_size(self) -> int:  # noqa: N802
        return 2

    def Allreduce(self, send: object, buffer: np.ndarray, op: object) -> None:  # noqa: N802
        buffer *= 2

    def Bcast(self, buffer: np.ndarray, root: int) -> None:  # noqa: N802
        np.negative(buffer, out=buffer)


@needs_mpi
def test_mpi_collectives_of_a_gpu_array_write_the_result_back_to_the_device(sim_backend: fusednn.Backend) -> None:
    comm = MPICommunicator(_TwinRanks())
    array = sim_backend.asarray(np.arange(5.0), dtype="float32")
    comm.allreduce(array)
    np.testing.assert_array_equal(sim_backend.to_numpy(array), 2 * np.arange(5.0))
    comm.broadcast(array, root=1)
    np.testing.assert_array_equal(sim_backend.to_numpy(array), -2 * np.arange(5.0))
