"""The elementwise halves of the fused dense layer; the GEMMs stay in BLAS, called from Python.

Forward, after ``z = x @ W``: :func:`bias_activation` adds the bias and applies
the activation in one pass (``z += b``, ``y = act(z)``).
Backward, before ``dW = x^T dz`` and ``dx = dz W^T``: :func:`activation_grad_bias`
computes ``dz = dy * act'(z, y)`` and reduces ``db = sum_rows dz`` in one pass.

Arrays are 2-D C-contiguous ``(N, M)``; ``b``/``db`` are ``(M,)``. Parallel
drivers split the rows into ``n_chunks`` blocks (no BLAS inside ``prange``).
:func:`bias_activation` and :func:`activation_grad_bias` take the activation code at run
time (the epoch kernel's layers each have their own); :func:`for_activation` gives the
per-step backend the same kernels compiled for one code. An unknown code raises
:class:`~fusednn.kernels.errors.UnknownCodeError` before anything is written.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import numba
import numpy as np
from numba import njit

from ..activation_codes import ACTIVATIONS, ACTIVATIONS_TABLE
from ..errors import check_code
from .activations import IDENTITY, LEAKY_RELU, RELU, activate, check_activation, derivative
from .common import JitOptions, chunk_bounds

_JIT: JitOptions = {"cache": True, "error_model": "numpy"}


@njit(inline="always", **_JIT)
def _bias_activation_rows(code: int, z: np.ndarray, b: np.ndarray, y: np.ndarray) -> None:
    for i in range(z.shape[0]):
        for j in range(z.shape[1]):
            v = z[i, j] + b[j]
            z[i, j] = v
            y[i, j] = activate(code, v)


@njit(inline="always", **_JIT)
def _bias_activation_body(code: int, z: np.ndarray, b: np.ndarray, y: np.ndarray) -> None:
    # Constant codes for the cheap activations, so LLVM vectorises their loops (see activations.SPECIALISED).
    if code == RELU:
        _bias_activation_rows(RELU, z, b, y)
    elif code == LEAKY_RELU:
        _bias_activation_rows(LEAKY_RELU, z, b, y)
    elif code == IDENTITY:
        _bias_activation_rows(IDENTITY, z, b, y)
    else:
        _bias_activation_rows(code, z, b, y)


@njit(inline="always", **_JIT)
def _grad_bias_rows(code: int, dy: np.ndarray, z: np.ndarray, y: np.ndarray, dz: np.ndarray, db: np.ndarray) -> None:
    # Accumulate row by row so the inner loop over columns vectorises (and the
    # summation order matches NumPy's sum over axis 0).
    db[:] = 0
    for i in range(dy.shape[0]):
        for j in range(dy.shape[1]):
            g = dy[i, j] * derivative(code, z[i, j], y[i, j])
            dz[i, j] = g
            db[j] += g


@njit(inline="always", **_JIT)
def _grad_bias_body(code: int, dy: np.ndarray, z: np.ndarray, y: np.ndarray, dz: np.ndarray, db: np.ndarray) -> None:
    if code == RELU:
        _grad_bias_rows(RELU, dy, z, y, dz, db)
    elif code == LEAKY_RELU:
        _grad_bias_rows(LEAKY_RELU, dy, z, y, dz, db)
    elif code == IDENTITY:
        _grad_bias_rows(IDENTITY, dy, z, y, dz, db)
    else:
        _grad_bias_rows(code, dy, z, y, dz, db)


@njit(**_JIT)
def bias_activation(code: int, z: np.ndarray, b: np.ndarray, y: np.ndarray) -> None:
    """In place ``z += b`` then ``y = act(z)``; ``y`` may be ``z`` itself (identity). Serial, any activation code."""
    check_activation(code)
    _bias_activation_body(code, z, b, y)


@njit(**_JIT)
def activation_grad_bias(
    code: int,
    dy: np.ndarray,
    z: np.ndarray,
    y: np.ndarray,
    dz: np.ndarray,
    db: np.ndarray,
) -> None:
    """``dz = dy * act'(z, y)`` and ``db = dz.sum(axis=0)`` (``db`` overwritten) in one serial pass, any code."""
    check_activation(code)
    _grad_bias_body(code, dy, z, y, dz, db)


class Epilogue(NamedTuple):
    """The dense layer's elementwise kernels compiled for one activation, as :func:`for_activation` returns them.

    ``bias_activation(z, b, y)`` and ``activation_grad_bias(dy, z, y, dz, db)`` are the serial
    kernels above with the code fixed; the ``_parallel`` forms take a last ``n_chunks`` argument.
    """

    bias_activation: Any
    bias_activation_parallel: Any
    activation_grad_bias: Any
    activation_grad_bias_parallel: Any


@functools.cache
def for_activation(code: int) -> Epilogue:
    """The per-step path's dense kernels with the activation ``code`` a compile-time constant.

    The per-step backend calls these: each compiles only its own activation's loop, where the
    kernels above (which :mod:`.epoch` calls with the code of each layer at run time) compile the
    loops of every activation. Cold, that halved the first training step's compile (digits, ReLU:
    2.3 s for the two kernels' every-code forms). Numba caches each code's kernels apart (the code
    is a closure variable, part of the cache key).

    Raises:
        UnknownCodeError: ``code`` is not an activation code (checked here, before anything compiles).
    """
    check_code(code, "activation", ACTIVATIONS, ACTIVATIONS_TABLE)

    @njit(**_JIT)
    def bias_activation_of(z: np.ndarray, b: np.ndarray, y: np.ndarray) -> None:
        _bias_activation_rows(code, z, b, y)

    @njit(parallel=True, **_JIT)
    def bias_activation_of_parallel(z: np.ndarray, b: np.ndarray, y: np.ndarray, n_chunks: int) -> None:
        for c in numba.prange(n_chunks):
            start, stop = chunk_bounds(z.shape[0], n_chunks, c)
            _bias_activation_rows(code, z[start:stop], b, y[start:stop])

    @njit(**_JIT)
    def activation_grad_bias_of(dy: np.ndarray, z: np.ndarray, y: np.ndarray, dz: np.ndarray, db: np.ndarray) -> None:
        _grad_bias_rows(code, dy, z, y, dz, db)

    @njit(parallel=True, **_JIT)
    def activation_grad_bias_of_parallel(
        dy: np.ndarray, z: np.ndarray, y: np.ndarray, dz: np.ndarray, db: np.ndarray, n_chunks: int
    ) -> None:
        # Per-block sums, added at the end.
        partial = np.empty((n_chunks, db.shape[0]), dtype=db.dtype)
        for c in numba.prange(n_chunks):
            start, stop = chunk_bounds(dy.shape[0], n_chunks, c)
            _grad_bias_rows(code, dy[start:stop], z[start:stop], y[start:stop], dz[start:stop], partial[c])
        db[:] = 0
        for c in range(n_chunks):
            for j in range(db.shape[0]):
                db[j] += partial[c, j]

    return Epilogue(
        bias_activation_of, bias_activation_of_parallel, activation_grad_bias_of, activation_grad_bias_of_parallel
    )
