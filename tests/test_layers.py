"""Dropout and BatchNorm on every backend: Philox against Random123's answers, masks equal on every
device, batch norm against ``torch.nn.BatchNorm1d`` in float64, and the layer protocol around them.

The cuda backend runs through the simulated backend (:mod:`cuda_shim.simulated`): the shipped
``layers.cu`` built for the CPU with the shim, launched by the real ``CudaBackend`` methods.
"""

from __future__ import annotations

import ctypes

import numpy as np
import pytest
import torch
from conftest import GPU_SKIP_REASON, HAS_GPU
from cuda_shim.build import build_shim_library, have
from cuda_shim.simulated import simulated_cuda_backend

import fusednn
from fusednn import nn
from fusednn.backends import registry
from fusednn.backends.device import Device
from fusednn.backends.philox import dropout_bits, dropout_threshold, philox4x32_10
from fusednn.kernels.cpu.layers import philox_block
from fusednn.nn.compiled import epoch_plan

# Random123's tests/kat_vectors, the three "philox4x32 10" lines: counter (4 words), key (2), answer (4).
PHILOX_KAT = [
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF,) * 4, (0xFFFFFFFF, 0xFFFFFFFF), (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    (
        (0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344),
        (0xA4093822, 0x299F31D0),
        (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1),
    ),
]

KEYS = [(0, 0, 0), (1, 5, 2), (2**64 - 1, 2**64 - 1, 2**32 - 1), (123456789012345, 2**33 + 7, 9)]
"""(seed, step, layer): zero, small, every word at its maximum, words above 32 bits."""

REAL_GPU = pytest.param("cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(not HAS_GPU, reason=GPU_SKIP_REASON)])


@pytest.fixture(scope="module")
def shim_library(tmp_path_factory: pytest.TempPathFactory) -> ctypes.CDLL:
    if not have("g++"):
        pytest.skip("g++ is not on PATH; it builds the CUDA sources for the CPU")
    return ctypes.CDLL(str(build_shim_library(tmp_path_factory.mktemp("cuda_shim_layers"))))


@pytest.fixture
def sim_cuda(shim_library: ctypes.CDLL, monkeypatch: pytest.MonkeyPatch) -> str:
    """The simulated backend registered as ``cuda:0`` for one test."""
    monkeypatch.setitem(registry._cache, Device("cuda", 0), simulated_cuda_backend(shim_library))
    return "cuda:0"


@pytest.fixture(params=["numpy", "cpu", "sim", REAL_GPU])
def any_device(request: pytest.FixtureRequest) -> str:
    """numpy, cpu, the simulated cuda backend and, when present, a real GPU."""
    if request.param == "sim":
        return request.getfixturevalue("sim_cuda")
    return request.param


# ------------------------------------------------------------------ Philox


@pytest.mark.parametrize(("counter", "key", "expected"), PHILOX_KAT)
def test_philox_matches_random123_known_answers_in_numpy_and_numba(counter, key, expected) -> None:
    assert [int(w) for w in philox4x32_10(np, counter, key)] == list(expected)
    words = philox_block(*(np.uint64(w) for w in (*counter, *key)))
    assert [int(w) for w in words] == list(expected)


@pytest.mark.parametrize(("counter", "key", "expected"), PHILOX_KAT)
def test_philox_matches_random123_known_answers_in_cuda_c(shim_library, counter, key, expected) -> None:
    words = np.array([*counter, *key], dtype=np.int64)
    out = np.zeros(4, dtype=np.int64)
    function = shim_library.philox_block_float
    function.restype = None
    function(ctypes.c_int(1), ctypes.c_int(1), ctypes.c_void_p(words.ctypes.data), ctypes.c_void_p(out.ctypes.data))
    assert out.tolist() == list(expected)


def test_a_planted_philox_error_fails_the_known_answers() -> None:
    counter, key, expected = PHILOX_KAT[2]
    wrong_key = (key[0] ^ 1, key[1])
    assert [int(w) for w in philox4x32_10(np, counter, wrong_key)] != list(expected)


# ----------------------------------------------------------------- dropout


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("key", KEYS)
@pytest.mark.parametrize("shape", [(1, 1), (3, 5), (17, 13), (64, 33)])
def test_dropout_masks_are_bit_identical_on_every_backend(sim_cuda, dtype, key, shape) -> None:
    x = np.random.default_rng(0).normal(size=shape).astype(dtype)
    outputs = []
    for device in ("numpy", "cpu", sim_cuda):
        be = fusednn.backend(device)
        outputs.append(be.to_numpy(be.dropout(be.asarray(x), 0.3, *key)))
    assert outputs[0].dtype == np.dtype(dtype)
    for other in outputs[1:]:
        np.testing.assert_array_equal(other, outputs[0])


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_GPU, reason=GPU_SKIP_REASON)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("key", KEYS)
def test_dropout_masks_on_a_gpu_are_the_references_bit_for_bit(dtype, key) -> None:
    x = np.random.default_rng(0).normal(size=(1000, 37)).astype(dtype)
    ref, gpu = fusednn.backend("numpy"), fusednn.backend("cuda")
    expected = ref.dropout(ref.asarray(x), 0.3, *key)
    np.testing.assert_array_equal(gpu.to_numpy(gpu.dropout(gpu.asarray(x), 0.3, *key)), expected)


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_GPU, reason=GPU_SKIP_REASON)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_a_part_of_a_batch_on_a_gpu_gets_the_references_mask_of_its_rows(dtype) -> None:
    x = np.random.default_rng(0).normal(size=(1000, 37)).astype(dtype)
    ref, gpu = fusednn.backend("numpy"), fusednn.backend("cuda")
    expected = ref.dropout(ref.asarray(x), 0.3, *KEYS[3])[333:]
    part = gpu.dropout(gpu.asarray(x[333:]), 0.3, *KEYS[3], first=333 * 37)
    np.testing.assert_array_equal(gpu.to_numpy(part), expected)


