"""Turn the runner's measurements into markdown: a header, then per device and mode a summary, targets and details.

Everything here is pure (dicts in, strings out) so it is unit-tested without timing anything.
Each table shows one measurement mode (``step`` or ``fit``, see :mod:`benchmarks.peers`);
rows of reports written before there were modes count as ``step`` rows.

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
from .peers import TORCH_PEERS
from .targets import Outcome, median_of, outcomes

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


def mode_rows(results: list[dict[str, Any]], mode: str) -> list[dict[str, Any]]:
    """The result rows measured in ``mode`` (rows without a mode are ``step`` rows)."""
    return [row for row in results if row.get("mode", "step") == mode]


def modes_in(results: list[dict[str, Any]]) -> list[str]:
    """The modes the result rows hold, in the order they were measured."""
    return list(dict.fromkeys(row.get("mode", "step") for row in results))


def detail_table(device_result: dict[str, Any], mode: str = "step") -> str:
    """Every peer of every configuration: min/median µs, samples/s, fusednn speed-up and GEMM-bound ratio.

    "first step" (``fit`` mode: "first epoch") is the peer's first call in its worker (JIT
    compilation, or loading kernels from a warm cache, and allocations), timed apart from
    the repeats.
    """
    gemm = device_result.get("gemm", {}).get("best_flops_per_s")
    results = mode_rows(device_result["results"], mode)
    rows = []
    for row in results:
        config = CONFIGS[row["config"]]
        if "median_us" not in row:
            rows.append([config.name, row["peer"], *[MISSING] * 6, row.get("reason", "")])
            continue
        bound = gemm_bound_us(config, gemm) if gemm else None
        fusednn = median_of(results, config.name, "fusednn", mode)
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
                describe_peer(row),
            ]
        )
    header = ["config", "peer", "min µs", "median µs", "samples/s", "fusednn speed-up", "× GEMM bound"]
    header += ["first epoch ms" if mode == "fit" else "first step ms", "note"]
    return markdown_table(header, rows, align="llrrrrrrl")


def describe_peer(row: dict[str, Any]) -> str:
    """The library a worker reported, its thread count and any epoch length, e.g. ``'torch 2.13.0, 2 threads'``.

    ``row`` is a result row (its ``info``, ``epoch_steps`` and ``mode``), or a bare ``info`` dict.
    """
    info = row.get("info", row)
    parts = [info["library"]] if "library" in info else []
    if "threads" in info:
        parts.append(f"{info['threads']} thread{'s' if info['threads'] != 1 else ''}")
    if row.get("mode") == "fit" and "epoch_steps" in row:
        parts.append(f"{row['epoch_steps']:,}-step epochs")
    path = info.get("fit_params", {}).get("epoch_path")
    if path:
        parts.append(f"{path} epochs")
    return ", ".join(parts)


def target_cell(found: list[Outcome]) -> str:
    """One configuration's targets in a cell: ``'pass'``, ``'FAIL 1 of 2'``, ``'–'`` when none could be checked."""
    checked = [outcome for outcome in found if outcome.passed is not None]
    if not found or not checked:
        return MISSING
    failed = sum(not outcome.passed for outcome in checked)
    text = f"FAIL {failed} of {len(found)}" if failed else "pass"
    if len(checked) < len(found):
        text += f", {len(found) - len(checked)} unmeasured"
    return text


