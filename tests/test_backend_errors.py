"""Every bad input to a backend gives a clear error naming the problem, on every backend."""

from __future__ import annotations

import re
import types

import numpy as np
import pytest

import fusednn
from fusednn.backends.base import Backend


@pytest.fixture
def be(device: str) -> Backend:
    return fusednn.backend(device)


class FakeCudaArray:
    """Stands in for a CuPy array on GPU 1: it has ``__cuda_array_interface__`` and a device id."""

    __cuda_array_interface__ = {"shape": (2, 2), "typestr": "<f4", "data": (0, False), "version": 3}
    device = types.SimpleNamespace(id=1)
    dtype = np.dtype(np.float32)
    shape = (2, 2)
    ndim = 2


def arrays(be: Backend, *shapes: tuple[int, ...], dtype: str = "float32") -> list:
    return [be.asarray(np.ones(shape), dtype=dtype) for shape in shapes]


# ------------------------------------------------------------------ dtypes


@pytest.mark.parametrize("dtype", ["float16", "int32", int, "complex64", "bfloat17"])
def test_asarray_rejects_unsupported_dtypes(be: Backend, dtype: object) -> None:
    with pytest.raises(
        TypeError, match=r"(Unsupported|Unknown) dtype .*expected 'float32' or 'float64'|fusednn computes"
    ):
        be.asarray(np.ones(3), dtype=dtype)
    with pytest.raises(TypeError, match=r"(Unsupported|Unknown) dtype"):
        be.zeros(3, dtype=dtype)


def test_asarray_rejects_float16_input_without_a_dtype(be: Backend) -> None:
    with pytest.raises(TypeError, match=r"Unsupported array dtype 'float16'; pass dtype='float32' or 'float64'"):
        be.asarray(np.ones(3, dtype=np.float16))


def test_asindex_rejects_fractional_values(be: Backend) -> None:
    with pytest.raises(TypeError, match="Expected integer labels or indices, got an array of dtype 'float64'"):
        be.asindex(np.array([0.0, 1.5]))


def test_mixed_dtypes_name_each_operand(be: Backend) -> None:
    a = be.asarray(np.ones((2, 3)), dtype="float32")
    b = be.asarray(np.ones((3, 2)), dtype="float64")
    with pytest.raises(TypeError, match=r"Operands must share one dtype, got a=float32, b=float64"):
        be.matmul(a, b)
    with pytest.raises(TypeError, match=r"x=float32, W=float64, b=float32"):
        be.dense_forward(a, b, be.zeros(2, "float32"), "relu")
    with pytest.raises(TypeError, match=r"z=float32, h=float64"):
        be.activation_backward("relu", a, b.T, a)


def test_integer_arrays_are_refused_by_kernels(be: Backend) -> None:
    with pytest.raises(TypeError, match=r"z has dtype 'int64'; expected 'float32' or 'float64'"):
        be.activation("relu", np.ones((2, 2), dtype=np.int64) if be.kind != "cuda" else be.xp.ones((2, 2), dtype=int))


def test_non_arrays_are_refused(be: Backend) -> None:
    with pytest.raises(TypeError, match=r"z must be an array of backend .*, got list"):
        be.activation("relu", [1.0, 2.0])


# ---------------------------------------------------------- foreign devices


@pytest.mark.parametrize("device", ["numpy", "cpu"])
def test_arrays_from_another_device_name_both_devices(device: str) -> None:
    be = fusednn.backend(device)
    fake = FakeCudaArray()
    with pytest.raises(ValueError, match=rf"The array is on cuda:1 but this backend is {device}; copy it to the host"):
        be.asarray(fake)
    with pytest.raises(ValueError, match=rf"z is on cuda:1 but this backend is {device}; move it with"):
        be.activation("relu", fake)
    (x,) = arrays(be, (2, 2))
    with pytest.raises(ValueError, match=rf"b is on cuda:1 but this backend is {device}"):
        be.matmul(x, fake)
    with pytest.raises(ValueError, match=rf"W is on cuda:1 but this backend is {device}"):
        be.dense_forward(x, fake, be.zeros(2), "relu")


# --------------------------------------------------------------- activations


@pytest.mark.parametrize("name", ["swish", "ReLU", "", None])
def test_unknown_activation_lists_the_valid_names(be: Backend, name: object) -> None:
    message = re.escape(f"Unknown activation {name!r}; expected one of {', '.join(fusednn.ACTIVATIONS)}")
    z, W, b = arrays(be, (2, 3), (3, 4), (4,))
    y, dW, db = arrays(be, (2, 4), (3, 4), (4,))
    with pytest.raises(ValueError, match=message):
        be.activation(name, z)
    with pytest.raises(ValueError, match=message):
        be.activation_backward(name, z, z, z)
    with pytest.raises(ValueError, match=message):
        be.dense_forward(z, W, b, name)
    with pytest.raises(ValueError, match=message):
        be.dense_backward(z, W, y, y, y, name, dW, db)


