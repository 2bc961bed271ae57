"""Losses: target forms, outputs on the device, prediction helpers, lookup, and every error."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import fusednn
from fusednn import nn

LOSS_NAMES = ["mse", "mae", "binary_crossentropy", "categorical_crossentropy"]


def logits(device: str, n: int = 4, c: int = 3, dtype: str = "float64"):
    return fusednn.backend(device).asarray(np.random.default_rng(0).normal(size=(n, c)), dtype=dtype)


@pytest.mark.parametrize("name", LOSS_NAMES)
def test_loss_is_a_0d_device_array_and_dout_matches_out(device: str, dtype: str, name: str) -> None:
    be = fusednn.backend(device)
    out = logits(device, dtype=dtype)
    target = np.array([0, 2, 1, 2]) if name == "categorical_crossentropy" else np.full((4, 3), 0.25)
    loss, dout = nn.get_loss(name, device=device)(out, target)
    assert isinstance(loss, be.xp.ndarray) and loss.shape == () and loss.dtype == np.dtype(dtype)
    assert isinstance(dout, be.xp.ndarray) and dout.shape == out.shape and dout.dtype == np.dtype(dtype)
    assert np.isfinite(float(loss))


@pytest.mark.parametrize("name", ["mse", "mae", "binary_crossentropy"])
def test_one_column_outputs_accept_flat_targets(device: str, name: str) -> None:
    out = logits(device, c=1)
    flat, column = np.array([0.0, 1.0, 1.0, 0.0]), np.array([[0.0], [1.0], [1.0], [0.0]])
    loss_fn = nn.get_loss(name, device=device)
    (loss_a, dout_a), (loss_b, dout_b) = loss_fn(out, flat), loss_fn(out, column)
    assert float(loss_a) == float(loss_b)
    be = fusednn.backend(device)
    np.testing.assert_array_equal(be.to_numpy(dout_a), be.to_numpy(dout_b))


def test_categorical_labels_one_hot_and_float_labels_agree(device: str) -> None:
    out = logits(device)
    labels = np.array([0, 2, 1, 2])
    loss_fn = nn.CategoricalCrossentropy(device=device)
    be = fusednn.backend(device)
    results = [loss_fn(out, t) for t in (labels, np.eye(3)[labels], labels.astype(np.float32), be.asindex(labels))]
    for loss, dout in results[1:]:
        np.testing.assert_allclose(float(loss), float(results[0][0]), rtol=1e-12)
        np.testing.assert_allclose(be.to_numpy(dout), be.to_numpy(results[0][1]), rtol=1e-12, atol=1e-15)
    expected = torch.nn.CrossEntropyLoss()(torch.from_numpy(be.to_numpy(out)), torch.from_numpy(labels))
    np.testing.assert_allclose(float(results[0][0]), expected.item(), rtol=1e-12)


def test_categorical_crossentropy_is_stable_for_huge_logits(device: str) -> None:
    be = fusednn.backend(device)
    out = be.asarray(np.array([[1000.0, -1000.0, 0.0], [-1e4, 1e4, 0.0]]))
    loss, dout = nn.CategoricalCrossentropy(device=device)(out, np.array([0, 0]))
    assert float(loss) == pytest.approx(1e4, rel=1e-12)  # -log p for the worst sample / 2, exactly representable
    assert np.all(np.isfinite(be.to_numpy(dout)))


def test_prediction_helpers(device: str) -> None:
    be = fusednn.backend(device)
    raw = np.array([[2.0, -1.0, 0.5], [-3.0, 4.0, 0.0]])
    out = be.asarray(raw)
    cce = nn.CategoricalCrossentropy(device=device)
    proba = be.to_numpy(cce.predict_proba(out))
    np.testing.assert_allclose(proba, torch.softmax(torch.from_numpy(raw), dim=1).numpy(), rtol=1e-12)
    np.testing.assert_array_equal(cce.predict_labels(out), [0, 1])
    assert cce.task == "multiclass"

    bce = nn.BinaryCrossentropy(device=device)
    np.testing.assert_allclose(be.to_numpy(bce.predict_proba(out)), 1 / (1 + np.exp(-raw)), rtol=1e-12)
    np.testing.assert_array_equal(bce.predict_labels(out), (raw > 0).astype(int))
    np.testing.assert_array_equal(bce.predict_labels(be.asarray(raw[:, :1])), [1, 0])
    assert bce.task == "binary"

    mse = nn.MeanSquaredError(device=device)
    assert mse.predict_proba(out) is out and mse.task == "regression"
    with pytest.raises(TypeError, match="MeanSquaredError is a regression loss"):
        mse.predict_labels(out)


def test_unpinned_loss_uses_the_default_device_for_host_arrays(monkeypatch) -> None:
    monkeypatch.setenv("FUSEDNN_DEVICE", "numpy")
    loss_fn = nn.get_loss("mse")
    assert loss_fn.device is None and loss_fn.backend_for(np.zeros((1, 1))) is fusednn.backend("numpy")
    assert nn.get_loss("mse", device="numpy").backend_for(np.zeros((1, 1))) is fusednn.backend("numpy")


def test_get_loss_by_name_alias_config_and_object() -> None:
    assert type(nn.get_loss("categorical_crossentropy")) is nn.CategoricalCrossentropy
    assert type(nn.get_loss("MSE")) is nn.MeanSquaredError
    assert type(nn.get_loss("mean_absolute_error")) is nn.MeanAbsoluteError
    assert type(nn.get_loss("bce")) is nn.BinaryCrossentropy
    loss = nn.BinaryCrossentropy()
    assert nn.get_loss(loss) is loss
    pinned = nn.get_loss(loss, device="numpy")
    assert type(pinned) is nn.BinaryCrossentropy and pinned.device == "numpy" and loss.device is None
    assert nn.get_loss(pinned, device="cpu") is pinned  # an explicit device is kept
    assert type(nn.get_loss(loss.get_config())) is nn.BinaryCrossentropy
    with pytest.raises(ValueError, match="Unknown loss 'hinge'; expected one of mse, mae"):
        nn.get_loss("hinge")
    with pytest.raises(TypeError, match="Expected a loss name, config dict or nn.Loss, got int"):
        nn.get_loss(3)


@pytest.mark.parametrize(
    ("name", "out_shape", "target", "error", "message"),
    [
        ("mse", (4, 3), np.zeros((5, 3)), ValueError, "the output has 4 rows; out and target need the same batch size"),
        ("mse", (4, 3), np.zeros((4, 2)), ValueError, r"Target has shape \(4, 2\); expected \(4, 3\)"),
        ("mae", (4, 3), np.zeros(4), ValueError, r"Target has shape \(4,\); expected \(4, 3\)"),
        ("binary_crossentropy", (4, 2), np.zeros((3, 2)), ValueError, "same batch size"),
        ("categorical_crossentropy", (4, 3), np.array([0, 1, 3, 0]), ValueError, r"labels must lie in \[0, 3\)"),
        ("categorical_crossentropy", (4, 3), np.array([0, -1, 2, 0]), ValueError, "got -1 at row 1"),
        ("categorical_crossentropy", (4, 3), np.array([0, 1.5, 2, 0]), TypeError, "must be integers, got 1.5 at row 1"),
        ("categorical_crossentropy", (4, 3), np.array([0, np.nan, 2, 0]), TypeError, "integers, got nan at row 1"),
        ("categorical_crossentropy", (4, 3), np.array(["a", "b", "c", "d"]), TypeError, "dtype 'str.*strings"),
        # Values the losses are not defined for, refused on the host (accepted silently before).
        ("binary_crossentropy", (4, 1), np.array([0.0, 1.0, 2.0, 0.5]), ValueError, r"2 at row 2; .* in \[0, 1\]"),
        ("binary_crossentropy", (2, 2), np.array([[0.0, 1], [-0.5, 1]]), ValueError, "-0.5 at row 1, column 0"),
        ("binary_crossentropy", (2, 1), np.array([np.nan, 1.0]), ValueError, "nan at row 0"),
        ("categorical_crossentropy", (2, 3), np.array([[1.0, 0, 0], [1, 1, 0]]), ValueError, "row 1 sums to 2;"),
        ("categorical_crossentropy", (2, 3), np.zeros((2, 3)), ValueError, "row 0 sums to 0;"),
        ("categorical_crossentropy", (1, 2), np.array([[1.5, -0.5]]), ValueError, "1.5 at row 0, column 0"),
        # Conversions that would silently change the data.
        ("mse", (2, 1), np.array([1.0 + 2j, 0]), TypeError, "target has dtype 'complex128': complex values"),
        ("mse", (2, 1), np.ma.masked_array([1.0, 0], mask=[0, 1]), ValueError, "target is a masked array with 1"),
        ("mse", (2, 1), np.array([1.0, None]), TypeError, "target has dtype 'object'"),
        ("categorical_crossentropy", (4, 3), np.zeros((4, 2)), ValueError, r"expected labels \(4,\) or class prob"),
        ("categorical_crossentropy", (4, 3), np.array([0, 1, 2]), ValueError, "same batch size"),
        ("categorical_crossentropy", (4, 3), np.float64(1.0), ValueError, "same batch size"),
        ("mse", (4,), np.zeros(4), ValueError, r"expects outputs of shape \(N, C\), got \(4,\)"),
    ],
)
def test_bad_targets_raise(device: str, name: str, out_shape, target, error: type, message: str) -> None:
    out = fusednn.backend(device).asarray(np.zeros(out_shape))
    with pytest.raises(error, match=message):
        nn.get_loss(name, device=device)(out, target)


@pytest.mark.parametrize(
    ("name", "target"),
    [
        ("binary_crossentropy", np.array([[0.0, 1.0], [0.25, 0.75]])),
        ("categorical_crossentropy", np.array([[0.0, 1.0], [0.25, 0.75]])),
        # float32 rounding: a float32 softmax's rows, cast to float64, miss 1 by about C * eps(float32)
        ("categorical_crossentropy", np.full((2, 7), 1 / 7, dtype=np.float32).astype(np.float64)),
        ("mse", np.ma.masked_array([[0.5, 2.0], [1.0, -3.0]])),  # masks nothing: its data is used
    ],
)
def test_valid_targets_pass_the_host_checks(name: str, target) -> None:
    out = np.zeros((2, target.shape[1]))
    nn.get_loss(name, device="numpy")(out, target)


def test_output_of_another_backend_is_refused() -> None:
    with pytest.raises(TypeError, match="out must be an array of backend"):
        nn.get_loss("mse", device="numpy")([[1.0]], np.zeros((1, 1)))
