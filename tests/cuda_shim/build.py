"""Generated translation units around the shipped ``.cu`` files, for nvcc and for g++ with the CPU shim.

The shipped sources hold only templates; these helpers write the explicit
instantiations (nvcc) and ``extern "C"`` wrappers (g++) from the kernel table
in :mod:`fusednn.kernels.cuda.sources`, so a signature that disagrees with the
``.cu`` file fails to compile.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

from fusednn.kernels.cuda.sources import (
    C_TYPES,
    COMPILE_OPTIONS,
    SOURCE_FILES,
    kernels_in,
    source_path,
)

SHIM_HEADER = Path(__file__).resolve().parent / "shim.h"

SANITIZE_ENV = "FUSEDNN_SHIM_SANITIZE"
"""Set to ``1`` to build the shim library with AddressSanitizer and UBSan (see :func:`build_shim_library`)."""

SANITIZE_FLAGS = ["-fsanitize=address,undefined", "-fno-sanitize-recover=all", "-fno-omit-frame-pointer", "-g"]

_ENTRY = re.compile(r"Compiling entry function '(\w+)' for '(sm_\d+)'")
_SPILLS = re.compile(r"(\d+) bytes spill stores, (\d+) bytes spill loads")


def explicit_instantiations(source: str, text: str | None = None) -> str:
    """A translation unit that includes ``source`` (or ``text``) and instantiates every kernel for both dtypes."""
    body = text if text is not None else f'#include "{source_path(source)}"'
    lines = [body]
    for spec in kernels_in(source):
        for dtype, ctype in C_TYPES.items():
            lines.append(f"template __global__ void {spec.name}<{ctype}>({', '.join(spec.c_params(dtype))});")
    return "\n".join(lines) + "\n"


def wrapper_name(kernel: str, ctype: str) -> str:
    """The ``extern "C"`` symbol of one instantiation in the shim library, e.g. ``adam_step_float``."""
    return f"{kernel}_{ctype}"


def shim_wrappers(source: str, text: str | None = None) -> str:
    """A translation unit that includes ``source`` (or holds ``text``) and wraps each instantiation in ``extern "C"``.

    Each wrapper takes ``(int grid, int block, <kernel parameters>)`` and runs
    the kernel through the shim's serial launcher.
    """
    lines = [text if text is not None else f'#include "{source_path(source)}"']
    for spec in kernels_in(source):
        for dtype, ctype in C_TYPES.items():
            params = [f"{c} a{i}" for i, c in enumerate(spec.c_params(dtype))]
            names = ", ".join(f"a{i}" for i in range(len(params)))
            lines.append(
                f'extern "C" void {wrapper_name(spec.name, ctype)}(int grid, int block, {", ".join(params)}) '
                f"{{ shim_launch(grid, block, {spec.name}<{ctype}>, {names}); }}"
            )
    return "\n".join(lines) + "\n"


def build_shim_library(out_dir: Path, sanitize: bool | None = None, texts: dict[str, str] | None = None) -> Path:
    """Compile every shipped ``.cu`` with g++ and the shim header into one shared library.

    ``sanitize`` (by default: whether ``$FUSEDNN_SHIM_SANITIZE`` is ``1``) adds
    AddressSanitizer and UBSan, so an out-of-bounds index or a signed overflow
    in a kernel stops the process with a report. Such a library loads only into
    a process started with ``LD_PRELOAD`` naming :func:`asan_runtime`.
    ``texts`` replaces the text of some sources (for tests that plant a bug).
    """
    if sanitize is None:
        sanitize = os.environ.get(SANITIZE_ENV) == "1"
    sanitizer_flags = SANITIZE_FLAGS if sanitize else []
    texts = texts or {}
    objects = []
    for source in SOURCE_FILES:
        unit = out_dir / f"{Path(source).stem}_shim.cpp"
        unit.write_text(shim_wrappers(source, texts.get(source)))
        obj = unit.with_suffix(".o")
        run(
            [
                "g++",
                "-O1",
                "-fPIC",
                "-Wall",
                "-Werror",
                *sanitizer_flags,
                "-x",
                "c++",
                "-include",
                str(SHIM_HEADER),
                *COMPILE_OPTIONS,
                "-c",
                str(unit),
                "-o",
                str(obj),
            ]
        )
        objects.append(str(obj))
    library = out_dir / "libfusednn_cuda_shim.so"
    run(["g++", "-shared", *sanitizer_flags, "-o", str(library), *objects])
    return library


def asan_runtime() -> str | None:
    """The path of g++'s AddressSanitizer runtime, or None when it is not installed."""
    if not have("g++"):
        return None
    path = subprocess.run(["g++", "-print-file-name=libasan.so"], capture_output=True, text=True).stdout.strip()
    return path if Path(path).is_absolute() and Path(path).exists() else None


def run(command: list[str]) -> str:
    """Run a compiler; return its combined output, or raise ``RuntimeError`` with it."""
    result = subprocess.run(command, capture_output=True, text=True)
    output = result.stdout + result.stderr
    if result.returncode != 0:
        raise RuntimeError(f"{command[0]} failed ({result.returncode}):\n{output}")
    return output


def ptxas_report(log: str) -> dict[str, tuple[str, int, int]]:
    """Parse ``ptxas -v`` output: entry name -> (arch, spill store bytes, spill load bytes)."""
    report = {}
    entry = None
    for line in log.splitlines():
        if match := _ENTRY.search(line):
            entry = match.groups()
        elif (match := _SPILLS.search(line)) and entry is not None:
            report[entry[0]] = (entry[1], int(match[1]), int(match[2]))
            entry = None
    return report


def have(tool: str) -> bool:
    """Whether ``tool`` is on PATH."""
    return shutil.which(tool) is not None
