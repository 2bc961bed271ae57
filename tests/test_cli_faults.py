"""``fusednn train`` under faults: existing runs, full and read-only disks, non-finite metrics, Ctrl-C.

Most faults are simulated in-process (root ignores chmod, so a read-only or full
disk is an ``OSError`` raised where the write happens); one test makes real ones,
a read-only and a full tmpfs in a private mount namespace, where the machine allows.
"""

from __future__ import annotations

import errno
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from cli_helpers import XOR, interrupted_at, one_error_line

from fusednn import nn
from fusednn.cli import ExitStatus, main

ROOT = Path(__file__).resolve().parents[1]


def files_in(directory: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(directory.iterdir())}


def test_a_fresh_run_never_replaces_a_checkpoint_silently(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "run"
    assert main([*XOR, "--epochs", "1", "--out", str(out)]) == 0
    before = files_in(out)
    assert main([*XOR, "--epochs", "1", "--out", str(out), "--seed", "1"]) == ExitStatus.OUTPUT
    assert one_error_line(capsys) == (
        f"fusednn train: error: --out {str(out)!r} already holds a checkpoint: continue that run with "
        f"--resume {out / 'checkpoint.npz'}, or start over with --overwrite"
    )
    assert files_in(out) == before
    assert main([*XOR, "--epochs", "1", "--out", str(out), "--seed", "1", "--overwrite"]) == 0
    assert nn.load(out / "checkpoint.npz", device="numpy").extra["args"]["seed"] == 1


def test_metrics_json_is_strict_json(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def evaluate(*args: object, **kwargs: object) -> dict[str, float]:
        return {"loss": math.nan, "accuracy": math.inf, "f1": 0.5}

    monkeypatch.setattr(nn, "evaluate", evaluate)
    assert main([*XOR, "--epochs", "1", "--out", str(tmp_path)]) == 0

    def refuse(constant: str) -> None:
        raise AssertionError(f"metrics.json holds a bare {constant}")

    report = json.loads((tmp_path / "metrics.json").read_text(), parse_constant=refuse)
    assert report["test"] == {"loss": None, "accuracy": None, "f1": 0.5}


def _failing_fsync(monkeypatch: pytest.MonkeyPatch, name: str, error: int) -> None:
    """Make every fsync of a temporary file for ``name`` fail, as a full disk fails a write."""
    if not Path("/proc/self/fd").is_dir():
        pytest.skip("needs /proc/self/fd to tell which file an fsync is for")
    real = os.fsync

    def fsync(fd: int) -> None:
        written = os.path.basename(os.readlink(f"/proc/self/fd/{fd}"))
        if name in written and written != name:
            raise OSError(error, os.strerror(error))
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)


@pytest.mark.parametrize("name", ["checkpoint.npz", "metrics.json", "curves.png"])
def test_a_full_disk_fails_with_one_line_and_keeps_the_previous_files(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    assert main([*XOR, "--epochs", "1", "--out", str(tmp_path)]) == 0
    before = files_in(tmp_path)
    _failing_fsync(monkeypatch, name, errno.ENOSPC)
    argv = ["train", "--resume", str(tmp_path / "checkpoint.npz"), "--epochs", "2", "--device", "numpy"]
    assert main(argv) == ExitStatus.OUTPUT
    line = one_error_line(capsys)
    path = repr(str(tmp_path / name))
    # fit writes the checkpoint and says what its failure left on disk; the CLI writes the other two afterwards.
    on_disk = f"; this run wrote no checkpoint; {path} is as it was" if name == "checkpoint.npz" else ""
    assert line == f"fusednn train: error: Cannot write {path}: No space left on device{on_disk}"
    after = files_in(tmp_path)
    assert list(after) == list(before)  # no temporary file left behind
    assert after[name] == before[name]  # the failed file is the old one, whole


def test_a_read_only_out_fails_before_training(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    assert main([*XOR, "--epochs", "1", "--out", str(tmp_path)]) == 0
    before = files_in(tmp_path)
    real = os.open

    def read_only(path: str | os.PathLike, flags: int, *args: int, **kwargs: int) -> int:
        if str(path).startswith(str(tmp_path)) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return real(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", read_only)
    argv = ["train", "--resume", str(tmp_path / "checkpoint.npz"), "--epochs", "2", "--device", "numpy"]
    assert main(argv) == ExitStatus.OUTPUT
    expected = f"fusednn train: error: cannot write to --out {str(tmp_path)!r}: Read-only file system"
    assert one_error_line(capsys) == expected
    assert files_in(tmp_path) == before


def test_an_out_that_cannot_be_searched_fails_with_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """What a user who is not root meets under a directory without search permission (root never does)."""
    locked = tmp_path / "locked"
    real_stat, real_mkdir = os.stat, os.mkdir

    def refused(real: Callable[..., Any]) -> Callable[..., Any]:
        def call(path: str | os.PathLike, *args: Any, **kwargs: Any) -> Any:
            if str(path).startswith(str(locked)) and str(path) != str(locked):
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
            return real(path, *args, **kwargs)

        return call

    monkeypatch.setattr(os, "stat", refused(real_stat))
    monkeypatch.setattr(os, "mkdir", refused(real_mkdir))
    assert main([*XOR, "--epochs", "1", "--out", str(locked / "run")]) == ExitStatus.OUTPUT
    out = repr(str(locked / "run"))
    assert one_error_line(capsys) == f"fusednn train: error: cannot use --out {out}: Permission denied: {out}"


REAL_FILESYSTEMS = textwrap.dedent(
    """
    import os, sys
    from fusednn.cli import main
    from fusednn import nn

    mount = sys.argv[1]
    flags = ["train", "--data", "xor", "--rows", "200", "--hidden", "8", "--device", "numpy", "--no-progress"]
    assert main([*flags, "--epochs", "1", "--out", f"{mount}/run"]) == 0
    before = open(f"{mount}/run/checkpoint.npz", "rb").read()
    with open(f"{mount}/filler", "wb", buffering=0) as filler:  # fill the disk to the last byte
        try:
            while filler.write(b"\\0" * 4096):
                pass
        except OSError:
            pass
    resume = ["train", "--resume", f"{mount}/run/checkpoint.npz", "--epochs", "2", "--device", "numpy"]
    print("full", main(resume))
    assert open(f"{mount}/run/checkpoint.npz", "rb").read() == before
    assert sorted(os.listdir(f"{mount}/run")) == ["checkpoint.npz", "curves.png", "metrics.json"]
    assert nn.load(f"{mount}/run/checkpoint.npz", device="numpy").epoch == 1
    os.remove(f"{mount}/filler")
    os.system(f"mount -o remount,ro {mount}")
    print("read-only", main(resume))
    """
)


def test_a_real_full_and_read_only_disk(tmp_path: Path) -> None:
    """A 1 MiB tmpfs, filled up and then remounted read-only, in a mount namespace only this test sees."""
    unshare = shutil.which("unshare")
    if unshare is None or sys.platform != "linux":
        pytest.skip("needs Linux and unshare(1) to mount a private tmpfs")
    mount = tmp_path / "mnt"
    mount.mkdir()
    (tmp_path / "check.py").write_text(REAL_FILESYSTEMS)
    script = f"mount -t tmpfs -o size=1m tmpfs {mount} && exec {sys.executable} {tmp_path / 'check.py'} {mount}"
    namespace = [unshare, "-m"] if os.geteuid() == 0 else [unshare, "-rm"]
    probe = subprocess.run([*namespace, "sh", "-c", f"mount -t tmpfs tmpfs {mount}"], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs in a private mount namespace here: {probe.stderr.strip()}")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run(
        [*namespace, "sh", "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert {"full 5", "read-only 5"} <= set(result.stdout.splitlines()), result.stdout
    errors = [line for line in result.stderr.splitlines() if line.startswith("fusednn train: error:")]
    assert errors == [
        f"fusednn train: error: Cannot write '{mount}/run/checkpoint.npz': No space left on device; "
        f"this run wrote no checkpoint; '{mount}/run/checkpoint.npz' is as it was",
        f"fusednn train: error: cannot write to --out '{mount}/run': Read-only file system",
    ]


def test_sigint_during_training_then_resume_equals_an_uninterrupted_run(tmp_path: Path) -> None:
    """Ctrl-C a real ``python -m fusednn train`` once its first checkpoint is on disk, then ``--resume`` it."""
    flags = ["train", "--data", "xor", "--rows", "400", "--hidden", "16", "--batch-size", "8", "--device", "numpy"]
    flags += ["--epochs", "80", "--schedule", "cosine", "--no-progress"]
    checkpoint = tmp_path / "split" / "checkpoint.npz"
    process = subprocess.Popen(
        [sys.executable, "-m", "fusednn", *flags, "--out", str(tmp_path / "split")],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while not checkpoint.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=60)
    assert process.returncode == ExitStatus.INTERRUPTED, err
    assert f"interrupted; continue with --resume {checkpoint}" in err and "Traceback" not in err
    interrupted_after = nn.load(checkpoint, device="numpy").epoch
    assert 1 <= interrupted_after < 80
    assert main([*flags, "--out", str(tmp_path / "split"), "--resume", str(checkpoint)]) == 0  # the same command
    assert main([*flags, "--out", str(tmp_path / "straight")]) == 0
    resumed = nn.load(checkpoint, device="numpy")
    straight = nn.load(tmp_path / "straight" / "checkpoint.npz", device="numpy")
    assert resumed.epoch == straight.epoch == 80
    for ours, reference in zip(resumed.model.get_weights(), straight.model.get_weights(), strict=True):
        np.testing.assert_array_equal(ours, reference)
    assert resumed.optimizer is not None and straight.optimizer is not None
    ours, reference = resumed.optimizer.state_dict(), straight.optimizer.state_dict()
    assert ours.keys() == reference.keys()
    for key in ours:
        np.testing.assert_array_equal(ours[key], reference[key])
    assert resumed.extra["history"] == straight.extra["history"]


@pytest.mark.parametrize(
    ("earlier", "flags", "message"),
    [
        (False, [], "interrupted before the first epoch ended; nothing was saved"),
        (True, ["--overwrite"], "interrupted before the first epoch ended; {checkpoint} still holds the earlier run"),
        (True, ["--resume", "{checkpoint}"], "interrupted before a new checkpoint was written; continue with "
         "--resume {checkpoint}"),
    ],
)  # fmt: skip
def test_an_interrupt_says_truly_what_was_saved(
    earlier: bool, flags: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    checkpoint = tmp_path / "checkpoint.npz"
    if earlier:
        assert main([*XOR, "--epochs", "1", "--out", str(tmp_path)]) == 0
    before = files_in(tmp_path) if earlier else {}
    argv = [*XOR, "--epochs", "3", "--out", str(tmp_path), *(flag.format(checkpoint=checkpoint) for flag in flags)]
    capsys.readouterr()
    with interrupted_at("epoch 1/3" if not earlier or "--overwrite" in flags else "epoch 2/3"):
        assert main(argv) == ExitStatus.INTERRUPTED
    assert capsys.readouterr().err.strip().splitlines()[-1] == f"fusednn train: {message.format(checkpoint=checkpoint)}"
    assert files_in(tmp_path) == before
