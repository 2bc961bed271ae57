"""Accuracy against batch size with each large-batch rule, at 1 and 2 ranks: ``python -m benchmarks.large_batch``.

Every run trains the digits configuration's MLP (64-128-10 ReLU, the ``cpu`` backend) on
the bundled digits data (standardised on the training rows; a stratified 20 % test split,
then 10 % of the rest for validation, as ``fusednn train`` splits) for a fixed budget of
epochs at each global batch, with four learning-rate rules (:data:`RULES`): SGD with
momentum at one rate for every batch (the baseline), Adam with the linear scaling rule
and warm-up (what ``fusednn train --lr-scaling linear --warmup-epochs`` does), LAMB with
square-root scaling and warm-up, and LARS with linear scaling and warm-up.

1. The sweep, at 1 rank: each rule's base rate (its rate at a batch of 256) from a short
   grid, judged by validation accuracy averaged over the batches and seeds: one base rate
   per rule, since a rule that needs retuning at every batch is no rule.
2. The check, at 2 ranks: the chosen rates again under ``mpiexec -n 2``, data-parallel
   (``fit(distributed="mpi")`` with ``batch_size`` half the global batch), which must
   give the 1-rank figures to rounding. Every run reports test accuracy too; only
   validation accuracy chooses.

Each seed sets the initial weights and the batch order. Each part runs in a worker
process (``--worker``; one per rank) with every thread pool held to one thread, a core
per rank. Examples::

    python -m benchmarks.large_batch --json benchmarks/results/2026-12-01-large-batch.json
    python -m benchmarks.large_batch --dtype float64 --seeds 1   # the 1-2 rank difference in float64
    python -m benchmarks.large_batch --epochs 2 --batches 64,256 --seeds 1   # a quick look
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .compare import REPO_ROOT
from .mpi_jobs import job_environment, mpiexec
from .report import markdown_table

HIDDEN = (128,)
"""Hidden widths: the digits benchmark configuration, 64-128-10."""
BATCHES = (32, 128, 512, 1024)
EPOCHS = 10
"""The budget: at batch 1024 digits' 1,295 training rows make 2 steps an epoch, 20 in all."""
SEEDS = 3
WARMUP_EPOCHS = 2.0
BASE_BATCH = 256
"""The batch a base rate is quoted at, as ``fusednn train --lr-scaling linear`` quotes ``--lr``."""
SPLIT_SEED = 0


@dataclass(frozen=True)
class Rule:
    """A learning-rate rule: an optimizer, how its rate follows the global batch, its warm-up and its base-rate grid.

    ``scaling`` is ``"none"``, ``"linear"`` or ``"sqrt"``: ``lr = base * (batch / 256) ** {0, 1, 1/2}``.
    """

    label: str
    optimizer: str
    scaling: str
    warmup_epochs: float
    grid: tuple[float, ...]
    kwargs: dict[str, Any] = field(default_factory=dict)

    def lr(self, base: float, batch: int) -> float:
        """The peak rate at global ``batch`` for ``base`` (the rate at 256).

        >>> RULES["lamb"].lr(0.01, 1024), RULES["sgd"].lr(0.05, 1024)
        (0.02, 0.05)
        """
        power = {"none": 0.0, "linear": 1.0, "sqrt": 0.5}[self.scaling]
        return base * (batch / BASE_BATCH) ** power


RULES: dict[str, Rule] = {
    "sgd": Rule("SGD, momentum 0.9, one rate", "sgd", "none", 0.0, (0.01, 0.03, 0.1, 0.3), {"momentum": 0.9}),
    "adam": Rule("Adam, linear scaling + warm-up", "adam", "linear", WARMUP_EPOCHS, (1e-3, 3e-3, 1e-2, 3e-2, 0.1)),
    "lamb": Rule(
        "LAMB, sqrt scaling + warm-up", "lamb", "sqrt", WARMUP_EPOCHS, (3e-3, 1e-2, 3e-2, 1e-1), {"weight_decay": 0.01}
    ),
    "lars": Rule(
        "LARS, momentum 0.9, linear scaling + warm-up",
        "lars",
        "linear",
        WARMUP_EPOCHS,
        (1.0, 3.0, 10.0, 30.0),
        {"momentum": 0.9, "weight_decay": 1e-4},
    ),
}
"""The rules compared; ``grid`` holds the base rates the sweep tries (LARS's trust coefficient is 0.001)."""


