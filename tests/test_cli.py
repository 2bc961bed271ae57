"""The ``fusednn train`` command: end to end in a subprocess, and its flag handling in-process."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fusednn import nn
from fusednn.cli import build_parser, main

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
    assert "epoch 3/3:" in result.stderr  # progress goes to the log when stderr is not a terminal
    report = json.loads((out / "metrics.json").read_text())
    assert len(report["history"]["loss"]) == len(report["history"]["val_accuracy"]) == 3
    matrix = np.array(report["confusion_matrix"])
    per_class = np.bincount(nn.data.digits().y)
    assert matrix.shape == (10, 10) and matrix.sum() == np.round(0.2 * per_class).sum()  # 20% of each class
    assert report["test"]["accuracy"] == pytest.approx(np.trace(matrix) / matrix.sum())
    assert report["test"]["accuracy"] > 0.8
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    restored = nn.load(out / "checkpoint.npz", device="numpy")
    assert restored.epoch == 3 and restored.extra["scaler"]["type"] == "StandardScaler"


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--batch-size", "-5"], "argument --batch-size: expected a positive integer, got -5"),
        (["--device", "tpu"], "Unknown device 'tpu'"),
        (["--data", "missing.npz"], "Unknown data set 'missing.npz'"),
    ],
)
def test_bad_flags_exit_2_with_one_line(flags: list[str], message: str) -> None:
    result = run_module("train", *flags)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    error_lines = [line for line in result.stderr.splitlines() if "error:" in line]
    assert len(error_lines) == 1 and message in error_lines[0], result.stderr


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--epochs", "0"], "--epochs: expected a positive integer, got 0"),
        (["--hidden", "64,x"], "comma-separated layer widths"),
        (["--val-split", "1.5"], "strictly between 0 and 1"),
        (["--lr", "-1"], "--lr: expected a finite number >= 0"),
        (["--optimizer", "adagrad"], "invalid choice: 'adagrad'"),
        (["--momentum", "0.9"], "--momentum applies to sgd and rmsprop"),
        (["--features", "8"], "--features and --classes apply to --data synthetic only"),
        (["--resume", "nowhere.npz"], "No checkpoint at 'nowhere.npz'"),
    ],
)
def test_bad_flags_in_process(flags: list[str], message: str, capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--device", "numpy", "--out", str(tmp_path), *flags])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_help_documents_every_flag() -> None:
    result = run_module("train", "--help")
    assert result.returncode == 0
    train = next(a for a in build_parser()._actions if a.dest == "command").choices["train"]
    flags = [option for action in train._actions for option in action.option_strings if option.startswith("--")]
    assert len(flags) > 20
    for action in train._actions:
        if action.option_strings and action.dest != "help":
            assert action.help, f"{action.option_strings} has no help text"
    for flag in flags:
        assert flag in result.stdout, flag


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
    with np.errstate(all="ignore"):
        status = main([*flags, "--epochs", "2", "--out", str(tmp_path)])
    assert status == 1
    assert "Loss became" in capsys.readouterr().err
