"""Learning-rate schedules refuse non-finite arguments, and fit refuses a bad rate before the update it would govern."""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pytest

from fusednn import nn
from fusednn.nn import schedules
from fusednn.nn.data import xor

BAD_NUMBERS = [math.nan, math.inf, -math.inf]

# Each schedule argument with a factory that passes it (and valid values for the others).
ARGUMENTS = {
    "Constant lr": lambda v: schedules.Constant(v),
    "StepDecay lr": lambda v: schedules.StepDecay(v, step_epochs=1),
    "StepDecay step_epochs": lambda v: schedules.StepDecay(0.1, step_epochs=v),
    "StepDecay gamma": lambda v: schedules.StepDecay(0.1, step_epochs=1, gamma=v),
    "CosineDecay lr": lambda v: schedules.CosineDecay(v, epochs=2),
    "CosineDecay epochs": lambda v: schedules.CosineDecay(0.1, epochs=v),
    "CosineDecay min_lr": lambda v: schedules.CosineDecay(0.1, epochs=2, min_lr=v),
    "LinearWarmup epochs": lambda v: schedules.LinearWarmup(0.1, epochs=v),
    "LinearWarmup start_factor": lambda v: schedules.LinearWarmup(0.1, epochs=1, start_factor=v),
    "LinearWarmup inner": lambda v: schedules.LinearWarmup(v, epochs=1),
}


@pytest.mark.parametrize("value", BAD_NUMBERS, ids=str)
@pytest.mark.parametrize("argument", list(ARGUMENTS))
def test_schedules_refuse_non_finite_arguments(argument: str, value: float) -> None:
    owner, name = argument.split()
    name = "lr" if name == "inner" else name  # a number as LinearWarmup's inner is a Constant's lr
    owner = "Constant" if argument == "LinearWarmup inner" else owner
    with pytest.raises(ValueError, match=rf"^{owner} {name} must .*, got {value}$"):
        ARGUMENTS[argument](value)


@pytest.mark.parametrize("argument", [a for a in ARGUMENTS if a != "LinearWarmup inner"])
def test_schedules_refuse_arguments_that_are_not_numbers(argument: str) -> None:
    with pytest.raises(TypeError, match=r"must be a real number, got '0.5'$"):
        ARGUMENTS[argument]("0.5")


def fit_with(schedule, interval: str = "step", epochs: int = 3, **kwargs):
    """Fit xor for ``epochs`` (4 updates per epoch) with ``schedule``; returns the model and the call's outcome."""
    data = xor(rows=64, seed=0)
    model = nn.MLP([2, 4, 2], device="numpy", seed=0)
    call = dict(optimizer="sgd", lr=0.1, epochs=epochs, batch_size=16, schedule=schedule, progress=False)
    call.update(schedule_interval=interval, **kwargs)
    return model, lambda: nn.fit(model, data.x, data.y, **call)


@pytest.mark.parametrize(
    ("value", "error"),
    [
        (math.nan, ValueError),
        (math.inf, ValueError),
        (-0.01, ValueError),
        (None, TypeError),
        ("0.1", TypeError),
        (0.1j, TypeError),
        (np.array([0.1]), TypeError),
    ],
    ids=repr,
)
def test_fit_refuses_a_bad_rate_before_the_update_it_governs(value, error) -> None:
    """Epoch 2 (0-based 1), step 3 gets ``value``: fit stops before epoch 2's first update, naming both."""

    def schedule(t: float):
        return value if t == 1.5 else 0.1

    model, run = fit_with(schedule)
    reference, run_reference = fit_with(lambda t: 0.1, epochs=1)
    run_reference()
    expected = rf"returned {re.escape(repr(value))} for epoch 2, step 3 \(t=1.5\); a learning rate must be"
    with pytest.raises(error, match=expected):
        run()
    assert model.epochs_trained == 1
    for ours, after_one_epoch in zip(model.get_weights(), reference.get_weights(), strict=True):
        np.testing.assert_array_equal(ours, after_one_epoch)  # epoch 2 never started updating


def test_fit_names_the_epoch_of_a_bad_per_epoch_rate() -> None:
    model, run = fit_with(lambda t: -1.0 if t >= 2 else 0.1, interval="epoch")
    with pytest.raises(ValueError, match=r"returned -1.0 for epoch 3 \(t=2\)"):
        run()
    assert model.epochs_trained == 2


def test_a_bad_rate_mid_run_says_what_the_checkpoint_holds(tmp_path: Path) -> None:
    path = tmp_path / "run.npz"
    _, run = fit_with(lambda t: math.nan if t >= 2 else 0.1, checkpoint=path)
    with pytest.raises(ValueError, match=rf"epoch 3, step 1 .*; {str(path)!r} still holds epoch 2, the last this run"):
        run()
    assert nn.load(path, device="numpy").epoch == 2


def test_a_schedule_that_reaches_zero_trains_and_checkpoints(tmp_path: Path) -> None:
    """CosineDecay ends at lr=0 (as torch's CosineAnnealingLR does): a valid rate, saved and loaded."""
    path = tmp_path / "run.npz"
    model, run = fit_with(schedules.CosineDecay(0.1, epochs=2), checkpoint=path)
    run()
    restored = nn.load(path, device="numpy")
    assert restored.optimizer.lr == 0.0 and restored.epoch == 3


def test_learning_rates_calls_the_schedule_once_per_update_at_the_fractional_epoch() -> None:
    seen: list[float] = []
    rates = schedules.learning_rates(lambda t: seen.append(t) or t / 10, 2, 4, per_step=True)
    assert seen == [2.0, 2.25, 2.5, 2.75] and rates == [0.2, 0.225, 0.25, 0.275]
    assert schedules.learning_rates(lambda t: 1, 5, 4, per_step=False) == [1.0]
