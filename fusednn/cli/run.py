"""``fusednn train`` from parsed flags to written outputs.

The steps run in the order that fails fastest: flags, device, the resumed
checkpoint, ``--out``, data and splits, model; only then does training start.
Each step turns the errors a user can cause into a
:class:`~fusednn.cli.errors.CommandError` of its kind; :func:`train` prints it as
one line and returns its exit status.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

import fusednn

from .. import nn
from ..nn import metrics, schedules
from ..nn.data import BUILTIN_DATASETS, SCALERS, Dataset, load_dataset, train_val_split
from . import outputs as out_files
from . import resume
from .errors import CommandError, ExitStatus, failing_as
from .flags import BASE_BATCH, MAY_CHANGE_ON_RESUME, describe
from .outputs import Outputs


@dataclass
class _Run:
    """Everything training needs, built and checked before the first step."""

    settings: argparse.Namespace
    outputs: Outputs
    replace_checkpoint: bool
    dataset: Dataset
    splits: dict[str, tuple[np.ndarray, np.ndarray]]
    model: Any
    optimizer: nn.Optimizer
    scaler: Any
    lr: float
    resumed: nn.Checkpoint | None = None
    history: dict[str, list[float]] = field(default_factory=dict)
    given_anew: list[str] = field(default_factory=list)
    comm: Any = None
    """``--distributed``: the job's communicator (``None`` on one device)."""

    @property
    def ranks(self) -> int:
        return _ranks(self.comm)

    @property
    def root(self) -> bool:
        """Whether this process prints and writes: rank 0, or the only process."""
        return _is_root(self.comm)

    @property
    def classify(self) -> bool:
        return self.dataset.num_classes is not None

    @property
    def loss(self) -> str:
        return "categorical_crossentropy" if self.classify else "mse"

    @property
    def metrics(self) -> list[str]:
        return ["accuracy", "f1"] if self.classify else ["mae"]


def train(args: argparse.Namespace, parser: argparse.ArgumentParser, given: set[str] | None = None) -> int:
    """Run ``fusednn train`` with parsed ``args``; returns the exit status (see :class:`ExitStatus`).

    ``given`` names the flags the user typed (``dest`` names); without it, the flags
    whose values differ from their defaults count as typed. Bad flag values end as
    argparse ends them: usage, one error line, ``SystemExit(2)``.
    """
    if given is None:
        given = {dest for dest, value in vars(args).items() if value != parser.get_default(dest)}
    comm = None
    try:
        comm = _communicator(args)
        with contextlib.nullcontext() if comm is None else comm.agreement("preparing the run"):
            run = _prepare(args, given, parser, comm)
        return _train(run, args)
    except CommandError as error:
        if not _is_root(comm):  # every rank fails alike; rank 0 says why, once
            return int(error.status)
        if error.status == ExitStatus.USAGE:
            argparse.ArgumentParser.error(parser, str(error))  # usage, one line, exit status 2
        print(f"fusednn train: error: {error}{_on_rank(error)}", file=sys.stderr)
        return int(error.status)
    except KeyboardInterrupt:
        if _is_root(comm):
            print("\nfusednn train: interrupted before training started; nothing was written", file=sys.stderr)
        return int(ExitStatus.INTERRUPTED)


def _ranks(comm: Any) -> int:
    """The number of ranks of ``--distributed``'s communicator, 1 without one."""
    return 1 if comm is None else int(comm.size)


def _is_root(comm: Any) -> bool:
    """Whether this process prints and writes: rank 0 of ``--distributed``'s communicator, or the only process."""
    return comm is None or bool(comm.is_root)


def _global_batch(settings: argparse.Namespace, ranks: int) -> int:
    """Rows per optimizer step over every rank (what ``--lr-scaling linear`` scales the rate by)."""
    return int(settings.batch_size * settings.accumulate * ranks)


def _on_rank(error: BaseException) -> str:
    """Where another rank's error came from (the note :meth:`Communicator.agreement` adds), as a suffix."""
    notes = getattr(error, "__notes__", None)
    return f" ({notes[-1]})" if notes else ""


