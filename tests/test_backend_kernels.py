"""Every backend operation against the NumPy reference, and against PyTorch where PyTorch defines it.

Optimised backends run each op in float32 and float64 on odd shapes and on
non-contiguous (transposed) inputs; the CPU backend runs both its serial and
its parallel drivers (the threshold is lowered to force threads).
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import TOLERANCES

import fusednn
from fusednn import nn
from fusednn.backends.base import Backend

REF = fusednn.backend("numpy")
ACTIVATIONS = fusednn.ACTIVATIONS
SHAPES = [(1, 1), (1, 9), (9, 1), (17, 33)]
DENSE_SHAPES = [(1, 1, 1), (1, 9, 4), (9, 1, 1), (17, 33, 5), (5, 3, 17)]


@pytest.fixture(params=[False, True], ids=["serial", "parallel"])
def fast_backend(fast_device: str, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Backend:
    """An optimised backend; ``parallel`` lowers the CPU backend's threshold so every kernel uses threads."""
    be = fusednn.backend(fast_device)
    if request.param:
        if not hasattr(be, "parallel_min_elements"):
            pytest.skip("only the cpu backend has serial and parallel drivers")
        monkeypatch.setattr(be, "parallel_min_elements", 0)
    return be


def put(be: Backend, a: np.ndarray, dtype: str, transposed: bool = False) -> object:
    """``a`` on ``be`` in ``dtype``; ``transposed`` gives a non-contiguous view with the same values."""
    if transposed:
        return be.asarray(np.ascontiguousarray(a.T), dtype=dtype).T
    return be.asarray(a, dtype=dtype)


def assert_close(be: Backend, actual: object, expected: object, dtype: str, **overrides: float) -> None:
    tolerance = {**TOLERANCES[dtype], **overrides}
    np.testing.assert_allclose(be.to_numpy(actual), REF.to_numpy(expected), **tolerance)