@pytest.mark.parametrize("first", [0, 6])
@pytest.mark.parametrize("config", [(1, 1), (3, 32), (64, 256)])
def test_the_cuda_dropout_kernel_gives_the_reference_mask_under_any_launch(shim_library, config, first) -> None:
    n = 1001
    x = np.random.default_rng(1).normal(size=n)
    y = np.full(n, np.nan)
    threshold = dropout_threshold(0.25)
    function = shim_library.dropout_apply_double
    function.restype = None
    words = (5, 0, 7, 0, 3)  # seed_lo, seed_hi, step_lo, step_hi, layer
    function(
        ctypes.c_int(config[0]),
        ctypes.c_int(config[1]),
        ctypes.c_void_p(x.ctypes.data),
        ctypes.c_void_p(y.ctypes.data),
        ctypes.c_longlong(n),
        ctypes.c_longlong(threshold),
        ctypes.c_double(1 / 0.75),
        *(ctypes.c_longlong(w) for w in words),
        ctypes.c_longlong(first),
    )
    keep = dropout_bits(np, n, seed=5, step=7, layer=3, first=first) >= threshold
    np.testing.assert_array_equal(y, np.where(keep, x * (1 / 0.75), 0.0))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_a_part_of_a_batch_gets_the_batchs_mask_at_any_offset(sim_cuda, dtype) -> None:
    """``dropout(x[k:j], first=k * F)`` is rows ``k:j`` of ``dropout(x)``: a rank's rows draw the one process's mask.

    7 features put most row offsets inside a block of four words; the flat parts start at every word.
    """
    x = np.random.default_rng(2).normal(size=(9, 7)).astype(dtype)
    key = KEYS[3]
    for device in ("numpy", "cpu", sim_cuda):
        be = fusednn.backend(device)
        whole = be.to_numpy(be.dropout(be.asarray(x), 0.3, *key))
        for k, j in [(0, 9), (1, 9), (3, 5), (4, 8), (8, 9), (5, 5)]:
            part = be.dropout(be.asarray(x[k:j]), 0.3, *key, first=k * 7)
            np.testing.assert_array_equal(be.to_numpy(part), whole[k:j], err_msg=f"{device}: rows {k}:{j}")
        flat = x.reshape(-1)
        for k in range(1, 6):
            part = be.dropout(be.asarray(flat[k : k + 6]), 0.3, *key, first=k)
            np.testing.assert_array_equal(be.to_numpy(part), whole.reshape(-1)[k : k + 6], err_msg=f"{device}: {k}")


