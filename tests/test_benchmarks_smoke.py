"""The benchmarks cannot rot: one tiny case per benchmark file, the runner end to end, and its pure logic.

The timing itself is never asserted on (performance targets live in the benchmarks);
these tests check that every benchmark still runs and that the runner's arithmetic,
tables, arguments and its NumPy peer are right.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import fusednn
from benchmarks import compare
from benchmarks.configs import (
    CONFIGS,
    fit_epoch_steps,
    gemm_bound_us,
    gemm_shapes,
    ratio,
    select_configs,
    step_flops,
)
from benchmarks.numpy_mlp import NumpyMLP
from benchmarks.peers import PEERS, Workload, build_peer, make_batch, peers_for
from benchmarks.report import (
    cold_start_text,
    detail_table,
    format_ratio,
    format_us,
    markdown_table,
    pool_reports,
    summarize_times,
    summary_table,
    targets_table,
)
from benchmarks.targets import TARGETS, Target, check, outcomes
from fusednn.backends.registry import cuda_device_count

# benchmarks/ is not an installed package: pyproject's pytest `pythonpath` puts the root on sys.path for the
# imports above, and the subprocesses below get it through PYTHONPATH.
ROOT = Path(__file__).resolve().parent.parent

BENCH_FILES = sorted(p.name for p in (ROOT / "benchmarks").glob("bench_*.py"))


def _run(args: list[str], timeout: float) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    return subprocess.run(
        [sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


# ------------------------------------------------------------------ smoke runs


@functools.cache
def _smoke_functions() -> tuple[str, ...]:
    """``file::function`` of every benchmark function that has a smoke case."""
    done = _run(["-m", "pytest", "benchmarks", "-m", "smoke", "--collect-only", "-q", "-p", "no:cacheprovider"], 60)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return tuple(sorted({line.split("[")[0] for line in done.stdout.splitlines() if "::" in line}))


def test_each_bench_file_has_a_smoke_case():
    files = {name.split("::")[0].rsplit("/", 1)[-1] for name in _smoke_functions()}
    assert files == set(BENCH_FILES)


def test_every_benchmark_file_runs_its_smoke_case():
    done = _run(
        ["-m", "pytest", "benchmarks", "-m", "smoke", "--benchmark-disable", "-q", "-p", "no:cacheprovider"],
        timeout=120,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    devices = 3 if cuda_device_count() > 0 else 2  # numpy, cpu and cuda when present
    assert f"{devices * len(_smoke_functions())} passed" in done.stdout, done.stdout[-2000:]


# One of each kind of peer; every peer's step is built and run in-process by test_every_peer_steps below.
RUNNER_PEERS = ("fusednn", "numpy", "torch")


def test_quick_compare_run_on_xor(tmp_path):
    out = tmp_path / "xor.json"
    done = _run(
        [
            "-m", "benchmarks.compare", "--quick", "--configs", "xor", "--repeats", "1", "--target-s", "0.005",
            "--device", "cpu", "--no-cold-start", "--json", str(out), "--peers", ",".join(RUNNER_PEERS),
            "--mode", "step",
        ],
        timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(out.read_text())
    rows = report["devices"]["cpu"]["results"]
    assert [row["peer"] for row in rows] == list(RUNNER_PEERS)
    for row in rows:
        assert row["median_us"] > 0 and len(row["us_per_step"]) == 1 and row["mode"] == "step", row
    assert report["devices"]["cpu"]["gemm"]["best_flops_per_s"] > 0
    assert "| xor | fusednn |" in done.stdout
    assert "## cpu" in done.stdout
    rendered = _run(["-m", "benchmarks.compare", "--render", str(out)], timeout=60)
    assert rendered.returncode == 0, rendered.stderr[-3000:]
    assert rendered.stdout == done.stdout


def test_a_run_reports_its_progress_after_each_configuration(monkeypatch, tmp_path):
    """A run stopped by a time limit keeps the configurations it finished (the JSON is rewritten after each)."""
    monkeypatch.setattr(compare, "_worker_json", lambda args: {"best_flops_per_s": 1e9, "best_shape": [8, 8, 8]})

    def fake_time_config(config, device, peers, repeats, target_s, settle_s, workload):
        row = {"config": config, "peer": "fusednn", "mode": workload.mode, "us_per_step": [5.0]}
        return [dict(row, **compare.summarize_times([5.0]))]

    monkeypatch.setattr(compare, "time_config", fake_time_config)
    args = compare.parse_args(["--device", "cpu", "--configs", "xor,digits", "--no-cold-start", "--mode", "step"])
    path = tmp_path / "partial.json"
    seen = []

    def progress(report):
        seen.append([row["config"] for row in report["devices"]["cpu"]["results"]])
        compare.write_json(path, report)
        if len(seen) == 1:
            rendered = compare.render(json.loads(path.read_text()))
            assert "| xor | fusednn |" in rendered and "digits" not in rendered

    compare.run(args, progress=progress)
    assert seen == [["xor"], ["xor", "digits"]]
    assert not path.with_name("partial.json.tmp").exists()


@pytest.mark.skipif(cuda_device_count() > 0, reason="checks the message shown when no GPU is present")
def test_compare_on_cuda_without_a_gpu_says_so():
    done = _run(["-m", "benchmarks.compare", "--device", "cuda"], timeout=60)
    assert done.returncode == 2
    assert "needs a usable CUDA GPU" in done.stderr and "--device cpu" in done.stderr


def test_import_time_is_measured_in_fresh_processes():
    times = compare.measure_import(samples=2)
    assert len(times) == 2 and all(0 < t < 30 for t in times)


def test_worker_rejects_an_unknown_command():
    worker = compare.Worker(["--peer", "numpy", "--config", "xor", "--target-s", "0.001"])
    try:
        assert worker.ready["status"] == "ready" and worker.ready["steps_per_repeat"] >= 1
        worker.process.stdin.write("jump\n")
        worker.process.stdin.flush()
        assert "unknown command" in worker._read()["error"]
        assert worker.run() > 0
    finally:
        worker.close()


def test_a_dead_worker_raises_with_its_stderr():
    with pytest.raises(compare.WorkerError, match="exited with status 2"):
        compare.Worker(["--peer", "numpy"])  # --config missing: argparse exits 2


# ------------------------------------------------------------------ FLOPs and the GEMM bound


@pytest.mark.parametrize("name", list(CONFIGS))
def test_step_flops_match_torch_flop_counter(name):
    torch = pytest.importorskip("torch")
    from torch.utils.flop_counter import FlopCounterMode

    config = CONFIGS[name]
    # Meta tensors carry shapes only, so even the largest configuration costs nothing to count.
    x = torch.zeros(config.batch, config.sizes[0], device="meta", requires_grad=True)  # layer 1 computes dx too
    layers = [torch.nn.Linear(n_in, n_out, device="meta") for n_in, n_out in config.layer_shapes]
    with FlopCounterMode(display=False) as counter:
        h = x
        for layer in layers:
            h = torch.relu(layer(h))
        h.sum().backward()
    assert step_flops(config) == counter.get_total_flops()


def test_gemm_shapes_cover_every_product_of_a_step():
    config = CONFIGS["mnist-s"]
    shapes = set(gemm_shapes(config))
    for n_in, n_out in config.layer_shapes:
        assert {(config.batch, n_in, n_out), (n_in, config.batch, n_out), (config.batch, n_out, n_in)} <= shapes


def test_gemm_bound_and_ratio():
    config = CONFIGS["mnist-s"]
    rate = 1e11
    assert gemm_bound_us(config, rate) == pytest.approx(step_flops(config) / rate * 1e6)
    with pytest.raises(ValueError, match="GEMM throughput must be positive"):
        gemm_bound_us(config, 0.0)
    assert ratio(3.0, 1.5) == 2.0
    assert ratio(None, 1.0) is None and ratio(1.0, None) is None and ratio(1.0, 0.0) is None


def test_select_configs():
    assert "wide" not in [c.name for c in select_configs(None, "cpu", quick=True)]
    assert "wide" in [c.name for c in select_configs(None, "cpu", quick=False)]
    assert "huge-batch" not in [c.name for c in select_configs(None, "cpu", quick=False)]
    assert "huge-batch" in [c.name for c in select_configs(None, "cuda", quick=True)]
    assert [c.name for c in select_configs(["mnist-s", "xor"], "cpu", quick=True)] == ["xor", "mnist-s"]
    with pytest.raises(ValueError, match="Unknown configuration.*mnist-xl"):
        select_configs(["mnist-xl"], "cpu", quick=False)


# ------------------------------------------------------------------ tables


def _device_result() -> dict:
    rows = [
        {"config": "digits", "peer": "fusednn", "first_step_s": 0.25, **summarize_times([100.0, 120.0, 110.0])},
        {
            "config": "digits",
            "peer": "torch",
            "info": {"library": "torch 9", "threads": 2},
            **summarize_times([300.0, 330.0]),
        },
        {"config": "digits", "peer": "numpy", **summarize_times([200.0])},
        {"config": "digits", "peer": "jax", "reason": "JAX and optax are not installed"},
    ]
    return {"gemm": {"best_flops_per_s": 1e11, "best_shape": [2048, 2048, 2048]}, "results": rows}


def test_summarize_times():
    assert summarize_times([3.0, 1.0, 2.0, 10.0]) == {"min_us": 1.0, "median_us": 2.5}
    with pytest.raises(ValueError, match="No timings"):
        summarize_times([])


def test_detail_table_cells():
    result = _device_result()
    lines = detail_table(result).splitlines()
    assert lines[0].startswith("| config | peer | min µs | median µs |")
    cells = {line.split(" | ")[1]: [c.strip() for c in line.strip("| ").split(" | ")] for line in lines[2:]}
    bound = gemm_bound_us(CONFIGS["digits"], 1e11)
    assert cells["torch"][2:4] == [format_us(300.0), format_us(315.0)]
    assert cells["torch"][5] == format_ratio(315.0 / 110.0)
    assert cells["numpy"][6] == format_ratio(200.0 / bound)
    assert cells["fusednn"][5] == format_ratio(1.0)
    assert cells["fusednn"][7] == "250.0"
    assert "not installed" in cells["jax"][-1]
    assert cells["torch"][-1] == "torch 9, 2 threads"


def test_summary_table_ratios():
    line = summary_table(_device_result()).splitlines()[2]
    cells = [c.strip() for c in line.strip("| ").split(" | ")]
    assert cells[0] == "digits"
    assert cells[5] == format_ratio(315.0 / 110.0)  # vs torch (default Adam)
    assert cells[6] == format_ratio(315.0 / 110.0)  # vs the best torch variant: the only one here
    assert cells[7] == format_ratio(200.0 / 110.0)
    assert cells[8] == "–"  # vs jax: not installed
    assert cells[10] == format_ratio(110.0 / gemm_bound_us(CONFIGS["digits"], 1e11))
    assert len(cells) == 11  # step mode: issue 11's targets are through fit, so no targets column


def test_markdown_table_shape_and_errors():
    table = markdown_table(["a", "b"], [["x", "1"]], align="lr")
    assert table.splitlines() == ["| a | b |", "| --- | ---: |", "| x | 1 |"]
    with pytest.raises(ValueError, match="has 1 cells; the header has 2"):
        markdown_table(["a", "b"], [["x"]], align="lr")
    with pytest.raises(ValueError, match="one 'l' or 'r' per column"):
        markdown_table(["a", "b"], [["x", "1"]], align="lc")


def test_number_formats():
    assert format_us(0.0015308) == "0.00153" and format_us(21.74) == "21.7" and format_us(1234.5) == "1,234"
    assert format_ratio(0.91234) == "0.912" and format_ratio(12.345) == "12.3" and format_ratio(59879.2) == "59,879"


def test_cold_start_text():
    cold = {
        "import_s": [0.2, 0.1, 0.3],
        "devices": {
            "cpu": [
                {"config": "digits", "mode": "step", "empty": {"build_s": 0.5, "first_step_s": 4.0},
                 "warm": {"build_s": 0.4, "first_step_s": 0.05}},
                {"config": "digits", "mode": "fit", "epoch_steps": 1000, "empty": {"build_s": 0.5, "first_step_s": 3.0},
                 "warm": {"build_s": 0.4, "first_step_s": 0.2}},
            ],
            "cuda": [{"mode": "step", "reason": "no GPU"}],
            "old": {"config": "xor", "empty": {"build_s": 0.1, "first_step_s": 1.0},
                    "warm": {"build_s": 0.1, "first_step_s": 0.01}},  # a report from before the modes
        },
    }  # fmt: skip
    text = cold_start_text(cold)
    assert "`import fusednn`: 100.0 ms min, 200.0 ms median over 3" in text
    assert "| cpu | digits | step | empty | 500.0 | 4,000.0 | one step |" in text
    assert "| cpu | digits | fit | warm | 400.0 | 200.0 | 1,000-step epoch |" in text
    assert "| cuda | – | step | – | – | – | no GPU |" in text
    assert "| old | xor | step | empty | 100.0 | 1,000.0 | one step |" in text


# ------------------------------------------------------------------ issue 11's targets


def _timings(config: str, mode: str = "fit", **medians: float) -> list[dict]:
    """Result rows with made-up medians, e.g. ``_timings("xor", fusednn=2.0, jax=40.0)``."""
    return [{"config": config, "peer": peer, "mode": mode, "median_us": us} for peer, us in medians.items()]


def _target(device: str, config: str, kind: str) -> Target:
    (target,) = [t for t in TARGETS if t.device == device and t.kind == kind and t.configs and config in t.configs]
    return target


def test_a_speed_up_target_passes_and_fails_on_the_ratio_of_medians():
    xor = _target("cpu", "xor", "faster")
    assert (xor.factor, xor.peers, xor.mode) == (15.0, ("jax",), "fit")
    passed = check(xor, "xor", _timings("xor", fusednn=2.0, jax=30.0), 1e11)
    assert (passed.measured, passed.passed) == (15.0, True)
    failed = check(xor, "xor", _timings("xor", fusednn=2.0, jax=29.0), 1e11)
    assert (failed.measured, failed.passed) == (14.5, False)
    # A step-mode timing does not count for a target defined through fit.
    assert check(xor, "xor", _timings("xor", "step", fusednn=2.0, jax=30.0), 1e11).passed is None


def test_a_missing_peer_or_fusednn_leaves_a_target_unchecked():
    xor = _target("cpu", "xor", "faster")
    unmeasured = check(xor, "xor", _timings("xor", fusednn=2.0, torch=500.0), 1e11)
    assert (unmeasured.measured, unmeasured.passed, unmeasured.note) == (None, None, "no jax timing")
    rows = _timings("xor", jax=30.0) + [{"config": "xor", "peer": "fusednn", "mode": "fit", "reason": "failed"}]
    assert check(xor, "xor", rows, 1e11).note == "no fusednn timing"


def test_ahead_of_every_torch_variant_compares_with_the_fastest_one_measured():
    (every_torch,) = [t for t in TARGETS if t.device == "cpu" and t.configs is None]
    rows = _timings("digits", fusednn=100.0, torch=400.0, **{"torch-fused": 90.0})
    outcome = check(every_torch, "digits", rows, None)
    assert (outcome.measured, outcome.passed, outcome.note) == (0.9, False, "fastest: torch-fused")
    rows = _timings("digits", fusednn=80.0, torch=400.0, **{"torch-fused": 90.0})
    assert check(every_torch, "digits", rows, None).passed is True


def test_a_bound_target_uses_the_gemm_rate_of_the_same_run():
    mnist_l = _target("cpu", "mnist-l", "bound")
    rate = 1e11
    bound = gemm_bound_us(CONFIGS["mnist-l"], rate)
    assert check(mnist_l, "mnist-l", _timings("mnist-l", fusednn=bound * 1.05), rate).passed is True
    assert check(mnist_l, "mnist-l", _timings("mnist-l", fusednn=bound * 1.06), rate).passed is False
    assert check(mnist_l, "mnist-l", _timings("mnist-l", fusednn=bound), None).note == "no GEMM bound timing"
    huge = _target("cuda", "huge-batch", "bound")
    assert huge.factor == 1.1 and CONFIGS["huge-batch"].batch == 65536 and CONFIGS["huge-batch"].sizes[1] == 1024


def test_targets_cover_what_the_issue_asks_on_each_device():
    cpu = {(c, t.label) for c in CONFIGS for t in TARGETS if t.device == "cpu" and t.applies_to(c)}
    assert ("digits", "≥ 3× jax") in cpu and ("mnist-s", "≥ 1.5× jax") in cpu and ("wide", "≤ 1.05× GEMM bound") in cpu
    assert all((c, "≥ 1× fastest of torch, torch-foreach, torch-fused") in cpu for c in CONFIGS)
    cuda = [o.target for o in outcomes("cuda", "fit", _timings("mnist-s", fusednn=1.0), 1e12)]
    assert cuda == ["≥ 5× fastest of torch, torch-foreach, torch-fused", "≥ 1× jax"]
    with pytest.raises(ValueError, match="'faster' than some peers or within a 'bound'"):
        Target("cpu", None, "faster", 2.0)


def test_targets_table_and_summary_column():
    rows = _timings("xor", fusednn=2.0, jax=40.0, torch=500.0) + _timings("mnist-l", fusednn=1e9, torch=1e9 / 2)
    result = {"gemm": {"best_flops_per_s": 1e11}, "results": rows}
    table = targets_table(result, "fit", "cpu")
    assert "| xor | ≥ 15× jax | 20 | pass |  |" in table
    assert "| xor | ≥ 1× fastest of torch, torch-foreach, torch-fused | 250 | pass | fastest: torch |" in table
    assert "| mnist-l | ≤ 1.05× GEMM bound |" in table and "| **FAIL** |" in table
    summary = {line.split(" | ")[0].strip("| "): line for line in summary_table(result, "fit", "cpu").splitlines()}
    assert summary["config"].endswith("| targets |")
    assert summary["xor"].endswith("| pass |") and summary["mnist-l"].endswith("| FAIL 2 of 2 |")
    assert targets_table(result, "step", "cpu") == ""  # the issue's targets are through fit


# ------------------------------------------------------------------ arguments


def test_parse_args_defaults_and_lists():
    args = compare.parse_args([])
    assert (args.device, args.repeats, args.quick, args.configs, args.cold_start) == ("all", 7, False, None, True)
    args = compare.parse_args(["--quick", "--configs", "xor, digits", "--peers", "numpy,torch", "--device", "cpu"])
    assert (args.repeats, args.configs, args.peers, args.device) == (3, ["xor", "digits"], ["numpy", "torch"], "cpu")
    assert compare.parse_args(["--quick", "--repeats", "5"]).repeats == 5


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--configs", "mnist-xl"], "unknown mnist-xl; expected some of xor"),
        (["--peers", "keras"], "unknown keras"),
        (["--repeats", "0"], "expected a positive number"),
        (["--device", "tpu"], "invalid choice: 'tpu'"),
    ],
)
def test_parse_args_errors(argv, message, capsys):
    with pytest.raises(SystemExit):
        compare.parse_args(argv)
    assert message in capsys.readouterr().err


# ------------------------------------------------------------------ peers


def test_peer_list_and_unknown_peer():
    assert "fusednn-numpy" in peers_for("cpu") and "fusednn-numpy" not in peers_for("cuda")
    assert set(peers_for("cuda")) < set(PEERS)
    with pytest.raises(ValueError, match="Unknown peer 'keras'"):
        build_peer("keras", CONFIGS["xor"], "cpu")


@pytest.mark.parametrize("name", ["xor", "digits"])
def test_numpy_mlp_matches_torch_for_two_adam_steps(name):
    torch = pytest.importorskip("torch")
    config = CONFIGS[name]
    mlp = NumpyMLP(config.sizes, config.activation, np, np.float64, seed=3, lr=1e-2)
    layers = []
    for weight, bias in mlp.layers:
        linear = torch.nn.Linear(*weight.shape, dtype=torch.float64)
        with torch.no_grad():
            linear.weight.copy_(torch.from_numpy(weight.T.copy()))
            linear.bias.copy_(torch.from_numpy(bias.copy()))
        layers.append(linear)
    act = {"relu": torch.relu, "sigmoid": torch.sigmoid}[config.activation]
    optimizer = torch.optim.Adam([p for layer in layers for p in layer.parameters()], lr=1e-2)
    x, y = make_batch(config)
    x = x.astype(np.float64)
    for _ in range(2):
        loss = mlp.train_step(x, y)
        optimizer.zero_grad()
        h = torch.from_numpy(x)
        for i, layer in enumerate(layers):
            h = layer(h) if i == len(layers) - 1 else act(layer(h))
        expected = torch.nn.functional.cross_entropy(h, torch.from_numpy(y))
        expected.backward()
        optimizer.step()
        np.testing.assert_allclose(float(loss), expected.item(), rtol=1e-12)
    for (weight, bias), layer in zip(mlp.layers, layers, strict=True):
        np.testing.assert_allclose(weight, layer.weight.detach().numpy().T, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(bias, layer.bias.detach().numpy(), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("peer", [p for p in PEERS if p != "jax" or importlib.util.find_spec("jax")])
def test_every_peer_steps_and_reduces_the_loss(peer):
    step = build_peer(peer, CONFIGS["digits"], "cpu")
    losses = []
    for _ in range(5):
        losses.append(float(step.run()))
        step.sync()
    assert np.isfinite(losses).all() and losses[-1] < losses[0]
    assert step.info["library"]


def test_numpy_mlp_rejects_bad_arguments():
    with pytest.raises(ValueError, match="at least an input and an output"):
        NumpyMLP((4,), "relu", np, np.float32)
    with pytest.raises(ValueError, match="Unknown hidden activation 'tanh'"):
        NumpyMLP((4, 2), "tanh", np, np.float32)


@pytest.mark.skipif(importlib.util.find_spec("jax") is not None, reason="JAX is installed here")
def test_a_missing_library_makes_the_peer_unavailable():
    from benchmarks.peers import PeerUnavailable

    with pytest.raises(PeerUnavailable, match="JAX and optax are not installed"):
        build_peer("jax", CONFIGS["xor"], "cpu")


INSTALLED_PEERS = [p for p in PEERS if p != "jax" or importlib.util.find_spec("jax")]


def _losses(peer: str, workload: Workload, calls: int) -> list[float]:
    step = build_peer(peer, workload, "cpu")
    losses = [float(step.run()) for _ in range(calls)]
    step.sync()
    return losses


@pytest.mark.parametrize("name", ["xor", "digits"])
@pytest.mark.parametrize("peer", INSTALLED_PEERS)
def test_every_peer_computes_the_same_training(name, peer):
    """Same weights, data and order: each peer's losses match the hand NumPy MLP's within float32 rounding.

    Step mode: three steps on the fixed batch. Fit mode: two 8-step epochs, whose mean
    losses agree only if every peer gathers the same rows in the same seeded order.
    """
    config = CONFIGS[name]
    for workload, calls in ((Workload(config), 3), (Workload(config, "fit", 8), 2)):
        expected = _losses("numpy", workload, calls)
        np.testing.assert_allclose(_losses(peer, workload, calls), expected, rtol=2e-5, err_msg=workload.mode)


def test_fit_mode_peers_draw_nn_fit_order():
    """The fit-mode loss is nn.fit's: fusednn's epoch equals the numpy peer's mean of its step losses."""
    workload = Workload(CONFIGS["xor"], "fit", 4)
    fusednn, numpy = build_peer("fusednn-numpy", workload, "cpu"), build_peer("numpy", workload, "cpu")
    assert fusednn.steps == numpy.steps == 4
    first = [fusednn.run(), numpy.run()]
    second = [fusednn.run(), numpy.run()]
    np.testing.assert_allclose(first[0], first[1], rtol=1e-6)
    np.testing.assert_allclose(second[0], second[1], rtol=1e-6)
    assert first[0] != second[0]


