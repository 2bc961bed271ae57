"""Checkpoints: exact round trips across devices, resumed training, atomic writes, and every kind of bad file."""

from __future__ import annotations

import errno
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


def diverging_after(epochs: int):
    """A schedule with a sane rate for ``epochs`` epochs, then one that overflows float32 weights at once."""
    return lambda t: 0.05 if t < epochs else 1e300


@pytest.mark.filterwarnings("ignore:overflow:RuntimeWarning", "ignore:invalid value:RuntimeWarning")
def test_fit_checkpoint_keeps_the_last_good_epoch(tmp_path: Path) -> None:
    data = xor(rows=64, seed=2)
    model = nn.MLP([2, 4, 2], device="numpy", seed=0)
    path = tmp_path / "run.npz"
    nn.fit(model, data.x, data.y, epochs=2, batch_size=16, checkpoint=path, checkpoint_extra={"run": "a"})
    good = path.read_bytes()
    # Epoch 3's first update overflows the weights, so its second step's loss is the first non-finite one.
    with pytest.raises(nn.NonFiniteLossError, match="epoch 3, step 2") as caught:
        nn.fit(
            model, data.x, data.y, optimizer="sgd", epochs=1, batch_size=16, schedule=diverging_after(2),
            checkpoint=path, checkpoint_overwrite=True,
        )  # fmt: skip
    assert f"this run wrote no checkpoint; {str(path)!r} is as it was" in str(caught.value)
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


# ----------------------------------------------------------------------------- non-finite state is never saved

OVERFLOW = pytest.mark.filterwarnings("ignore:overflow:RuntimeWarning", "ignore:invalid value:RuntimeWarning")


@OVERFLOW
def test_an_epoch_whose_last_update_overflows_is_not_checkpointed(tmp_path: Path) -> None:
    """One update per epoch: epoch 2's losses are finite, its update is not. Before, epoch 2 was saved."""
    data = xor(rows=64, seed=2)
    model = nn.MLP([2, 4, 2], device="numpy", seed=0)
    path = tmp_path / "run.npz"
    with pytest.raises(nn.NonFiniteStateError) as caught:
        nn.fit(
            model, data.x, data.y, optimizer="sgd", epochs=3, batch_size=64, schedule=diverging_after(1),
            checkpoint=path, progress=False,
        )  # fmt: skip
    error = caught.value
    assert isinstance(error, nn.NonFiniteError) and isinstance(error, RuntimeError)
    assert error.epoch == 2 and error.arrays == ["parameters"]
    assert str(error).startswith("Parameters became NaN or infinite in epoch 2")
    assert f"{str(path)!r} still holds epoch 1, the last this run saved" in str(error)
    restored = nn.load(path, device="numpy")
    assert restored.epoch == model.epochs_trained == 1
    assert all(np.isfinite(w).all() for w in restored.model.get_weights())


@pytest.mark.parametrize(("optimizer", "state"), [("adam", "exp_avg_sq"), ("rmsprop", "square_avg")])
def test_non_finite_optimizer_state_behind_finite_weights_is_caught(optimizer: str, state: str) -> None:
    """A squared-gradient average can overflow while the weights stay finite (the gradient divides by it)."""
    data = xor(rows=64, seed=2)
    model = nn.MLP([2, 4, 2], device="numpy", seed=0)
    opt = nn.get_optimizer(optimizer, model.parameters(), lr=0.01)
    original_step = opt.step

    def poisoned_step() -> None:
        original_step()
        if opt.step_count == 6:  # epoch 2, step 2 of 4
            opt.state[state][0] = np.inf

    opt.step = poisoned_step
    with pytest.raises(nn.NonFiniteStateError, match=rf"^Optimizer state '{state}' became NaN or infinite") as caught:
        nn.fit(model, data.x, data.y, optimizer=opt, epochs=3, batch_size=16, progress=False)
    assert caught.value.epoch == 2 and "checkpoint" not in str(caught.value)  # fit had none: nothing said of one


@OVERFLOW
def test_a_non_finite_loss_with_a_checkpoint_that_was_never_written(tmp_path: Path) -> None:
    data = xor(rows=64, seed=2)
    path = tmp_path / "run.npz"
    model = nn.MLP([2, 4, 2], device="numpy", seed=0)
    with pytest.raises(nn.NonFiniteLossError, match=rf"this run wrote no checkpoint; {str(path)!r} was not created"):
        nn.fit(model, data.x, data.y, optimizer="sgd", lr=1e300, batch_size=16, checkpoint=path, progress=False)
    assert not path.exists() and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("where", ["model", "optimizer"])
