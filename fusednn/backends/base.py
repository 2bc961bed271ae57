"""The backend interface and its reference implementation.

:class:`Backend` implements every operation with ``self.xp`` calls only
(``xp`` is NumPy or CuPy). It is the executable specification: the NumPy
backend is exactly this class, and the Numba and CUDA backends override the
operations they fuse into kernels and inherit the rest.

Conventions shared by every method:

* Arrays are 2-D ``(batch, features)`` unless stated; the dense weight ``W``
  has shape ``(in_features, out_features)`` and the bias ``b`` ``(out_features,)``.
* Every floating-point array is float32 or float64, and the operands of one
  call share one dtype.
* Scalars that a training step produces (losses, penalties) are returned as
  0-d device arrays, so nothing synchronises with the device until the caller
  asks with ``float(x)`` or :meth:`Backend.to_float`.
* Methods that take ``out`` write into it and return it; gradient buffers
  (``dW``, ``db``) are written in place, never rebound.
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from types import ModuleType
from typing import Any

import numpy as np

from ..kernels.activation_codes import (
    ACTIVATION_CODES,
    ACTIVATIONS,
    ELU_ALPHA,
    LEAKY_RELU_SLOPE,
    SELU_ALPHA,
    SELU_SCALE,
    SOFTPLUS_THRESHOLD,
)
from . import optimizer_rules
from .device import Device, array_device, describe_location
from .dtypes import FLOAT_DTYPES, resolve_dtype
from .epoch_plan import EpochPlan, EpochTrainer
from .philox import dropout_bits, dropout_threshold

Array = Any
"""A NumPy or CuPy array, depending on the backend."""

_SQRT_HALF = math.sqrt(0.5)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


def check_activation(name: str) -> int:
    """Return the kernel code of activation ``name``.

    Raises:
        ValueError: ``name`` is unknown; the message lists the valid names.
    """
    try:
        return ACTIVATION_CODES[name]
    except (KeyError, TypeError):
        raise ValueError(f"Unknown activation {name!r}; expected one of {', '.join(ACTIVATIONS)}") from None


# What a float conversion would silently do to each non-real dtype kind, and what to do instead.
_NOT_REAL = {
    "c": "complex values, whose imaginary part a conversion would drop; pass its .real or abs() explicitly",
    "O": "Python objects; convert them to numbers first, e.g. with .astype(np.float32)",
    "U": "strings; parse them into numbers first, e.g. with .astype(np.float32)",
    "S": "bytes; parse them into numbers first, e.g. with .astype(np.float32)",
    "V": "structured records; pass one numeric field or a plain numeric array",
    "M": "datetimes; convert them to numbers first",
    "m": "timedeltas; convert them to numbers first",
}


TRUSTED_OPERATIONS: tuple[str, ...] = (
    "activation",
    "activation_backward",
    "dense_forward",
    "dense_backward",
    "softmax_cross_entropy",
    "dropout",
    "batchnorm_forward",
    "batchnorm_backward",
)
"""The public methods that :meth:`Backend.trusted` gives a fast path without checks."""

DROPOUT_MAX_ELEMENTS = 2**34
"""The most elements a dropout batch counts (``first + x.size``): four per value of the 32-bit block counter."""


def check_dropout_rate(rate: Any) -> float:
    """``rate`` as a float if it is a number in ``[0, 1)``.

    Raises:
        TypeError: ``rate`` is not a real number.
        ValueError: ``rate`` is outside ``[0, 1)`` (or NaN).
    """
    if isinstance(rate, bool) or not isinstance(rate, (int, float, np.integer, np.floating)):
        raise TypeError(f"dropout rate must be a number in [0, 1), got {type(rate).__name__}")
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"dropout rate must lie in [0, 1), got {rate}")
    return float(rate)


def check_label_range(labels: np.ndarray, n_classes: int, what: str = "Class labels", why: str = "") -> None:
    """Check that host class labels ``(N,)`` lie in ``[0, n_classes)``: the one label range check.

    ``labels`` holds integers or whole-number floats. Integer labels take one reduction:
    seen as unsigned, a negative label is above any class count. ``what`` names the labels in
    the message and ``why`` follows the range (``" for 3 output columns"``).

    >>> check_label_range(np.array([0, 3]), 3)
    Traceback (most recent call last):
    ...
    ValueError: Class labels must lie in [0, 3), got 3 at row 1

    Raises:
        ValueError: a label lies outside ``[0, n_classes)``, naming the first one and its row.
    """
    if labels.size == 0:
        return
    if labels.dtype.kind in "iu":
        if labels.view(labels.dtype.str.replace("i", "u")).max() < n_classes:
            return
    elif labels.min() >= 0 and labels.max() < n_classes:
        return
    row = int(np.flatnonzero((labels < 0) | (labels >= n_classes))[0])
    raise ValueError(f"{what} must lie in [0, {n_classes}){why}, got {labels[row]} at row {row}")


def unmasked(x: Any, name: str = "array") -> Any:
    """``x`` itself, or the data of a masked array that masks nothing.

    A float conversion (``np.asarray``) keeps a masked array's hidden values and
    drops its mask, so a masked entry would be computed on as if it were data.

    Raises:
        ValueError: ``x`` is a masked array with masked entries; the message names ``name``.
    """
    if not isinstance(x, np.ma.MaskedArray):
        return x
    masked = int(np.ma.count_masked(x))
    if masked:
        raise ValueError(
            f"{name} is a masked array with {masked} masked entries; fusednn has no notion of missing "
            "values and would compute on the hidden ones: fill them (x.filled(value)) or drop their rows first"
        )
    return np.ma.getdata(x)


def check_real_dtype(dtype: np.dtype, name: str = "array") -> None:
    """Accept bool, integer and floating-point dtypes, the ones a float conversion keeps exactly in meaning.

    Raises:
        TypeError: complex, object, string, bytes, structured or datetime dtypes, naming ``name``
            and what to do instead.
    """
    if dtype.kind not in "biuf":
        problem = _NOT_REAL.get(dtype.kind, "values that are not real numbers")
        raise TypeError(f"{name} has dtype {dtype.name!r}: {problem}")


def as_real_host_array(x: Any, name: str = "array") -> np.ndarray:
    """``x`` as a NumPy array of real numbers, refusing what a float conversion would silently change.

    >>> as_real_host_array([[1, 2], [3, 4]], "x").dtype.kind
    'i'

    Raises:
        ValueError: ``x`` is a masked array with masked entries, or ragged nested lists.
        TypeError: ``x`` holds complex numbers, objects, strings, ... (see :func:`check_real_dtype`).
    """
    if type(x) is np.ndarray and x.dtype.kind in "biuf":  # what every training step passes
        return x
    x = unmasked(x, name)
    try:
        array = np.asarray(x)
    except ValueError as error:  # ragged nested sequences; NumPy's message does not say which argument
        raise ValueError(f"{name} is not a rectangular array: {error}") from None
    check_real_dtype(array.dtype, name)
    return array


class Backend:
    """One device's implementation of every operation fusednn needs.

    Get one with :func:`fusednn.backend`; do not construct backends directly.

    >>> import numpy as np, fusednn
    >>> be = fusednn.backend("numpy")
    >>> x = be.asarray(np.ones((2, 3)), dtype="float32")
    >>> be.activation("relu", x).shape
    (2, 3)
    """

    #: Device kind this class serves; subclasses set it.
    kind: str = "numpy"

    def __init__(self, device: Device, xp: ModuleType, erf: Callable[[Array], Array]) -> None:
        self.device = device
        self.xp = xp
        self._erf = erf
        self._trusted: dict[str, Callable[..., Any]] = {}

    def __repr__(self) -> str:
        return f"<{type(self).__name__} device={self.device}>"

    @property
    def name(self) -> str:
        """The canonical device string, e.g. ``"cpu"`` or ``"cuda:0"``."""
        return str(self.device)

    # ------------------------------------------------------------------ arrays

    def asarray(self, x: Any, dtype: Any = None, name: str = "array") -> Array:
        """Return ``x`` as a float array on this device.

        ``dtype=None`` keeps a float32/float64 input's dtype and turns any other
        numeric input into float32. A copy is made only when needed. Every way
        data enters a model (fit, evaluate, forward, loss targets, weights) passes
        here, so inputs that a conversion would silently change are refused here
        once: complex values, masked entries, objects and strings. ``name`` is
        what the error messages call ``x``.

        Raises:
            TypeError: ``dtype`` is not float32/float64, ``x`` has such a dtype
                (e.g. float16) and no ``dtype`` was given, or ``x`` does not hold real
                numbers (see :func:`check_real_dtype`).
            ValueError: ``x`` lives on another device, or is a masked array with masked entries.
        """
        # The helpers run only when their cheap guard fails: this is on every training step's path.
        x = self._import_array(unmasked(x, name) if isinstance(x, np.ma.MaskedArray) else x)
        if x.dtype.kind not in "biuf":
            check_real_dtype(x.dtype, name)
        if dtype is None:
            if x.dtype in FLOAT_DTYPES:
                return x
            if x.dtype.kind == "f" or x.dtype.kind not in "biuf":
                raise TypeError(
                    f"Unsupported array dtype {x.dtype.name!r}; pass dtype='float32' or 'float64' to convert"
                )
            return x.astype(np.float32)
        # asarray with order="C", not ascontiguousarray, which turns a 0-d array into 1-d.
        return self.xp.asarray(x, dtype=resolve_dtype(dtype), order="C")

    def asindex(self, x: Any, name: str = "array") -> Array:
        """Return integer labels or row indices as an int64 array on this device; ``name`` as in :meth:`asarray`.

        Raises:
            TypeError: ``x`` holds non-integer values (floats that are not whole numbers).
            ValueError: ``x`` lives on another device, or is a masked array with masked entries.
        """
        x = self._import_array(unmasked(x, name) if isinstance(x, np.ma.MaskedArray) else x)
        if x.dtype.kind in "iu":
            return x.astype(np.int64, copy=False)
        if x.dtype.kind == "f" and bool(self.xp.all(x == self.xp.round(x))):
            return x.astype(np.int64)
        raise TypeError(f"Expected integer labels or indices, got an array of dtype {x.dtype.name!r} ({name})")

    def _import_array(self, x: Any) -> Array:
        """Turn host data into an array of this backend; refuse other devices' arrays."""
        if type(x) is np.ndarray:  # every training step's input: skip the call below
            return x
        device = array_device(x)
        if device is not None:
            raise ValueError(
                f"The array is on {device} but this backend is {self.device}; "
                f"copy it to the host first (e.g. fusednn.backend({str(device)!r}).to_numpy(x))"
            )
        return np.asarray(x)

    def to_numpy(self, x: Array) -> np.ndarray:
        """Copy ``x`` to a NumPy array on the host (no copy when it is already one)."""
        return np.asarray(x)

    def to_float(self, x: Array) -> float:
        """Read a 0-d device value as a Python float (synchronises on a GPU)."""
        return float(x)

    def empty(self, shape: int | tuple[int, ...], dtype: Any = None) -> Array:
        """An uninitialised array of ``shape`` on this device."""
        return self.xp.empty(shape, dtype=resolve_dtype(dtype))

    def zeros(self, shape: int | tuple[int, ...], dtype: Any = None) -> Array:
        """A zero-filled array of ``shape`` on this device."""
        return self.xp.zeros(shape, dtype=resolve_dtype(dtype))

    def synchronize(self) -> None:
        """Wait until every operation queued on this device has finished (no-op on the CPU)."""

    def activate(self) -> AbstractContextManager[Any]:
        """A context in which plain array arithmetic (``a += b``, ``a[i] = v``) runs on this device.

        Backend methods already run on their own device; code that also operates on
        arrays directly (a training loop accumulating gradients) wraps that code in
        ``with backend.activate():``. A no-op on the host.
        """
        return contextlib.nullcontext()

    def take_rows(self, x: Array, indices: Array) -> Array:
        """Gather rows ``x[indices]`` (a mini-batch) into a new contiguous array."""
        return self.xp.take(x, indices, axis=0)

    def write_finite_flags(self, arrays: Sequence[Array], out: Array) -> None:
        """Set ``out[i]`` to 1 if every element of ``arrays[i]`` is finite, else to 0, without a host synchronisation.

        The flags stay on the device: ``fit`` writes them behind an epoch's step losses,
        so that the one read of that vector per epoch also says whether the parameters
        and the optimizer state are still finite. The minimum and the maximum propagate
        NaN and expose an infinity, so two reductions decide it without a temporary the
        size of the array.

        >>> import numpy as np, fusednn
        >>> be = fusednn.backend("numpy")
        >>> flags = be.zeros(2, "float32")
        >>> be.write_finite_flags([be.asarray([1.0, 2.0]), be.asarray([1.0, np.inf])], flags)
        >>> flags
        array([1., 0.], dtype=float32)
        """
        isfinite = self.xp.isfinite
        for i, array in enumerate(arrays):
            out[i] = (isfinite(array.min()) & isfinite(array.max())) if array.size else True

    def epoch_trainer(self, plan: EpochPlan) -> EpochTrainer | None:
        """A callable that trains one whole epoch of ``plan`` in one compiled call, or ``None``.

        ``None`` (the reference's answer, and any backend's for a plan it cannot compile)
        means: run the epoch step by step through the other methods, which is always correct.
        """
        return None

    def check(self, x: Any, name: str = "array") -> Array:
        """Check that ``x`` is a float32/float64 array of this backend and return it.

        Raises:
            ValueError: ``x`` is an array of another device.
            TypeError: ``x`` is not an array, or has another dtype.
        """
        if not isinstance(x, self.xp.ndarray):
            if isinstance(x, np.ndarray) or array_device(x) is not None:
                raise ValueError(
                    f"{name} is on {describe_location(x)} but this backend is {self.device}; "
                    f"move it with fusednn.backend({str(self.device)!r}).asarray(...)"
                )
            raise TypeError(f"{name} must be an array of backend {self.device}, got {type(x).__name__}")
        if x.dtype not in FLOAT_DTYPES:
            raise TypeError(f"{name} has dtype {x.dtype.name!r}; expected 'float32' or 'float64'")
        return x

    def _check_same_dtype(self, **arrays: Array) -> np.dtype:
        """Check every named array with :meth:`check` and that all share one dtype."""
        # A plain loop: this runs several times per training step, and building
        # a dict and a set of the dtypes cost more than the checks themselves.
        dtype = None
        same = True
        for name, a in arrays.items():
            a_dtype = self.check(a, name).dtype
            if dtype is None:
                dtype = a_dtype
            elif a_dtype != dtype:
                same = False
        if not same:
            listed = ", ".join(f"{name}={a.dtype.name}" for name, a in arrays.items())
            raise TypeError(f"Operands must share one dtype, got {listed}")
        assert dtype is not None, "_check_same_dtype needs at least one array"
        return dtype

    def _scalar(self, value: Any, dtype: np.dtype) -> Array:
        """``value`` as a 0-d array of ``dtype`` on this device (NumPy reductions return scalars, not arrays)."""
        return self.xp.asarray(value, dtype=dtype)

    @staticmethod
    def _check_shape(x: Array, shape: tuple[int, ...], name: str) -> None:
        if tuple(x.shape) != tuple(shape):
            raise ValueError(f"{name} has shape {tuple(x.shape)}; expected {tuple(shape)}")

    # ------------------------------------------------------------------ matmul

    def matmul(
        self,
        a: Array,
        b: Array,
        transpose_a: bool = False,
        transpose_b: bool = False,
        out: Array | None = None,
    ) -> Array:
        """Matrix product ``op(a) @ op(b)`` of two 2-D arrays, ``op`` transposing when asked.

        Raises:
            ValueError: the inner dimensions differ, or an operand is not 2-D.
        """
        self._check_same_dtype(a=a, b=b)
        for name, x in (("a", a), ("b", b)):
            if x.ndim != 2:
                raise ValueError(f"matmul expects 2-D arrays; {name} has shape {tuple(x.shape)}")
        a_op = a.T if transpose_a else a
        b_op = b.T if transpose_b else b
        if a_op.shape[1] != b_op.shape[0]:
            raise ValueError(
                f"matmul inner dimensions differ: op(a) is {tuple(a_op.shape)}, op(b) is {tuple(b_op.shape)}"
            )
        if out is not None:
            self._check_shape(out, (a_op.shape[0], b_op.shape[1]), "out")
        return self._matmul_unchecked(a, b, transpose_a, transpose_b, out)

    def _matmul_unchecked(self, a: Array, b: Array, transpose_a: bool, transpose_b: bool, out: Array | None) -> Array:
        """:meth:`matmul` on operands whose shapes and dtypes agree."""
        a_op = a.T if transpose_a else a
        b_op = b.T if transpose_b else b
        if out is not None:
            return self.xp.matmul(a_op, b_op, out=out)
        return self.xp.matmul(a_op, b_op)

    # ------------------------------------------------------------- activations

    def activation(self, name: str, z: Array, out: Array | None = None) -> Array:
        """Apply activation ``name`` elementwise: ``h = act(z)``.

        ``out``, when given, is an array of ``z``'s shape and dtype (any layout) that receives ``h``
        and is returned.
        """
        check_activation(name)
        if out is None:
            self.check(z, "z")
        else:
            self._check_same_dtype(z=z, out=out)
            self._check_shape(out, z.shape, "out")
        return self._activation_unchecked(name, z, out)

    def activation_backward(self, name: str, z: Array, h: Array, dh: Array, out: Array | None = None) -> Array:
        """Chain rule through activation ``name``: ``dz = dh * act'(z)``.

        ``z`` is the input of the forward pass and ``h = act(z)`` its output;
        each activation uses whichever gives the derivative most cheaply.
        ``out`` as in :meth:`activation`.
        """
        check_activation(name)
        if out is None:
            self._check_same_dtype(z=z, h=h, dh=dh)
        else:
            self._check_same_dtype(z=z, h=h, dh=dh, out=out)
        if not (z.shape == h.shape == dh.shape):
            raise ValueError(f"z, h and dh must share one shape, got {z.shape}, {h.shape}, {dh.shape}")
        if out is not None:
            self._check_shape(out, z.shape, "out")
        return self._activation_backward_unchecked(name, z, h, dh, out)

    def _activation_unchecked(self, name: str, z: Array, out: Array | None) -> Array:
        """:meth:`activation` for operands the caller guarantees valid."""
        return self._written_to(out, self._activation_reference(name, z))

    def _activation_backward_unchecked(self, name: str, z: Array, h: Array, dh: Array, out: Array | None) -> Array:
        """:meth:`activation_backward` for operands the caller guarantees valid."""
        return self._written_to(out, dh * self._activation_derivative_reference(name, z, h))

    def _contiguous(self, x: Array) -> Array:
        """``x`` itself when C-contiguous, else a C-contiguous copy: the kernels index flat row-major memory."""
        return self.xp.ascontiguousarray(x)

    @contextlib.contextmanager
    def _updated_in_place(self, *arrays: Array | None) -> Iterator[list[Array | None]]:
        """Yield C-contiguous stand-ins for buffers a kernel reads and updates; copy them back into strided ones.

        Contiguous buffers (the usual case) are yielded as they are, so the kernel updates them directly.
        """
        staged = [a if a is None or a.flags.c_contiguous else self.xp.ascontiguousarray(a) for a in arrays]
        yield staged
        for original, stand_in in zip(arrays, staged, strict=True):
            if original is not None and stand_in is not original:  # None stays None: nothing to copy
                original[...] = stand_in

    def _output(self, out: Array | None, like: Array) -> Array:
        """Where a kernel writes a result shaped like ``like``: ``out`` itself when given and C-contiguous
        (kernels index flat row-major memory), else a new C-contiguous array for :meth:`_written_to` to copy
        into ``out`` afterwards."""
        if out is not None and out.flags.c_contiguous:
            return out
        return self.xp.empty_like(like, order="C")

    @staticmethod
    def _written_to(out: Array | None, result: Array) -> Array:
        """``result``, or ``out`` after copying ``result`` into it when ``out`` is a separate array."""
        if out is None:
            return result
        if result is not out:
            out[...] = result
        return out

    def _sigmoid(self, z: Array) -> Array:
        # exp of a non-positive number only, so nothing overflows for large |z|.
        xp = self.xp
        e = xp.exp(-xp.abs(z))
        return xp.where(z >= 0, 1 / (1 + e), e / (1 + e))

    def _activation_reference(self, name: str, z: Array) -> Array:
        xp = self.xp
        if name == "identity":
            return z.copy()
        if name == "sigmoid":
            return self._sigmoid(z)
        if name == "tanh":
            return xp.tanh(z)
        if name == "relu":
            return xp.maximum(z, 0)
        if name == "leaky_relu":
            return xp.where(z > 0, z, z * LEAKY_RELU_SLOPE)
        if name == "elu":
            return xp.where(z > 0, z, ELU_ALPHA * xp.expm1(xp.minimum(z, 0)))
        if name == "selu":
            return SELU_SCALE * xp.where(z > 0, z, SELU_ALPHA * xp.expm1(xp.minimum(z, 0)))
        if name == "gelu":
            return 0.5 * z * (1 + self._erf(z * _SQRT_HALF))
        if name == "silu":
            return z * self._sigmoid(z)
        if name == "softplus":
            return xp.where(z > SOFTPLUS_THRESHOLD, z, xp.log1p(xp.exp(xp.minimum(z, SOFTPLUS_THRESHOLD))))
        raise AssertionError(name)  # check_activation ran first

    def _activation_derivative_reference(self, name: str, z: Array, h: Array) -> Array:
        xp = self.xp
        if name == "identity":
            return xp.ones_like(z)
        if name == "sigmoid":
            return h * (1 - h)
        if name == "tanh":
            return 1 - h * h
        if name == "relu":
            return (z > 0).astype(z.dtype)
        if name == "leaky_relu":
            return xp.where(z > 0, 1, LEAKY_RELU_SLOPE).astype(z.dtype)
        if name == "elu":
            return xp.where(z > 0, 1, ELU_ALPHA * xp.exp(xp.minimum(z, 0))).astype(z.dtype)
        if name == "selu":
            return SELU_SCALE * xp.where(z > 0, 1, SELU_ALPHA * xp.exp(xp.minimum(z, 0))).astype(z.dtype)
        if name == "gelu":
            return 0.5 * (1 + self._erf(z * _SQRT_HALF)) + z * xp.exp(-0.5 * z * z) * _INV_SQRT_2PI
        if name == "silu":
            s = self._sigmoid(z)
            return s * (1 + z * (1 - s))
        if name == "softplus":
            return xp.where(z > SOFTPLUS_THRESHOLD, 1, self._sigmoid(z)).astype(z.dtype)
        raise AssertionError(name)

    def softmax(self, x: Array) -> Array:
        """Softmax over the last axis, shifted by the row maximum so large logits do not overflow."""
        self.check(x, "x")
        e = self.xp.exp(x - x.max(axis=-1, keepdims=True))
        return e / e.sum(axis=-1, keepdims=True)

    def log_softmax(self, x: Array) -> Array:
        """Log-softmax over the last axis, computed stably as ``x - max - log(sum(exp(x - max)))``."""
        self.check(x, "x")
        return self._log_softmax(x)

    def _log_softmax(self, x: Array) -> Array:
        shifted = x - x.max(axis=-1, keepdims=True)
        return shifted - self.xp.log(self.xp.exp(shifted).sum(axis=-1, keepdims=True))

    # ------------------------------------------------------------ dense layer

    def dense_forward(self, x: Array, W: Array, b: Array, activation: str) -> tuple[Array, Array]:
        """Fused dense layer: ``z = x @ W + b`` and ``y = act(z)``.

        Returns ``(y, z)``; backward needs both. For ``identity`` ``y is z``.

        Shapes: ``x (N, in)``, ``W (in, out)``, ``b (out,)`` → ``y, z (N, out)``.
        """
        check_activation(activation)
        self._check_dense_shapes(x, W, b)
        return self._dense_forward_unchecked(x, W, self._contiguous(b), activation)

    def dense_backward(
        self,
        x: Array,
        W: Array,
        z: Array,
        y: Array,
        dy: Array,
        activation: str,
        dW: Array,
        db: Array,
        need_dx: bool = True,
    ) -> Array | None:
        """Backward pass of :meth:`dense_forward`, by the chain rule.

        Computes ``dz = dy * act'(z)`` and ``db = sum(dz, axis=0)`` (fused in one
        pass by the optimised backends), then ``dW = x^T dz`` and, when
        ``need_dx``, ``dx = dz W^T``. ``dW`` and ``db`` are overwritten in place.

        Returns ``dx (N, in)`` or ``None``.
        """
        self._check_dense_backward(x, W, z, y, dy, activation, dW, db)
        z, y, dy = self._contiguous(z), self._contiguous(y), self._contiguous(dy)
        with self._updated_in_place(dW, db) as (dW_out, db_out):
            return self._dense_backward_unchecked(x, W, z, y, dy, activation, dW_out, db_out, need_dx)

    def _check_dense_backward(
        self, x: Array, W: Array, z: Array, y: Array, dy: Array, activation: str, dW: Array, db: Array
    ) -> int:
        """Check :meth:`dense_backward`'s arguments; return the activation code."""
        code = check_activation(activation)
        self._check_dense_shapes(x, W, db)
        self._check_same_dtype(x=x, z=z, y=y, dy=dy, dW=dW, db=db)
        n, n_out = x.shape[0], W.shape[1]
        for name, arr in (("z", z), ("y", y), ("dy", dy)):
            self._check_shape(arr, (n, n_out), name)
        self._check_shape(dW, W.shape, "dW")
        return code

    def _check_dense_shapes(self, x: Array, W: Array, b: Array) -> None:
        self._check_same_dtype(x=x, W=W, b=b)
        if x.ndim != 2 or W.ndim != 2 or b.ndim != 1:
            raise ValueError(
                "dense expects x (N, in), W (in, out), b (out,); "
                f"got {tuple(x.shape)}, {tuple(W.shape)}, {tuple(b.shape)}"
            )
        if x.shape[1] != W.shape[0] or b.shape[0] != W.shape[1]:
            raise ValueError(
                f"dense shapes disagree: x {tuple(x.shape)}, W {tuple(W.shape)}, b {tuple(b.shape)}; "
                "expected x (N, in), W (in, out), b (out,)"
            )

    # ------------------------------------------------------------------ losses

    def softmax_cross_entropy(self, logits: Array, target: Array) -> tuple[Array, Array]:
        """Fused softmax + cross-entropy, mean over samples (as ``torch.nn.CrossEntropyLoss``).

        ``target`` is either int64 class labels ``(N,)`` (from :meth:`asindex`)
        or class probabilities ``(N, C)`` of the logits' dtype. With
        ``p = softmax(logits)``:

        * labels: ``loss = -mean_i log p[i, t_i]``, ``dlogits = (p - onehot(t)) / N``
        * probabilities: ``loss = -mean_i sum_c t_ic log p_ic``,
          ``dlogits = (p * sum_c t_ic - t) / N``

        Returns ``(loss as a 0-d array, dlogits (N, C))``. Labels must lie in ``[0, C)``.
        """
        return self._softmax_cross_entropy_unchecked(logits, self._check_cross_entropy_target(logits, target))

    def _softmax_cross_entropy_unchecked(self, logits: Array, target: Array) -> tuple[Array, Array]:
        """:meth:`softmax_cross_entropy` for operands the caller guarantees valid: ``logits (N, C)`` with
        ``N, C >= 1`` and int64 labels ``(N,)`` in ``[0, C)`` or probabilities ``(N, C)`` of the logits' dtype.
        Unlike the optimizer fast paths, the operands may have any layout: a loss takes its outputs from the user."""
        n = logits.shape[0]
        log_p = self._log_softmax(logits)
        p = self.xp.exp(log_p)
        if target.ndim == 1:
            rows = self.xp.arange(n)
            loss = -log_p[rows, target].sum() / n
            grad = p
            grad[rows, target] -= 1
            grad /= n
        else:
            loss = -(target * log_p).sum() / n
            grad = (p * target.sum(axis=1, keepdims=True) - target) / n
        return self._scalar(loss, logits.dtype), grad

    def _check_cross_entropy_target(self, logits: Array, target: Array) -> Array:
        """Check :meth:`softmax_cross_entropy`'s operands; return ``target`` (labels as int64).

        Raises:
            ValueError: wrong shapes, an empty batch, or a label outside ``[0, C)``.
            TypeError: wrong dtypes (labels must be integers, probabilities the logits' dtype).
        """
        self.check(logits, "logits")
        if logits.ndim != 2 or logits.shape[0] == 0 or logits.shape[1] == 0:
            raise ValueError(f"logits must have shape (N, C) with N, C >= 1, got {tuple(logits.shape)}")
        n, n_classes = logits.shape
        if getattr(target, "ndim", None) == 1:
            if not isinstance(target, self.xp.ndarray) or target.dtype.kind not in "iu":
                raise TypeError(
                    f"Class labels must be an integer array of this backend (see asindex), got {type(target).__name__}"
                    f" of dtype {getattr(target, 'dtype', None)}"
                )
            self._check_shape(target, (n,), "labels")
            self._check_label_range(target, n_classes)
            return target.astype(np.int64, copy=False)
        self._check_same_dtype(logits=logits, target=target)
        self._check_shape(target, (n, n_classes), "target")
        return target

    def _check_label_range(self, labels: Array, n_classes: int) -> None:
        """Check that every label lies in ``[0, n_classes)`` (:func:`check_label_range`, on host memory).

        The CUDA backend overrides this with a no-op so a training step never waits
        for the GPU; its kernel makes the loss NaN for a label out of range instead.

        Raises:
            ValueError: a label lies outside ``[0, n_classes)``.
        """
        check_label_range(labels, n_classes)

    def binary_cross_entropy_with_logits(self, logits: Array, target: Array) -> tuple[Array, Array]:
        """Sigmoid + binary cross-entropy on logits, mean over elements (as ``BCEWithLogitsLoss``).

        ``loss = mean(max(x, 0) - x t + log(1 + exp(-|x|)))``, ``dx = (sigmoid(x) - t) / size``.
        """
        self._check_same_dtype(logits=logits, target=target)
        xp = self.xp
        size = logits.size
        loss = (xp.maximum(logits, 0) - logits * target + xp.log1p(xp.exp(-xp.abs(logits)))).sum() / size
        return self._scalar(loss, logits.dtype), (self._sigmoid(logits) - target) / size

    def mean_squared_error(self, pred: Array, target: Array) -> tuple[Array, Array]:
        """``loss = mean((pred - target)^2)``, ``dpred = 2 (pred - target) / size``."""
        self._check_same_dtype(pred=pred, target=target)
        diff = pred - target
        return self._scalar((diff * diff).sum() / pred.size, pred.dtype), diff * (2 / pred.size)

    def mean_absolute_error(self, pred: Array, target: Array) -> tuple[Array, Array]:
        """``loss = mean(|pred - target|)``, ``dpred = sign(pred - target) / size`` (0 where equal)."""
        self._check_same_dtype(pred=pred, target=target)
        diff = pred - target
        return self._scalar(self.xp.abs(diff).sum() / pred.size, pred.dtype), self.xp.sign(diff) / pred.size

    # ---------------------------------------------------------- regularisation

    def l1_l2_penalty(self, W: Array, l1: float, l2: float) -> Array:
        """``l1 * sum|W| + l2 * sum W^2`` as a 0-d array (Keras's definition)."""
        self.check(W, "W")
        xp = self.xp
        penalty = xp.zeros((), dtype=W.dtype)
        if l1:
            penalty = penalty + l1 * xp.abs(W).sum()
        if l2:
            penalty = penalty + l2 * (W * W).sum()
        return self._scalar(penalty, W.dtype)

    def add_l1_l2_gradient(self, W: Array, dW: Array, l1: float, l2: float) -> None:
        """Add the penalty's gradient ``l1 * sign(W) + 2 * l2 * W`` to ``dW`` in place."""
        self._check_same_dtype(W=W, dW=dW)
        if l1:
            dW += l1 * self.xp.sign(W)
        if l2:
            dW += (2 * l2) * W

    # ------------------------------------------------- dropout and batch norm

    def dropout(self, x: Array, rate: float, seed: int, step: int, layer: int, first: int = 0) -> Array:
        """Inverted dropout: ``y = x / (1 - rate)`` where an element is kept, ``0`` where it is dropped.

        The mask is a pure function of ``(seed, step, layer)`` and the element's index in its
        batch: element ``e`` is kept when word ``e % 4`` of Philox 4x32-10 (counter ``(e // 4,
        layer, step)``, key ``seed``) is at least ``floor(rate * 2**32)`` (see
        :mod:`fusednn.backends.philox`). Element ``i`` of ``x`` (in C order) is element
        ``e = first + i`` of the batch, so a part of a batch that starts at element ``first``
        (a rank's rows in data-parallel training: ``first = row * features``) gets exactly the
        mask the whole batch would. Every backend draws the same mask, bit for bit, and applying
        the same key to ``dy`` gives the backward pass ``dx``. A dropped element is 0 even where
        ``x`` is NaN or infinite. The kept values are the same bits too, except float32
        subnormals, which CUDA (built with ``-ftz=true``) flushes to zero.

        Args:
            x: any shape, float32/float64.
            rate: the probability of dropping an element, ``0 <= rate < 1``.
            seed: integer in ``[0, 2**64)``; step: in ``[0, 2**64)``; layer: in ``[0, 2**32)``.
            first: the index, in the whole batch, of ``x``'s first element: an integer ``>= 0``
                with ``first + x.size <= 2**34`` (four elements per value of the 32-bit block counter).

        >>> import numpy as np, fusednn
        >>> be = fusednn.backend("numpy")
        >>> be.dropout(be.asarray(np.ones(8)), 0.5, seed=0, step=0, layer=0)
        array([0., 2., 2., 2., 2., 0., 2., 0.])
        >>> be.dropout(be.asarray(np.ones(3)), 0.5, seed=0, step=0, layer=0, first=5)  # elements 5, 6, 7
        array([0., 2., 0.])

        Raises:
            ValueError: ``rate`` outside ``[0, 1)``, a key word or ``first`` out of range, or
                ``first + x.size`` above ``2**34``.
            TypeError: ``x`` is not a float array of this backend, or a key word or ``first`` is not an integer.
        """
        self.check(x, "x")
        rate = check_dropout_rate(rate)
        for name, value, bits in (
            ("seed", seed, 64),
            ("step", step, 64),
            ("layer", layer, 32),
            ("first", first, 34),
        ):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                raise TypeError(f"dropout {name} must be an integer, got {type(value).__name__}")
            if not 0 <= value < 2**bits:
                raise ValueError(f"dropout {name} must lie in [0, 2**{bits}), got {value}")
        if int(first) + x.size > DROPOUT_MAX_ELEMENTS:
            raise ValueError(
                "dropout counts at most 2**34 elements of a batch (four per value of the 32-bit block counter), "
                f"but first + x.size = {first} + {x.size} = {int(first) + x.size}"
            )
        return self._dropout_unchecked(x, rate, int(seed), int(step), int(layer), int(first))

    def _dropout_unchecked(self, x: Array, rate: float, seed: int, step: int, layer: int, first: int) -> Array:
        """:meth:`dropout` for operands the caller guarantees valid."""
        bits = dropout_bits(self.xp, x.size, seed, step, layer, first).reshape(x.shape)
        keep = bits >= np.uint64(dropout_threshold(rate))
        return self.xp.where(keep, x * x.dtype.type(1.0 / (1.0 - rate)), x.dtype.type(0))

    def batchnorm_forward(
        self,
        x: Array,
        gamma: Array,
        beta: Array,
        running_mean: Array,
        running_var: Array,
        momentum: float,
        eps: float,
        training: bool,
    ) -> tuple[Array, Array, Array]:
        """Batch normalisation of ``x (N, F)`` over its rows, as ``torch.nn.BatchNorm1d``.

        ``y = (x - mean) * inv_std * gamma + beta`` with ``inv_std = 1 / sqrt(var + eps)``. In
        training, ``mean`` and the biased ``var`` are the batch's, and the running statistics
        are updated in place: ``running_mean = (1 - momentum) * running_mean + momentum * mean``,
        likewise ``running_var`` with the unbiased variance ``var * N / (N - 1)``. In evaluation
        they are the running statistics, which stay as they are.

        Returns ``(y (N, F), mean (F,), inv_std (F,))``; :meth:`batchnorm_backward` takes the last two.

        Raises:
            ValueError: shapes disagree, training on a single row (its variance is undefined),
                ``momentum`` outside ``[0, 1]`` or ``eps`` not positive.
            TypeError: an operand is not a float array of this backend, or dtypes differ.
        """
        self._check_same_dtype(x=x, gamma=gamma, beta=beta, running_mean=running_mean, running_var=running_var)
        if x.ndim != 2:
            raise ValueError(f"batchnorm expects x of shape (N, features), got {tuple(x.shape)}")
        features = (x.shape[1],)
        for name, vector in (("gamma", gamma), ("beta", beta), ("running_mean", running_mean)):
            self._check_shape(vector, features, name)
        self._check_shape(running_var, features, "running_var")
        if training and x.shape[0] < 2:
            raise ValueError(f"batchnorm in training needs more than 1 row per feature, got input of shape {x.shape}")
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"batchnorm momentum must lie in [0, 1], got {momentum}")
        if not eps > 0.0:
            raise ValueError(f"batchnorm eps must be > 0, got {eps}")
        return self._batchnorm_forward_unchecked(
            x, gamma, beta, running_mean, running_var, float(momentum), float(eps), bool(training)
        )

    def _batchnorm_forward_unchecked(
        self,
        x: Array,
        gamma: Array,
        beta: Array,
        running_mean: Array,
        running_var: Array,
        momentum: float,
        eps: float,
        training: bool,
    ) -> tuple[Array, Array, Array]:
        """:meth:`batchnorm_forward` for operands the caller guarantees valid."""
        xp = self.xp
        if training:
            n = x.shape[0]
            mean = x.mean(axis=0)
            var = x.var(axis=0)
            running_mean[...] = (1.0 - momentum) * running_mean + momentum * mean
            running_var[...] = (1.0 - momentum) * running_var + momentum * (var * (n / (n - 1)))
        else:
            mean = running_mean.copy()
            var = running_var
        inv_std = (1.0 / xp.sqrt(var + eps)).astype(x.dtype)
        return (x - mean) * inv_std * gamma + beta, mean, inv_std

    def batchnorm_backward(
        self,
        x: Array,
        dy: Array,
        gamma: Array,
        mean: Array,
        inv_std: Array,
        dgamma: Array,
        dbeta: Array,
        training: bool,
        need_dx: bool = True,
    ) -> Array | None:
        """Backward pass of :meth:`batchnorm_forward`, given its ``x``, ``mean`` and ``inv_std``.

        With ``xhat = (x - mean) * inv_std``: ``dbeta = sum(dy)``, ``dgamma = sum(dy * xhat)``
        (over rows, written in place) and, when ``need_dx``,
        ``dx = gamma * inv_std * (dy - dbeta / N - xhat * dgamma / N)`` after a training
        forward (the batch statistics depend on ``x``) or ``gamma * inv_std * dy`` after an
        evaluation one. Returns ``dx (N, F)`` or ``None``.

        Raises:
            ValueError / TypeError: as :meth:`batchnorm_forward`, for these operands.
        """
        self._check_same_dtype(x=x, dy=dy, gamma=gamma, mean=mean, inv_std=inv_std, dgamma=dgamma, dbeta=dbeta)
        if x.ndim != 2:
            raise ValueError(f"batchnorm expects x of shape (N, features), got {tuple(x.shape)}")
        self._check_shape(dy, x.shape, "dy")
        features = (x.shape[1],)
        for name, vector in (("gamma", gamma), ("mean", mean), ("inv_std", inv_std), ("dgamma", dgamma)):
            self._check_shape(vector, features, name)
        self._check_shape(dbeta, features, "dbeta")
        return self._batchnorm_backward_unchecked(x, dy, gamma, mean, inv_std, dgamma, dbeta, bool(training), need_dx)

    def _batchnorm_backward_unchecked(
        self,
        x: Array,
        dy: Array,
        gamma: Array,
        mean: Array,
        inv_std: Array,
        dgamma: Array,
        dbeta: Array,
        training: bool,
        need_dx: bool,
    ) -> Array | None:
        """:meth:`batchnorm_backward` for operands the caller guarantees valid."""
        xhat = (x - mean) * inv_std
        self.xp.sum(dy, axis=0, out=dbeta)
        self.xp.sum(dy * xhat, axis=0, out=dgamma)
        if not need_dx:
            return None
        g = dy - dbeta / x.shape[0] - xhat * (dgamma / x.shape[0]) if training else dy
        return g * (gamma * inv_std)

    # -------------------------------------------------------------- optimizers

    def optimizer_step(
        self, rule: str, param: Array, grad: Array, state: Sequence[Array | None], segments: Any = None
    ) -> Callable[..., None]:
        """Check an optimizer's flat buffers once and return its trusted step: ``step(*scalars)``.

        This is the one fast path of every optimizer. ``rule`` names a rule of
        :mod:`fusednn.backends.optimizer_rules` (``"sgd"``, ``"rmsprop"``, ``"adam"``, ``"adamw"``,
        ``"lamb"``, ``"lars"``); ``state`` lists its state buffers in the rule's order, ``None`` for
        one its hyperparameters do not use; ``segments`` is the per-tensor rules' int64
        ``(tensors, 2)`` table of each tensor's ``[start, stop)``. Each ``step(*scalars)`` updates
        ``param`` and the state in place with the rule's scalars in the rule's order (flags as
        ``bool``), and checks nothing: the caller keeps the buffers it passed here (never rebinds,
        reshapes or frees them) and passes the rule's scalars, which is what :mod:`fusednn.nn.optim`'s
        optimizers do. The checks run here, once per optimizer, not per step.

        >>> import numpy as np, fusednn
        >>> be = fusednn.backend("numpy")
        >>> p, g = be.asarray(np.ones(3)), be.asarray(np.full(3, 0.5))
        >>> step = be.optimizer_step("sgd", p, g, [None])
        >>> step(0.1, 0.0, 1.0, 0.0, False, False, True)  # lr, momentum, 1 - dampening, weight decay, flags
        >>> p.tolist()
        [0.95, 0.95, 0.95]

        Raises:
            ValueError: unknown rule; a buffer of another shape or not C-contiguous; ``param`` not
                1-D; ``segments`` missing for a per-tensor rule, given for another, or not rows of
                ``0 <= start <= stop <= param.size``, in order and disjoint.
            TypeError: a buffer of another dtype or backend.
        """
        if rule not in optimizer_rules.RULES:
            raise ValueError(f"Unknown optimizer rule {rule!r}; expected one of {', '.join(optimizer_rules.RULES)}")
        arrays = {"param": param, "grad": grad}
        arrays.update({f"state[{i}]": a for i, a in enumerate(state) if a is not None})
        self._check_same_dtype(**arrays)
        if param.ndim != 1:
            raise ValueError(f"param must be the flat 1-D buffer, got shape {tuple(param.shape)}")
        for name, array in arrays.items():
            self._check_shape(array, param.shape, name)
            if not array.flags.c_contiguous:
                raise ValueError(f"{name} must be C-contiguous: the step updates it in place through flat loops")
        return self._bind_optimizer(rule, param, grad, tuple(state), self._check_segments(rule, segments, param.size))

    @staticmethod
    def _check_segments(rule: str, segments: Any, size: int) -> np.ndarray | None:
        if (segments is not None) != (rule in optimizer_rules.SEGMENTED):
            need = "needs a" if segments is None else "takes no"
            raise ValueError(f"Optimizer rule {rule!r} {need} segments table (each tensor's [start, stop))")
        if segments is None:
            return None
        table = np.asarray(segments)
        if table.dtype.kind not in "iu" or table.ndim != 2 or table.shape[1] != 2:
            raise ValueError(f"segments must be an integer (tensors, 2) table, got {table.dtype} {table.shape}")
        table = np.ascontiguousarray(table, dtype=np.int64)
        bounds = table.reshape(-1)
        if bounds.size and (bounds[0] < 0 or bounds[-1] > size or (np.diff(bounds) < 0).any()):
            raise ValueError(f"segments must be ordered, disjoint [start, stop) rows within 0..{size}")
        return table

    def _bind_optimizer(
        self, rule: str, param: Array, grad: Array, state: tuple[Array | None, ...], segments: np.ndarray | None
    ) -> Callable[..., None]:
        """:meth:`optimizer_step` after its checks: the reference rule, bound to the buffers."""
        bound = (param, grad, *state) if segments is None else (param, grad, *state, segments)
        return functools.partial(optimizer_rules.RULES[rule], self.xp, *bound)

    # ------------------------------------------------------ trusted fast path

    def trusted(self, operation: str) -> Callable[..., Any]:
        """The trusted fast path of public method ``operation``: the same computation, none of its checks.

        ``operation`` is one of :data:`TRUSTED_OPERATIONS`; the callable takes the public method's
        arguments (positionally, ``out`` and ``need_dx`` included) and returns the same bits. It is for
        code that has itself established, once, everything the public method would check on each call,
        as nn's models do for their layers and losses in every training step. The caller guarantees:

        * every array is an array of this backend, float32/float64 with one dtype across the call
          (class labels: int64), with the shapes the public method documents, and not empty;
        * arrays are C-contiguous, and so are buffers written in place (``out``, ``dW``, ``db``,
          ``dgamma``, ``dbeta``, running statistics) — except ``softmax_cross_entropy``'s logits and
          target, which may have any layout (a loss takes them from the user);
        * names and numbers are valid: a known activation, class labels in ``[0, C)``, a dropout
          rate in ``[0, 1)`` and key words in range, a batch-norm ``momentum`` in ``[0, 1]``,
          ``eps > 0`` and more than one row in training.

        Broken guarantees give wrong numbers or undefined behaviour, not errors. The callable is made
        once per backend and operation, and runs on this backend's device.

        >>> import numpy as np, fusednn
        >>> be = fusednn.backend("numpy")
        >>> x, W, b = be.asarray(np.ones((2, 3))), be.asarray(np.ones((3, 2))), be.zeros(2, "float64")
        >>> y, z = be.trusted("dense_forward")(x, W, b, "relu")
        >>> y.tolist()
        [[3.0, 3.0], [3.0, 3.0]]

        Raises:
            ValueError: ``operation`` has no trusted path; the message lists those that do.
        """
        try:
            return self._trusted[operation]
        except (KeyError, TypeError):
            pass
        if operation not in TRUSTED_OPERATIONS:
            raise ValueError(
                f"No trusted path for {operation!r}; expected one of {', '.join(TRUSTED_OPERATIONS)}"
            ) from None
        path = self._trusted_path(getattr(self, f"_{operation}_unchecked"))
        self._trusted[operation] = path
        return path

    def _trusted_path(self, implementation: Callable[..., Any]) -> Callable[..., Any]:
        """What :meth:`trusted` hands out for an implementation: itself, on a host backend."""
        return implementation

    # The public methods above check their operands and call their ``_<operation>_unchecked``
    # implementation, which does the work: backends override the implementations, so the
    # checks live here once, and :meth:`trusted` hands the implementations out.

    def _dense_forward_unchecked(self, x: Array, W: Array, b: Array, activation: str) -> tuple[Array, Array]:
        """:meth:`dense_forward` for operands the caller guarantees valid."""
        z = self._matmul_unchecked(x, W, False, False, None)
        z += b
        if activation == "identity":
            return z, z
        return self._activation_reference(activation, z), z

    def _dense_backward_unchecked(
        self, x: Array, W: Array, z: Array, y: Array, dy: Array, activation: str, dW: Array, db: Array, need_dx: bool
    ) -> Array | None:
        """:meth:`dense_backward` for operands the caller guarantees valid."""
        if activation == "identity":
            dz = dy
        else:
            dz = dy * self._activation_derivative_reference(activation, z, y)
        self.xp.sum(dz, axis=0, out=db)
        self._matmul_unchecked(x, dz, True, False, dW)
        return self._matmul_unchecked(dz, W, False, True, None) if need_dx else None


def adam_scalars(lr: float, beta1: float, beta2: float, step: int) -> tuple[float, float]:
    """Host-side Adam scalars in float64: ``(lr / (1 - beta1^step), sqrt(1 - beta2^step))``."""
    if step < 1:
        raise ValueError(f"Adam's step counts from 1, got {step}")
    return lr / (1.0 - beta1**step), math.sqrt(1.0 - beta2**step)