def test_workload_rows_and_errors():
    workload = Workload(CONFIGS["digits"], "fit", 10)
    x, y = workload.data()
    assert x.shape == (320, 64) and x.dtype == np.float32 and y.shape == (320,) and y.max() < 10
    assert np.array_equal(make_batch(CONFIGS["digits"])[0], Workload(CONFIGS["digits"]).data()[0])
    with pytest.raises(ValueError, match="Unknown mode 'epoch'"):
        Workload(CONFIGS["xor"], "epoch")
    with pytest.raises(ValueError, match="A step-mode workload runs 1 step per call, not 5"):
        Workload(CONFIGS["xor"], "step", 5)


def test_fit_epochs_shrink_only_where_the_data_would_not_fit():
    assert fit_epoch_steps(CONFIGS["xor"]) == fit_epoch_steps(CONFIGS["mnist-s"]) == 1000
    assert fit_epoch_steps(CONFIGS["mnist-l"]) == 167  # 512 MiB / (1024 rows x 784 float32)
    assert fit_epoch_steps(CONFIGS["huge-batch"]) == 8  # never fewer than FIT_MIN_STEPS...
    assert fit_epoch_steps(CONFIGS["xor"], steps=3) == 3  # ...unless fewer are asked for


def test_fit_mode_run_on_xor_round_trips_through_json(tmp_path):
    out = tmp_path / "fit.json"
    done = _run(
        [
            "-m", "benchmarks.compare", "--configs", "xor", "--repeats", "1", "--target-s", "0.005", "--device",
            "cpu", "--no-cold-start", "--json", str(out), "--peers", "fusednn,numpy", "--mode", "fit",
            "--fit-steps", "20", "--threads", "1",
        ],
        timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(out.read_text())
    rows = report["devices"]["cpu"]["results"]
    assert [(row["peer"], row["mode"], row["epoch_steps"]) for row in rows] == [
        ("fusednn", "fit", 20),
        ("numpy", "fit", 20),
    ]
    assert all(row["steps_per_repeat"] % 20 == 0 and row["median_us"] > 0 for row in rows)
    targets = {entry["target"]: entry for entry in report["devices"]["cpu"]["targets"]}
    assert targets["≥ 15× jax"]["passed"] is None and targets["≥ 15× jax"]["note"] == "no jax timing"
    assert "### cpu, fit mode" in done.stdout and "| xor | ≥ 15× jax | – | – | no jax timing |" in done.stdout
    assert "20-step epochs" in done.stdout and "first epoch ms" in done.stdout
    assert f"fusednn {fusednn.__version__}, 1 thread," in done.stdout  # --threads reaches the workers
    assert "held by: OMP_NUM_THREADS=1, OPENBLAS_NUM_THREADS=1" in done.stdout
    rendered = _run(["-m", "benchmarks.compare", "--render", str(out)], timeout=60)
    assert rendered.returncode == 0, rendered.stderr[-3000:]
    assert rendered.stdout == done.stdout


def test_a_report_from_before_the_modes_still_renders():
    rows = _device_result()["results"]  # rows without a "mode", as the runner wrote them before
    report = {
        "command": "python -m benchmarks.compare",
        "machine": {"cpu": "x", "cores": 2, "python": "3.11", "numpy": "2", "date": "d", "blas": [], "env": {},
                    "load_average": 0.1},
        "devices": {"cpu": {"gemm": {"best_flops_per_s": 1e11, "best_shape": [8, 8, 8]}, "results": rows,
                            "repeats": 3, "target_s": 0.2}},
    }  # fmt: skip
    text = compare.render(report)
    assert "### cpu, step mode" in text and "| digits | torch |" in text and "fit mode" not in text


def test_pooling_two_runs_pools_their_repeats_and_keeps_the_best_gemm_rate():
    def report(gemm: float, fusednn: list[float], jax_row: dict) -> dict:
        rows = [{"config": "xor", "peer": "fusednn", "mode": "fit", "us_per_step": fusednn, **summarize_times(fusednn)}]
        device = {"gemm": {"best_flops_per_s": gemm, "best_shape": [8, 8, 8]}, "repeats": 2, "target_s": 0.2}
        return {"command": "run", "machine": {}, "devices": {"cpu": dict(device, results=rows + [jax_row])}}

    failed = {"config": "xor", "peer": "jax", "mode": "fit", "reason": "failed: killed"}
    timed = {"config": "xor", "peer": "jax", "mode": "fit", "us_per_step": [40.0, 44.0], "median_us": 42.0}
    pooled = pool_reports([report(1e9, [5.0, 7.0], failed), report(2e9, [4.0, 9.0], timed)])
    cpu = pooled["devices"]["cpu"]
    rows = {row["peer"]: row for row in cpu["results"]}
    assert rows["fusednn"]["us_per_step"] == [5.0, 7.0, 4.0, 9.0]
    assert (rows["fusednn"]["min_us"], rows["fusednn"]["median_us"]) == (4.0, 6.0)
    assert rows["jax"]["median_us"] == 42.0  # measured in the second run only
    assert cpu["gemm"]["best_flops_per_s"] == 2e9 and cpu["repeats"] == 4 and pooled["command"] == "run + run"
    with pytest.raises(ValueError, match="No reports"):
        pool_reports([])
