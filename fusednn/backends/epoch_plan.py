"""What a backend needs to compile a whole training epoch: a small record, free of ``nn`` types.

``nn.fit`` describes the model, loss and optimizer it trains as an :class:`EpochPlan`
and asks the backend for a trainer (:meth:`fusednn.backends.Backend.epoch_trainer`).
A backend that can run the plan as one compiled call returns an :class:`EpochTrainer`;
otherwise it returns ``None`` and ``fit`` runs its per-step loop. The plan names
everything by strings and plain numbers, so backends never import ``nn``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

Array = Any


@dataclass(frozen=True)
class LayerPlan:
    """One layer: its kind (``"dense"``), sizes, activation, penalties and where its parameters live.

    ``parameter_offsets`` are the start of each of the layer's parameters in the model's
    flat parameter and gradient buffers (a dense layer: ``(W, b)``, ``W`` as ``(in, out)``).
    """

    kind: str
    in_features: int
    out_features: int
    activation: str
    l1: float
    l2: float
    parameter_offsets: tuple[int, ...]


@dataclass(frozen=True)
class OptimizerPlan:
    """The optimizer: lower-case kind (``"sgd"``, ``"rmsprop"``, ``"adam"``), hyperparameters, state.

    ``hyperparameters`` are those of the optimizer's ``get_config`` (PyTorch's names);
    the learning rate of each update is passed per epoch instead. ``state`` holds the
    optimizer's flat state arrays by PyTorch's names; the trainer updates them in place.
    """

    kind: str
    hyperparameters: Mapping[str, Any]
    state: Mapping[str, Array]


@dataclass(frozen=True)
class EpochPlan:
    """A model, its loss and its optimizer as a backend sees them.

    ``loss`` is a loss name (``"mse"``, ``"mae"``, ``"binary_crossentropy"``,
    ``"categorical_crossentropy"``); ``labels`` says whether the targets are class labels
    ``(N,)`` (categorical cross-entropy only) rather than rows of the output's width.
    ``params`` and ``grads`` are the model's flat buffers, updated in place.
    """

    layers: tuple[LayerPlan, ...]
    loss: str
    labels: bool
    optimizer: OptimizerPlan
    params: Array
    grads: Array
    batch_size: int
    accumulate: int

    @property
    def dtype(self) -> np.dtype:
        """The dtype of the parameters (and of every activation)."""
        return np.dtype(self.params.dtype)


class EpochTrainerUnavailable(RuntimeError):
    """A trainer found, before it changed anything, that it cannot run here after all.

    Raised by an :class:`EpochTrainer` call (e.g. a step that a CUDA driver would not
    capture into a graph) before it touched the parameters, the optimizer state or the
    caller's buffers. ``fit`` then warns once and runs the per-step loop instead.
    """


class EpochTrainer(Protocol):
    """Runs one epoch of an :class:`EpochPlan` in one call, as ``fit``'s per-step loop would.

    Args:
        x: the inputs ``(N, in_features)`` on the backend; ``y`` the targets (labels or rows).
        order: the epoch's row order, a host int64 permutation, or ``None`` for ``0..N-1``.
        learning_rates: the learning rate of each optimizer update of the epoch.
        step_count: the optimizer's step count before the epoch (Adam's ``t`` continues from it).
        step_losses: receives each step's loss (penalties included) in its first ``steps`` entries.
        outputs: receives the model's outputs ``(N, out_features)`` in visiting order, or ``None``.

    The caller updates the optimizer's step count and learning rate afterwards. A call may
    raise :class:`EpochTrainerUnavailable` (having changed nothing): ``fit`` then steps.

    A trainer may need compiling before its first call (seconds, once per process or
    install): :meth:`ready` says whether a call would run at once, and :meth:`compile`
    compiles, or starts compiling in the background, so ``fit`` can train per step meanwhile.
    """

    path: str
    """What ``fit`` reports in ``History.params["epoch_path"]`` for the epochs the trainer runs."""

    def ready(self) -> bool:
        """Whether a call now runs without compiling first."""
        ...

    def compile(self, wait: bool) -> None:
        """Compile what a call needs, now (``wait``), or on a background thread, returning at once."""
        ...

    def __call__(
        self,
        x: Array,
        y: Array,
        order: np.ndarray | None,
        learning_rates: Sequence[float],
        step_count: int,
        step_losses: Array,
        outputs: Array | None,
    ) -> None: ...
