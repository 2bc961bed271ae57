"""fit on the CUDA backend replays captured CUDA graphs: the same numbers as the per-step path and the reference.

Runs on the simulated GPU of :mod:`cuda_shim.simulated`, whose stream capture records
each kernel launch with the argument values it was given and whose ``Graph.launch``
replays exactly those launches, as CUDA does. So a value that changes between steps
but was baked into a captured step (a learning rate, Adam's bias corrections, a batch
offset) replays stale here and these comparisons fail; one test plants such a bug to
show it. Allocating, CuPy arithmetic and host reads while capturing raise in the
simulator, so every passing capture here launches kernels only.

The comparisons follow ``test_compiled_epochs.py``: float64 to its ``FLOAT64_RUN``
tolerance, float32 to the tolerances it states.
"""

from __future__ import annotations

import ctypes
import warnings
from types import SimpleNamespace

import numpy as np
import pytest
from conftest import GPU_SKIP_REASON, HAS_GPU
from cuda_shim import simulated
from cuda_shim.build import build_shim_library, have
from cuda_shim.simulated import no_host_reads, recording_allocations, simulated_cuda_backend
from test_compiled_epochs import FLOAT64_RUN, LOSS_TARGETS, OPTIMIZERS, TARGETS, X, _model

from fusednn import nn
from fusednn.backends import cuda_capturable_gemm, cuda_graphs, registry
from fusednn.backends.device import Device
from fusednn.backends.epoch_plan import EpochPlan, EpochTrainerUnavailable, LayerPlan, OptimizerPlan
from fusednn.nn import schedules
from fusednn.nn.compiled import epoch_plan

FLOAT32_RUN = {"rtol": 1e-4, "atol": 1e-5}
# cuBLAS (NumPy's BLAS in the simulator) sums each product in another order than the reference's
# matmul; over 15 updates of the eleven-layer net RMSprop's division by small roots grew that to
# 4e-11 (measured), past FLOAT64_RUN's atol.
FLOAT64_CUBLAS_RUN = {"rtol": 1e-8, "atol": 1e-10}


def _float64_tolerance(gemm_route: str) -> dict[str, float]:
    return FLOAT64_CUBLAS_RUN if gemm_route == "cublas" else FLOAT64_RUN


@pytest.fixture(scope="module")
def shim_library(tmp_path_factory: pytest.TempPathFactory) -> ctypes.CDLL:
    if not have("g++"):
        pytest.skip("g++ is not on PATH; it builds the CUDA sources for the CPU")
    return ctypes.CDLL(str(build_shim_library(tmp_path_factory.mktemp("cuda_graph_training"))))


@pytest.fixture
def sim_cuda(shim_library: ctypes.CDLL, monkeypatch: pytest.MonkeyPatch) -> str:
    """Register the simulated backend as ``cuda:0`` for one test; returns the device string."""
    monkeypatch.setitem(registry._cache, Device("cuda", 0), simulated_cuda_backend(shim_library))
    return "cuda:0"


