"""Weight initialisers, drawn on the host from a NumPy Generator.

Drawing on the host (in float64, then cast) makes one seed give identical
weights on every device and nearly identical ones in every dtype.

=========  ==========================================  =====================================
name       distribution                                used by ``init="auto"`` for
=========  ==========================================  =====================================
``he``     ``N(0, 2 / fan_in)`` (He et al., 2015)        relu, leaky_relu, elu, gelu, silu, softplus
``glorot`` ``U(-a, a)``, ``a = sqrt(6 / (fan_in + fan_out))``  sigmoid, tanh, identity
``lecun``  ``N(0, 1 / fan_in)`` (LeCun et al., 1998)     selu
=========  ==========================================  =====================================

These match ``torch.nn.init.kaiming_normal_(nonlinearity="relu")``,
``xavier_uniform_`` and Keras's ``lecun_normal`` without truncation.
"""

from __future__ import annotations

import numpy as np

INITIALIZERS: tuple[str, ...] = ("he", "glorot", "lecun")
"""Initialiser names accepted by :class:`~fusednn.nn.Dense` besides ``"auto"``."""

_AUTO: dict[str, str] = {
    "relu": "he",
    "leaky_relu": "he",
    "elu": "he",
    "gelu": "he",
    "silu": "he",
    "softplus": "he",
    "sigmoid": "glorot",
    "tanh": "glorot",
    "identity": "glorot",
    "selu": "lecun",
}


def resolve_init(init: str, activation: str) -> str:
    """Return the concrete initialiser for ``init`` (``"auto"`` picks one from ``activation``).

    >>> resolve_init("auto", "relu")
    'he'

    Raises:
        ValueError: ``init`` is not ``"auto"`` or one of :data:`INITIALIZERS`.
    """
    if init == "auto":
        return _AUTO[activation]
    if init not in INITIALIZERS:
        raise ValueError(f"Unknown init {init!r}; expected 'auto' or one of {', '.join(INITIALIZERS)}")
    return init


def initial_weights(init: str, fan_in: int, fan_out: int, rng: np.random.Generator) -> np.ndarray:
    """Draw a float64 weight matrix of shape ``(fan_in, fan_out)`` with initialiser ``init``.

    >>> initial_weights("he", 3, 2, np.random.default_rng(0)).shape
    (3, 2)
    """
    if init == "he":
        return rng.normal(0.0, np.sqrt(2.0 / fan_in), size=(fan_in, fan_out))
    if init == "lecun":
        return rng.normal(0.0, np.sqrt(1.0 / fan_in), size=(fan_in, fan_out))
    if init == "glorot":
        limit = np.sqrt(6.0 / (fan_in + fan_out))
        return rng.uniform(-limit, limit, size=(fan_in, fan_out))
    raise ValueError(f"Unknown init {init!r}; expected one of {', '.join(INITIALIZERS)}")
