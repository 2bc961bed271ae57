"""fusednn.nn on the CUDA backend without a GPU: the simulated backend of :mod:`cuda_shim.simulated`.

The GPU tests run the same checks on a real device; these catch, in CI, what
breaks between ``nn`` and ``CudaBackend`` (a method the backend lacks, a layout
it rejects, a buffer it rebinds) by training through the shipped ``.cu``
kernels built for the CPU, and comparing every step with the NumPy reference.
"""

from __future__ import annotations

import contextlib
import ctypes

import numpy as np
import pytest
from cuda_shim.build import build_shim_library, have
from cuda_shim.simulated import no_host_reads, recording_host_reads, simulated_cuda_backend
from device_resident_training import CASES, training_step

from fusednn import nn
from fusednn.backends import registry
from fusednn.backends.device import Device


@pytest.fixture(scope="module")
def shim_library(tmp_path_factory: pytest.TempPathFactory) -> ctypes.CDLL:
    if not have("g++"):
        pytest.skip("g++ is not on PATH; it builds the CUDA sources for the CPU")
    return ctypes.CDLL(str(build_shim_library(tmp_path_factory.mktemp("cuda_sim_training"))))


@pytest.fixture
def sim_cuda(shim_library: ctypes.CDLL, monkeypatch: pytest.MonkeyPatch) -> str:
    """Register the simulated backend as ``cuda:0`` for one test; returns the device string."""
    monkeypatch.setitem(registry._cache, Device("cuda", 0), simulated_cuda_backend(shim_library))
    return "cuda:0"


def run_steps(device: str, dtype: str, steps: int) -> tuple[list[float], list[np.ndarray]]:
    rng = np.random.default_rng(11)
    x, y = rng.normal(size=(96, 12)), rng.integers(0, 4, size=96)
    model = nn.MLP([12, 24, 16, 4], activation="gelu", device=device, dtype=dtype, seed=7, l2=1e-3)
    opt = nn.Adam(model.parameters(), lr=3e-3, weight_decay=1e-4, amsgrad=True)
    loss_fn = nn.get_loss("categorical_crossentropy", device=device)
    losses = []
    for step in range(steps):
        batch = slice(32 * (step % 3), 32 * (step % 3) + 32)
        loss, dout = loss_fn(model.forward(x[batch]), y[batch])
        model.backward(dout, need_input_grad=False)
        opt.step()
        losses.append(float(loss))
    return losses, model.get_weights()


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_simulated_cuda_training_tracks_the_reference_for_50_steps(sim_cuda: str, dtype: str) -> None:
    tol = {"float64": {"rtol": 1e-10, "atol": 1e-12}, "float32": {"rtol": 1e-3, "atol": 1e-4}}[dtype]
    ref_losses, ref_weights = run_steps("numpy", dtype, 50)
    sim_losses, sim_weights = run_steps(sim_cuda, dtype, 50)
    np.testing.assert_allclose(sim_losses, ref_losses, **tol)
    for a, b in zip(ref_weights, sim_weights, strict=True):
        np.testing.assert_allclose(b, a, **tol)


@pytest.mark.parametrize("optimizer", ["sgd", "rmsprop"])
def test_simulated_cuda_optimizers_track_the_reference(sim_cuda: str, optimizer: str) -> None:
    hyper = {"sgd": {"lr": 0.05, "momentum": 0.9, "nesterov": True}, "rmsprop": {"lr": 0.01, "centered": True}}
    weights = []
    for device in ("numpy", sim_cuda):
        model = nn.MLP([5, 7, 3], activation="tanh", device=device, dtype="float64", seed=2)
        opt = nn.get_optimizer(optimizer, model.parameters(), **hyper[optimizer])
        loss_fn = nn.get_loss("mse", device=device)
        x, target = np.linspace(-1, 1, 40).reshape(8, 5), np.linspace(0, 1, 24).reshape(8, 3)
        for _ in range(10):
            _, dout = loss_fn(model.forward(x), target)
            model.backward(dout)
            opt.step()
        weights.append(model.get_weights())
    for a, b in zip(*weights, strict=True):
        np.testing.assert_allclose(b, a, rtol=1e-10, atol=1e-12)


