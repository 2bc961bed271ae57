"""The CPU backend (``device="cpu"``): BLAS for the GEMMs, fused Numba kernels for everything around them.

:class:`NumbaBackend` overrides the operations that fuse into one pass over
memory (activations, the dense epilogue and its backward, softmax
cross-entropy, the optimizer steps) and inherits the rest from the NumPy
reference in :class:`~fusednn.backends.base.Backend`. GEMMs go to the BLAS
that NumPy links (``np.matmul`` with ``out=``, called from Python).

``fit`` trains stacks of dense layers with one Numba call per epoch instead
(:meth:`NumbaBackend.epoch_trainer`, :mod:`fusednn.backends.cpu_epoch`): the whole
step, GEMMs included (BLAS through SciPy, loops at tiny shapes), runs compiled.

Kernels compile on first use (about a second each, per dtype) and are cached
on disk next to their sources, or under ``$NUMBA_CACHE_DIR``; nothing
compiles when this module is imported.

Threads:

* Each kernel runs serially below :data:`PARALLEL_MIN_ELEMENTS` elements and on
  Numba's thread pool above it: waking the threads costs tens of microseconds,
  more than small kernels take.
* The pool has ``NUMBA_NUM_THREADS`` threads (default: every core), which
  this backend respects, as it does ``numba.set_num_threads``.
* Unless ``NUMBA_THREADING_LAYER`` is set, this module selects Numba's
  ``workqueue`` threading layer before any parallel kernel runs. Numba's
  default OpenMP layer spin-waits after each parallel loop, and the spinning
  threads starved the BLAS call that follows by about 10x on a 2-core machine.
  The ``workqueue`` layer does not support parallel kernels launched from
  several Python threads at once; set ``NUMBA_THREADING_LAYER=omp`` or ``tbb``
  if you need that.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import numba
import numpy as np
from scipy.special import erf

from ..kernels.activation_codes import ACTIVATION_CODES
from ..kernels.cpu import activations, dense, layers, losses, optim
from .base import Array, Backend
from .cpu_epoch import compile_plan
from .device import Device
from .epoch_plan import EpochPlan, EpochTrainer
from .philox import dropout_threshold, split_key

if "NUMBA_THREADING_LAYER" not in os.environ:
    # numba.config sets its options through globals() as it reads the environment: no checker can see them.
    numba.config.THREADING_LAYER = "workqueue"  # type: ignore[attr-defined]

PARALLEL_MIN_ELEMENTS = 4_000_000
"""Kernels over at least this many elements run on Numba's threads; smaller ones run serially.

The optimizer kernels always run serially: on this VM two threads gained 6% at 8e6 parameters.

