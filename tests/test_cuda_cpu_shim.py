"""The shipped CUDA C kernels, built for the CPU with g++ and the shim header, against the NumPy reference.

``tests/cuda_shim/shim.h`` turns the CUDA qualifiers and built-ins into plain C++
and runs each launch serially, block by block and thread by thread. The very
same ``.cu`` files the GPU compiles are built once per session into a shared
library and called through ctypes over several launch configurations (one
thread; a grid smaller than the work, so the grid-stride loops wrap; a grid
larger than the work) and odd sizes, exactly as the backend would launch them.
"""

from __future__ import annotations

import ctypes

import numpy as np
import pytest
from conftest import TOLERANCES
from cuda_shim.build import build_shim_library, have, wrapper_name

import fusednn
from fusednn import nn
from fusednn.kernels.activation_codes import ACTIVATION_CODES, ACTIVATIONS
from fusednn.kernels.cuda.launch import bias_grad_rows_per_chunk
from fusednn.kernels.cuda.sources import C_TYPES, KERNELS

CONFIGS = [(1, 1), (3, 32), (64, 256)]
"""(grid, block) launch configurations every kernel runs under."""

SIZES = [1, 17, 1000]

_SCALAR_TYPES = {"long long": ctypes.c_longlong, "int": ctypes.c_int}


class ShimKernels:
    """Calls ``kernel<T>`` in the shim library with checked, exactly typed ctypes arguments."""

    def __init__(self, library: ctypes.CDLL) -> None:
        self.library = library

    def __call__(self, kernel: str, dtype: np.dtype, config: tuple[int, int], *args) -> None:
        spec = KERNELS[kernel]
        dtype = np.dtype(dtype)
        assert len(args) == len(spec.params), kernel
        converted = []
        for (ctype, name), value in zip(spec.params, args, strict=True):
            if ctype.endswith("*"):
                expected = np.int64 if "long long" in ctype else np.float64 if "double" in ctype else dtype
                assert value.dtype == expected and value.flags.c_contiguous, (
                    kernel,
                    name,
                )
                converted.append(ctypes.c_void_p(value.ctypes.data))
            elif ctype == "T":
                converted.append((ctypes.c_float if dtype == np.float32 else ctypes.c_double)(value))
            else:
                converted.append(_SCALAR_TYPES[ctype](value))
        function = getattr(self.library, wrapper_name(kernel, C_TYPES[dtype]))
        function.restype = None
        function(ctypes.c_int(config[0]), ctypes.c_int(config[1]), *converted)


@pytest.fixture(scope="session")
def shim(tmp_path_factory) -> ShimKernels:
    if not have("g++"):
        pytest.skip("g++ is not on PATH; it builds the CUDA sources for the CPU")
    return ShimKernels(ctypes.CDLL(str(build_shim_library(tmp_path_factory.mktemp("cuda_shim")))))


@pytest.fixture(scope="module")
def ref():
    return fusednn.backend("numpy")


def random_inputs(rng, shape, dtype):
    """Normal values spread wide enough to reach each activation's branches (softplus threshold, saturation)."""
    x = rng.normal(scale=4.0, size=shape)
    x.flat[: min(x.size, 4)] = [25.0, -25.0, 0.0, 1e-3][: min(x.size, 4)]
    return x.astype(dtype)


def assert_close(actual, expected, dtype, scale=1.0):
    tol = TOLERANCES[np.dtype(dtype).name]
    np.testing.assert_allclose(actual, expected, rtol=tol["rtol"], atol=tol["atol"] * scale)


@pytest.mark.parametrize("name", ACTIVATIONS)
def test_activation_forward_and_backward(shim, ref, name, dtype):
    rng = np.random.default_rng(ACTIVATION_CODES[name])
    for n in SIZES:
        z = random_inputs(rng, n, dtype)
        dh = rng.normal(size=n).astype(dtype)
        h_ref = ref.activation(name, z)
        dz_ref = ref.activation_backward(name, z, h_ref, dh)
        for config in CONFIGS:
            h = np.full_like(z, np.nan)
            shim("activation_forward", dtype, config, z, h, n, ACTIVATION_CODES[name])
            assert_close(h, h_ref, dtype)
            dz = np.full_like(z, np.nan)
            shim(
                "activation_backward",
                dtype,
                config,
                z,
                h_ref,
                dh,
                dz,
                n,
                ACTIVATION_CODES[name],
            )
            assert_close(dz, dz_ref, dtype)


