"""Activation functions as scalar Numba functions selected by integer code, and elementwise kernels.

:func:`activate` and :func:`derivative` are compiled once, as plain functions, and
LLVM inlines them into every kernel that applies an activation (the dense epilogue
and backward, the elementwise kernels here). Numba's own ``inline="always"`` would
copy their ten branches into every loop at the IR level first: that inlining pass
alone took 9 of the 24 seconds that the first cold training step spent compiling,
for the same machine code (the cheap activations' loops vectorise either way).
The code is a runtime argument: the branch on it is loop invariant, and each
kernel body calls its loop with a constant code for the cheap activations
(:data:`SPECIALISED`) so that those loops vectorise. Codes come from
:mod:`fusednn.kernels.activation_codes`; the maths matches the reference
backend and PyTorch (exact-erf GELU, softplus threshold 20).

A code outside that table raises :class:`~fusednn.kernels.errors.UnknownCodeError`:
every kernel that takes a code calls :func:`check_activation` once, before its loop
and outside any ``prange`` (an exception raised inside a ``prange`` body is lost: the
loop stops and the call returns as if it had finished). :func:`activate` and
:func:`derivative` take a checked code and raise nothing themselves: a ``raise`` as
their last branch made the generic loop's tanh backward about 40% slower (measured;
an exception exit in the loop body), for nothing the entry check does not do.
"""

from __future__ import annotations

import math

import numba
import numpy as np
from numba import njit

from ..activation_codes import (
    ACTIVATION_CODES,
    ACTIVATIONS,
    ACTIVATIONS_TABLE,
    ELU_ALPHA,
    LEAKY_RELU_SLOPE,
    SELU_ALPHA,
    SELU_SCALE,
    SOFTPLUS_THRESHOLD,
)
from ..errors import UnknownCodeError
from .common import JitOptions, chunk_bounds, like

IDENTITY = ACTIVATION_CODES["identity"]
SIGMOID = ACTIVATION_CODES["sigmoid"]
TANH = ACTIVATION_CODES["tanh"]
RELU = ACTIVATION_CODES["relu"]
LEAKY_RELU = ACTIVATION_CODES["leaky_relu"]
ELU = ACTIVATION_CODES["elu"]
SELU = ACTIVATION_CODES["selu"]
GELU = ACTIVATION_CODES["gelu"]
SILU = ACTIVATION_CODES["silu"]
SOFTPLUS = ACTIVATION_CODES["softplus"]

SPECIALISED = (RELU, LEAKY_RELU, IDENTITY)
"""Codes that each kernel body dispatches to a loop compiled for that constant code.

With the code a runtime value, the ten-way branch in :func:`activate` is too
big for LLVM to hoist out of the loop, so no loop vectorises. The cheap
activations are memory-bound and gain ~5x from SIMD, so they get their own
loop (``if code == RELU: loop(RELU, ...)``); the transcendental ones are bound
by scalar ``exp``/``erf`` calls and share one generic loop.
"""

_SQRT_HALF = math.sqrt(0.5)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)

_JIT: JitOptions = {"cache": True, "error_model": "numpy"}

_COUNT = len(ACTIVATIONS)


@njit(inline="always", **_JIT)
def check_activation(code: int) -> None:
    """Raise :class:`~fusednn.kernels.errors.UnknownCodeError` unless ``code`` is an activation code.

    Kernels call it before their loops, so an unknown code writes nothing.
    """
    if code < 0 or code >= _COUNT:
        raise UnknownCodeError("activation", code, _COUNT, ACTIVATIONS_TABLE)


@njit(**_JIT)
def sigmoid(z: float) -> float:
    """Logistic sigmoid that never overflows: ``exp`` only ever sees a non-positive argument."""
    one = like(z, 1.0)
    if z >= 0:
        return one / (one + math.exp(-z))
    e = math.exp(z)
    return e / (one + e)


@njit(**_JIT)
def activate(code: int, z: float) -> float:
    """``act(z)`` for activation ``code`` (checked by the caller); NaN propagates as in NumPy and PyTorch."""
    zero = like(z, 0.0)
    if code == SIGMOID:
        return sigmoid(z)
    if code == TANH:
        return math.tanh(z)
    if code == RELU:
        return zero if z <= 0 else z  # written so that NaN passes through
    if code == LEAKY_RELU:
        return z if z > 0 else z * like(z, LEAKY_RELU_SLOPE)
    if code == ELU:
        return z if z > 0 else like(z, ELU_ALPHA) * math.expm1(z)
    if code == SELU:
        return like(z, SELU_SCALE) * (z if z > 0 else like(z, SELU_ALPHA) * math.expm1(z))
    if code == GELU:
        return like(z, 0.5) * z * (like(z, 1.0) + math.erf(z * like(z, _SQRT_HALF)))
    if code == SILU:
        return z * sigmoid(z)
    if code == SOFTPLUS:
        return z if z > like(z, SOFTPLUS_THRESHOLD) else math.log1p(math.exp(z))
    return z  # identity (the kernel checked the code: check_activation)


