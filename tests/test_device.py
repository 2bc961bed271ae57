"""Device strings, the registry and CUDA availability: no hardware needed (CUDA is simulated)."""

from __future__ import annotations

import subprocess
import sys
import types

import numpy as np
import pytest
from conftest import HAS_GPU

import fusednn
from fusednn import backends
from fusednn.backends import cuda_runtime, registry
from fusednn.backends.device import Device, default_device_string, parse_device


@pytest.mark.parametrize(
    ("spec", "kind", "index", "canonical"),
    [
        ("cpu", "cpu", None, "cpu"),
        ("numpy", "numpy", None, "numpy"),
        ("cuda", "cuda", 0, "cuda:0"),
        ("cuda:0", "cuda", 0, "cuda:0"),
        ("cuda:12", "cuda", 12, "cuda:12"),
        ("  CUDA:1 ", "cuda", 1, "cuda:1"),
        ("CPU", "cpu", None, "cpu"),
    ],
)
def test_parse_device_canonicalises_and_round_trips(spec: str, kind: str, index: int | None, canonical: str) -> None:
    device = parse_device(spec)
    assert (device.kind, device.index) == (kind, index)
    assert str(device) == canonical
    assert parse_device(str(device)) == device
    assert parse_device(device) is device


@pytest.mark.parametrize(
    "spec", ["gpu", "cuda:-1", "cuda:x", "cuda:", "cuda:1.0", "cpu:0", "numpy:0", "", "tpu", "auto"]
)
def test_parse_device_rejects_bad_strings_listing_valid_ones(spec: str) -> None:
    with pytest.raises(ValueError, match=r"Unknown device .*expected one of 'numpy', 'cpu', 'cuda', 'cuda:N'"):
        parse_device(spec)


