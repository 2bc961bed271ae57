"""The training loop: :func:`fit` and :func:`evaluate` (their reports live in :mod:`fusednn.nn.callbacks`).

Design choices, each so that one code path serves every device:

* Data moves to the model's device once per call (``backend.asarray``/``asindex``);
  mini-batches are gathered there with ``backend.take_rows`` and a device copy of
  the epoch's permutation, so no batch crosses the host boundary.
* The permutation of epoch ``e`` comes from ``numpy.random.default_rng([seed, e])``
  on the host: the same order on every device, and a resumed run (the epoch
  counter travels in checkpoints as ``model.epochs_trained``) draws the order an
  uninterrupted run would have drawn.
* Each step's loss is written into a device vector; the host reads that vector
  once per epoch. That read is where a non-finite loss is detected, so the check
  costs no synchronisation per step yet still names the first bad step. The epoch
  whose loss went bad is never checkpointed, so the last good checkpoint survives.
* Training metrics are computed, as Keras does, on the outputs seen during the
  epoch (kept in a device buffer and read once); validation metrics on a full pass.
"""

from __future__ import annotations

import logging
import math
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
from tqdm.auto import tqdm

from . import metrics as metrics_module
from .callbacks import EarlyStopping, History, NonFiniteLossError
from .checkpoint import save
from .data import train_val_split
from .losses import Loss, get_loss
from .optim import Optimizer, get_optimizer
from .schedules import ScheduleFn

logger = logging.getLogger("fusednn.training")

Array = Any


def _check_positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _resolve_metrics(names: Sequence[str] | None, loss: Loss) -> list[metrics_module.Metric]:
    if isinstance(names, str):
        names = [names]
    resolved = [metrics_module.get_metric(name) for name in names or ()]
    for metric in resolved:
        if metric.on_labels and loss.task == "regression":
            raise ValueError(f"Metric {metric.name!r} needs class labels but loss {loss.name!r} is a regression loss")
    return resolved


class _Data:
    """One data set moved to the model's device once, with the host copies metrics need."""

    def __init__(self, model: Any, loss: Loss, x: Any, y: Any, name: str) -> None:
        x, y = np.asarray(x), np.asarray(y)
        if x.ndim != 2 or x.shape[1] != model.in_features:
            raise ValueError(f"{name} x has shape {x.shape}; the model expects (N, {model.in_features})")
        if y.ndim == 0 or y.shape[0] != x.shape[0]:
            raise ValueError(f"{name} x has {x.shape[0]} rows but y has shape {y.shape}")
        if x.shape[0] == 0:
            raise ValueError(f"{name} data is empty")
        backend = model.backend
        self.n = x.shape[0]
        self.y_host = y
        if loss.task == "multiclass" and y.ndim == 1:
            if y.dtype.kind not in "iu" and not (y.dtype.kind == "f" and np.array_equal(y, np.round(y))):
                raise TypeError(f"{name} class labels must be integers, got dtype {y.dtype.name!r}")
            if y.min() < 0 or y.max() >= model.out_features:
                raise ValueError(
                    f"{name} class labels must lie in [0, {model.out_features}) for a model with "
                    f"{model.out_features} outputs, got {y.min()}..{y.max()}"
                )
            self.y = backend.asindex(y)
        else:
            self.y = backend.asarray(y, dtype=model.dtype)
        self.x = backend.asarray(x, dtype=model.dtype)


def _epoch_logs(
    loss: Loss, metric_list: list[metrics_module.Metric], outputs: Array, y_true: np.ndarray, backend: Any
) -> dict[str, float]:
    """Metric values of outputs (device) against host targets."""
    logs: dict[str, float] = {}
    if not metric_list:
        return logs
    labels: tuple[np.ndarray, np.ndarray] | None = None  # (true, predicted), computed once if a metric asks
    values = None
    for metric in metric_list:
        if metric.on_labels:
            if labels is None:
                labels = (metrics_module.scores_to_labels(y_true, threshold=0.5), loss.predict_labels(outputs))
            logs[metric.name] = metric.fn(*labels)
        else:
            if values is None:
                values = backend.to_numpy(loss.predict_proba(outputs))
            logs[metric.name] = metric.fn(y_true, values)
    return logs


