"""Data-parallel ``fit`` runs that tests/test_distributed.py launches under ``mpiexec`` and repeats in one process.

``python mpi_job_fit.py OUT equivalence``: every rank trains each of :data:`CASES` with
``distributed="mpi"`` and writes its weights and history to ``OUT/<case>.rank<r>.npz``.
``python mpi_job_fit.py OUT failures``: every rank runs each of :data:`FAILURES` and writes
the error it raised (type, message, notes) to ``OUT/failures.rank<r>.json``.
``python mpi_job_fit.py OUT abort``: rank 1 fails in the middle of an epoch.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

import numpy as np

from fusednn import nn


def _classes(rows: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, 6))
    return x, (x[:, 0] + x[:, 1] * x[:, 2] > 0).astype(np.int64) + (x[:, 3] > 0.8)


def _regression(rows: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(rows, 6))
    return x, np.stack([np.sin(x[:, 0]) + x[:, 1], x[:, 2] * x[:, 3]], axis=1)


CASES: dict[str, dict[str, Any]] = {
    # 203 rows at a global batch of 32: the last batch has 11 rows, split 5 / 6.
    "adam-accumulate-validation-l2": dict(
        device="cpu",
        dtype="float64",
        rows=203,
        batch=16,
        optimizer="adam",
        lr=0.01,
        accumulate=2,
        l2=1e-3,
        validation_split=0.25,
        metrics=["accuracy", "precision", "f1"],
    ),
    # 97 rows at a global batch of 32: the last batch has 1 row, so rank 0 has none of it.
    "sgd-momentum-schedule-one-row-last": dict(
        device="numpy",
        dtype="float64",
        rows=97,
        batch=16,
        optimizer="sgd",
        lr=0.05,
        momentum=0.9,
        schedule=True,
        metrics=["accuracy"],
    ),
    "lamb-regression": dict(
        device="cpu",
        dtype="float64",
        rows=150,
        batch=8,
        optimizer="lamb",
        lr=0.01,
        loss="mse",
        metrics=["mae"],
        validation_split=0.2,
    ),
    "float32-rmsprop": dict(
        device="cpu",
        dtype="float32",
        rows=256,
        batch=32,
        optimizer="rmsprop",
        lr=0.003,
        metrics=["accuracy"],
    ),
}
"""Name -> settings; ``batch`` is each rank's, and one process trains with ``ranks * batch``."""


def train_case(name: str, batch: int, distributed: Any, **overrides: Any) -> tuple[nn.Sequential, nn.History]:
    """Train :data:`CASES` ``name`` for 3 epochs with ``batch`` rows per (rank's) batch."""
    case = {**CASES[name], **overrides}
    regression = case.get("loss") == "mse"
    x, y = _regression(case["rows"]) if regression else _classes(case["rows"])
    outputs = 2 if regression else 3
    model = nn.Sequential(
        [nn.Dense(6, 12, activation="tanh", l2=case.get("l2", 0.0)), nn.Dense(12, outputs)],
        device=case["device"],
        dtype=case["dtype"],
        seed=3,
    )
    kwargs = {"momentum": case["momentum"]} if "momentum" in case else {}
    history = nn.fit(
        model,
        x,
        y,
        loss=case.get("loss", "categorical_crossentropy"),
        optimizer=nn.get_optimizer(case["optimizer"], model.parameters(), lr=case["lr"], **kwargs),
        epochs=3,
        batch_size=batch,
        accumulate=case.get("accumulate", 1),
        validation_split=case.get("validation_split"),
        metrics=case["metrics"],
        schedule=nn.schedules.CosineDecay(case["lr"], epochs=3) if case.get("schedule") else None,
        progress=False,
        seed=5,
        distributed=distributed,
        checkpoint=case.get("checkpoint"),
    )
    return model, history


def _flat(model: nn.Sequential) -> np.ndarray:
    return np.concatenate([w.ravel() for w in model.get_weights()])


def equivalence(out: Path, rank: int) -> None:
    for name, case in CASES.items():
        checkpoint = out / f"{name}.checkpoint.npz"
        model, history = train_case(name, case["batch"], "mpi", checkpoint=str(checkpoint))
        np.savez(
            out / f"{name}.rank{rank}.npz",
            weights=_flat(model),
            history=json.dumps(history.history),
            params=json.dumps(history.params),
        )


