"""How ``fit`` chooses between compiled epochs and the per-step loop: ``epoch_path``, background compiles, fallbacks.

The session fixture in ``conftest.py`` has compiled the cpu epoch kernel, so ``"auto"`` finds
it ready here; a kernel still compiling is simulated by a trainer that is not ready yet, and
the real cold start runs in a subprocess with an empty Numba cache.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numba
import numpy as np
import pytest

from fusednn import nn
from fusednn.backends import cpu_epoch
from fusednn.backends.background_compile import Specialisation

RNG = np.random.default_rng(3)
X = RNG.standard_normal((40, 3))
Y = RNG.integers(0, 2, 40)
FLOAT64_RUN = {"rtol": 1e-9, "atol": 1e-11}
REPO = Path(__file__).resolve().parents[1]


def _fit(device: str = "cpu", epochs: int = 4, **kwargs):
    model = nn.MLP([3, 5, 2], activation="tanh", device=device, dtype="float64", seed=0)
    history = nn.fit(model, X, Y, lr=0.05, epochs=epochs, batch_size=8, metrics=["accuracy"], progress=False, **kwargs)
    return model, history


def _assert_same_weights(model: nn.Sequential, reference: nn.Sequential) -> None:
    for ours, theirs in zip(model.get_weights(), reference.get_weights(), strict=True):
        np.testing.assert_allclose(ours, theirs, **FLOAT64_RUN)


@pytest.mark.parametrize(
    ("epoch_path", "expected"), [("auto", "compiled"), ("compiled", "compiled"), ("per-step", "per-step")]
)
def test_epoch_path_picks_the_path(epoch_path: str, expected: str) -> None:
    model, history = _fit(epoch_path=epoch_path)
    reference, _ = _fit("numpy")
    assert history.params["epoch_path"] == expected
    assert history.params["compiled_epochs"] == (4 if expected == "compiled" else 0)
    _assert_same_weights(model, reference)


def test_compiled_epochs_are_asked_for_where_there_are_none() -> None:
    with pytest.raises(ValueError, match="'numpy' backend compiles no epochs"):
        _fit("numpy", epoch_path="compiled")
    model = nn.Sequential([type("MyDense", (nn.Dense,), {})(3, 2)], device="cpu")
    with pytest.raises(ValueError, match="this training has no compiled form"):
        nn.fit(model, X, Y, epoch_path="compiled", progress=False)
    with pytest.raises(ValueError, match=r"epoch_path must be one of \('auto', 'compiled', 'per-step'\), got 'jit'"):
        _fit(epoch_path="jit")


class _Compiling:
    """Patches the cpu trainer so that its kernel is 'still compiling' for the first ``epochs`` epochs."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, epochs: int) -> None:
        self.not_ready = epochs
        self.compile_calls: list[tuple[bool, int]] = []  # (wait, the optimizer's steps so far)
        self.optimizer: nn.Optimizer | None = None
        monkeypatch.setattr(cpu_epoch.CompiledEpoch, "ready", lambda trainer: self._ready())
        monkeypatch.setattr(cpu_epoch.CompiledEpoch, "compile", lambda trainer, wait: self._compile(wait))

    def _ready(self) -> bool:
        self.not_ready -= 1
        return self.not_ready < 0

    def _compile(self, wait: bool) -> None:
        assert self.optimizer is not None
        self.compile_calls.append((wait, self.optimizer.step_count))


def test_auto_trains_per_step_until_the_kernel_is_ready(monkeypatch: pytest.MonkeyPatch) -> None:
    compiling = _Compiling(monkeypatch, epochs=2)
    model = nn.MLP([3, 5, 2], activation="tanh", device="cpu", dtype="float64", seed=0)
    compiling.optimizer = optimizer = nn.Adam(model.parameters(), lr=0.05)
    history = nn.fit(model, X, Y, optimizer=optimizer, epochs=4, batch_size=8, metrics=["accuracy"], progress=False)
    assert history.params["epoch_path"] == "per-step, then compiled"
    assert history.params["compiled_epochs"] == 2
    # Started in the background after each per-step epoch's first step, once its kernels had compiled.
    assert compiling.compile_calls == [(False, 1), (False, 6)]
    reference, ref_history = _fit("numpy")
    _assert_same_weights(model, reference)
    np.testing.assert_allclose(history.history["loss"], ref_history.history["loss"], **FLOAT64_RUN)
    assert history.history["accuracy"] == ref_history.history["accuracy"]


def test_a_failed_background_compile_leaves_training_per_step(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(trainer: cpu_epoch.CompiledEpoch) -> bool:
        raise RuntimeError("LLVM ran out of memory")

    monkeypatch.setattr(cpu_epoch.CompiledEpoch, "ready", broken)
    with pytest.warns(
        RuntimeWarning,
        match=r"the 'compiled' epoch path failed to compile \(RuntimeError: LLVM ran out of memory\); fit trains per",
    ):
        model, history = _fit()
    assert (history.params["epoch_path"], history.params["compiled_epochs"]) == ("per-step", 0)
    _assert_same_weights(model, _fit("numpy")[0])


def test_a_specialisation_compiles_in_the_background_once() -> None:
    @numba.njit
    def double(a):
        return 2 * a

    spec = Specialisation(double, (np.zeros(3),))
    assert not spec.ready()
    spec.compile(wait=False)
    spec.compile(wait=False)  # a second caller does not start a second compile
    spec.compile(wait=True)  # joins the background one
    assert spec.ready()
    assert double.signatures == [(numba.float64[::1],)]
    assert not Specialisation(double, (np.zeros(3, dtype=np.float32),)).ready()  # another signature


def test_a_failed_background_compile_is_raised_where_it_is_awaited() -> None:
    @numba.njit
    def broken(a):
        return a.no_such_attribute

    spec = Specialisation(broken, (np.zeros(3),))
    spec.compile(wait=False)
    with pytest.raises(numba.core.errors.TypingError, match="no_such_attribute"):
        spec.compile(wait=True)
    with pytest.raises(numba.core.errors.TypingError):
        spec.ready()


COLD_START = textwrap.dedent(
    """
    import json, sys, time
    import numpy as np
    from fusednn import nn

    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((64, 3)), rng.integers(0, 2, 64)
    model = nn.MLP([3, 4, 2], device="cpu", dtype="float32", seed=0)
    opt = nn.Adam(model.parameters(), lr=0.01)
    paths, deadline = [], time.monotonic() + float(sys.argv[1])
    while not paths or (paths[-1] != "compiled" and time.monotonic() < deadline):
        history = nn.fit(model, x, y, optimizer=opt, batch_size=8, progress=False)
        paths.append(history.params["epoch_path"])
    print(json.dumps(paths))
    """
)


@pytest.mark.slow
def test_a_cold_start_trains_at_once_and_caches_the_kernel_for_the_next_run(tmp_path: Path) -> None:
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path), "PYTHONPATH": str(REPO)}

    def run(seconds: float) -> list[str]:
        done = subprocess.run(
            [sys.executable, "-c", COLD_START, str(seconds)], env=env, capture_output=True, text=True, timeout=300
        )
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    # An empty cache: the first epochs step from Python while the kernel compiles, then it takes over.
    paths = run(240)
    assert paths[0] == "per-step" and paths[-1] == "compiled", paths
    # A process that ends while the kernel compiles waits for it at exit, so the next run finds it cached.
    removed = [entry for entry in tmp_path.rglob("*train_epoch*")]
    assert removed
    for entry in removed:
        entry.unlink()
    assert run(0) == ["per-step"]
    assert run(0) == ["compiled"]
