"""Losses on a model's output, each returning ``(loss, dL/dout)`` in one fused backend call.

Every loss averages as PyTorch's ``reduction="mean"`` does and returns the loss as a
0-d device array (``float(loss)`` reads it; nothing synchronises before that).
Targets may be NumPy arrays or arrays of the output's device; they are moved there.
Host targets are checked first (:meth:`Loss.check_target`): real numbers, and the
values the loss is defined for (class labels in range, probabilities in ``[0, 1]``,
probability rows that sum to 1). Device targets are not read back for that, so a
step never waits for the GPU; :func:`~fusednn.nn.fit` checks its data once per call.

Which backend computes: the one named by ``device=`` when the loss was built with one;
otherwise the GPU that holds a CUDA output, or the default device (``"cpu"`` or
``$FUSEDNN_DEVICE``) for a host output. Build the loss with ``device=model.device`` to
run it on exactly the model's backend (this matters only to tell ``"numpy"`` from ``"cpu"``).
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np

import fusednn

from ..backends import Backend, backend_of, is_host_array
from ..backends.base import as_real_host_array
from .validation import check_class_labels, check_probabilities, check_probability_rows

Array = Any


class Loss:
    """Base class: ``loss_fn(out, target) -> (loss, dout)``.

    Subclasses set :attr:`name` and :attr:`task` and implement :meth:`_compute`.
    :attr:`task` (``"multiclass"``, ``"binary"`` or ``"regression"``) and
    :meth:`predict_proba` / :meth:`predict_labels` let evaluation code turn outputs
    into predictions without knowing which loss it holds.
    """

    name: str = ""
    task: str = "regression"

    def __init__(self, device: str | None = None) -> None:
        self.device = device

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"

    def backend_for(self, out: Array) -> Backend:
        """The backend that computes on ``out`` (see the module docstring)."""
        if self.device is not None:
            return fusednn.backend(self.device)
        return backend_of(out)

    def __call__(self, out: Array, target: Any, *, check_target: bool = True) -> tuple[Array, Array]:
        """Return ``(loss, dL/dout)``: a 0-d array and an array of ``out``'s shape, on ``out``'s device.

        A host ``target`` (a NumPy array or a list) is checked with :meth:`check_target` unless
        ``check_target`` is false, which promises that its values were checked already (``fit``
        and ``evaluate`` check the whole target array once per call, then pass ``False`` per batch).

        Raises:
            ValueError: ``out`` is not 2-D, the target's shape does not fit it, or a host
                target holds values the loss is not defined for.
            TypeError: the target does not hold real numbers (complex, objects, strings...).
        """
        backend = self.backend_for(out)
        out = backend.check(out, "out")
        if out.ndim != 2:
            raise ValueError(f"{type(self).__name__} expects outputs of shape (N, C), got {tuple(out.shape)}")
        host = is_host_array(target) or not hasattr(target, "shape")  # NumPy arrays, lists, scalars
        if host:
            target = as_real_host_array(target, "target")
        if target.ndim == 0 or target.shape[0] != out.shape[0]:
            raise ValueError(
                f"Target has shape {tuple(target.shape)} but the output has {out.shape[0]} rows; "
                "out and target need the same batch size"
            )
        if host and check_target:
            self.check_target(target, out.shape[1])
        return self._compute(backend, out, target)

    def check_target(self, target: np.ndarray, n_outputs: int, name: str = "target") -> None:
        """Check the values of a host target for outputs of ``n_outputs`` columns (shapes are checked later).

        The base class accepts any real values (regression); classification losses
        override it. ``name`` is what the error messages call the target.

        Raises:
            ValueError, TypeError: a value the loss is not defined for, naming its row.
        """

    def _compute(self, backend: Backend, out: Array, target: Any) -> tuple[Array, Array]:
        raise NotImplementedError

    def _same_shape_target(self, backend: Backend, out: Array, target: Any) -> Array:
        """Target as a float array of ``out``'s shape; ``(N,)`` is accepted for one output column."""
        target = backend.asarray(target, dtype=out.dtype, name="target")
        if target.ndim == 1 and out.shape[1] == 1:
            target = target.reshape(out.shape)
        if tuple(target.shape) != tuple(out.shape):
            raise ValueError(f"Target has shape {tuple(target.shape)}; expected {tuple(out.shape)} like the output")
        return target

    def predict_proba(self, out: Array) -> Array:
        """Outputs as the quantity the loss models (probabilities for classification), on the device."""
        return out

    def predict_labels(self, out: Array) -> np.ndarray:
        """Predicted class labels as a NumPy int64 array ``(N,)`` (classification losses only).

        Raises:
            TypeError: the loss is a regression loss.
        """
        raise TypeError(f"{type(self).__name__} is a regression loss; it has no class labels")

    def get_config(self) -> dict[str, Any]:
        """``{"name": ...}``; :func:`get_loss` rebuilds the loss from it."""
        return {"name": self.name}


