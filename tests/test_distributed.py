"""Data-parallel training (issue 13): ``fit(distributed=...)`` over MPI, against one process with the combined batch.

The two-rank tests launch real jobs (``mpiexec -n 2``, :mod:`mpi_jobs`); the rest run in
this process: one-rank jobs, the agreement and abort logic over a scripted communicator,
and the row split.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any, NoReturn

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from mpi_job_fit import CASES, FAILURES, train_case
from mpi_jobs import ROOT, needs_mpi, run_job, run_python_job

from fusednn import distributed, nn
from fusednn.distributed import ABORT_STATUS, Communicator, RankFailedError
from fusednn.nn.data_parallel import DataParallel

# ----------------------------------------------------------------- two ranks


@pytest.fixture(scope="module")
def equivalence_job(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("equivalence")
    run_python_job(2, "mpi_job_fit.py", str(out), "equivalence", cwd=out)
    return out


@needs_mpi
@pytest.mark.parametrize("name", list(CASES))
def test_two_ranks_train_the_weights_of_one_process_with_the_combined_batch(name: str, equivalence_job: Path) -> None:
    model, history = train_case(name, 2 * CASES[name]["batch"], None)
    tolerance = {"rtol": 2e-5, "atol": 1e-6} if CASES[name]["dtype"] == "float32" else {"rtol": 1e-10, "atol": 1e-12}
    expected = np.concatenate([w.ravel() for w in model.get_weights()])
    ranks = [np.load(equivalence_job / f"{name}.rank{rank}.npz") for rank in (0, 1)]
    for saved in ranks:
        np.testing.assert_allclose(saved["weights"], expected, **tolerance)
        logged = json.loads(str(saved["history"]))
        assert logged.keys() == history.history.keys()
        for key, values in history.history.items():
            np.testing.assert_allclose(logged[key], values, **tolerance, err_msg=key)
    # Every rank ends with the very same weights and logs the very same numbers.
    np.testing.assert_array_equal(ranks[0]["weights"], ranks[1]["weights"])
    assert str(ranks[0]["history"]) == str(ranks[1]["history"])
    params = json.loads(str(ranks[0]["params"]))
    assert (params["ranks"], params["batch_size"], params["epoch_path"]) == (2, CASES[name]["batch"], "per-step")


@needs_mpi
def test_rank_0_alone_writes_the_checkpoint_and_it_resumes_in_one_process(equivalence_job: Path) -> None:
    name = "adam-accumulate-validation-l2"
    checkpoint = nn.load(equivalence_job / f"{name}.checkpoint.npz")
    assert checkpoint.epoch == 3
    assert sorted(path.name for path in equivalence_job.glob(f"{name}.checkpoint*")) == [f"{name}.checkpoint.npz"]
    np.testing.assert_array_equal(
        np.concatenate([w.ravel() for w in checkpoint.model.get_weights()]),
        np.load(equivalence_job / f"{name}.rank0.npz")["weights"],
    )


@pytest.fixture(scope="module")
def failures_job(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    out = tmp_path_factory.mktemp("failures")
    run_python_job(2, "mpi_job_fit.py", str(out), "failures", cwd=out)
    return [json.loads((out / f"failures.rank{rank}.json").read_text()) for rank in (0, 1)]


EXPECTED_FAILURES = {
    "bad rows on rank 1": ("ValueError", "training x", "rank 1 of 2 failed checking fit's arguments"),
    "other data on rank 1": ("ValueError", "needs the same training on every rank, but training data differs", None),
    "unwritable checkpoint": ("NotADirectoryError", "a-file", "rank 0 of 2 failed checking fit's arguments"),
    "diverges": ("NonFiniteLossError", "epoch 1", None),
    "nan on rank 1": ("NonFiniteLossError", "epoch 1, step 2", None),
    "compiled": ("ValueError", "data-parallel training all-reduces between steps", None),
}


@needs_mpi
@pytest.mark.parametrize("name", list(FAILURES))
def test_a_failure_on_one_rank_raises_the_same_error_on_every_rank(
    name: str, failures_job: list[dict[str, Any]]
) -> None:
    kind, words, note = EXPECTED_FAILURES[name]
    raised = [ranks[name] for ranks in failures_job]
    for error in raised:
        assert error is not None, f"{name}: a rank went on"
        assert error["type"] == kind and words in error["message"], error
    assert raised[0]["message"] == raised[1]["message"]
    if note is not None:  # the rank that failed raised its own error; the other names it
        failing = int(note.split()[1])
        assert raised[failing]["notes"] == [] and raised[1 - failing]["notes"] == [note]


@needs_mpi
def test_a_rank_that_fails_mid_epoch_stops_the_job_with_its_error(tmp_path: Path) -> None:
    script = str(ROOT / "tests" / "mpi_job_fit.py")
    result = run_job(2, [sys.executable, script, str(tmp_path), "abort"], tmp_path, timeout=60)
    assert result.returncode == ABORT_STATUS, result.stderr
    assert "ZeroDivisionError: planted failure in the third step" in result.stderr
    assert "fusednn: rank 1 of 2 failed (ZeroDivisionError: planted failure in the third step); stopping" in (
        result.stderr
    )


def test_the_cli_documents_the_status_of_an_aborted_job() -> None:
    from fusednn.cli import ExitStatus

    assert ExitStatus.ABORTED == ABORT_STATUS


def _cli(*flags: str) -> list[str]:
    return [
        "train", "--data", "digits", "--hidden", "16", "--epochs", "2", "--device", "numpy", "--dtype", "float64",
        "--no-progress", *flags,
    ]  # fmt: skip


@needs_mpi
def test_the_cli_under_mpiexec_trains_what_one_process_trains_and_resumes_on_other_rank_counts(
    tmp_path: Path,
) -> None:
    from fusednn.cli import main

    assert main(_cli("--batch-size", "64", "--out", str(tmp_path / "one"))) == 0
    assert main(_cli("--batch-size", "64", "--epochs", "1", "--out", str(tmp_path / "one-then-two"))) == 0
    command = (
        "from fusednn.cli import main; import sys; "
        f"sys.exit(main({_cli('--batch-size', '32', '--out', 'two', '--distributed', 'mpi')!r}) "
        f"or main({_cli('--resume', 'one-then-two/checkpoint.npz', '--distributed', 'mpi')!r}))"
    )
    result = run_job(2, [sys.executable, "-c", command], tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("fusednn 0.1.0: digits") == 2  # one banner per run: rank 0's
    assert "batch 32 x 1 on each of 2 ranks (mpi), global batch 64" in result.stdout
    one = json.loads((tmp_path / "one" / "metrics.json").read_text())
    for two in ("two", "one-then-two"):
        metrics = json.loads((tmp_path / two / "metrics.json").read_text())
        for key, values in one["history"].items():
            np.testing.assert_allclose(metrics["history"][key], values, rtol=1e-9, err_msg=f"{two}: {key}")
        assert metrics["confusion_matrix"] == one["confusion_matrix"]
    # Saved on 2 ranks of 32, resumed in 1 process: the global batch stays 64.
    assert main(_cli("--resume", str(tmp_path / "two" / "checkpoint.npz"), "--epochs", "3")) == 0
    assert main(_cli("--batch-size", "64", "--epochs", "3", "--out", str(tmp_path / "three"))) == 0
    resumed = json.loads((tmp_path / "two" / "metrics.json").read_text())
    uninterrupted = json.loads((tmp_path / "three" / "metrics.json").read_text())
    np.testing.assert_allclose(resumed["history"]["loss"], uninterrupted["history"]["loss"], rtol=1e-9)
    assert resumed["args"]["batch_size"] == 64 and resumed["args"]["ranks"] == 1


# ------------------------------------------------------------ one process


@needs_mpi
def test_a_job_of_one_rank_trains_exactly_as_fit_without_distributed() -> None:
    model, history = train_case("adam-accumulate-validation-l2", 16, "mpi")
    reference, reference_history = train_case("adam-accumulate-validation-l2", 16, None)
    for got, expected in zip(model.get_weights(), reference.get_weights(), strict=True):
        np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-14)
    for key, values in reference_history.history.items():
        np.testing.assert_allclose(history.history[key], values, rtol=1e-12, err_msg=key)
    assert history.params["ranks"] == 1 and history.params["epoch_path"] == "per-step"


def test_a_run_on_one_device_imports_nothing_distributed() -> None:
    code = (
        "import sys, numpy as np; from fusednn import nn; m = nn.MLP([2, 3, 2], device='numpy', seed=0); "
        "nn.fit(m, np.zeros((8, 2)), np.array([0, 1] * 4), epochs=1, progress=False); "
        "import fusednn.cli; "
        "print(sorted(name for name in sys.modules if 'mpi4py' in name or name.startswith('fusednn.distributed')))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert result.stdout.strip() == "[]"


@pytest.mark.parametrize(
    ("value", "error", "words"),
    [
        ("gloo", ValueError, "distributed must be one of ('mpi', 'nccl')"),
        (2, TypeError, "distributed must be None, one of ('mpi', 'nccl') or a fusednn.distributed.Communicator"),
    ],
)
def test_fit_names_what_distributed_takes(value: Any, error: type[Exception], words: str) -> None:
    model = nn.MLP([2, 3, 2], device="numpy", seed=0)
    with pytest.raises(error, match=words.replace("(", r"\(").replace(")", r"\)")):
        nn.fit(model, np.zeros((8, 2)), np.zeros(8, dtype=int), progress=False, distributed=value)


def test_nccl_refuses_a_model_on_the_cpu() -> None:
    model = nn.MLP([2, 3, 2], device="numpy", seed=0)
    with pytest.raises((ValueError, ImportError), match="NCCL|nccl"):
        nn.fit(model, np.zeros((8, 2)), np.zeros(8, dtype=int), progress=False, distributed="nccl")


def test_without_mpi4py_the_error_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "mpi4py", None)  # import mpi4py now fails
    monkeypatch.setattr(distributed, "_CONNECTED", {})
    model = nn.MLP([2, 3, 2], device="numpy", seed=0)
    with pytest.raises(ImportError, match=r"pip install 'fusednn\[distributed\]'"):
        nn.fit(model, np.zeros((8, 2)), np.zeros(8, dtype=int), progress=False, distributed="mpi")


# --------------------------------------------- agreement and abort, scripted


class Scripted(Communicator):
    """Rank ``rank`` of a job whose other ranks' reports are scripted; the collectives of one process otherwise."""

    kind = "scripted"

    def __init__(self, rank: int, size: int, others: list[Any] | None = None) -> None:
        self.rank, self.size = rank, size
        self.others = others if others is not None else [None] * (size - 1)
        self.aborted: int | None = None

    def allreduce(self, array: Any) -> None:
        raise AssertionError("not used")

    broadcast = allreduce

    def allreduce_host(self, values: np.ndarray) -> None:
        raise AssertionError("not used")

    def allgather_object(self, value: Any) -> list[Any]:
        reports = list(self.others)
        reports.insert(self.rank, value)
        return reports

    def _abort_job(self, status: int) -> NoReturn:
        self.aborted = status
        raise SystemExit(status)


