"""Compare fusednn's training with PyTorch, plain NumPy and JAX: ``python -m benchmarks.compare``.

For each device, standard configuration (see :mod:`benchmarks.configs`) and mode, every
peer runs in its own worker process (:mod:`benchmarks._worker`), so no two thread pools
are busy in one process and every peer starts clean. Two modes (``--mode``, both by
default): ``step`` times one training step on a fixed device-resident batch; ``fit``
times whole epochs (1,000 steps, fewer for the largest configurations) over a
device-resident data set in a seeded permutation per epoch, fusednn through ``nn.fit``
itself and every other peer through the loop its users would write (see
:mod:`benchmarks.peers`). Repeats alternate between the peers (round-robin, the starting
peer rotating) so slow drifts of the machine hit all of them alike; each repeat times a
block of steps (whole epochs in ``fit`` mode) and reports µs per step. The tables give the
min and median over repeats, samples/s, fusednn's speed-up over each peer, the ratio to
the GEMM bound measured in the same run, and issue 11's targets as pass/fail
(:mod:`benchmarks.targets`). Cold-start figures (``import fusednn``; the first step and
the first ``fit`` epoch with an empty and with a warm JIT cache) come from fresh processes.

Examples::

    python -m benchmarks.compare --quick                       # cpu (and cuda when present), no "wide"
    python -m benchmarks.compare --device cpu --mode fit --configs xor,digits
    python -m benchmarks.compare --device cpu --quick --threads 1      # on a machine shared with other work
    python -m benchmarks.compare --render a.json b.json         # two runs' repeats pooled
    python -m benchmarks.compare --device cuda --json cuda.json
    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python -m benchmarks.compare   # figures for RESULTS.md
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .configs import CONFIGS, DEVICE_KINDS, FIT_MAX_MB, FIT_STEPS, MODES, STEP, Workload, select_configs
from .peers import PEERS, peers_for
from .report import mode_rows, modes_in, pool_reports, render, summarize_times
from .targets import as_json, outcomes

LOAD_WARNING = 0.5
"""A 1-minute load average above this at the start draws a warning: the machine is not quiet."""
REPO_ROOT = Path(__file__).resolve().parent.parent
COLD_START_CONFIG = "digits"
IMPORT_SAMPLES = 3
BLAS_ENV_WARNINGS = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
"""Variables that pin OpenBLAS to a narrower kernel; the runner warns when they are set."""
THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS")
"""The thread-pool sizes ``--threads`` sets for every worker (PyTorch's intra-op pool follows OMP_NUM_THREADS)."""
SINGLE_THREADED_XLA = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"


def thread_env(threads: int) -> dict[str, str]:
    """The environment that holds every peer's thread pools to ``threads`` threads.

    JAX's CPU client has a knob for one thread only (``XLA_FLAGS``); with more it keeps its own pool.

    >>> thread_env(1)["NUMBA_NUM_THREADS"], "XLA_FLAGS" in thread_env(2)
    ('1', False)
    """
    env = dict.fromkeys(THREAD_VARIABLES, str(threads))
    if threads == 1:
        env["XLA_FLAGS"] = SINGLE_THREADED_XLA
    return env


class WorkerError(RuntimeError):
    """A worker process died or answered something unexpected; the message carries its stderr."""


class Worker:
    """One peer's worker process: started, warmed up and then asked for timed blocks one at a time."""

    def __init__(
        self,
        args: list[str],
        env: dict[str, str] | None = None,
        timeout_s: float = 900.0,
    ) -> None:
        self._stderr = tempfile.TemporaryFile(mode="w+")
        self._timeout_s = timeout_s
        self.process = subprocess.Popen(
            [sys.executable, "-m", "benchmarks._worker", *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            text=True,
            cwd=REPO_ROOT,
            env=_worker_env(env),
        )
        self.ready = self._read()

    def _read(self) -> dict[str, Any]:
        """The worker's next JSON line; anything else a library printed to stdout is skipped."""
        for line in self.process.stdout:
            if line.startswith("{"):
                return json.loads(line)
        self.process.wait(timeout=self._timeout_s)
        self._stderr.seek(0)
        tail = self._stderr.read().strip().splitlines()[-3:]
        raise WorkerError(f"worker exited with status {self.process.returncode}: {' / '.join(tail)}")

    def run(self) -> float:
        """One timed block; returns µs per step."""
        self.process.stdin.write("run\n")
        self.process.stdin.flush()
        reply = self._read()
        if "us_per_step" not in reply:
            raise WorkerError(f"unexpected reply {reply!r}")
        return reply["us_per_step"]

    def close(self) -> None:
        """Ask the worker to quit and wait for it."""
        if self.process.poll() is None:
            try:
                self.process.stdin.write("quit\n")
                self.process.stdin.close()
            except BrokenPipeError:
                pass
            self.process.wait(timeout=60)
        self._stderr.close()


def _worker_env(extra: dict[str, str] | None) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    env.update(extra or {})
    return env


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def worker_args(peer: str, config: str, device: str, target_s: float, workload: Workload = STEP) -> list[str]:
    """The command line of a worker timing ``peer`` on ``config`` with ``workload``."""
    return [
        "--peer",
        peer,
        "--config",
        config,
        "--device",
        device,
        "--target-s",
        str(target_s),
        *workload.worker_flags(),
    ]


def time_config(
    config: str,
    device: str,
    peers: list[str],
    repeats: int,
    target_s: float,
    settle_s: float,
    workload: Workload = STEP,
) -> list[dict[str, Any]]:
    """Time every peer on one configuration with ``workload``, alternating between them over ``repeats`` rounds.

    Workers start one after another (each is fully warmed up before the next starts),
    then each round asks every worker for one block, the starting worker rotating.
    ``settle_s`` of idle time after each block lets the finished peer's threads go to
    sleep before the next peer's clock starts.
    """
    mode = workload.mode
    results: list[dict[str, Any]] = []
    workers: list[tuple[dict[str, Any], Worker]] = []
    for peer in peers:
        row: dict[str, Any] = {"config": config, "peer": peer, "mode": mode}
        results.append(row)
        try:
            worker = Worker(worker_args(peer, config, device, target_s, workload))
        except WorkerError as error:
            row["reason"] = f"failed: {error}"
            _log(f"  {config} {mode} {peer}: {row['reason']}")
            continue
        if worker.ready.get("status") != "ready":
            row["reason"] = worker.ready.get("reason", "unavailable")
            worker.close()
            _log(f"  {config} {mode} {peer}: skipped ({row['reason']})")
            continue
        keys = ("build_s", "first_step_s", "steps_per_repeat", "epoch_steps", "info")
        row.update({key: worker.ready[key] for key in keys if key in worker.ready})
        row["us_per_step"] = []
        workers.append((row, worker))
    try:
        for round_index in range(repeats):
            shift = round_index % max(len(workers), 1)
            for row, worker in workers[shift:] + workers[:shift]:
                row["us_per_step"].append(worker.run())
                time.sleep(settle_s)
    finally:
        for _, worker in workers:
            worker.close()
    for row, _ in workers:
        row.update(summarize_times(row["us_per_step"]))
        _log(f"  {config} {mode} {row['peer']}: median {row['median_us']:.1f} µs/step")
    return results


def measure_import(samples: int = IMPORT_SAMPLES) -> list[float]:
    """Seconds ``import fusednn`` takes in each of ``samples`` fresh interpreters."""
    code = "import time; t = time.perf_counter(); import fusednn; print(time.perf_counter() - t)"
    return [
        float(
            subprocess.run(
                [sys.executable, "-c", code],
                capture_output=True,
                text=True,
                check=True,
                cwd=REPO_ROOT,
                env=_worker_env(None),
            ).stdout
        )
        for _ in range(samples)
    ]


def cold_start(device: str, config: str = COLD_START_CONFIG, workload: Workload = STEP) -> dict[str, Any]:
    """fusednn's first step (``fit`` mode: first epoch) in a fresh process with an empty JIT/kernel cache, then warm.

    ``NUMBA_CACHE_DIR`` and ``CUPY_CACHE_DIR`` point at a new temporary directory,
    so the first process compiles every kernel it needs and the second finds them cached.
    """
    mode = workload.mode
    entry: dict[str, Any] = {"config": config, "mode": mode}
    with tempfile.TemporaryDirectory(prefix="fusednn-cold-") as cache:
        env = {"NUMBA_CACHE_DIR": cache, "CUPY_CACHE_DIR": cache}
        for label in ("empty", "warm"):
            args = [*worker_args("fusednn", config, device, 0.01, workload), "--no-serve"]
            try:
                worker = Worker(args, env=env)
            except WorkerError as error:
                return {"mode": mode, "reason": f"failed: {error}"}
            worker.close()
            if worker.ready.get("status") != "ready":
                return {"mode": mode, "reason": worker.ready.get("reason", "unavailable")}
            entry[label] = {key: worker.ready[key] for key in ("build_s", "first_step_s")}
            if mode == "fit":
                entry["epoch_steps"] = worker.ready["epoch_steps"]
    return entry


def gpu_count() -> int:
    """Usable CUDA GPUs, asked in a subprocess so this process never loads CuPy."""
    code = "from fusednn.backends.cuda_runtime import device_count; print(device_count())"
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        env=_worker_env(None),
    )
    return int(done.stdout.strip() or 0) if done.returncode == 0 else 0


def machine_info() -> dict[str, Any]:
    """CPU model and cores, Python, BLAS in use (threadpoolctl), and any OpenBLAS overrides in the environment."""
    import numpy as np
    from threadpoolctl import threadpool_info

    info: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "blas": [
            {key: lib.get(key) for key in ("internal_api", "version", "architecture", "num_threads")}
            for lib in threadpool_info()
            if lib.get("user_api") == "blas"
        ],
        "env": {name: os.environ[name] for name in BLAS_ENV_WARNINGS if name in os.environ},
        "threads_env": {name: os.environ[name] for name in [*THREAD_VARIABLES, "XLA_FLAGS"] if name in os.environ},
        "load_average": round(os.getloadavg()[0], 2),
    }
    return info


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The runner's command line.

    Raises:
        SystemExit: bad arguments (argparse prints what was expected).
    """
    parser = argparse.ArgumentParser(prog="python -m benchmarks.compare", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick",
        action="store_true",
        help="skip the 'wide' configuration and use 3 repeats",
    )
    parser.add_argument(
        "--device",
        choices=[*DEVICE_KINDS, "all"],
        default="all",
        help="cpu, cuda, or all (cpu plus cuda when a GPU is present; the default)",
    )
    parser.add_argument(
        "--mode",
        choices=[*MODES, "both"],
        default="both",
        help="step (a fixed-batch step), fit (whole epochs as nn.fit trains), or both (the default)",
    )
    parser.add_argument(
        "--fit-steps",
        type=_positive(int),
        default=FIT_STEPS,
        help=f"steps per fit-mode epoch (default {FIT_STEPS}; fewer where the data set would pass --fit-max-mb)",
    )
    parser.add_argument(
        "--fit-max-mb",
        type=_positive(float),
        default=FIT_MAX_MB,
        help=f"largest fit-mode data set per peer in MiB (default {FIT_MAX_MB})",
    )
    parser.add_argument(
        "--configs",
        type=_names(CONFIGS),
        help=f"comma-separated subset of {','.join(CONFIGS)}",
    )
    parser.add_argument(
        "--peers",
        type=_names(PEERS),
        help=f"comma-separated subset of {','.join(PEERS)}",
    )
    parser.add_argument(
        "--repeats",
        type=_positive(int),
        help="timed blocks per peer (default 7, --quick 3)",
    )
    parser.add_argument(
        "--target-s",
        type=_positive(float),
        default=0.2,
        help="length of one timed block in s",
    )
    parser.add_argument("--settle-s", type=float, default=0.02, help="idle time between blocks in s")
    parser.add_argument(
        "--threads",
        type=_positive(int),
        help="hold every peer's thread pools (OpenMP, BLAS, Numba; XLA at 1) to this many threads; "
        "on a shared machine 1 keeps a descheduled thread from stalling each parallel region",
    )
    parser.add_argument(
        "--no-cold-start",
        dest="cold_start",
        action="store_false",
        help="skip cold-start figures",
    )
    parser.add_argument(
        "--json",
        type=Path,
        help="also write every measurement to this JSON file, rewritten after each configuration",
    )
    parser.add_argument(
        "--render",
        type=Path,
        nargs="+",
        metavar="JSON",
        help="measure nothing: print the report of a JSON file an earlier run wrote (also a cut-short one); "
        "several files of runs on one machine are pooled (their repeats together, the best GEMM rate)",
    )
    args = parser.parse_args(argv)
    if args.repeats is None:
        args.repeats = 3 if args.quick else 7
    args.modes = list(MODES) if args.mode == "both" else [args.mode]
    return args


def _names(choices: Any) -> Any:
    def parse(text: str) -> list[str]:
        names = [name.strip() for name in text.split(",") if name.strip()]
        unknown = [name for name in names if name not in choices]
        if not names or unknown:
            raise argparse.ArgumentTypeError(
                f"unknown {', '.join(unknown) or 'empty list'}; expected some of {', '.join(choices)}"
            )
        return names

    return parse


def _positive(kind: type) -> Any:
    def parse(text: str) -> Any:
        value = kind(text)
        if not value > 0:
            raise argparse.ArgumentTypeError(f"expected a positive number, got {text}")
        return value

    return parse


def _worker_json(args: list[str]) -> dict[str, Any]:
    """Run a one-shot worker (e.g. ``--gemm``) and return the JSON it prints."""
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks._worker", *args], capture_output=True, text=True, cwd=REPO_ROOT,
        env=_worker_env(None),
    )  # fmt: skip
    if done.returncode != 0:
        raise WorkerError(f"worker {' '.join(args)} failed: {done.stderr.strip()[-500:]}")
    return json.loads(done.stdout)


def write_json(path: Path, report: dict[str, Any]) -> None:
    """Write ``report`` to ``path`` atomically: a run cut short leaves the last complete file, never half of one."""
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps(report, indent=1))
    os.replace(temporary, path)


def run(args: argparse.Namespace, progress: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Measure everything the arguments ask for and return the report as a dict (what ``--json`` writes).

    ``progress`` gets the report so far after each configuration, so a run that
    is stopped (a time limit on a lent GPU) keeps what it measured.
    """
    report: dict[str, Any] = {
        "command": " ".join(["python -m benchmarks.compare", *sys.argv[1:]]),
        "machine": machine_info(),
        "devices": {},
    }
    devices = ["cpu", "cuda"] if args.device == "all" else [args.device]
    workloads = [Workload(mode, args.fit_steps, args.fit_max_mb) for mode in args.modes]
    gpus = gpu_count() if "cuda" in devices else 0
    for device in devices:
        if device == "cuda" and gpus == 0:
            report["devices"]["cuda"] = {"reason": "No usable CUDA GPU here (CuPy missing or no GPU visible); skipped."}
            continue
        configs = [config.name for config in select_configs(args.configs, device, args.quick)]
        peers = [peer for peer in peers_for(device) if args.peers is None or peer in args.peers]
        _log(f"{device}: measuring GEMM throughput")
        gemm = _worker_json(["--device", device, "--target-s", str(args.target_s), "--gemm", *configs])
        results: list[dict[str, Any]] = []
        report["devices"][device] = {
            "gemm": gemm,
            "results": results,
            "repeats": args.repeats,
            "target_s": args.target_s,
        }
        for config in configs:
            for workload in workloads:
                epoch = f", {workload.epoch_steps(CONFIGS[config])}-step epochs"
                _log(f"{device}: {config}, {workload.mode} mode{epoch if workload.mode == 'fit' else ''}")
                results += time_config(config, device, peers, args.repeats, args.target_s, args.settle_s, workload)
            report["devices"][device]["targets"] = device_targets(report["devices"][device], device)
            if progress is not None:
                progress(report)
    report["load_average_at_end"] = round(os.getloadavg()[0], 2)
    if args.cold_start:
        _log("cold start")
        report["cold_start"] = {
            "import_s": measure_import(),
            "devices": {
                device: [cold_start(device, workload=workload) for workload in workloads]
                for device in devices
                if device == "cpu" or gpus
            },
        }
    return report


