"""The data-parallel scaling model (benchmarks/scaling_model.py): its formulas, inputs and tables.

Nothing is timed here: the model is arithmetic over assumed or measured figures, so each
test checks a property the formulas must have, against the definitions they follow.
"""

from __future__ import annotations

import json
import math
import sys

import pytest
from mpi_jobs import ROOT, needs_mpi, run_job

from benchmarks import dp_throughput
from benchmarks import scaling_model as sm
from benchmarks.configs import CONFIGS
from fusednn import nn

NODE = sm.Network("test node", 8, intra_bus_bw=400e9, inter_bw=50e9, latency_s=20e-6, node_latency_s=10e-6)
FLOPS = sm.FlopStepTime(50e12, 30e-6)


@pytest.mark.parametrize("name", ["xor", "digits", "mnist-s"])
def test_gradient_bytes_are_the_models_flat_gradient_buffer(name):
    config = CONFIGS[name]
    model = nn.MLP(list(config.sizes), device="numpy", dtype="float32")
    assert sm.gradient_bytes(config) == model.parameters().grad.nbytes
    assert sm.gradient_bytes(config, itemsize=8) == 2 * model.parameters().grad.nbytes


def test_one_rank_communicates_nothing():
    config = CONFIGS["mnist-l"]
    assert NODE.allreduce_s(1e9, 1) == 0.0
    assert sm.efficiency(config, 16, 1, NODE, FLOPS) == 1.0
    assert sm.threshold_batch(config, 1, NODE, FLOPS, 0.9) == 0.0


def test_one_node_follows_the_nccl_tests_definition_of_bus_bandwidth():
    no_latency = sm.Network("ring", 8, intra_bus_bw=370e9)
    for ranks in (2, 4, 8):
        nbytes = 64e6
        algorithm_bw = nbytes / no_latency.allreduce_s(nbytes, ranks)
        assert algorithm_bw * 2 * (ranks - 1) / ranks == pytest.approx(370e9, rel=1e-12)


def test_allreduce_time_grows_with_bytes_ranks_and_nodes():
    sizes = [0.0, 1e3, 1e6, 1e8]
    for ranks in (2, 8, 16, 128):
        times = [NODE.allreduce_s(nbytes, ranks) for nbytes in sizes]
        assert times == sorted(times) and len(set(times)) == len(times)
    by_ranks = [NODE.allreduce_s(1e8, ranks) for ranks in (2, 4, 8, 16, 32, 64, 128)]
    assert by_ranks == sorted(by_ranks)


def test_across_nodes_each_gpu_reduces_its_shard_over_its_nic():
    nbytes = 8e8
    within = nbytes * 2 * 7 / 8 / 400e9
    shard = nbytes / 8 * 2 * (4 - 1) / 4 / 50e9
    assert NODE.allreduce_s(nbytes, 32) == pytest.approx(20e-6 + 10e-6 * 2 + within + shard, rel=1e-12)


def test_rank_counts_the_network_cannot_hold_are_refused():
    with pytest.raises(ValueError, match="12 ranks do not fit"):
        NODE.allreduce_s(1e6, 12)
    with pytest.raises(ValueError, match="one node only"):
        sm.Network("one node", 8, intra_bus_bw=400e9).allreduce_s(1e6, 16)
    with pytest.raises(ValueError, match="at least 1 rank"):
        NODE.allreduce_s(1e6, 0)


@pytest.mark.parametrize("overlap", [False, True])
def test_efficiency_rises_with_the_per_device_batch(overlap):
    config = CONFIGS["mnist-l"]
    values = [sm.efficiency(config, b, 64, NODE, FLOPS, overlap) for b in (1, 8, 64, 512, 4096, 32768, 262144)]
    assert values == sorted(values)
    assert 0.0 < values[0] < values[-1] <= 1.0
    assert sm.efficiency(config, 4096, 64, NODE, FLOPS, overlap=True) >= sm.efficiency(config, 4096, 64, NODE, FLOPS)


