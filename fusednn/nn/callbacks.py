"""What a training run reports and how it stops: :class:`History`, :class:`EarlyStopping`, :class:`NonFiniteError`.

:func:`fusednn.nn.fit` fills a :class:`History`, consults an :class:`EarlyStopping`
after every epoch, and raises a :class:`NonFiniteError` when training diverges:
:class:`NonFiniteLossError` for a NaN or infinite loss, :class:`NonFiniteStateError`
for parameters or optimizer state that are no longer finite (which
:func:`fusednn.nn.save` also refuses to write).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from .optim import Optimizer

logger = logging.getLogger("fusednn.training")

Array = Any


_ADVICE = "Try a smaller learning rate or check the data for NaN/inf values"


def _stopped(on_disk: str) -> str:
    """How a divergence message goes on: training stopped, and what the checkpoint file holds, if ``fit`` had one."""
    return f"training stopped; {on_disk}" if on_disk else "training stopped"


class NonFiniteError(RuntimeError):
    """Base class: training met NaN or infinite values (the loss, parameters or optimizer state).

    Catch this one class to treat every kind of divergence alike (the command line exits with status 1).
    """


class NonFiniteLossError(NonFiniteError):
    """Training produced a NaN or infinite loss; ``epoch`` and ``step`` (1-based) say where first.

    ``on_disk``, when :func:`fit` was writing a checkpoint, says which epoch that file still
    holds (the epoch that diverged is never saved); the message ends with it.
    """

    def __init__(self, epoch: int, step: int, value: float, on_disk: str = "") -> None:
        super().__init__(f"Loss became {value} at epoch {epoch}, step {step}; {_stopped(on_disk)}. {_ADVICE}")
        self.epoch, self.step, self.value, self.on_disk = epoch, step, value, on_disk


class NonFiniteStateError(NonFiniteError):
    """Parameters or optimizer state hold NaN or infinite values, so they must not be trained on or saved.

    :func:`fit` checks once per epoch, in the same device-to-host read as the epoch's losses,
    and raises this when the losses were finite but an update (typically the epoch's last)
    overflowed; :func:`fusednn.nn.save` raises it rather than write such values.

    Attributes:
        arrays: what is not finite, e.g. ``["parameters", "optimizer state 'exp_avg_sq'"]``.
        epoch: the 1-based epoch whose updates produced it, or ``None`` when :func:`save` refused.
        on_disk: what the checkpoint file holds now (empty when there was none).
    """

    def __init__(self, message: str, arrays: list[str], epoch: int | None = None, on_disk: str = "") -> None:
        super().__init__(message)
        self.arrays, self.epoch, self.on_disk = list(arrays), epoch, on_disk

    @classmethod
    def in_epoch(cls, arrays: list[str], epoch: int, on_disk: str = "") -> NonFiniteStateError:
        """The error :func:`fit` raises when ``arrays`` stopped being finite during ``epoch`` (1-based)."""
        listed = ", ".join(arrays)
        return cls(
            f"{listed[:1].upper()}{listed[1:]} became NaN or infinite in epoch {epoch} (its losses were finite, "
            f"so an update overflowed); {_stopped(on_disk)}. {_ADVICE}",
            arrays,
            epoch,
            on_disk,
        )

    @classmethod
    def refusing_to_save(cls, path: str, arrays: list[str]) -> NonFiniteStateError:
        """The error :func:`fusednn.nn.save` raises instead of writing ``arrays`` to ``path``."""
        on_disk = f"{path!r} is as it was"
        verb = "holds" if len(arrays) == 1 else "hold"
        return cls(f"Refusing to save {path!r}: {', '.join(arrays)} {verb} NaN or infinite values; {on_disk}", arrays)


@dataclass
class History:
    """What :func:`fit` returns: one value per epoch for each logged quantity.

    Attributes:
        history: ``{"loss": [...], "accuracy": [...], "val_loss": [...], ...}``.
        epoch: the epoch indices (0-based, continuing across resumed runs).
        params: the settings of the run (epochs, batch size, seed, ...).
        optimizer: the optimizer that trained the model (built by ``fit`` when given by name).
    """

    history: dict[str, list[float]] = field(default_factory=dict)
    epoch: list[int] = field(default_factory=list)
    params: dict[str, Any] = field(default_factory=dict)
    optimizer: Optimizer | None = None

    def _record(self, epoch: int, logs: dict[str, float]) -> None:
        self.epoch.append(epoch)
        for key, value in logs.items():
            self.history.setdefault(key, []).append(value)


_MAXIMISED = ("accuracy", "precision", "recall", "f1")


class EarlyStopping:
    """Stop when a monitored value has not improved for ``patience`` epochs, then restore the best weights.

    Args:
        monitor: a key of :attr:`History.history`, e.g. ``"val_loss"`` or ``"val_accuracy"``.
        patience: epochs without improvement to tolerate before stopping.
        mode: ``"min"``, ``"max"`` or ``"auto"`` (max for accuracy/precision/recall/F1, else min).
        min_delta: the least change that counts as an improvement.
        restore_best_weights: copy back the parameters of the best epoch when stopping or finishing,
            and the layers' buffers with them (a batch norm's running statistics of that epoch).

    After :func:`fit`, :attr:`best`, :attr:`best_epoch` and :attr:`stopped_epoch`
    (``None`` if training ran to the end) describe what happened.

    A NaN or infinite value never counts as an improvement (as in Keras, where
    ``nan < best`` is false): such an epoch only uses up patience, and is never
    the best one whose weights are restored. If every epoch's value was
    non-finite, :attr:`best` stays ``None`` and nothing is restored.

    >>> stopper = EarlyStopping(monitor="val_accuracy", patience=3)
    >>> stopper.mode
    'max'
    """

    def __init__(
        self,
        monitor: str = "val_loss",
        patience: int = 5,
        mode: str = "auto",
        min_delta: float = 0.0,
        restore_best_weights: bool = True,
    ) -> None:
        if mode == "auto":
            mode = "max" if any(word in monitor for word in _MAXIMISED) else "min"
        if mode not in ("min", "max"):
            raise ValueError(f"mode must be 'min', 'max' or 'auto', got {mode!r}")
        if isinstance(patience, bool) or not isinstance(patience, int) or patience < 0:
            raise ValueError(f"patience must be a non-negative integer, got {patience!r}")
        if not min_delta >= 0:
            raise ValueError(f"min_delta must be non-negative, got {min_delta}")
        self.monitor, self.patience, self.mode = monitor, patience, mode
        self.min_delta, self.restore_best_weights = float(min_delta), restore_best_weights
        self._reset()

    def _reset(self) -> None:
        self.best: float | None = None
        self.best_epoch: int | None = None
        self.stopped_epoch: int | None = None
        self._wait = 0
        self._best_state: list[Array] | None = None

    def _improved(self, value: float) -> bool:
        if not math.isfinite(value):
            return False
        if self.best is None:
            return True
        if self.mode == "min":
            return value < self.best - self.min_delta
        return value > self.best + self.min_delta

    def _update(self, epoch: int, logs: dict[str, float], state: Sequence[Array]) -> bool:
        """Record the epoch's value; return True when training should stop.

        ``state``: the arrays to restore, the flat parameters then the layers' buffers.
        """
        if self.monitor not in logs:
            raise ValueError(f"EarlyStopping monitors {self.monitor!r}, which is not logged; logged: {sorted(logs)}")
        value = logs[self.monitor]
        if not math.isfinite(value):
            logger.warning("%s is %s after epoch %d: not an improvement", self.monitor, value, epoch + 1)
        if self._improved(value):
            self.best, self.best_epoch, self._wait = value, epoch, 0
            if self.restore_best_weights:
                self._best_state = [a.copy() for a in state]  # device-side copies; nothing crosses to the host
            return False
        self._wait += 1
        if self._wait > self.patience:
            self.stopped_epoch = epoch
            return True
        return False

    def _restore(self, state: Sequence[Array]) -> None:
        if self.restore_best_weights and self._best_state is not None:
            for array, best in zip(state, self._best_state, strict=True):
                array[...] = best
            assert self.best_epoch is not None  # _update sets it whenever it stores _best_state
            logger.info("restored the weights of epoch %d (%s = %.6g)", self.best_epoch + 1, self.monitor, self.best)