def _forward(model: Any, x: Array) -> Array:
    """Forward pass that keeps nothing for backward (evaluation)."""
    for layer in model.layers:
        x = layer.forward(x, keep=False)
    return x


def _has_penalty(model: Any) -> bool:
    return any(layer.has_penalty for layer in model.layers)


def _evaluate_data(
    model: Any, loss: Loss, data: _Data, metric_list: list[metrics_module.Metric], batch_size: int
) -> dict[str, float]:
    with model.backend.activate():  # the loop writes into device buffers directly
        return _evaluate_on_device(model, loss, data, metric_list, batch_size)


def _evaluate_on_device(
    model: Any, loss: Loss, data: _Data, metric_list: list[metrics_module.Metric], batch_size: int
) -> dict[str, float]:
    backend = model.backend
    steps = math.ceil(data.n / batch_size)
    step_losses = backend.zeros(steps, model.dtype)
    outputs = backend.empty((data.n, model.out_features), model.dtype) if metric_list else None
    for i in range(steps):
        a, b = i * batch_size, min(data.n, (i + 1) * batch_size)
        out = _forward(model, data.x[a:b])
        step_losses[i] = loss(out, data.y[a:b])[0]
        if outputs is not None:
            outputs[a:b] = out
    sizes = np.full(steps, batch_size, dtype=np.float64)
    sizes[-1] = data.n - (steps - 1) * batch_size
    value = float(np.dot(backend.to_numpy(step_losses).astype(np.float64), sizes) / data.n)
    if _has_penalty(model):
        value += backend.to_float(model.regularization_loss())
    logs = {"loss": value}
    if outputs is not None:
        logs.update(_epoch_logs(loss, metric_list, outputs, data.y_host, backend))
    return logs


def evaluate(
    model: Any,
    x: Any,
    y: Any,
    loss: str | Loss = "categorical_crossentropy",
    metrics: Sequence[str] | None = None,
    batch_size: int = 4096,
) -> dict[str, float]:
    """The mean loss (plus any L1/L2 penalty) and ``metrics`` of ``model`` on ``(x, y)``.

    Returns ``{"loss": ..., "<metric>": ...}`` as Python floats. The data moves to
    the model's device once and is processed in batches of ``batch_size`` rows.

    >>> import numpy as np
    >>> from fusednn import nn
    >>> model = nn.MLP([2, 4, 2], device="numpy", seed=0)
    >>> sorted(nn.evaluate(model, np.zeros((3, 2)), np.array([0, 1, 1]), metrics=["accuracy"]))
    ['accuracy', 'loss']
    """
    loss_fn = get_loss(loss, device=model.device)
    metric_list = _resolve_metrics(metrics, loss_fn)
    return _evaluate_data(
        model,
        loss_fn,
        _Data(model, loss_fn, x, y, "evaluation"),
        metric_list,
        _check_positive_int("batch_size", batch_size),
    )