@pytest.mark.parametrize("name", ["digits", "mnist-s", "mnist-l", "wide"])
@pytest.mark.parametrize("ranks", [16, 128])
def test_threshold_batches_solve_compute_against_allreduce(name, ranks):
    config = CONFIGS[name]
    allreduce = NODE.allreduce_s(sm.gradient_bytes(config), ranks)
    b50 = sm.threshold_batch(config, ranks, NODE, FLOPS, 0.5)
    b90 = sm.threshold_batch(config, ranks, NODE, FLOPS, 0.9)
    assert FLOPS(config, b50) == pytest.approx(allreduce, rel=1e-8)
    assert FLOPS(config, b90) == pytest.approx(9 * allreduce, rel=1e-8)
    assert sm.efficiency(config, b50, ranks, NODE, FLOPS) == pytest.approx(0.5, rel=1e-8)
    below, above = (sm.efficiency(config, b50 * f, ranks, NODE, FLOPS) for f in (0.99, 1.01))
    assert below < 0.5 < above
    # The linear FLOP model has a closed form: overhead + b * flops_per_row / rate = target.
    per_row = 6 * sum(i * o for i, o in config.layer_shapes) / 50e12
    assert b50 == pytest.approx((allreduce - 30e-6) / per_row, rel=1e-8)


def test_threshold_is_any_batch_when_the_overhead_alone_pays_and_never_when_nothing_grows():
    config = CONFIGS["mnist-l"]
    assert sm.threshold_batch(config, 8, NODE, sm.FlopStepTime(50e12, 1.0), 0.9) == 0.0
    assert sm.threshold_batch(config, 8, NODE, lambda config, batch: 1e-6, 0.5) == math.inf
    with pytest.raises(ValueError, match="strictly between 0 and 1"):
        sm.threshold_batch(config, 8, NODE, FLOPS, 1.0)


def test_a_measured_step_overrides_the_flop_estimate():
    digits, mnist_l = CONFIGS["digits"], CONFIGS["mnist-l"]
    measured = sm.MeasuredStepTime({"digits": 500e-6}, floor_s=100e-6, fallback=FLOPS)
    assert measured(digits, digits.batch) == 500e-6
    assert FLOPS(digits, digits.batch) != pytest.approx(500e-6)
    assert measured(digits, 2 * digits.batch) == pytest.approx(100e-6 + 2 * 400e-6)
    assert measured(digits, 0.0) == pytest.approx(100e-6)
    assert measured(mnist_l, 100) == FLOPS(mnist_l, 100)
    assert (measured.source(digits), measured.source(mnist_l)) == ("measured", "FLOP estimate")
    # Through the model: the measured step (and nothing else) decides digits' efficiency.
    allreduce = NODE.allreduce_s(sm.gradient_bytes(digits), 8)
    assert sm.efficiency(digits, digits.batch, 8, NODE, measured) == pytest.approx(500e-6 / (500e-6 + allreduce))
    with pytest.raises(KeyError, match="no measured step time for 'mnist-l'"):
        sm.MeasuredStepTime({"digits": 500e-6}, floor_s=0.0)(mnist_l, 1)


def test_a_floor_above_the_measured_step_is_capped_at_it():
    digits = CONFIGS["digits"]
    measured = sm.MeasuredStepTime({"digits": 50e-6}, floor_s=80e-6)
    assert measured(digits, 1) == measured(digits, 10**6) == 50e-6


