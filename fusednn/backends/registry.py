"""Which backends exist, which are usable here, and one cached instance per device.

Backend modules are imported lazily, so ``import fusednn`` never imports Numba
or CuPy and never touches a GPU.
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Callable

import numpy as np

from .base import Backend
from .device import Device, default_device_string, parse_device

# kind -> (module, class); imported on first use.
_BACKEND_CLASSES: dict[str, tuple[str, str]] = {
    "numpy": ("fusednn.backends.numpy_backend", "NumpyBackend"),
    "cpu": ("fusednn.backends.numba_backend", "NumbaBackend"),
    "cuda": ("fusednn.backends.cuda_backend", "CudaBackend"),
}

_cache: dict[Device, Backend] = {}
_parsed: dict[str, Device] = {}
"""Each device string seen, parsed: a loss resolves its device on every call, and parsing costs 0.4 µs."""
_lock = threading.Lock()


def _backend_class(kind: str) -> Callable[[Device], Backend]:
    module_name, class_name = _BACKEND_CLASSES[kind]
    return getattr(importlib.import_module(module_name), class_name)


def cuda_device_count() -> int:
    """Number of usable CUDA GPUs; 0 when CuPy is missing or no GPU is visible."""
    from . import cuda_runtime

    return cuda_runtime.device_count()


def backend(device: str | Device | None = None) -> Backend:
    """Return the backend for ``device``, creating it on first use and caching it.

    ``device`` is ``"numpy"``, ``"cpu"`` (the default, or ``$FUSEDNN_DEVICE``),
    ``"cuda"``/``"cuda:N"`` or ``"auto"`` (the first usable GPU, else ``"cpu"``).

    >>> import fusednn
    >>> fusednn.backend("numpy").name
    'numpy'

    Raises:
        ValueError: the device string is not valid; the message lists the valid forms.
        RuntimeError: a CUDA device was asked for but cannot be used; the message says why.
    """
    if isinstance(device, Backend):
        return device
    parsed = _parsed.get(device) if isinstance(device, str) else None
    if parsed is None:
        spec = default_device_string() if device is None else device
        auto = isinstance(spec, str) and spec.strip().lower() == "auto"
        if auto:  # not remembered: which device "auto" means is asked each time
            spec = "cuda:0" if cuda_device_count() > 0 else "cpu"
        parsed = parse_device(spec)
        if isinstance(device, str) and not auto:
            _parsed[device] = parsed
    cached = _cache.get(parsed)
    if cached is not None:
        return cached
    with _lock:
        if parsed not in _cache:
            if parsed.kind == "cuda":
                # Say why CUDA is unusable (CuPy missing, no GPU, index out of range) before
                # importing the backend module, so the user never sees a raw import traceback.
                from . import cuda_runtime

                assert parsed.index is not None  # Device rejects a cuda device without an index
                cuda_runtime.require_device(parsed.index)
            _cache[parsed] = _backend_class(parsed.kind)(parsed)
        return _cache[parsed]


def available_devices() -> list[str]:
    """Canonical strings of every device usable here, e.g. ``["numpy", "cpu", "cuda:0"]``."""
    devices = ["numpy", "cpu"]
    devices.extend(f"cuda:{index}" for index in range(cuda_device_count()))
    return devices


def is_host_array(x: object) -> bool:
    """Whether ``x`` is a NumPy array in host memory (not a CUDA array, which may also look array-like)."""
    if type(x) is np.ndarray:  # the common case, and no CUDA array is exactly an ndarray
        return True
    return isinstance(x, np.ndarray) and _cuda_index(x) is None


def _cuda_index(x: object) -> int | None:
    """The GPU index of a CUDA array (CuPy or any ``__cuda_array_interface__`` array with a device id), else None."""
    if not hasattr(x, "__cuda_array_interface__"):
        return None
    index = getattr(getattr(x, "device", None), "id", None)
    return int(index) if index is not None else 0


def backend_of(x: object, default: str | Device | None = None) -> Backend:
    """The backend whose device holds ``x``: ``cuda:N`` for a GPU array, else ``backend(default)``.

    Host arrays (NumPy, lists) live on no particular host backend, so they get the default device.
    """
    index = _cuda_index(x)
    return backend(default) if index is None else backend(Device("cuda", index))


def to_host(x: object) -> np.ndarray:
    """Copy any array fusednn handles (NumPy, CuPy, lists) into a NumPy array on the host."""
    index = _cuda_index(x)
    return np.asarray(x) if index is None else backend(Device("cuda", index)).to_numpy(x)