@dataclass
class _Loop:
    """Everything one epoch of training needs, fixed for a :func:`fit` call."""

    model: Any
    loss: Loss
    optimizer: Optimizer
    data: _Data
    batch_size: int
    accumulate: int
    seed: int
    shuffle: bool
    schedule: ScheduleFn | None
    schedule_per_step: bool
    metric_list: list[metrics_module.Metric]

    def run_epoch(self, epoch: int, bar: Any) -> dict[str, float]:
        """Train one epoch; returns its logs. The loop's direct array arithmetic runs on the model's device."""
        with self.model.backend.activate():
            return self._run_epoch(epoch, bar)

    def _run_epoch(self, epoch: int, bar: Any) -> dict[str, float]:
        model, backend, data, batch = self.model, self.model.backend, self.data, self.batch_size
        params = model.parameters()
        steps = math.ceil(data.n / batch)
        updates = math.ceil(steps / self.accumulate)
        order = np.random.default_rng([self.seed, epoch]).permutation(data.n) if self.shuffle else None
        index = backend.asindex(order) if self.shuffle else None  # one host-to-device copy per epoch
        step_losses = backend.zeros(steps, model.dtype)
        outputs = backend.empty((data.n, model.out_features), model.dtype) if self.metric_list else None
        penalty = _has_penalty(model)
        accumulated = backend.zeros(params.size, model.dtype) if self.accumulate > 1 else None
        group_rows = 0
        if self.schedule is not None and not self.schedule_per_step:
            self.optimizer.lr = float(self.schedule(float(epoch)))
        for i in range(steps):
            a, b = i * batch, min(data.n, (i + 1) * batch)
            if index is None:
                xb, yb = data.x[a:b], data.y[a:b]
            else:
                rows = index[a:b]
                xb, yb = backend.take_rows(data.x, rows), backend.take_rows(data.y, rows)
            first_in_group = i % self.accumulate == 0
            if first_in_group:
                group_rows = min(data.n, a + self.accumulate * batch) - a
                if self.schedule is not None and self.schedule_per_step:
                    self.optimizer.lr = float(self.schedule(epoch + (i // self.accumulate) / updates))
            out = model.forward(xb)
            value, dout = self.loss(out, yb)
            if penalty:
                value = value + model.regularization_loss()
            step_losses[i] = value
            if outputs is not None:
                outputs[a:b] = out
            model.backward(dout, need_input_grad=False)
            if accumulated is not None:
                # Mean-reduced losses: weigh each micro-batch's gradient by its share of the group's rows,
                # so k micro-batches equal one batch k times larger.
                share = (b - a) / group_rows
                if first_in_group:
                    accumulated[...] = params.grad
                    accumulated *= share
                else:
                    accumulated += params.grad * share
                if i % self.accumulate == self.accumulate - 1 or b == data.n:
                    params.grad[...] = accumulated
                    self.optimizer.step()
            else:
                self.optimizer.step()
            bar.update(1)
        return self._epoch_end(epoch, step_losses, outputs, order)

    def _epoch_end(self, epoch: int, step_losses: Array, outputs: Array | None, order: Any) -> dict[str, float]:
        backend, data, batch = self.model.backend, self.data, self.batch_size
        losses = backend.to_numpy(step_losses).astype(np.float64)  # the one read of the epoch
        bad = np.flatnonzero(~np.isfinite(losses))
        if bad.size:
            raise NonFiniteLossError(epoch + 1, int(bad[0]) + 1, float(losses[bad[0]]))
        sizes = np.full(losses.shape[0], batch, dtype=np.float64)
        sizes[-1] = data.n - (losses.shape[0] - 1) * batch
        logs = {"loss": float(np.dot(losses, sizes) / data.n)}
        if outputs is not None:
            y_seen = data.y_host if order is None else data.y_host[order]
            logs.update(_epoch_logs(self.loss, self.metric_list, outputs, y_seen, backend))
        return logs


def _validation(
    validation_data: tuple[Any, Any] | None, validation_split: float | None, x: Any, y: Any, seed: int
) -> tuple[Any, Any, tuple[Any, Any] | None]:
    if validation_data is not None and validation_split is not None:
        raise ValueError("Pass either validation_data or validation_split, not both")
    if validation_split is not None:
        x_train, y_train, x_val, y_val = train_val_split(x, y, validation_split, seed=seed)
        return x_train, y_train, (x_val, y_val)
    if validation_data is not None:
        if not isinstance(validation_data, (tuple, list)) or len(validation_data) != 2:
            raise ValueError("validation_data must be a pair (x_val, y_val)")
        return x, y, tuple(validation_data)
    return x, y, None


def fit(
    model: Any,
    x: Any,
    y: Any,
    loss: str | Loss = "categorical_crossentropy",
    optimizer: str | Optimizer = "adam",
    *,
    optimizer_kwargs: dict[str, Any] | None = None,
    lr: float | None = None,
    epochs: int = 1,
    batch_size: int = 32,
    validation_data: tuple[Any, Any] | None = None,
    validation_split: float | None = None,
    metrics: Sequence[str] | None = None,
    shuffle: bool = True,
    seed: int | None = 0,
    progress: bool = True,
    early_stopping: EarlyStopping | None = None,
    checkpoint: str | os.PathLike | None = None,
    checkpoint_extra: dict[str, Any] | None = None,
    checkpoint_overwrite: bool = False,
    schedule: ScheduleFn | None = None,
    schedule_interval: str = "step",
    accumulate: int = 1,
    eval_batch_size: int = 4096,
) -> History:
    """Train ``model`` on ``(x, y)`` for ``epochs`` more epochs with mini-batch gradient descent.

    Args:
        model: a :class:`~fusednn.nn.Sequential` (or :class:`~fusednn.nn.MLP`).
        x, y: host arrays; ``x (N, in_features)``, ``y`` class labels ``(N,)``, one-hot/probability
            rows ``(N, C)`` or regression targets, as the loss expects.
        loss: a loss name (``"categorical_crossentropy"``, ``"binary_crossentropy"``, ``"mse"``, ``"mae"``)
            or an :class:`~fusednn.nn.Loss`.
        optimizer: an optimizer over ``model.parameters()``, or a name (``"sgd"``, ``"rmsprop"``,
            ``"adam"``) built with ``optimizer_kwargs`` and ``lr``.
        epochs: how many epochs to run now. The epoch counter ``model.epochs_trained`` continues
            across calls and checkpoints, so fitting 2 epochs, saving, loading and fitting 2 more
            gives the weights of 4 uninterrupted epochs (bit-identical on one device).
        batch_size: rows per mini-batch (per micro-batch with ``accumulate``).
        validation_data / validation_split: a held-out ``(x_val, y_val)``, or the fraction of
            ``(x, y)`` to hold out by a split seeded with ``seed``.
        metrics: names from :data:`fusednn.nn.metrics.METRIC_NAMES`, logged for training and validation.
        shuffle, seed: epoch ``e`` visits the rows in the order ``default_rng([seed, e]).permutation``.
        progress: a tqdm bar per epoch when stderr is a terminal; the same numbers go to the
            ``fusednn.training`` logger at INFO level either way.
        early_stopping: an :class:`EarlyStopping`, consulted after every epoch.
        checkpoint: a path; :func:`fusednn.nn.save` writes the model, optimizer and history there
            after every epoch that ended with a finite loss, plus the JSON values in ``checkpoint_extra``
            (whose ``"history"``, if any, is taken as earlier epochs' and continued).
        checkpoint_overwrite: whether a file already at ``checkpoint`` may be replaced; without it
            :func:`fit` raises ``FileExistsError`` before training.
        schedule, schedule_interval: a learning-rate schedule (see :mod:`fusednn.nn.schedules`)
            that sets ``optimizer.lr`` before every optimizer step (``"step"``) or every epoch (``"epoch"``).
        accumulate: micro-batches per optimizer step; each gradient is weighted by its share of
            the rows, so ``accumulate=k`` equals ``batch_size * k`` without the memory.
        eval_batch_size: rows per batch of the validation pass.

    Returns:
        A :class:`History` with one value per epoch of ``loss``, each metric, and their ``val_`` forms.

    Raises:
        ValueError / TypeError: bad arguments, named with what was expected.
        NonFiniteLossError: the loss became NaN or infinite (names the epoch and step).

    >>> import numpy as np
    >>> from fusednn import nn
    >>> from fusednn.nn.data import xor
    >>> data = xor(rows=256, seed=0)
    >>> model = nn.MLP([2, 16, 2], activation="tanh", device="numpy", seed=0)
    >>> history = nn.fit(model, data.x, data.y, optimizer="adam", lr=0.05, epochs=3, batch_size=32,
    ...                  metrics=["accuracy"], progress=False)
    >>> len(history.history["accuracy"])
    3
    """
    epochs = _check_positive_int("epochs", epochs)
    batch_size = _check_positive_int("batch_size", batch_size)
    accumulate = _check_positive_int("accumulate", accumulate)
    eval_batch_size = _check_positive_int("eval_batch_size", eval_batch_size)
    if schedule_interval not in ("step", "epoch"):
        raise ValueError(f"schedule_interval must be 'step' or 'epoch', got {schedule_interval!r}")
    if schedule is not None and not callable(schedule):
        raise TypeError(f"schedule must be callable (t -> lr), got {type(schedule).__name__}")
    if early_stopping is not None and not isinstance(early_stopping, EarlyStopping):
        raise TypeError(f"early_stopping must be an nn.EarlyStopping, got {type(early_stopping).__name__}")
    if seed is None:
        # SeedSequence() draws its entropy from the OS as one int; the stub's type covers entropy passed in too.
        seed = int(cast(int, np.random.SeedSequence().entropy) % 2**63)
    loss_fn = get_loss(loss, device=model.device)
    metric_list = _resolve_metrics(metrics, loss_fn)
    opt = _build_optimizer(model, optimizer, optimizer_kwargs, lr)

    x_train, y_train, validation = _validation(validation_data, validation_split, x, y, seed)
    train = _Data(model, loss_fn, x_train, y_train, "training")
    val = _Data(model, loss_fn, *validation, "validation") if validation is not None else None
    loop = _Loop(
        model,
        loss_fn,
        opt,
        train,
        batch_size,
        accumulate,
        seed,
        shuffle,
        schedule,
        schedule_interval == "step",
        metric_list,
    )
    first = int(model.epochs_trained)
    last = first + epochs
    history = History(
        params={
            "epochs": epochs,
            "initial_epoch": first,
            "batch_size": batch_size,
            "accumulate": accumulate,
            "steps": math.ceil(train.n / batch_size),
            "samples": train.n,
            "seed": seed,
            "device": model.device,
        },
        optimizer=opt,
    )
    if early_stopping is not None:
        early_stopping._reset()
    show_bar = progress and sys.stderr.isatty()
    for epoch in range(first, last):
        with tqdm(
            total=history.params["steps"], desc=f"epoch {epoch + 1}/{last}", unit="batch", disable=not show_bar
        ) as bar:
            logs = loop.run_epoch(epoch, bar)
            if val is not None:
                val_logs = _evaluate_data(model, loss_fn, val, metric_list, eval_batch_size)
                logs.update({f"val_{key}": value for key, value in val_logs.items()})
            bar.set_postfix({key: f"{value:.4g}" for key, value in logs.items()})
        model.epochs_trained = epoch + 1
        history._record(epoch, logs)
        logger.info("epoch %d/%d: %s", epoch + 1, last, "  ".join(f"{k}={v:.6g}" for k, v in logs.items()))
        stop = early_stopping is not None and early_stopping._update(epoch, logs, model.parameters().data)
        if checkpoint is not None:
            extra = dict(checkpoint_extra or {})
            earlier = extra.pop("history", {})
            merged = {key: list(earlier.get(key, [])) + values for key, values in history.history.items()}
            save(checkpoint, model, opt, history=merged, **extra)
        if stop:
            assert early_stopping is not None  # only an EarlyStopping stops training early
            logger.info("early stopping after epoch %d: %s did not improve", epoch + 1, early_stopping.monitor)
            break
    if early_stopping is not None:
        early_stopping._restore(model.parameters().data)
    return history


def _build_optimizer(
    model: Any, optimizer: str | Optimizer, optimizer_kwargs: dict[str, Any] | None, lr: float | None
) -> Optimizer:
    if isinstance(optimizer, Optimizer):
        if optimizer_kwargs or lr is not None:
            raise ValueError("lr/optimizer_kwargs apply to an optimizer given by name; set them on the optimizer")
        if optimizer.params is not model.parameters():
            raise ValueError("The optimizer updates another model's parameters; build it on model.parameters()")
        return optimizer
    if not isinstance(optimizer, str):
        raise TypeError(f"optimizer must be a name ('sgd', 'rmsprop', 'adam') or an nn.Optimizer, got {optimizer!r}")
    kwargs = dict(optimizer_kwargs or {})
    if lr is not None:
        kwargs["lr"] = lr
    return get_optimizer(optimizer, model.parameters(), **kwargs)