def test_the_last_elements_a_batch_can_count_get_the_last_counter_block(sim_cuda) -> None:
    """Elements up to ``2**34 - 1``: block ``2**32 - 1``, the top of the 32-bit counter word, on every backend."""
    x = np.ones(6)
    first = 2**34 - 6
    expected = np.where(dropout_bits(np, 6, 1, 2, 3, first) >= dropout_threshold(0.5), 2.0, 0.0)
    assert 0.0 < expected.mean() < 2.0  # both kept and dropped elements: a mask, not a constant
    for device in ("numpy", "cpu", sim_cuda):
        be = fusednn.backend(device)
        np.testing.assert_array_equal(be.to_numpy(be.dropout(be.asarray(x), 0.5, 1, 2, 3, first=first)), expected)


def test_dropout_drops_the_rate_and_scales_the_rest(device) -> None:
    be = fusednn.backend(device)
    x = be.asarray(np.ones((1000, 100)), dtype="float64")
    y = be.to_numpy(be.dropout(x, 0.3, seed=0, step=0, layer=0))
    assert set(np.unique(y)) <= {0.0, 1 / 0.7}
    assert abs((y == 0).mean() - 0.3) < 0.005  # 1e5 Bernoulli(0.3) draws: sd 0.0015
    assert abs(y.mean() - 1.0) < 0.01


def test_dropout_masks_change_with_seed_step_and_layer() -> None:
    be = fusednn.backend("numpy")
    x = be.asarray(np.ones((8, 64)))
    base = be.dropout(x, 0.5, 1, 2, 3)
    for key in [(2, 2, 3), (1, 3, 3), (1, 2, 4)]:
        assert not np.array_equal(be.dropout(x, 0.5, *key), base)
    np.testing.assert_array_equal(be.dropout(x, 0.5, 1, 2, 3), base)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"rate": 1.0}, ValueError, r"rate must lie in \[0, 1\)"),
        ({"rate": -0.1}, ValueError, r"rate must lie in \[0, 1\)"),
        ({"rate": float("nan")}, ValueError, r"rate must lie in \[0, 1\)"),
        ({"rate": "half"}, TypeError, "rate must be a number"),
        ({"seed": -1}, ValueError, r"seed must lie in \[0, 2\*\*64\)"),
        ({"step": 2**64}, ValueError, r"step must lie in \[0, 2\*\*64\)"),
        ({"layer": 2**32}, ValueError, r"layer must lie in \[0, 2\*\*32\)"),
        ({"layer": 1.0}, TypeError, "layer must be an integer"),
        ({"first": -1}, ValueError, r"first must lie in \[0, 2\*\*34\)"),
        ({"first": 2**34 - 3}, ValueError, r"at most 2\*\*34 elements .* first \+ x.size = 17179869181 \+ 4"),
        ({"first": 4.0}, TypeError, "first must be an integer, got float"),
        ({"first": True}, TypeError, "first must be an integer, got bool"),
    ],
)
def test_dropout_refuses_bad_arguments(kwargs, error, match) -> None:
    be = fusednn.backend("numpy")
    args = {"rate": 0.5, "seed": 0, "step": 0, "layer": 0, **kwargs}
    with pytest.raises(error, match=match):
        be.dropout(be.asarray(np.ones((2, 2))), **args)


@pytest.mark.parametrize(
    ("args", "error", "match"),
    [
        ((1.0,), ValueError, r"rate must lie in \[0, 1\)"),
        ((0.5, None), TypeError, "seed must be a non-negative integer"),
        ((0.5, 2**64), ValueError, "below 2\\*\\*64"),
    ],
)
def test_the_dropout_layer_refuses_bad_arguments(args, error, match) -> None:
    with pytest.raises(error, match=match):
        nn.Dropout(*args)


