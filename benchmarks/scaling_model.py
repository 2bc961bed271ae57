"""A model of data-parallel step time on 8-GPU NVLink nodes, and of the batch below which data-parallel stops paying.

``python -m benchmarks.scaling_model`` prints markdown tables for every standard configuration
(:mod:`benchmarks.configs`); ``--json FILE`` writes the same figures. Data-parallel ``fit`` runs
backward, then one all-reduce of the flat gradient buffer, then the update, with nothing
overlapped, so on ``P`` devices at per-device batch ``b``::

    step(P, b)       = compute(b) + allreduce(S, P)        S: the gradient buffer's bytes
    efficiency(P, b) = compute(b) / step(P, b)             P devices' throughput / (P x one device's)
    overlapped bound = compute(b) / max(compute(b), allreduce(S, P))   (all-reduce hidden behind backward)

The threshold batch ``b_E`` is the per-device batch below which ``efficiency < E``:
``compute(b_E) = allreduce(S, P) * E / (1 - E)``, so ``b_50`` is where compute equals
communication; ``P * b_E`` is the global batch below which adding devices stops paying.

The all-reduce follows nccl-tests' definition of bus bandwidth, ``busBW = algBW * 2 (P - 1) / P``
(``algBW = S / t``), plus a latency: see :class:`Network`. ``compute(b)`` is either an estimate,
the step's GEMM FLOPs (:func:`benchmarks.configs.step_flops`) at an assumed rate plus an assumed
per-step overhead (:class:`FlopStepTime`), or a measured step time per configuration
(:class:`MeasuredStepTime`), such as the comparison runner's ``compare_cuda.json`` from ``bash .ci/gpu``::

    python -m benchmarks.scaling_model --measured gpu-results/compare_cuda.json

``--mpi`` (:mod:`benchmarks.mpi_allreduce`) and ``--cpu-measured`` (a CPU runner JSON) add the
same model for this machine's MPI; ``--cpu-dp`` adds data-parallel throughput measured there
(:mod:`benchmarks.dp_throughput`, one file per rank count).

>>> network = Network("two ranks", ranks_per_node=2, intra_bus_bw=8e9, latency_s=4e-6)
>>> round(network.allreduce_s(8e6, 2) * 1e6)  # 8 MB over 2 ranks: 4 µs + 8e6 * 2 * 1/2 / 8e9 s
1004
>>> compute = FlopStepTime(flops_per_s=50e12, overhead_s=30e-6)
>>> round(efficiency(CONFIGS["mnist-l"], 1024, 1, network, compute), 3)  # one rank: nothing to reduce
1.0
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

from fusednn.nn.parameters import ALIGNMENT

from .configs import CONFIGS, Config, step_flops
from .report import format_rate, format_us, markdown_table

GIGA = 1e9
NODES = (1, 2, 4, 8, 16)
"""Node counts of the GPU tables: 8, 16, 32, 64 and 128 GPUs."""
TARGETS = (0.5, 0.9)
"""The efficiencies whose threshold batch the tables give."""

# Assumptions: published figures and labelled guesses, each a parameter of the model.
GPUS_PER_NODE = 8
NVLINK_BUS_BW = (370e9, 480e9)
"""Published nccl-tests all-reduce bus bandwidth within one 8-GPU H100/H200 NVLink node, bytes/s (the range)."""
NIC_BW = 50e9
"""Assumption: one 400 Gb/s NDR InfiniBand NIC per GPU, about 50 GB/s per GPU between nodes."""
NVLINK_LATENCY_S = 20e-6
"""Assumption: fixed cost of one all-reduce inside a node (nccl-tests' small-message times are ~10-30 µs)."""
NODE_LATENCY_S = 10e-6
"""Assumption: added latency per doubling of the node count (a tree across nodes)."""
FP32_FLOPS = 50e12
"""Assumption: sustained FP32 (non-tensor) GEMM rate of an H100/H200 SXM (datasheet peak 67 TFLOP/s)."""
TF32_FLOPS = 300e12
"""Assumption: sustained TF32 tensor-core GEMM rate (datasheet dense peak 495 TFLOP/s)."""
STEP_OVERHEAD_S = 30e-6
"""Assumption: a GPU step's floor, launch-bound (a replayed CUDA graph), when nothing measured says otherwise."""
FLOOR_CONFIG = "xor"
"""The configuration whose measured step is the per-step floor: its GEMMs (2x3, 3x2) cost next to nothing."""


def gradient_bytes(config: Config, itemsize: int = 4) -> int:
    """Bytes of ``config``'s flat gradient buffer, the one all-reduced per step: every tensor padded to ``ALIGNMENT``.

    >>> gradient_bytes(CONFIGS["xor"])  # 4 tensors of 6, 3, 6 and 2 elements, each padded to 32 floats
    512
    """
    aligned = [-(-n // ALIGNMENT) * ALIGNMENT for n_in, n_out in config.layer_shapes for n in (n_in * n_out, n_out)]
    return sum(aligned) * itemsize


@dataclass(frozen=True)
class Network:
    """All-reduce cost: a ring inside a node, hierarchical across nodes, nccl-tests' bus bandwidth.

    With ``g = min(P, ranks_per_node)`` ranks in each of ``n = P / g`` nodes and ``S`` bytes::

        t = latency_s + node_latency_s * log2(n)
            + S * 2 (g - 1) / g / intra_bus_bw              reduce-scatter and all-gather inside the node
            + (S / g) * 2 (n - 1) / n / inter_bw            each rank's shard all-reduced across nodes

    The phases are added (no pipelining between them): an upper bound on a hierarchical
    all-reduce, off by at most 2x from one that overlaps them perfectly. ``P = 1`` costs nothing.

    >>> node = Network("node", 8, intra_bus_bw=400e9, inter_bw=50e9, latency_s=20e-6)
    >>> round(node.allreduce_s(4e8, 8) * 1e3, 3), round(node.allreduce_s(4e8, 16) * 1e3, 3)  # 400 MB, ms
    (1.77, 2.77)

    Raises:
        ValueError: ``P`` below 1; more ranks than one node holds that are not whole nodes, or no ``inter_bw``.
    """

    name: str
    ranks_per_node: int
    intra_bus_bw: float
    inter_bw: float | None = None
    latency_s: float = 0.0
    node_latency_s: float = 0.0

    def allreduce_s(self, nbytes: float, ranks: int) -> float:
        """Seconds to all-reduce ``nbytes`` over ``ranks`` ranks."""
        if ranks < 1:
            raise ValueError(f"an all-reduce needs at least 1 rank, got {ranks}")
        if ranks == 1:
            return 0.0
        per_node = min(ranks, self.ranks_per_node)
        nodes = ranks // per_node
        if nodes * per_node != ranks or (nodes > 1 and self.inter_bw is None):
            raise ValueError(
                f"{self.name} holds {self.ranks_per_node} ranks per node"
                + ("" if self.inter_bw else " and one node only")
                + f"; {ranks} ranks do not fit it"
            )
        seconds = self.latency_s + self.node_latency_s * math.log2(nodes)
        seconds += nbytes * 2 * (per_node - 1) / per_node / self.intra_bus_bw
        if nodes > 1:
            assert self.inter_bw is not None
            seconds += nbytes / per_node * 2 * (nodes - 1) / nodes / self.inter_bw
        return seconds


def gpu_network(intra_bus_bw: float, inter_bw: float = NIC_BW) -> Network:
    """8-GPU NVLink nodes with ``intra_bus_bw`` inside and ``inter_bw`` per GPU between them (the assumptions above)."""
    return Network(
        f"8-GPU NVLink nodes, {intra_bus_bw / GIGA:.0f} GB/s bus inside, {inter_bw / GIGA:.0f} GB/s per GPU between",
        GPUS_PER_NODE,
        intra_bus_bw,
        inter_bw,
        NVLINK_LATENCY_S,
        NODE_LATENCY_S,
    )


StepTime = Callable[[Config, float], float]
"""``compute(config, b)``: seconds of one device's training step (no communication) at per-device batch ``b``."""


class StepTimeModel(Protocol):
    """A :data:`StepTime` that can say where each configuration's figure comes from (for the tables)."""

    def __call__(self, config: Config, batch: float) -> float: ...

    def source(self, config: Config) -> str: ...


@dataclass(frozen=True)
class FlopStepTime:
    """A step's GEMM FLOPs at ``flops_per_s``, plus ``overhead_s``: ``overhead + 6 b sum(in * out) / rate``.

    >>> round(FlopStepTime(50e12, 30e-6)(CONFIGS["mnist-l"], 1024) * 1e6, 1)  # 11.4 GFLOP at 50 TFLOP/s + 30 µs
    258.8
    """

    flops_per_s: float
    overhead_s: float
    label: str = "FLOP estimate"

    def __call__(self, config: Config, batch: float) -> float:
        return self.overhead_s + batch * step_flops(replace(config, batch=1)) / self.flops_per_s

    def source(self, config: Config) -> str:
        """Where ``config``'s figure comes from."""
        return self.label


@dataclass(frozen=True)
class MeasuredStepTime:
    """Measured seconds per step at each configuration's own batch, scaled to other batches above a floor.

    At batch ``b`` a configuration measured at ``T`` seconds with batch ``B`` takes
    ``floor + (T - floor) * b / B`` (``floor`` capped at ``T``): the per-step floor stays, the rest
    is taken as proportional to the rows. Configurations with no measurement go to ``fallback``.

    >>> measured = MeasuredStepTime({"digits": 100e-6}, floor_s=20e-6)
    >>> round(measured(CONFIGS["digits"], 64) * 1e6, 1)  # batch 32 measured: 20 + 80 * 64 / 32 µs
    180.0

    Raises:
        KeyError: at call time, a configuration that was not measured and there is no ``fallback``.
    """

    seconds: Mapping[str, float]
    floor_s: float
    fallback: StepTime | None = None
    label: str = "measured"

    def __call__(self, config: Config, batch: float) -> float:
        measured = self.seconds.get(config.name)
        if measured is None:
            if self.fallback is None:
                raise KeyError(f"no measured step time for {config.name!r}; measured: {', '.join(self.seconds)}")
            return self.fallback(config, batch)
        floor = min(self.floor_s, measured)
        return floor + (measured - floor) * batch / config.batch

    def source(self, config: Config) -> str:
        """Where ``config``'s figure comes from."""
        if config.name in self.seconds:
            return self.label
        return getattr(self.fallback, "label", "fallback")


def efficiency(
    config: Config, batch: float, ranks: int, network: Network, compute: StepTime, overlap: bool = False
) -> float:
    """Scaling efficiency on ``ranks`` devices at per-device ``batch``: ``compute / step`` (see the module)."""
    busy = compute(config, batch)
    communicate = network.allreduce_s(gradient_bytes(config), ranks)
    return busy / (max(busy, communicate) if overlap else busy + communicate)


def threshold_batch(config: Config, ranks: int, network: Network, compute: StepTime, target: float) -> float:
    """The per-device batch below which the efficiency falls under ``target``, ``compute(b) = t_ar E / (1 - E)``.

    ``0.0`` when even an empty batch's step (its overhead) reaches it; ``inf`` when no batch up to
    ``1e15`` rows does. Found by bisection to a relative ``1e-9``, for any ``compute`` that grows with ``b``.

    >>> flat = Network("flat", 8, intra_bus_bw=400e9, latency_s=0.0)
    >>> b = threshold_batch(CONFIGS["mnist-l"], 8, flat, FlopStepTime(50e12, 0.0), 0.5)
    >>> round(b, 1)  # 7.5 MB: 1.75 * 7.45e6 / 400e9 s of all-reduce = b * 11.2 MFLOP / 50 TFLOP/s
    146.0

    Raises:
        ValueError: ``target`` not strictly between 0 and 1.
    """
    if not 0.0 < target < 1.0:
        raise ValueError(f"target efficiency must lie strictly between 0 and 1, got {target!r}")
    needed = network.allreduce_s(gradient_bytes(config), ranks) * target / (1.0 - target)
    if compute(config, 0.0) >= needed:
        return 0.0
    high = 1.0
    while compute(config, high) < needed:
        high *= 2.0
        if high > 1e15:
            return math.inf
    low = high / 2.0 if high > 1.0 else 0.0
    while high - low > 1e-9 * high:
        middle = (low + high) / 2.0
        low, high = (middle, high) if compute(config, middle) < needed else (low, middle)
    return high


@dataclass
class Scenario:
    """One table set: a compute model on the GPU networks (one per intra-node bandwidth)."""

    title: str
    compute: StepTimeModel
    networks: list[Network] = field(default_factory=lambda: [gpu_network(bw) for bw in NVLINK_BUS_BW])


def scenario_rows(scenario: Scenario, configs: list[Config], ranks: list[int]) -> list[dict[str, Any]]:
    """Every figure of ``scenario``: per configuration, per network and rank count."""
    rows = []
    for config in configs:
        compute_s = scenario.compute(config, config.batch)
        row: dict[str, Any] = {
            "config": config.name,
            "batch_per_device": config.batch,
            "gradient_bytes": gradient_bytes(config),
            "compute_s": compute_s,
            "compute_source": scenario.compute.source(config),
            "networks": [],
        }
        for network in scenario.networks:
            points = []
            for count in ranks:
                allreduce = network.allreduce_s(gradient_bytes(config), count)
                point = {
                    "ranks": count,
                    "allreduce_s": allreduce,
                    "step_s": compute_s + allreduce,
                    "efficiency": efficiency(config, config.batch, count, network, scenario.compute),
                    "overlapped_efficiency": efficiency(config, config.batch, count, network, scenario.compute, True),
                }
                for target in TARGETS:
                    point[f"batch_{round(target * 100)}"] = threshold_batch(
                        config, count, network, scenario.compute, target
                    )
                points.append(point)
            row["networks"].append({"network": asdict(network), "points": points})
        rows.append(row)
    return rows


def format_batch(batch: float) -> str:
    """A threshold batch for a table: ``'any'`` (0), ``'never'`` (inf), else rows rounded up.

    >>> format_batch(0.0), format_batch(146.6), format_batch(2.5e7), format_batch(math.inf)
    ('any', '147', '2.5e+07', 'never')
    """
    if batch == 0.0:
        return "any"
    if math.isinf(batch):
        return "never"
    return f"{math.ceil(batch):,}" if batch < 1e6 else f"{batch:.2g}"


def _span(values: list[float], show: Callable[[float], str]) -> str:
    """``show`` of the lowest and highest value, ``'a–b'``, or one value when they show alike."""
    low, high = show(min(values)), show(max(values))
    return low if low == high else f"{low}–{high}"


def _percent(value: float) -> str:
    return f"{value * 100:.0f}"


def _us(seconds: float) -> str:
    return format_us(seconds * 1e6)


def scenario_markdown(scenario: Scenario, rows: list[dict[str, Any]]) -> str:
    """The tables of one scenario; a cell spans the networks' figures (the intra-node bandwidth range)."""
    heads = [f"{point['ranks']} GPUs" for point in rows[0]["networks"][0]["points"]]

    def table(key: str, show: Callable[[float], str], first: dict[str, Callable[[dict[str, Any]], str]]) -> str:
        body = []
        for row in rows:
            per_rank = zip(*(network["points"] for network in row["networks"]), strict=True)
            spans = [_span([point[key] for point in points], show) for points in per_rank]
            body.append([row["config"], *(cell(row) for cell in first.values()), *spans])
        return markdown_table(["config", *first, *heads], body, "l" + "r" * (len(first) + len(heads)))

    def batch(row: dict[str, Any]) -> str:
        return f"{row['batch_per_device']:,}"

    def compute(row: dict[str, Any]) -> str:
        return f"{_us(row['compute_s'])} ({row['compute_source']})"

    def megabytes(row: dict[str, Any]) -> str:
        return f"{row['gradient_bytes'] / 1e6:.3g}"

    parts = [
        f"#### {scenario.title}",
        "Step time (µs) at each configuration's own per-device batch, compute + all-reduce:",
        table("step_s", _us, {"batch/GPU": batch, "compute µs": compute}),
        "Scaling efficiency (%) at the own batch, no overlap (fusednn's data-parallel `fit`):",
        table("efficiency", _percent, {"batch/GPU": batch}),
        "Upper bound (%) with the all-reduce hidden behind compute, `compute / max(compute, all-reduce)`:",
        table("overlapped_efficiency", _percent, {"batch/GPU": batch}),
    ]
    for target in TARGETS:
        parts += [
            f"Per-device batch below which the efficiency drops under {target:.0%} (global batch: × GPUs):",
            table(f"batch_{round(target * 100)}", format_batch, {"batch/GPU": batch, "grad MB": megabytes}),
        ]
    return "\n\n".join(parts)


def allreduce_markdown(configs: list[Config], networks: list[Network], ranks: list[int]) -> str:
    """All-reduce time (µs) of each configuration's float32 gradient buffer; a cell spans the networks."""
    body = []
    for config in configs:
        nbytes = gradient_bytes(config)
        times = [_span([net.allreduce_s(nbytes, n) * 1e6 for net in networks], format_us) for n in ranks]
        body.append([config.name, f"{config.n_params:,}", f"{nbytes / 1e6:.3g}", *times])
    header = ["config", "parameters", "gradient MB", *(f"{n} GPUs" for n in ranks)]
    return markdown_table(header, body, "lrr" + "r" * len(ranks))


def load_step_seconds(path: str | Path, device: str, mode: str, statistic: str = "median") -> dict[str, float]:
    """fusednn's measured seconds per step by configuration, from a runner JSON or a ``{config: seconds}`` file.

    A comparison-runner report (``python -m benchmarks.compare --json``) gives fusednn's
    ``statistic`` (``"median"`` or ``"min"``) µs/step over the repeats on ``device`` in ``mode``;
    any other JSON object is taken as seconds by name.

    Raises:
        ValueError: an unknown configuration name, a non-positive time, or a report with no fusednn rows there.
    """
    data = json.loads(Path(path).read_text())
    if "devices" in data:
        results = data["devices"].get(device, {}).get("results", [])
        seconds = {
            row["config"]: row[f"{statistic}_us"] * 1e-6
            for row in results
            if (row["peer"], row.get("mode", "step")) == ("fusednn", mode) and f"{statistic}_us" in row
        }
        if not seconds:
            raise ValueError(f"{path}: no fusednn {mode}-mode rows on {device!r}")
        return seconds
    unknown = [name for name in data if name not in CONFIGS]
    bad = [name for name, value in data.items() if not (isinstance(value, int | float) and value > 0)]
    if unknown or bad:
        raise ValueError(
            f"{path}: expected {{configuration: seconds > 0}} with names among {', '.join(CONFIGS)}; "
            f"unknown {unknown}, not a positive number {bad}"
        )
    return {name: float(value) for name, value in data.items()}


def measured_step_time(
    seconds: dict[str, float], fallback: StepTime | None, default_floor_s: float
) -> MeasuredStepTime:
    """A :class:`MeasuredStepTime` whose floor is the measured ``xor`` step when there is one."""
    return MeasuredStepTime(seconds, seconds.get(FLOOR_CONFIG, default_floor_s), fallback)


def mpi_network(paths: list[str]) -> tuple[Network, int]:
    """This machine's MPI as a one-node :class:`Network`, from :mod:`benchmarks.mpi_allreduce` JSON files.

    Several files pool by the best time per size. The latency is the smallest size's time;
    the bus bandwidth the best among sizes of 1 MiB and up (the gradients' sizes).

    Raises:
        ValueError: files of different rank counts, or no size of at least 1 MiB.
    """
    records = [json.loads(Path(path).read_text()) for path in paths]
    ranks = {record["ranks"] for record in records}
    if len(ranks) != 1:
        raise ValueError(f"--mpi files of different rank counts {sorted(ranks)}: {paths}")
    best: dict[int, float] = {}
    for record in records:
        for row in record["results"]:
            best[row["bytes"]] = min(best.get(row["bytes"], math.inf), row["seconds"])
    (count,) = ranks
    large = [nbytes * 2 * (count - 1) / count / seconds for nbytes, seconds in best.items() if nbytes >= 1 << 20]
    if not large:
        raise ValueError(f"--mpi files {paths} time no size of 1 MiB or more")
    name = f"MPI on this machine, {count} ranks"
    return Network(name, count, intra_bus_bw=max(large), latency_s=best[min(best)]), count


def load_throughput(paths: list[str]) -> dict[str, dict[int, float]]:
    """Measured samples/s by configuration and rank count from :mod:`benchmarks.dp_throughput` JSON files.

    Several runs of one configuration and rank count pool by the best, as ``--mpi`` runs do: on a
    shared machine a run is only ever slowed down by the rest of its load.
    """
    measured: dict[str, dict[int, float]] = {}
    for path in paths:
        record = json.loads(Path(path).read_text())
        by_ranks = measured.setdefault(record["config"], {})
        by_ranks[record["ranks"]] = max(by_ranks.get(record["ranks"], 0.0), record["samples_per_s"])
    return measured


def cpu_rows(network: Network, ranks: int, compute: MeasuredStepTime, measured: dict[str, dict[int, float]]) -> list:
    """The model on this machine per measured configuration but the floor (xor), with measured throughput if given."""
    rows = []
    for name in compute.seconds:
        config = CONFIGS[name]
        if name == FLOOR_CONFIG:
            continue
        step_1 = compute(config, config.batch)
        allreduce = network.allreduce_s(gradient_bytes(config), ranks)
        rows.append(
            {
                "config": name,
                "batch_per_rank": config.batch,
                "gradient_bytes": gradient_bytes(config),
                "step_1_s": step_1,
                "allreduce_s": allreduce,
                "efficiency": step_1 / (step_1 + allreduce),
                **{f"batch_{round(t * 100)}": threshold_batch(config, ranks, network, compute, t) for t in TARGETS},
                "samples_per_s_1": config.batch / step_1,
                "samples_per_s_n": ranks * config.batch / (step_1 + allreduce),
                "measured_samples_per_s": {str(n): value for n, value in measured.get(name, {}).items()},
            }
        )
    return rows


def cpu_markdown(network: Network, ranks: int, rows: list[dict[str, Any]]) -> str:
    """The CPU table: measured one-rank steps and MPI, the modelled ``ranks``-rank step, thresholds, samples/s."""
    header = ["config", "batch/rank", "grad MB", "step, 1 rank µs", "all-reduce µs", "efficiency %"]
    header += ["b 50 %", "b 90 %", "samples/s, 1 rank", f"samples/s, {ranks} ranks"]
    header += [f"measured samples/s, 1 / {ranks} ranks", "measured efficiency %"]
    body = []
    for row in rows:
        measured = row["measured_samples_per_s"]
        body.append(
            [
                row["config"],
                f"{row['batch_per_rank']:,}",
                f"{row['gradient_bytes'] / 1e6:.3g}",
                _us(row["step_1_s"]),
                _us(row["allreduce_s"]),
                _percent(row["efficiency"]),
                format_batch(row["batch_50"]),
                format_batch(row["batch_90"]),
                format_rate(row["samples_per_s_1"]),
                format_rate(row["samples_per_s_n"]),
                " / ".join(format_rate(measured.get(key)) for key in ("1", str(ranks))),
                _percent(measured[str(ranks)] / ranks / measured["1"]) if {"1", str(ranks)} <= set(measured) else "–",
            ]
        )
    intro = (
        f"{network.name}: latency {network.latency_s * 1e6:.1f} µs, bus bandwidth "
        f"{network.intra_bus_bw / GIGA:.2f} GB/s (measured, best of the runs); one-rank steps measured."
    )
    return intro + "\n\n" + markdown_table(header, body, "l" + "r" * (len(header) - 1))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.scaling_model", description=__doc__.split("\n\n")[0])
    parser.add_argument("--measured", help="GPU step times: a runner JSON (compare_cuda.json) or {config: seconds}")
    parser.add_argument("--measured-mode", default="fit", choices=["step", "fit"], help="rows of a runner JSON")
    parser.add_argument("--mpi", nargs="+", default=[], help="benchmarks.mpi_allreduce JSON(s) of this machine")
    parser.add_argument("--cpu-measured", help="CPU step times: a runner JSON (cpu rows) or {config: seconds}")
    parser.add_argument("--cpu-mode", default="step", choices=["step", "fit"], help="rows of the CPU runner JSON")
    parser.add_argument(
        "--cpu-statistic",
        default="min",
        choices=["min", "median"],
        help="of the CPU runner's repeats (min: other work on a shared machine only ever slows a step down)",
    )
    parser.add_argument("--cpu-dp", nargs="+", default=[], help="benchmarks.dp_throughput JSON(s), one per rank count")
    parser.add_argument("--json", help="also write every figure here")
    args = parser.parse_args(argv)
    if bool(args.mpi) != bool(args.cpu_measured):
        parser.error("--mpi and --cpu-measured go together (the CPU section needs both)")
    if args.cpu_dp and not args.mpi:
        parser.error("--cpu-dp needs --mpi and --cpu-measured")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    configs = list(CONFIGS.values())
    ranks = [GPUS_PER_NODE * nodes for nodes in NODES]
    fp32 = FlopStepTime(FP32_FLOPS, STEP_OVERHEAD_S, f"FP32 estimate, {FP32_FLOPS / 1e12:.0f} TFLOP/s")
    if args.measured:
        seconds = load_step_seconds(args.measured, "cuda", args.measured_mode)
        compute = measured_step_time(seconds, fp32, STEP_OVERHEAD_S)
        scenarios = [Scenario(f"Measured GPU steps ({args.measured}; others the FP32 estimate)", compute)]
    else:
        overhead = f"{STEP_OVERHEAD_S * 1e6:.0f} µs"
        tf32 = FlopStepTime(TF32_FLOPS, STEP_OVERHEAD_S, f"TF32 estimate, {TF32_FLOPS / 1e12:.0f} TFLOP/s")
        scenarios = [
            Scenario(f"Compute estimated: FP32 GEMMs at {FP32_FLOPS / 1e12:.0f} TFLOP/s + {overhead} per step", fp32),
            Scenario(f"Compute estimated: TF32 GEMMs at {TF32_FLOPS / 1e12:.0f} TFLOP/s + {overhead} per step", tf32),
        ]
    networks = scenarios[0].networks
    output: dict[str, Any] = {"assumptions": assumptions(), "scenarios": []}
    parts = ["#### All-reduce of the float32 gradient buffer (µs; a range spans 480–370 GB/s inside a node)"]
    parts.append(allreduce_markdown(configs, networks, ranks))
    for scenario in scenarios:
        rows = scenario_rows(scenario, configs, ranks)
        output["scenarios"].append({"title": scenario.title, "rows": rows})
        parts.append(scenario_markdown(scenario, rows))
    if args.mpi:
        network, count = mpi_network(args.mpi)
        seconds = load_step_seconds(args.cpu_measured, "cpu", args.cpu_mode, args.cpu_statistic)
        cpu = measured_step_time(seconds, None, 0.0)
        rows = cpu_rows(network, count, cpu, load_throughput(args.cpu_dp))
        output["cpu"] = {"network": asdict(network), "ranks": count, "floor_s": cpu.floor_s, "rows": rows}
        parts += [f"#### This machine: MPI over {count} ranks", cpu_markdown(network, count, rows)]
    print("\n\n".join(parts))
    if args.json:
        Path(args.json).write_text(json.dumps(output, indent=1) + "\n")


def assumptions() -> dict[str, Any]:
    """The model's assumed constants, for the JSON (the markdown states them in RESULTS.md)."""
    return {
        "gpus_per_node": GPUS_PER_NODE,
        "nvlink_bus_bw": list(NVLINK_BUS_BW),
        "nic_bw_per_gpu": NIC_BW,
        "nvlink_latency_s": NVLINK_LATENCY_S,
        "node_latency_s_per_doubling": NODE_LATENCY_S,
        "fp32_flops_per_s": FP32_FLOPS,
        "tf32_flops_per_s": TF32_FLOPS,
        "step_overhead_s": STEP_OVERHEAD_S,
        "gradient_dtype": "float32",
    }


if __name__ == "__main__":
    main()
