"""fit / evaluate: convergence, the exact loop semantics, accumulation, schedules, early stopping and errors."""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest
import torch
from conftest import TOLERANCES

from fusednn import nn
from fusednn.nn import schedules
from fusednn.nn.callbacks import EarlyStopping
from fusednn.nn.data import load_dataset, one_hot, train_val_split, xor


@pytest.fixture(scope="module")
def digits_split():
    from fusednn.nn.data import StandardScaler

    data = load_dataset("digits")
    x_tr, y_tr, x_va, y_va = train_val_split(data.x, data.y, 0.2, seed=0, stratify=True)
    scaler = StandardScaler().fit(x_tr)
    return scaler.transform(x_tr), y_tr, scaler.transform(x_va), y_va


def test_fit_on_digits_reaches_95_percent(device: str, digits_split) -> None:
    x_tr, y_tr, x_va, y_va = digits_split
    model = nn.MLP([64, 128, 128, 10], device=device, seed=0)
    history = nn.fit(
        model,
        x_tr,
        y_tr,
        optimizer="adam",
        lr=3e-3,
        epochs=20,
        batch_size=256,
        validation_data=(x_va, y_va),
        metrics=["accuracy", "f1"],
        progress=False,
    )
    assert len(history.history["loss"]) == len(history.history["val_accuracy"]) == 20
    assert history.history["val_accuracy"][-1] >= 0.95
    assert history.history["loss"][-1] < history.history["loss"][0]
    final = nn.evaluate(model, x_va, y_va, metrics=["accuracy"])
    assert final["accuracy"] == pytest.approx(history.history["val_accuracy"][-1])


def reference_loop(model, opt, x, y, epochs, batch_size, seed, loss_name="categorical_crossentropy"):
    """The documented semantics spelled out: permutation from (seed, epoch), mean loss weighted by batch size."""
    loss_fn = nn.get_loss(loss_name, device=model.device)
    losses = []
    for epoch in range(epochs):
        order = np.random.default_rng([seed, epoch]).permutation(len(x))
        total = 0.0
        for start in range(0, len(x), batch_size):
            rows = order[start : start + batch_size]
            out = model.forward(x[rows])
            loss, dout = loss_fn(out, y[rows])
            total += float(loss) * len(rows)
            model.backward(dout, need_input_grad=False)
            opt.step()
        losses.append(total / len(x))
    return losses


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_fit_matches_the_documented_loop_exactly(optimizer: str) -> None:
    data = xor(rows=70, seed=1)
    models = [nn.MLP([2, 8, 2], activation="tanh", device="numpy", dtype="float64", seed=0) for _ in range(2)]
    opts = [nn.get_optimizer(optimizer, m.parameters(), lr=0.05) for m in models]
    history = nn.fit(models[0], data.x, data.y, optimizer=opts[0], epochs=3, batch_size=16, seed=7, progress=False)
    expected = reference_loop(models[1], opts[1], data.x, data.y, epochs=3, batch_size=16, seed=7)
    for ours, theirs in zip(models[0].get_weights(), models[1].get_weights(), strict=True):
        np.testing.assert_array_equal(ours, theirs)
    np.testing.assert_allclose(history.history["loss"], expected, rtol=1e-12)
    assert history.epoch == [0, 1, 2] and models[0].epochs_trained == 3


def test_fast_device_trains_like_the_reference(fast_device: str, dtype: str) -> None:
    data = xor(rows=100, seed=2)
    histories, weights = [], []
    for device in ("numpy", fast_device):
        model = nn.MLP([2, 16, 2], activation="relu", device=device, dtype=dtype, seed=0)
        histories.append(nn.fit(model, data.x, data.y, lr=0.01, epochs=2, batch_size=16, progress=False).history)
        weights.append(model.get_weights())
    tol = {"float32": {"rtol": 1e-4, "atol": 1e-5}, "float64": TOLERANCES["float64"]}[dtype]
    np.testing.assert_allclose(histories[1]["loss"], histories[0]["loss"], **tol)
    for ours, reference in zip(weights[1], weights[0], strict=True):
        np.testing.assert_allclose(ours, reference, **tol)


