"""Learning-rate schedules: functions of training progress ``t`` (in epochs, fractional) to a learning rate.

A schedule carries its own base rate, as Keras's and Optax's schedules do, so a run
resumed from a checkpoint with the same arguments sees exactly the same rates. ``fit``
evaluates the schedule before every optimizer step at ``t = epoch + step / steps_per_epoch``
(or once per epoch at ``t = epoch`` with ``schedule_interval="epoch"``) and sets
``optimizer.lr``, so schedules work with every optimizer. Any callable ``t -> lr`` serves;
``fit`` computes an epoch's rates with :func:`learning_rates` before the epoch's first
update, so a rate that is NaN, infinite, negative or not a number stops the run before
it touches the weights, with the epoch and step that asked for it.

Warm-up composes with any decay: ``LinearWarmup(CosineDecay(0.1, epochs=20), epochs=2)``
multiplies the cosine rate by a factor that rises linearly from ``start_factor`` to 1
over the first two epochs.

>>> from fusednn.nn.schedules import CosineDecay, LinearWarmup, StepDecay
>>> StepDecay(0.1, step_epochs=10, gamma=0.5)(25.0)
0.025
>>> schedule = LinearWarmup(CosineDecay(0.1, epochs=10), epochs=2, start_factor=0.5)
>>> round(schedule(1.0), 6)  # halfway through warm-up: 0.75 x the cosine rate at t=1
0.073165
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from .hyperparameters import as_real

ScheduleFn = Callable[[float], float]
"""What ``fit`` accepts as a schedule: ``lr = schedule(t)``."""


def _number(owner: str, name: str, value: Any, requirement: str, holds: Callable[[float], bool]) -> float:
    """``value`` as a float if it is a finite real number for which ``holds``; else a message naming the argument."""
    number = as_real(value)
    if number is None:
        raise TypeError(f"{owner} {name} must be a real number, got {value!r}")
    if not (math.isfinite(number) and holds(number)):
        raise ValueError(f"{owner} {name} must {requirement}, got {number}")
    return number


def _positive(owner: str, name: str, value: Any) -> float:
    return _number(owner, name, value, "be positive and finite", lambda number: number > 0.0)


def learning_rates(schedule: ScheduleFn, epoch: int, updates: int, per_step: bool) -> list[float]:
    """The rate of each optimizer update of epoch ``epoch`` (0-based): ``schedule(epoch + k / updates)``.

    With ``per_step=False`` the one rate ``schedule(epoch)`` governs the whole epoch.

    >>> learning_rates(CosineDecay(0.1, epochs=1), 0, 2, per_step=True)
    [0.1, 0.05]

    Raises:
        ValueError: a rate is NaN, infinite or negative; the message names the epoch and step (1-based).
        TypeError: the schedule returned something that is not a real number.
    """
    times = [epoch + k / updates for k in range(updates)] if per_step else [float(epoch)]
    rates = []
    for k, t in enumerate(times):
        value = schedule(t)
        rate = as_real(value)
        if rate is None or not math.isfinite(rate) or rate < 0.0:
            where = f"epoch {epoch + 1}, step {k + 1}" if per_step else f"epoch {epoch + 1}"
            error = TypeError if rate is None else ValueError
            raise error(
                f"The learning-rate schedule {schedule!r} returned {value!r} for {where} (t={t:g}); "
                "a learning rate must be a finite number >= 0"
            )
        rates.append(rate)
    return rates


class Schedule:
    """Base class: ``schedule(t) -> lr`` for progress ``t >= 0`` in epochs."""

    def __call__(self, t: float) -> float:
        raise NotImplementedError

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({args})"


class Constant(Schedule):
    """The same rate throughout: ``lr(t) = lr``."""

    def __init__(self, lr: float) -> None:
        self.lr = _positive("Constant", "lr", lr)

    def __call__(self, t: float) -> float:
        return self.lr


class StepDecay(Schedule):
    """Multiply the rate by ``gamma`` every ``step_epochs`` epochs (``torch.optim.lr_scheduler.StepLR``).

    ``lr(t) = lr * gamma ** floor(t / step_epochs)``
    """

    def __init__(self, lr: float, step_epochs: float, gamma: float = 0.1) -> None:
        self.lr = _positive("StepDecay", "lr", lr)
        self.step_epochs = _positive("StepDecay", "step_epochs", step_epochs)
        self.gamma = _positive("StepDecay", "gamma", gamma)

    def __call__(self, t: float) -> float:
        return self.lr * self.gamma ** math.floor(t / self.step_epochs)


class CosineDecay(Schedule):
    """Cosine annealing from ``lr`` to ``min_lr`` over ``epochs`` (``CosineAnnealingLR`` without restarts).

    ``lr(t) = min_lr + (lr - min_lr) * (1 + cos(pi * min(t, epochs) / epochs)) / 2``
    """

    def __init__(self, lr: float, epochs: float, min_lr: float = 0.0) -> None:
        self.lr = _positive("CosineDecay", "lr", lr)
        self.epochs = _positive("CosineDecay", "epochs", epochs)
        self.min_lr = _number(
            "CosineDecay", "min_lr", min_lr, f"lie in [0, lr={self.lr}]", lambda number: 0.0 <= number <= self.lr
        )

    def __call__(self, t: float) -> float:
        progress = min(max(t, 0.0), self.epochs) / self.epochs
        return self.min_lr + (self.lr - self.min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


class LinearWarmup(Schedule):
    """Scale another schedule by a factor rising linearly from ``start_factor`` to 1 over ``epochs``.

    ``lr(t) = inner(t) * (start_factor + (1 - start_factor) * min(t / epochs, 1))``

    The linear scaling rule for large batches (Goyal et al., 2017) warms up from the
    base rate to ``k`` times it: ``LinearWarmup(Constant(k * lr), epochs=5, start_factor=1 / k)``.
    ``inner`` may be a number (a constant rate) or any schedule.
    """

    def __init__(self, inner: ScheduleFn | float, epochs: float, start_factor: float = 0.1) -> None:
        self.inner = Constant(inner) if isinstance(inner, (int, float)) else inner
        if not callable(self.inner):
            raise TypeError(f"inner must be a schedule or a number, got {type(inner).__name__}")
        self.epochs = _positive("LinearWarmup", "epochs", epochs)
        self.start_factor = _number(
            "LinearWarmup", "start_factor", start_factor, "lie in (0, 1]", lambda number: 0.0 < number <= 1.0
        )

    def __call__(self, t: float) -> float:
        ramp = min(max(t, 0.0) / self.epochs, 1.0)
        return self.inner(t) * (self.start_factor + (1.0 - self.start_factor) * ramp)


SCHEDULES: dict[str, type[Schedule]] = {"constant": Constant, "step": StepDecay, "cosine": CosineDecay}
"""Decay schedules by the names the command line uses."""