Measured on the 2-core development VM (workqueue layer, float32, median µs; serial vs 2 threads):
an Adam step over 1e6 / 2e6 / 4e6 / 8e6 parameters took 582 vs 881, 1107 vs 1683, 2308 vs 2786 and
4931 vs 4666; relu over the same sizes 162 vs 322, 348 vs 511, 1006 vs 808 and 2388 vs 1837. These
kernels are memory-bound, so a second core barely helps, and waking the pool costs about 150 µs.
Compute-heavy activations (gelu) gain from about 2e6 elements. 4e6 is where the memory-bound
kernels, which dominate a training step, break even.
"""


class NumbaBackend(Backend):
    """Fused Numba kernels on the CPU around NumPy's BLAS; everything else as the NumPy reference.

    >>> import numpy as np, fusednn
    >>> be = fusednn.backend("cpu")
    >>> x = be.asarray(np.ones((4, 3)), dtype="float32")
    >>> W, b = be.asarray(np.ones((3, 2)), dtype="float32"), be.zeros(2)
    >>> y, z = be.dense_forward(x, W, b, "relu")
    >>> y.tolist()
    [[3.0, 3.0], [3.0, 3.0], [3.0, 3.0], [3.0, 3.0]]
    """

    kind = "cpu"

    def __init__(self, device: Device) -> None:
        super().__init__(device, np, erf)
        #: Threshold for going parallel; tests lower it to exercise the parallel drivers.
        self.parallel_min_elements = PARALLEL_MIN_ELEMENTS

    def _launch(
        self, serial: Callable[..., Any], parallel: Callable[..., Any], size: int, rows: int, *args: Any
    ) -> Any:
        """Run ``serial(*args)``, or ``parallel(*args, n_chunks)`` when ``size`` elements pay for threads.

        ``rows`` bounds the number of chunks (a chunk is at least one row).
        """
        if size >= self.parallel_min_elements and rows > 1:
            n_chunks = min(numba.get_num_threads(), rows)
            if n_chunks > 1:
                return parallel(*args, n_chunks)
        return serial(*args)

    # ---------------------------------------------------------- whole epochs

    def epoch_trainer(self, plan: EpochPlan) -> EpochTrainer | None:
        """One Numba call per epoch (:mod:`fusednn.kernels.cpu.epoch`) for stacks of dense layers with any
        activation and loss fusednn offers and SGD, RMSprop or Adam; ``None`` for anything else, e.g. AdamW, LAMB
        and LARS (see :meth:`Backend.epoch_trainer`).
        """
        return compile_plan(plan)

    # ------------------------------------------------------------- activations

    def _activation_unchecked(self, name: str, z: Array, out: Array | None) -> Array:
        """One Numba pass ``h = act(z)``; see :meth:`Backend.activation`."""
        z = np.ascontiguousarray(z)
        h = self._output(out, z)
        self._launch(
            activations.activation_forward,
            activations.activation_forward_parallel,
            z.size,
            z.size,
            ACTIVATION_CODES[name],
            z.reshape(-1),
            h.reshape(-1),
        )
        return self._written_to(out, h)

    def _activation_backward_unchecked(self, name: str, z: Array, h: Array, dh: Array, out: Array | None) -> Array:
        """One Numba pass ``dz = dh * act'(z)``; see :meth:`Backend.activation_backward`."""
        z, h, dh = (np.ascontiguousarray(a) for a in (z, h, dh))
        dz = self._output(out, z)
        self._launch(
            activations.activation_backward,
            activations.activation_backward_parallel,
            z.size,
            z.size,
            ACTIVATION_CODES[name],
            z.reshape(-1),
            h.reshape(-1),
            dh.reshape(-1),
            dz.reshape(-1),
        )
        return self._written_to(out, dz)

    # ------------------------------------------------------------ dense layer

    def _dense_forward_unchecked(self, x: Array, W: Array, b: Array, activation: str) -> tuple[Array, Array]:
        """Fused dense layer: BLAS ``z = x @ W``, then one Numba pass ``z += b``, ``y = act(z)``; see
        :meth:`Backend.dense_forward`. ``b`` is C-contiguous (the public method copies a strided one)."""
        z = np.empty((x.shape[0], W.shape[1]), dtype=x.dtype)
        np.matmul(x, W, out=z)
        y = z if activation == "identity" else np.empty_like(z)
        epilogue = dense.for_activation(ACTIVATION_CODES[activation])
        self._launch(epilogue.bias_activation, epilogue.bias_activation_parallel, z.size, z.shape[0], z, b, y)
        return y, z

    def _dense_backward_unchecked(
        self, x: Array, W: Array, z: Array, y: Array, dy: Array, activation: str, dW: Array, db: Array, need_dx: bool
    ) -> Array | None:
        """One Numba pass for ``dz = dy * act'(z)`` and ``db``, then BLAS for ``dW`` and ``dx``; see
        :meth:`Backend.dense_backward`. ``z``, ``y``, ``dy`` and ``db`` are C-contiguous (the public method
        stages strided ones)."""
        dz = np.empty_like(dy)
        epilogue = dense.for_activation(ACTIVATION_CODES[activation])
        self._launch(
            epilogue.activation_grad_bias,
            epilogue.activation_grad_bias_parallel,
            dz.size,
            dz.shape[0],
            dy,
            z,
            y,
            dz,
            db,
        )
        np.matmul(x.T, dz, out=dW)
        return np.matmul(dz, W.T) if need_dx else None

    # ------------------------------------------------------------------ losses

    def _softmax_cross_entropy_unchecked(self, logits: Array, target: Array) -> tuple[Array, Array]:
        """Fused softmax + cross-entropy (one Numba pass per row); see :meth:`Backend.softmax_cross_entropy`."""
        target = np.ascontiguousarray(target)
        logits = np.ascontiguousarray(logits)
        grad = np.empty_like(logits)
        # Both kernel pairs take (logits, target, grad) and return the summed loss.
        serial: Callable[[Array, Array, Array], float]
        parallel: Callable[[Array, Array, Array], float]
        if target.ndim == 1:
            serial, parallel = losses.cross_entropy_labels, losses.cross_entropy_labels_parallel
        else:
            serial, parallel = losses.cross_entropy_probabilities, losses.cross_entropy_probabilities_parallel
        # The row-parallel drivers take no chunk count: prange splits the rows itself.
        if logits.size >= self.parallel_min_elements and logits.shape[0] > 1 and numba.get_num_threads() > 1:
            total = parallel(logits, target, grad)
        else:
            total = serial(logits, target, grad)
        return np.array(total / logits.shape[0], dtype=logits.dtype), grad

    # ------------------------------------------------- dropout and batch norm

    def _dropout_unchecked(self, x: Array, rate: float, seed: int, step: int, layer: int, first: int) -> Array:
        """One Numba pass that draws each block's Philox words and applies them; see :meth:`Backend.dropout`."""
        x = np.ascontiguousarray(x)
        y = np.empty_like(x)
        words = [np.uint64(w) for w in (dropout_threshold(rate), *split_key(seed, step), layer)]
        scale = x.dtype.type(1.0 / (1.0 - rate))
        threshold, seed_lo, seed_hi, step_lo, step_hi, layer_word = words
        layers.dropout_apply(
            x.reshape(-1),
            y.reshape(-1),
            threshold,
            scale,
            seed_lo,
            seed_hi,
            step_lo,
            step_hi,
            layer_word,
            first,
        )
        return y

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
        """Two Numba passes over ``x``: statistics, then ``y``; see :meth:`Backend.batchnorm_forward`."""
        x = np.ascontiguousarray(x)
        y = np.empty_like(x)
        mean, inv_std = np.empty_like(gamma), np.empty_like(gamma)
        layers.batchnorm_forward(x, gamma, beta, running_mean, running_var, y, mean, inv_std, momentum, eps, training)
        return y, mean, inv_std

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
        """Two Numba passes: the sums, then ``dx``; see :meth:`Backend.batchnorm_backward`."""
        x, dy = np.ascontiguousarray(x), np.ascontiguousarray(dy)
        dx = np.empty_like(x) if need_dx else np.empty((0, x.shape[1]), dtype=x.dtype)
        layers.batchnorm_backward(x, dy, gamma, mean, inv_std, dx, dgamma, dbeta, training, need_dx)
        return dx if need_dx else None

    # -------------------------------------------------------------- optimizers

    def _bind_optimizer(
        self, rule: str, param: Array, grad: Array, state: tuple[Array | None, ...], segments: np.ndarray | None
    ) -> Callable[..., None]:
        """The rule's fused kernel (:mod:`fusednn.kernels.cpu.optim`, one serial loop) bound to the buffers.

        Each step casts its scalars to the parameter dtype (flags stay ``bool``), so a float32 model
        computes in float32 and the kernel has one specialisation per dtype.
        """
        kernel: Callable[..., None] = getattr(optim, rule)
        empty = np.empty(0, dtype=param.dtype)  # the kernels take arrays: an unused buffer is empty
        buffers = (param, grad, *(empty if a is None else a for a in state))
        if segments is not None:
            buffers = (*buffers, segments)
        cast = param.dtype.type

        def step(*scalars: float | bool) -> None:
            kernel(*buffers, *[s if s.__class__ is bool else cast(s) for s in scalars])

        return step
