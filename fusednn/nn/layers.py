"""Layers: :class:`Dense`, a fully connected layer with a fused activation.

A layer owns no memory of its own: its model allocates one flat parameter and
one flat gradient buffer and hands each layer views into them
(:meth:`Dense.bind`). Forward keeps ``(x, z, y)`` for backward; backward
writes ``dW`` and ``db`` in place into the gradient views.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..backends import Backend, check_activation
from .init import initial_weights, resolve_init

Array = Any


def _check_penalty(name: str, value: float) -> float:
    value = float(value)
    if not value >= 0.0:  # also rejects NaN
        raise ValueError(f"Invalid {name} value: {value}; expected a number >= 0")
    return value


class Dense:
    """Fully connected layer ``y = act(x @ W + b)`` with optional L1/L2 weight penalties.

    Args:
        in_features: input width.
        out_features: output width.
        activation: any of :data:`fusednn.ACTIVATIONS`; ``None`` means ``"identity"``.
        l1, l2: Keras-style penalty ``l1 * sum|W| + l2 * sum W^2`` on the weights (not the bias).
        init: ``"auto"`` (He for the relu family, Glorot for sigmoid/tanh/identity,
            LeCun-normal for selu), ``"he"``, ``"glorot"`` or ``"lecun"``. Biases start at zero.

    Shapes: ``x (N, in_features)`` → ``y (N, out_features)``; ``W (in_features, out_features)``
    (the transpose of ``torch.nn.Linear.weight``), ``b (out_features,)``.

    A Dense computes only inside a model, which gives it its parameter views:

    >>> from fusednn import nn
    >>> model = nn.Sequential([nn.Dense(4, 8, activation="relu", l2=1e-4), nn.Dense(8, 2)], device="numpy")
    >>> model.layers[0].W.shape
    (4, 8)

    Raises:
        ValueError: a size is not a positive integer, the activation or init is unknown,
            or a penalty is negative.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        activation: str | None = None,
        l1: float = 0.0,
        l2: float = 0.0,
        init: str = "auto",
    ) -> None:
        for name, value in (("in_features", in_features), ("out_features", out_features)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"Dense {name} must be a positive integer, got {value!r}")
        self.in_features = int(in_features)
        self.out_features = int(out_features)
        self.activation = "identity" if activation is None else activation
        check_activation(self.activation)
        self.l1 = _check_penalty("l1", l1)
        self.l2 = _check_penalty("l2", l2)
        self.init = init
        self._init_name = resolve_init(init, self.activation)
        self.backend: Backend | None = None
        self.W: Array = None
        self.b: Array = None
        self.dW: Array = None
        self.db: Array = None
        self._cache: tuple[Array, Array, Array] | None = None

    def __repr__(self) -> str:
        extra = "".join(f", {k}={v}" for k, v in (("l1", self.l1), ("l2", self.l2)) if v)
        return f"Dense({self.in_features}, {self.out_features}, activation={self.activation!r}{extra})"

    @property
    def parameter_shapes(self) -> list[tuple[int, ...]]:
        """Shapes of this layer's parameters in buffer order: ``[W, b]``."""
        return [(self.in_features, self.out_features), (self.out_features,)]

    @property
    def has_penalty(self) -> bool:
        """Whether the layer adds an L1/L2 term to the loss."""
        return bool(self.l1 or self.l2)

    def bind(self, backend: Backend, params: list[Array], grads: list[Array]) -> None:
        """Point the layer at its parameter and gradient views (``[W, b]`` each); drops the forward cache."""
        self.backend = backend
        self.W, self.b = params
        self.dW, self.db = grads
        self._cache = None

    def initial_values(self, rng: np.random.Generator) -> list[np.ndarray]:
        """Fresh float64 host values ``[W, b]`` drawn with this layer's initialiser."""
        W = initial_weights(self._init_name, self.in_features, self.out_features, rng)
        return [W, np.zeros(self.out_features)]

    def _require_backend(self) -> Backend:
        if self.backend is None:
            raise RuntimeError("This Dense layer has no parameters yet; put it in nn.Sequential([...]) first")
        return self.backend

    def forward(self, x: Array, keep: bool = True) -> Array:
        """``y = act(x @ W + b)``; with ``keep`` the layer remembers ``(x, z, y)`` for :meth:`backward`."""
        y, z = self._require_backend().dense_forward(x, self.W, self.b, self.activation)
        if keep:
            self._cache = (x, z, y)
        return y

    def backward(self, dy: Array, need_input_grad: bool = True) -> Array | None:
        """Write ``dW``, ``db`` (penalty gradient included) in place; return ``dL/dx`` when asked.

        Uses the inputs of the most recent ``forward(..., keep=True)``.

        Raises:
            RuntimeError: no forward pass has been kept since the layer was (re)bound.
        """
        backend = self._require_backend()
        if self._cache is None:
            raise RuntimeError("backward() called before forward(): run forward on a batch first")
        x, z, y = self._cache
        dx = backend.dense_backward(x, self.W, z, y, dy, self.activation, self.dW, self.db, need_dx=need_input_grad)
        if self.has_penalty:
            backend.add_l1_l2_gradient(self.W, self.dW, self.l1, self.l2)
        return dx

    # The two methods below are what the layer's model calls in each training step. The model
    # has checked its input once (a C-contiguous array of this backend in the model's dtype with
    # ``in_features`` columns), each layer's output is the next one's input, ``W``/``b``/``dW``/``db``
    # are views of the model's own buffers and the activation was checked in ``__init__``: all the
    # backend's dense checks would verify, so the layers skip them (most of a small layer's cost).

    def _forward_in_model(self, x: Array, keep: bool) -> Array:
        """:meth:`forward` on an input its model has checked."""
        assert self.backend is not None  # the model bound the layer when it was built
        y, z = self.backend._dense_forward_unchecked(x, self.W, self.b, self.activation)
        if keep:
            self._cache = (x, z, y)
        return y

    def _backward_in_model(self, dy: Array, need_input_grad: bool) -> Array | None:
        """:meth:`backward` on a gradient its model has checked, after a forward pass that kept its inputs."""
        # The model bound the layer and checked that every layer kept a forward pass.
        assert self.backend is not None and self._cache is not None
        x, z, y = self._cache
        backend = self.backend
        dx = backend._dense_backward_unchecked(
            x, self.W, z, y, dy, self.activation, self.dW, self.db, need_dx=need_input_grad
        )
        if self.has_penalty:
            backend.add_l1_l2_gradient(self.W, self.dW, self.l1, self.l2)
        return dx

    def regularization_loss(self) -> Array:
        """The penalty ``l1 * sum|W| + l2 * sum W^2`` as a 0-d device array."""
        return self._require_backend().l1_l2_penalty(self.W, self.l1, self.l2)

    def get_config(self) -> dict[str, Any]:
        """Constructor arguments as plain Python values; ``Dense(**cfg)`` rebuilds the layer."""
        return {
            "in_features": self.in_features,
            "out_features": self.out_features,
            "activation": self.activation,
            "l1": self.l1,
            "l2": self.l2,
            "init": self.init,
        }
