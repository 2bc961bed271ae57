"""``CudaBackend``'s own logic without a GPU: the shipped kernels run on the CPU shim, arrays are NumPy.

:mod:`cuda_shim.simulated` swaps CuPy for NumPy and each launch for the shim
build of the same ``.cu`` file, keeping the launcher's strict checks. These
tests cover what the kernel-level shim tests cannot: that the backend accepts
every layout the NumPy reference accepts (transposed inputs are copied, strided
outputs and optimizer buffers are written back), and that its reductions give
the same bits whatever the launch configuration.
"""

from __future__ import annotations

import ctypes

import numpy as np
import pytest
from conftest import TOLERANCES
from cuda_shim.build import build_shim_library, have
from cuda_shim.simulated import simulated_cuda_backend
from test_backend_kernels import OPTIMIZER_CASES, _case_id, run_optimizer

import fusednn

REF = fusednn.backend("numpy")


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    if not have("g++"):
        pytest.skip("g++ is not on PATH; it builds the CUDA sources for the CPU")
    return simulated_cuda_backend(ctypes.CDLL(str(build_shim_library(tmp_path_factory.mktemp("cuda_sim")))))


def values(shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape) * 3


def strided(be, host, dtype):
    """A non-contiguous view (every other element of the first axis) holding ``host``."""
    view = be.zeros((host.shape[0] * 2, *host.shape[1:]), dtype)[::2]
    view[...] = host.astype(dtype)
    assert not view.flags.c_contiguous
    return view


def assert_close(actual, expected, dtype):
    np.testing.assert_allclose(np.asarray(actual), np.asarray(expected), **TOLERANCES[dtype])


@pytest.mark.parametrize("name", ["gelu", "identity"])
def test_activation_takes_transposed_inputs_and_writes_into_strided_out(sim, dtype, name):
    z_host, dh_host = values((6, 5)), values((6, 5), 1)
    z_t = sim.asarray(np.ascontiguousarray(z_host.T), dtype).T
    out = sim.zeros((5, 6), dtype).T
    assert sim.activation(name, z_t, out=out) is out
    h_ref = REF.activation(name, z_host.astype(dtype))
    assert_close(out, h_ref, dtype)
    dz = sim.zeros((5, 6), dtype).T
    dh_t = sim.asarray(np.ascontiguousarray(dh_host.T), dtype).T
    assert sim.activation_backward(name, z_t, out, dh_t, out=dz) is dz
    assert_close(dz, REF.activation_backward(name, z_host.astype(dtype), h_ref, dh_host.astype(dtype)), dtype)


@pytest.mark.parametrize("name", ["identity", "tanh", "relu"])
@pytest.mark.parametrize(("n", "n_in", "n_out"), [(1, 9, 4), (17, 33, 5), (300, 3, 2)])
def test_dense_layer_takes_transposed_inputs_and_strided_gradient_views(sim, dtype, name, n, n_in, n_out):
    x_h, w_h, b_h, dy_h = values((n, n_in)), values((n_in, n_out), 1) / 3, values(n_out, 2), values((n, n_out), 3)
    y_ref, z_ref = REF.dense_forward(x_h.astype(dtype), w_h.astype(dtype), b_h.astype(dtype), name)
    dW_ref, db_ref = REF.zeros((n_in, n_out), dtype), REF.zeros(n_out, dtype)
    dx_ref = REF.dense_backward(
        x_h.astype(dtype), w_h.astype(dtype), z_ref, y_ref, dy_h.astype(dtype), name, dW_ref, db_ref
    )

    def transposed(host):
        return sim.asarray(np.ascontiguousarray(host.T), dtype).T

    x, W = transposed(x_h), transposed(w_h)
    y, z = sim.dense_forward(x, W, sim.asarray(b_h, dtype), name)
    assert_close(y, y_ref, dtype)
    dW, db = sim.zeros((n_out, n_in), dtype).T, sim.zeros(2 * n_out, dtype)[::2]
    dx = sim.dense_backward(x, W, transposed(np.asarray(z)), transposed(np.asarray(y)), transposed(dy_h), name, dW, db)
    assert_close(dx, dx_ref, dtype)
    assert_close(dW, dW_ref, dtype)
    assert_close(db, db_ref, dtype)


