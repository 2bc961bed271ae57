"""Samples per second of data-parallel training on this machine: 1 and 2 MPI ranks against 1 process with 2 threads.

Every setting trains mnist-l's 784-1024-1024-10 ReLU MLP (float32, softmax cross-entropy,
Adam) on random rows through ``nn.fit``, timed by :mod:`benchmarks.dp_throughput` (the best of
its timed epochs, set-up excluded, with the all-reduce's share of that epoch):

* ``1 process``: 1 or 2 threads (BLAS and Numba pools), on the per-step path and on
  compiled epochs, at a batch of 1,024;
* ``2 ranks, 1 thread each``: ``fit(distributed=...)`` at 512 rows per rank, the same
  global batch of 1,024 (the same training, to rounding), and at 1,024 per rank (a global
  batch of 2,048: what each rank does when the job grows with the ranks).

Every setting runs under ``mpiexec`` (a plain ``python`` process ran up to 15 % slower here
than one ``mpiexec -n 1`` started), each as its users would launch it: a rank per core,
bound to it (Open MPI's default), and the two-thread process unbound (``--bind-to none``).
The settings run in fresh jobs, alternating, ``--rounds`` times; the table gives the best
and the median over the rounds. ``OPENBLAS_CORETYPE`` and ``OPENBLAS_L2_SIZE`` are removed
from the jobs' environment (they can halve OpenBLAS's GEMM here)::

    python -m benchmarks.data_parallel --json benchmarks/results/data-parallel.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

from .compare import BLAS_ENV_WARNINGS, REPO_ROOT
from .mpi_jobs import job_environment, mpiexec

SETTINGS: dict[str, dict[str, Any]] = {
    "1 process, 1 thread, per-step": {"ranks": 1, "threads": 1, "batch": 1024, "epoch_path": "per-step"},
    "1 process, 1 thread, compiled": {"ranks": 1, "threads": 1, "batch": 1024, "epoch_path": "compiled"},
    "1 process, 2 threads, per-step": {"ranks": 1, "threads": 2, "batch": 1024, "epoch_path": "per-step"},
    "1 process, 2 threads, compiled": {"ranks": 1, "threads": 2, "batch": 1024, "epoch_path": "compiled"},
    "2 ranks, 1 thread each, 512 rows each": {"ranks": 2, "threads": 1, "batch": 512, "epoch_path": "per-step"},
    "2 ranks, 1 thread each, 1,024 rows each": {"ranks": 2, "threads": 1, "batch": 1024, "epoch_path": "per-step"},
}
BASELINE = "1 process, 1 thread, per-step"


def command(setting: dict[str, Any], steps: int, epochs: int) -> list[str]:
    """The ``mpiexec`` command line of one job of ``setting``.

    >>> command(SETTINGS["1 process, 2 threads, compiled"], 4, 2)[3:7]
    ['-n', '1', '--bind-to', 'none']
    """
    binding = ["--bind-to", "none"] if setting["threads"] > 1 else []
    return [
        *mpiexec(setting["ranks"], *binding),
        sys.executable, "-m", "benchmarks.dp_throughput", "--config", "mnist-l", "--steps", str(steps),
        "--epochs", str(epochs), "--batch-per-rank", str(setting["batch"]), "--epoch-path", setting["epoch_path"],
    ]  # fmt: skip


def environment(threads: int) -> dict[str, str]:
    """The environment of a job of ``threads`` threads per rank, without the OpenBLAS overrides."""
    env = job_environment(threads)
    for name in BLAS_ENV_WARNINGS:
        env.pop(name, None)
    return env


def run_setting(setting: dict[str, Any], steps: int, epochs: int) -> dict[str, Any]:
    """One fresh job of ``setting``: rank 0's record from :func:`benchmarks.dp_throughput.samples_per_s`."""
    argv = command(setting, steps, epochs)
    result = subprocess.run(argv, env=environment(setting["threads"]), cwd=REPO_ROOT, capture_output=True, text=True)
    if result.returncode:
        raise RuntimeError(f"{' '.join(argv)} failed:\n{result.stderr}")
    return next(json.loads(line) for line in result.stdout.splitlines() if line.startswith("{"))


def table(results: dict[str, list[dict[str, Any]]]) -> str:
    """The markdown table of ``results`` (setting -> one record per round).

    >>> record = {"samples_per_s": 100.0, "allreduce_share": 0.0}
    >>> print(table({BASELINE: [record], "2 ranks": [{"samples_per_s": 180.0, "allreduce_share": 0.05}]}))
    | setting | samples/s best | samples/s median | × 1 process, 1 thread, per-step | all-reduce share |
    | --- | ---: | ---: | ---: | ---: |
    | 1 process, 1 thread, per-step | 100 | 100 | 1.00 | - |
    | 2 ranks | 180 | 180 | 1.80 | 5.0% |
    """
    base = statistics.median(record["samples_per_s"] for record in results[BASELINE])
    lines = [
        f"| setting | samples/s best | samples/s median | × {BASELINE} | all-reduce share |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for name, records in results.items():
        rates = [record["samples_per_s"] for record in records]
        shares = [record["allreduce_share"] for record in records]
        share = f"{statistics.median(shares):.1%}" if any(shares) else "-"
        median = statistics.median(rates)
        lines.append(f"| {name} | {max(rates):,.0f} | {median:,.0f} | {median / base:.2f} | {share} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.data_parallel", description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=12, help="global batches per epoch")
    parser.add_argument("--epochs", type=int, default=3, help="timed epochs per job (the best counts)")
    parser.add_argument("--rounds", type=int, default=3, help="fresh jobs per setting, alternating")
    parser.add_argument("--json", type=Path, default=None, help="write every record here")
    args = parser.parse_args(argv)
    results: dict[str, list[dict[str, Any]]] = {name: [] for name in SETTINGS}
    names = list(SETTINGS)
    for round_ in range(args.rounds):
        for name in names[round_ % len(names) :] + names[: round_ % len(names)]:  # who goes first rotates
            results[name].append(run_setting(SETTINGS[name], args.steps, args.epochs))
            print(f"round {round_ + 1}: {name}: {results[name][-1]['samples_per_s']:,.0f}/s", file=sys.stderr)
    print(table(results))
    if args.json is not None:
        args.json.write_text(json.dumps({"settings": SETTINGS, "results": results}, indent=1) + "\n")


if __name__ == "__main__":
    main()
