"""The ``fusednn`` command line: ``fusednn train ...`` (also ``python -m fusednn train ...``).

``train`` loads a data set, holds out a seeded, stratified test split and a
validation split, scales the features on the training rows, trains an MLP with
:func:`fusednn.nn.fit`, prints progress, then the test metrics, the classification
report and the confusion matrix, and writes to ``--out``:

* ``checkpoint.npz``: model, optimizer, epoch counter, scaler and history (updated every epoch);
* ``metrics.json``: the per-epoch history, the test metrics and the confusion matrix;
* ``curves.png``: training and validation loss and accuracy per epoch.

``--resume`` continues a run from its checkpoint up to ``--epochs`` epochs in total:
rerunning the same command with ``--resume <out>/checkpoint.npz`` finishes an interrupted run
with the weights an uninterrupted one would have had.

Bad flag values end with a one-line error and exit status 2; a diverging run exits with 1.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

import fusednn

from . import nn
from .nn import metrics, schedules
from .nn.data import BUILTIN_DATASETS, SCALERS, load_dataset, train_val_split

BASE_BATCH = 256
"""The batch size ``--lr-scaling linear`` scales the learning rate from (Goyal et al., 2017)."""


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not (value >= 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0, got {text}")
    return value


def _positive_float(text: str) -> float:
    value = _non_negative_float(text)
    if value == 0:
        raise argparse.ArgumentTypeError("expected a number > 0, got 0")
    return value


def _fraction(text: str) -> float:
    value = _non_negative_float(text)
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"expected a fraction strictly between 0 and 1, got {text}")
    return value


def _sizes(text: str) -> list[int]:
    try:
        sizes = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated layer widths such as 128,128, got {text!r}"
        ) from None
    if any(size < 1 for size in sizes):
        raise argparse.ArgumentTypeError(f"layer widths must be positive, got {text!r}")
    return sizes


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``fusednn`` and its ``train`` command."""
    return _parsers()[0]