def test_an_agreement_without_failures_goes_on() -> None:
    with Scripted(0, 3).agreement("checking"):
        pass


def test_the_failing_rank_raises_its_own_error_and_the_others_a_copy_that_names_it() -> None:
    error = FileNotFoundError(2, "No such file", "data.csv")
    mine = Scripted(1, 2, others=[None])
    with pytest.raises(FileNotFoundError) as raised, mine.agreement("loading"):
        raise error
    assert raised.value is error
    other = Scripted(0, 2, others=[distributed._portable(error)])
    with pytest.raises(FileNotFoundError) as copied, other.agreement("loading"):
        pass
    assert str(copied.value) == str(error) and copied.value.__notes__ == ["rank 1 of 2 failed loading"]


def test_an_error_that_cannot_be_copied_arrives_as_a_rank_failed_error() -> None:
    class Odd(Exception):
        def __init__(self, a: int, b: int) -> None:
            super().__init__(f"odd {a} {b}")

    report = distributed._portable(Odd(1, 2))
    assert report[0] is None
    with pytest.raises(RankFailedError, match="rank 2 of 3 failed writing: Odd: odd 1 2"):
        with Scripted(0, 3, others=[None, report]).agreement("writing"):
            pass


def test_a_failure_between_agreement_points_aborts_the_job_naming_rank_and_error(
    capsys: pytest.CaptureFixture[str],
) -> None:
    comm = Scripted(1, 4)
    with pytest.raises(SystemExit), comm.aborting_on_failure():
        raise ZeroDivisionError("in step 3")
    assert comm.aborted == ABORT_STATUS
    err = capsys.readouterr().err
    assert "Traceback" in err
    assert "fusednn: rank 1 of 4 failed (ZeroDivisionError: in step 3); stopping every rank" in err


