"""distributed="nccl": what needs no GPU (refusals, install hints), and one rank on a real GPU.

The collectives themselves, on two ranks, are tested without a GPU in
``test_distributed_nccl_simulated.py``; NCCL refuses two ranks on one GPU, so a
machine with one GPU runs the one-rank path only, here (``-m gpu``, in ``.ci/gpu``).
"""

from __future__ import annotations

import sys
import types

import numpy as np
import pytest
from conftest import GPU_SKIP_REASON, HAS_GPU

import fusednn
from fusednn import distributed, nn
from fusednn.distributed import nccl


@pytest.mark.parametrize("device", ["numpy", "cpu"])
def test_a_model_off_the_gpu_is_sent_to_mpi(device: str) -> None:
    message = f"NCCL all-reduces CUDA device buffers; the model is on '{device}': use distributed='mpi'"
    with pytest.raises(ValueError, match=f"^{message}$"):
        nccl.NCCLCommunicator(fusednn.backend(device))


def fake_cupy(monkeypatch: pytest.MonkeyPatch, nccl_module: object | None) -> None:
    """Make ``from cupy.cuda import nccl`` find ``nccl_module`` (``None``: fail to import), whatever is installed."""
    cuda = types.ModuleType("cupy.cuda")  # not a package: a submodule it lacks fails to import
    monkeypatch.setitem(sys.modules, "cupy", types.ModuleType("cupy"))
    monkeypatch.setitem(sys.modules, "cupy.cuda", cuda)
    if nccl_module is None:
        monkeypatch.delitem(sys.modules, "cupy.cuda.nccl", raising=False)
    else:
        cuda.nccl = nccl_module  # type: ignore[attr-defined]
        monkeypatch.setitem(sys.modules, "cupy.cuda.nccl", nccl_module)


@pytest.mark.parametrize(
    ("nccl_module", "says"),
    [
        (None, r"needs CuPy's NCCL binding \(.*\); install CuPy"),  # no binding at all
        (types.SimpleNamespace(available=False), "needs NCCL, which CuPy did not find; install CuPy"),
    ],
    ids=["no binding", "no library"],
)
def test_missing_nccl_says_what_to_install(monkeypatch: pytest.MonkeyPatch, nccl_module: object, says: str) -> None:
    fake_cupy(monkeypatch, nccl_module)
    with pytest.raises(ImportError, match=says) as error:
        nccl.load_nccl()
    assert "pip install nvidia-nccl-cu12" in str(error.value)


# ---------------------------------------------------------------- on a GPU


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_GPU, reason=GPU_SKIP_REASON)
def test_gpu_one_rank_through_nccl_trains_what_fit_trains(monkeypatch: pytest.MonkeyPatch) -> None:
    """fit(distributed="nccl") on one GPU: CuPy's NCCL runs every device collective, and the weights are fit's."""
    try:
        real = nccl.load_nccl()
    except ImportError as error:
        pytest.skip(str(error))
    calls: list[str] = []

    class CountedCommunicator:  # NCCL's communicator, its collectives counted
        def __init__(self, *args: object) -> None:
            self.nccl = real.NcclCommunicator(*args)

        def allReduce(self, *args: object) -> None:  # noqa: N802 - CuPy's names
            calls.append("allReduce")
            self.nccl.allReduce(*args)

        def bcast(self, *args: object) -> None:
            calls.append("bcast")
            self.nccl.bcast(*args)

    counted = types.SimpleNamespace(**{name: getattr(real, name) for name in dir(real) if name.startswith("NCCL_")})
    counted.get_unique_id, counted.NcclCommunicator = real.get_unique_id, CountedCommunicator
    monkeypatch.setattr(nccl, "load_nccl", lambda: counted)
    monkeypatch.setattr(distributed, "_CONNECTED", {})

    rng = np.random.default_rng(5)
    x, y = rng.normal(size=(96, 6)), rng.integers(0, 3, size=96)
    histories, weights = [], []
    for parallel in (None, "nccl"):
        model = nn.MLP([6, 8, 3], activation="tanh", device="cuda", dtype="float64", seed=0)
        histories.append(
            nn.fit(model, x, y, optimizer="adam", lr=0.02, epochs=2, batch_size=16, seed=3, metrics=["accuracy"],
                   epoch_path="per-step", progress=False, distributed=parallel)
        )  # fmt: skip
        weights.append(model.get_weights())
    comm = distributed.connect("nccl", fusednn.backend("cuda"))
    assert (comm.size, comm._comm.nccl.size(), comm._comm.nccl.device_id()) == (1, 1, 0)
    assert calls.count("bcast") == 3  # the weights and Adam's two moments, at the start
    assert calls.count("allReduce") == 2 * 6 + 2  # a gradient per step, and each epoch's outputs
    np.testing.assert_allclose(histories[1].history["loss"], histories[0].history["loss"], rtol=1e-12)
    for got, want in zip(weights[1], weights[0], strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-14)
