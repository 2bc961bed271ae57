"""The ``fusednn train`` command: end to end in a subprocess, its flags, statuses and resume in-process."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from cli_helpers import XOR, interrupted_at, one_error_line

import fusednn.cli
from fusednn import nn
from fusednn.cli import ExitStatus, build_parser, main
from fusednn.cli.errors import exit_status_table

ROOT = Path(__file__).resolve().parents[1]


def run_module(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "fusednn", *args], cwd=ROOT, capture_output=True, text=True, timeout=300
    )


def test_train_digits_end_to_end(tmp_path: Path) -> None:
    out = tmp_path / "digits"
    result = run_module("train", "--data", "digits", "--epochs", "3", "--device", "numpy", "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert "confusion matrix" in result.stdout and "macro avg" in result.stdout
    assert "classification into 10 classes (--task auto: digits is a classification data set)" in result.stdout
    assert "epoch 3/3:" in result.stderr  # progress goes to the log when stderr is not a terminal
    report = json.loads((out / "metrics.json").read_text())
    assert len(report["history"]["loss"]) == len(report["history"]["val_accuracy"]) == 3
    reason = "digits is a classification data set"
    assert report["task"] == {"task": "classification", "chosen_by": "auto", "reason": reason}
    matrix = np.array(report["confusion_matrix"])
    per_class = np.bincount(nn.data.digits().y)
    assert matrix.shape == (10, 10) and matrix.sum() == np.round(0.2 * per_class).sum()  # 20% of each class
    assert report["test"]["accuracy"] == pytest.approx(np.trace(matrix) / matrix.sum())
    assert report["test"]["accuracy"] > 0.8
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    restored = nn.load(out / "checkpoint.npz", device="numpy")
    assert restored.epoch == 3 and restored.extra["scaler"]["type"] == "StandardScaler"
    assert sorted(path.name for path in out.iterdir()) == ["checkpoint.npz", "curves.png", "metrics.json"]


@pytest.mark.parametrize("module", ["fusednn", "fusednn.cli"])
def test_a_bad_flag_exits_2_with_one_line(module: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", module, "train", "--batch-size", "-5"], cwd=ROOT, capture_output=True, text=True
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    error_lines = [line for line in result.stderr.splitlines() if "error:" in line]
    assert error_lines == ["fusednn train: error: argument --batch-size: expected a positive integer, got -5"]


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--epochs", "0"], "--epochs: expected a positive integer, got 0"),
        (["--hidden", "64,x"], "comma-separated layer widths"),
        (["--val-split", "1.5"], "strictly between 0 and 1"),
        (["--lr", "-1"], "--lr: expected a finite number >= 0"),
        (["--optimizer", "adagrad"], "invalid choice: 'adagrad'"),
        (["--task", "ordinal"], "invalid choice: 'ordinal'"),
        (["--momentum", "0.9"], "--momentum applies to sgd, rmsprop and lars, not adam"),
        (["--features", "8"], "--features and --classes apply to --data synthetic only"),
        (["--rows", "100"], "--rows applies to --data xor and synthetic only"),
        (["--labels", "labels.idx"], "--labels goes with an IDX images file"),
        (["--data", ".", "--labels", "labels.idx"], "--labels goes with an IDX images file"),
        (["--device", "tpu"], "Unknown device 'tpu'"),
        (["--seed", "-1"], "argument --seed: expected an integer >= 0, got -1"),
        (["--epoch-path", "jit"], "argument --epoch-path: invalid choice: 'jit'"),
    ],
)
def test_bad_flags_in_process(flags: list[str], message: str, capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--device", "numpy", "--out", str(tmp_path / "out"), *flags])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()  # nothing is created for a run that never starts


def test_help_documents_every_flag_and_exit_status(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    train = next(a for a in build_parser()._actions if a.dest == "command").choices["train"]
    flags = [option for action in train._actions for option in action.option_strings if option.startswith("--")]
    assert len(flags) > 20
    for action in train._actions:
        if action.option_strings and action.dest != "help":
            assert action.help, f"{action.option_strings} has no help text"
    for flag in flags:
        assert flag in text, flag
    table = exit_status_table()
    assert table in text and table in fusednn.cli.__doc__  # one table, written out the same in both
    assert [int(line.split()[0]) for line in table.splitlines()] == [status.value for status in ExitStatus]


def _table(directory: Path, name: str, table: np.ndarray) -> str:
    np.savetxt(directory / name, table, delimiter=",")
    return str(directory / name)


def _unusable(tmp: Path) -> list[str]:
    return ["--device", "cuda:99"]


def _file_as_out(tmp: Path) -> list[str]:
    (tmp / "file").write_text("not a directory")
    return ["--out", str(tmp / "file")]


def _checkpoint_a_directory(tmp: Path) -> list[str]:
    (tmp / "run" / "checkpoint.npz").mkdir(parents=True)
    return ["--out", str(tmp / "run")]


def _with_nan(tmp: Path) -> list[str]:
    table = np.column_stack([np.ones((20, 2)), np.arange(20) % 2])
    table[7, 0] = np.nan
    return ["--data", _table(tmp, "gaps.csv", table)]


@pytest.mark.parametrize(
    ("flags", "status", "message"),
    [
        (lambda tmp: ["--data", str(tmp / "missing.npz")], ExitStatus.DATA, "Unknown data set '"),
        (lambda tmp: ["--data", _table(tmp, "labels.csv", np.arange(20.0)[:, None])], ExitStatus.DATA,
         "labels.csv' has a single column, the label column (label_column=-1): a feature column is missing"),
        (lambda tmp: ["--data", "xor", "--rows", "40", "--test-split", "0.01"], ExitStatus.DATA,
         "--test-split=0.01 leaves the held-out part empty: 40 rows split per class into 40 training and 0 "
         "held-out rows (the largest of 2 classes has 23 rows)"),
        (lambda tmp: ["--data", "xor", "--rows", "40", "--val-split", "0.01"], ExitStatus.DATA,
         "--val-split=0.01 leaves the held-out part empty: 32 rows"),
        (_with_nan, ExitStatus.DATA, "gaps.csv': the features hold nan at row 7, column 0"),
        (lambda tmp: ["--resume", str(tmp / "nowhere.npz")], ExitStatus.CHECKPOINT, "--resume: No checkpoint at '"),
        (_file_as_out, ExitStatus.OUTPUT, "file' is a file, not a directory"),
        (lambda tmp: [*_file_as_out(tmp)[:1], str(tmp / "file" / "run")], ExitStatus.OUTPUT,
         "file', which is a file, not a directory"),
        (_checkpoint_a_directory, ExitStatus.OUTPUT, "checkpoint.npz': a directory is in the way"),
        (_unusable, ExitStatus.DEVICE, "cuda"),
        (lambda tmp: ["--data", "synthetic", "--rows", str(10**11)], ExitStatus.MEMORY,
         "out of memory loading --data: Unable to allocate"),
    ],
)  # fmt: skip
def test_each_failure_exits_with_its_status_and_one_line(
    flags: Callable[[Path], list[str]], status: ExitStatus, message: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    argv = ["train", "--device", "numpy", "--epochs", "1", "--out", str(tmp_path / "out"), *flags(tmp_path)]
    assert main(argv) == status
    line = one_error_line(capsys)
    assert message in line, line


def test_resume_finishes_the_run_bit_identically(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    common = ["train", "--data", "xor", "--rows", "400", "--hidden", "16", "--batch-size", "32", "--device", "cpu"]
    assert main([*common, "--epochs", "3", "--out", str(tmp_path / "straight")]) == 0
    assert main([*common, "--epochs", "1", "--out", str(tmp_path / "split")]) == 0
    checkpoint = tmp_path / "split" / "checkpoint.npz"
    assert main([*common, "--epochs", "3", "--out", str(tmp_path / "split"), "--resume", str(checkpoint)]) == 0
    straight = nn.load(tmp_path / "straight" / "checkpoint.npz", device="cpu")
    resumed = nn.load(checkpoint, device="cpu")
    assert resumed.epoch == straight.epoch == 3
    for ours, reference in zip(resumed.model.get_weights(), straight.model.get_weights(), strict=True):
        np.testing.assert_array_equal(ours, reference)
    report = json.loads((tmp_path / "split" / "metrics.json").read_text())
    reference = json.loads((tmp_path / "straight" / "metrics.json").read_text())
    assert report["history"] == reference["history"]
    assert main([*common, "--epochs", "3", "--out", str(tmp_path / "split"), "--resume", str(checkpoint)]) == 0
    assert "already trained 3 epochs" in capsys.readouterr().out


def test_resume_without_the_flags_continues_the_saved_run(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Flags left out on --resume take the saved run's values, not the defaults: epochs, schedule, lr, optimizer..."""
    settings = ["--optimizer", "sgd", "--momentum", "0.9", "--lr", "0.05", "--schedule", "cosine", "--seed", "3"]
    settings += ["--scale", "minmax", "--activation", "tanh", "--batch-size", "16", "--epochs", "3"]
    assert main([*XOR, *settings, "--out", str(tmp_path / "straight")]) == 0
    checkpoint = tmp_path / "split" / "checkpoint.npz"
    with interrupted_at("epoch 2/3"):
        assert main([*XOR, *settings, "--out", str(tmp_path / "split")]) == ExitStatus.INTERRUPTED
    assert f"interrupted; continue with --resume {checkpoint}" in capsys.readouterr().err
    assert nn.load(checkpoint, device="numpy").epoch == 1
    assert main(["train", "--resume", str(checkpoint), "--device", "numpy"]) == 0
    banner = capsys.readouterr().out.splitlines()[:3]
    assert "SGD(lr=" in banner[1] and "momentum=0.9" in banner[1] and "cosine schedule over 3 epochs" in banner[1]
    assert "2-8-2 tanh on numpy" in banner[1] and "minmax scaling (the saved scaler)" in banner[0]
    assert banner[2] == f"resuming {checkpoint} after epoch 1 with its saved settings; given anew: --device numpy"
    straight = nn.load(tmp_path / "straight" / "checkpoint.npz", device="numpy")
    resumed = nn.load(checkpoint, device="numpy")
    assert resumed.epoch == 3
    for ours, reference in zip(resumed.model.get_weights(), straight.model.get_weights(), strict=True):
        np.testing.assert_array_equal(ours, reference)
    assert resumed.extra["history"] == straight.extra["history"]
    record = resumed.extra["args"]  # the saved record says what ran
    ran = (record["optimizer"], record["lr"], record["schedule"], record["scale"], record["seed"], record["epochs"])
    assert ran == ("sgd", 0.05, "cosine", "minmax", 3, 3)
    assert json.loads((tmp_path / "split" / "metrics.json").read_text())["args"] == record