def schedule_for(rule: Rule, base: float, batch: int) -> Any:
    """``rule``'s schedule at global ``batch``: constant, or warmed up as ``fusednn train`` warms up.

    The warm-up starts from the base rate when scaling raised the rate above it (Goyal et al.'s
    rule), else from a tenth of the rate.

    >>> schedule = schedule_for(RULES["adam"], 1e-3, 1024)
    >>> round(schedule(0.0), 6), round(schedule(1.0), 6), round(schedule(2.0), 6)
    (0.001, 0.0025, 0.004)
    """
    from fusednn.nn import schedules

    peak = rule.lr(base, batch)
    if not rule.warmup_epochs:
        return schedules.Constant(peak)
    start = base / peak if peak > base else 0.1
    return schedules.LinearWarmup(schedules.Constant(peak), epochs=rule.warmup_epochs, start_factor=start)


def load_splits() -> dict[str, tuple[Any, Any]]:
    """digits' train, validation and test splits, standardised on the training rows."""
    from fusednn.nn.data import StandardScaler, load_dataset, train_val_split

    data = load_dataset("digits")
    x_rest, y_rest, x_test, y_test = train_val_split(data.x, data.y, 0.2, SPLIT_SEED, stratify=True)
    x_train, y_train, x_val, y_val = train_val_split(x_rest, y_rest, 0.1, SPLIT_SEED + 1, stratify=True)
    scaler = StandardScaler().fit(x_train)
    parts = {"train": (x_train, y_train), "val": (x_val, y_val), "test": (x_test, y_test)}
    return {part: (scaler.transform(x), y) for part, (x, y) in parts.items()}


def train_one(splits: dict[str, tuple[Any, Any]], run: dict[str, Any], settings: dict[str, Any], comm: Any) -> dict:
    """One run, ``{"rule", "base_lr", "batch", "seed"}``, trained for ``settings["epochs"]`` and evaluated.

    Every rank returns the same figures: the ranks hold the same weights after ``fit``.
    """
    from fusednn import nn

    rule = RULES[run["rule"]]
    ranks = 1 if comm is None else comm.size
    x_train, y_train = splits["train"]
    sizes = [x_train.shape[1], *HIDDEN, int(y_train.max()) + 1]
    model = nn.MLP(sizes, activation="relu", device="cpu", dtype=settings["dtype"], seed=run["seed"])
    optimizer = nn.get_optimizer(
        rule.optimizer, model.parameters(), lr=rule.lr(run["base_lr"], run["batch"]), **rule.kwargs
    )
    try:
        history = nn.fit(
            model,
            x_train,
            y_train,
            optimizer=optimizer,
            epochs=settings["epochs"],
            batch_size=run["batch"] // ranks,
            schedule=schedule_for(rule, run["base_lr"], run["batch"]),
            seed=run["seed"],
            progress=False,
            distributed=comm,
        )
    except nn.NonFiniteError:  # every rank sees the same summed loss, so every rank stops here
        return {**run, "diverged": True, "val_accuracy": 0.0, "test_accuracy": 0.0, "loss": math.nan}
    accuracy = {part: nn.evaluate(model, *splits[part], metrics=["accuracy"])["accuracy"] for part in ("val", "test")}
    return {
        **run,
        "diverged": False,
        "val_accuracy": accuracy["val"],
        "test_accuracy": accuracy["test"],
        "loss": history.history["loss"][-1],
    }


def worker(plan_path: str, out_path: str, ranks: int) -> None:
    """Run every run of the plan on this job's ``ranks`` ranks; rank 0 writes the results."""
    plan = json.loads(Path(plan_path).read_text())
    comm = None
    if ranks > 1:
        from fusednn.distributed.mpi import MPICommunicator

        comm = MPICommunicator()
        if comm.size != ranks:
            raise RuntimeError(f"--ranks {ranks}, but this job has {comm.size} (launch it with mpiexec -n {ranks})")
    splits = load_splits()
    results = [train_one(splits, run, plan["settings"], comm) for run in plan["runs"]]
    if comm is None or comm.is_root:
        Path(out_path).write_text(json.dumps(results))