@pytest.mark.parametrize("spec", [0, None, 1.5, ["cpu"]])
def test_parse_device_rejects_non_strings(spec: object) -> None:
    with pytest.raises(TypeError, match="A device must be a string"):
        parse_device(spec)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kind", "index", "message"),
    [
        ("tpu", None, "Unknown device kind"),
        ("cuda", None, "needs an index"),
        ("cuda", -1, "needs an index"),
        ("cpu", 0, "takes no index"),
    ],
)
def test_device_constructor_validates(kind: str, index: int | None, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Device(kind, index)


@pytest.fixture
def no_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """Pretend no GPU is usable and start from an empty backend cache."""
    monkeypatch.setattr(cuda_runtime, "device_count", lambda: 0)
    monkeypatch.setattr(registry, "_cache", {})


def _fake_cupy(count: int | Exception) -> types.ModuleType:
    """A stand-in for CuPy whose runtime reports ``count`` GPUs (or raises it)."""

    def get_device_count() -> int:
        if isinstance(count, Exception):
            raise count
        return count

    cupy = types.ModuleType("cupy")
    cupy.cuda = types.SimpleNamespace(runtime=types.SimpleNamespace(getDeviceCount=get_device_count))
    return cupy


def test_backends_are_cached_per_canonical_device(no_gpu: None) -> None:
    cpu = fusednn.backend("cpu")
    assert fusednn.backend("cpu") is cpu
    assert fusednn.backend(" CPU ") is cpu
    assert fusednn.backend(Device("cpu")) is cpu
    assert fusednn.backend(cpu) is cpu
    assert fusednn.backend("numpy") is not cpu
    assert (cpu.kind, cpu.name, fusednn.backend("numpy").name) == ("cpu", "cpu", "numpy")


def test_default_device_is_cpu_or_the_environment_variable(no_gpu: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FUSEDNN_DEVICE", raising=False)
    assert default_device_string() == "cpu"
    assert fusednn.backend().name == "cpu"
    monkeypatch.setenv("FUSEDNN_DEVICE", "numpy")
    assert fusednn.backend().name == "numpy"
    monkeypatch.setenv("FUSEDNN_DEVICE", "  ")
    assert fusednn.backend().name == "cpu"
    monkeypatch.setenv("FUSEDNN_DEVICE", "gpu")
    with pytest.raises(ValueError, match="Unknown device 'gpu'"):
        fusednn.backend()


def test_auto_falls_back_to_cpu_without_a_gpu(no_gpu: None, monkeypatch: pytest.MonkeyPatch) -> None:
    assert fusednn.backend("auto").name == "cpu"
    monkeypatch.setenv("FUSEDNN_DEVICE", "auto")
    assert fusednn.backend() is fusednn.backend("cpu")


def test_available_devices_lists_host_devices_then_each_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cuda_runtime, "device_count", lambda: 0)
    assert fusednn.available_devices() == ["numpy", "cpu"]
    monkeypatch.setattr(cuda_runtime, "device_count", lambda: 2)
    assert fusednn.available_devices() == ["numpy", "cpu", "cuda:0", "cuda:1"]


def test_device_count_is_zero_when_cupy_is_missing_or_broken(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "cupy", None)  # makes `import cupy` raise ImportError
    assert cuda_runtime.device_count() == 0
    monkeypatch.setitem(sys.modules, "cupy", _fake_cupy(RuntimeError("driver too old")))
    assert cuda_runtime.device_count() == 0


@pytest.mark.parametrize("spec", ["cuda", "cuda:0", "cuda:3"])
def test_cuda_without_cupy_names_the_extra_to_install(monkeypatch: pytest.MonkeyPatch, spec: str) -> None:
    monkeypatch.setattr(registry, "_cache", {})
    monkeypatch.setitem(sys.modules, "cupy", None)
    with pytest.raises(RuntimeError, match=r"needs CuPy, which is not installed: .*pip install fusednn\[cuda13\]"):
        fusednn.backend(spec)


@pytest.mark.parametrize(
    ("count", "spec", "message"),
    [
        (0, "cuda", r"No CUDA GPU is visible \(check CUDA_VISIBLE_DEVICES and the driver\), or use device='cpu'"),
        (RuntimeError("cudaErrorNoDevice"), "cuda:0", r"No usable CUDA GPU: .*cudaErrorNoDevice.*device='cpu'"),
        (1, "cuda:1", r"cuda:1 was asked for but only 1 GPU\(s\) are visible \(cuda:0..cuda:0\)"),
    ],
)
def test_cuda_without_a_usable_gpu_says_why(
    monkeypatch: pytest.MonkeyPatch, count: int | Exception, spec: str, message: str
) -> None:
    monkeypatch.setattr(registry, "_cache", {})
    monkeypatch.setitem(sys.modules, "cupy", _fake_cupy(count))
    with pytest.raises(RuntimeError, match=message):
        fusednn.backend(spec)
    assert registry._cache == {}  # nothing half-built was cached


def test_import_loads_neither_numba_nor_cupy() -> None:
    code = "import sys, fusednn; print(sorted(m for m in ('numba', 'cupy') if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_backend_of_gives_host_arrays_the_default_device(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FUSEDNN_DEVICE", "numpy")
    assert backends.backend_of(np.zeros(3)) is fusednn.backend("numpy")
    assert backends.backend_of([1.0, 2.0], default="cpu") is fusednn.backend("cpu")


@pytest.mark.skipif(HAS_GPU, reason="checks the error raised without a usable GPU")
def test_backend_of_a_gpu_array_asks_for_its_gpu() -> None:
    class FakeGpuArray:
        __cuda_array_interface__ = {"shape": (1,), "typestr": "<f4", "data": (0, False), "version": 3}
        device = type("Dev", (), {"id": 1})()

    with pytest.raises(RuntimeError, match="cuda"):
        backends.backend_of(FakeGpuArray())
    with pytest.raises(RuntimeError, match="cuda"):
        backends.to_host(FakeGpuArray())


def test_to_host_copies_lists_and_numpy_arrays() -> None:
    host = backends.to_host([[1.0, 2.0]])
    assert isinstance(host, np.ndarray) and host.shape == (1, 2)
    a = np.arange(3.0)
    assert backends.to_host(a) is a


def test_is_host_array_tells_numpy_memory_from_cuda_arrays() -> None:
    class NumpyBackedGpuView(np.ndarray):  # like the simulated GPU arrays of tests/cuda_shim
        __cuda_array_interface__ = {"shape": (1,), "typestr": "<f4", "data": (0, False), "version": 3}

    assert backends.is_host_array(np.zeros(3))
    assert not backends.is_host_array([1.0, 2.0])
    assert not backends.is_host_array(np.zeros(3).view(NumpyBackedGpuView))