def test_dropout_layer_backward_applies_its_forward_mask_and_eval_is_identity(device) -> None:
    model = nn.Sequential([nn.Dense(6, 40), nn.Dropout(0.4, seed=3)], device=device, dtype="float64", seed=0)
    be = model.backend
    x = np.random.default_rng(0).normal(size=(10, 6))
    dense, dropout = model.layers
    out = be.to_numpy(model.forward(x))
    pre = be.to_numpy(dense._cache[2])
    mask = np.where(out == 0, 0.0, 1 / 0.6)
    np.testing.assert_allclose(out, pre * mask, rtol=1e-15)
    dy = np.random.default_rng(1).normal(size=out.shape)
    np.testing.assert_array_equal(be.to_numpy(dropout.backward(be.asarray(dy))), dy * mask)
    # torch's dropout, given our mask, has the same gradient
    t = torch.tensor(pre, requires_grad=True)
    (t * torch.tensor(mask)).backward(torch.tensor(dy))
    np.testing.assert_allclose(be.to_numpy(dropout.backward(be.asarray(dy))), t.grad.numpy(), rtol=1e-15)
    assert dropout.step == 1
    model.eval()
    np.testing.assert_array_equal(be.to_numpy(model.forward(x)), pre)
    assert dropout.step == 1  # evaluation draws no mask
    np.testing.assert_array_equal(model.predict(x), model.predict(x))


def test_a_batchs_row_parts_run_from_their_first_row_give_the_whole_batchs_outputs_and_gradients(any_device) -> None:
    """Two ranks' parts of a batch, each run with the index of its first row, draw the whole batch's masks:
    their outputs are its rows and their gradients add up to its gradients (forward and backward masks)."""
    rng = np.random.default_rng(4)
    x, dout = rng.normal(size=(11, 6)), rng.normal(size=(11, 3))
    model = nn.Sequential(
        [nn.Dense(6, 10, activation="relu"), nn.Dropout(0.5, seed=3), nn.Dense(10, 3)],
        device=any_device,
        dtype="float64",
        seed=0,
    )
    be, dropout = model.backend, model.layers[1]
    dropout.step = 5
    whole = be.to_numpy(model._run(model._input(x), True, True))
    model.backward(dout, need_input_grad=False)
    expected = model.get_gradients()
    outputs, gradients = [], []
    for lo, hi in [(0, 5), (5, 11)]:  # the second part starts at element 50: inside a block of four words
        dropout.step = 5
        outputs.append(be.to_numpy(model._run(model._input(x[lo:hi]), True, True, first_row=lo)))
        model.backward(dout[lo:hi], need_input_grad=False)
        gradients.append(model.get_gradients())
    np.testing.assert_allclose(np.concatenate(outputs), whole, rtol=1e-13, atol=1e-15)
    for first, second, full in zip(*gradients, expected, strict=True):
        np.testing.assert_allclose(first + second, full, rtol=1e-12, atol=1e-14)
    dropout.step = 5
    unplaced = be.to_numpy(model._run(model._input(x[5:]), True, True))  # first_row=0: a batch of its own
    assert not np.allclose(unplaced, whole[5:])


def test_dropout_training_runs_agree_across_backends(any_device) -> None:
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(64, 5)), rng.integers(0, 3, 64)
    weights = []
    for device in ("numpy", any_device):
        model = nn.Sequential(
            [nn.Dense(5, 16, activation="relu"), nn.Dropout(0.5, seed=9), nn.Dense(16, 3)],
            device=device,
            dtype="float64",
            seed=1,
        )
        history = nn.fit(model, x, y, optimizer="sgd", lr=0.1, epochs=2, batch_size=16, progress=False)
        assert history.params["epoch_path"] == "per-step"
        weights.append(model.get_weights())
    for other in weights[1:]:
        for a, b in zip(other, weights[0], strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-11, atol=1e-13)


# --------------------------------------------------------------- batch norm


def _torch_bn(features: int, momentum: float, eps: float, gamma: np.ndarray, beta: np.ndarray):
    bn = torch.nn.BatchNorm1d(features, momentum=momentum, eps=eps, dtype=torch.float64)
    with torch.no_grad():
        bn.weight.copy_(torch.tensor(gamma))
        bn.bias.copy_(torch.tensor(beta))
    return bn


