"""The training loop: :func:`fit` and :func:`evaluate` (their reports live in :mod:`fusednn.nn.callbacks`).

Design choices, each so that one code path serves every device:

* Data moves to the model's device once per call (``backend.asarray``/``asindex``);
  mini-batches are gathered there with ``backend.take_rows`` and a device copy of
  the epoch's permutation, so no batch crosses the host boundary.
* The permutation of epoch ``e`` comes from ``numpy.random.default_rng([seed, e])``
  on the host: the same order on every device, and a resumed run (the epoch
  counter travels in checkpoints as ``model.epochs_trained``) draws the order an
  uninterrupted run would have drawn.
* Each step's loss is written into a device vector, followed by one flag per
  parameter/optimizer-state buffer saying whether it is still all finite; the host
  reads that vector once per epoch. That read is where divergence is detected (a
  non-finite loss, named by its first bad step, or an update that overflowed), so
  the check costs no synchronisation per step. An epoch that diverged is never
  checkpointed, and the error says which epoch the checkpoint file still holds.
* A schedule's rates for an epoch are computed on the host before its first update,
  so a rate that is NaN, infinite or negative stops the run before it touches the weights.
* Training metrics are computed, as Keras does, on the outputs seen during the
  epoch (kept in a device buffer and read once); validation metrics on a full pass.
* Where the backend can, a whole epoch runs as one compiled call: ``fit`` describes
  the model, loss and optimizer as an :class:`~fusednn.backends.epoch_plan.EpochPlan`
  (:mod:`fusednn.nn.compiled`) and asks :meth:`~fusednn.backends.Backend.epoch_trainer`
  for a trainer, which takes the same permutation, rates and buffers as the per-step
  loop and fills the same step-loss vector, so everything after the epoch is shared.
  Without a trainer (another backend, a layer, loss or optimizer with no compiled
  form) each step runs from Python, and so do the rest of the epochs when a trainer
  raises :class:`~fusednn.backends.epoch_plan.EpochTrainerUnavailable` (it has changed
  nothing then). ``History.params["epoch_path"]`` says which ran.
* A trainer that must compile first (the cpu epoch kernel, once per install: seconds)
  does so in the background: the epochs run per step until it is ready, from the first
  epoch boundary after (``epoch_path="auto"``). ``epoch_path="compiled"`` waits for it
  instead, so every epoch takes the same path whatever the state of the JIT cache.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import sys
import warnings
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, cast

import numpy as np
from tqdm.auto import tqdm

from ..backends.epoch_plan import EpochTrainer, EpochTrainerUnavailable
from . import metrics as metrics_module
from .callbacks import EarlyStopping, History, NonFiniteLossError, NonFiniteStateError
from .checkpoint import EpochCheckpoints
from .compiled import epoch_plan
from .data import train_val_split
from .data_parallel import DataParallel, data_fingerprint
from .losses import Loss, get_loss
from .optim import Optimizer, get_optimizer
from .schedules import ScheduleFn, learning_rates
from .validation import check_data, check_seed

if TYPE_CHECKING:
    from ..distributed import Communicator

logger = logging.getLogger("fusednn.training")

Array = Any


def _check_positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _resolve_metrics(names: Sequence[str] | None, loss: Loss, n_outputs: int) -> list[metrics_module.Metric]:
    """The metrics by name, checked against the loss before any training, as they are computed for it.

    Label metrics (accuracy, precision, ...) need one class label per sample: not a
    regression loss, nor binary cross-entropy over several outputs (multi-label).
    Value metrics (mae, mse) compare the targets with the loss's probabilities; with
    categorical cross-entropy, integer labels count as one-hot rows.
    """
    if isinstance(names, str):
        names = [names]
    resolved = [metrics_module.get_metric(name) for name in names or ()]
    value_metrics = ", ".join(repr(name) for name in metrics_module.VALUE_METRIC_NAMES)
    for index, metric in enumerate(resolved):
        if metric.on_labels and loss.task == "regression":
            raise ValueError(
                f"Metric {metric.name!r} compares class labels, but loss {loss.name!r} is a regression loss; "
                f"metrics that fit it: {value_metrics}"
            )
        if metric.on_labels and loss.task == "binary" and n_outputs > 1:
            raise ValueError(
                f"Metric {metric.name!r} compares one class label per sample, but loss {loss.name!r} over "
                f"{n_outputs} outputs predicts {n_outputs} independent labels (multi-label); metrics that fit "
                f"it: {value_metrics}, or use one output column"
            )
        if not metric.on_labels and loss.task == "multiclass":
            resolved[index] = replace(metric, fn=metrics_module.with_one_hot_labels(metric.fn))
    return resolved


def _checked(model: Any, loss: Loss, x: Any, y: Any, name: str) -> tuple[np.ndarray, np.ndarray]:
    """``(x, y)`` checked on the host for ``model`` and ``loss`` (see :func:`~fusednn.nn.validation.check_data`)."""
    return check_data(
        x, y, name, in_features=model.in_features, out_features=model.out_features, dtype=model.dtype, loss=loss
    )


class _Data:
    """One data set, checked by :func:`_checked`, moved to the model's device once, with the host copies metrics need.

    Its targets need no further checks: the loops pass ``check_target=False`` to the loss.
    """

    def __init__(self, model: Any, loss: Loss, x: np.ndarray, y: np.ndarray) -> None:
        backend = model.backend
        self.n = x.shape[0]
        self.y_host = y
        #: Whether the targets are class labels ``(N,)`` rather than rows.
        self.labels = loss.task == "multiclass" and y.ndim == 1
        self.y = backend.asindex(y) if self.labels else backend.asarray(y, dtype=model.dtype)
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


def _has_penalty(model: Any) -> bool:
    return any(layer.has_penalty for layer in model.layers)


def _evaluate_data(
    model: Any,
    loss: Loss,
    data: _Data,
    metric_list: list[metrics_module.Metric],
    batch_size: int,
    parallel: DataParallel | None = None,
) -> dict[str, float]:
    with model.backend.activate():  # the loop writes into device buffers directly
        return _evaluate_on_device(model, loss, data, metric_list, batch_size, parallel)


def _evaluate_on_device(
    model: Any,
    loss: Loss,
    data: _Data,
    metric_list: list[metrics_module.Metric],
    batch_size: int,
    parallel: DataParallel | None,
) -> dict[str, float]:
    """The logs of :func:`evaluate`; data-parallel, each rank evaluates its part of the rows and the ranks add up."""
    backend = model.backend
    first, last = (0, data.n) if parallel is None else parallel.rows(0, data.n)
    steps = math.ceil((last - first) / batch_size)
    step_losses = backend.zeros(steps, model.dtype)
    outputs = None
    if metric_list:
        outputs = (backend.empty if parallel is None else backend.zeros)((data.n, model.out_features), model.dtype)
    for i in range(steps):
        a, b = first + i * batch_size, min(last, first + (i + 1) * batch_size)
        out = model._run(data.x[a:b], False, False)  # evaluation mode; _Data checked the input
        step_losses[i] = loss(out, data.y[a:b], check_target=False)[0]
        if outputs is not None:
            outputs[a:b] = out
    sizes = np.full(steps, batch_size, dtype=np.float64)
    if steps:
        sizes[-1] = last - first - (steps - 1) * batch_size
    total = np.dot(backend.to_numpy(step_losses).astype(np.float64), sizes)
    if parallel is not None:
        total = parallel.reduce_host(np.array([total]))[0]
        if outputs is not None:
            parallel.reduce(outputs)
    value = float(total / data.n)
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
    """The mean loss (plus any L1/L2 penalty) and ``metrics`` of ``model`` on ``(x, y)``, in evaluation mode.

    Returns ``{"loss": ..., "<metric>": ...}`` as Python floats. The data is checked
    on the host once (real, finite, targets the loss is defined for; errors name
    ``"evaluation x"``/``"evaluation y"`` and the first bad row), moves to the
    model's device once and is processed in batches of ``batch_size`` rows.

    >>> import numpy as np
    >>> from fusednn import nn
    >>> model = nn.MLP([2, 4, 2], device="numpy", seed=0)
    >>> sorted(nn.evaluate(model, np.zeros((3, 2)), np.array([0, 1, 1]), metrics=["accuracy"]))
    ['accuracy', 'loss']
    """
    loss_fn = get_loss(loss, device=model.device)
    metric_list = _resolve_metrics(metrics, loss_fn, model.out_features)
    batch_size = _check_positive_int("batch_size", batch_size)
    data = _Data(model, loss_fn, *_checked(model, loss_fn, x, y, "evaluation"))
    return _evaluate_data(model, loss_fn, data, metric_list, batch_size)


def _no_checkpoint() -> str:
    return ""


@dataclass
class _Loop:
    """Everything one epoch of training needs, fixed for a :func:`fit` call.

    ``on_disk`` says what the checkpoint file holds, for the messages of errors raised mid-run.
    ``trainer``, when the backend offers one, runs each epoch in one compiled call
    (:meth:`~fusednn.backends.Backend.epoch_trainer`); otherwise every step runs from Python.
    """

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
    on_disk: Callable[[], str] = _no_checkpoint
    trainer: EpochTrainer | None = None
    parallel: DataParallel | None = None
    """Data-parallel: this rank's part of the job (``batch_size`` is then the global micro-batch)."""
    paths: list[str] = field(default_factory=list)
    """The path each epoch took so far (``"per-step"`` or the trainer's ``path``)."""

    def run_epoch(self, epoch: int, bar: Any) -> dict[str, float]:
        """Train one epoch; returns its logs. The loop's direct array arithmetic runs on the model's device."""
        with self.model.backend.activate():
            return self._run_epoch(epoch, bar)

    def _run_epoch(self, epoch: int, bar: Any) -> dict[str, float]:
        trainer = self.trainer
        if trainer is not None and self._trainer_ready(trainer):
            try:
                logs = self._run_compiled_epoch(epoch, bar, trainer)
                self.paths.append(trainer.path)
                return logs
            except EpochTrainerUnavailable as error:
                # Raised before the trainer changed anything: this epoch and the rest run step by step.
                warnings.warn(f"{error}; fit runs the per-step loop instead", RuntimeWarning, stacklevel=4)
                self.trainer = None
        self.paths.append("per-step")
        model, backend, data, batch = self.model, self.model.backend, self.data, self.batch_size
        parallel = self.parallel
        params = model.parameters()
        steps = math.ceil(data.n / batch)
        updates = math.ceil(steps / self.accumulate)
        order = np.random.default_rng([self.seed, epoch]).permutation(data.n) if self.shuffle else None
        index = backend.asindex(order) if self.shuffle else None  # one host-to-device copy per epoch
        # The step losses, then a finite flag for each buffer _epoch_end checks (read in one go).
        step_losses = backend.zeros(steps + len(self._checked_buffers()), model.dtype)
        outputs = None
        if self.metric_list:
            # Data-parallel: each rank fills its rows and the sum over ranks is every row's output.
            outputs = (backend.empty if parallel is None else backend.zeros)((data.n, model.out_features), model.dtype)
        penalty = _has_penalty(model)
        accumulated = backend.zeros(params.size, model.dtype) if self.accumulate > 1 else None
        group_rows = 0
        rates = self._learning_rates(epoch, updates)
        if rates is not None and not self.schedule_per_step:
            self.optimizer.lr = rates[0]
        with self._stops_every_rank():
            for i in range(steps):
                a, b = i * batch, min(data.n, (i + 1) * batch)
                lo, hi = (a, b) if parallel is None else parallel.rows(a, b)  # this rank's rows of the batch
                first_in_group = i % self.accumulate == 0
                if first_in_group:
                    group_rows = min(data.n, a + self.accumulate * batch) - a
                    if rates is not None and self.schedule_per_step:
                        self.optimizer.lr = rates[i // self.accumulate]
                if hi > lo:
                    if index is None:
                        xb, yb = data.x[lo:hi], data.y[lo:hi]
                    else:
                        rows = index[lo:hi]
                        xb, yb = backend.take_rows(data.x, rows), backend.take_rows(data.y, rows)
                    out = model._run(xb, True, True, lo - a)  # training, from batch row lo - a; _Data checked the input
                    value, dout = self.loss(out, yb, check_target=False)  # _Data checked every target once
                    if penalty:
                        value = value + model.regularization_loss()
                    # A rank's mean loss, weighed by its share of the batch: the ranks' sum is the batch's.
                    step_losses[i] = value if parallel is None else value * ((hi - lo) / (b - a))
                    if outputs is not None:
                        outputs[lo:hi] = out
                    model.backward(dout, need_input_grad=False)
                else:  # data-parallel, a short last batch with no rows for this rank: it adds nothing
                    model._train_without_rows()
                    params.grad[...] = 0
                if accumulated is not None:
                    # Mean-reduced losses: weigh each micro-batch's gradient by its share of the group's rows,
                    # so k micro-batches equal one batch k times larger (and N ranks' parts, one N times larger).
                    share = (hi - lo) / group_rows
                    if first_in_group:
                        accumulated[...] = params.grad
                        accumulated *= share
                    else:
                        accumulated += params.grad * share
                    if i % self.accumulate == self.accumulate - 1 or b == data.n:
                        params.grad[...] = accumulated
                        if parallel is not None:
                            parallel.reduce(params.grad)
                        self.optimizer.step()
                else:
                    if parallel is not None:
                        params.grad *= params.dtype.type((hi - lo) / (b - a))
                        parallel.reduce(params.grad)
                    self.optimizer.step()
                if i == 0 and self.trainer is not None:
                    # The per-step kernels have compiled by now, so the trainer's compile does not hold them up.
                    self.trainer.compile(wait=False)
                bar.update(1)
        return self._epoch_end(epoch, steps, step_losses, outputs, order)

    def _stops_every_rank(self) -> AbstractContextManager[Any]:
        """Data-parallel: a failure inside the block aborts the job, as the other ranks may wait in an all-reduce."""
        return contextlib.nullcontext() if self.parallel is None else self.parallel.comm.aborting_on_failure()

    def _trainer_ready(self, trainer: EpochTrainer) -> bool:
        """Whether the trainer runs now; if its background compile failed, drops it (with a warning)."""
        try:
            return trainer.ready()
        except Exception as error:  # a bug of ours, not the user's: train on, per step, and say so
            warnings.warn(
                f"the {trainer.path!r} epoch path failed to compile ({type(error).__name__}: {error}); "
                "fit trains per step instead",
                RuntimeWarning,
                stacklevel=5,
            )
            self.trainer = None
            return False

    def _run_compiled_epoch(self, epoch: int, bar: Any, trainer: EpochTrainer) -> dict[str, float]:
        """The epoch of :meth:`_run_epoch` in one call of the backend's trainer: same order, rates and buffers."""
        model, data, opt = self.model, self.data, self.optimizer
        steps = math.ceil(data.n / self.batch_size)
        updates = math.ceil(steps / self.accumulate)
        order = np.random.default_rng([self.seed, epoch]).permutation(data.n) if self.shuffle else None
        step_losses = model.backend.zeros(steps + len(self._checked_buffers()), model.dtype)
        outputs = model.backend.empty((data.n, model.out_features), model.dtype) if self.metric_list else None
        rates = self._learning_rates(epoch, updates)
        if rates is None:
            per_update = [opt.lr] * updates
        else:
            per_update = rates if self.schedule_per_step else rates[:1] * updates
        trainer(data.x, data.y, order, per_update, opt.step_count, step_losses, outputs)
        opt.step_count += updates
        opt.lr = per_update[-1]  # what the per-step loop leaves set: the last update's rate
        bar.update(steps)
        return self._epoch_end(epoch, steps, step_losses, outputs, order)

    def _checked_buffers(self) -> dict[str, Array]:
        """What must be finite at the end of an epoch for it to be saved, by the name an error gives it."""
        buffers = {"parameters": self.model.parameters().data}
        buffers.update({f"optimizer state {name!r}": state for name, state in self.optimizer.state.items()})
        return buffers

    def _learning_rates(self, epoch: int, updates: int) -> list[float] | None:
        """The schedule's rate for each update of ``epoch`` (one for the epoch with ``schedule_interval="epoch"``)."""
        if self.schedule is None:
            return None
        try:
            return learning_rates(self.schedule, epoch, updates, self.schedule_per_step)
        except (TypeError, ValueError) as error:
            on_disk = self.on_disk()
            if not on_disk:
                raise
            raise type(error)(f"{error}; {on_disk}") from None

    def _epoch_end(
        self, epoch: int, steps: int, step_losses: Array, outputs: Array | None, order: Any
    ) -> dict[str, float]:
        backend, data, batch = self.model.backend, self.data, self.batch_size
        checked = self._checked_buffers()
        backend.write_finite_flags(list(checked.values()), step_losses[steps:])
        read = backend.to_numpy(step_losses).astype(np.float64)  # the one read of the epoch
        parallel = self.parallel
        if parallel is not None:  # the ranks' weighted losses sum to the batches'; each rank's flags count once
            read = parallel.reduce_host(read)
        losses, finite = read[:steps], read[steps:] == (1 if parallel is None else parallel.size)
        bad = np.flatnonzero(~np.isfinite(losses))
        if bad.size:
            raise NonFiniteLossError(epoch + 1, int(bad[0]) + 1, float(losses[bad[0]]), self.on_disk())
        if not finite.all():
            names = [name for name, flag in zip(checked, finite, strict=True) if not flag]
            raise NonFiniteStateError.in_epoch(names, epoch + 1, self.on_disk())
        if parallel is not None:
            parallel.average_buffers(self.model)
            parallel.check_in_sync(self.model, self.optimizer, epoch)
            if outputs is not None:
                parallel.reduce(outputs)
        sizes = np.full(steps, batch, dtype=np.float64)
        sizes[-1] = data.n - (steps - 1) * batch
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
        x_train, y_train, x_val, y_val = train_val_split(x, y, validation_split, seed=seed, name="validation_split")
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
    epoch_path: str = "auto",
    distributed: str | Communicator | None = None,
) -> History:
    """Train ``model`` on ``(x, y)`` for ``epochs`` more epochs with mini-batch gradient descent.

    Args:
        model: a :class:`~fusednn.nn.Sequential` (or :class:`~fusednn.nn.MLP`). Its layers train in
            training mode and validate in evaluation mode, whatever ``model.training`` says (fit leaves it as it was).
        x, y: host arrays; ``x (N, in_features)``, ``y`` class labels ``(N,)``, one-hot/probability
            rows ``(N, C)`` or regression targets, as the loss expects.
        loss: a loss name (``"categorical_crossentropy"``, ``"binary_crossentropy"``, ``"mse"``, ``"mae"``)
            or an :class:`~fusednn.nn.Loss`.
        optimizer: an optimizer over ``model.parameters()``, or a name (``"sgd"``, ``"rmsprop"``,
            ``"adam"``) built with ``optimizer_kwargs`` and ``lr``.
        epochs: how many epochs to run now. The epoch counter ``model.epochs_trained`` continues
            across calls and checkpoints, so fitting 2 epochs, saving, loading and fitting 2 more
            gives the weights of 4 uninterrupted epochs (bit-identical on one device).
        batch_size: rows per mini-batch (per micro-batch with ``accumulate``; per rank with ``distributed``).
        validation_data / validation_split: a held-out ``(x_val, y_val)``, or the fraction of
            ``(x, y)`` to hold out by a split seeded with ``seed``.
        metrics: names from :data:`fusednn.nn.metrics.METRIC_NAMES`, logged for training and validation;
            checked against the loss before training (``"mae"``/``"mse"`` compare probabilities
            with the targets, integer labels counting as one-hot rows).
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
            Each epoch's rates are computed before its first update and must be finite numbers >= 0.
        accumulate: micro-batches per optimizer step; each gradient is weighted by its share of
            the rows, so ``accumulate=k`` equals ``batch_size * k`` without the memory.
        eval_batch_size: rows per batch of the validation pass.
        epoch_path: ``"auto"``: each epoch in one compiled call where the backend offers it, starting
            per step while that compiles in the background (the first cpu ``fit`` of a fresh install:
            seconds), switching at the next epoch boundary; ``"compiled"``: wait for the compile, so
            every epoch is compiled and a run's numbers do not depend on how warm the JIT cache was
            (a ``ValueError`` if there is no compiled form); ``"per-step"``: every step from Python.
        distributed: ``None`` (one process), ``"mpi"``, ``"nccl"`` or a
            :class:`fusednn.distributed.Communicator`: train data-parallel over the ranks of the job
            (``mpiexec -n N python script.py``). ``batch_size`` is then each rank's: every rank takes its
            slice of each global batch of ``N * batch_size`` rows from the one seeded permutation, and one
            all-reduce of the flat gradient buffer per optimizer step gives every rank the update of one
            process with batch ``N * batch_size`` (see :mod:`fusednn.nn.data_parallel`). Weights and optimizer
            state start as rank 0's; losses and metrics are reduced over the ranks, so every rank returns
            the same history; rank 0 alone shows progress, logs and writes ``checkpoint``. The steps run
            per step (the all-reduce runs between them). A rank that fails mid-epoch aborts the job
            with its error (:meth:`fusednn.distributed.Communicator.abort`); errors found while setting up or
            writing a checkpoint are raised on every rank.

    Returns:
        A :class:`History` with one value per epoch of ``loss``, each metric, and their ``val_`` forms.
        ``history.params["epoch_path"]`` says how the epochs ran: ``"compiled"``, each epoch one
        compiled call of the backend (the ``"cpu"`` backend, for :class:`~fusednn.nn.Dense` stacks
        with the built-in losses and optimizers), ``"cuda-graph"``, each step one replayed CUDA
        graph (the ``"cuda"`` backend, for such stacks), ``"per-step"``, each step driven from
        Python (the ``"numpy"`` backend, :class:`~fusednn.nn.Dropout` and :class:`~fusednn.nn.BatchNorm`,
        any layer, loss or optimizer subclass of your own, and a
        CUDA graph that failed to capture, with a ``RuntimeWarning``), or ``"per-step, then
        compiled"`` while the compiled form was still compiling; ``history.params["compiled_epochs"]``
        counts the epochs the backend's trainer ran. All give the same numbers, to rounding.
        ``history.params["ranks"]`` is the number of ranks that trained (1 without ``distributed``);
        ``params["steps"]`` counts the global batches of an epoch.

    Raises:
        ValueError / TypeError: before training, bad arguments, named with what was expected, and
            bad data (complex, masked, non-finite, targets the loss is not defined for), naming
            ``"training x"``, ``"validation y"``, ... and the first bad row; during training, a
            schedule rate that is not a finite number >= 0 (names the epoch and step).
        OSError: the checkpoint destination is unusable (checked before training), or a write
            failed; the message names the path (``FileExistsError`` for a file already there).
        NonFiniteLossError: the loss became NaN or infinite (names the epoch and step).
        NonFiniteStateError: the parameters or optimizer state became NaN or infinite.
            Both are :class:`NonFiniteError`; their message says which epoch the checkpoint holds.

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
    comm = _communicator(distributed, model)
    parallel = None if comm is None else DataParallel(comm)
    ranks = 1 if parallel is None else parallel.size
    with _agreement(comm, "checking fit's arguments"):
        epochs = _check_positive_int("epochs", epochs)
        batch_size = _check_positive_int("batch_size", batch_size)
        accumulate = _check_positive_int("accumulate", accumulate)
        eval_batch_size = _check_positive_int("eval_batch_size", eval_batch_size)
        if epoch_path not in EPOCH_PATHS:
            raise ValueError(f"epoch_path must be one of {EPOCH_PATHS}, got {epoch_path!r}")
        if parallel is not None and epoch_path == "compiled":
            raise ValueError(
                "epoch_path='compiled': data-parallel training all-reduces between steps, so it has no compiled "
                "epochs; use 'auto' or 'per-step'"
            )
        if schedule_interval not in ("step", "epoch"):
            raise ValueError(f"schedule_interval must be 'step' or 'epoch', got {schedule_interval!r}")
        if schedule is not None and not callable(schedule):
            raise TypeError(f"schedule must be callable (t -> lr), got {type(schedule).__name__}")
        if early_stopping is not None and not isinstance(early_stopping, EarlyStopping):
            raise TypeError(f"early_stopping must be an nn.EarlyStopping, got {type(early_stopping).__name__}")
        if checkpoint is None and checkpoint_extra:
            raise ValueError("checkpoint_extra is saved with a checkpoint; pass checkpoint=path too")
        checkpoints = None
        if checkpoint is not None and (comm is None or comm.is_root):  # rank 0 writes the files
            checkpoints = EpochCheckpoints(checkpoint, checkpoint_overwrite, checkpoint_extra)
        seed = check_seed(seed)
        if seed is None:
            # SeedSequence() draws its entropy from the OS as one int; the stub's type covers entropy passed in too.
            seed = int(cast(int, np.random.SeedSequence().entropy) % 2**63)
        loss_fn = get_loss(loss, device=model.device)
        metric_list = _resolve_metrics(metrics, loss_fn, model.out_features)
        opt = _build_optimizer(model, optimizer, optimizer_kwargs, lr)
        # Checked before the split, so an error names the row the user knows and a mask is seen before it is dropped.
        x, y = _checked(model, loss_fn, x, y, "training")
    if comm is not None:
        seed = comm.allgather_object(seed)[0]  # rank 0's, drawn or given: it orders and splits the data
    with _agreement(comm, "preparing the data"):
        # A split's validation rows are checked again below: a fraction of this pass, for one path through _Data.
        x_train, y_train, validation = _validation(validation_data, validation_split, x, y, seed)
        if validation is not None:
            validation = _checked(model, loss_fn, *validation, "validation")
        train = _Data(model, loss_fn, x_train, y_train)
        val = None if validation is None else _Data(model, loss_fn, *validation)
        loop = _Loop(
            model,
            loss_fn,
            opt,
            train,
            batch_size * ranks,
            accumulate,
            seed,
            shuffle,
            schedule,
            schedule_interval == "step",
            metric_list,
            parallel=parallel,
        )
        if checkpoints is not None:
            loop.on_disk = checkpoints.on_disk
        if epoch_path != "per-step" and parallel is None:
            loop.trainer = _trainer(model, loss_fn, opt, batch_size, accumulate, train.labels, epoch_path == "compiled")
    if parallel is not None:
        parallel.check_same("training", _training_facts(loop, epochs, eval_batch_size, x_train, y_train, validation))
        with parallel.comm.aborting_on_failure():  # a rank that fails mid-broadcast leaves the others in it
            parallel.start(model, opt)
    first = int(model.epochs_trained)
    last = first + epochs
    history = History(
        params={
            "epochs": epochs,
            "initial_epoch": first,
            "batch_size": batch_size,
            "accumulate": accumulate,
            "ranks": ranks,
            "steps": math.ceil(train.n / (batch_size * ranks)),
            "samples": train.n,
            "seed": seed,
            "device": model.device,
            "epoch_path": "per-step" if loop.trainer is None else loop.trainer.path,
            "compiled_epochs": 0,
        },
        optimizer=opt,
    )
    if early_stopping is not None:
        early_stopping._reset()
    root = comm is None or comm.is_root  # the rank that shows progress, logs and writes
    show_bar = progress and root and sys.stderr.isatty()
    for epoch in range(first, last):
        with tqdm(
            total=history.params["steps"], desc=f"epoch {epoch + 1}/{last}", unit="batch", disable=not show_bar
        ) as bar:
            logs = loop.run_epoch(epoch, bar)
            if val is not None:
                with loop._stops_every_rank():
                    val_logs = _evaluate_data(model, loss_fn, val, metric_list, eval_batch_size, parallel)
                logs.update({f"val_{key}": value for key, value in val_logs.items()})
            bar.set_postfix({key: f"{value:.4g}" for key, value in logs.items()})
        model.epochs_trained = epoch + 1
        history.params["epoch_path"] = ", then ".join(dict.fromkeys(loop.paths))
        history.params["compiled_epochs"] = sum(path != "per-step" for path in loop.paths)
        history._record(epoch, logs)
        if root:
            logger.info("epoch %d/%d: %s", epoch + 1, last, "  ".join(f"{k}={v:.6g}" for k, v in logs.items()))
        stop = early_stopping is not None and early_stopping._update(epoch, logs, _trained_state(model))
        with _agreement(comm, f"writing the checkpoint of epoch {epoch + 1}"):
            if checkpoints is not None:
                checkpoints.save(model, opt, history.history)
        if stop:
            assert early_stopping is not None  # only an EarlyStopping stops training early
            if root:
                logger.info("early stopping after epoch %d: %s did not improve", epoch + 1, early_stopping.monitor)
            break
    if early_stopping is not None:
        early_stopping._restore(_trained_state(model))
    return history


def _communicator(distributed: Any, model: Any) -> Any:
    """The :class:`~fusednn.distributed.Communicator` of ``fit(distributed=...)``, or ``None`` on one device.

    Imports :mod:`fusednn.distributed` only when asked: a run on one device loads nothing of it.
    """
    if distributed is None:
        return None
    from .. import distributed as dist

    if isinstance(distributed, dist.Communicator):
        return distributed
    if not isinstance(distributed, str):
        raise TypeError(
            f"distributed must be None, one of {dist.KINDS} or a fusednn.distributed.Communicator, "
            f"got {type(distributed).__name__}"
        )
    return dist.connect(distributed, model.backend)


def _agreement(comm: Any, what: str) -> AbstractContextManager[Any]:
    """``comm.agreement(what)`` (every rank raises if one does), or nothing on one device."""
    return contextlib.nullcontext() if comm is None else comm.agreement(what)


def _training_facts(
    loop: _Loop,
    epochs: int,
    eval_batch_size: int,
    x: np.ndarray,
    y: np.ndarray,
    validation: tuple[np.ndarray, np.ndarray] | None,
) -> dict[str, Any]:
    """What every rank of a data-parallel :func:`fit` must agree on, by name (small values and checksums)."""
    model, optimizer = loop.model, loop.optimizer
    config = model.get_config()
    config.pop("seed")  # the weights come from rank 0, whatever seed each rank drew them with
    return {
        "model": config,
        "layer states": model.layer_states(),
        "epochs trained": int(model.epochs_trained),
        "optimizer": optimizer.get_config(),
        "optimizer step": optimizer.step_count,
        "loss": loop.loss.name,
        "metrics": [metric.name for metric in loop.metric_list],
        "epochs": epochs,
        "batch size": loop.batch_size,
        "accumulate": loop.accumulate,
        "eval batch size": eval_batch_size,
        "shuffle": loop.shuffle,
        "schedule interval": loop.schedule_per_step,
        "training data": data_fingerprint(x, y),
        "validation data": None if validation is None else data_fingerprint(*validation),
    }


def _trained_state(model: Any) -> list[Array]:
    """What training changes and EarlyStopping restores: the flat parameters, then every layer's buffers."""
    return [model.parameters().data, *model.buffers()]


EPOCH_PATHS: tuple[str, ...] = ("auto", "compiled", "per-step")
"""Valid values of :func:`fit`'s ``epoch_path``."""


def _trainer(
    model: Any, loss: Loss, optimizer: Optimizer, batch_size: int, accumulate: int, labels: bool, wait: bool
) -> EpochTrainer | None:
    """The backend's compiled trainer of this training, if any; compiled before returning when ``wait``."""
    plan = epoch_plan(model, loss, optimizer, batch_size, accumulate, labels)
    trainer = None if plan is None else model.backend.epoch_trainer(plan)
    if wait:
        if plan is None:
            raise ValueError(
                "epoch_path='compiled': this training has no compiled form (only nn.Dense layers with the "
                "built-in losses and optimizers, by their exact classes, have one); use 'auto' or 'per-step'"
            )
        if trainer is None:
            raise ValueError(
                f"epoch_path='compiled': the {model.backend.name!r} backend compiles no epochs of this model; "
                "use 'auto' or 'per-step'"
            )
        trainer.compile(wait=True)
    return trainer


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