def test_activation_backward_shapes_must_agree(be: Backend) -> None:
    z, h = arrays(be, (2, 3), (3, 2))
    with pytest.raises(ValueError, match=r"z, h and dh must share one shape"):
        be.activation_backward("tanh", z, h, z)


def test_activation_out_of_the_wrong_shape_is_refused(be: Backend) -> None:
    z, out = arrays(be, (2, 3), (4, 5))
    with pytest.raises(ValueError):
        be.activation("relu", z, out=out)


def test_activation_out_must_match_the_input_exactly_on_every_backend(be: Backend) -> None:
    """Checked once in the base class: a broadcastable shape or another dtype is refused, not cast."""
    z, broadcastable = arrays(be, (2, 3), (4, 2, 3))
    with pytest.raises(ValueError, match=r"out has shape \(4, 2, 3\); expected \(2, 3\)"):
        be.activation("relu", z, out=broadcastable)
    with pytest.raises(ValueError, match=r"out has shape \(4, 2, 3\); expected \(2, 3\)"):
        be.activation_backward("relu", z, z, z, out=broadcastable)
    (float64_out,) = arrays(be, (2, 3), dtype="float64")
    with pytest.raises(TypeError, match="Operands must share one dtype, got z=float32, out=float64"):
        be.activation("relu", z, out=float64_out)
    with pytest.raises(
        TypeError, match="Operands must share one dtype, got z=float32, h=float32, dh=float32, out=float64"
    ):
        be.activation_backward("relu", z, z, z, out=float64_out)


# --------------------------------------------------------------------- matmul


def test_matmul_shape_errors(be: Backend) -> None:
    a, b, c, v = arrays(be, (2, 3), (4, 2), (4, 3), (3,))
    with pytest.raises(ValueError, match=r"matmul inner dimensions differ: op\(a\) is \(2, 3\), op\(b\) is \(4, 2\)"):
        be.matmul(a, b)
    with pytest.raises(ValueError, match=r"matmul expects 2-D arrays; b has shape \(3,\)"):
        be.matmul(a, v)
    with pytest.raises(ValueError, match=r"out has shape \(2, 2\); expected \(2, 4\)"):
        be.matmul(a, c, transpose_b=True, out=be.zeros((2, 2)))


# ---------------------------------------------------------------- dense layer


@pytest.mark.parametrize(
    ("x_shape", "w_shape", "b_shape", "message"),
    [
        ((2, 3), (4, 5), (5,), r"dense shapes disagree: x \(2, 3\), W \(4, 5\), b \(5,\)"),
        ((2, 3), (3, 5), (4,), r"dense shapes disagree: x \(2, 3\), W \(3, 5\), b \(4,\)"),
        ((3,), (3, 5), (5,), r"dense expects x \(N, in\), W \(in, out\), b \(out,\)"),
        ((2, 3), (3, 5), (1, 5), r"dense expects x \(N, in\), W \(in, out\), b \(out,\)"),
    ],
)
def test_dense_shape_errors(be: Backend, x_shape: tuple, w_shape: tuple, b_shape: tuple, message: str) -> None:
    x, W, b = arrays(be, x_shape, w_shape, b_shape)
    with pytest.raises(ValueError, match=message):
        be.dense_forward(x, W, b, "relu")


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ("dy", r"dy has shape \(2, 4\); expected \(2, 5\)"),
        ("z", r"z has shape \(2, 4\); expected \(2, 5\)"),
        ("dW", r"dW has shape \(2, 4\); expected \(3, 5\)"),
        ("db", r"dense shapes disagree"),
    ],
)
def test_dense_backward_shape_errors(be: Backend, bad: str, message: str) -> None:
    x, W = arrays(be, (2, 3), (3, 5))
    args = dict(zip(["z", "y", "dy", "dW", "db"], arrays(be, (2, 5), (2, 5), (2, 5), (3, 5), (5,)), strict=True))
    args[bad] = be.zeros({"dy": (2, 4), "z": (2, 4), "dW": (2, 4), "db": (4,)}[bad])
    with pytest.raises(ValueError, match=message):
        be.dense_backward(x, W, args["z"], args["y"], args["dy"], "relu", args["dW"], args["db"])


def test_dense_backward_mixed_dtypes(be: Backend) -> None:
    x, W, z, y = arrays(be, (2, 3), (3, 5), (2, 5), (2, 5))
    (dy,) = arrays(be, (2, 5), dtype="float64")
    with pytest.raises(TypeError, match=r"dy=float64"):
        be.dense_backward(x, W, z, y, dy, "relu", be.zeros((3, 5)), be.zeros(5))