# ------------------------------------------------------- the registry's table


class _TpuArray:
    """An array of a made-up device kind: its runtime knows it by this class and its ``board``."""

    def __init__(self, board: int) -> None:
        self.board = board
        self.values = np.arange(3.0)


class _TpuBackend(backends.Backend):
    kind = "tpu"

    def __init__(self, device: Device) -> None:
        super().__init__(device, np, np.tanh)

    def to_numpy(self, x: object) -> np.ndarray:
        return x.values.copy() if isinstance(x, _TpuArray) else np.asarray(x)


def _tpu_runtime() -> types.ModuleType:
    runtime = types.ModuleType("tests_tpu_runtime")

    def require_device(index: int) -> None:
        if index >= 2:
            raise RuntimeError(f"tpu:{index} was asked for but only 2 boards are visible")

    runtime.device_count = lambda: 2  # type: ignore[attr-defined]
    runtime.require_device = require_device  # type: ignore[attr-defined]
    runtime.array_device_index = lambda x: x.board if isinstance(x, _TpuArray) else None  # type: ignore[attr-defined]
    return runtime


@pytest.fixture
def tpu_kind(monkeypatch: pytest.MonkeyPatch) -> None:
    """Register a device kind ``tpu`` the way fusednn registers its own: one entry in ``DEVICE_KINDS``."""
    from fusednn.backends import device

    kind = device.DeviceKind("tpu", "tests_tpu_backend:Backend", runtime="tests_tpu_runtime")
    backend_module = types.ModuleType("tests_tpu_backend")
    backend_module.Backend = _TpuBackend  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "tests_tpu_backend", backend_module)
    monkeypatch.setitem(sys.modules, "tests_tpu_runtime", _tpu_runtime())
    monkeypatch.setitem(device.DEVICE_KINDS, "tpu", kind)
    # The derived views of the table, as importing fusednn computes them.
    indexed = (*device.INDEXED_KINDS, kind)
    monkeypatch.setattr(device, "INDEXED_KINDS", indexed)
    monkeypatch.setattr(registry, "INDEXED_KINDS", indexed)
    monkeypatch.setattr(registry, "_cache", dict(registry._cache))
    device._parse_device_string.cache_clear()
    yield
    device._parse_device_string.cache_clear()


@pytest.mark.usefixtures("tpu_kind")
def test_a_kind_registered_in_the_table_is_parsed_listed_and_owns_its_arrays() -> None:
    assert str(parse_device(" TPU ")) == "tpu:0" and parse_device("tpu:1") == Device("tpu", 1)
    with pytest.raises(ValueError, match="needs an index"):
        Device("tpu")
    assert fusednn.available_devices()[-2:] == ["tpu:0", "tpu:1"]
    be = backends.backend_of(_TpuArray(1))
    assert isinstance(be, _TpuBackend) and be is fusednn.backend("tpu:1")
    assert backends.to_host(_TpuArray(0)).tolist() == [0.0, 1.0, 2.0]
    assert not backends.is_host_array(_TpuArray(0))
    with pytest.raises(RuntimeError, match="only 2 boards"):
        fusednn.backend("tpu:2")
    # The host backends refuse the new kind's arrays by name, with no code of their own for it.
    with pytest.raises(ValueError, match="on tpu:1 but this backend is numpy"):
        fusednn.backend("numpy").asarray(_TpuArray(1))
    with pytest.raises(ValueError, match="x is on tpu:0 but this backend is cpu"):
        fusednn.backend("cpu").check(_TpuArray(0), "x")


def test_only_the_cuda_runtime_and_backend_know_cudas_array_protocol() -> None:
    from pathlib import Path

    package = Path(fusednn.__file__).parent
    knowing = sorted(
        str(path.relative_to(package))
        for path in package.rglob("*.py")
        if "__cuda_array_interface__" in path.read_text(encoding="utf-8")
    )
    assert knowing == ["backends/cuda_backend.py", "backends/cuda_runtime.py"]