def test_simulated_cuda_fit_checkpoint_and_move_to_cpu(sim_cuda: str, tmp_path) -> None:
    data = nn.data.load_dataset("xor", rows=64)
    model = nn.MLP([2, 8, 2], activation="relu", device=sim_cuda, seed=0)
    history = nn.fit(
        model,
        data.x,
        data.y,
        loss="categorical_crossentropy",
        optimizer="adam",
        lr=0.05,
        epochs=3,
        batch_size=16,
        seed=0,
        progress=False,
        metrics=["accuracy"],
    )
    assert len(history.history["loss"]) == 3 and all(np.isfinite(history.history["loss"]))
    path = tmp_path / "sim.npz"
    nn.save(path, model)
    restored = nn.load(path, device="cpu").model
    for a, b in zip(model.get_weights(), restored.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(model.predict(data.x), restored.predict(data.x), rtol=1e-5, atol=1e-6)


def test_fit_runs_its_array_arithmetic_under_the_models_gpu(sim_cuda: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """fit's own gradient accumulation uses CuPy directly; it must do so with the model's GPU current."""
    backend = registry.backend(sim_cuda)
    entered = []
    monkeypatch.setattr(type(backend), "activate", lambda self: _recording(entered, self.device.index))
    data = nn.data.load_dataset("xor", rows=32)
    model = nn.MLP([2, 4, 2], device=sim_cuda, seed=0)
    nn.fit(model, data.x, data.y, optimizer="sgd", lr=0.1, epochs=2, batch_size=8, accumulate=2, progress=False)
    assert entered == [0, 0]


def _recording(log: list[int], index: int) -> contextlib.AbstractContextManager[None]:
    log.append(index)
    return contextlib.nullcontext()


def test_two_simulated_gpus_train_side_by_side_without_interfering(
    shim_library: ctypes.CDLL, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Models on cuda:0 and cuda:1 train interleaved, each while the *other* GPU is current, and match the reference.

    The simulated GPUs raise, as CuPy does, when arithmetic or a launch touches
    an array of a GPU that is not current, and place new arrays on the current
    one; so any allocation or launch outside the backend's ``Device(N)`` block
    fails here (see :mod:`cuda_shim.simulated`).
    """
    fake_cupy = None
    for index in (0, 1):
        backend = simulated_cuda_backend(shim_library, index)
        monkeypatch.setitem(registry._cache, Device("cuda", index), backend)
        fake_cupy = backend.xp
    rng = np.random.default_rng(5)
    x, y = rng.normal(size=(64, 6)), rng.integers(0, 3, size=64)
    runs = {}
    for device in ("numpy", "cuda:0", "cuda:1"):
        model = nn.MLP([6, 10, 3], activation="tanh", device=device, dtype="float64", seed=3)
        runs[device] = (model, nn.Adam(model.parameters(), lr=0.01), nn.get_loss("categorical_crossentropy", device))
    for step in range(12):
        batch = slice(16 * (step % 4), 16 * (step % 4) + 16)
        for device, other_gpu in (("numpy", 0), ("cuda:0", 1), ("cuda:1", 0)):
            model, optimizer, loss_fn = runs[device]
            with fake_cupy.cuda.Device(other_gpu):
                _, dout = loss_fn(model.forward(x[batch]), y[batch])
                model.backward(dout)
                optimizer.step()
    reference = runs["numpy"][0].get_weights()
    for device in ("cuda:0", "cuda:1"):
        model, optimizer, _ = runs[device]
        arrays = [model.parameters().data, model.parameters().grad, *optimizer.state.values()]
        assert {a.device.id for a in arrays} == {int(device[-1])}
        for a, b in zip(reference, model.get_weights(), strict=True):
            np.testing.assert_allclose(b, a, rtol=1e-10, atol=1e-12)
    # fit's own arithmetic, evaluation and a move across GPUs, with cuda:0 current throughout.
    model = runs["cuda:1"][0]
    nn.fit(model, x, y, optimizer="sgd", lr=0.1, epochs=1, batch_size=16, accumulate=2, progress=False)
    weights = model.get_weights()
    model.to("cuda:0")
    assert {a.device.id for a in (model.parameters().data, model.parameters().grad)} == {0}
    for a, b in zip(weights, model.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize(("loss", "output_activation", "optimizer"), CASES)
def test_an_nn_training_step_never_reads_a_device_value_on_the_host(
    sim_cuda: str, loss: str, output_activation: str | None, optimizer: str
) -> None:
    """Forward, loss, backward and the optimizer step of nn leave every value on the GPU until it is asked for."""
    step = training_step(sim_cuda, loss, output_activation, optimizer)
    with no_host_reads():
        losses = [step() for _ in range(3)]
    assert all(np.isfinite(registry.backend(sim_cuda).to_float(v)) for v in losses)


def test_fit_reads_the_gpu_once_per_epoch(sim_cuda: str) -> None:
    """fit keeps per-step losses on the device and reads them once at the end of each epoch, not per batch."""
    data = nn.data.load_dataset("xor", rows=64)
    model = nn.MLP([2, 8, 2], activation="tanh", device=sim_cuda, seed=0)
    with recording_host_reads() as reads:
        nn.fit(model, data.x, data.y, optimizer="adam", lr=0.01, epochs=3, batch_size=8, progress=False)
    assert reads == ["cupy.asnumpy"] * 3