@pytest.mark.parametrize("rows", [2, 7, 200])
def test_batchnorm_ops_match_torch_batchnorm1d_in_float64(any_device, rows) -> None:
    be = fusednn.backend(any_device)
    rng = np.random.default_rng(rows)
    features, momentum, eps = 5, 0.2, 1e-3
    gamma, beta = rng.normal(size=features), rng.normal(size=features)
    bn = _torch_bn(features, momentum, eps, gamma, beta)
    running_mean, running_var = be.zeros(features, "float64"), be.asarray(np.ones(features))
    g, b = be.asarray(gamma), be.asarray(beta)
    for _ in range(3):
        x = rng.normal(loc=3.0, scale=2.0, size=(rows, features))
        dy = rng.normal(size=(rows, features))
        y, mean, inv_std = be.batchnorm_forward(be.asarray(x), g, b, running_mean, running_var, momentum, eps, True)
        dgamma, dbeta = be.zeros(features, "float64"), be.zeros(features, "float64")
        dx = be.batchnorm_backward(be.asarray(x), be.asarray(dy), g, mean, inv_std, dgamma, dbeta, True)
        tx = torch.tensor(x, requires_grad=True)
        bn.zero_grad()
        ty = bn.train()(tx)
        ty.backward(torch.tensor(dy))
        tol = {"rtol": 1e-11, "atol": 1e-12}
        np.testing.assert_allclose(be.to_numpy(y), ty.detach().numpy(), **tol)
        np.testing.assert_allclose(be.to_numpy(dx), tx.grad.numpy(), **tol)
        np.testing.assert_allclose(be.to_numpy(dgamma), bn.weight.grad.numpy(), **tol)
        np.testing.assert_allclose(be.to_numpy(dbeta), bn.bias.grad.numpy(), **tol)
        np.testing.assert_allclose(be.to_numpy(running_mean), bn.running_mean.numpy(), **tol)
        np.testing.assert_allclose(be.to_numpy(running_var), bn.running_var.numpy(), **tol)
    x = rng.normal(size=(rows, features))
    y, mean, inv_std = be.batchnorm_forward(be.asarray(x), g, b, running_mean, running_var, momentum, eps, False)
    tx = torch.tensor(x, requires_grad=True)
    bn.zero_grad()
    ty = bn.eval()(tx)
    dy = rng.normal(size=(rows, features))
    ty.backward(torch.tensor(dy))
    dgamma, dbeta = be.zeros(features, "float64"), be.zeros(features, "float64")
    dx = be.batchnorm_backward(be.asarray(x), be.asarray(dy), g, mean, inv_std, dgamma, dbeta, False)
    np.testing.assert_allclose(be.to_numpy(y), ty.detach().numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(be.to_numpy(dx), tx.grad.numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(be.to_numpy(dgamma), bn.weight.grad.numpy(), rtol=1e-11, atol=1e-12)
    np.testing.assert_allclose(be.to_numpy(running_mean), bn.running_mean.numpy(), rtol=1e-12)  # eval kept them


def test_fused_batchnorm_matches_the_reference_in_float32(any_device) -> None:
    be, ref = fusednn.backend(any_device), fusednn.backend("numpy")
    rng = np.random.default_rng(5)
    x = rng.normal(loc=100.0, scale=0.5, size=(300, 9)).astype(np.float32)  # a large mean: cancellation
    dy = rng.normal(size=x.shape).astype(np.float32)
    gamma, beta = rng.normal(size=9).astype(np.float32), rng.normal(size=9).astype(np.float32)
    results = []
    for backend in (ref, be):
        rm, rv = backend.zeros(9, "float32"), backend.asarray(np.ones(9, np.float32))
        y, mean, inv_std = backend.batchnorm_forward(
            backend.asarray(x), backend.asarray(gamma), backend.asarray(beta), rm, rv, 0.1, 1e-5, True
        )
        dg, db = backend.zeros(9, "float32"), backend.zeros(9, "float32")
        dx = backend.batchnorm_backward(
            backend.asarray(x), backend.asarray(dy), backend.asarray(gamma), mean, inv_std, dg, db, True
        )
        results.append([backend.to_numpy(a) for a in (y, dx, dg, db, rm, rv)])
    for got, want in zip(results[1], results[0], strict=True):
        np.testing.assert_allclose(got, want, rtol=2e-4, atol=2e-4)


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda be, x, v: be.batchnorm_forward(x[:1], v, v, v, v, 0.1, 1e-5, True), "more than 1 row"),
        (lambda be, x, v: be.batchnorm_forward(x, v[:2], v, v, v, 0.1, 1e-5, True), "gamma has shape"),
        (lambda be, x, v: be.batchnorm_forward(x, v, v, v, v, 1.5, 1e-5, True), r"momentum must lie in \[0, 1\]"),
        (lambda be, x, v: be.batchnorm_forward(x, v, v, v, v, 0.1, 0.0, True), "eps must be > 0"),
        (lambda be, x, v: be.batchnorm_backward(x, x[:2], v, v, v, v, v, True), "dy has shape"),
    ],
)
def test_batchnorm_ops_refuse_bad_operands(call, match) -> None:
    be = fusednn.backend("numpy")
    with pytest.raises(ValueError, match=match):
        call(be, be.asarray(np.ones((4, 3))), be.asarray(np.ones(3)))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"features": 0}, "positive integer"), ({"momentum": -0.1}, "momentum"), ({"eps": 0.0}, "eps")],
)
def test_the_batchnorm_layer_refuses_bad_arguments(kwargs, match) -> None:
    with pytest.raises(ValueError, match=match):
        nn.BatchNorm(**{"features": 3, **kwargs})


