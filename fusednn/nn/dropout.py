""":class:`Dropout`: inverted dropout whose masks are the same on every device."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..backends.base import check_dropout_rate
from .layers import Array, Layer
from .validation import check_seed


class Dropout(Layer):
    """Inverted dropout: in training each element is zeroed with probability ``rate`` and the rest are
    scaled by ``1 / (1 - rate)``; in evaluation the layer is the identity.

    The mask of a training step is a pure function of ``(seed, step, layer)``: Philox 4x32-10
    keyed by ``seed``, counted by the element's index in the batch, the layer's position in
    its model and ``step``, the number of training forward passes this layer has made (see
    :meth:`fusednn.Backend.dropout`). So one seed gives the same masks, hence the same
    training run, on ``"numpy"``, ``"cpu"`` and ``"cuda"``; the step count travels in
    checkpoints, so a resumed run draws the masks an uninterrupted one would have. In
    data-parallel training (``fit(..., distributed=...)``) each rank runs its rows of a batch
    and the model tells the layer where they start, so the ranks draw, between them, the mask
    of one process that trains on the whole batch (:mod:`fusednn.nn.data_parallel`).

    .. warning::
       PyTorch's ``torch.nn.Dropout`` draws its masks from the device's generator, so they
       differ between CPU and CUDA and from these; only the distribution is the same.

    Args:
        rate: probability of dropping an element, ``0 <= rate < 1``.
        seed: key of the masks, an integer in ``[0, 2**64)``.

    Shapes: any ``(N, F)`` → the same shape; the layer has no parameters.

    >>> import numpy as np
    >>> from fusednn import nn
    >>> model = nn.Sequential([nn.Dense(4, 8, activation="relu"), nn.Dropout(0.5), nn.Dense(8, 2)],
    ...                       device="numpy", seed=0)
    >>> x = np.ones((3, 4))
    >>> bool(np.array_equal(model.predict(x), model.predict(x)))  # evaluation: no dropout
    True

    Raises:
        ValueError: ``rate`` is outside ``[0, 1)`` or ``seed`` is negative.
        TypeError: ``rate`` is not a number or ``seed`` not an integer.
    """

    def __init__(self, rate: float, seed: int = 0) -> None:
        super().__init__()
        self.rate = check_dropout_rate(rate)
        checked = check_seed(seed, "Dropout seed")
        if checked is None:
            raise TypeError("Dropout seed must be a non-negative integer, got None")
        if checked >= 2**64:
            raise ValueError(f"Dropout seed must be below 2**64 (the generator's key), got {checked}")
        self.seed = checked
        #: Training forward passes so far: the ``step`` that keys the next mask.
        self.step = 0
        # (training, step, index of the input's first element in its batch) of the last kept forward
        self._kept: tuple[bool, int, int] | None = None

    def __repr__(self) -> str:
        return f"Dropout(rate={self.rate}, seed={self.seed})"

    def _drop_cache(self) -> None:
        self._kept = None

    def _apply(self, x: Array, training: bool, keep: bool, first_row: int) -> Array:
        backend = self._require_backend()
        step = self.step
        first = first_row * math.prod(x.shape[1:])  # the batch's element that is x's first
        if training:
            self.step += 1
        if keep:
            self._kept = (training, step, first)
        if not training or self.rate == 0.0:
            return x
        return backend.dropout(x, self.rate, self.seed, step, self.index, first)

    def _train_without_rows(self) -> None:
        self.step += 1  # the other ranks drew this step's masks for their rows
        self._kept = None

    def forward(self, x: Array, training: bool = True) -> Array:
        """``x`` with this step's mask applied (training), or ``x`` itself (evaluation)."""
        return self._apply(x, training, True, 0)

    def _forward_in_model(self, x: Array, training: bool, keep: bool, first_row: int = 0) -> Array:
        return self._apply(x, training, keep, first_row)

    def backward(self, dy: Array, need_input_grad: bool = True) -> Array | None:
        """``dy`` through the mask of the last forward pass (the identity after an evaluation one).

        Raises:
            RuntimeError: no forward pass since the layer was (re)bound.
        """
        backend = self._require_backend()
        if self._kept is None:
            raise RuntimeError("backward() called before forward(): run forward on a batch first")
        if not need_input_grad:
            return None
        training, step, first = self._kept
        if not training or self.rate == 0.0:
            return dy
        return backend.dropout(dy, self.rate, self.seed, step, self.index, first)

    def state(self) -> dict[str, int]:
        """``{"step": training forward passes so far}``: checkpoints carry it."""
        return {"step": self.step}

    def load_state(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state`.

        Raises:
            ValueError: ``state`` is not ``{"step": integer >= 0}``.
        """
        step = state.get("step") if set(state) == {"step"} else None
        if isinstance(step, bool) or not isinstance(step, (int, np.integer)) or step < 0:
            raise ValueError(f"Dropout state must be {{'step': integer >= 0}}, got {state!r}")
        self.step = int(step)

    def get_config(self) -> dict[str, Any]:
        """Constructor arguments; ``Dropout(**cfg)`` rebuilds the layer (its step count travels in :meth:`state`)."""
        return {"rate": self.rate, "seed": self.seed}
