"""Checkpoints under faults: a writer killed mid-save, a full disk, a file-size limit, a read-only mount.

Every test asserts the same three things: the old checkpoint survives byte for byte
(and loads), the error names the user's path (never a temporary), and nothing
half-written remains once a later save has succeeded.

The SIGKILL and file-size tests fork the test process (fast: no new interpreter);
the full-disk and read-only tests need a private mount namespace (``unshare -m``,
root) for a small tmpfs, and skip, saying why, where the sandbox refuses one.
"""

from __future__ import annotations

import errno
import json
import os
import random
import resource
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import traceback
import warnings
from pathlib import Path

import numpy as np
import pytest

from fusednn import nn
from fusednn.nn import atomic

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="fork, rlimits and mount namespaces are Linux's")

REPO = Path(__file__).resolve().parents[1]


def temporaries(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(".tmp"))


def fork(child) -> int:
    """Run ``child()`` in a forked process that exits with its return value (1 on an exception).

    Fork, not spawn: a fresh interpreter per kill would cost seconds. Python warns when it forks a
    process with other threads (JAX's, once a benchmark test has imported it): the child only saves
    with NumPy and leaves through ``os._exit``, touching no lock those threads could hold.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", r"os\.fork\(\) was called", RuntimeWarning)
        pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        status = 1
        try:
            status = child()
        except BaseException:
            traceback.print_exc()
        finally:
            os._exit(status)
    return pid


def exit_status(pid: int) -> int:
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


# ----------------------------------------------------------------------------- a killed writer


def big_run() -> tuple[nn.Sequential, nn.Optimizer]:
    """A 17 MB checkpoint: 2.1 M float32 parameters and SGD's momentum buffer."""
    model = nn.MLP([1024, 1024, 1024], device="numpy", seed=0)
    return model, nn.SGD(model.parameters(), lr=1e-3, momentum=0.9)


def set_generation(model: nn.Sequential, opt: nn.Optimizer, generation: int) -> None:
    model.parameters().data[...] = generation
    for state in opt.state.values():
        state[...] = generation
    opt.step_count = generation


def test_sigkill_at_random_points_of_a_large_save_never_loses_the_last_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "run.npz"
    model, opt = big_run()
    set_generation(model, opt, 0)
    started = time.perf_counter()
    nn.save(path, model, opt, generation=0)
    save_seconds = time.perf_counter() - started
    assert path.stat().st_size > 16e6
    rng = random.Random(0)
    orphans_seen = 0
    generation = 0
    for _ in range(20):
        done_read, done_write = os.pipe()

        def saver(first: int = generation + 1, fd: int = done_write) -> int:
            os.write(fd, b"s")  # started
            for g in range(first, first + 1000):
                set_generation(model, opt, g)
                nn.save(path, model, opt, generation=g)
                os.write(fd, g.to_bytes(4, "little"))
            return 0

        pid = fork(saver)
        os.close(done_write)
        assert os.read(done_read, 1) == b"s"
        time.sleep(rng.uniform(0.0, 1.2 * save_seconds))
        os.kill(pid, signal.SIGKILL)
        assert exit_status(pid) == -signal.SIGKILL
        reported = b""
        while chunk := os.read(done_read, 4096):
            reported += chunk
        os.close(done_read)
        # Generations whose save returned (4-byte writes to a pipe are atomic, so none is torn).
        completed = [int.from_bytes(reported[i : i + 4], "little") for i in range(0, len(reported), 4)]
        last_completed = completed[-1] if completed else generation

        restored = nn.load(path, device="numpy")  # always a whole checkpoint, never a torn one
        on_disk = restored.extra["generation"]
        # The newest save that finished, or the one whose rename landed just before the kill.
        assert on_disk in (last_completed, last_completed + 1)
        assert restored.epoch == 0 and restored.optimizer.step_count == on_disk
        assert np.all(restored.model.parameters().data == on_disk)
        assert all(np.all(state == on_disk) for state in restored.optimizer.state.values())
        orphans_seen += len(temporaries(tmp_path))
        generation = on_disk
    assert orphans_seen > 0, "no kill landed inside a write; the test did not test anything"
    nn.save(path, model, opt, generation=-1)  # the next successful save clears the dead writers' temporaries
    assert temporaries(tmp_path) == []