def _values(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.standard_normal(shape) * 3


# ------------------------------------------------------------------ activations


@pytest.mark.parametrize("transposed", [False, True], ids=["contiguous", "transposed"])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("name", ACTIVATIONS)
def test_activation_forward_backward_match_reference(
    fast_backend: Backend, dtype: str, name: str, shape: tuple[int, int], transposed: bool
) -> None:
    z_host, dh_host = _values(shape), _values(shape, seed=1)
    z, dh = put(fast_backend, z_host, dtype, transposed), put(fast_backend, dh_host, dtype, transposed)
    z_ref, dh_ref = put(REF, z_host, dtype), put(REF, dh_host, dtype)

    h, h_ref = fast_backend.activation(name, z), REF.activation(name, z_ref)
    assert h.shape == shape and h.dtype == np.dtype(dtype)
    assert_close(fast_backend, h, h_ref, dtype)
    dz = fast_backend.activation_backward(name, z, h, dh)
    assert dz.dtype == np.dtype(dtype)
    assert_close(fast_backend, dz, REF.activation_backward(name, z_ref, h_ref, dh_ref), dtype)


@pytest.mark.parametrize("out_layout", ["contiguous", "strided"])
def test_activation_writes_into_out(fast_backend: Backend, dtype: str, out_layout: str) -> None:
    z_host = _values((6, 5))
    z = put(fast_backend, z_host, dtype)
    out = fast_backend.zeros((6, 5), dtype) if out_layout == "contiguous" else fast_backend.zeros((5, 6), dtype).T
    assert fast_backend.activation("gelu", z, out=out) is out
    assert_close(fast_backend, out, REF.activation("gelu", put(REF, z_host, dtype)), dtype)
    dz = fast_backend.zeros((5, 6), dtype).T
    assert fast_backend.activation_backward("gelu", z, out, z, out=dz) is dz
    expected = REF.activation_backward(
        "gelu", *(put(REF, a, dtype) for a in (z_host, be_host(fast_backend, out), z_host))
    )
    assert_close(fast_backend, dz, expected, dtype)


def be_host(be: Backend, a: object) -> np.ndarray:
    return np.array(be.to_numpy(a))


@pytest.mark.parametrize("name", ACTIVATIONS)
def test_activation_matches_torch_values_and_autograd(device: str, name: str) -> None:
    be = fusednn.backend(device)
    z_host, dh_host = _values((7, 11)), _values((7, 11), seed=1)
    torch_fn = {
        "identity": lambda t: t * 1,
        "sigmoid": torch.sigmoid,
        "tanh": torch.tanh,
        "relu": torch.relu,
        "leaky_relu": lambda t: torch.nn.functional.leaky_relu(t, 0.01),
        "elu": torch.nn.functional.elu,
        "selu": torch.nn.functional.selu,
        "gelu": lambda t: torch.nn.functional.gelu(t, approximate="none"),
        "silu": torch.nn.functional.silu,
        "softplus": lambda t: torch.nn.functional.softplus(t, beta=1.0, threshold=20.0),
    }[name]
    z_torch = torch.tensor(z_host, requires_grad=True)
    h_torch = torch_fn(z_torch)
    h_torch.backward(torch.tensor(dh_host))

    z, dh = put(be, z_host, "float64"), put(be, dh_host, "float64")
    h = be.activation(name, z)
    np.testing.assert_allclose(be.to_numpy(h), h_torch.detach().numpy(), rtol=1e-12, atol=1e-14)
    dz = be.activation_backward(name, z, h, dh)
    np.testing.assert_allclose(be.to_numpy(dz), z_torch.grad.numpy(), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("op", ["softmax", "log_softmax"])
def test_softmax_matches_reference_and_torch_for_large_logits(device: str, dtype: str, op: str) -> None:
    be = fusednn.backend(device)
    logits = _values((9, 13)) * 300  # exp would overflow without the max shift
    result = getattr(be, op)(put(be, logits, dtype))
    assert_close(be, result, getattr(REF, op)(put(REF, logits, dtype)), dtype)
    expected = getattr(torch, op)(torch.tensor(logits, dtype=getattr(torch, dtype)), dim=-1).numpy()
    np.testing.assert_allclose(be.to_numpy(result), expected, rtol=1e-5 if dtype == "float32" else 1e-12, atol=1e-6)


# --------------------------------------------------------------------- matmul


@pytest.mark.parametrize(("transpose_a", "transpose_b"), [(False, False), (True, False), (False, True), (True, True)])
def test_matmul_matches_reference(fast_device: str, dtype: str, transpose_a: bool, transpose_b: bool) -> None:
    be = fusednn.backend(fast_device)
    a_host = _values((17, 9) if transpose_a else (9, 17))
    b_host = _values((5, 17) if transpose_b else (17, 5), seed=1)
    args = {"transpose_a": transpose_a, "transpose_b": transpose_b}
    expected = REF.matmul(put(REF, a_host, dtype), put(REF, b_host, dtype), **args)
    assert_close(
        be, be.matmul(put(be, a_host, dtype), put(be, b_host, dtype, transposed=True), **args), expected, dtype
    )
    out = be.zeros((9, 5), dtype)
    assert be.matmul(put(be, a_host, dtype), put(be, b_host, dtype), out=out, **args) is out
    assert_close(be, out, expected, dtype)


# ---------------------------------------------------------------- dense layer


@pytest.mark.parametrize("layout", ["contiguous", "transposed"])
@pytest.mark.parametrize("shape", DENSE_SHAPES, ids=str)
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_dense_forward_backward_match_reference(
    fast_backend: Backend, dtype: str, activation: str, shape: tuple[int, int, int], layout: str
) -> None:
    n, n_in, n_out = shape
    transposed = layout == "transposed"
    x_h, w_h, b_h, dy_h = _values((n, n_in)), _values((n_in, n_out), 1) / 3, _values(n_out, 2), _values((n, n_out), 3)
    be = fast_backend

    y_ref, z_ref = REF.dense_forward(put(REF, x_h, dtype), put(REF, w_h, dtype), put(REF, b_h, dtype), activation)
    x, W, b = put(be, x_h, dtype, transposed), put(be, w_h, dtype, transposed), put(be, b_h, dtype)
    y, z = be.dense_forward(x, W, b, activation)
    assert y.shape == z.shape == (n, n_out) and y.dtype == z.dtype == np.dtype(dtype)
    assert (y is z) == (activation == "identity")
    # GEMM results differ by summation order between BLAS kernels (and cuBLAS): in float32 an element with
    # cancellation (|z| ~ 1e-2 from terms ~ 10) keeps only an absolute accuracy of about K * eps * 10.
    gemm = {"atol": 2e-5 * max(n_in, n)} if dtype == "float32" else {}
    assert_close(be, z, z_ref, dtype, **gemm)
    assert_close(be, y, y_ref, dtype, **gemm)

    dW_ref, db_ref = REF.zeros((n_in, n_out), dtype), REF.zeros(n_out, dtype)
    dx_ref = REF.dense_backward(
        put(REF, x_h, dtype), put(REF, w_h, dtype), z_ref, y_ref, put(REF, dy_h, dtype), activation, dW_ref, db_ref
    )
    if transposed:  # gradients into strided views, activations from Fortran-ordered copies
        dW, db = be.zeros((n_out, n_in), dtype).T, be.zeros(2 * n_out, dtype)[::2]
        z, y = (put(be, be_host(be, a), dtype, transposed=True) for a in (z, y))
    else:  # gradients into views of one flat buffer, as a model lays them out
        flat = be.zeros(n_in * n_out + n_out + 3, dtype)
        dW, db = flat[: n_in * n_out].reshape(n_in, n_out), flat[n_in * n_out + 3 :]
    dx = be.dense_backward(x, W, z, y, put(be, dy_h, dtype, transposed), activation, dW, db)
    assert_close(be, dx, dx_ref, dtype, **gemm)
    assert_close(be, dW, dW_ref, dtype, **gemm)
    assert_close(be, db, db_ref, dtype, **gemm)
    if not transposed:
        assert_close(be, flat[: n_in * n_out], dW_ref.reshape(-1), dtype, **gemm)
        assert_close(be, flat[n_in * n_out + 3 :], db_ref, dtype, **gemm)
    assert be.dense_backward(x, W, z, y, put(be, dy_h, dtype), activation, dW, db, need_dx=False) is None


@pytest.mark.parametrize("activation", ["identity", "sigmoid", "relu"])
def test_trusted_dense_paths_equal_the_checked_ones(fast_backend: Backend, dtype: str, activation: str) -> None:
    """nn's layers call ``trusted("dense_*")`` on operands they keep valid; the results are the public methods' bits."""
    be, (n, n_in, n_out) = fast_backend, (9, 5, 4)
    x, W, b = (
        put(be, _values((n, n_in)), dtype),
        put(be, _values((n_in, n_out), 1), dtype),
        put(be, _values(n_out, 2), dtype),
    )
    dy = put(be, _values((n, n_out), 3), dtype)
    y, z = be.dense_forward(x, W, b, activation)
    y_fast, z_fast = be.trusted("dense_forward")(x, W, b, activation)
    grads = [(be.zeros((n_in, n_out), dtype), be.zeros(n_out, dtype)) for _ in range(2)]
    dx = be.dense_backward(x, W, z, y, dy, activation, *grads[0])
    dx_fast = be.trusted("dense_backward")(x, W, z_fast, y_fast, dy, activation, *grads[1], need_dx=True)
    for expected, actual in [(y, y_fast), (z, z_fast), (dx, dx_fast), *zip(grads[0], grads[1], strict=True)]:
        np.testing.assert_array_equal(be.to_numpy(actual), be.to_numpy(expected))


# --------------------------------------------------------------------- losses


@pytest.mark.parametrize("scale", [1.0, 1e3])
@pytest.mark.parametrize("shape", [(1, 1), (1, 7), (9, 1), (17, 33)], ids=str)
def test_softmax_cross_entropy_with_labels_matches_reference_and_torch(
    fast_backend: Backend, dtype: str, shape: tuple[int, int], scale: float
) -> None:
    n, n_classes = shape
    logits_h = _values(shape) * scale
    labels_h = np.random.default_rng(4).integers(0, n_classes, n)
    loss_ref, grad_ref = REF.softmax_cross_entropy(put(REF, logits_h, dtype), REF.asindex(labels_h))
    loss, grad = fast_backend.softmax_cross_entropy(
        put(fast_backend, logits_h, dtype, True), fast_backend.asindex(labels_h)
    )
    assert loss.shape == () and loss.dtype == grad.dtype == np.dtype(dtype)
    assert_close(fast_backend, loss, loss_ref, dtype)
    assert_close(fast_backend, grad, grad_ref, dtype)

    logits_t = torch.tensor(logits_h, requires_grad=True)
    torch_loss = torch.nn.functional.cross_entropy(logits_t, torch.tensor(labels_h))
    torch_loss.backward()
    rtol = 1e-5 if dtype == "float32" else 1e-12
    np.testing.assert_allclose(fast_backend.to_float(loss), torch_loss.item(), rtol=rtol, atol=1e-6)
    np.testing.assert_allclose(fast_backend.to_numpy(grad), logits_t.grad.numpy(), rtol=rtol, atol=1e-6)


@pytest.mark.parametrize("targets", ["labels", "probabilities"])
def test_trusted_softmax_cross_entropy_equals_the_checked_one(fast_backend: Backend, dtype: str, targets: str) -> None:
    """nn's cross-entropy loss calls ``trusted("softmax_cross_entropy")`` on labels it has checked: same bits."""
    be, rng = fast_backend, np.random.default_rng(6)
    logits = put(be, _values((9, 4)), dtype, transposed=True)
    target = be.asindex(rng.integers(0, 4, 9)) if targets == "labels" else put(be, rng.random((9, 4)), dtype)
    for expected, actual in zip(
        be.softmax_cross_entropy(logits, target), be.trusted("softmax_cross_entropy")(logits, target), strict=True
    ):
        np.testing.assert_array_equal(be.to_numpy(actual), be.to_numpy(expected))


@pytest.mark.parametrize("shape", [(1, 1), (1, 7), (9, 1), (17, 33)], ids=str)
def test_softmax_cross_entropy_with_probabilities_matches_reference_and_torch(
    fast_backend: Backend, dtype: str, shape: tuple[int, int]
) -> None:
    logits_h = _values(shape) * 10
    target_h = np.random.default_rng(5).random(shape)
    target_h /= target_h.sum(axis=1, keepdims=True)
    target_h[0] *= 0.5  # rows need not sum to 1 (label smoothing, masking)
    loss_ref, grad_ref = REF.softmax_cross_entropy(put(REF, logits_h, dtype), put(REF, target_h, dtype))
    loss, grad = fast_backend.softmax_cross_entropy(
        put(fast_backend, logits_h, dtype), put(fast_backend, target_h, dtype)
    )
    assert_close(fast_backend, loss, loss_ref, dtype)
    assert_close(fast_backend, grad, grad_ref, dtype)

    logits_t = torch.tensor(logits_h, requires_grad=True)
    torch_loss = torch.nn.functional.cross_entropy(logits_t, torch.tensor(target_h))
    torch_loss.backward()
    rtol = 1e-5 if dtype == "float32" else 1e-12
    np.testing.assert_allclose(fast_backend.to_float(loss), torch_loss.item(), rtol=rtol, atol=1e-6)
    np.testing.assert_allclose(fast_backend.to_numpy(grad), logits_t.grad.numpy(), rtol=rtol, atol=1e-6)


@pytest.mark.parametrize("loss", ["binary_cross_entropy_with_logits", "mean_squared_error", "mean_absolute_error"])
def test_elementwise_losses_match_reference(fast_device: str, dtype: str, loss: str) -> None:
    be = fusednn.backend(fast_device)
    pred_h, target_h = _values((9, 4)) * 20, np.random.default_rng(6).random((9, 4))
    value, grad = getattr(be, loss)(put(be, pred_h, dtype), put(be, target_h, dtype))
    value_ref, grad_ref = getattr(REF, loss)(put(REF, pred_h, dtype), put(REF, target_h, dtype))
    assert_close(be, value, value_ref, dtype)
    assert_close(be, grad, grad_ref, dtype)


def test_l1_l2_penalty_and_gradient_match_reference(fast_device: str, dtype: str) -> None:
    be = fusednn.backend(fast_device)
    w_h, dw_h = _values((7, 3)), _values((7, 3), 1)
    assert_close(
        be,
        be.l1_l2_penalty(put(be, w_h, dtype), 0.01, 0.02),
        REF.l1_l2_penalty(put(REF, w_h, dtype), 0.01, 0.02),
        dtype,
    )
    dW, dW_ref = put(be, dw_h, dtype), put(REF, dw_h, dtype)
    be.add_l1_l2_gradient(put(be, w_h, dtype), dW, 0.01, 0.02)
    REF.add_l1_l2_gradient(put(REF, w_h, dtype), dW_ref, 0.01, 0.02)
    assert_close(be, dW, dW_ref, dtype)


def test_array_helpers_match_reference(fast_device: str, dtype: str) -> None:
    be = fusednn.backend(fast_device)
    x_h = _values((6, 3))
    rows = be.asindex(np.array([4.0, 0.0, 4.0]))
    assert be.to_numpy(rows).dtype == np.int64
    np.testing.assert_array_equal(be.to_numpy(be.take_rows(put(be, x_h, dtype), rows)), x_h[[4, 0, 4]].astype(dtype))
    assert be.asarray(np.arange(3)).dtype == np.float32  # integers default to float32
    assert be.zeros((2, 3), dtype).shape == (2, 3) and be.empty(4, dtype).dtype == np.dtype(dtype)
    assert be.to_float(be.asarray(np.array(2.5), dtype)) == 2.5


# ----------------------------------------------------------------- optimizers

OPTIMIZER_CASES = [
    (nn.SGD, {"lr": 0.1}),
    (nn.SGD, {"lr": 0.05, "momentum": 0.9, "dampening": 0.3, "weight_decay": 0.01}),
    (nn.SGD, {"lr": 0.05, "momentum": 0.8, "nesterov": True, "weight_decay": 0.1}),
    (nn.RMSprop, {"lr": 0.01, "alpha": 0.99, "eps": 1e-8}),
    (nn.RMSprop, {"lr": 0.01, "alpha": 0.9, "eps": 1e-6, "weight_decay": 0.05, "momentum": 0.7, "centered": True}),
    (nn.RMSprop, {"lr": 0.02, "alpha": 0.8, "eps": 1e-4, "momentum": 0.5}),
    (nn.Adam, {"lr": 1e-3}),
    (nn.Adam, {"lr": 0.01, "betas": (0.8, 0.95), "eps": 1e-6, "weight_decay": 0.1, "amsgrad": True}),
    (nn.AdamW, {"lr": 1e-3}),
    (nn.AdamW, {"lr": 0.01, "betas": (0.8, 0.95), "eps": 1e-6, "weight_decay": 0.1, "amsgrad": True}),
    (nn.LAMB, {"lr": 0.01}),
    (nn.LAMB, {"lr": 0.02, "betas": (0.8, 0.95), "eps": 1e-4, "weight_decay": 0.0}),
    (nn.LARS, {"lr": 1.0}),
    (nn.LARS, {"lr": 0.5, "momentum": 0.9, "nesterov": True, "weight_decay": 1e-3, "trust_coefficient": 0.02}),
]
N_STEPS = 4
# One tensor, and several (with the flat buffer's padding between them, and a zero tensor: trust ratio 1).
SHAPES = {"one": [(37,)], "several": [(5, 7), (3,), (2, 2)]}


def run_optimizer(be: Backend, cls: type, config: dict, shapes: list, dtype: str) -> dict[str, np.ndarray]:
    """``N_STEPS`` updates of ``cls`` on a flat buffer of ``shapes`` on ``be``: the parameters and the state."""
    rng = np.random.default_rng(7)
    params = nn.Parameters(shapes, be, dtype)
    views = params.views()
    for view in views[:-1] if len(views) > 1 else views:  # the last of several stays zero
        view[...] = be.asarray(rng.standard_normal(view.shape), dtype)
    opt = cls(params, **config)
    for _ in range(N_STEPS):
        for view in params.grad_views():
            view[...] = be.asarray(rng.standard_normal(view.shape), dtype)
        opt.step()
    return {"param": be.to_numpy(params.data), **{k: be.to_numpy(v) for k, v in opt.state.items()}}


def _case_id(case: tuple) -> str:
    return case[0].__name__ + "-" + "-".join(f"{k}={v}" for k, v in case[1].items())


@pytest.mark.parametrize("shapes", list(SHAPES.values()), ids=list(SHAPES))
@pytest.mark.parametrize("case", OPTIMIZER_CASES, ids=_case_id)
def test_fused_optimizer_steps_match_reference(fast_backend: Backend, dtype: str, case: tuple, shapes: list) -> None:
    cls, config = case
    expected = run_optimizer(REF, cls, config, shapes, dtype)
    actual = run_optimizer(fast_backend, cls, config, shapes, dtype)
    for name in expected:
        np.testing.assert_allclose(actual[name], expected[name], **TOLERANCES[dtype], err_msg=name)


TORCH_OPTIMIZERS = {nn.SGD: torch.optim.SGD, nn.RMSprop: torch.optim.RMSprop, nn.Adam: torch.optim.Adam}
TORCH_OPTIMIZERS[nn.AdamW] = torch.optim.AdamW


@pytest.mark.parametrize("case", [c for c in OPTIMIZER_CASES if c[0] in TORCH_OPTIMIZERS], ids=_case_id)
def test_optimizer_steps_match_torch_optim(device: str, case: tuple) -> None:
    cls, config = case
    actual = run_optimizer(fusednn.backend(device), cls, config, [(37,)], "float64")
    rng = np.random.default_rng(7)
    param_t = torch.tensor(rng.standard_normal(37), requires_grad=True)
    optimizer = TORCH_OPTIMIZERS[cls]([param_t], foreach=False, **config)
    for _ in range(N_STEPS):
        param_t.grad = torch.tensor(rng.standard_normal(37))
        optimizer.step()
    # torch computes a few products in another order (lerp, addcmul): allow a few ulps more than float64's tolerance.
    np.testing.assert_allclose(actual["param"][:37], param_t.detach().numpy(), rtol=1e-11, atol=1e-13)
    for name, value in optimizer.state[param_t].items():
        if name != "step":
            np.testing.assert_allclose(actual[name][:37], value.numpy(), rtol=1e-11, atol=1e-13, err_msg=name)


# ------------------------------------------------------------------ threading


@pytest.mark.parametrize(("env_layer", "expected"), [(None, "workqueue"), ("omp", "omp")])
def test_cpu_backend_selects_workqueue_unless_the_user_chose_a_layer(env_layer: str | None, expected: str) -> None:
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_THREADING_LAYER"}
    if env_layer is not None:
        env["NUMBA_THREADING_LAYER"] = env_layer
    code = "import numba, fusednn.backends.numba_backend; print(numba.config.THREADING_LAYER)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert result.stdout.strip() == expected
