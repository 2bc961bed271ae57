"""One flat parameter buffer and one flat gradient buffer per model.

Every parameter is a reshaped view into :attr:`Parameters.data` at an offset
that is a multiple of :data:`ALIGNMENT` elements, and its gradient the view at
the same offset of :attr:`Parameters.grad`. Optimizers therefore update the
whole model with one backend call, and the padding between views stays zero
(zero parameter, zero gradient: every supported optimizer leaves it at zero).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..backends import Backend, resolve_dtype

ALIGNMENT = 32
"""Views start at multiples of this many elements (128 bytes in float32), so kernels see aligned rows."""


def _aligned(n: int) -> int:
    return -(-n // ALIGNMENT) * ALIGNMENT


class Parameters:
    """Flat parameter and gradient buffers, and the layout of the views into them.

    Args:
        shapes: the shape of each parameter, in order.
        backend: the backend that owns the buffers.
        dtype: ``"float32"`` or ``"float64"``.

    Attributes:
        data: flat parameters, shape ``(size,)``, padding included.
        grad: flat gradients, same shape and dtype.
        backend: the :class:`~fusednn.Backend` holding ``data`` and ``grad``.
        dtype: the NumPy dtype of both buffers.
        shapes: the parameter shapes; ``offsets`` their start in the flat buffers.

    Gradient accumulation can add into a buffer of its own and copy back::

        acc = params.backend.zeros(params.size, params.dtype)
        acc += params.grad            # after each micro-batch's backward
        params.grad[...] = acc        # before opt.step()

    >>> import fusednn
    >>> p = Parameters([(3, 2), (2,)], fusednn.backend("numpy"), "float64")
    >>> p.offsets, p.size, p.count
    ([0, 32], 64, 8)
    """

    def __init__(self, shapes: Sequence[tuple[int, ...]], backend: Backend, dtype: Any) -> None:
        self.shapes: list[tuple[int, ...]] = [tuple(int(d) for d in s) for s in shapes]
        self.offsets: list[int] = []
        end = 0
        for shape in self.shapes:
            self.offsets.append(end)
            end += _aligned(int(np.prod(shape)))
        self.dtype = resolve_dtype(dtype)
        self.backend = backend
        self.data = backend.zeros(end, self.dtype)
        self.grad = backend.zeros(end, self.dtype)

    def __repr__(self) -> str:
        return f"<Parameters count={self.count} size={self.size} dtype={self.dtype.name} device={self.backend.name}>"

    @property
    def size(self) -> int:
        """Length of the flat buffers, padding included."""
        return int(self.data.shape[0])

    @property
    def count(self) -> int:
        """Number of real parameters (padding excluded)."""
        return sum(int(np.prod(shape)) for shape in self.shapes)

    def _views(self, flat: Any) -> list[Any]:
        return [
            flat[offset : offset + int(np.prod(shape))].reshape(shape)
            for offset, shape in zip(self.offsets, self.shapes, strict=True)
        ]

    def views(self) -> list[Any]:
        """Each parameter as a view into :attr:`data` (writing to a view writes the buffer)."""
        return self._views(self.data)

    def grad_views(self) -> list[Any]:
        """Each gradient as a view into :attr:`grad`."""
        return self._views(self.grad)

    def zero_grad(self) -> None:
        """Set every gradient to zero."""
        self.grad[...] = 0

    def to(self, backend: Backend) -> Parameters:
        """Move both buffers, exactly, to ``backend`` in place and return ``self``.

        Views taken before the move still point at the old buffers: take them again.
        """
        if backend is not self.backend:
            data, grad = self.backend.to_numpy(self.data), self.backend.to_numpy(self.grad)
            self.data = backend.asarray(data, dtype=self.dtype)
            self.grad = backend.asarray(grad, dtype=self.dtype)
            self.backend = backend
        return self
