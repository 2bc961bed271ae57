"""pytest-benchmark setup: ``bench_*.py`` collection, the ``--bench-full`` grid, devices and a timing fixture.

``pytest benchmarks/ --benchmark-only`` runs the quick subset on every available
device; ``--bench-full`` adds the full grid; ``-m smoke --benchmark-disable`` runs
one tiny case per file once (what CI does, via ``tests/test_benchmarks_smoke.py``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import fusednn
from fusednn.backends.registry import cuda_device_count

HAS_GPU = cuda_device_count() > 0


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--bench-full", action="store_true", help="run the full benchmark grid, not the quick subset")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "smoke: the one tiny case per benchmark file that CI runs")
    config.addinivalue_line("markers", "full: part of the full grid only (--bench-full)")


def pytest_collect_file(parent: pytest.Collector, file_path: Path) -> pytest.Module | None:
    """Collect ``bench_*.py`` as test modules, so benchmark files never look like unit tests.

    A file named on the command line is collected by pytest itself whatever its name, so it is left to pytest.
    """
    if file_path.suffix == ".py" and file_path.name.startswith("bench_") and not parent.session.isinitpath(file_path):
        return pytest.Module.from_parent(parent, path=file_path)
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--bench-full"):
        return
    skipped = [item for item in items if item.get_closest_marker("full")]
    if skipped:
        config.hook.pytest_deselected(items=skipped)
        items[:] = [item for item in items if not item.get_closest_marker("full")]


_gpu = pytest.param("cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(not HAS_GPU, reason="needs a usable CUDA GPU")])


@pytest.fixture(params=["numpy", "cpu", _gpu])
def device(request: pytest.FixtureRequest) -> str:
    """Every device: fusednn's NumPy reference, Numba on the CPU, and CUDA when present."""
    return request.param


@pytest.fixture
def backend(device: str) -> fusednn.Backend:
    """The fusednn backend of ``device``."""
    return fusednn.backend(device)


@pytest.fixture
def measure(benchmark: Any) -> Callable[..., Any]:
    """Time ``fn(*args)`` in steady state, the device synchronised inside every timed call.

    The first call (JIT compilation, CUDA module loading, allocator growth) runs
    and is timed on its own, recorded as ``extra_info["first_call_s"]``, and never
    enters the steady-state statistics. ``sync`` is the device's synchronize.
    """

    def run(fn: Callable[..., Any], *args: Any, sync: Callable[[], None], **kwargs: Any) -> Any:
        def synced() -> Any:
            result = fn(*args, **kwargs)
            sync()
            return result

        start = time.perf_counter()
        synced()
        benchmark.extra_info["first_call_s"] = time.perf_counter() - start
        return benchmark(synced)

    return run