def _torch_twin(model: nn.Sequential) -> torch.nn.Sequential:
    """The torch float64 model with ``model``'s weights: Linear for Dense (with ReLU), BatchNorm1d for BatchNorm."""
    modules: list[torch.nn.Module] = []
    for layer in model.layers:
        if isinstance(layer, nn.Dense):
            linear = torch.nn.Linear(layer.in_features, layer.out_features, dtype=torch.float64)
            with torch.no_grad():
                linear.weight.copy_(torch.tensor(model.backend.to_numpy(layer.W).T))
                linear.bias.copy_(torch.tensor(model.backend.to_numpy(layer.b)))
            modules.append(linear)
            if layer.activation == "relu":
                modules.append(torch.nn.ReLU())
        else:
            modules.append(
                torch.nn.BatchNorm1d(layer.features, momentum=layer.momentum, eps=layer.eps, dtype=torch.float64)
            )
    return torch.nn.Sequential(*modules)


def test_a_batchnorm_model_trains_as_torch_through_fit(any_device) -> None:
    rng = np.random.default_rng(3)
    x, y = rng.normal(loc=2.0, size=(48, 4)), rng.integers(0, 3, 48)
    model = nn.Sequential(
        [nn.Dense(4, 8, activation="relu"), nn.BatchNorm(8, momentum=0.3), nn.Dense(8, 3)],
        device=any_device,
        dtype="float64",
        seed=2,
    )
    twin = _torch_twin(model)
    history = nn.fit(model, x, y, optimizer="sgd", lr=0.1, epochs=3, batch_size=12, shuffle=False, progress=False)
    assert history.params["epoch_path"] == "per-step"
    opt = torch.optim.SGD(twin.parameters(), lr=0.1)
    twin.train()
    for _ in range(3):
        for start in range(0, 48, 12):
            opt.zero_grad()
            out = twin(torch.tensor(x[start : start + 12]))
            torch.nn.functional.cross_entropy(out, torch.tensor(y[start : start + 12])).backward()
            opt.step()
    bn = model.layers[1]
    tbn = twin[2]
    tol = {"rtol": 1e-10, "atol": 1e-12}
    np.testing.assert_allclose(model.get_weights()[0], twin[0].weight.detach().numpy().T, **tol)
    np.testing.assert_allclose(model.backend.to_numpy(bn.gamma), tbn.weight.detach().numpy(), **tol)
    np.testing.assert_allclose(model.backend.to_numpy(bn.running_mean), tbn.running_mean.numpy(), **tol)
    np.testing.assert_allclose(model.backend.to_numpy(bn.running_var), tbn.running_var.numpy(), **tol)
    twin.eval()
    with torch.no_grad():
        expected = twin(torch.tensor(x)).numpy()
    np.testing.assert_allclose(model.predict(x), expected, **tol)  # evaluation mode: running statistics
    assert model.training  # predict and fit left the mode as it was


# --------------------------------------------------------- protocol & files


def _regularised_model(device: str = "cpu") -> nn.Sequential:
    return nn.Sequential(
        [nn.Dense(4, 8, activation="relu"), nn.BatchNorm(8), nn.Dropout(0.25, seed=4), nn.Dense(8, 2)],
        device=device,
        dtype="float64",
        seed=0,
    )