def run_job(runs: list[dict[str, Any]], settings: dict[str, Any], ranks: int, scratch: Path) -> list[dict[str, Any]]:
    """Run ``runs`` in a worker job of ``ranks`` ranks (``mpiexec`` for more than one), a thread per rank.

    Raises:
        RuntimeError: more than one rank and no ``mpiexec`` on the path.
        subprocess.CalledProcessError: the job failed (its errors are on stderr).
    """
    plan, out = scratch / f"plan-{ranks}.json", scratch / f"results-{ranks}.json"
    plan.write_text(json.dumps({"settings": settings, "runs": runs}))
    command = [sys.executable, "-m", "benchmarks.large_batch", "--worker", str(plan), str(out), "--ranks", str(ranks)]
    if ranks > 1:
        command = mpiexec(ranks, *command)
    env = job_environment(1)
    subprocess.run(command, cwd=REPO_ROOT, env=env, check=True, stdout=subprocess.DEVNULL)  # results come in `out`
    return json.loads(out.read_text())


def choose(results: list[dict[str, Any]]) -> dict[str, float]:
    """Each rule's base rate with the best mean validation accuracy (over batches and seeds; ties: the smaller).

    >>> choose([{"rule": "sgd", "base_lr": 0.1, "val_accuracy": 0.9},
    ...         {"rule": "sgd", "base_lr": 0.01, "val_accuracy": 0.9}])
    {'sgd': 0.01}
    """
    scores: dict[str, dict[float, list[float]]] = {}
    for row in results:
        scores.setdefault(row["rule"], {}).setdefault(row["base_lr"], []).append(row["val_accuracy"])
    return {rule: min(by_lr, key=lambda lr: (-statistics.fmean(by_lr[lr]), lr)) for rule, by_lr in scores.items()}


def _percent(value: float) -> str:
    return f"{value * 100:.1f}"


def _mean_range(values: list[float | None]) -> str:
    """``'mean (min–max)'`` in %, or ``'diverged'`` when a run did."""
    if any(value is None for value in values):
        return "diverged"
    numbers = [value for value in values if value is not None]
    if len(numbers) == 1:
        return _percent(numbers[0])
    return f"{_percent(statistics.fmean(numbers))} ({_percent(min(numbers))}–{_percent(max(numbers))})"