@pytest.mark.parametrize("name", ["identity", "relu", "gelu", "softplus"])
@pytest.mark.parametrize(("rows", "cols"), [(1, 1), (17, 3), (1000, 7)])
def test_bias_activation_forward(shim, ref, name, rows, cols, dtype):
    rng = np.random.default_rng(rows * cols)
    gemm_out = random_inputs(rng, (rows, cols), dtype)
    b = rng.normal(size=cols).astype(dtype)
    z_ref = gemm_out + b
    y_ref = ref.activation(name, z_ref)
    for config in CONFIGS:
        z = gemm_out.copy()
        y = z if name == "identity" else np.full_like(z, np.nan)
        shim(
            "bias_activation_forward",
            dtype,
            config,
            z,
            b,
            y,
            rows,
            cols,
            ACTIVATION_CODES[name],
        )
        assert_close(z, z_ref, dtype)
        assert_close(y, y_ref, dtype)


@pytest.mark.parametrize("name", ["identity", "sigmoid", "relu", "selu"])
@pytest.mark.parametrize(("rows", "cols"), [(1, 1), (17, 3), (1000, 7)])
def test_activation_grad_bias_reduce(shim, ref, name, rows, cols, dtype):
    rng = np.random.default_rng(rows + cols)
    z = random_inputs(rng, (rows, cols), dtype)
    y = ref.activation(name, z)
    dy = rng.normal(size=(rows, cols)).astype(dtype)
    dz_ref = ref.activation_backward(name, z, y, dy)
    db_ref = dz_ref.sum(axis=0)
    chunkings = {1, 7, rows, bias_grad_rows_per_chunk(rows, cols)}
    for rows_per_chunk in chunkings:
        chunks = -(-rows // rows_per_chunk)
        db_first = None
        for config in CONFIGS:
            dz = dy.copy() if name == "identity" else np.full_like(dy, np.nan)
            source = dz if name == "identity" else dy  # identity runs in place on dy, as the backend does
            partials = np.full((chunks, cols), np.nan, dtype=dtype)
            db = np.full(cols, np.nan, dtype=dtype)
            shim(
                "activation_grad_bias_reduce",
                dtype,
                config,
                z,
                y,
                source,
                dz,
                partials,
                rows,
                cols,
                rows_per_chunk,
                ACTIVATION_CODES[name],
            )
            shim("bias_grad_sum_chunks", dtype, config, partials, db, chunks, cols)
            assert_close(dz, dz_ref, dtype)
            # Each partial is its chunk's rows added in order; db adds the partials in order.
            expected_partials = [dz_ref[c * rows_per_chunk : (c + 1) * rows_per_chunk] for c in range(chunks)]
            for c, block in enumerate(expected_partials):
                assert_close(partials[c], block.sum(axis=0), dtype, scale=rows_per_chunk)
            # A sum of `rows` terms in another order: absolute error grows with the row count.
            assert_close(db, db_ref, dtype, scale=rows)
            # No atomics: the same bits under every launch configuration.
            if db_first is None:
                db_first = db.copy()
            np.testing.assert_array_equal(db, db_first)


@pytest.mark.parametrize(("rows", "cols"), [(1, 1), (17, 5), (1000, 10)])
def test_softmax_cross_entropy_labels_and_probabilities(shim, ref, rows, cols, dtype):
    rng = np.random.default_rng(rows * 31 + cols)
    logits = (rng.normal(scale=5.0, size=(rows, cols))).astype(dtype)
    labels = rng.integers(0, cols, size=rows).astype(np.int64)
    probs = rng.dirichlet(np.ones(cols), size=rows).astype(dtype)
    probs[0] *= 0.5  # a row whose probabilities do not sum to one exercises the sum_c t_ic factor
    for target, kernel in (
        (labels, "softmax_xent_labels"),
        (probs, "softmax_xent_probs"),
    ):
        loss_ref, grad_ref = ref.softmax_cross_entropy(logits, target)
        for config in CONFIGS:
            grad = np.full_like(logits, np.nan)
            row_loss = np.full(rows, np.nan, dtype=dtype)
            shim(
                kernel,
                dtype,
                config,
                logits,
                target,
                grad,
                row_loss,
                rows,
                cols,
                1.0 / rows,
            )
            assert_close(grad, grad_ref, dtype)
            # The backend's loss is the mean of the per-row losses.
            assert_close(row_loss.sum() / rows, loss_ref, dtype, scale=rows)


@pytest.mark.parametrize("bad_label", [-1, 3])
def test_out_of_range_label_makes_the_loss_nan(shim, bad_label):
    logits = np.zeros((2, 3))
    labels = np.array([0, bad_label], dtype=np.int64)
    row_loss = np.zeros(2)
    shim(
        "softmax_xent_labels",
        np.float64,
        (1, 32),
        logits,
        labels,
        np.empty_like(logits),
        row_loss,
        2,
        3,
        0.5,
    )
    assert row_loss[0] == np.log(3) and np.isnan(row_loss[1])


SGD_CASES = [
    {
        "lr": 0.1,
        "momentum": 0.0,
        "dampening": 0.0,
        "nesterov": False,
        "weight_decay": 0.0,
    },
    {
        "lr": 0.05,
        "momentum": 0.9,
        "dampening": 0.1,
        "nesterov": False,
        "weight_decay": 0.01,
    },
    {
        "lr": 0.05,
        "momentum": 0.9,
        "dampening": 0.0,
        "nesterov": True,
        "weight_decay": 0.0,
    },
]


def optimizer_state(n, dtype, seed, count):
    rng = np.random.default_rng(seed)
    param = rng.normal(size=n).astype(dtype)
    grads = [rng.normal(size=n).astype(dtype) for _ in range(3)]
    # Non-negative running averages, as an earlier step would leave them.
    buffers = [np.abs(rng.normal(size=n)).astype(dtype) for _ in range(count)]
    return param, grads, buffers


@pytest.mark.parametrize("hyper", SGD_CASES)
def test_sgd_step(shim, ref, hyper, dtype):
    for n in SIZES:
        for config in CONFIGS:
            param, grads, _ = optimizer_state(n, dtype, n, 0)
            p_ref, buf_ref = param.copy(), np.zeros_like(param)
            buf = np.zeros_like(param)
            for step, grad in enumerate(grads):
                use_buf = buf_ref if hyper["momentum"] else None
                scalars = (
                    hyper["lr"],
                    hyper["momentum"],
                    1.0 - hyper["dampening"],
                    hyper["weight_decay"],
                    int(bool(hyper["momentum"])),
                    int(hyper["nesterov"]),
                    int(step == 0),
                )
                ref.optimizer_step("sgd", p_ref, grad, [use_buf])(*scalars)
                shim("sgd_step", dtype, config, param, grad, buf, n, *scalars)
            assert_close(param, p_ref, dtype)
            if hyper["momentum"]:
                assert_close(buf, buf_ref, dtype)


RMSPROP_CASES = [
    {
        "lr": 0.01,
        "alpha": 0.99,
        "eps": 1e-8,
        "weight_decay": 0.0,
        "momentum": 0.0,
        "centered": False,
    },
    {
        "lr": 0.01,
        "alpha": 0.9,
        "eps": 1e-6,
        "weight_decay": 0.1,
        "momentum": 0.5,
        "centered": True,
    },
]


@pytest.mark.parametrize("hyper", RMSPROP_CASES)
def test_rmsprop_step(shim, ref, hyper, dtype):
    for n in SIZES:
        for config in CONFIGS:
            param, grads, (square_avg, grad_avg, buf) = optimizer_state(n, dtype, n + 1, 3)
            square_avg += grad_avg * grad_avg  # square_avg >= grad_avg^2, as training keeps it
            p_ref, sq_ref, ga_ref, buf_ref = (
                param.copy(),
                square_avg.copy(),
                grad_avg.copy(),
                buf.copy(),
            )
            for grad in grads:
                scalars = (
                    hyper["lr"],
                    hyper["alpha"],
                    1.0 - hyper["alpha"],
                    hyper["eps"],
                    hyper["weight_decay"],
                    hyper["momentum"],
                    int(hyper["centered"]),
                    int(hyper["momentum"] > 0),
                )
                ref.optimizer_step(
                    "rmsprop",
                    p_ref,
                    grad,
                    [sq_ref, ga_ref if hyper["centered"] else None, buf_ref if hyper["momentum"] else None],
                )(*scalars)
                shim("rmsprop_step", dtype, config, param, grad, square_avg, grad_avg, buf, n, *scalars)
            assert np.isfinite(p_ref).all()
            for got, want in (
                (param, p_ref),
                (square_avg, sq_ref),
                (grad_avg, ga_ref),
                (buf, buf_ref),
            ):
                assert_close(got, want, dtype)


ADAM_CASES = [
    {
        "lr": 0.001,
        "beta1": 0.9,
        "beta2": 0.999,
        "eps": 1e-8,
        "weight_decay": 0.0,
        "amsgrad": False,
    },
    {
        "lr": 0.01,
        "beta1": 0.8,
        "beta2": 0.99,
        "eps": 1e-6,
        "weight_decay": 0.05,
        "amsgrad": True,
    },
]


@pytest.mark.parametrize("hyper", ADAM_CASES)
def test_adam_step(shim, ref, hyper, dtype):
    from fusednn.backends.base import adam_scalars

    for n in SIZES:
        for config in CONFIGS:
            param, grads, (m, v, v_max) = optimizer_state(n, dtype, n + 2, 3)
            m[:] = v[:] = v_max[:] = 0
            p_ref, m_ref, v_ref, vmax_ref = (
                param.copy(),
                m.copy(),
                v.copy(),
                v_max.copy(),
            )
            for step, grad in enumerate(grads, start=1):
                step_size, bc2 = adam_scalars(hyper["lr"], hyper["beta1"], hyper["beta2"], step)
                scalars = (
                    step_size,
                    bc2,
                    1.0 - hyper["beta1"],
                    hyper["beta2"],
                    1.0 - hyper["beta2"],
                    hyper["eps"],
                    hyper["weight_decay"],
                    int(hyper["amsgrad"]),
                )
                ref.optimizer_step("adam", p_ref, grad, [m_ref, v_ref, vmax_ref if hyper["amsgrad"] else None])(
                    *scalars
                )
                shim("adam_step", dtype, config, param, grad, m, v, v_max, n, *scalars)
            for got, want in ((param, p_ref), (m, m_ref), (v, v_ref)):
                assert_close(got, want, dtype)
            if hyper["amsgrad"]:
                assert_close(v_max, vmax_ref, dtype)


NEW_RULE_CASES = [
    (nn.AdamW, {"lr": 0.01, "betas": (0.8, 0.95), "weight_decay": 0.1, "amsgrad": True}),
    (nn.LAMB, {"lr": 0.02, "weight_decay": 0.05}),
    (nn.LARS, {"lr": 0.5, "momentum": 0.9, "nesterov": True, "weight_decay": 1e-3, "trust_coefficient": 0.02}),
]


@pytest.mark.parametrize("config", CONFIGS, ids=str)
@pytest.mark.parametrize("case", NEW_RULE_CASES, ids=lambda case: case[0].__name__)
def test_new_optimizer_kernels_match_the_reference_under_every_launch(shim, case, config, dtype):
    """adamw_step, and LAMB's and LARS's two launches over their lanes, whatever the grid and block."""
    from fusednn.backends.cuda_backend import segment_lanes

    cls, hyper = case
    rng = np.random.default_rng(3)
    be = fusednn.backend("numpy")
    params = nn.Parameters([(40, 26), (17,), (2, 2)], be, dtype)
    for view in params.views()[:-1]:  # the last tensor stays zero: trust ratio 1
        view[...] = rng.normal(size=view.shape)
    param = params.data.copy()
    opt = cls(params, **hyper)
    state = {name: np.zeros(params.size, dtype) for name in opt.state}
    buffers = [state[name] if name else param for name in opt._state_layout]
    for step in range(1, 4):
        params.grad[...] = rng.normal(size=params.size)
        scalars = [int(v) if isinstance(v, bool) else v for v in opt._scalars(step)]
        opt.step()
        grad = params.grad.copy()
        if cls.per_tensor:
            sizes = [int(np.prod(shape)) for shape in params.shapes]
            segments = np.array([[o, o + n] for o, n in zip(params.offsets, sizes, strict=True)])
            lanes = segment_lanes(segments)
            partials = np.zeros(2 * lanes.shape[0])
            for kernel in (f"{cls.rule}_norms", f"{cls.rule}_step"):
                shim(kernel, dtype, config, param, grad, *buffers, lanes, partials, lanes.shape[0], *scalars)
        else:
            shim(f"{cls.rule}_step", dtype, config, param, grad, *buffers, param.size, *scalars)
    assert_close(param, params.data, dtype)
    for name, value in opt.state.items():
        assert_close(state[name], value, dtype)