def test_new_layers_have_no_compiled_epoch_and_fit_says_per_step() -> None:
    model = _regularised_model()
    loss = nn.get_loss("categorical_crossentropy", device="cpu")
    assert epoch_plan(model, loss, nn.Adam(model.parameters()), 8, 1, True) is None
    x, y = np.random.default_rng(0).normal(size=(32, 4)), np.arange(32) % 2
    history = nn.fit(model, x, y, epochs=2, batch_size=8, progress=False)
    assert history.params["epoch_path"] == "per-step"
    assert history.params["compiled_epochs"] == 0
    with pytest.raises(ValueError, match="no compiled form"):
        nn.fit(model, x, y, epochs=1, progress=False, epoch_path="compiled")


def test_buffers_and_dropout_steps_travel_in_checkpoints_and_resume_exactly(tmp_path) -> None:
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(40, 4)), rng.integers(0, 2, 40)
    straight = _regularised_model()
    nn.fit(straight, x, y, epochs=4, batch_size=8, progress=False)
    first = _regularised_model()
    opt = nn.Adam(first.parameters(), lr=1e-3)
    nn.fit(first, x, y, optimizer=opt, epochs=2, batch_size=8, progress=False)
    nn.save(tmp_path / "run.npz", first, opt)
    restored = nn.load(tmp_path / "run.npz", device="cpu")
    assert [type(layer) for layer in restored.model.layers] == [nn.Dense, nn.BatchNorm, nn.Dropout, nn.Dense]
    assert restored.model.layers[2].step == first.layers[2].step == 10
    np.testing.assert_array_equal(
        restored.model.backend.to_numpy(restored.model.layers[1].running_var),
        first.backend.to_numpy(first.layers[1].running_var),
    )
    nn.fit(restored.model, x, y, optimizer=restored.optimizer, epochs=2, batch_size=8, progress=False)
    for a, b in zip(restored.model.state_dict().values(), straight.state_dict().values(), strict=True):
        np.testing.assert_array_equal(a, b)


def test_state_dict_names_parameters_then_buffers() -> None:
    model = _regularised_model("numpy")
    assert list(model.state_dict()) == [
        "0.W", "0.b", "1.gamma", "1.beta", "3.W", "3.b", "1.running_mean", "1.running_var"
    ]  # fmt: skip
    state = model.state_dict()
    state["1.running_mean"] = np.full(8, 2.0)
    model.load_state_dict(state)
    np.testing.assert_array_equal(model.layers[1].running_mean, np.full(8, 2.0))
    state["1.running_mean"] = np.ones(3)
    with pytest.raises(ValueError, match="1.running_mean has shape"):
        model.load_state_dict(state)


def test_buffers_move_with_the_model(sim_cuda) -> None:
    model = _regularised_model("numpy")
    model.layers[1].running_mean[...] = 3.0
    model.to(sim_cuda)
    assert model.layers[1].running_mean is model._buffers[1][0]
    np.testing.assert_array_equal(model.backend.to_numpy(model.layers[1].running_mean), np.full(8, 3.0))


# Not named Scale: the nn.Layer docstring's example registers that tag, and the registry keeps the latest class.
class ColumnScale(nn.Layer):
    """A user's layer: ``y = x * s`` with a learned per-feature ``s``, from public operations only."""

    parameter_names = ("s",)

    def __init__(self, features: int) -> None:
        super().__init__()
        self.in_features = self.out_features = features

    @property
    def parameter_shapes(self):
        return [(self.out_features,)]

    def initial_values(self, rng):
        return [np.full(self.out_features, 2.0)]

    def forward(self, x, training=True):
        self._x = x
        return x * self.s

    def backward(self, dy, need_input_grad=True):
        self.ds[...] = (dy * self._x).sum(axis=0)
        return dy * self.s if need_input_grad else None

    def get_config(self):
        return {"features": self.out_features}


