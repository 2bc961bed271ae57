"""One Backend per device behind one interface, the device-string grammar, and the registry."""

from ..kernels.activation_codes import ACTIVATIONS
from .base import Backend, check_activation
from .device import Device, parse_device
from .dtypes import FLOAT_DTYPES, resolve_dtype
from .registry import available_devices, backend, backend_of, is_host_array, to_host

__all__ = [
    "ACTIVATIONS",
    "Backend",
    "Device",
    "FLOAT_DTYPES",
    "available_devices",
    "backend",
    "backend_of",
    "check_activation",
    "is_host_array",
    "parse_device",
    "resolve_dtype",
    "to_host",
]