@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_save_refuses_non_finite_weights_and_state(tmp_path: Path, where: str, value: float) -> None:
    model, opt = trained()
    path = tmp_path / "run.npz"
    nn.save(path, model, opt, tag="old")
    before = path.read_bytes()
    if where == "model":
        model.layers[1].W[1, 0] = value
        named = "model weight '1.W'"
    else:
        opt.state["exp_avg_sq"][3] = value
        named = "optimizer state 'exp_avg_sq'"
    with pytest.raises(nn.NonFiniteStateError, match=rf"^Refusing to save {str(path)!r}: {named} holds NaN or inf"):
        nn.save(path, model, opt, tag="new")
    assert path.read_bytes() == before and list(tmp_path.iterdir()) == [path]


# ----------------------------------------------------------------------------- what save writes, load rebuilds

OPTIMIZER_OPTIONS = [
    (nn.SGD, {}),
    (nn.SGD, {"momentum": 0.9}),
    (nn.SGD, {"momentum": 0.9, "dampening": 0.5, "weight_decay": 1e-3}),
    (nn.SGD, {"momentum": 0.9, "nesterov": True}),
    (nn.RMSprop, {}),
    (nn.RMSprop, {"centered": True}),
    (nn.RMSprop, {"momentum": 0.5, "alpha": 0.9, "eps": 1e-6}),
    (nn.RMSprop, {"centered": True, "momentum": 0.5, "weight_decay": 1e-2}),
    (nn.Adam, {}),
    (nn.Adam, {"amsgrad": True}),
    (nn.Adam, {"betas": (0.0, 0.5), "eps": 1e-3, "weight_decay": 1e-2}),
]


@pytest.mark.parametrize("lr", [0.0, 0.01])
@pytest.mark.parametrize(("cls", "options"), OPTIMIZER_OPTIONS, ids=lambda v: getattr(v, "__name__", str(v)))
def test_every_optimizer_and_option_round_trips(tmp_path: Path, cls, options, lr: float) -> None:
    data = xor(rows=32, seed=0)
    model = nn.MLP([2, 8, 2], device="numpy", seed=0)
    opt = cls(model.parameters(), lr=lr, **options)
    nn.fit(model, data.x, data.y, optimizer=opt, epochs=1, batch_size=16, progress=False)
    nn.save(tmp_path / "run.npz", model, opt)
    restored = nn.load(tmp_path / "run.npz", device="numpy")
    assert type(restored.optimizer) is cls and restored.optimizer.get_config() == opt.get_config()
    for name, value in opt.state_dict().items():
        np.testing.assert_array_equal(restored.optimizer.state_dict()[name], value)


SCHEDULES = {
    "constant": lambda: schedules.Constant(0.02),
    "step": lambda: schedules.StepDecay(0.02, step_epochs=1, gamma=0.5),
    "step to zero": lambda: schedules.StepDecay(0.02, step_epochs=1, gamma=1e-200),  # 0.02 * 1e-400 == 0.0
    "cosine": lambda: schedules.CosineDecay(0.02, epochs=2),
    "cosine to min_lr": lambda: schedules.CosineDecay(0.02, epochs=2, min_lr=0.001),
    "warm-up": lambda: schedules.LinearWarmup(0.02, epochs=1.5, start_factor=0.2),
    "warm-up + cosine": lambda: schedules.LinearWarmup(schedules.CosineDecay(0.02, epochs=2), epochs=1),
    "callable": lambda: lambda t: 0.01 / (1 + t),
}


@pytest.mark.parametrize("interval", ["step", "epoch"])
@pytest.mark.parametrize("name", list(SCHEDULES))
def test_every_schedule_round_trips_at_the_end_of_every_epoch(tmp_path: Path, name: str, interval: str) -> None:
    """Resume from the checkpoint after each of 3 epochs, past the end of the 2-epoch decays (lr 0)."""
    data = xor(rows=48, seed=0)
    model = nn.MLP([2, 4, 2], device="numpy", seed=0)
    optimizer: nn.Optimizer | str = "adam"
    path = tmp_path / "run.npz"
    rates = []
    for epoch in range(3):
        args = {"schedule": SCHEDULES[name](), "schedule_interval": interval, "batch_size": 16, "progress": False}
        nn.fit(model, data.x, data.y, optimizer=optimizer, checkpoint=path, checkpoint_overwrite=True, **args)
        restored = nn.load(path, device="numpy")
        assert restored.epoch == epoch + 1
        model, optimizer = restored.model, restored.optimizer
        rates.append(optimizer.lr)
    if name in ("step to zero", "cosine", "warm-up + cosine"):
        assert rates[-1] == 0.0