@pytest.mark.parametrize("rows", [96, 100])  # 100: the last group is one short micro-batch
@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_gradient_accumulation_equals_a_larger_batch(rows: int, optimizer: str) -> None:
    data = xor(rows=rows, seed=3)
    weights = []
    for batch_size, accumulate in ((32, 1), (8, 4)):
        layers = [nn.Dense(2, 8, activation="tanh", l2=1e-3), nn.Dense(8, 2)]
        model = nn.Sequential(layers, device="numpy", dtype="float64", seed=0)
        nn.fit(
            model,
            data.x,
            data.y,
            optimizer=optimizer,
            lr=0.05,
            epochs=2,
            batch_size=batch_size,
            accumulate=accumulate,
            progress=False,
        )
        weights.append(model.get_weights())
    for accumulated, big in zip(weights[1], weights[0], strict=True):
        np.testing.assert_allclose(accumulated, big, rtol=1e-10, atol=1e-12)


@pytest.mark.filterwarnings("ignore:invalid value:RuntimeWarning", "ignore:overflow:RuntimeWarning")  # the point
def test_non_finite_loss_names_epoch_and_step() -> None:
    data = xor(rows=100, seed=4)
    targets = one_hot(data.y, 2)
    x = data.x.copy()
    # Finite data (NaN/inf is refused up front) whose squared error overflows float32:
    # row 70 falls in the third batch of 32 when not shuffled.
    x[70] = 1e20
    model = nn.MLP([2, 4, 2], device="numpy", seed=0)
    nn.fit(model, data.x, targets, loss="mse", epochs=1, batch_size=32, progress=False)
    with pytest.raises(nn.NonFiniteLossError, match="epoch 2, step 3") as caught:
        nn.fit(model, x, targets, loss="mse", epochs=1, batch_size=32, shuffle=False, progress=False)
    assert (caught.value.epoch, caught.value.step) == (2, 3)
    assert isinstance(caught.value, RuntimeError)
    assert model.epochs_trained == 1  # the failed epoch is not counted


def test_early_stopping_restores_the_best_weights() -> None:
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(64, 4)), rng.integers(0, 2, 64)
    x_val, y_val = rng.normal(size=(64, 4)), rng.integers(0, 2, 64)  # unrelated labels: val loss rises
    model = nn.MLP([4, 64, 2], device="numpy", dtype="float64", seed=0)
    stopper = EarlyStopping(monitor="val_loss", patience=2)
    history = nn.fit(
        model,
        x,
        y,
        lr=0.05,
        epochs=50,
        batch_size=16,
        validation_data=(x_val, y_val),
        early_stopping=stopper,
        progress=False,
    )
    val_loss = history.history["val_loss"]
    assert stopper.stopped_epoch is not None and len(val_loss) < 50
    assert stopper.best_epoch == int(np.argmin(val_loss))
    assert len(val_loss) == stopper.best_epoch + 1 + stopper.patience + 1
    assert nn.evaluate(model, x_val, y_val)["loss"] == pytest.approx(min(val_loss), rel=1e-12)


def test_early_stopping_decisions() -> None:
    stopper = EarlyStopping(monitor="val_accuracy", patience=1, min_delta=0.01)
    weights = np.zeros(3)
    assert stopper.mode == "max"
    decisions = [stopper._update(e, {"val_accuracy": v}, weights) for e, v in enumerate([0.5, 0.6, 0.605, 0.59])]
    assert decisions == [False, False, False, True]
    assert (stopper.best, stopper.best_epoch, stopper.stopped_epoch) == (0.6, 1, 3)
    assert EarlyStopping(monitor="loss").mode == "min"
    with pytest.raises(ValueError, match="'val_f1', which is not logged"):
        EarlyStopping(monitor="val_f1")._update(0, {"loss": 1.0}, weights)