def _communicator(args: argparse.Namespace) -> Any:
    """``--distributed``: the job's :class:`~fusednn.distributed.Communicator`, or ``None`` (nothing imported)."""
    if args.distributed is None:
        return None
    from .. import distributed

    if args.distributed == "nccl" and args.device == "cuda":
        args.device = distributed.local_device()  # one GPU per rank: this rank's of its node
    with failing_as(ExitStatus.USAGE, ValueError), failing_as(ExitStatus.DEVICE, RuntimeError, ImportError):
        return distributed.connect(args.distributed, fusednn.backend(args.device))


def _check_flags(settings: argparse.Namespace) -> None:
    """Flags that contradict each other or do not apply to ``--data``."""
    problem = None
    generated = settings.data in ("xor", "synthetic")
    if (settings.features is not None or settings.classes is not None) and settings.data != "synthetic":
        problem = "--features and --classes apply to --data synthetic only"
    elif settings.rows is not None and not generated:
        problem = "--rows applies to --data xor and synthetic only"
    elif settings.labels is not None and (
        settings.data in BUILTIN_DATASETS
        or Path(settings.data).is_dir()
        or Path(settings.data).suffix.lower() in (".csv", ".npy", ".npz")
    ):
        problem = "--labels goes with an IDX images file given to --data"
    elif settings.momentum is not None and settings.optimizer in ("adam", "adamw", "lamb"):
        problem = f"--momentum applies to sgd, rmsprop and lars, not {settings.optimizer}"
    elif settings.distributed is not None and settings.epoch_path == "compiled":
        problem = "--epoch-path compiled does not go with --distributed, which all-reduces between steps"
    if problem:
        raise CommandError(ExitStatus.USAGE, problem)


def _prepare(args: argparse.Namespace, given: set[str], parser: argparse.ArgumentParser, comm: Any) -> _Run:
    """Everything before training; with ``--distributed`` every rank runs it, and rank 0 alone touches ``--out``."""
    with failing_as(ExitStatus.USAGE, ValueError), failing_as(ExitStatus.DEVICE, RuntimeError, ImportError):
        fusednn.backend(args.device)  # an unknown or unusable device fails here, before any work
    ranks, root = _ranks(comm), _is_root(comm)
    resumed = resume.load(args.resume, args.device) if args.resume else None
    settings = resume.settings(args, given, resumed, parser, ranks) if resumed else args
    _check_flags(settings)
    outputs = Outputs(Path(settings.out or Path("runs") / Path(settings.data).stem))
    replace = out_files.prepare(outputs, args.resume, settings.overwrite) if root else False
    context = ""
    if resumed is not None and "data" not in given:  # --data comes from the record: if it fails (moved?), say so
        context = f"--data {settings.data!r} (saved in --resume {args.resume!r})"
    dataset, splits = _load_data(settings, context)
    # Scaled by the global batch; multiplied in this order, one rank's rate is the rate of before --distributed.
    lr = settings.lr * settings.batch_size * settings.accumulate * ranks / BASE_BATCH
    lr = lr if settings.lr_scaling == "linear" else settings.lr
    with failing_as(ExitStatus.MEMORY, MemoryError, context="out of memory building the model"):
        model, optimizer, scaler, history = _model_and_state(args, settings, resumed, dataset, splits, lr)
    if scaler is not None:
        with failing_as(ExitStatus.MEMORY, MemoryError, context="out of memory scaling --data"):
            splits = {name: (scaler.transform(x), y) for name, (x, y) in splits.items()}
    if root:
        out_files.create(outputs)
    anew = sorted(given & MAY_CHANGE_ON_RESUME - {"resume"}) if resumed else []
    return _Run(settings, outputs, replace, dataset, splits, model, optimizer, scaler, lr, resumed, history, anew, comm)


def _load_data(settings: argparse.Namespace, context: str) -> tuple[Dataset, dict[str, tuple[np.ndarray, np.ndarray]]]:
    """The data set and its test, validation and training splits."""
    options = {key: getattr(settings, key) for key in ("features", "classes") if getattr(settings, key) is not None}
    with (
        failing_as(ExitStatus.MEMORY, MemoryError, context="out of memory loading --data"),
        failing_as(ExitStatus.DATA, ValueError, TypeError, OSError, context=context),
    ):
        dataset = load_dataset(
            settings.data, rows=settings.rows, seed=settings.seed, labels=settings.labels, task=settings.task, **options
        )
        return dataset, _splits(dataset, settings)