def test_the_extras_fit_and_the_cli_produce_round_trip(tmp_path: Path) -> None:
    from fusednn.cli import build_parser
    from fusednn.nn.data import MinMaxScaler, StandardScaler

    data = xor(rows=48, seed=0)
    model = nn.MLP([2, 4, 2], device="numpy", seed=0)
    history = nn.fit(model, data.x, data.y, epochs=2, batch_size=16, metrics=["accuracy", "f1"], progress=False)
    args = build_parser().parse_args(["train", "--hidden", "16,8", "--data", "xor"])
    extras = {
        "history": history.history,
        "scaler": StandardScaler().fit(data.x).state_dict(),
        "minmax": MinMaxScaler().fit(data.x).state_dict(),
        "no_scaler": None,
        "args": vars(args),
        "nested": {"empty": {}, "tuple": (1, 2.5), "unicode": "é", "big": 2**70, "inf": float("inf")},
    }
    nn.save(tmp_path / "run.npz", model, **extras)
    restored = nn.load(tmp_path / "run.npz", device="numpy").extra
    assert restored == {**extras, "nested": {**extras["nested"], "tuple": [1, 2.5]}}
    assert None in vars(args).values() and restored["args"]["hidden"] == [16, 8]


@pytest.mark.parametrize(
    ("extra", "named"),
    [
        ({"counts": {1: 2}}, r"extra\['counts'\] has the key 1"),  # JSON would silently turn 1 into "1"
        ({"step": np.int64(3)}, r"extra\['step'\] is a numpy.int64"),
        ({"weights": np.zeros(2)}, r"extra\['weights'\] is a numpy.ndarray"),
        ({"tags": {"a", "b"}}, r"extra\['tags'\] is a builtins.set"),
        ({"deep": [{"x": [1, object()]}]}, r"extra\['deep'\]\[0\]\['x'\]\[1\] is a builtins.object"),
    ],
)
def test_save_refuses_extras_that_load_would_not_give_back(tmp_path: Path, extra, named: str) -> None:
    model, _ = trained()
    with pytest.raises(TypeError, match=rf"^{named}.*JSON-serialisable"):
        nn.save(tmp_path / "run.npz", model, **extra)
    cyclic: list = []
    cyclic.append(cyclic)
    with pytest.raises(TypeError, match="contains itself"):
        nn.save(tmp_path / "run.npz", model, loop=cyclic)
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------- fit's checkpoint destination, up front


def fit_into(path, **kwargs):
    data = xor(rows=32, seed=0)
    model = nn.MLP([2, 4, 2], device="numpy", seed=0)
    before = model.get_weights()
    try:
        nn.fit(model, data.x, data.y, epochs=2, batch_size=16, checkpoint=path, progress=False, **kwargs)
    finally:
        untouched = model.epochs_trained == 0 and all(
            np.array_equal(a, b) for a, b in zip(model.get_weights(), before, strict=True)
        )
    return untouched


def test_fit_checks_the_destination_before_training(tmp_path: Path) -> None:
    cases = [
        (tmp_path / "missing" / "run.npz", FileNotFoundError, r"its directory '.*missing' does not exist"),
        (tmp_path, IsADirectoryError, "is a directory; pass the path of a file"),
    ]
    (tmp_path / "file").write_text("x")
    cases.append((tmp_path / "file" / "run.npz", NotADirectoryError, r"'.*file' is not a directory"))
    for path, error, message in cases:
        with pytest.raises(error, match=rf"{str(path)!r}.*{message}|{message}") as caught:
            fit_into(path)
        assert caught.value.errno is not None and str(path) in str(caught.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]  # no temporary left behind either


def test_fit_refuses_to_overwrite_unless_told(tmp_path: Path) -> None:
    path = tmp_path / "run.npz"
    path.write_bytes(b"someone's work")
    with pytest.raises(FileExistsError, match=rf"{str(path)!r} already exists; pass checkpoint_overwrite=True"):
        fit_into(path)
    assert path.read_bytes() == b"someone's work"
    fit_into(path, checkpoint_overwrite=True)
    assert nn.load(path, device="numpy").epoch == 2
    with pytest.raises(TypeError, match="checkpoint_overwrite must be True or False"):
        fit_into(tmp_path / "other.npz", checkpoint_overwrite="yes")