# --------------------------------------------------------------------- losses


def test_cross_entropy_label_errors(be: Backend) -> None:
    (logits,) = arrays(be, (3, 4))
    if be.device.kind == "cuda":
        # Checking the range would wait for the GPU inside every step; the kernels give NaN instead.
        for labels in ([0, 4, 1], [0, -1, 2]):
            loss, _ = be.softmax_cross_entropy(logits, be.asindex(np.array(labels)))
            assert np.isnan(be.to_float(loss))
    else:
        with pytest.raises(ValueError, match=r"Class labels must lie in \[0, 4\), got 4 at row 1"):
            be.softmax_cross_entropy(logits, be.asindex(np.array([0, 4, 1])))
        with pytest.raises(ValueError, match=r"Class labels must lie in \[0, 4\), got -1 at row 1"):
            be.softmax_cross_entropy(logits, be.asindex(np.array([0, -1, 2])))
    with pytest.raises(ValueError, match=r"labels has shape \(2,\); expected \(3,\)"):
        be.softmax_cross_entropy(logits, be.asindex(np.array([0, 1])))
    with pytest.raises(TypeError, match=r"Class labels must be an integer array of this backend \(see asindex\)"):
        be.softmax_cross_entropy(logits, be.asarray(np.array([0.0, 1.0, 2.0])))


def test_cross_entropy_probability_and_logit_errors(be: Backend) -> None:
    logits, wrong, vector = arrays(be, (3, 4), (3, 5), (4,))
    with pytest.raises(ValueError, match=r"target has shape \(3, 5\); expected \(3, 4\)"):
        be.softmax_cross_entropy(logits, wrong)
    with pytest.raises(TypeError, match=r"logits=float32, target=float64"):
        be.softmax_cross_entropy(logits, be.asarray(np.ones((3, 4)), dtype="float64"))
    with pytest.raises(ValueError, match=r"logits must have shape \(N, C\) with N, C >= 1, got \(4,\)"):
        be.softmax_cross_entropy(vector, be.asindex(np.array([0])))
    with pytest.raises(ValueError, match=r"logits must have shape \(N, C\) with N, C >= 1, got \(0, 4\)"):
        be.softmax_cross_entropy(be.zeros((0, 4)), be.asindex(np.zeros(0, dtype=np.int64)))


# ----------------------------------------------------------------- optimizers


def test_optimizer_step_checks_its_buffers_once(be: Backend) -> None:
    param, grad, state, short = arrays(be, (6,), (6,), (6,), (5,))
    with pytest.raises(ValueError, match="Unknown optimizer rule 'adagrad'; expected one of sgd, rmsprop, adam"):
        be.optimizer_step("adagrad", param, grad, [None])
    with pytest.raises(ValueError, match=r"state\[0\] has shape \(5,\); expected \(6,\)"):
        be.optimizer_step("sgd", param, grad, [short])
    with pytest.raises(ValueError, match=r"grad has shape \(5,\); expected \(6,\)"):
        be.optimizer_step("sgd", param, short, [None])
    with pytest.raises(TypeError, match=r"param=float32, grad=float64"):
        be.optimizer_step("sgd", param, be.asarray(np.ones(6), dtype="float64"), [None])
    with pytest.raises(ValueError, match="param must be the flat 1-D buffer, got shape"):
        be.optimizer_step("sgd", be.zeros((2, 3)), be.zeros((2, 3)), [None])
    with pytest.raises(ValueError, match="'lamb' needs a segments table"):
        be.optimizer_step("lamb", param, grad, [state, state])
    with pytest.raises(ValueError, match="'adam' takes no segments table"):
        be.optimizer_step("adam", param, grad, [state, state, None], np.array([[0, 6]]))
    with pytest.raises(ValueError, match="segments must be an integer"):
        be.optimizer_step("lars", param, grad, [None], np.array([0.0, 6.0]))
    with pytest.raises(ValueError, match=r"segments must be ordered, disjoint \[start, stop\) rows within 0..6"):
        be.optimizer_step("lars", param, grad, [None], np.array([[0, 4], [3, 6]]))
    with pytest.raises(ValueError, match="within 0..6"):
        be.optimizer_step("lars", param, grad, [None], np.array([[0, 7]]))
    np.testing.assert_array_equal(be.to_numpy(param), np.ones(6))  # nothing was updated


def test_trusted_names_the_operations_that_have_a_fast_path() -> None:
    be = fusednn.backend("numpy")
    with pytest.raises(ValueError, match="No trusted path for 'matmul'; expected one of activation, .*dense_forward"):
        be.trusted("matmul")
    assert be.trusted("dense_forward") is be.trusted("dense_forward")  # made once per backend