def test_resume_from_another_directory_finds_the_run_s_data_and_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "first").mkdir()
    (tmp_path / "second").mkdir()
    monkeypatch.chdir(tmp_path / "first")
    _table(tmp_path / "first", "data.csv", np.column_stack([np.ones((40, 2)), np.arange(40) % 2]))
    flags = ["train", "--device", "numpy", "--hidden", "4", "--no-progress"]
    assert main([*flags, "--data", "data.csv", "--out", "run", "--epochs", "1"]) == 0
    monkeypatch.chdir(tmp_path / "second")
    assert main(["train", "--resume", "../first/run/checkpoint.npz", "--epochs", "2", "--device", "numpy"]) == 0
    resumed = nn.load(tmp_path / "first" / "run" / "checkpoint.npz", device="numpy")
    assert resumed.epoch == 2 and not list((tmp_path / "second").iterdir())  # continued where the run lives
    assert resumed.extra["args"]["data"] == str(tmp_path / "first" / "data.csv")
    again = ["train", "--resume", "../first/run/checkpoint.npz", "--data", "../first/data.csv", "--epochs", "3"]
    assert main([*again, "--device", "numpy"]) == 0  # the same file by another path is no conflict


@pytest.fixture(scope="module")
def saved_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A one-epoch run whose checkpoint the resume tests read (and never change)."""
    out = tmp_path_factory.mktemp("saved")
    assert main([*XOR, "--epochs", "1", "--out", str(out)]) == 0
    return out / "checkpoint.npz"


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--lr", "0.01"], "--lr 0.01 conflicts with the run saved in '{}' (--lr 0.002)"),
        (["--optimizer", "sgd", "--momentum", "0.5"], "--momentum 0.5, --optimizer sgd conflict with the run saved "
         "in '{}' (no --momentum, --optimizer adam): a resumed run keeps its saved settings; drop them"),
        (["--weight-decay", "0.1"], "(--weight-decay 0.0)"),
        (["--dtype", "float64"], "(--dtype float32)"),
        (["--scale", "none"], "--scale none conflicts with the run saved in '{}' (--scale standard)"),
        (["--hidden", "4,4"], "(--hidden 8)"),
        (["--activation", "tanh"], "(--activation relu)"),
        (["--batch-size", "16"], "(--batch-size 32)"),
        (["--seed", "1"], "(--seed 0)"),
        (["--task", "regression"], "(--task auto)"),
        (["--schedule", "cosine"], "(--schedule constant)"),
        (["--data", "digits"], "(--data xor)"),
    ],
)  # fmt: skip
def test_resume_refuses_flags_that_change_the_saved_run(
    flags: list[str], message: str, saved_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    before = saved_run.read_bytes()
    argv = ["train", "--resume", str(saved_run), "--epochs", "2", "--out", str(tmp_path), "--device", "numpy", *flags]
    assert main(argv) == ExitStatus.CHECKPOINT
    assert message.format(saved_run) in one_error_line(capsys)
    assert saved_run.read_bytes() == before and not (tmp_path / "checkpoint.npz").exists()


def _without(extra: dict, key: str) -> dict:
    return {name: value for name, value in extra.items() if name != key}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda extra: _without(extra, "args"), "was not written by fusednn train (it holds no saved 'args')"),
        (lambda extra: {**extra, "args": ["--lr", "1"]}, "its saved args do not parse: the saved args are a list"),
        (lambda extra: {**extra, "args": {**extra["args"], "lr": "fast"}},
         "its saved args do not parse: argument --lr: expected a number, got 'fast'"),
        (lambda extra: {**extra, "args": {**extra["args"], "hidden": "4"}},
         "its saved args describe --hidden 4 --activation relu --dtype float32 --optimizer adam, not the model"),
        (lambda extra: {**extra, "scaler": "standard"}, "holds a bad scaler: A scaler state must be a dict, got str"),
        (lambda extra: {**extra, "scaler": {"type": "StandardScaler", "scale": [1.0], "offset": [0.0]}},
         "its scaler was fitted on 1 features; its model takes 2"),
        (lambda extra: {**extra, "scaler": None}, "it holds no scaler although its run used --scale standard"),
        (lambda extra: {**extra, "history": [0.5]}, "its saved history is not a dict of lists"),
        (lambda extra: {**extra, "history": {"loss": 0.5}}, "its saved history 'loss' is not a list of numbers"),
        (lambda extra: {**extra, "history": {"loss": [0.5, 0.4]}}, "'loss' has 2 values for 1 epochs trained"),
        (None, "it holds no optimizer state"),
    ],
)  # fmt: skip
def test_resume_refuses_a_malformed_checkpoint(
    change: Callable[[dict], dict] | None, message: str, saved_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    saved = nn.load(saved_run, device="numpy")
    damaged = tmp_path / "damaged.npz"
    if change is None:
        nn.save(damaged, saved.model, None, **saved.extra)
    else:
        nn.save(damaged, saved.model, saved.optimizer, **change(saved.extra))
    argv = ["train", "--resume", str(damaged), "--epochs", "2", "--out", str(tmp_path / "out"), "--device", "numpy"]
    assert main(argv) == ExitStatus.CHECKPOINT
    assert message in one_error_line(capsys)


def test_resume_refuses_a_model_with_layers_the_cli_never_builds(
    saved_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    saved = nn.load(saved_run, device="numpy")
    first, last = saved.model.layers
    layers = [nn.Dense(**first.get_config()), nn.Dropout(0.1), nn.Dense(**last.get_config())]
    model = nn.Sequential(layers, device="numpy", seed=0)
    model.set_weights(saved.model.get_weights())
    damaged = tmp_path / "dropout.npz"
    nn.save(damaged, model, nn.Adam(model.parameters(), lr=0.002), **saved.extra)
    argv = ["train", "--resume", str(damaged), "--epochs", "2", "--out", str(tmp_path / "out"), "--device", "numpy"]
    assert main(argv) == ExitStatus.CHECKPOINT
    assert "its model has layers other than nn.Dense, which fusednn train never builds" in one_error_line(capsys)


def test_resume_reads_the_record_of_an_older_fusednn(saved_run: Path, tmp_path: Path) -> None:
    """Records written before --task and --overwrite existed, with relative paths, still resume."""
    saved = nn.load(saved_run, device="numpy")
    record = {key: value for key, value in saved.extra["args"].items() if key not in ("task", "overwrite")}
    older = tmp_path / "older.npz"
    nn.save(older, saved.model, saved.optimizer, **{**saved.extra, "args": {**record, "command": "train", "out": "x"}})
    assert main(["train", "--resume", str(older), "--epochs", "2", "--out", str(tmp_path / "out")]) == 0
    assert nn.load(tmp_path / "out" / "checkpoint.npz", device="numpy").extra["args"]["task"] == "auto"


def test_task_regression_trains_on_whole_number_targets(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 3))
    counts = np.round(10 + 3 * x[:, 0] - 2 * x[:, 1]).clip(0)  # whole numbers, but quantities
    data = _table(tmp_path, "counts.csv", np.column_stack([x, counts]))
    flags = ["train", "--data", data, "--device", "numpy", "--epochs", "2", "--hidden", "8", "--no-progress"]
    assert main([*flags, "--out", str(tmp_path / "auto")]) == 0
    banner = capsys.readouterr().out.splitlines()[0]
    expected = f"classification into {int(counts.max()) + 1} classes (--task auto: the label column holds whole numbers"
    assert expected in banner and "pass --task regression if they are quantities)" in banner
    assert main([*flags, "--out", str(tmp_path / "regression"), "--task", "regression"]) == 0
    assert "regression of 1 target(s) (--task regression)" in capsys.readouterr().out
    report = json.loads((tmp_path / "regression" / "metrics.json").read_text())
    assert set(report["test"]) == {"loss", "mae"} and report["task"]["task"] == "regression"
    assert nn.load(tmp_path / "regression" / "checkpoint.npz", device="numpy").model.out_features == 1


def test_an_empty_stratum_of_auto_classes_suggests_task_regression(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    rng = np.random.default_rng(0)
    # 80 rows of whole-number prices from 0 to 59: auto takes them for 60 classes, too few rows each to split.
    data = _table(tmp_path, "prices.csv", np.column_stack([rng.random((80, 3)), rng.integers(0, 60, 80)]))
    assert main(["train", "--data", data, "--device", "numpy", "--out", str(tmp_path / "out")]) == ExitStatus.DATA
    line = one_error_line(capsys)
    assert "leaves the held-out part empty" in line and line.endswith("pass --task regression if they are quantities)")


def test_large_batch_options_and_files(tmp_path: Path) -> None:
    table = np.column_stack([np.random.default_rng(0).normal(size=(300, 3)), np.arange(300) % 3])
    np.savetxt(tmp_path / "data.csv", table, delimiter=",", header="a,b,c,label", comments="")
    flags = ["--device", "numpy", "--epochs", "2", "--batch-size", "16", "--accumulate", "4", "--optimizer", "sgd"]
    flags += ["--momentum", "0.9", "--lr-scaling", "linear", "--warmup-epochs", "1", "--schedule", "cosine"]
    assert main(["train", "--data", str(tmp_path / "data.csv"), "--out", str(tmp_path / "csv"), *flags]) == 0
    report = json.loads((tmp_path / "csv" / "metrics.json").read_text())
    assert report["args"]["accumulate"] == 4 and np.array(report["confusion_matrix"]).shape == (3, 3)
    synthetic = ["train", "--data", "synthetic", "--rows", "3000", "--features", "8", "--classes", "4"]
    assert main([*synthetic, "--batch-size", "1024", "--dtype", "float64", "--device", "numpy", "--epochs", "1",
                 "--out", str(tmp_path / "syn"), "--early-stopping", "1", "--scale", "minmax"]) == 0  # fmt: skip
    assert nn.load(tmp_path / "syn" / "checkpoint.npz", device="numpy").model.dtype == np.float64


def test_divergence_exits_1(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    flags = ["train", "--data", "xor", "--rows", "200", "--optimizer", "sgd", "--lr", "1e30", "--device", "numpy"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # NumPy's overflow warnings would bury the one line that matters
        status = main([*flags, "--epochs", "2", "--out", str(tmp_path)])
    assert status == ExitStatus.DIVERGED == 1
    assert "Loss became" in capsys.readouterr().err


@pytest.mark.parametrize("epoch_path", ["compiled", "per-step"])
def test_the_epoch_path_flag_reaches_fit(epoch_path: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from fusednn import nn

    seen = []
    fit = nn.fit

    def recording_fit(*args, **kwargs):
        history = fit(*args, **kwargs)
        seen.append(history.params["epoch_path"])
        return history

    monkeypatch.setattr(nn, "fit", recording_fit)
    argv = ["train", "--data", "xor", "--rows", "200", "--epochs", "2", "--device", "cpu", "--no-progress"]
    assert main([*argv, "--epoch-path", epoch_path, "--out", str(tmp_path / "out")]) == 0
    assert seen == [epoch_path]


@pytest.mark.parametrize(("optimizer", "extra"), [("lamb", []), ("lars", ["--momentum", "0.9"]), ("adamw", [])])
def test_train_with_the_new_optimizers(tmp_path: Path, optimizer, extra) -> None:
    out = tmp_path / optimizer
    flags = ["train", "--data", "xor", "--rows", "64", "--device", "cpu", "--epochs", "2", "--optimizer", optimizer]
    assert main([*flags, *extra, "--out", str(out)]) == 0
    loaded = nn.load(out / "checkpoint.npz", device="numpy")
    assert type(loaded.optimizer) is nn.OPTIMIZERS[optimizer] and loaded.optimizer.step_count > 0