def test_a_users_layer_trains_saves_and_loads(tmp_path) -> None:
    model = nn.Sequential([nn.Dense(3, 4), ColumnScale(4), nn.Dense(4, 2)], device="numpy", dtype="float64", seed=0)
    x, y = np.random.default_rng(0).normal(size=(16, 3)), np.arange(16) % 2
    before = model.get_weights()[2].copy()
    history = nn.fit(model, x, y, epochs=1, batch_size=4, progress=False)
    assert history.params["epoch_path"] == "per-step"
    assert not np.array_equal(model.get_weights()[2], before)  # its parameter was trained
    nn.save(tmp_path / "scale.npz", model)
    restored = nn.load(tmp_path / "scale.npz", device="numpy").model
    assert isinstance(restored.layers[1], ColumnScale)
    np.testing.assert_array_equal(restored.predict(x), model.predict(x))


def test_the_registry_refuses_unknown_types_and_fusednns_own_tags() -> None:
    with pytest.raises(ValueError, match="Unknown layer type 'Conv9'; registered: .*BatchNorm.*Dense.*Dropout"):
        nn.layer_from_config({"type": "Conv9", "config": {}})
    with pytest.raises(TypeError, match="Layer tag 'Dense' belongs to fusednn.nn.layers.Dense"):

        class Dense(nn.Layer):  # noqa: F811 - the clash is the point
            pass

    assert nn.LAYERS["Dense"] is nn.Dense

    class Tagged(nn.Layer, tag="my.tagged"):
        pass

    assert nn.LAYERS["my.tagged"] is Tagged and Tagged.tag == "my.tagged"


def test_configs_without_a_type_are_dense_and_configs_round_trip() -> None:
    layer = nn.layer_from_config({"in_features": 2, "out_features": 3, "activation": "tanh"})
    assert isinstance(layer, nn.Dense) and layer.activation == "tanh"
    model = _regularised_model("numpy")
    config = model.get_config()
    assert config["layers"][1] == {"type": "BatchNorm", "config": {"features": 8, "momentum": 0.1, "eps": 1e-5}}
    rebuilt = nn.Sequential.from_config(config, device="numpy")
    assert [repr(layer) for layer in rebuilt.layers] == [repr(layer) for layer in model.layers]


def test_sequential_infers_widths_through_shape_keeping_layers() -> None:
    model = nn.Sequential([nn.Dropout(0.1), nn.Dense(3, 5), nn.Dropout(0.2)], device="numpy")
    assert (model.in_features, model.out_features) == (3, 5)
    with pytest.raises(ValueError, match="Layer 2 expects 4 input features but layer 1 outputs 5"):
        nn.Sequential([nn.Dense(3, 5), nn.Dropout(0.1), nn.BatchNorm(4)], device="numpy")
    with pytest.raises(ValueError, match="declares its input width"):
        nn.Sequential([nn.Dropout(0.1)], device="numpy")


def test_train_and_eval_switch_the_mode_forward_uses() -> None:
    model = _regularised_model("numpy")
    assert model.eval() is model and not model.training
    x = np.ones((4, 4))
    np.testing.assert_array_equal(model.backend.to_numpy(model.forward(x)), model.predict(x))
    assert model.train() is model and model.training
    with pytest.raises(TypeError, match="True or False"):
        model.train("yes")


def test_early_stopping_restores_the_running_statistics_of_the_best_epoch() -> None:
    # mode="max" on the training loss makes the first epoch the best one (the loss falls after it).
    rng = np.random.default_rng(5)
    x, y = rng.normal(size=(64, 3)) * 3 + 1, rng.integers(0, 2, 64)

    def model() -> nn.Sequential:
        return nn.Sequential([nn.Dense(3, 4), nn.BatchNorm(4), nn.Dense(4, 2)], device="cpu", dtype="float64", seed=0)

    one_epoch = model()
    nn.fit(one_epoch, x, y, lr=0.05, epochs=1, batch_size=16, progress=False)
    stopped = model()
    stopper = nn.EarlyStopping(monitor="loss", mode="max", patience=5)
    history = nn.fit(stopped, x, y, lr=0.05, epochs=3, batch_size=16, early_stopping=stopper, progress=False)
    assert stopper.best_epoch == 0 and history.history["loss"][2] < history.history["loss"][0]
    for name, value in one_epoch.state_dict().items():
        np.testing.assert_array_equal(stopped.state_dict()[name], value, err_msg=name)