def test_schedules_match_torch() -> None:
    def torch_rates(make_scheduler, epochs):
        param = torch.nn.Parameter(torch.zeros(1))
        opt = torch.optim.SGD([param], lr=0.1)
        scheduler = make_scheduler(opt)
        rates = []
        for _ in range(epochs):
            rates.append(opt.param_groups[0]["lr"])
            opt.step()
            scheduler.step()
        return rates

    step = torch_rates(lambda o: torch.optim.lr_scheduler.StepLR(o, step_size=3, gamma=0.5), 10)
    np.testing.assert_allclose([schedules.StepDecay(0.1, 3, 0.5)(t) for t in range(10)], step, rtol=1e-12)
    cosine = torch_rates(lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=8, eta_min=0.01), 9)
    np.testing.assert_allclose([schedules.CosineDecay(0.1, 8, 0.01)(t) for t in range(9)], cosine, rtol=1e-10)
    linear = torch_rates(lambda o: torch.optim.lr_scheduler.LinearLR(o, start_factor=0.25, total_iters=4), 7)
    warmup = schedules.LinearWarmup(schedules.Constant(0.1), epochs=4, start_factor=0.25)
    np.testing.assert_allclose([warmup(t) for t in range(7)], linear, rtol=1e-12)
    assert schedules.LinearWarmup(0.2, epochs=2, start_factor=0.5)(1.0) == pytest.approx(0.15)


@pytest.mark.parametrize(("interval", "accumulate"), [("step", 1), ("step", 2), ("epoch", 1)])
def test_fit_sets_lr_from_the_schedule(interval: str, accumulate: int) -> None:
    data = xor(rows=40, seed=5)
    calls: list[float] = []

    def schedule(t: float) -> float:
        calls.append(t)
        return 0.01 * (1 + t)

    model = nn.MLP([2, 4, 2], device="numpy", seed=0)
    history = nn.fit(
        model,
        data.x,
        data.y,
        optimizer="sgd",
        epochs=2,
        batch_size=10,
        accumulate=accumulate,
        schedule=schedule,
        schedule_interval=interval,
        progress=False,
    )
    updates = 4 // accumulate if interval == "step" else 1
    expected = [epoch + j / updates for epoch in range(2) for j in range(updates)]
    assert calls == pytest.approx(expected)
    assert history.optimizer.lr == pytest.approx(0.01 * (1 + expected[-1]))
    assert history.optimizer.step_count == 2 * (4 // accumulate)


def test_metrics_validation_split_and_logging(caplog: pytest.LogCaptureFixture) -> None:
    data = xor(rows=200, seed=6)
    model = nn.MLP([2, 16, 2], activation="tanh", device="numpy", seed=0)
    with caplog.at_level(logging.INFO, logger="fusednn.training"):
        history = nn.fit(
            model,
            data.x,
            data.y,
            lr=0.02,
            epochs=2,
            batch_size=32,
            validation_split=0.25,
            metrics=["accuracy", "precision", "f1_weighted"],
            progress=True,  # stderr is not a terminal under pytest: no bar, log lines only
        )
    keys = {"loss", "accuracy", "precision", "f1_weighted"}
    assert set(history.history) == keys | {f"val_{k}" for k in keys}
    assert history.params["samples"] == 150
    epoch_lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("epoch ")]
    assert len(epoch_lines) == 2 and "val_accuracy=" in epoch_lines[1]
    _, _, x_val, y_val = train_val_split(data.x, data.y, 0.25, seed=0)
    scores = nn.evaluate(model, x_val, y_val, metrics=["accuracy"], batch_size=7)
    assert scores["loss"] == pytest.approx(history.history["val_loss"][-1], rel=1e-5)
    predicted = model.predict(x_val).argmax(axis=1)
    assert scores["accuracy"] == pytest.approx(np.mean(predicted == y_val))


def test_regression_and_binary_losses() -> None:
    rng = np.random.default_rng(7)
    x = rng.normal(size=(64, 3))
    target = x @ np.array([1.0, -2.0, 0.5])
    model = nn.MLP([3, 1], device="numpy", dtype="float64", seed=0)
    history = nn.fit(model, x, target, loss="mse", lr=0.05, epochs=30, batch_size=16, metrics=["mae"], progress=False)
    assert history.history["loss"][-1] < 0.01 * history.history["loss"][0]
    assert math.isfinite(history.history["mae"][-1])
    labels = (target > 0).astype(np.float64)
    model = nn.MLP([3, 8, 1], device="numpy", seed=0)
    history = nn.fit(
        model, x, labels, loss="binary_crossentropy", lr=0.05, epochs=20, batch_size=16, metrics=["accuracy"]
    )
    assert history.history["accuracy"][-1] > 0.9