@pytest.mark.parametrize(
    ("extra", "error", "named"),
    [
        ({"history": [0.5, 0.4]}, TypeError, r"checkpoint_extra\['history'\] must map names to lists of numbers"),
        ({"history": {"loss": 0.5}}, TypeError, r"checkpoint_extra\['history'\] must map names to lists of numbers"),
        ({"history": {"loss": ["a"]}}, TypeError, r"checkpoint_extra\['history'\]\['loss'\]\[0\] is 'a'"),
        ({"scaler": np.ones(2)}, TypeError, r"checkpoint_extra\['scaler'\] is a numpy.ndarray"),
        ([("a", 1)], TypeError, "checkpoint_extra must be a dict"),
    ],
)
def test_fit_checks_checkpoint_extra_before_training(tmp_path: Path, extra, error, named: str) -> None:
    with pytest.raises(error, match=named):
        fit_into(tmp_path / "run.npz", checkpoint_extra=extra)
    assert list(tmp_path.iterdir()) == []


def test_checkpoint_extra_without_a_checkpoint_is_an_error() -> None:
    data = xor(rows=32, seed=0)
    model = nn.MLP([2, 4, 2], device="numpy", seed=0)
    with pytest.raises(ValueError, match="checkpoint_extra is saved with a checkpoint"):
        nn.fit(model, data.x, data.y, checkpoint_extra={"run": 1}, progress=False)


def test_extras_may_use_any_key(tmp_path: Path) -> None:
    """``save``'s own parameter names are just keys to fit's checkpoint_extra."""
    path = tmp_path / "run.npz"
    fit_into(path, checkpoint_extra={"model": "mlp", "path": "x", "optimizer": "adam"})
    assert {"model", "path", "optimizer"} <= set(nn.load(path, device="numpy").extra)


def test_a_failed_write_mid_run_says_which_epoch_is_on_disk(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "run.npz"
    real_savez = np.savez
    calls = []

    def savez_that_fills_the_disk(file, **arrays):
        calls.append(1)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_savez(file, **arrays)

    monkeypatch.setattr(checkpoint_module.np, "savez", savez_that_fills_the_disk)
    with pytest.raises(OSError, match=rf"^\[Errno 28\] Cannot write {str(path)!r}: No space left on device; "
                       rf"{str(path)!r} still holds epoch 1, the last this run saved$") as caught:  # fmt: skip
        fit_into(path)
    assert caught.value.errno == errno.ENOSPC
    assert list(tmp_path.iterdir()) == [path] and nn.load(path, device="numpy").epoch == 1


# ----------------------------------------------------------------------------- load names what it was given


def test_load_says_what_a_file_is_when_it_is_not_a_checkpoint(tmp_path: Path) -> None:
    np.save(tmp_path / "weights.npy", np.zeros(3))
    with pytest.raises(ValueError, match=r"weights.npy' is a .npy array file, not a fusednn checkpoint"):
        nn.load(tmp_path / "weights.npy")
    with pytest.raises(IsADirectoryError, match=rf"{str(tmp_path)!r} is a directory, not a fusednn checkpoint"):
        nn.load(tmp_path)
    (tmp_path / "empty.npz").write_bytes(b"")
    with pytest.raises(ValueError, match=r"empty.npz' is not a fusednn checkpoint \(an empty file\)"):
        nn.load(tmp_path / "empty.npz")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ValueError, match=r"notes.txt' is not a fusednn checkpoint \(not an .npz archive\)"):
        nn.load(tmp_path / "notes.txt")


@pytest.mark.parametrize(
    "change", [{"extra": [1, 2]}, {"epoch": "two"}, {"step": None}, {"optimizer": {"name": "Adam", "lr": -1}}]
)
def test_load_of_a_malformed_header_names_the_file(tmp_path: Path, change) -> None:
    model, opt = trained()
    nn.save(tmp_path / "good.npz", model, opt)
    bad = rewrite(tmp_path / "good.npz", tmp_path / "bad.npz", header_change(**change))
    with pytest.raises(ValueError, match=r"bad.npz' holds a checkpoint this fusednn cannot rebuild"):
        nn.load(bad)