def _parsers() -> tuple[argparse.ArgumentParser, argparse.ArgumentParser]:
    parser = argparse.ArgumentParser(prog="fusednn", description="Train neural networks with fused kernels.")
    parser.add_argument("--version", action="version", version=f"fusednn {fusednn.__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    train = commands.add_parser(
        "train",
        help="train an MLP classifier (or regressor) and report test metrics",
        description=__doc__.split("\n\n")[1],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    data = train.add_argument_group("data")
    data.add_argument(
        "--data",
        default="digits",
        help=f"built-in data set ({', '.join(BUILTIN_DATASETS)}) or a path: .npz, .npy/.csv (last column = label), "
        "an MNIST directory, or an IDX images file with --labels",
    )
    data.add_argument("--labels", help="IDX labels file that goes with an IDX images file given to --data")
    data.add_argument("--rows", type=_positive_int, help="rows to generate for xor/synthetic")
    data.add_argument("--features", type=_positive_int, help="features of the synthetic data set (default 32)")
    data.add_argument("--classes", type=_positive_int, help="classes of the synthetic data set (default 10)")
    data.add_argument("--test-split", type=_fraction, default=0.2, help="fraction held out for the final test")
    data.add_argument("--val-split", type=_fraction, default=0.1, help="fraction of the rest used for validation")
    data.add_argument("--scale", choices=[*SCALERS, "none"], default="standard", help="feature scaling")

    model = train.add_argument_group("model")
    model.add_argument("--hidden", type=_sizes, default=[128, 128], help="hidden layer widths, comma-separated")
    model.add_argument("--activation", default="relu", choices=fusednn.ACTIVATIONS, help="hidden activation")
    model.add_argument("--dtype", choices=["float32", "float64"], default="float32", help="compute dtype")
    model.add_argument(
        "--device", default=None, help="numpy, cpu, cuda, cuda:N or auto (default: $FUSEDNN_DEVICE or cpu)"
    )

    opt = train.add_argument_group("optimisation")
    opt.add_argument("--optimizer", choices=list(nn.OPTIMIZERS), default="adam", help="optimizer")
    opt.add_argument(
        "--lr",
        type=_positive_float,
        default=2e-3,
        help="learning rate; with --lr-scaling linear, the rate for a batch of 256 rows",
    )
    opt.add_argument("--momentum", type=_non_negative_float, default=None, help="momentum for sgd/rmsprop")
    opt.add_argument("--weight-decay", type=_non_negative_float, default=0.0, help="L2 weight decay in the optimizer")
    opt.add_argument("--epochs", type=_positive_int, default=20, help="epochs in total (a resumed run finishes these)")
    opt.add_argument("--batch-size", type=_positive_int, default=64, help="rows per (micro-)batch")
    opt.add_argument("--accumulate", type=_positive_int, default=1, help="micro-batches per optimizer step")
    opt.add_argument(
        "--lr-scaling",
        choices=["none", "linear"],
        default="none",
        help=f"linear: multiply --lr by batch-size * accumulate / {BASE_BATCH}",
    )
    opt.add_argument("--warmup-epochs", type=_non_negative_float, default=0.0, help="linear learning-rate warm-up")
    opt.add_argument(
        "--schedule",
        choices=list(schedules.SCHEDULES),
        default="constant",
        help="learning-rate decay: step multiplies by 0.1 every third of --epochs, cosine anneals to 0 over --epochs",
    )
    opt.add_argument(
        "--early-stopping",
        type=_positive_int,
        default=None,
        metavar="PATIENCE",
        help="stop when val_loss has not improved for PATIENCE epochs; keep the best weights",
    )
    opt.add_argument("--seed", type=int, default=0, help="seed of the splits, the weights and the batch order")

    run = train.add_argument_group("output")
    run.add_argument("--out", default=None, help="output directory (default: runs/<data set name>)")
    run.add_argument(
        "--resume",
        default=None,
        metavar="PATH",
        help="continue from this checkpoint (its model, optimizer and scaler replace the model flags) up to --epochs",
    )
    run.add_argument("--no-progress", action="store_true", help="no progress bar (log lines only)")
    return parser, train


def _splits(dataset: nn.data.Dataset, args: argparse.Namespace) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    stratify = dataset.num_classes is not None
    x_rest, y_rest, x_test, y_test = train_val_split(dataset.x, dataset.y, args.test_split, args.seed, stratify)
    x_train, y_train, x_val, y_val = train_val_split(x_rest, y_rest, args.val_split, args.seed + 1, stratify)
    return {"train": (x_train, y_train), "val": (x_val, y_val), "test": (x_test, y_test)}


def _schedule(args: argparse.Namespace, lr: float) -> schedules.ScheduleFn | None:
    if args.schedule == "constant" and not args.warmup_epochs:
        return None
    decay = {
        "constant": lambda: schedules.Constant(lr),
        "step": lambda: schedules.StepDecay(lr, step_epochs=max(args.epochs // 3, 1), gamma=0.1),
        "cosine": lambda: schedules.CosineDecay(lr, epochs=args.epochs),
    }[args.schedule]()
    if not args.warmup_epochs:
        return decay
    start = min(args.lr / lr, 1.0) if lr > args.lr else 0.1  # the linear scaling rule warms up from the base rate
    return schedules.LinearWarmup(decay, epochs=args.warmup_epochs, start_factor=start)


def _optimizer_kwargs(args: argparse.Namespace, lr: float) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"lr": lr, "weight_decay": args.weight_decay}
    if args.momentum is not None:
        if args.optimizer == "adam":
            raise ValueError("--momentum applies to sgd and rmsprop, not adam")
        kwargs["momentum"] = args.momentum
    return kwargs


def _prepare(args: argparse.Namespace) -> dict[str, Any]:
    """Everything before training; raises ValueError/RuntimeError/OSError for bad flag values."""
    fusednn.backend(args.device)  # an unknown or unusable device fails here, before any work
    options = {key: getattr(args, key) for key in ("features", "classes") if getattr(args, key) is not None}
    if options and args.data != "synthetic":
        raise ValueError("--features and --classes apply to --data synthetic only")
    dataset = load_dataset(args.data, rows=args.rows, seed=args.seed, labels=args.labels, **options)
    splits = _splits(dataset, args)
    classify = dataset.num_classes is not None
    lr = args.lr * args.batch_size * args.accumulate / BASE_BATCH if args.lr_scaling == "linear" else args.lr
    resumed = nn.load(args.resume, device=args.device) if args.resume else None
    scaler = None
    if args.scale != "none":
        scaler = SCALERS[args.scale]()
        if resumed is not None and "scaler" in resumed.extra:
            scaler.load_state_dict(resumed.extra["scaler"])
        else:
            scaler.fit(splits["train"][0])
        splits = {name: (scaler.transform(x), y) for name, (x, y) in splits.items()}
    n_out = dataset.num_classes if classify else (1 if dataset.y.ndim == 1 else dataset.y.shape[1])
    if resumed is not None:
        model, optimizer = resumed.model, resumed.optimizer
        if model.in_features != dataset.x.shape[1] or model.out_features != n_out:
            raise ValueError(
                f"{args.resume!r} holds a model for {model.in_features} features and {model.out_features} outputs; "
                f"the data has {dataset.x.shape[1]} features and {n_out} outputs"
            )
        if optimizer is None:
            optimizer = nn.get_optimizer(args.optimizer, model.parameters(), **_optimizer_kwargs(args, lr))
    else:
        sizes = [dataset.x.shape[1], *args.hidden, n_out]
        model = nn.MLP(sizes, activation=args.activation, device=args.device, dtype=args.dtype, seed=args.seed)
        optimizer = nn.get_optimizer(args.optimizer, model.parameters(), **_optimizer_kwargs(args, lr))
    return {
        "dataset": dataset,
        "splits": splits,
        "model": model,
        "optimizer": optimizer,
        "loss": "categorical_crossentropy" if classify else "mse",
        "metrics": ["accuracy", "f1"] if classify else ["mae"],
        "schedule": _schedule(args, lr),
        "scaler": scaler,
        "history": dict(resumed.extra.get("history", {})) if resumed is not None else {},
        "lr": lr,
    }


def _format_matrix(matrix: np.ndarray) -> str:
    width = max(len(str(int(matrix.max()))), len(str(matrix.shape[0] - 1)), 4)
    header = "true\\pred " + " ".join(f"{j:>{width}}" for j in range(matrix.shape[1]))
    rows = [f"{i:>9} " + " ".join(f"{v:>{width}}" for v in row) for i, row in enumerate(matrix)]
    return "\n".join([header, *rows])


def _plot(history: dict[str, list[float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # headless: no display needed
    import matplotlib.pyplot as plt

    panels = [key for key in ("loss", "accuracy", "mae") if key in history]
    figure, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.6), squeeze=False)
    for axis, key in zip(axes[0], panels, strict=True):
        epochs = np.arange(1, len(history[key]) + 1)
        axis.plot(epochs, history[key], marker="o", label="train")
        if f"val_{key}" in history:
            axis.plot(epochs, history[f"val_{key}"], marker="o", label="validation")
        axis.set_xlabel("epoch")
        axis.set_title(key)
        axis.grid(alpha=0.3)
        axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def train(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """Run ``fusednn train``; returns the exit status."""
    try:
        setup = _prepare(args)
    except (ValueError, RuntimeError, OSError, TypeError) as error:
        parser.error(str(error).splitlines()[0])
    model, optimizer, dataset = setup["model"], setup["optimizer"], setup["dataset"]
    out = Path(args.out or Path("runs") / Path(dataset.name).stem)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        parser.error(f"cannot create --out {str(out)!r}: {error.strerror}")
    x_train, y_train = setup["splits"]["train"]
    print(
        f"fusednn {fusednn.__version__}: {dataset.name} ({len(y_train)} train / {len(setup['splits']['val'][1])} val / "
        f"{len(setup['splits']['test'][1])} test rows), model {model.in_features}-"
        f"{'-'.join(str(layer.out_features) for layer in model.layers)} on {model.device} ({model.dtype.name}), "
        f"{type(optimizer).__name__} lr={setup['lr']:.3g}, batch {args.batch_size} x {args.accumulate}",
        flush=True,
    )
    remaining = args.epochs - int(model.epochs_trained)
    extra = {"scaler": setup["scaler"].state_dict() if setup["scaler"] else None, "args": vars(args)}
    checkpoint = out / "checkpoint.npz"
    history = dict(setup["history"])
    started = time.perf_counter()
    if remaining > 0:
        try:
            result = nn.fit(
                model,
                x_train,
                y_train,
                loss=setup["loss"],
                optimizer=optimizer,
                epochs=remaining,
                batch_size=args.batch_size,
                accumulate=args.accumulate,
                validation_data=setup["splits"]["val"],
                metrics=setup["metrics"],
                seed=args.seed,
                progress=not args.no_progress,
                early_stopping=nn.EarlyStopping(patience=args.early_stopping) if args.early_stopping else None,
                schedule=setup["schedule"],
                checkpoint=checkpoint,
                checkpoint_extra={**extra, "history": history},
            )
        except nn.NonFiniteLossError as error:
            print(f"fusednn: error: {error}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            print(f"\nfusednn: interrupted; continue with --resume {checkpoint}", file=sys.stderr)
            return 130
        history = {key: list(history.get(key, [])) + values for key, values in result.history.items()}
    else:
        print(f"{args.resume} has already trained {model.epochs_trained} epochs (--epochs {args.epochs})")
    seconds = time.perf_counter() - started
    nn.save(checkpoint, model, optimizer, **extra, history=history)
    report = _report(model, setup, history, seconds, args)
    (out / "metrics.json").write_text(json.dumps(report, indent=2) + "\n")
    _plot(history, out / "curves.png")
    print(f"wrote {checkpoint}, {out / 'metrics.json'}, {out / 'curves.png'}")
    return 0


def _report(model: Any, setup: dict[str, Any], history: dict[str, list[float]], seconds: float, args: Any) -> dict:
    """Evaluate on the test split, print the results, and return them for metrics.json."""
    x_test, y_test = setup["splits"]["test"]
    test = nn.evaluate(model, x_test, y_test, loss=setup["loss"], metrics=setup["metrics"])
    report: dict[str, Any] = {
        "data": setup["dataset"].name,
        "device": model.device,
        "epochs_trained": int(model.epochs_trained),
        "train_seconds": round(seconds, 3),
        "test": test,
        "history": history,
        "args": vars(args),
    }
    print("test " + "  ".join(f"{key}={value:.4f}" for key, value in test.items()))
    if setup["dataset"].num_classes is not None:
        predicted = metrics.scores_to_labels(model.predict(x_test, batch_size=4096))
        labels = list(range(setup["dataset"].num_classes))
        matrix = metrics.confusion_matrix(y_test, predicted, labels=labels)
        report["confusion_matrix"] = matrix.tolist()
        print(metrics.classification_report(y_test, predicted, labels=labels))
        print("confusion matrix (rows: true class, columns: predicted class)")
        print(_format_matrix(matrix))
    return report


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``fusednn`` console script; returns the exit status."""
    parser, train_parser = _parsers()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    return train(args, train_parser)


if __name__ == "__main__":
    sys.exit(main())