def test_measured_steps_load_from_a_runner_report_or_a_mapping(tmp_path):
    report = {
        "devices": {
            "cuda": {
                "results": [
                    {"config": "xor", "peer": "fusednn", "mode": "fit", "median_us": 25.0, "min_us": 20.0},
                    {"config": "mnist-l", "peer": "fusednn", "mode": "fit", "median_us": 300.0, "min_us": 280.0},
                    {"config": "mnist-l", "peer": "fusednn", "mode": "step", "median_us": 999.0},
                    {"config": "mnist-l", "peer": "torch", "mode": "fit", "median_us": 111.0},
                ]
            }
        }
    }
    path = tmp_path / "compare_cuda.json"
    path.write_text(json.dumps(report))
    seconds = sm.load_step_seconds(path, "cuda", "fit")
    assert seconds == pytest.approx({"xor": 25e-6, "mnist-l": 300e-6})
    assert sm.load_step_seconds(path, "cuda", "fit", "min") == pytest.approx({"xor": 20e-6, "mnist-l": 280e-6})
    model = sm.measured_step_time(seconds, FLOPS, default_floor_s=1.0)
    assert model.floor_s == pytest.approx(25e-6)  # xor's measured step is the floor
    with pytest.raises(ValueError, match="no fusednn step-mode rows on 'cpu'"):
        sm.load_step_seconds(path, "cpu", "step")
    mapping = tmp_path / "seconds.json"
    mapping.write_text(json.dumps({"digits": 1e-4}))
    assert sm.load_step_seconds(mapping, "cuda", "fit") == {"digits": 1e-4}
    mapping.write_text(json.dumps({"digits": -1, "resnet": 1.0}))
    with pytest.raises(ValueError, match=r"unknown \['resnet'\], not a positive number \['digits'\]"):
        sm.load_step_seconds(mapping, "cuda", "fit")


def _mpi_record(ranks, rows):
    return {"ranks": ranks, "results": [{"bytes": b, "seconds": s} for b, s in rows]}


def test_mpi_runs_pool_by_the_best_time_per_size(tmp_path):
    first, second = tmp_path / "a.json", tmp_path / "b.json"
    first.write_text(json.dumps(_mpi_record(2, [(4096, 5e-6), (1 << 20, 200e-6), (8 << 20, 2e-3)])))
    second.write_text(json.dumps(_mpi_record(2, [(4096, 4e-6), (1 << 20, 300e-6), (8 << 20, 1e-3)])))
    network, ranks = sm.mpi_network([str(first), str(second)])
    assert ranks == 2
    assert network.latency_s == 4e-6
    assert network.intra_bus_bw == pytest.approx((8 << 20) / 1e-3)  # 8 MiB in 1 ms beats 1 MiB in 200 µs
    third = tmp_path / "c.json"
    third.write_text(json.dumps(_mpi_record(4, [(1 << 20, 1e-3)])))
    with pytest.raises(ValueError, match="different rank counts"):
        sm.mpi_network([str(first), str(third)])


def test_the_command_prints_every_configuration_and_writes_the_json(tmp_path, capsys):
    measured = tmp_path / "gpu.json"
    measured.write_text(json.dumps({"mnist-l": 400e-6}))
    out = tmp_path / "model.json"
    sm.main(["--measured", str(measured), "--json", str(out)])
    text = capsys.readouterr().out
    for name in CONFIGS:
        assert f"| {name} |" in text
    assert "400 (measured)" in text
    written = json.loads(out.read_text())
    (scenario,) = written["scenarios"]
    row = next(row for row in scenario["rows"] if row["config"] == "mnist-l")
    assert row["compute_s"] == 400e-6
    assert [point["ranks"] for point in row["networks"][0]["points"]] == [8, 16, 32, 64, 128]
    assert [network["network"]["intra_bus_bw"] for network in row["networks"]] == [370e9, 480e9]


