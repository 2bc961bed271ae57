"""Which backends exist, which are usable here, and one cached instance per device.

Backend modules are imported lazily, so ``import fusednn`` never imports Numba
or CuPy and never touches a GPU.
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Callable

from .base import Backend
from .device import Device, default_device_string, parse_device

# kind -> (module, class); imported on first use.
_BACKEND_CLASSES: dict[str, tuple[str, str]] = {
    "numpy": ("fusednn.backends.numpy_backend", "NumpyBackend"),
    "cpu": ("fusednn.backends.numba_backend", "NumbaBackend"),
    "cuda": ("fusednn.backends.cuda_backend", "CudaBackend"),
}

_cache: dict[Device, Backend] = {}
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
    spec = default_device_string() if device is None else device
    if isinstance(spec, str) and spec.strip().lower() == "auto":
        spec = "cuda:0" if cuda_device_count() > 0 else "cpu"
    parsed = parse_device(spec)
    cached = _cache.get(parsed)
    if cached is not None:
        return cached
    with _lock:
        if parsed not in _cache:
            if parsed.kind == "cuda":
                # Say why CUDA is unusable (CuPy missing, no GPU, index out of range) before
                # importing the backend module, so the user never sees a raw import traceback.
                from . import cuda_runtime

                cuda_runtime.require_device(parsed.index)
            _cache[parsed] = _backend_class(parsed.kind)(parsed)
        return _cache[parsed]


def available_devices() -> list[str]:
    """Canonical strings of every device usable here, e.g. ``["numpy", "cpu", "cuda:0"]``."""
    devices = ["numpy", "cpu"]
    devices.extend(f"cuda:{index}" for index in range(cuda_device_count()))
    return devices
