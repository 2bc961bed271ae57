"""The shipped CUDA C under AddressSanitizer and UBSan, on the CPU.

A kernel that reads or writes one element past an array still returns the
right numbers most of the time, on the GPU as in the shim tests. Built with
``-fsanitize=address,undefined`` the shim library stops at the first such
access, so the shim kernel tests and the simulated ``CudaBackend`` tests (which
launch the kernels with the backend's own shapes and arguments, captured steps included) are run again
in a child process that preloads the sanitizer runtime. A planted off-by-one
proves the check can fail.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from cuda_shim.build import SANITIZE_ENV, asan_runtime, build_shim_library, wrapper_name

from fusednn.kernels.activation_codes import ACTIVATION_CODES
from fusednn.kernels.cuda.sources import source_text

TESTS = Path(__file__).resolve().parent
ASAN = asan_runtime()

pytestmark = pytest.mark.skipif(ASAN is None, reason="needs g++ with its AddressSanitizer runtime (libasan)")


def sanitized_env() -> dict[str, str]:
    """The environment of a child process that can load a sanitized shim library."""
    return {
        **os.environ,
        "LD_PRELOAD": str(ASAN),
        # CPython's own allocations look like leaks to LeakSanitizer; a kernel bug shows as an access error.
        "ASAN_OPTIONS": "detect_leaks=0:halt_on_error=1",
        "UBSAN_OPTIONS": "print_stacktrace=1:halt_on_error=1",
        # The child needs no GPU, and the CUDA driver does not start under ASan's default shadow-gap guard.
        "CUDA_VISIBLE_DEVICES": "",
        SANITIZE_ENV: "1",
    }


def test_shim_and_simulated_backend_tests_pass_under_the_sanitizers() -> None:
    modules = [
        "test_cuda_cpu_shim.py",
        "test_cuda_simulated_backend.py",
        "test_cuda_simulated_training.py",
        "test_cuda_graph_training.py",
        "test_layers.py",  # dropout and batch norm through the shim and the simulated backend
    ]
    result = subprocess.run(
        # -m "not gpu": the graph tests' real-GPU twins would only skip in the child, which needs no GPU.
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "addopts=", "-m", "not gpu", *modules],
        cwd=TESTS,
        env=sanitized_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-6000:]
    assert "ERROR: AddressSanitizer" not in output and "runtime error:" not in output, output[-6000:]
    assert " passed" in result.stdout and " skipped" not in result.stdout.splitlines()[-1], result.stdout[-2000:]


def test_a_planted_off_by_one_is_caught(tmp_path: Path) -> None:
    loop = "i < n; i += stride) {\n        h[i] = activation_value(act, z[i]);"
    text = source_text("activations.cu")
    assert loop in text, "the planted bug no longer matches activation_forward's loop"
    planted = text.replace(loop, "i <=" + loop[3:])
    library = build_shim_library(tmp_path, sanitize=True, texts={"activations.cu": planted})
    # 1000 float32 elements: one grid-stride step past the end reads z[1000], just beyond the allocation.
    program = f"""
import ctypes
import numpy as np
library = ctypes.CDLL({str(library)!r})
z = np.ones(1000, np.float32)
h = np.empty_like(z)
getattr(library, {wrapper_name("activation_forward", "float")!r})(
    ctypes.c_int(4), ctypes.c_int(256), ctypes.c_void_p(z.ctypes.data), ctypes.c_void_p(h.ctypes.data),
    ctypes.c_longlong(z.size), ctypes.c_int({ACTIVATION_CODES["tanh"]}))
print("no error seen")
"""
    result = subprocess.run(
        [sys.executable, "-c", program], env=sanitized_env(), capture_output=True, text=True, timeout=120
    )
    assert result.returncode != 0, result.stdout + result.stderr
    assert "heap-buffer-overflow" in result.stderr, result.stderr[-4000:]
    assert "activation_forward" in result.stderr, result.stderr[-4000:]