def test_temporaries_of_live_processes_other_hosts_and_other_files_are_kept(tmp_path: Path) -> None:
    path = tmp_path / "run.npz"
    host = atomic._host_tag()
    dead = subprocess.Popen(["true"])  # any short-lived process: once reaped, its pid names no process
    dead.wait()
    live = subprocess.Popen(["sleep", "30"])
    try:
        names = {
            "dead": f".run.npz.{host}-{dead.pid}.abc123.tmp",
            "live": f".run.npz.{host}-{live.pid}.abc123.tmp",
            "ours": f".run.npz.{host}-{os.getpid()}.abc123.tmp",
            "other host": f".run.npz.otherhost-{dead.pid}.abc123.tmp",
            "other file": f".run.npz.old.{host}-{dead.pid}.abc123.tmp",
            "unknown writer": ".run.npz.abc123.tmp",
        }
        for name in names.values():
            (tmp_path / name).write_bytes(b"x" * 100)
        atomic.write_atomically(path, lambda handle: handle.write(b"new"))
    finally:
        live.kill()
        live.wait()
    assert path.read_bytes() == b"new"
    kept = set(temporaries(tmp_path))
    assert names["dead"] not in kept
    assert kept == {name for key, name in names.items() if key != "dead"}


def test_a_new_file_honours_the_umask_and_a_replaced_one_keeps_its_mode(tmp_path: Path) -> None:
    # A temporary file is created 0600; the file it becomes must be as readable as one open() would make.
    old_mask = os.umask(0o027)
    try:
        atomic._umask.cache_clear()
        fresh = tmp_path / "metrics.json"
        atomic.write_atomically(fresh, lambda handle: handle.write(b"{}"))
        assert fresh.stat().st_mode & 0o777 == 0o640
        kept = tmp_path / "shared.npz"
        kept.write_bytes(b"old")
        kept.chmod(0o664)
        atomic.write_atomically(kept, lambda handle: handle.write(b"new"))
        assert kept.stat().st_mode & 0o777 == 0o664 and kept.read_bytes() == b"new"
    finally:
        os.umask(old_mask)
        atomic._umask.cache_clear()


def test_every_failure_names_the_users_path_and_removes_the_temporary(tmp_path: Path) -> None:
    def full_disk(handle) -> None:
        handle.write(b"x" * 1000)
        raise OSError(errno.ENOSPC, "No space left on device")

    (tmp_path / "a directory").mkdir()
    cases = [
        (tmp_path / "run.npz", full_disk, errno.ENOSPC),
        (tmp_path / "a directory", lambda handle: handle.write(b"x"), errno.EISDIR),  # os.replace over a directory
        (tmp_path / "missing" / "run.npz", lambda handle: handle.write(b"x"), errno.ENOENT),
    ]
    for path, write, expected in cases:
        with pytest.raises(OSError) as caught:
            atomic.write_atomically(path, write)
        assert caught.value.errno == expected
        assert f"Cannot write {str(path)!r}" in str(caught.value) and ".tmp" not in str(caught.value)
        assert temporaries(tmp_path) == []
    with pytest.raises(FileNotFoundError, match=r"Cannot write .*missing/run.npz'"):
        atomic.check_can_write(tmp_path / "missing" / "run.npz")


# ----------------------------------------------------------------------------- a write that fails mid-file


def small_run(generation: int = 0) -> tuple[nn.Sequential, nn.Optimizer]:
    model = nn.MLP([8, 16, 2], device="numpy", seed=generation)
    return model, nn.SGD(model.parameters(), lr=0.1)


def test_a_file_size_limit_mid_write_leaves_the_old_checkpoint(tmp_path: Path) -> None:
    """RLIMIT_FSIZE makes write() fail with EFBIG part-way through the file, as a full disk does."""
    path = tmp_path / "run.npz"
    nn.save(path, *small_run(), note="old")
    old = path.read_bytes()
    result = tmp_path.parent / f"{tmp_path.name}-result.json"
    model, opt = big_run()

    def limited() -> int:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # else the kernel kills the writer instead
        _, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
        resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, hard))  # the soft limit: 1 MB of a 25 MB write
        try:
            nn.save(path, model, opt, note="new")
        except OSError as error:
            outcome = {"errno": error.errno, "message": str(error), "type": type(error).__name__}
        else:
            outcome = {"errno": None}
        resource.setrlimit(resource.RLIMIT_FSIZE, (hard, hard))
        result.write_text(json.dumps(outcome))
        return 0

    assert exit_status(fork(limited)) == 0
    outcome = json.loads(result.read_text())
    result.unlink()
    assert outcome["errno"] == errno.EFBIG
    assert f"Cannot write {str(path)!r}" in outcome["message"] and ".tmp" not in outcome["message"]
    assert path.read_bytes() == old and nn.load(path, device="numpy").extra["note"] == "old"
    assert temporaries(tmp_path) == []


