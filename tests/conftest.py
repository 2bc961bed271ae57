"""Shared fixtures: every test that takes ``device`` runs on each backend.

The cuda parameter is always generated, marked ``gpu``, and skipped with a
reason when no GPU is usable, so the same module runs unchanged on a GPU machine.
"""

from __future__ import annotations

import importlib.util
import os
import sys

import pytest

from fusednn.backends.registry import cuda_device_count

HAS_GPU = cuda_device_count() > 0
GPU_SKIP_REASON = "needs a usable CUDA GPU (CuPy installed and a GPU visible)"


def pytest_configure(config: pytest.Config) -> None:
    """With ``FUSEDNN_TEST_CUPY_POOL=off``, give every CuPy array its own ``cudaMalloc``.

    ``.ci/gpu`` sets it under compute-sanitizer's memcheck: inside CuPy's pool an
    access past an array's end lands in a neighbouring block and goes unseen.
    """
    if os.environ.get("FUSEDNN_TEST_CUPY_POOL") == "off" and HAS_GPU:
        import cupy

        cupy.cuda.set_allocator(None)


HAS_MPI4PY = importlib.util.find_spec("mpi4py") is not None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip the doctests of :mod:`fusednn.distributed`, which run MPI, where mpi4py is not installed.

    The README's test command installs it (the ``distributed`` extra); a plain ``.[test]`` install does not.
    """
    if HAS_MPI4PY:
        return
    skip = pytest.mark.skip(reason="needs mpi4py (the distributed extra: pip install -e '.[distributed]')")
    for item in items:
        if isinstance(item, pytest.DoctestItem) and item.name.startswith("fusednn.distributed"):
            item.add_marker(skip)


_gpu = pytest.param("cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(not HAS_GPU, reason=GPU_SKIP_REASON)])


@pytest.fixture(params=["numpy", "cpu", _gpu])
def device(request: pytest.FixtureRequest) -> str:
    """Every device: the NumPy reference, Numba on the CPU, and CUDA when present."""
    return request.param


@pytest.fixture(params=["cpu", _gpu])
def fast_device(request: pytest.FixtureRequest) -> str:
    """The optimised devices, each compared against the NumPy reference in tests."""
    return request.param


@pytest.fixture(params=["float32", "float64"])
def dtype(request: pytest.FixtureRequest) -> str:
    """Both float dtypes every backend supports."""
    return request.param


@pytest.fixture
def without_mpi4py(monkeypatch: pytest.MonkeyPatch) -> None:
    """``from mpi4py import MPI`` fails, as where mpi4py is not installed, in a process no launcher started."""
    from fusednn.distributed.launch import WORLD_SIZE_VARIABLES

    monkeypatch.setitem(sys.modules, "mpi4py", None)
    for name in WORLD_SIZE_VARIABLES:
        monkeypatch.delenv(name, raising=False)


# Tolerances per dtype for comparing an optimised backend with the reference.
TOLERANCES = {"float32": {"rtol": 2e-5, "atol": 2e-6}, "float64": {"rtol": 1e-12, "atol": 1e-13}}


@pytest.fixture(scope="session", autouse=True)
def _epoch_kernels_compiled(request: pytest.FixtureRequest) -> None:
    """Compile the cpu epoch kernel for both dtypes before any test trains.

    ``fit``'s default ``epoch_path="auto"`` trains per step while that kernel compiles in the
    background, so without this a test's path (and its last bits) would depend on how far
    the compile had got. Seconds on an empty Numba cache, once; a fraction of one when warm.
    Not for ``-m gpu`` (``.ci/gpu``'s first stage, where each of a dozen workers would pay it
    on a fresh machine for GPU cases that train on cuda).
    """
    if request.config.getoption("markexpr") == "gpu":
        return
    import numpy as np

    from fusednn import nn

    for dtype in ("float32", "float64"):
        model = nn.MLP([1, 1], device="cpu", dtype=dtype, seed=0)
        nn.fit(model, np.zeros((1, 1)), np.zeros(1), loss="mse", epoch_path="compiled", progress=False)
