"""Property tests: random shapes and values, huge magnitudes included, never overflow or disagree with the reference."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import TOLERANCES
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

import fusednn
from fusednn.kernels.cpu.common import chunk_bounds

REF = fusednn.backend("numpy")
# The `device` fixture is function-scoped but returns a constant string, so reusing it across examples is safe.
PROPERTY_SETTINGS = settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)

shapes = st.tuples(st.integers(1, 12), st.integers(1, 12))


def float_arrays(dtype: str, shape: tuple[int, int], bound: float) -> st.SearchStrategy[np.ndarray]:
    """Arrays of finite floats in ``[-bound, bound]`` (``bound`` up to near the dtype's maximum)."""
    width = 32 if dtype == "float32" else 64
    bound = float(np.dtype(dtype).type(bound))  # hypothesis wants bounds exactly representable at this width
    elements = st.floats(-bound, bound, allow_nan=False, allow_infinity=False, width=width)
    return arrays(np.dtype(dtype), shape, elements=elements)


@st.composite
def logits_and_labels(draw: st.DrawFn, dtype: str) -> tuple[np.ndarray, np.ndarray]:
    shape = draw(shapes)
    logits = draw(float_arrays(dtype, shape, 1e30))
    labels = draw(arrays(np.int64, shape[0], elements=st.integers(0, shape[1] - 1)))
    return logits, labels


# The reference GELU derivative squares z, which overflows to inf (harmlessly: exp(-inf) = 0) above ~1e19 in float32.
@pytest.mark.filterwarnings("ignore:overflow encountered in multiply:RuntimeWarning")
@pytest.mark.parametrize("name", ["sigmoid", "softplus", "silu", "tanh", "elu", "gelu"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@PROPERTY_SETTINGS
@given(data=st.data())
def test_activations_stay_finite_and_match_reference_for_huge_inputs(
    device: str, dtype: str, name: str, data: st.DataObject
) -> None:
    be = fusednn.backend(device)
    z_host = data.draw(float_arrays(dtype, data.draw(shapes), 1e30))
    z = be.asarray(z_host)
    h = be.activation(name, z)
    dz = be.activation_backward(name, z, h, be.asarray(np.ones_like(z_host)))
    h_host, dz_host = be.to_numpy(h), be.to_numpy(dz)
    assert np.all(np.isfinite(h_host)) and np.all(np.isfinite(dz_host))
    if name == "sigmoid":
        assert np.all((h_host >= 0) & (h_host <= 1))
    if name == "softplus":
        assert np.all(h_host >= np.maximum(z_host, 0))
    np.testing.assert_allclose(h_host, REF.activation(name, z_host), **TOLERANCES[dtype])
    np.testing.assert_allclose(
        dz_host,
        REF.activation_backward(name, z_host, REF.activation(name, z_host), np.ones_like(z_host)),
        **TOLERANCES[dtype],
    )


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@PROPERTY_SETTINGS
@given(data=st.data())
def test_softmax_rows_are_distributions_for_any_logits(device: str, dtype: str, data: st.DataObject) -> None:
    be = fusednn.backend(device)
    logits = data.draw(float_arrays(dtype, data.draw(shapes), 1e30))
    p = be.to_numpy(be.softmax(be.asarray(logits)))
    log_p = be.to_numpy(be.log_softmax(be.asarray(logits)))
    assert np.all(np.isfinite(p)) and np.all(p >= 0)
    np.testing.assert_allclose(p.sum(axis=1), 1, rtol=1e-5)
    assert np.all(log_p <= 0) and not np.any(np.isnan(log_p))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@PROPERTY_SETTINGS
@given(data=st.data())
def test_cross_entropy_is_finite_non_negative_and_matches_reference(
    device: str, dtype: str, data: st.DataObject
) -> None:
    be = fusednn.backend(device)
    logits_host, labels_host = data.draw(logits_and_labels(dtype))
    # Keep the loss itself representable: huge logit gaps give losses up to ~1e30, which float32 holds.
    loss, grad = be.softmax_cross_entropy(be.asarray(logits_host), be.asindex(labels_host))
    loss_value, grad_host = be.to_float(loss), be.to_numpy(grad)
    assert np.isfinite(loss_value) and loss_value >= 0
    assert np.all(np.isfinite(grad_host))
    # Each row of (p - onehot) / N sums to 0 and lies in [-1/N, 1/N].
    n = logits_host.shape[0]
    np.testing.assert_allclose(grad_host.sum(axis=1), 0, atol=1e-6 / n)
    assert np.all(np.abs(grad_host) <= 1 / n + 1e-6)
    loss_ref, grad_ref = REF.softmax_cross_entropy(logits_host, labels_host)
    np.testing.assert_allclose(loss_value, float(loss_ref), **TOLERANCES[dtype])
    np.testing.assert_allclose(grad_host, grad_ref, **TOLERANCES[dtype])


@pytest.mark.parametrize("activation", ["relu", "tanh", "identity"])
@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(dims=st.tuples(st.integers(1, 9), st.integers(1, 9), st.integers(1, 9)), seed=st.integers(0, 2**16))
def test_dense_matches_reference_for_any_shape(fast_device: str, activation: str, dims: tuple, seed: int) -> None:
    be = fusednn.backend(fast_device)
    n, n_in, n_out = dims
    rng = np.random.default_rng(seed)
    x, W, b, dy = (rng.standard_normal(s) for s in ((n, n_in), (n_in, n_out), (n_out,), (n, n_out)))
    y_ref, z_ref = REF.dense_forward(x, W, b, activation)
    y, z = be.dense_forward(be.asarray(x), be.asarray(W), be.asarray(b), activation)
    np.testing.assert_allclose(be.to_numpy(y), y_ref, **TOLERANCES["float64"])
    dW, db, dW_ref, db_ref = (
        be.zeros((n_in, n_out), "float64"),
        be.zeros(n_out, "float64"),
        np.zeros((n_in, n_out)),
        np.zeros(n_out),
    )
    dx = be.dense_backward(be.asarray(x), be.asarray(W), z, y, be.asarray(dy), activation, dW, db)
    dx_ref = REF.dense_backward(x, W, z_ref, y_ref, dy, activation, dW_ref, db_ref)
    for actual, expected in ((dx, dx_ref), (dW, dW_ref), (db, db_ref)):
        np.testing.assert_allclose(be.to_numpy(actual), expected, **TOLERANCES["float64"])


@settings(max_examples=50, deadline=None)
@given(n=st.integers(0, 10_000), n_chunks=st.integers(1, 64))
def test_chunk_bounds_partition_the_range_evenly(n: int, n_chunks: int) -> None:
    bounds = [chunk_bounds(n, n_chunks, c) for c in range(n_chunks)]
    assert bounds[0][0] == 0 and bounds[-1][1] == n
    assert all(stop == next_start for (_, stop), (next_start, _) in zip(bounds, bounds[1:], strict=False))
    sizes = [stop - start for start, stop in bounds]
    assert max(sizes) - min(sizes) <= 1