@pytest.fixture
def small():
    data = xor(rows=20, seed=0)
    return nn.MLP([2, 4, 2], device="numpy", seed=0), data.x, data.y


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"epochs": 0}, ValueError, "epochs must be a positive integer"),
        ({"batch_size": -1}, ValueError, "batch_size must be a positive integer"),
        ({"accumulate": 0}, ValueError, "accumulate must be a positive integer"),
        ({"validation_split": 0.2, "validation_data": (np.zeros((2, 2)), [0, 1])}, ValueError, "not both"),
        ({"validation_split": 1.5}, ValueError, "strictly between 0 and 1"),
        ({"validation_data": np.zeros((2, 2))}, ValueError, "must be a pair"),
        ({"metrics": ["auc"]}, ValueError, "Unknown metric 'auc'"),
        ({"loss": "mse", "metrics": ["accuracy"]}, ValueError, "'accuracy' compares class labels, but loss 'mse'"),
        (
            {"optimizer": "adagrad"},
            ValueError,
            "Unknown optimizer 'adagrad'; expected one of SGD, RMSprop, Adam, AdamW, LAMB, LARS",
        ),
        ({"optimizer": 3}, TypeError, "optimizer must be a name"),
        ({"early_stopping": "val_loss"}, TypeError, "nn.EarlyStopping"),
        ({"early_stopping": EarlyStopping(monitor="val_loss")}, ValueError, "'val_loss', which is not logged"),
        ({"schedule": 0.1}, TypeError, "schedule must be callable"),
        ({"schedule_interval": "batch"}, ValueError, "'step' or 'epoch'"),
    ],
)
def test_fit_rejects_bad_arguments(small, kwargs, error, match) -> None:
    model, x, y = small
    with pytest.raises(error, match=match):
        nn.fit(model, x, y, progress=False, **kwargs)


def test_fit_rejects_bad_data_and_foreign_optimizers(small) -> None:
    model, x, y = small
    with pytest.raises(ValueError, match=r"training x has shape \(20, 3\); the model expects \(N, 2\)"):
        nn.fit(model, np.zeros((20, 3)), y, progress=False)
    with pytest.raises(ValueError, match="20 rows but y has shape"):
        nn.fit(model, x, y[:5], progress=False)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 2\)"):
        nn.fit(model, x, y + 5, progress=False)
    with pytest.raises(TypeError, match="labels must be integers"):
        nn.fit(model, x, y + 0.5, progress=False)
    other = nn.MLP([2, 4, 2], device="numpy", seed=1)
    with pytest.raises(ValueError, match="another model's parameters"):
        nn.fit(model, x, y, optimizer=nn.SGD(other.parameters()), progress=False)
    with pytest.raises(ValueError, match="optimizer given by name"):
        nn.fit(model, x, y, optimizer=nn.SGD(model.parameters()), lr=0.1, progress=False)
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        nn.evaluate(model, x, y, batch_size=0)
    with pytest.raises(ValueError, match="evaluation data is empty"):
        nn.evaluate(model, np.zeros((0, 2)), np.zeros(0, dtype=int))
    with pytest.raises(ValueError, match="mode must be"):
        EarlyStopping(mode="up")
    with pytest.raises(ValueError, match="patience must be"):
        EarlyStopping(patience=-1)


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: schedules.Constant(0), "lr must be positive"),
        (lambda: schedules.StepDecay(0.1, step_epochs=0), "step_epochs must be positive"),
        (lambda: schedules.CosineDecay(0.1, epochs=5, min_lr=0.2), r"min_lr must lie in \[0, lr=0.1\]"),
        (lambda: schedules.LinearWarmup(0.1, epochs=2, start_factor=0), r"start_factor must lie in \(0, 1\]"),
    ],
)
def test_schedule_errors(make, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        make()
    with pytest.raises(TypeError, match="inner must be a schedule"):
        schedules.LinearWarmup("fast", epochs=1)
