"""Turn the runner's measurements into markdown: one header, a detailed table and a summary per device.

Everything here is pure (dicts in, strings out) so it is unit-tested without timing anything.

The ratios are speed-ups of fusednn: ``peer µs ÷ fusednn µs`` on medians, so above 1
means fusednn is faster. ``× GEMM bound`` is ``median µs ÷ bound µs``, where the bound
is the step's FLOPs at the best GEMM throughput measured on that device in the same run
(1.0 would be a step that costs no more than its matrix products at peak speed).

>>> format_us(1234.5)
'1,234'
>>> format_ratio(None)
'–'
"""

from __future__ import annotations

import statistics
from typing import Any

from .configs import CONFIGS, gemm_bound_us, ratio, step_flops

MISSING = "–"


def format_us(us: float | None) -> str:
    """Microseconds with a precision that suits their size (``'0.00153'``, ``'21.7'``, ``'1,234'``)."""
    if us is None:
        return MISSING
    if us < 1:
        return f"{us:.3g}"
    return f"{us:.1f}" if us < 100 else f"{us:,.0f}"


def format_ratio(value: float | None) -> str:
    """A ratio with three significant figures (``'0.912'``, ``'12.3'``)."""
    if value is None:
        return MISSING
    return f"{value:.3g}" if value < 1000 else f"{value:,.0f}"


def format_rate(per_s: float | None) -> str:
    """A rate such as samples/s with a k/M suffix (``'58.1k'``)."""
    if per_s is None:
        return MISSING
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if per_s >= scale:
            return f"{per_s / scale:.3g}{suffix}"
    return f"{per_s:.3g}"


def summarize_times(us_per_step: list[float]) -> dict[str, float]:
    """``min`` and ``median`` of the per-repeat µs/step figures.

    Raises:
        ValueError: there are no figures.
    """
    if not us_per_step:
        raise ValueError("No timings to summarise: every repeat failed or none ran")
    return {"min_us": min(us_per_step), "median_us": statistics.median(us_per_step)}


def markdown_table(header: list[str], rows: list[list[str]], align: str) -> str:
    """A GitHub markdown table; ``align`` has one letter per column, ``l`` (text) or ``r`` (numbers).

    Raises:
        ValueError: a row's length, or ``align``'s, differs from the header's.
    """
    if len(align) != len(header) or set(align) - {"l", "r"}:
        raise ValueError(f"align must be one 'l' or 'r' per column ({len(header)}), got {align!r}")
    for row in rows:
        if len(row) != len(header):
            raise ValueError(f"Row {row!r} has {len(row)} cells; the header has {len(header)}")
    rule = ["---:" if letter == "r" else "---" for letter in align]
    lines = ["| " + " | ".join(cells) + " |" for cells in [header, rule, *rows]]
    return "\n".join(lines)


def _median(results: list[dict[str, Any]], config: str, peer: str) -> float | None:
    for row in results:
        if row["config"] == config and row["peer"] == peer and "median_us" in row:
            return row["median_us"]
    return None


def detail_table(device_result: dict[str, Any]) -> str:
    """Every peer of every configuration: min/median µs, samples/s, fusednn speed-up and GEMM-bound ratio.

    "first step" is the peer's first training step in its worker (JIT compilation, or
    loading kernels from a warm cache, and allocations), timed apart from the repeats.
    """
    gemm = device_result.get("gemm", {}).get("best_flops_per_s")
    rows = []
    for row in device_result["results"]:
        config = CONFIGS[row["config"]]
        if "median_us" not in row:
            rows.append([config.name, row["peer"], *[MISSING] * 6, row.get("reason", "")])
            continue
        bound = gemm_bound_us(config, gemm) if gemm else None
        fusednn = _median(device_result["results"], config.name, "fusednn")
        rows.append(
            [
                config.name,
                row["peer"],
                format_us(row["min_us"]),
                format_us(row["median_us"]),
                format_rate(config.batch / row["median_us"] * 1e6),
                format_ratio(ratio(row["median_us"], fusednn)),
                format_ratio(ratio(row["median_us"], bound)),
                format_ms(row.get("first_step_s")),
                describe_peer(row.get("info", {})),
            ]
        )
    header = ["config", "peer", "min µs", "median µs", "samples/s", "fusednn speed-up", "× GEMM bound"]
    header += ["first step ms", "note"]
    return markdown_table(header, rows, align="llrrrrrrl")


def describe_peer(info: dict[str, Any]) -> str:
    """The library a worker reported and its thread count, e.g. ``'torch 2.13.0+cpu, 2 threads'``."""
    parts = [info["library"]] if "library" in info else []
    if "threads" in info:
        parts.append(f"{info['threads']} threads")
    return ", ".join(parts)


def summary_table(device_result: dict[str, Any]) -> str:
    """One line per configuration: fusednn against PyTorch (default and best Adam), NumPy and the GEMM bound."""
    results = device_result["results"]
    gemm = device_result.get("gemm", {}).get("best_flops_per_s")
    rows = []
    for name in dict.fromkeys(row["config"] for row in results):
        config = CONFIGS[name]
        fusednn = _median(results, name, "fusednn")
        torch_times = [_median(results, name, peer) for peer in ("torch", "torch-foreach", "torch-fused")]
        torch_best = min((t for t in torch_times if t is not None), default=None)
        bound = gemm_bound_us(config, gemm) if gemm else None
        rows.append(
            [
                name,
                config.describe(),
                f"{step_flops(config) / 1e9:.3g}",
                format_us(fusednn),
                format_rate(config.batch / fusednn * 1e6) if fusednn else MISSING,
                format_ratio(ratio(torch_times[0], fusednn)),
                format_ratio(ratio(torch_best, fusednn)),
                format_ratio(ratio(_median(results, name, "numpy"), fusednn)),
                format_us(bound),
                format_ratio(ratio(fusednn, bound)),
            ]
        )
    header = [
        "config",
        "model",
        "GFLOP/step",
        "fusednn µs",
        "samples/s",
        "vs torch",
        "vs best torch",
        "vs numpy",
        "GEMM bound µs",
        "fusednn × bound",
    ]
    return markdown_table(header, rows, align="llrrrrrrrr")


def cold_start_text(cold: dict[str, Any]) -> str:
    """``import fusednn`` time, then a table of the first training step with an empty and a warm JIT/kernel cache."""
    lines = []
    if "import_s" in cold:
        times = cold["import_s"]
        lines.append(
            f"`import fusednn`: {format_ms(min(times))} ms min, {format_ms(statistics.median(times))} ms median "
            f"over {len(times)} fresh processes."
        )
    rows = []
    for device, entry in cold.get("devices", {}).items():
        if "reason" in entry:
            rows.append([device, MISSING, MISSING, MISSING, MISSING, entry["reason"]])
            continue
        for cache in ("empty", "warm"):
            run = entry[cache]
            rows.append([device, entry["config"], cache, format_ms(run["build_s"]), format_ms(run["first_step_s"]), ""])
    if rows:
        header = ["device", "config", "JIT/kernel cache", "import + build ms", "first step ms", "note"]
        lines += ["", markdown_table(header, rows, align="lllrrl")]
    return "\n".join(lines)


def format_ms(seconds: float | None) -> str:
    """Seconds shown as milliseconds (``'12.3'``)."""
    return MISSING if seconds is None else f"{seconds * 1e3:,.1f}"