def summary_table(device_result: dict[str, Any], mode: str = "step", device: str = "cpu") -> str:
    """One line per configuration: fusednn against PyTorch (default and best Adam), NumPy, JAX, the GEMM bound.

    The last column sums up issue 11's targets for ``device`` and ``mode`` on that
    configuration (see :func:`targets_table`); it is left out where none apply.
    """
    results = mode_rows(device_result["results"], mode)
    gemm = device_result.get("gemm", {}).get("best_flops_per_s")
    found = outcomes(device, mode, results, gemm)
    rows = []
    for name in dict.fromkeys(row["config"] for row in results):
        config = CONFIGS[name]
        fusednn = median_of(results, name, "fusednn", mode)
        torch_times = [median_of(results, name, peer, mode) for peer in TORCH_PEERS]
        torch_best = min((t for t in torch_times if t is not None), default=None)
        bound = gemm_bound_us(config, gemm) if gemm else None
        row = [
            name,
            config.describe(),
            f"{step_flops(config) / 1e9:.3g}",
            format_us(fusednn),
            format_rate(config.batch / fusednn * 1e6) if fusednn else MISSING,
            format_ratio(ratio(torch_times[0], fusednn)),
            format_ratio(ratio(torch_best, fusednn)),
            format_ratio(ratio(median_of(results, name, "numpy", mode), fusednn)),
            format_ratio(ratio(median_of(results, name, "jax", mode), fusednn)),
            format_us(bound),
            format_ratio(ratio(fusednn, bound)),
        ]
        rows.append(row + ([target_cell([o for o in found if o.config == name])] if found else []))
    header = ["config", "model", "GFLOP/step", "fusednn µs", "samples/s", "vs torch", "vs best torch", "vs numpy"]
    header += ["vs jax", "GEMM bound µs", "fusednn × bound"] + (["targets"] if found else [])
    return markdown_table(header, rows, align="llrrrrrrrrr" + ("l" if found else ""))


def targets_table(device_result: dict[str, Any], mode: str, device: str) -> str:
    """Issue 11's targets for ``device`` and ``mode``, one line per (configuration, target); ``''`` if none apply.

    "measured" is the speed-up (peer ÷ fusednn) or the ratio to the GEMM bound
    (fusednn ÷ bound), both on medians of this run; "–" says what was not measured.
    """
    results = mode_rows(device_result["results"], mode)
    found = outcomes(device, mode, results, device_result.get("gemm", {}).get("best_flops_per_s"))
    if not found:
        return ""
    verdict = {True: "pass", False: "**FAIL**", None: MISSING}
    rows = [
        [outcome.config, outcome.target, format_ratio(outcome.measured), verdict[outcome.passed], outcome.note]
        for outcome in found
    ]
    return markdown_table(["config", "target", "measured", "result", "note"], rows, align="llrll")


def cold_start_text(cold: dict[str, Any]) -> str:
    """``import fusednn`` time, then a table of the first training call with an empty and a warm JIT/kernel cache.

    Per device there is one entry per mode (``step``: the first step; ``fit``: the first
    ``nn.fit`` epoch); reports written before there were modes hold one ``step`` entry.
    """
    lines = []
    if "import_s" in cold:
        times = cold["import_s"]
        lines.append(
            f"`import fusednn`: {format_ms(min(times))} ms min, {format_ms(statistics.median(times))} ms median "
            f"over {len(times)} fresh processes."
        )
    rows = []
    for device, entries in cold.get("devices", {}).items():
        for entry in entries if isinstance(entries, list) else [entries]:
            mode = entry.get("mode", "step")
            if "reason" in entry:
                rows.append([device, MISSING, mode, MISSING, MISSING, MISSING, entry["reason"]])
                continue
            what = f"{entry['epoch_steps']:,}-step epoch" if "epoch_steps" in entry else "one step"
            for cache in ("empty", "warm"):
                run = entry[cache]
                rows.append(
                    [device, entry["config"], mode, cache, format_ms(run["build_s"]), format_ms(run["first_step_s"]),
                     what]
                )  # fmt: skip
    if rows:
        header = ["device", "config", "mode", "JIT/kernel cache", "import + build ms", "first call ms", "first call"]
        lines += ["", markdown_table(header, rows, align="llllrrl")]
    return "\n".join(lines)


def format_ms(seconds: float | None) -> str:
    """Seconds shown as milliseconds (``'12.3'``)."""
    return MISSING if seconds is None else f"{seconds * 1e3:,.1f}"