def test_a_job_of_one_rank_raises_instead_of_aborting() -> None:
    comm = Scripted(0, 1)
    with pytest.raises(ZeroDivisionError), comm.aborting_on_failure():
        raise ZeroDivisionError
    assert comm.aborted is None


def test_check_same_names_what_differs_on_which_rank() -> None:
    parallel = DataParallel(Scripted(0, 2, others=[{"epochs": 3, "batch size": 64}]))
    with pytest.raises(ValueError, match=r"same training on every rank, but batch size differs \(rank 0: 32, rank 1"):
        parallel.check_same("training", {"epochs": 3, "batch size": 32})
    parallel.check_same("training", {"epochs": 3, "batch size": 64})


@given(start=st.integers(0, 1000), count=st.integers(0, 300), size=st.integers(1, 9))
def test_the_ranks_rows_are_contiguous_near_equal_parts_that_cover_the_batch(start: int, count: int, size: int) -> None:
    parts = [DataParallel(Scripted(rank, size)).rows(start, start + count) for rank in range(size)]
    assert parts[0][0] == start and parts[-1][1] == start + count
    assert all(a[1] == b[0] for a, b in zip(parts, parts[1:], strict=False))
    lengths = [hi - lo for lo, hi in parts]
    assert max(lengths) - min(lengths) <= 1