def _bad_rows_on_rank_1(rank: int) -> None:
    x, y = _classes(64)
    if rank == 1:
        x[7, 2] = np.nan
    model = nn.MLP([6, 4, 3], device="numpy", seed=0)
    nn.fit(model, x, y, epochs=1, batch_size=8, progress=False, distributed="mpi")


def _other_data_on_rank_1(rank: int) -> None:
    x, y = _classes(64, seed=rank)
    model = nn.MLP([6, 4, 3], device="numpy", seed=0)
    nn.fit(model, x, y, epochs=1, batch_size=8, progress=False, distributed="mpi")


def _unwritable_checkpoint(rank: int, out: Path) -> None:
    x, y = _classes(64)
    model = nn.MLP([6, 4, 3], device="numpy", seed=0)
    (out / "a-file").write_text("")
    nn.fit(model, x, y, epochs=1, batch_size=8, progress=False, distributed="mpi",
           checkpoint=str(out / "a-file" / "checkpoint.npz"))  # fmt: skip


def _diverges(rank: int) -> None:
    x, y = _classes(64)
    model = nn.MLP([6, 4, 3], device="numpy", seed=0)
    nn.fit(model, x * 1e3, y, optimizer="sgd", lr=1e30, epochs=2, batch_size=8, progress=False, distributed="mpi")


def planted_on_rank_1(base: type[nn.Loss], rank: int, call: int, plant: Callable[[Any], Any]) -> nn.Loss:
    """A ``base`` loss whose ``call``-th call on rank 1 (of this process's ``rank``) returns ``plant(result)``."""

    class Planted(base):  # type: ignore[valid-type, misc]  # a class made for one test run
        calls = 0

        def __call__(self, *args: Any, **kwargs: Any) -> Any:
            self.calls += 1
            result = super().__call__(*args, **kwargs)
            return plant(result) if rank == 1 and self.calls == call else result

    return Planted()


def _nan_on_rank_1(rank: int) -> None:
    x, y = _classes(64)
    model = nn.MLP([6, 4, 3], device="numpy", seed=0)
    # The second step's loss is NaN on rank 1 alone: a divergence the other rank never sees.
    loss = planted_on_rank_1(nn.CategoricalCrossentropy, rank, 2, lambda result: (result[0] * np.nan, result[1]))
    nn.fit(model, x, y, loss=loss, epochs=2, batch_size=8, progress=False, distributed="mpi")


def _compiled(rank: int) -> None:
    x, y = _classes(64)
    model = nn.MLP([6, 4, 3], device="cpu", seed=0)
    nn.fit(model, x, y, epochs=1, batch_size=8, progress=False, distributed="mpi", epoch_path="compiled")


FAILURES: dict[str, Callable[..., None]] = {
    "bad rows on rank 1": _bad_rows_on_rank_1,
    "other data on rank 1": _other_data_on_rank_1,
    "unwritable checkpoint": _unwritable_checkpoint,
    "diverges": _diverges,
    "nan on rank 1": _nan_on_rank_1,
    "compiled": _compiled,
}


def failures(out: Path, rank: int) -> None:
    raised: dict[str, Any] = {}
    for name, run in FAILURES.items():
        try:
            run(rank, out) if name == "unwritable checkpoint" else run(rank)
        except Exception as error:
            notes = getattr(error, "__notes__", [])
            raised[name] = {"type": type(error).__name__, "message": str(error), "notes": notes}
        else:
            raised[name] = None
    (out / f"failures.rank{rank}.json").write_text(json.dumps(raised))


def _fail(result: Any) -> NoReturn:
    raise ZeroDivisionError("planted failure in the third step")


def abort(out: Path, rank: int) -> None:
    x, y = _regression(256)
    model = nn.MLP([6, 4, 2], device="numpy", seed=0)
    loss = planted_on_rank_1(nn.MeanSquaredError, rank, 3, _fail)  # a bug in the middle of an epoch
    nn.fit(model, x, y, loss=loss, epochs=50, batch_size=8, progress=False, distributed="mpi")


def main() -> None:
    from mpi4py import MPI

    out, job = Path(sys.argv[1]), sys.argv[2]
    {"equivalence": equivalence, "failures": failures, "abort": abort}[job](out, MPI.COMM_WORLD.Get_rank())


if __name__ == "__main__":
    main()