def test_the_cpu_section_uses_the_measured_mpi_and_steps(tmp_path, capsys):
    mpi = tmp_path / "mpi.json"
    mpi.write_text(json.dumps(_mpi_record(2, [(4096, 4e-6), (8 << 20, 1e-3)])))
    cpu = tmp_path / "cpu.json"
    cpu.write_text(json.dumps({"xor": 30e-6, "mnist-l": 0.08}))
    dp1, dp2 = tmp_path / "dp1.json", tmp_path / "dp2.json"
    dp1.write_text(json.dumps({"config": "mnist-l", "ranks": 1, "samples_per_s": 12000.0}))
    dp2.write_text(json.dumps({"config": "mnist-l", "ranks": 2, "samples_per_s": 21000.0}))
    out = tmp_path / "model.json"
    sm.main(["--mpi", str(mpi), "--cpu-measured", str(cpu), "--cpu-dp", str(dp1), str(dp2), "--json", str(out)])
    assert "| 12k / 21k | 88 |" in capsys.readouterr().out  # 21k / (2 x 12k)
    (row,) = json.loads(out.read_text())["cpu"]["rows"]  # xor is the floor, not a row
    allreduce = 4e-6 + sm.gradient_bytes(CONFIGS["mnist-l"]) / ((8 << 20) / 1e-3)
    assert row["allreduce_s"] == pytest.approx(allreduce)
    assert row["samples_per_s_n"] == pytest.approx(2 * 1024 / (0.08 + allreduce))


def test_the_cpu_section_needs_both_of_its_inputs(tmp_path):
    with pytest.raises(SystemExit):
        sm.parse_args(["--mpi", str(tmp_path / "mpi.json")])


@needs_mpi
def test_the_mpi_timer_runs_as_a_two_rank_job_and_feeds_the_model(tmp_path):
    out = tmp_path / "mpi.json"
    argv = [sys.executable, "-m", "benchmarks.mpi_allreduce", "--sizes", "4096,1048576", "--repeats", "2"]
    result = run_job(2, [*argv, "--json", str(out)], cwd=ROOT, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "| 1,048,576 |" in result.stdout
    record = json.loads(out.read_text())
    assert record["ranks"] == 2 and [row["bytes"] for row in record["results"]] == [4096, 1 << 20]
    for row in record["results"]:
        assert row["seconds"] > 0
        assert row["bus_bw"] == pytest.approx(row["bytes"] / row["seconds"])  # 2 (P - 1) / P = 1 at P = 2
    network, ranks = sm.mpi_network([str(out)])
    assert (ranks, network.latency_s) == (2, record["results"][0]["seconds"])


def test_throughput_files_pool_by_configuration_and_rank_count_keeping_the_best(tmp_path):
    paths = []
    for index, (config, ranks) in enumerate([("mnist-l", 1), ("mnist-l", 2), ("digits", 2), ("mnist-l", 2)]):
        path = tmp_path / f"{index}.json"
        path.write_text(
            json.dumps({"config": config, "ranks": ranks, "samples_per_s": [100.0, 250.0, 300.0, 200.0][index]})
        )
        paths.append(str(path))
    assert sm.load_throughput(paths) == {"mnist-l": {1: 100.0, 2: 250.0}, "digits": {2: 300.0}}


@needs_mpi
def test_data_parallel_throughput_is_measured_at_one_and_two_ranks(tmp_path):
    one, two = tmp_path / "dp1.json", tmp_path / "dp2.json"
    dp_throughput.main(["--config", "digits", "--steps", "3", "--epochs", "2", "--json", str(one)])
    argv = [sys.executable, "-m", "benchmarks.dp_throughput", "--config", "digits", "--steps", "3", "--epochs", "2"]
    result = run_job(2, [*argv, "--json", str(two)], cwd=ROOT, timeout=120)
    assert result.returncode == 0, result.stderr
    records = [json.loads(path.read_text()) for path in (one, two)]
    assert [(r["config"], r["ranks"], r["batch_per_rank"], r["steps"]) for r in records] == [
        ("digits", 1, 32, 3),
        ("digits", 2, 32, 3),
    ]
    for record in records:
        assert len(record["epoch_s"]) == 2 and min(record["epoch_s"]) > 0
        assert record["samples_per_s"] == pytest.approx(32 * record["ranks"] * 3 / min(record["epoch_s"]))
    assert sm.load_throughput([str(one), str(two)])["digits"].keys() == {1, 2}