def pool_reports(reports: list[dict[str, Any]]) -> dict[str, Any]:
    """Several runs' reports (same machine, same code) as one: each peer's repeats pooled, the best GEMM rate.

    The first report gives the header (machine, command, cold start); a row measured in
    only some runs keeps the repeats it has, and a peer that failed in every run keeps its
    first reason. One report is returned as it is.

    Raises:
        ValueError: no reports.
    """
    if not reports:
        raise ValueError("No reports to pool")
    if len(reports) == 1:
        return reports[0]
    pooled = dict(reports[0], devices={}, command=" + ".join(report["command"] for report in reports))
    for device in dict.fromkeys(name for report in reports for name in report["devices"]):
        results = [report["devices"][device] for report in reports if "results" in report["devices"].get(device, {})]
        if not results:
            pooled["devices"][device] = next(r["devices"][device] for r in reports if device in r["devices"])
            continue
        rows: dict[tuple[str, str, str], dict[str, Any]] = {}
        for result in results:
            for row in result["results"]:
                key = (row["config"], row.get("mode", "step"), row["peer"])
                if key not in rows or "us_per_step" not in rows[key]:
                    rows[key] = dict(row)
                elif "us_per_step" in row:
                    rows[key]["us_per_step"] = rows[key]["us_per_step"] + row["us_per_step"]
        for row in rows.values():
            if "us_per_step" in row:
                row.update(summarize_times(row["us_per_step"]))
        gemm = max((result["gemm"] for result in results), key=lambda gemm: gemm.get("best_flops_per_s", 0))
        repeats = sum(result["repeats"] for result in results)
        pooled["devices"][device] = dict(results[0], gemm=gemm, results=list(rows.values()), repeats=repeats)
    return pooled


MODE_TEXT = {
    "step": "One training step on a fixed device-resident batch; fusednn calls forward/loss/backward/step.",
    "fit": "Whole epochs over a device-resident data set, each in its seeded permutation, µs per step = epoch "
    "time ÷ steps; fusednn runs `nn.fit(..., epochs=1, progress=False)`, the others their natural loop "
    "(JAX: one jitted step that donates its buffers and gathers its batch inside).",
}
"""What each mode times, printed above its tables."""


def render(report: dict[str, Any]) -> str:
    """The whole markdown report: machine header, then per device and mode the summary, targets and details."""
    machine = report["machine"]
    out = [
        f"Machine: {machine['cpu']}, {machine['cores']} cores; Python {machine['python']}, NumPy {machine['numpy']}; "
        f"{machine['date']}.",
        "BLAS (in the runner's process; each worker's is in the JSON): "
        + "; ".join(
            f"{b['internal_api']} {b['version']} ({b['architecture']} kernel, {b['num_threads']} threads)"
            for b in machine["blas"]
        ),
        f"Command: `{report['command']}`",
        f"1-minute load average at the start: {machine['load_average']}, at the end of the timings: "
        f"{report.get('load_average_at_end', MISSING)} (other processes steal time from the timings).",
    ]
    for name, value in machine["env"].items():
        out.append(
            f"**Warning: {name}={value} is set; OpenBLAS is held to that kernel and its GEMM figures are lower.**"
        )
    if machine.get("threads_env"):
        settings = ", ".join(f"{name}={value}" for name, value in machine["threads_env"].items())
        out.append(f"Thread pools of every peer (and of the GEMM bound) held by: {settings}.")
    for device, result in report["devices"].items():
        out += ["", f"## {device}", ""]
        if "reason" in result:
            out.append(result["reason"])
            continue
        gemm = result["gemm"]
        best_shape = "×".join(map(str, gemm["best_shape"]))
        out += [
            f"Device: {gemm.get('device_name', device)}. {result['repeats']} repeats per peer, round-robin; "
            f"each times a block of steps lasting about {result['target_s']:g} s.",
            f"Best float32 GEMM: {gemm['best_flops_per_s'] / 1e9:.1f} GFLOP/s at {best_shape}.",
            "Speed-ups are peer median ÷ fusednn median (> 1: fusednn is faster); "
            "× GEMM bound is median ÷ (step FLOPs at that GEMM rate).",
        ]
        for mode in modes_in(result["results"]):
            out += ["", f"### {device}, {mode} mode", "", MODE_TEXT[mode], "", summary_table(result, mode, device)]
            targets = targets_table(result, mode, device)
            if targets:
                out += ["", f"Issue 11's targets ({device}, {mode} mode, this run's medians):", "", targets]
            out += ["", detail_table(result, mode)]
    if report.get("cold_start"):
        out += ["", "## Cold start", "", cold_start_text(report["cold_start"])]
    return "\n".join(out) + "\n"
