"""CUDA C kernels (``.cu`` files) and the thin launchers that compile and call them.

* :mod:`.sources`: the ``.cu`` files, kernel signatures, shared compile options.
* :mod:`.launch`: launch configurations, argument casting and checking, and the
  memoised ``cupy.RawModule`` of each file.

Importing this package never imports CuPy.
"""

from .launch import KernelLauncher, launch_config
from .sources import COMPILE_OPTIONS, KERNELS, SOURCE_FILES

__all__ = [
    "COMPILE_OPTIONS",
    "KERNELS",
    "SOURCE_FILES",
    "KernelLauncher",
    "launch_config",
]
