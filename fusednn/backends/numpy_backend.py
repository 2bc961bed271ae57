"""The NumPy reference backend (``device="numpy"``): the oracle every other backend is tested against."""

from __future__ import annotations

import numpy as np
from scipy.special import erf

from .base import Backend
from .device import Device


class NumpyBackend(Backend):
    """Every operation exactly as :class:`~fusednn.backends.base.Backend` defines it, on NumPy arrays."""

    kind = "numpy"

    def __init__(self, device: Device) -> None:
        super().__init__(device, np, erf)