def render(record: dict[str, Any]) -> str:
    """The markdown tables: test accuracy at 1 and 2 ranks per rule and batch, then the sweep."""
    batches, seeds = record["batches"], record["seeds"]

    def accuracies(rows: list[dict], name: str, base: float, batch: int, part: str, diverged: Any = None) -> list:
        """The runs' accuracies on ``part``, ``diverged`` for a run that diverged."""
        return [
            diverged if row["diverged"] else row[f"{part}_accuracy"]
            for row in rows
            if (row["rule"], row["base_lr"], row["batch"]) == (name, base, batch)
        ]

    body = []
    for name, base in record["chosen"].items():
        for ranks, rows in (("1", record["one_rank"]), ("2", record["two_ranks"])):
            cells = [_mean_range(accuracies(rows, name, base, batch, "test")) for batch in batches]
            first = [RULES[name].label, f"{base:g}"] if ranks == "1" else ["", ""]
            body.append([*first, ranks, *cells])
    body.append(["(steps per epoch)", "", "", *(str(-(-record["rows"]["train"] // b)) for b in batches)])
    header = ["rule", "base lr (at 256)", "ranks", *(f"batch {b}" for b in batches)]
    table = markdown_table(header, body, "llr" + "r" * len(batches))
    sweep_body = []
    for name, rule in RULES.items():
        for base in rule.grid:
            means = [statistics.fmean(accuracies(record["one_rank"], name, base, b, "val", 0.0)) for b in batches]
            chosen = " (chosen)" if record["chosen"][name] == base else ""
            sweep_body.append(
                [rule.label, f"{base:g}{chosen}", *map(_percent, means), _percent(statistics.fmean(means))]
            )
    sweep_header = ["rule", "base lr", *(f"batch {b}" for b in batches), "mean"]
    sweep = markdown_table(sweep_header, sweep_body, "ll" + "r" * (len(batches) + 1))
    return (
        f"Test accuracy (%) after {record['epochs']} epochs ({record['dtype']}), "
        + ("one seed" if seeds == 1 else f"mean (min–max) over {seeds} seeds")
        + f":\n\n{table}\n\nLargest difference between 1 and 2 ranks, same seed: "
        f"{record['max_diff_accuracy'] * 100:.2f} points of test accuracy, {record['max_diff_loss']:.2g} in the last "
        f"epoch's training loss.\n\nThe sweep (1 rank; validation accuracy %, mean over seeds; 0 where a run diverged):"
        f"\n\n{sweep}"
    )


def _batches(text: str) -> list[int]:
    try:
        batches = [int(part) for part in text.split(",")]
    except ValueError:
        batches = []
    if not batches or any(batch < 2 or batch % 2 for batch in batches):
        raise argparse.ArgumentTypeError(
            f"expected even batch sizes of at least 2 (two ranks split them), got {text!r}"
        )
    return batches


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.large_batch", description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=EPOCHS, help="epochs of every run (the fixed budget)")
    parser.add_argument("--batches", type=_batches, default=list(BATCHES), help="global batch sizes, comma-separated")
    parser.add_argument("--seeds", type=int, default=SEEDS, help="seeds 0..N-1 of the weights and batch order")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"], help="the models' dtype")
    parser.add_argument("--json", help="write every run's figures here")
    parser.add_argument("--worker", nargs=2, metavar=("PLAN", "OUT"), help=argparse.SUPPRESS)
    parser.add_argument("--ranks", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(*args.worker, ranks=args.ranks)
        return
    started = time.perf_counter()
    settings = {"epochs": args.epochs, "dtype": args.dtype}
    seeds = range(args.seeds)
    with tempfile.TemporaryDirectory(prefix="large-batch-") as scratch:
        sweep = [
            {"rule": name, "base_lr": base, "batch": batch, "seed": seed}
            for name, rule in RULES.items()
            for base in rule.grid
            for batch in args.batches
            for seed in seeds
        ]
        one_rank = run_job(sweep, settings, 1, Path(scratch))
        chosen = choose(one_rank)
        two_ranks = run_job([run for run in sweep if chosen[run["rule"]] == run["base_lr"]], settings, 2, Path(scratch))
    key = ("rule", "base_lr", "batch", "seed")
    by_key = {tuple(row[k] for k in key): row for row in one_rank}
    pairs = [(by_key[tuple(row[k] for k in key)], row) for row in two_ranks if not row["diverged"]]
    splits = load_splits()
    record = {
        "command": " ".join(["python -m benchmarks.large_batch", *(sys.argv[1:] if argv is None else argv)]),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "data": "digits, standardised",
        "rows": {part: len(y) for part, (_, y) in splits.items()},
        "model": "-".join(map(str, [splits["train"][0].shape[1], *HIDDEN, 10])) + " relu, device cpu",
        "dtype": args.dtype,
        "epochs": args.epochs,
        "batches": args.batches,
        "seeds": args.seeds,
        "rules": {name: asdict(rule) for name, rule in RULES.items()},
        "chosen": chosen,
        "one_rank": one_rank,
        "two_ranks": two_ranks,
        "max_diff_accuracy": max((abs(a["test_accuracy"] - b["test_accuracy"]) for a, b in pairs), default=math.nan),
        "max_diff_loss": max((abs(a["loss"] - b["loss"]) for a, b in pairs), default=math.nan),
    }
    record["wall_s"] = time.perf_counter() - started
    if args.json:
        Path(args.json).write_text(json.dumps(record, indent=1) + "\n")
    print(render(record))
    print(f"\n({record['wall_s']:.0f} s in all)")


if __name__ == "__main__":
    main()