# ----------------------------------------------------------------------------- a real full disk and a read-only mount

MOUNTED = textwrap.dedent(
    """
    import json, os, subprocess, sys
    import numpy as np
    from fusednn import nn

    where = sys.argv[1]
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", where], check=True)
    path = os.path.join(where, "run.npz")
    old_model = nn.MLP([8, 16, 2], device="numpy", seed=0)
    nn.save(path, old_model, note="old")
    old = open(path, "rb").read()

    def attempt(action):
        try:
            action()
        except OSError as error:
            outcome = {"errno": error.errno, "message": str(error), "type": type(error).__name__}
        else:
            outcome = {"errno": None}
        outcome["old survives"] = open(path, "rb").read() == old and nn.load(path).extra["note"] == "old"
        outcome["left over"] = sorted(n for n in os.listdir(where) if n != "run.npz")
        return outcome

    big = nn.MLP([512, 512, 512], device="numpy", seed=1)  # 2 MB: does not fit in what is left of 1 MB
    report = {"full": attempt(lambda: nn.save(path, big, note="new"))}
    x, y = np.zeros((8, 8)), np.zeros(8, dtype=int)
    report["fit, full"] = attempt(
        lambda: nn.fit(big, x[:, :1].repeat(512, 1), y, epochs=1, checkpoint=path, checkpoint_overwrite=True,
                       progress=False)
    )
    subprocess.run(["mount", "-o", "remount,ro", where], check=True)
    report["read-only"] = attempt(lambda: nn.save(path, old_model, note="new"))
    report["fit, read-only"] = attempt(
        lambda: nn.fit(old_model, x, y, epochs=1, checkpoint=path, checkpoint_overwrite=True, progress=False)
    )
    report["fit, read-only, epochs"] = old_model.epochs_trained
    print(json.dumps(report))
    """
)


@pytest.fixture(scope="module")
def mounted_report(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Run :data:`MOUNTED` in a private mount namespace; skip with the reason when none can be made."""
    unshare = shutil.which("unshare")
    if unshare is None:
        pytest.skip("needs unshare(1) for a private mount namespace with a small tmpfs")
    where = tmp_path_factory.mktemp("mount")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    private = [unshare, "--mount", "--propagation", "private"]
    probe = subprocess.run(
        [*private, "mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(where)], capture_output=True, text=True
    )
    if probe.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs in a private mount namespace here: {probe.stderr.strip()}")
    done = subprocess.run(
        [*private, sys.executable, "-c", MOUNTED, str(where)], capture_output=True, text=True, env=env, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize(
    ("case", "expected_errno"),
    [("full", errno.ENOSPC), ("fit, full", errno.ENOSPC), ("read-only", errno.EROFS), ("fit, read-only", errno.EROFS)],
)
def test_full_and_read_only_filesystems_leave_the_old_checkpoint(mounted_report, case: str, expected_errno) -> None:
    outcome = mounted_report[case]
    assert outcome["errno"] == expected_errno, outcome
    assert "run.npz'" in outcome["message"] and ".tmp" not in outcome["message"]
    assert outcome["old survives"] and outcome["left over"] == []


def test_fit_finds_a_read_only_destination_before_training(mounted_report) -> None:
    assert mounted_report["fit, read-only, epochs"] == 0
    assert "Cannot write" in mounted_report["fit, read-only"]["message"]


def test_fit_says_what_a_full_disk_left_on_disk(mounted_report) -> None:
    assert "this run wrote no checkpoint" in mounted_report["fit, full"]["message"]
    assert "is as it was" in mounted_report["fit, full"]["message"]
