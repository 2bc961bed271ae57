"""Checkpoints: exact round trips across devices, resumed training, atomic writes, and every kind of bad file."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest

from fusednn import nn
from fusednn.nn import checkpoint as checkpoint_module
from fusednn.nn import schedules
from fusednn.nn.data import xor


def trained(device: str = "numpy", dtype: str = "float32", epochs: int = 1):
    data = xor(rows=64, seed=0)
    model = nn.MLP([2, 8, 2], activation="tanh", device=device, dtype=dtype, seed=0)
    opt = nn.Adam(model.parameters(), lr=0.01, amsgrad=True)
    nn.fit(model, data.x, data.y, optimizer=opt, epochs=epochs, batch_size=16, progress=False)
    return model, opt


@pytest.mark.parametrize("load_device", ["numpy", "cpu"])
def test_round_trip_is_exact_on_any_device(tmp_path: Path, load_device: str) -> None:
    model, opt = trained("numpy", epochs=2)
    path = tmp_path / "run.ckpt"
    nn.save(path, model, opt, note="hello", scores=[1, 2.5])
    assert path.is_file() and list(tmp_path.iterdir()) == [path]  # exact name, no temp file left over
    restored = nn.load(path, device=load_device)
    assert restored.model.device == load_device and restored.model.dtype == np.float32
    for ours, saved in zip(restored.model.get_weights(), model.get_weights(), strict=True):
        np.testing.assert_array_equal(ours, saved)
    assert restored.optimizer.get_config() == opt.get_config()
    saved_state, restored_state = opt.state_dict(), restored.optimizer.state_dict()
    assert restored_state["step"] == saved_state["step"] == 8
    for name in ("exp_avg", "exp_avg_sq", "max_exp_avg_sq"):
        np.testing.assert_array_equal(restored_state[name], saved_state[name])
    assert restored.extra == {"note": "hello", "scores": [1, 2.5]}
    assert restored.epoch == restored.model.epochs_trained == 2


def test_model_only_and_dtype_override(tmp_path: Path) -> None:
    model, _ = trained(dtype="float64")
    nn.save(tmp_path / "m.npz", model)
    restored = nn.load(tmp_path / "m.npz", device="numpy", dtype="float32")
    assert restored.optimizer is None and restored.model.dtype == np.float32
    np.testing.assert_allclose(restored.model.get_weights()[0], model.get_weights()[0], rtol=1e-6)


@pytest.mark.parametrize("device", ["numpy", "cpu"])
def test_resumed_training_is_bit_identical(tmp_path: Path, device: str) -> None:
    data = xor(rows=90, seed=1)
    args = {"epochs": 2, "batch_size": 16, "seed": 5, "progress": False, "metrics": ["accuracy"]}

    def schedule() -> schedules.Schedule:
        return schedules.LinearWarmup(schedules.CosineDecay(0.02, epochs=4), epochs=1)

    straight = nn.MLP([2, 8, 2], activation="relu", device=device, seed=0)
    opt = nn.RMSprop(straight.parameters(), lr=0.01, momentum=0.5)
    nn.fit(straight, data.x, data.y, optimizer=opt, schedule=schedule(), **args)
    nn.fit(straight, data.x, data.y, optimizer=opt, schedule=schedule(), **args)

    first = nn.MLP([2, 8, 2], activation="relu", device=device, seed=0)
    first_opt = nn.RMSprop(first.parameters(), lr=0.01, momentum=0.5)
    path = tmp_path / "run.npz"
    nn.fit(first, data.x, data.y, optimizer=first_opt, schedule=schedule(), checkpoint=path, **args)
    resumed = nn.load(path, device=device)
    assert resumed.epoch == 2 and len(resumed.extra["history"]["loss"]) == 2
    nn.fit(resumed.model, data.x, data.y, optimizer=resumed.optimizer, schedule=schedule(), **args)

    assert resumed.model.epochs_trained == straight.epochs_trained == 4
    for ours, reference in zip(resumed.model.get_weights(), straight.get_weights(), strict=True):
        np.testing.assert_array_equal(ours, reference)


def test_a_crash_mid_write_leaves_the_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model, opt = trained()
    path = tmp_path / "run.npz"
    nn.save(path, model, opt, version_tag="old")
    before = path.read_bytes()
    real_savez = np.savez

    def crashing_savez(file, **arrays):
        real_savez(file, **arrays)
        file.truncate(100)  # half-written data on disk, then the process "dies"
        raise KeyboardInterrupt("simulated crash")

    monkeypatch.setattr(checkpoint_module.np, "savez", crashing_savez)
    with pytest.raises(KeyboardInterrupt):
        nn.save(path, model, opt, version_tag="new")
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert nn.load(path, device="numpy").extra["version_tag"] == "old"
    assert list(tmp_path.iterdir()) == [path]

    def failing_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint_module.os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk full"):
        nn.save(path, model, opt, version_tag="new")
    assert path.read_bytes() == before and list(tmp_path.iterdir()) == [path]


@pytest.mark.filterwarnings("ignore:invalid value:RuntimeWarning", "ignore:overflow:RuntimeWarning")  # the point
def test_fit_checkpoint_keeps_the_last_good_epoch(tmp_path: Path) -> None:
    data = xor(rows=64, seed=2)
    model = nn.MLP([2, 4, 2], device="numpy", seed=0)
    path = tmp_path / "run.npz"
    nn.fit(model, data.x, data.y, epochs=2, batch_size=16, checkpoint=path, checkpoint_extra={"run": "a"})
    good = path.read_bytes()
    bad_x = data.x.copy()
    bad_x[5] = 1e38  # finite (fit refuses NaN/inf data up front), but the float32 model overflows on it
    with pytest.raises(nn.NonFiniteLossError, match="epoch 3, step 1"):
        nn.fit(model, bad_x, data.y, epochs=1, batch_size=16, shuffle=False, checkpoint=path)
    assert path.read_bytes() == good
    restored = nn.load(path, device="numpy")
    assert restored.epoch == 2 and restored.extra["run"] == "a"


def rewrite(path: Path, out: Path, change) -> Path:
    """Copy a checkpoint's arrays through ``change`` into a new .npz."""
    with np.load(path) as archive:
        arrays = {name: archive[name].copy() for name in archive.files}
    change(arrays)
    with open(out, "wb") as handle:
        np.savez(handle, **arrays)
    return out