@njit(**_JIT)
def derivative(code: int, z: float, h: float) -> float:
    """``act'(z)`` given the forward input ``z`` and output ``h = act(z)``, whichever is cheaper (code checked)."""
    one = like(z, 1.0)
    zero = like(z, 0.0)
    if code == SIGMOID:
        return h * (one - h)
    if code == TANH:
        return one - h * h
    if code == RELU:
        return one if z > 0 else zero
    if code == LEAKY_RELU:
        return one if z > 0 else like(z, LEAKY_RELU_SLOPE)
    if code == ELU:
        return one if z > 0 else like(z, ELU_ALPHA) * math.exp(z)
    if code == SELU:
        return like(z, SELU_SCALE) * (one if z > 0 else like(z, SELU_ALPHA) * math.exp(z))
    if code == GELU:
        cdf = like(z, 0.5) * (one + math.erf(z * like(z, _SQRT_HALF)))
        return cdf + z * math.exp(like(z, -0.5) * z * z) * like(z, _INV_SQRT_2PI)
    if code == SILU:
        s = sigmoid(z)
        return s * (one + z * (one - s))
    if code == SOFTPLUS:
        return one if z > like(z, SOFTPLUS_THRESHOLD) else sigmoid(z)
    return one  # identity (the kernel checked the code: check_activation)


@njit(inline="always", **_JIT)
def _forward_loop(code: int, z: np.ndarray, out: np.ndarray) -> None:
    for i in range(z.shape[0]):
        out[i] = activate(code, z[i])


@njit(inline="always", **_JIT)
def _forward_body(code: int, z: np.ndarray, out: np.ndarray) -> None:
    # See SPECIALISED: a constant code lets LLVM drop the branch on it and vectorise.
    if code == RELU:
        _forward_loop(RELU, z, out)
    elif code == LEAKY_RELU:
        _forward_loop(LEAKY_RELU, z, out)
    elif code == IDENTITY:
        _forward_loop(IDENTITY, z, out)
    else:
        _forward_loop(code, z, out)


@njit(inline="always", **_JIT)
def _backward_loop(code: int, z: np.ndarray, h: np.ndarray, dh: np.ndarray, out: np.ndarray) -> None:
    for i in range(z.shape[0]):
        out[i] = dh[i] * derivative(code, z[i], h[i])


@njit(inline="always", **_JIT)
def _backward_body(code: int, z: np.ndarray, h: np.ndarray, dh: np.ndarray, out: np.ndarray) -> None:
    if code == RELU:
        _backward_loop(RELU, z, h, dh, out)
    elif code == LEAKY_RELU:
        _backward_loop(LEAKY_RELU, z, h, dh, out)
    elif code == IDENTITY:
        _backward_loop(IDENTITY, z, h, dh, out)
    else:
        _backward_loop(code, z, h, dh, out)


@njit(**_JIT)
def activation_forward(code: int, z: np.ndarray, out: np.ndarray) -> None:
    """``out = act(z)`` elementwise over 1-D contiguous arrays (serial)."""
    check_activation(code)
    _forward_body(code, z, out)


@njit(parallel=True, **_JIT)
def activation_forward_parallel(code: int, z: np.ndarray, out: np.ndarray, n_chunks: int) -> None:
    """:func:`activation_forward` split into ``n_chunks`` chunks run on Numba's threads."""
    check_activation(code)
    for c in numba.prange(n_chunks):
        start, stop = chunk_bounds(z.shape[0], n_chunks, c)
        _forward_body(code, z[start:stop], out[start:stop])


@njit(**_JIT)
def activation_backward(code: int, z: np.ndarray, h: np.ndarray, dh: np.ndarray, out: np.ndarray) -> None:
    """``out = dh * act'(z)`` elementwise over 1-D contiguous arrays (serial)."""
    check_activation(code)
    _backward_body(code, z, h, dh, out)


@njit(parallel=True, **_JIT)
def activation_backward_parallel(
    code: int,
    z: np.ndarray,
    h: np.ndarray,
    dh: np.ndarray,
    out: np.ndarray,
    n_chunks: int,
) -> None:
    """:func:`activation_backward` split into ``n_chunks`` chunks run on Numba's threads."""
    check_activation(code)
    for c in numba.prange(n_chunks):
        start, stop = chunk_bounds(z.shape[0], n_chunks, c)
        _backward_body(code, z[start:stop], h[start:stop], dh[start:stop], out[start:stop])