def _model_and_state(
    args: argparse.Namespace,
    settings: argparse.Namespace,
    resumed: nn.Checkpoint | None,
    dataset: Dataset,
    splits: dict[str, tuple[np.ndarray, np.ndarray]],
    lr: float,
) -> tuple[Any, nn.Optimizer, Any, dict[str, list[float]]]:
    """The model, optimizer, scaler and history to train on: restored and checked, or new."""
    n_out = dataset.num_classes or (1 if dataset.y.ndim == 1 else dataset.y.shape[1])
    if resumed is not None:
        assert resumed.optimizer is not None  # resume.load refuses a checkpoint without one
        _check_model_fits(resumed.model, dataset, n_out, resumed.path)
        return resumed.model, resumed.optimizer, resume.scaler(resumed, settings.scale), resume.history(resumed)
    sizes = [dataset.x.shape[1], *settings.hidden, n_out]
    model = nn.MLP(sizes, activation=settings.activation, device=args.device, dtype=settings.dtype, seed=settings.seed)
    with failing_as(ExitStatus.USAGE, ValueError):
        optimizer = nn.get_optimizer(settings.optimizer, model.parameters(), **_optimizer_kwargs(settings, lr))
    scaler = None if settings.scale == "none" else SCALERS[settings.scale]().fit(splits["train"][0])
    return model, optimizer, scaler, {}


def _splits(dataset: Dataset, settings: argparse.Namespace) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    stratify = dataset.num_classes is not None
    try:
        x_rest, y_rest, x_test, y_test = train_val_split(
            dataset.x, dataset.y, settings.test_split, settings.seed, stratify, name="--test-split"
        )
        x_train, y_train, x_val, y_val = train_val_split(
            x_rest, y_rest, settings.val_split, settings.seed + 1, stratify, name="--val-split"
        )
    except ValueError as error:
        # Whole-number quantities taken for many small classes are the usual cause of an empty stratum.
        hint = _regression_hint(dataset, settings)
        if not hint:
            raise
        raise ValueError(f"{error} (--task auto: {dataset.task_reason}{hint})") from None
    return {"train": (x_train, y_train), "val": (x_val, y_val), "test": (x_test, y_test)}


def _regression_hint(dataset: Dataset, settings: argparse.Namespace) -> str:
    """Advice for a file's labels that ``--task auto`` took for classes: they may be quantities."""
    auto_classes = settings.task == "auto" and dataset.num_classes is not None
    return (
        "; pass --task regression if they are quantities"
        if auto_classes and dataset.name not in BUILTIN_DATASETS
        else ""
    )


def _check_model_fits(model: Any, dataset: Dataset, n_out: int, where: str) -> None:
    if model.in_features != dataset.x.shape[1] or model.out_features != n_out:
        raise CommandError(
            ExitStatus.CHECKPOINT,
            f"--resume {where!r} holds a model for {model.in_features} features and {model.out_features} outputs; "
            f"--data {dataset.name} has {dataset.x.shape[1]} features and {n_out} outputs ({dataset.task})",
        )


def _optimizer_kwargs(settings: argparse.Namespace, lr: float) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"lr": lr, "weight_decay": settings.weight_decay}
    if settings.momentum is not None:
        kwargs["momentum"] = settings.momentum
    return kwargs


