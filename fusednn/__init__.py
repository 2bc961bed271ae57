"""fusednn: neural networks with fused JIT kernels on the CPU (Numba) and NVIDIA GPUs (CuPy).

>>> import fusednn
>>> be = fusednn.backend("numpy")
>>> "cpu" in fusednn.available_devices()
True

The neural-network layer lives in :mod:`fusednn.nn` (``from fusednn import nn``).
"""

from .backends import ACTIVATIONS, Backend, Device, available_devices, backend, parse_device

__version__ = "0.1.0"

__all__ = ["ACTIVATIONS", "Backend", "Device", "__version__", "available_devices", "backend", "parse_device"]