def test_bias_gradient_is_bit_identical_across_runs_and_equals_the_in_order_chunk_sum(sim, dtype):
    from fusednn.kernels.cuda.launch import bias_grad_rows_per_chunk

    rows, cols = 5000, 3  # many chunks per column
    x, dy = sim.asarray(values((rows, 2)), dtype), sim.asarray(values((rows, cols), 4), dtype)
    W, b = sim.asarray(values((2, cols), 1), dtype), sim.zeros(cols, dtype)
    y, z = sim.dense_forward(x, W, b, "identity")
    results = []
    for _ in range(2):
        dW, db = sim.zeros((2, cols), dtype), sim.zeros(cols, dtype)
        sim.dense_backward(x, W, z, y, dy.copy(), "identity", dW, db)
        results.append(np.asarray(db).copy())
    np.testing.assert_array_equal(results[0], results[1])
    per_chunk = bias_grad_rows_per_chunk(rows, cols)
    expected = np.zeros(cols, dtype)
    for first in range(0, rows, per_chunk):
        partial = np.zeros(cols, dtype)
        for r in range(first, min(first + per_chunk, rows)):
            partial += np.asarray(dy)[r]
        expected += partial
    np.testing.assert_array_equal(results[0], expected)


@pytest.mark.parametrize("case", OPTIMIZER_CASES, ids=_case_id)
def test_every_optimizer_rule_matches_the_reference(sim, dtype, case):
    """CudaBackend's bound steps (one launch, or two for LAMB/LARS over their lanes) against the numpy rules."""
    cls, config = case
    shapes = [(5, 7), (3,), (2, 2)]
    expected = run_optimizer(REF, cls, config, shapes, dtype)
    actual = run_optimizer(sim, cls, config, shapes, dtype)
    for name in expected:
        np.testing.assert_allclose(actual[name], expected[name], **TOLERANCES[dtype], err_msg=name)


def test_optimizer_step_refuses_strided_buffers(sim):
    param = sim.zeros(12, "float32")[::2]
    with pytest.raises(ValueError, match="param must be C-contiguous"):
        sim.optimizer_step("sgd", param, sim.zeros(6, "float32"), [None])


@pytest.mark.parametrize(("logit", "dtype"), [(32.0, "float32"), (16384.0, "float64"), (1e4, "float32")])
def test_cross_entropy_of_large_equal_logits_is_exact(sim, logit, dtype):
    loss, grad = sim.softmax_cross_entropy(sim.asarray([[logit, logit]], dtype), sim.asindex(np.array([0])))
    # p = (1/2, 1/2) exactly: the shifted computation never subtracts two large numbers.
    np.testing.assert_array_equal(np.asarray(grad), np.array([[-0.5, 0.5]], dtype))
    np.testing.assert_allclose(float(loss), np.log(2.0), rtol=TOLERANCES[dtype]["rtol"])


def test_cross_entropy_takes_transposed_logits_and_probabilities(sim, dtype):
    logits_h, probs_h = values((7, 4)), np.random.default_rng(5).dirichlet(np.ones(7), size=4).T
    logits = sim.asarray(np.ascontiguousarray(logits_h.T), dtype).T
    probs = sim.asarray(np.ascontiguousarray(probs_h.T), dtype).T
    loss, grad = sim.softmax_cross_entropy(logits, probs)
    loss_ref, grad_ref = REF.softmax_cross_entropy(logits_h.astype(dtype), probs_h.astype(dtype))
    assert_close(grad, grad_ref, dtype)
    assert_close(loss, loss_ref, dtype)


def test_trusted_paths_run_with_their_gpu_current(sim):
    """What Backend.trusted hands out launches on its GPU even while another one is current."""
    x = sim.asarray(np.ones((3, 2)), dtype="float32")
    W, b = sim.asarray(np.ones((2, 4)), dtype="float32"), sim.zeros(4, "float32")
    with sim.xp.cuda.Device(1):  # sim is cuda:0
        y, _ = sim.trusted("dense_forward")(x, W, b, "relu")
    assert sim.to_numpy(y).tolist() == [[2.0] * 4] * 3