@pytest.fixture(params=["kernel", "cublas"])
def gemm_route(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run every GEMM of the captured steps as the gemm kernel, or every one on (fake) cuBLAS."""
    monkeypatch.setattr(cuda_capturable_gemm, "KERNEL_GEMM_MAX", 10**12 if request.param == "kernel" else 0)
    return request.param


class _PlainDense(nn.Dense):
    """A layer kind of the user's own: no trainer knows it, so fit steps from Python."""


def _train(device: str, target: str, loss: str, *, dtype: str = "float64", per_step: bool = False, **kwargs):
    model = _model(device, dtype, kwargs.pop("l1", 0.0), kwargs.pop("l2", 0.0))
    if per_step:
        layers = [_PlainDense(**layer.get_config()) for layer in model.layers]
        model = nn.Sequential(layers, device=device, dtype=dtype, seed=1)
    metric = "accuracy" if loss == "categorical_crossentropy" else "mae"
    kwargs = {"lr": 0.05, "epochs": 3, "batch_size": 8, "progress": False, **kwargs}
    history = nn.fit(model, X, TARGETS[target], loss=loss, metrics=[metric], **kwargs)
    return model, history


def _assert_same(run, reference, tol: dict[str, float], path: str = "cuda-graph") -> None:
    (model, history), (ref_model, ref_history) = run, reference
    assert history.params["epoch_path"] == path
    assert history.history.keys() == ref_history.history.keys()
    for key, values in ref_history.history.items():
        np.testing.assert_allclose(history.history[key], values, **tol, err_msg=key)
    for ours, theirs in zip(model.get_weights(), ref_model.get_weights(), strict=True):
        np.testing.assert_allclose(ours, theirs, **tol)
    opt, ref_opt = history.optimizer, ref_history.optimizer
    assert (opt.step_count, opt.lr) == (ref_opt.step_count, ref_opt.lr)
    for name, state in ref_opt.state_dict().items():
        np.testing.assert_allclose(opt.state_dict()[name], state, **tol, err_msg=name)


@pytest.mark.parametrize(("loss", "target"), LOSS_TARGETS)
@pytest.mark.parametrize(("optimizer", "options"), OPTIMIZERS)
def test_graph_epochs_match_the_reference(
    sim_cuda: str, gemm_route: str, loss: str, target: str, optimizer: str, options: dict
) -> None:
    """Every loss (labels and probability rows), optimizer and activation (one hidden layer each)."""
    kwargs = {"optimizer": optimizer, "optimizer_kwargs": options}
    tol = _float64_tolerance(gemm_route)
    _assert_same(_train(sim_cuda, target, loss, **kwargs), _train("numpy", target, loss, **kwargs), tol)


SCHEDULE_OPTIONS = [
    # 5 micro-batches of 37 rows: the last group is 2 of 3, the last batch short.
    {"accumulate": 3, "shuffle": False},
    {"accumulate": 2, "schedule": schedules.CosineDecay(0.1, epochs=3), "schedule_interval": "step"},
    {"schedule": schedules.StepDecay(0.1, step_epochs=1, gamma=0.5), "schedule_interval": "epoch"},
    {"schedule": schedules.CosineDecay(0.1, epochs=3), "validation_split": 0.2},
    {"batch_size": 64},  # one batch larger than the data
]


@pytest.mark.parametrize("options", SCHEDULE_OPTIONS)
@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_graph_epochs_follow_schedules_accumulation_and_penalties(
    sim_cuda: str, gemm_route: str, options: dict, optimizer: str
) -> None:
    """Rates changing per step and per epoch, Adam's t and SGD's first step across epochs, L1/L2, validation."""
    options = {"l1": 1e-3, "l2": 1e-2, "optimizer": optimizer, **options}
    if optimizer == "sgd":
        options["optimizer_kwargs"] = {"momentum": 0.9}
    runs = [_train(device, "regression", "mse", **options) for device in (sim_cuda, "numpy")]
    _assert_same(*runs, _float64_tolerance(gemm_route))


def test_graph_epochs_match_the_per_step_path_on_the_same_backend(sim_cuda: str) -> None:
    options = {"l2": 1e-3, "accumulate": 2, "schedule": schedules.CosineDecay(0.1, epochs=3)}
    graphs = _train(sim_cuda, "labels", "categorical_crossentropy", dtype="float32", **options)
    stepped = _train(sim_cuda, "labels", "categorical_crossentropy", dtype="float32", per_step=True, **options)
    assert stepped[1].params["epoch_path"] == "per-step"
    _assert_same(graphs, stepped, FLOAT32_RUN)
    _assert_same(graphs, _train("numpy", "labels", "categorical_crossentropy", dtype="float32", **options), FLOAT32_RUN)


def test_adam_continues_its_step_count_across_fit_calls(sim_cuda: str) -> None:
    straight = _train(sim_cuda, "labels", "categorical_crossentropy", epochs=4)[0]
    resumed = _model(sim_cuda)
    opt = nn.Adam(resumed.parameters(), lr=0.05)
    for _ in range(2):
        history = nn.fit(resumed, X, TARGETS["labels"], optimizer=opt, epochs=2, batch_size=8, progress=False)
        assert history.params["epoch_path"] == "cuda-graph"
    assert opt.step_count == 4 * 5
    for ours, theirs in zip(resumed.get_weights(), straight.get_weights(), strict=True):
        np.testing.assert_array_equal(ours, theirs)


def test_a_host_scalar_baked_into_the_graph_is_caught(sim_cuda: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Plant the bug the device counters exist to avoid: Adam's step size computed on the host at capture time."""

    def baked_update(self: cuda_graphs.GraphEpoch) -> None:
        plan, opt = self._plan, self._optimizer
        beta1, beta2 = opt.adam_betas
        step_size, correction = 0.05 / (1 - beta1), np.sqrt(1 - beta2)  # t = 1, frozen into every replay
        n = plan.params.shape[0]
        states = opt.states
        self._launch("adam_step", plan.dtype, n, plan.params, plan.grads, *states, n, step_size, correction, *opt.hyper)

    monkeypatch.setattr(cuda_graphs.GraphEpoch, "_update", baked_update)
    run = _train(sim_cuda, "labels", "categorical_crossentropy", optimizer="adam")
    assert run[1].params["epoch_path"] == "cuda-graph"  # it trained through the planted graphs
    with pytest.raises(AssertionError, match="Not equal to tolerance"):
        _assert_same(run, _train("numpy", "labels", "categorical_crossentropy", optimizer="adam"), FLOAT64_RUN)


def _graph_trainer(device: str, batch_size: int = 8, accumulate: int = 1, labels: bool = True):
    model = _model(device)
    opt = nn.Adam(model.parameters(), lr=0.05)
    plan = epoch_plan(model, nn.get_loss("categorical_crossentropy"), opt, batch_size, accumulate, labels)
    assert plan is not None
    trainer = model.backend.epoch_trainer(plan)
    assert isinstance(trainer, cuda_graphs.GraphEpoch)
    return model, trainer


def test_each_step_kind_is_captured_once_and_each_step_is_one_replay(
    sim_cuda: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    captures, replays = [], []
    begin, launch = simulated.SimStream.begin_capture, simulated.SimGraph.launch
    monkeypatch.setattr(simulated.SimStream, "begin_capture", lambda self: (captures.append(1), begin(self))[1])
    monkeypatch.setattr(simulated.SimGraph, "launch", lambda self, stream=None: (replays.append(self), launch(self)))
    model, trainer = _graph_trainer(sim_cuda)
    backend = model.backend
    x, y = backend.asarray(X, dtype="float64"), backend.asindex(TARGETS["labels"])
    losses = backend.zeros(5, "float64")
    outputs = backend.empty((X.shape[0], 3), "float64")
    for epoch in range(2):
        order = np.random.default_rng(epoch).permutation(X.shape[0])
        with no_host_reads(), recording_allocations() as allocations:
            trainer(x, y, order, [0.05] * 5, 5 * epoch, losses, outputs)
        # The first epoch allocates the buffers (before capturing); a later one only uploads and launches.
        assert bool(allocations) == (epoch == 0)
    assert len(captures) == 2  # a full batch of 8 and the partial one of 5, captured in the first epoch only
    assert len(replays) == 10 and len(set(map(id, replays))) == 2
    assert replays[3] is replays[0] and replays[4] is not replays[0]


def test_the_trainer_rejects_data_that_does_not_fit_its_plan(sim_cuda: str) -> None:
    model, trainer = _graph_trainer(sim_cuda)
    backend = model.backend
    x, y = backend.asarray(X, dtype="float64"), backend.asindex(TARGETS["labels"])
    losses = backend.zeros(5, "float64")
    with pytest.raises(TypeError, match="x must be a \\(3 column\\) float64 array on the GPU"):
        trainer(X, y, None, [0.1] * 5, 0, losses, None)
    with pytest.raises(TypeError, match="y must hold 37 int64 class labels"):
        trainer(x, backend.asarray(TARGETS["probabilities"], dtype="float64"), None, [0.1] * 5, 0, losses, None)
    with pytest.raises(ValueError, match="one learning rate per update, 5"):
        trainer(x, y, None, [0.1] * 4, 0, losses, None)
    with pytest.raises(ValueError, match="one row index per row \\(37\\)"):
        trainer(x, y, np.arange(36), [0.1] * 5, 0, losses, None)
    with pytest.raises(ValueError, match="row indices in \\[0, 37\\), got \\[1, 37\\]"):
        trainer(x, y, np.arange(1, 38), [0.1] * 5, 0, losses, None)


def test_fit_falls_back_to_per_step_once_when_capture_fails(sim_cuda: str, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(self: simulated.SimStream) -> None:
        raise RuntimeError("cudaErrorStreamCaptureUnsupported: operation not permitted when stream is capturing")

    monkeypatch.setattr(simulated.SimStream, "begin_capture", refuse)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run = _train(sim_cuda, "labels", "categorical_crossentropy", optimizer="adam", accumulate=2)
    messages = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    assert len(messages) == 1
    assert "capturing a training step into a CUDA graph failed" in messages[0]
    assert "cudaErrorStreamCaptureUnsupported" in messages[0] and "per-step loop instead" in messages[0]
    assert caught[0].filename == __file__  # the warning points at the fit call
    reference = _train("numpy", "labels", "categorical_crossentropy", optimizer="adam", accumulate=2)
    _assert_same(run, reference, FLOAT64_RUN, path="per-step")


def test_fit_falls_back_when_the_first_graph_launch_is_refused(sim_cuda: str, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(self: simulated.SimGraph, stream: object = None) -> None:
        raise RuntimeError("cudaErrorInvalidValue: invalid argument")

    monkeypatch.setattr(simulated.SimGraph, "launch", refuse)
    with pytest.warns(RuntimeWarning, match="launching a captured CUDA graph failed: .*cudaErrorInvalidValue"):
        run = _train(sim_cuda, "regression", "mse", optimizer="sgd", optimizer_kwargs={"momentum": 0.9})
    reference = _train("numpy", "regression", "mse", optimizer="sgd", optimizer_kwargs={"momentum": 0.9})
    _assert_same(run, reference, FLOAT64_RUN, path="per-step")


def test_an_allocation_inside_a_captured_step_fails_the_capture(sim_cuda: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The simulator refuses what a real capture must not contain; the trainer reports it and changes nothing."""
    model, trainer = _graph_trainer(sim_cuda)
    record = cuda_graphs.GraphEpoch._record
    monkeypatch.setattr(cuda_graphs.GraphEpoch, "_record", lambda self, kind: (self._xp.zeros(3), record(self, kind)))
    backend = model.backend
    before = model.get_weights()
    losses = backend.zeros(5, "float64")
    with pytest.raises(EpochTrainerUnavailable, match="cupy.zeros \\(an allocation\\) while a stream is capturing"):
        trainer(
            backend.asarray(X, dtype="float64"), backend.asindex(TARGETS["labels"]), None, [0.1] * 5, 0, losses, None
        )
    for ours, theirs in zip(model.get_weights(), before, strict=True):
        np.testing.assert_array_equal(ours, theirs)
    assert not backend.to_numpy(losses).any()


def test_a_launch_on_another_stream_fails_the_capture(sim_cuda: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A kernel launched on a stream other than the capturing one would run once, now, and never replay."""
    record = cuda_graphs.GraphEpoch._record

    def on_another_stream(self: cuda_graphs.GraphEpoch, kind: cuda_graphs.StepKind) -> None:
        with simulated.SimStream():
            record(self, kind)

    monkeypatch.setattr(cuda_graphs.GraphEpoch, "_record", on_another_stream)
    model, trainer = _graph_trainer(sim_cuda)
    backend = model.backend
    losses = backend.zeros(5, "float64")
    with pytest.raises(EpochTrainerUnavailable, match="not capturing would escape the graph"):
        trainer(
            backend.asarray(X, dtype="float64"), backend.asindex(TARGETS["labels"]), None, [0.1] * 5, 0, losses, None
        )


def test_plans_the_graph_kernels_cannot_run_get_no_trainer(sim_cuda: str) -> None:
    model = _model(sim_cuda)
    plan = epoch_plan(model, nn.get_loss("mse"), nn.SGD(model.parameters(), lr=0.1), 8, 1, False)
    assert plan is not None
    backend = model.backend
    assert backend.epoch_trainer(plan) is not None
    conv = LayerPlan("conv2d", 3, 3, "relu", 0.0, 0.0, (0, 32))
    assert backend.epoch_trainer(EpochPlan(**{**plan.__dict__, "layers": (conv,)})) is None
    lion = OptimizerPlan("lion", {}, {})
    assert backend.epoch_trainer(EpochPlan(**{**plan.__dict__, "optimizer": lion})) is None
    host = EpochPlan(**{**plan.__dict__, "params": backend.to_numpy(plan.params)})
    assert backend.epoch_trainer(host) is None


@pytest.mark.parametrize(("trans_a", "trans_b"), [(False, False), (True, False), (False, True), (True, True)])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_capturable_gemm_matches_numpy_on_cublas_and_on_the_kernel(
    sim_cuda: str, monkeypatch: pytest.MonkeyPatch, trans_a: bool, trans_b: bool, dtype: str
) -> None:
    backend = registry.backend(sim_cuda)
    rng = np.random.default_rng(3)
    m, n, k = 5, 7, 3
    a_host = rng.standard_normal((k, m) if trans_a else (m, k))
    b_host = rng.standard_normal((n, k) if trans_b else (k, n))
    expected = (a_host.T if trans_a else a_host) @ (b_host.T if trans_b else b_host)
    a, b = backend.asarray(a_host, dtype=dtype), backend.asarray(b_host, dtype=dtype)
    stream = backend.xp.cuda.Stream(non_blocking=True)
    for kernel_max in (0, 10**9):
        monkeypatch.setattr(cuda_capturable_gemm, "KERNEL_GEMM_MAX", kernel_max)
        gemm = cuda_capturable_gemm.CapturableGemm(backend.xp, backend._launch, np.dtype(dtype), backend._cublas, False)
        gemm.bind(stream)
        c = backend.zeros((m, n), dtype)
        gemm(a, b, c, m, n, k, trans_a, trans_b)
        np.testing.assert_allclose(backend.to_numpy(c), expected, rtol=1e-5)
    prefix = "s" if dtype == "float32" else "d"
    assert backend._cublas.calls == [f"{prefix}gemm {n}x{m}x{k}"]  # column-major: C^T is n x m


def test_graph_gemms_go_to_cublas_above_the_kernel_threshold(sim_cuda: str, gemm_route: str) -> None:
    run = _train(sim_cuda, "labels", "categorical_crossentropy", optimizer="adam")
    calls = registry.backend(sim_cuda)._cublas.calls
    # Per kind of step (8 and 5 rows), 11 layers: 11 forward, 11 weight-gradient and 10 input-gradient GEMMs.
    assert len(calls) == (2 * 32 if gemm_route == "cublas" else 0)
    reference = _train("numpy", "labels", "categorical_crossentropy", optimizer="adam")
    _assert_same(run, reference, _float64_tolerance(gemm_route))


def test_a_cublas_handle_on_another_stream_fails_the_capture(sim_cuda: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Plant the bug the stream binding exists to avoid: cuBLAS would run outside the graph, once, at capture."""
    monkeypatch.setattr(cuda_capturable_gemm, "KERNEL_GEMM_MAX", 0)
    bind = cuda_capturable_gemm.CapturableGemm.bind
    monkeypatch.setattr(
        cuda_capturable_gemm.CapturableGemm, "bind", lambda self, stream: bind(self, simulated.SimStream())
    )
    model, trainer = _graph_trainer(sim_cuda)
    backend = model.backend
    losses = backend.zeros(5, "float64")
    with pytest.raises(EpochTrainerUnavailable, match="escape the graph"):
        trainer(
            backend.asarray(X, dtype="float64"), backend.asindex(TARGETS["labels"]), None, [0.1] * 5, 0, losses, None
        )


def test_a_workspace_that_cannot_be_set_is_an_error() -> None:
    """Without the binding's setWorkspace the loaded libcublas is asked; with neither the capture fails (fit steps)."""
    binding = SimpleNamespace()  # CuPy 14's binding has no setWorkspace; no libcublas is loaded here
    with pytest.raises(RuntimeError, match="libcublas is not loaded"):
        cuda_capturable_gemm._set_workspace(binding, 1, 0, 1024)


def test_step_kinds_follow_the_per_step_loop() -> None:
    kinds = cuda_graphs.step_kinds(37, 8, 3)
    assert [k.rows for k in kinds] == [8, 8, 8, 8, 5]
    assert [(k.first, k.update) for k in kinds] == [
        (True, False),
        (False, False),
        (False, True),
        (True, False),
        (False, True),
    ]
    assert [k.share for k in kinds] == [1 / 3] * 3 + [8 / 13, 5 / 13]
    assert len(set(cuda_graphs.step_kinds(37, 8, 1))) == 2


@pytest.mark.parametrize("loss", ["binary_crossentropy", "mse"])
def test_one_output_takes_a_target_vector(sim_cuda: str, loss: str) -> None:
    y = TARGETS["binary"][:, 0] if loss == "binary_crossentropy" else TARGETS["regression"][:, 0]
    runs = []
    for device in (sim_cuda, "numpy"):
        model = nn.MLP([3, 5, 1], device=device, dtype="float64", seed=0)
        runs.append((model, nn.fit(model, X, y, loss=loss, epochs=2, batch_size=8, metrics=["mae"], progress=False)))
    _assert_same(*runs, FLOAT64_RUN)


# ------------------------------------------------------------- on a real GPU

gpu = pytest.mark.skipif(not HAS_GPU, reason=GPU_SKIP_REASON)


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize(("loss", "target"), LOSS_TARGETS)
@pytest.mark.parametrize(("optimizer", "options"), [OPTIMIZERS[2], OPTIMIZERS[4], OPTIMIZERS[6]])
def test_gpu_graph_epochs_match_the_reference(
    gemm_route: str, loss: str, target: str, optimizer: str, options: dict
) -> None:
    """Also the capture itself: a capture that failed would fall back to "per-step" and fail _assert_same."""
    kwargs = {"optimizer": optimizer, "optimizer_kwargs": options}
    tol = _float64_tolerance(gemm_route)
    _assert_same(_train("cuda", target, loss, **kwargs), _train("numpy", target, loss, **kwargs), tol)


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("options", SCHEDULE_OPTIONS)
def test_gpu_graph_epochs_follow_schedules_accumulation_and_penalties(gemm_route: str, options: dict) -> None:
    options = {"l1": 1e-3, "l2": 1e-2, "optimizer": "adam", **options}
    runs = [_train(device, "regression", "mse", **options) for device in ("cuda", "numpy")]
    _assert_same(*runs, _float64_tolerance(gemm_route))


@pytest.mark.gpu
@gpu
def test_gpu_graph_epochs_in_float32_match_the_reference(gemm_route: str) -> None:
    options = {"l2": 1e-3, "accumulate": 2, "schedule": schedules.CosineDecay(0.1, epochs=3)}
    runs = [
        _train(device, "labels", "categorical_crossentropy", dtype="float32", **options) for device in ("cuda", "numpy")
    ]
    _assert_same(*runs, FLOAT32_RUN)