def test_a_resumed_run_keeps_its_global_batch_on_another_number_of_ranks(tmp_path: Path) -> None:
    from fusednn.cli import main, resume
    from fusednn.cli.errors import CommandError
    from fusednn.cli.flags import build_parsers, given_flags

    assert main(_cli("--batch-size", "32", "--epochs", "1", "--out", str(tmp_path))) == 0
    argv = _cli("--resume", str(tmp_path / "checkpoint.npz"))
    parser, train_parser = build_parsers("fusednn")
    args = parser.parse_args(argv)
    checkpoint = resume.load(args.resume, None)
    on_two = resume.settings(args, given_flags(argv), checkpoint, train_parser, ranks=2)
    assert on_two.batch_size == 16
    with pytest.raises(CommandError, match="global batch of 32 rows .32 on each of 1 ranks., which 3 ranks cannot"):
        resume.settings(args, given_flags(argv), checkpoint, train_parser, ranks=3)


# ------------------------------------------------------- the scaling scripts


@needs_mpi
def test_the_data_parallel_benchmark_launches_a_setting_and_tabulates() -> None:
    from benchmarks import data_parallel

    setting = {"ranks": 2, "threads": 1, "batch": 16, "epoch_path": "per-step"}
    record = data_parallel.run_setting(setting, steps=2, epochs=1)
    assert (record["ranks"], record["batch_per_rank"], record["config"]) == (2, 16, "mnist-l")
    assert 0 < record["allreduce_share"] < 1 and record["samples_per_s"] > 0
    baseline = {**record, "samples_per_s": record["samples_per_s"] / 2, "allreduce_share": 0.0}
    lines = data_parallel.table({data_parallel.BASELINE: [baseline], "two": [record]}).splitlines()
    assert lines[2].endswith("| 1.00 | - |") and lines[3].split("|")[4].strip() == "2.00"


@needs_mpi
def test_the_overlap_benchmark_runs_under_mpiexec() -> None:
    result = run_job(2, [sys.executable, "-m", "benchmarks.allreduce_overlap", "--repeats", "1"], ROOT)
    assert result.returncode == 0, result.stderr
    rows = [line for line in result.stdout.splitlines() if line.startswith("| ")]
    assert len(rows) == 7 and "bucket by bucket" in result.stdout, result.stdout


def test_the_cli_puts_each_nccl_rank_on_its_own_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    import argparse

    import fusednn
    from fusednn.cli import run

    connected: list[tuple[str, Any]] = []
    monkeypatch.setattr(distributed, "local_device", lambda: "cuda:3")  # rank 3 of its node
    monkeypatch.setattr(distributed, "connect", lambda kind, backend: connected.append((kind, backend)) or kind)
    monkeypatch.setattr(fusednn, "backend", lambda device: f"backend of {device}")
    args = argparse.Namespace(distributed="nccl", device="cuda")
    assert run._communicator(args) == "nccl" and args.device == "cuda:3"
    args = argparse.Namespace(distributed="nccl", device="cuda:1")  # a device given with its index stays
    run._communicator(args)
    args = argparse.Namespace(distributed="mpi", device="cuda")
    run._communicator(args)
    assert connected == [("nccl", "backend of cuda:3"), ("nccl", "backend of cuda:1"), ("mpi", "backend of cuda")]


def test_the_cli_refuses_compiled_epochs_with_distributed(capsys: pytest.CaptureFixture[str]) -> None:
    from fusednn.cli import main

    with pytest.raises(SystemExit) as exit_status:
        main(_cli("--distributed", "mpi", "--epoch-path", "compiled"))
    assert exit_status.value.code == 2
    assert "--epoch-path compiled does not go with --distributed" in capsys.readouterr().err


def test_the_cli_without_mpi4py_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    from cli_helpers import one_error_line

    from fusednn.cli import ExitStatus, main

    monkeypatch.setitem(sys.modules, "mpi4py", None)
    monkeypatch.setattr(distributed, "_CONNECTED", {})
    assert main(_cli("--distributed", "mpi", "--out", str(tmp_path / "out"))) == ExitStatus.DEVICE
    assert "pip install 'fusednn[distributed]'" in one_error_line(capsys)
    assert not (tmp_path / "out").exists()


def test_the_cli_offers_every_kind_of_communicator() -> None:
    from fusednn.cli.flags import DISTRIBUTED

    assert DISTRIBUTED == distributed.KINDS