def _schedule(settings: argparse.Namespace, lr: float) -> schedules.ScheduleFn | None:
    if settings.schedule == "constant" and not settings.warmup_epochs:
        return None
    decay = {
        "constant": lambda: schedules.Constant(lr),
        "step": lambda: schedules.StepDecay(lr, step_epochs=max(settings.epochs // 3, 1), gamma=0.1),
        "cosine": lambda: schedules.CosineDecay(lr, epochs=settings.epochs),
    }[settings.schedule]()
    if not settings.warmup_epochs:
        return decay
    start = min(settings.lr / lr, 1.0) if lr > settings.lr else 0.1  # the linear scaling rule warms up from the base
    return schedules.LinearWarmup(decay, epochs=settings.warmup_epochs, start_factor=start)


def _banner(run: _Run) -> str:
    """What really runs: data and task, model, optimizer and schedule as built, and where a resumed run starts."""
    settings, dataset, model = run.settings, run.dataset, run.model
    rows = " / ".join(f"{len(run.splits[part][1])} {part}" for part in ("train", "val", "test"))
    if dataset.num_classes is not None:
        task = f"classification into {dataset.num_classes} classes"
    else:
        task = f"regression of {1 if dataset.y.ndim == 1 else dataset.y.shape[1]} target(s)"
    if settings.task == "auto":
        task += f" (--task auto: {dataset.task_reason}{_regression_hint(dataset, settings)})"
    else:
        task += f" (--task {settings.task})"
    scaling = "unscaled" if run.scaler is None else f"{settings.scale} scaling"
    if run.resumed is not None:
        scaling += " (the saved scaler)"
    hidden = {layer.activation for layer in model.layers[:-1]}
    sizes = "-".join(str(size) for size in [model.in_features, *(layer.out_features for layer in model.layers)])
    schedule = ""
    if settings.schedule != "constant":
        schedule = f", {settings.schedule} schedule over {settings.epochs} epochs"
    if settings.warmup_epochs:
        schedule += f", {settings.warmup_epochs:g} warm-up epochs"
    lines = [
        f"fusednn {fusednn.__version__}: {dataset.name}, {task}; {rows} rows, {scaling}",
        f"model {sizes} {'/'.join(sorted(hidden)) or 'linear'} on {model.device} ({model.dtype.name}); "
        f"{run.optimizer!r}{schedule}; batch {settings.batch_size} x {settings.accumulate}"
        + (
            f" on each of {run.ranks} ranks ({run.comm.kind}), global batch {_global_batch(settings, run.ranks)}"
            if run.comm
            else ""
        ),
    ]
    if run.resumed is not None:
        anew = run.given_anew
        lines.append(
            f"resuming {run.resumed.path} after epoch {run.resumed.epoch} with its saved settings"
            + (f"; given anew: {', '.join(describe(dest, getattr(settings, dest)) for dest in anew)}" if anew else "")
        )
    return "\n".join(lines)


def _train(run: _Run, args: argparse.Namespace) -> int:
    settings, model, outputs = run.settings, run.model, run.outputs
    if run.root:
        print(_banner(run), flush=True)
    record = _record(settings, outputs, run.ranks)
    extra = {"scaler": run.scaler.state_dict() if run.scaler is not None else None, "args": record}
    before = out_files.snapshot(outputs.checkpoint)
    history = dict(run.history)
    remaining = settings.epochs - int(model.epochs_trained)
    started = time.perf_counter()
    try:
        if remaining > 0:
            history = _fit(run, remaining, extra, history)
        elif run.root:
            assert run.resumed is not None  # a new model has trained no epochs, and --epochs is at least 1
            print(f"{run.resumed.path} has already trained {model.epochs_trained} epochs (--epochs {settings.epochs})")
        seconds = time.perf_counter() - started
        if not run.root:  # the other ranks trained the same model; rank 0 saves and reports it
            return int(ExitStatus.OK)
        with failing_as(ExitStatus.OUTPUT, OSError):
            nn.save(outputs.checkpoint, model, run.optimizer, **extra, history=history)
            report = _report(run, history, seconds, record)
            out_files.write_metrics(outputs.metrics, report)
            out_files.write_curves(outputs.curves, history)
    except nn.NonFiniteError as error:  # a diverged loss or non-finite weights: nothing bad was saved
        if run.root:  # every rank found it in the same reduced losses
            print(f"fusednn train: error: {error}", file=sys.stderr)
        return int(ExitStatus.DIVERGED)
    except KeyboardInterrupt:
        if run.root:
            print(f"\nfusednn train: {_interrupted(outputs, before, args.resume)}", file=sys.stderr)
        return int(ExitStatus.INTERRUPTED)
    print(f"wrote {outputs.checkpoint}, {outputs.metrics}, {outputs.curves}")
    return int(ExitStatus.OK)


def _record(settings: argparse.Namespace, outputs: Outputs, ranks: int) -> dict[str, Any]:
    """The settings as saved in checkpoints and metrics.json, with the files the run used as absolute paths.

    Absolute, so that ``--resume`` from another directory finds the same data and ``--out``.
    ``"ranks"`` (not a flag) says over how many ranks ``batch_size`` is each rank's.
    """
    record = {key: value for key, value in vars(settings).items() if key != "command"}
    record["ranks"] = ranks
    if record["data"] not in BUILTIN_DATASETS:
        record["data"] = os.path.abspath(record["data"])
    if record["labels"] is not None:
        record["labels"] = os.path.abspath(record["labels"])
    record["out"] = os.path.abspath(outputs.directory)
    return record


def _fit(run: _Run, remaining: int, extra: dict[str, Any], history: dict[str, list[float]]) -> dict[str, list[float]]:
    settings = run.settings
    with (
        failing_as(ExitStatus.OUTPUT, OSError),
        failing_as(ExitStatus.DATA, ValueError, TypeError),
        failing_as(ExitStatus.MEMORY, MemoryError, context="out of memory in training"),
        # A diverging run overflows in NumPy's GEMMs first; fit reports that in one line (exit 1),
        # so NumPy's per-operation warnings would only bury it.
        np.errstate(over="ignore", invalid="ignore"),
    ):
        result = nn.fit(
            run.model,
            *run.splits["train"],
            loss=run.loss,
            optimizer=run.optimizer,
            epochs=remaining,
            batch_size=settings.batch_size,
            accumulate=settings.accumulate,
            validation_data=run.splits["val"],
            metrics=run.metrics,
            seed=settings.seed,
            progress=not settings.no_progress,
            epoch_path=settings.epoch_path,
            distributed=run.comm,
            early_stopping=nn.EarlyStopping(patience=settings.early_stopping) if settings.early_stopping else None,
            schedule=_schedule(settings, run.lr),
            checkpoint=run.outputs.checkpoint,
            checkpoint_extra={**extra, "history": history},
            checkpoint_overwrite=run.replace_checkpoint,
        )
    return {key: list(history.get(key, [])) + values for key, values in result.history.items()}


def _interrupted(outputs: Outputs, before: tuple[int, int, int] | None, resumed_from: str | None) -> str:
    """What an interrupted run leaves behind, truly: a checkpoint to resume from, or none."""
    if out_files.snapshot(outputs.checkpoint) not in (None, before):
        return f"interrupted; continue with --resume {outputs.checkpoint}"
    if resumed_from is not None:
        return f"interrupted before a new checkpoint was written; continue with --resume {resumed_from}"
    if before is None:
        return "interrupted before the first epoch ended; nothing was saved"
    return f"interrupted before the first epoch ended; {outputs.checkpoint} still holds the earlier run"


def _report(run: _Run, history: dict[str, list[float]], seconds: float, record: dict[str, Any]) -> dict[str, Any]:
    """Evaluate on the test split, print the results, and return them for metrics.json."""
    x_test, y_test = run.splits["test"]
    test = nn.evaluate(run.model, x_test, y_test, loss=run.loss, metrics=run.metrics)
    dataset = run.dataset
    report: dict[str, Any] = {
        "data": dataset.name,
        "task": {"task": dataset.task, "chosen_by": run.settings.task, "reason": dataset.task_reason},
        "device": run.model.device,
        "epochs_trained": int(run.model.epochs_trained),
        "train_seconds": round(seconds, 3),
        "test": test,
        "history": history,
        "args": record,
    }
    print("test " + "  ".join(f"{key}={value:.4f}" for key, value in test.items()))
    if dataset.num_classes is not None:
        predicted = metrics.scores_to_labels(run.model.predict(x_test, batch_size=4096))
        labels = list(range(dataset.num_classes))
        matrix = metrics.confusion_matrix(y_test, predicted, labels=labels)
        report["confusion_matrix"] = matrix.tolist()
        print(metrics.classification_report(y_test, predicted, labels=labels))
        print("confusion matrix (rows: true class, columns: predicted class)")
        print(_format_matrix(matrix))
    return report


def _format_matrix(matrix: np.ndarray) -> str:
    width = max(len(str(int(matrix.max()))), len(str(matrix.shape[0] - 1)), 4)
    header = "true\\pred " + " ".join(f"{j:>{width}}" for j in range(matrix.shape[1]))
    rows = [f"{i:>9} " + " ".join(f"{v:>{width}}" for v in row) for i, row in enumerate(matrix)]
    return "\n".join([header, *rows])