class MeanSquaredError(Loss):
    """``loss = mean((out - target)^2)`` over every element (``torch.nn.MSELoss``).

    Target: the output's shape, or ``(N,)`` for one output column.
    """

    name = "mse"

    def _compute(self, backend: Backend, out: Array, target: Any) -> tuple[Array, Array]:
        return backend.mean_squared_error(out, self._same_shape_target(backend, out, target))


class MeanAbsoluteError(Loss):
    """``loss = mean(|out - target|)`` over every element (``torch.nn.L1Loss``; gradient 0 where equal).

    Target: the output's shape, or ``(N,)`` for one output column.
    """

    name = "mae"

    def _compute(self, backend: Backend, out: Array, target: Any) -> tuple[Array, Array]:
        return backend.mean_absolute_error(out, self._same_shape_target(backend, out, target))


class BinaryCrossentropy(Loss):
    """Sigmoid + binary cross-entropy on logits ``x`` (``torch.nn.BCEWithLogitsLoss``)::

        loss = mean(max(x, 0) - x * t + log(1 + exp(-|x|)))

    Target: probabilities ``t`` in ``[0, 1]`` of the logits' shape, or ``(N,)`` for one output.
    Host targets outside ``[0, 1]`` are refused: the loss is unbounded below there.
    """

    name = "binary_crossentropy"
    task = "binary"

    def check_target(self, target: np.ndarray, n_outputs: int, name: str = "target") -> None:
        """Refuse targets outside ``[0, 1]`` (see :meth:`Loss.check_target`)."""
        check_probabilities(target, name, self.name)

    def _compute(self, backend: Backend, out: Array, target: Any) -> tuple[Array, Array]:
        return backend.binary_cross_entropy_with_logits(out, self._same_shape_target(backend, out, target))

    def predict_proba(self, out: Array) -> Array:
        """``sigmoid(logits)``."""
        return self.backend_for(out).activation("sigmoid", out)

    def predict_labels(self, out: Array) -> np.ndarray:
        """``1`` where the logit is positive, else ``0``; ``(N,)`` for one output, else ``(N, C)``."""
        labels = (self.backend_for(out).to_numpy(out) > 0).astype(np.int64)
        return labels[:, 0] if labels.ndim == 2 and labels.shape[1] == 1 else labels


