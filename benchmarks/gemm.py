"""Measure matrix-multiply throughput: the GEMM bound the runner divides each step's FLOPs by.

On the CPU this is NumPy's BLAS (the library every CPU peer ends up calling); on
CUDA it is ``cupy.matmul`` (cuBLAS). Each shape is timed in blocks after a
warm-up call, synchronising the device before the clock is read.

>>> rate = gemm_flops_per_s(np, lambda: None, (64, 64, 64), np.float32, min_time_s=0.01)
>>> rate > 0
True
"""

from __future__ import annotations

import time
from collections.abc import Callable
from types import ModuleType
from typing import Any

import numpy as np

BIG_SQUARE = {"cpu": 2048, "cuda": 8192}
"""Edge of the big square GEMM measured on each device kind, alongside the configurations' own shapes."""


def gemm_flops_per_s(
    xp: ModuleType,
    sync: Callable[[], None],
    shape: tuple[int, int, int],
    dtype: Any,
    min_time_s: float = 0.2,
    repeats: int = 3,
) -> float:
    """Best throughput in FLOP/s of ``(m, k) @ (k, n)`` (``2 m k n`` FLOPs) over ``repeats`` timed blocks.

    Each block runs enough products to last about ``min_time_s``.
    """
    m, k, n = shape
    rng = np.random.default_rng(0)
    a = xp.asarray(rng.standard_normal((m, k)).astype(dtype))
    b = xp.asarray(rng.standard_normal((k, n)).astype(dtype))
    out = xp.empty((m, n), dtype=dtype)
    xp.matmul(a, b, out=out)  # warm-up: first-call costs (handles, kernel selection) stay out of the figure
    sync()
    start = time.perf_counter()
    xp.matmul(a, b, out=out)
    sync()
    count = max(1, int(min_time_s / max(time.perf_counter() - start, 1e-9)))
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(count):
            xp.matmul(a, b, out=out)
        sync()
        best = min(best, (time.perf_counter() - start) / count)
    return 2.0 * m * k * n / best


def measure_gemm(device: str, shapes: list[tuple[int, int, int]], min_time_s: float = 0.2) -> dict[str, Any]:
    """Throughput of each shape and of a big square on ``device`` (``"cpu"`` or ``"cuda"``), float32.

    Returns ``{"device_name", "best_flops_per_s", "best_shape", "shapes": [{"shape", "flops_per_s"}, ...]}``.
    """
    if device == "cuda":
        from fusednn.backends.cuda_runtime import require_device

        xp = require_device(0)
        sync = xp.cuda.get_current_stream().synchronize
        name = xp.cuda.runtime.getDeviceProperties(0)["name"]
        device_name = name.decode() if isinstance(name, bytes) else str(name)
    else:
        xp, sync, device_name = np, (lambda: None), "CPU (NumPy's BLAS)"
    edge = BIG_SQUARE[device]
    measured = [
        {
            "shape": list(shape),
            "flops_per_s": gemm_flops_per_s(xp, sync, shape, np.float32, min_time_s),
        }
        for shape in dict.fromkeys([*shapes, (edge, edge, edge)])
    ]
    best = max(measured, key=lambda row: row["flops_per_s"])
    return {
        "device_name": device_name,
        "best_flops_per_s": best["flops_per_s"],
        "best_shape": best["shape"],
        "shapes": measured,
    }