def header_change(**updates):
    def change(arrays):
        header = json.loads(arrays["__header__"].tobytes())
        header.update(updates)
        arrays["__header__"] = np.frombuffer(json.dumps(header).encode(), dtype=np.uint8)

    return change


def test_bad_files_raise_clear_errors(tmp_path: Path) -> None:
    model, opt = trained()
    good = tmp_path / "good.npz"
    nn.save(good, model, opt)

    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(ValueError, match="truncated.npz.*not a readable fusednn checkpoint"):
        nn.load(truncated)

    flipped = bytearray(good.read_bytes())
    flipped[len(flipped) // 3] ^= 0xFF  # inside an array's compressed-or-stored bytes
    (tmp_path / "flipped.npz").write_bytes(bytes(flipped))
    with pytest.raises(ValueError, match="flipped.npz"):
        nn.load(tmp_path / "flipped.npz")

    def tamper(arrays):
        arrays["model/0.W"][0, 0] += 1

    with pytest.raises(ValueError, match="tampered.npz.*checksum"):
        nn.load(rewrite(good, tmp_path / "tampered.npz", tamper))

    np.savez(tmp_path / "foreign.npz", x=np.zeros(3))
    with pytest.raises(ValueError, match="foreign.npz.*not a fusednn checkpoint"):
        nn.load(tmp_path / "foreign.npz")
    (tmp_path / "text.npz").write_text("hello")
    with pytest.raises(ValueError, match="text.npz"):
        nn.load(tmp_path / "text.npz")
    with pytest.raises(ValueError, match="other.npz.*format tag"):
        nn.load(rewrite(good, tmp_path / "other.npz", header_change(format="something-else")))
    with pytest.raises(ValueError, match="newer.npz.*version 99"):
        nn.load(rewrite(good, tmp_path / "newer.npz", header_change(version=99)))
    with pytest.raises(ValueError, match="broken.npz.*cannot rebuild"):
        nn.load(rewrite(good, tmp_path / "broken.npz", header_change(model={"layers": [{"in_features": -1}]})))
    with pytest.raises(FileNotFoundError, match="missing.npz"):
        nn.load(tmp_path / "missing.npz")
    assert zipfile.is_zipfile(good)  # the good file was never touched


def test_save_rejects_bad_arguments(tmp_path: Path) -> None:
    model, opt = trained()
    with pytest.raises(TypeError, match="JSON-serialisable"):
        nn.save(tmp_path / "x.npz", model, opt, weights=np.zeros(2))
    with pytest.raises(TypeError, match="nn.Optimizer or None"):
        nn.save(tmp_path / "x.npz", model, "adam")
    other, other_opt = trained()
    with pytest.raises(ValueError, match="another model's parameters"):
        nn.save(tmp_path / "x.npz", model, other_opt)
    with pytest.raises(OSError):
        nn.save(tmp_path / "no" / "such" / "dir.npz", model, opt)
    assert list(tmp_path.iterdir()) == []
