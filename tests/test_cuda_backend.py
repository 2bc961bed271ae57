"""The CUDA backend on a real GPU: every operation against the NumPy reference backend.

Skipped with a reason where no GPU is usable (CI, this repository's dev machine).
float64 is compared tightly; float32 with the shared TOLERANCES, looser only
where stated (sums over many terms in another order, TF32).
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import GPU_SKIP_REASON, HAS_GPU, TOLERANCES
from device_resident_training import CASES, training_step
from test_backend_kernels import OPTIMIZER_CASES, REF, _case_id, run_optimizer

import fusednn
from fusednn.backends import cuda_backend
from fusednn.backends.base import adam_scalars
from fusednn.backends.registry import cuda_device_count
from fusednn.kernels.activation_codes import ACTIVATIONS

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not HAS_GPU, reason=GPU_SKIP_REASON)]


@pytest.fixture(scope="module")
def cuda():
    return fusednn.backend("cuda")


@pytest.fixture(scope="module")
def ref():
    return fusednn.backend("numpy")


@pytest.fixture(scope="module")
def cp():
    import cupy

    return cupy


def assert_close(cuda, actual, expected, dtype, scale=1.0):
    tol = TOLERANCES[np.dtype(dtype).name]
    np.testing.assert_allclose(cuda.to_numpy(actual), np.asarray(expected), rtol=tol["rtol"], atol=tol["atol"] * scale)


def wide_normal(rng, shape, dtype):
    x = rng.normal(scale=4.0, size=shape)
    x.flat[:4] = [25.0, -25.0, 0.0, 1e-3]
    return x.astype(dtype)


# ---------------------------------------------------------------------- arrays


def test_registry_gives_a_cuda_backend_on_device_zero(cuda, cp):
    assert isinstance(cuda, cuda_backend.CudaBackend) and cuda.name == "cuda:0"
    assert fusednn.backend("cuda:0") is cuda


def test_asarray_copies_host_data_and_to_numpy_copies_back(cuda, cp, dtype):
    host = np.arange(12, dtype=dtype).reshape(3, 4)
    x = cuda.asarray(host)
    assert isinstance(x, cp.ndarray) and x.dtype == dtype and x.device.id == 0
    back = cuda.to_numpy(x)
    assert isinstance(back, np.ndarray)
    np.testing.assert_array_equal(back, host)
    assert cuda.asarray(np.arange(3)).dtype == np.float32
    assert cuda.asarray([1, 2], dtype="float64").dtype == np.float64


def test_asarray_takes_cupy_arrays_without_a_copy(cuda, cp):
    x = cp.ones((2, 3), dtype=cp.float32)
    assert cuda.asarray(x) is x


class CudaArrayInterfaceOnly:
    def __init__(self, array):
        self._array = array
        self.__cuda_array_interface__ = array.__cuda_array_interface__


class DLPackOnly:
    def __init__(self, array, device=None):
        self._array = array
        self._device = device

    def __dlpack__(self, *args, **kwargs):
        return self._array.__dlpack__(*args, **kwargs)

    def __dlpack_device__(self):
        return self._device or self._array.__dlpack_device__()


def test_asarray_takes_cuda_array_interface_and_dlpack_without_a_copy(cuda, cp):
    x = cp.arange(6, dtype=cp.float64)
    for wrapped in (CudaArrayInterfaceOnly(x), DLPackOnly(x)):
        y = cuda.asarray(wrapped)
        assert isinstance(y, cp.ndarray) and y.data.ptr == x.data.ptr


def test_asarray_names_both_devices_for_an_array_of_another_gpu(cuda, cp):
    other = DLPackOnly(cp.zeros(3), device=(2, 7))
    with pytest.raises(ValueError, match=r"on cuda:7 but this backend is cuda:0"):
        cuda.asarray(other)


def test_operations_reject_host_arrays(cuda):
    with pytest.raises(ValueError, match=r"z is on host memory \(numpy\) but this backend is cuda:0"):
        cuda.activation("relu", np.ones(3, np.float32))


def test_to_float_reads_a_zero_d_value(cuda, cp):
    assert cuda.to_float(cp.asarray(2.5)) == 2.5


def test_asindex_zeros_empty_take_rows(cuda, ref, cp):
    labels = cuda.asindex(np.array([2, 0, 1], dtype=np.int32))
    assert labels.dtype == np.int64 and isinstance(labels, cp.ndarray)
    assert cuda.zeros((2, 3), "float64").dtype == np.float64 and cuda.empty(4).dtype == np.float32
    x = np.arange(12, dtype=np.float32).reshape(4, 3)
    np.testing.assert_array_equal(cuda.to_numpy(cuda.take_rows(cuda.asarray(x), labels)), x[[2, 0, 1]])


@pytest.mark.skipif(cuda_device_count() < 2, reason="needs two GPUs")
def test_two_backends_on_two_gpus_do_not_interfere(cp):
    be0, be1 = fusednn.backend("cuda:0"), fusednn.backend("cuda:1")
    with cp.cuda.Device(0):
        x1 = be1.asarray(np.ones((4, 5), np.float32))
        y1, _ = be1.dense_forward(x1, be1.asarray(np.ones((5, 2), np.float32)), be1.zeros(2), "relu")
    assert x1.device.id == 1 and y1.device.id == 1
    with pytest.raises(ValueError, match="cuda:1 but this backend is cuda:0"):
        be0.asarray(x1)


# ---------------------------------------------------------------------- matmul


@pytest.mark.parametrize(("ta", "tb"), [(False, False), (True, False), (False, True), (True, True)])
def test_matmul(cuda, ref, dtype, ta, tb):
    rng = np.random.default_rng(0)
    a = rng.normal(size=(33, 17) if not ta else (17, 33)).astype(dtype)
    b = rng.normal(size=(17, 9) if not tb else (9, 17)).astype(dtype)
    expected = ref.matmul(a, b, ta, tb)
    assert_close(cuda, cuda.matmul(cuda.asarray(a), cuda.asarray(b), ta, tb), expected, dtype, scale=17)
    out = cuda.zeros((33, 9), dtype)
    assert cuda.matmul(cuda.asarray(a), cuda.asarray(b), ta, tb, out=out) is out
    assert_close(cuda, out, expected, dtype, scale=17)


def test_tf32_switch_changes_float32_matmuls_and_restores_cupy(cuda, cp):
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(256, 512)), rng.normal(size=(512, 256))
    exact = a @ b
    a32, b32 = cuda.asarray(a, "float32"), cuda.asarray(b, "float32")
    before = cp._core.get_compute_type(np.float32)

    def error() -> float:
        return float(np.abs(cuda.to_numpy(cuda.matmul(a32, b32)) - exact).max() / np.abs(exact).max())

    highest = error()
    try:
        cuda_backend.set_matmul_precision("tf32")
        tf32 = error()
    finally:
        cuda_backend.set_matmul_precision("highest")
    assert cp._core.get_compute_type(np.float32) == before
    assert highest < 1e-5
    if int(cuda.compute_capability) >= 80:  # TF32 tensor cores exist from Ampere on
        assert 10 * highest < tf32 < 1e-2


# ----------------------------------------------------------------- activations


@pytest.mark.parametrize("name", ACTIVATIONS)
def test_activation_and_backward(cuda, ref, name, dtype):
    rng = np.random.default_rng(3)
    z = wide_normal(rng, (17, 33), dtype)
    dh = rng.normal(size=z.shape).astype(dtype)
    h_ref = ref.activation(name, z)
    h = cuda.activation(name, cuda.asarray(z))
    assert_close(cuda, h, h_ref, dtype)
    out = cuda.zeros(z.shape, dtype)
    assert cuda.activation(name, cuda.asarray(z), out=out) is out
    assert_close(cuda, out, h_ref, dtype)
    dz = cuda.activation_backward(name, cuda.asarray(z), cuda.asarray(h_ref), cuda.asarray(dh))
    assert_close(cuda, dz, ref.activation_backward(name, z, h_ref, dh), dtype)


def test_activation_errors(cuda):
    z = cuda.zeros(3)
    with pytest.raises(ValueError, match="Unknown activation 'swish'"):
        cuda.activation("swish", z)
    with pytest.raises(ValueError, match=r"out has shape \(4,\); expected \(3,\)"):
        cuda.activation("relu", z, out=cuda.zeros(4))
    with pytest.raises(TypeError, match="Operands must share one dtype"):
        cuda.activation("relu", z, out=cuda.zeros(3, "float64"))


# ----------------------------------------------------------------- dense layer


@pytest.mark.parametrize("name", ["identity", "relu", "tanh", "gelu", "softplus"])
@pytest.mark.parametrize(("n", "n_in", "n_out"), [(1, 3, 1), (17, 5, 3), (300, 64, 37)])
def test_dense_forward_and_backward(cuda, ref, name, n, n_in, n_out, dtype):
    rng = np.random.default_rng(n)
    x = rng.normal(size=(n, n_in)).astype(dtype)
    W = (rng.normal(size=(n_in, n_out)) / np.sqrt(n_in)).astype(dtype)
    b = rng.normal(size=n_out).astype(dtype)
    dy = rng.normal(size=(n, n_out)).astype(dtype)
    y_ref, z_ref = ref.dense_forward(x, W, b, name)
    dW_ref, db_ref = np.empty_like(W), np.empty_like(b)
    dx_ref = ref.dense_backward(x, W, z_ref, y_ref, dy, name, dW_ref, db_ref)

    # Gradients land in views of one flat buffer, at an offset, as nn lays them out.
    flat = cuda.zeros(64 + W.size + 32 + b.size, dtype)
    dW = flat[64 : 64 + W.size].reshape(W.shape)
    db = flat[96 + W.size :]
    xs, Ws, bs = cuda.asarray(x), cuda.asarray(W), cuda.asarray(b)
    y, z = cuda.dense_forward(xs, Ws, bs, name)
    assert (y is z) == (name == "identity")
    assert_close(cuda, z, z_ref, dtype, scale=n_in)
    assert_close(cuda, y, y_ref, dtype, scale=n_in)
    dx = cuda.dense_backward(xs, Ws, z, y, cuda.asarray(dy), name, dW, db)
    assert_close(cuda, dx, dx_ref, dtype, scale=n_out)
    assert_close(cuda, dW, dW_ref, dtype, scale=n)
    assert_close(cuda, db, db_ref, dtype, scale=n)
    untouched = cuda.to_numpy(flat)
    assert not untouched[:64].any() and not untouched[64 + W.size : 96 + W.size].any()
    assert cuda.dense_backward(xs, Ws, z, y, cuda.asarray(dy), name, dW, db, need_dx=False) is None


def test_bias_gradient_and_loss_are_the_same_bits_on_every_run(cuda, dtype):
    # Many rows per column: with atomics the chunk sums would land in a varying order.
    rng = np.random.default_rng(3)
    x, W = cuda.asarray(rng.normal(size=(20000, 8)), dtype), cuda.asarray(rng.normal(size=(8, 10)), dtype)
    y, z = cuda.dense_forward(x, W, cuda.zeros(10, dtype), "tanh")
    dy = cuda.asarray(rng.normal(size=(20000, 10)), dtype)
    labels = cuda.asindex(rng.integers(0, 10, size=20000))
    runs = []
    for _ in range(5):
        dW, db = cuda.zeros((8, 10), dtype), cuda.zeros(10, dtype)
        cuda.dense_backward(x, W, z, y, dy, "tanh", dW, db, need_dx=False)
        loss, _ = cuda.softmax_cross_entropy(z, labels)
        runs.append((cuda.to_numpy(db), cuda.to_float(loss)))
    for db_host, loss_value in runs[1:]:
        np.testing.assert_array_equal(db_host, runs[0][0])
        assert loss_value == runs[0][1]


def test_dense_shape_errors(cuda):
    x, W, b = cuda.zeros((4, 3)), cuda.zeros((3, 2)), cuda.zeros(5)
    with pytest.raises(ValueError, match="dense shapes disagree"):
        cuda.dense_forward(x, W, b, "relu")


# ---------------------------------------------------------------------- losses


@pytest.mark.parametrize(("n", "c"), [(1, 2), (17, 5), (1000, 10)])
def test_softmax_cross_entropy(cuda, ref, cp, n, c, dtype):
    rng = np.random.default_rng(c)
    logits = (rng.normal(scale=5.0, size=(n, c))).astype(dtype)
    labels = rng.integers(0, c, size=n)
    probs = rng.dirichlet(np.ones(c), size=n).astype(dtype)
    for target_host, target in ((labels, cuda.asindex(labels)), (probs, cuda.asarray(probs))):
        loss_ref, grad_ref = ref.softmax_cross_entropy(
            logits, ref.asindex(target_host) if target_host.ndim == 1 else target_host
        )
        loss, grad = cuda.softmax_cross_entropy(cuda.asarray(logits), target)
        assert isinstance(loss, cp.ndarray) and loss.shape == () and loss.dtype == dtype
        assert_close(cuda, loss, loss_ref, dtype, scale=n)
        assert_close(cuda, grad, grad_ref, dtype)


def test_out_of_range_label_gives_nan_instead_of_a_host_sync(cuda):
    loss, _ = cuda.softmax_cross_entropy(cuda.zeros((2, 3)), cuda.asindex(np.array([0, 3])))
    assert np.isnan(cuda.to_float(loss))


def test_cross_entropy_target_errors(cuda):
    with pytest.raises(ValueError, match=r"labels has shape \(3,\); expected \(2,\)"):
        cuda.softmax_cross_entropy(cuda.zeros((2, 3)), cuda.asindex(np.array([0, 1, 2])))


def test_reference_operations_run_on_cupy(cuda, ref, dtype):
    rng = np.random.default_rng(5)
    x = rng.normal(size=(7, 4)).astype(dtype)
    t = rng.uniform(size=(7, 4)).astype(dtype)
    xs, ts = cuda.asarray(x), cuda.asarray(t)
    assert_close(cuda, cuda.softmax(xs), ref.softmax(x), dtype)
    assert_close(cuda, cuda.log_softmax(xs), ref.log_softmax(x), dtype)
    for method in ("binary_cross_entropy_with_logits", "mean_squared_error", "mean_absolute_error"):
        loss, grad = getattr(cuda, method)(xs, ts)
        loss_ref, grad_ref = getattr(ref, method)(x, t)
        assert_close(cuda, loss, loss_ref, dtype, scale=28)
        assert_close(cuda, grad, grad_ref, dtype)
    assert_close(cuda, cuda.l1_l2_penalty(xs, 0.01, 0.1), ref.l1_l2_penalty(x, 0.01, 0.1), dtype, scale=28)
    dW, dW_ref = cuda.asarray(t.copy()), t.copy()
    cuda.add_l1_l2_gradient(xs, dW, 0.01, 0.1)
    ref.add_l1_l2_gradient(x, dW_ref, 0.01, 0.1)
    assert_close(cuda, dW, dW_ref, dtype)


# ------------------------------------------------------------------ optimizers


@pytest.mark.parametrize("case", OPTIMIZER_CASES, ids=_case_id)
def test_every_optimizer_rule_matches_the_reference(cuda, dtype, case):
    cls, config = case
    shapes = [(40, 26), (3,), (2, 2)]  # several tensors (LAMB/LARS lanes), padding, a zero tensor
    expected = run_optimizer(REF, cls, config, shapes, dtype)
    actual = run_optimizer(cuda, cls, config, shapes, dtype)
    for name in expected:
        np.testing.assert_allclose(actual[name], expected[name], **TOLERANCES[dtype], err_msg=name)


def test_optimizer_step_errors(cuda):
    with pytest.raises(ValueError, match=r"state\[0\] has shape \(3,\); expected \(4,\)"):
        cuda.optimizer_step("sgd", cuda.zeros(4), cuda.zeros(4), [cuda.zeros(3)])
    with pytest.raises(ValueError, match="param must be C-contiguous"):
        cuda.optimizer_step("adam", cuda.zeros(8)[::2], cuda.zeros(4), [cuda.zeros(4), cuda.zeros(4), None])


# ------------------------------------------------------------- training step


def no_synchronize():
    """``cupyx.allow_synchronize(False)``: any device-to-host wait in the block raises."""
    import cupyx

    allow_synchronize = getattr(cupyx, "allow_synchronize", None)
    if allow_synchronize is None:
        pytest.skip("this CuPy has no cupyx.allow_synchronize")
    return allow_synchronize(False)


@pytest.mark.filterwarnings("ignore:cupyx.allow_synchronize will be removed")
def test_a_training_step_never_synchronises(cuda, cp):
    rng = np.random.default_rng(11)
    x = cuda.asarray(rng.normal(size=(64, 20)), "float32")
    labels = cuda.asindex(rng.integers(0, 5, size=64))
    flat = cuda.asarray(rng.normal(size=20 * 5 + 5) * 0.1, "float32")
    grads = cuda.zeros(flat.shape)
    m, v = cuda.zeros(flat.shape), cuda.zeros(flat.shape)
    W, b, dW, db = flat[:100].reshape(20, 5), flat[100:], grads[:100].reshape(20, 5), grads[100:]
    adam = cuda.optimizer_step("adam", flat, grads, [m, v, None])
    cuda.synchronize()
    losses = []
    with no_synchronize():
        for step in range(1, 4):
            y, z = cuda.dense_forward(x, W, b, "identity")
            loss, dlogits = cuda.softmax_cross_entropy(y, labels)
            cuda.dense_backward(x, W, z, y, dlogits, "identity", dW, db, need_dx=False)
            adam(*adam_scalars(0.05, 0.9, 0.999, step), 0.1, 0.999, 1e-3, 1e-8, 0.0, False)
            losses.append(loss)
    values = [cuda.to_float(loss) for loss in losses]
    assert values[-1] < values[0]


@pytest.mark.filterwarnings("ignore:cupyx.allow_synchronize will be removed")
@pytest.mark.parametrize(("loss", "output_activation", "optimizer"), CASES)
def test_an_nn_training_step_never_synchronises(cuda, loss, output_activation, optimizer):
    """nn's forward, loss, backward and optimizer step on device-resident data never wait for the GPU."""
    step = training_step("cuda", loss, output_activation, optimizer)
    cuda.synchronize()
    with no_synchronize():
        losses = [step() for _ in range(3)]
    assert all(np.isfinite(cuda.to_float(v)) for v in losses)