class CategoricalCrossentropy(Loss):
    """Softmax + cross-entropy on logits, fused and stable (``torch.nn.CrossEntropyLoss``).

    With ``log p = log_softmax(logits)``, mean over the ``N`` samples:

    * integer labels ``t (N,)``: ``loss = -mean_i log p[i, t_i]``
    * probabilities / one-hot ``t (N, C)``: ``loss = -mean_i sum_c t_ic log p_ic``

    Host targets are checked (:meth:`check_target`): labels must be integers in ``[0, C)``,
    probability rows must lie in ``[0, 1]`` and sum to 1 within
    :func:`~fusednn.nn.validation.probability_sum_tolerance` (float32 rounding). Labels
    already on a GPU are not range-checked, to avoid a device-to-host synchronisation.

    >>> import numpy as np
    >>> from fusednn import nn
    >>> loss, dlogits = nn.CategoricalCrossentropy(device="numpy")(np.zeros((2, 3)), np.array([0, 2]))
    >>> round(float(loss), 6) == round(float(np.log(3)), 6)
    True
    """

    name = "categorical_crossentropy"
    task = "multiclass"

    def check_target(self, target: np.ndarray, n_outputs: int, name: str = "target") -> None:
        """Labels ``(N,)`` must be integers in ``[0, n_outputs)``; rows ``(N, n_outputs)`` distributions."""
        if target.ndim == 1:
            check_class_labels(target, n_outputs, name)
        elif target.shape[1:] == (n_outputs,):  # other shapes: _compute says which shapes it takes
            check_probability_rows(target, name, self.name)

    def _compute(self, backend: Backend, out: Array, target: Any) -> tuple[Array, Array]:
        if target.ndim == 1:
            if is_host_array(target) and target.size:
                # __call__ checked out and the host labels (or fit did, once per call): Backend.trusted's
                # guarantees hold, and the trusted path spares a second pass over the labels.
                return backend.trusted("softmax_cross_entropy")(out, backend.asindex(target))
            return backend.softmax_cross_entropy(out, backend.asindex(target, name="target"))
        target = backend.asarray(target, dtype=out.dtype, name="target")
        if tuple(target.shape) != tuple(out.shape):
            raise ValueError(
                f"Target has shape {tuple(target.shape)}; expected labels ({out.shape[0]},) "
                f"or class probabilities {tuple(out.shape)}"
            )
        return backend.softmax_cross_entropy(out, target)

    def predict_proba(self, out: Array) -> Array:
        """``softmax(logits)`` over the classes."""
        return self.backend_for(out).softmax(out)

    def predict_labels(self, out: Array) -> np.ndarray:
        """``argmax`` over the classes, ``(N,)``."""
        return np.argmax(self.backend_for(out).to_numpy(out), axis=1).astype(np.int64)


LOSSES: dict[str, type[Loss]] = {
    cls.name: cls for cls in (MeanSquaredError, MeanAbsoluteError, BinaryCrossentropy, CategoricalCrossentropy)
}
"""Loss classes by name."""

_ALIASES = {
    "mean_squared_error": "mse",
    "mean_absolute_error": "mae",
    "bce": "binary_crossentropy",
    "cross_entropy": "categorical_crossentropy",
    "sparse_categorical_crossentropy": "categorical_crossentropy",
}


def get_loss(loss: str | dict[str, Any] | Loss, device: str | None = None) -> Loss:
    """Return a loss for a name, a :meth:`Loss.get_config` dict, or a :class:`Loss`.

    Names: ``"mse"``, ``"mae"``, ``"binary_crossentropy"``, ``"categorical_crossentropy"``
    (also ``"mean_squared_error"``, ``"mean_absolute_error"``, ``"bce"``, ``"cross_entropy"``,
    ``"sparse_categorical_crossentropy"``). ``device`` pins the backend that computes; a
    :class:`Loss` is returned as is, or as a copy pinned to ``device`` when it has no device yet.

    >>> get_loss("categorical_crossentropy")
    CategoricalCrossentropy()

    Raises:
        ValueError: unknown name.
        TypeError: ``loss`` is none of the accepted kinds.
    """
    if isinstance(loss, Loss):
        if device is None or loss.device is not None:
            return loss
        pinned = copy.copy(loss)
        pinned.device = device
        return pinned
    name = loss.get("name") if isinstance(loss, dict) else loss
    if not isinstance(name, str):
        raise TypeError(f"Expected a loss name, config dict or nn.Loss, got {type(name).__name__}")
    key = _ALIASES.get(name.lower(), name.lower())
    if key not in LOSSES:
        raise ValueError(f"Unknown loss {name!r}; expected one of {', '.join(LOSSES)}")
    return LOSSES[key](device=device)