def device_targets(device_result: dict[str, Any], device: str) -> list[dict[str, Any]]:
    """Issue 11's targets checked on one device's results so far, per mode, as JSON-ready dicts.

    ``--render`` recomputes them from the results; these are for readers of the JSON alone.
    """
    results, gemm = device_result["results"], device_result["gemm"].get("best_flops_per_s")
    return [
        dict(entry, mode=mode)
        for mode in modes_in(results)
        for entry in as_json(outcomes(device, mode, mode_rows(results, mode), gemm))
    ]


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns 2 when ``--device cuda`` is asked for on a machine without a usable GPU."""
    args = parse_args(argv)
    if args.render is not None:
        print(render(pool_reports([json.loads(path.read_text()) for path in args.render])))
        return 0
    if args.threads is not None:
        os.environ.update(thread_env(args.threads))  # every worker inherits it; this process times nothing
    if args.device == "cuda" and gpu_count() == 0:
        print(
            "--device cuda needs a usable CUDA GPU (CuPy installed and a GPU visible); none found here. "
            "Run with --device cpu.",
            file=sys.stderr,
        )
        return 2
    machine = machine_info()
    for name, value in machine["env"].items():
        _log(
            f"warning: {name}={value} is set, which holds OpenBLAS to a narrower kernel; "
            f"unset it for representative figures (env -u {name} ...)"
        )
    if machine["load_average"] > LOAD_WARNING:
        _log(
            f"warning: the 1-minute load average is {machine['load_average']}; other processes will disturb the timings"
        )
    json_path = args.json
    report = run(args, progress=None if json_path is None else lambda partial: write_json(json_path, partial))
    print(render(report))
    if json_path is not None:
        write_json(json_path, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
