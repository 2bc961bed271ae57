""":class:`BatchNorm`: batch normalisation of dense features, as ``torch.nn.BatchNorm1d``."""

from __future__ import annotations

from typing import Any

import numpy as np

from .layers import Array, Layer, check_features


class BatchNorm(Layer):
    """Batch normalisation over the rows of ``x (N, features)`` with a learned scale and shift.

    .. math::

        y = \\gamma \\frac{x - \\mu}{\\sqrt{\\sigma^2 + \\epsilon}} + \\beta

    In training ``mu`` and ``sigma^2`` are the batch's mean and biased variance, and the running
    statistics follow ``running = (1 - momentum) * running + momentum * batch``, the variance
    unbiased (``* N / (N - 1)``); in evaluation the running statistics normalise. Exactly
    ``torch.nn.BatchNorm1d(features, momentum, eps)`` on 2-D input. ``gamma`` starts at 1,
    ``beta`` at 0, ``running_mean`` at 0 and ``running_var`` at 1.

    Args:
        features: the width ``F`` of the input (and output).
        momentum: weight of the batch statistics in the running ones, in ``[0, 1]``.
        eps: added to the variance, > 0.

    Parameters ``gamma``, ``beta`` ``(F,)``; buffers ``running_mean``, ``running_var`` ``(F,)``,
    saved in checkpoints and :meth:`Sequential.state_dict`. Forward and backward each make two
    passes over the batch on every backend (statistics, then the output; sums, then ``dx``).

    >>> import numpy as np
    >>> from fusednn import nn
    >>> model = nn.Sequential([nn.Dense(3, 4), nn.BatchNorm(4)], device="numpy", seed=0)
    >>> y = model.backend.to_numpy(model.forward(np.arange(12.0).reshape(4, 3)))
    >>> bool(np.allclose(y.mean(axis=0), 0, atol=1e-5))
    True
    >>> sorted(name for name in model.state_dict() if name.startswith("1."))
    ['1.beta', '1.gamma', '1.running_mean', '1.running_var']

    Raises:
        ValueError: ``features`` is not a positive integer, ``momentum`` is outside ``[0, 1]``
            or ``eps`` is not positive; in training, a batch of one row.
    """

    parameter_names = ("gamma", "beta")
    buffer_names = ("running_mean", "running_var")

    def __init__(self, features: int, momentum: float = 0.1, eps: float = 1e-5) -> None:
        super().__init__()
        self.features = check_features("BatchNorm", "features", features)
        self.in_features = self.out_features = self.features
        self.momentum = float(momentum)
        if not 0.0 <= self.momentum <= 1.0:
            raise ValueError(f"BatchNorm momentum must lie in [0, 1], got {momentum!r}")
        self.eps = float(eps)
        if not self.eps > 0.0:
            raise ValueError(f"BatchNorm eps must be > 0, got {eps!r}")
        self.gamma: Array = None
        self.beta: Array = None
        self.dgamma: Array = None
        self.dbeta: Array = None
        self.running_mean: Array = None
        self.running_var: Array = None
        self._cache: tuple[Array, Array, Array, bool] | None = None

    def __repr__(self) -> str:
        return f"BatchNorm({self.features}, momentum={self.momentum}, eps={self.eps})"

    @property
    def parameter_shapes(self) -> list[tuple[int, ...]]:
        """``[gamma, beta]``, each ``(features,)``."""
        return [(self.features,), (self.features,)]

    @property
    def buffer_shapes(self) -> list[tuple[int, ...]]:
        """``[running_mean, running_var]``, each ``(features,)``."""
        return [(self.features,), (self.features,)]

    def initial_values(self, rng: np.random.Generator) -> list[np.ndarray]:
        """``[gamma = 1, beta = 0]``; draws nothing from ``rng``."""
        return [np.ones(self.features), np.zeros(self.features)]

    def initial_buffers(self) -> list[np.ndarray]:
        """``[running_mean = 0, running_var = 1]``."""
        return [np.zeros(self.features), np.ones(self.features)]

    def _drop_cache(self) -> None:
        self._cache = None

    def _normalise(self, x: Array, training: bool, keep: bool) -> Array:
        backend = self._require_backend()
        y, mean, inv_std = backend.batchnorm_forward(
            x, self.gamma, self.beta, self.running_mean, self.running_var, self.momentum, self.eps, training
        )
        if keep:
            self._cache = (x, mean, inv_std, training)
        return y

    def forward(self, x: Array, training: bool = True) -> Array:
        """Normalise ``x (N, features)`` with the batch's statistics (training, which updates the running
        ones) or the running ones (evaluation); keeps what :meth:`backward` needs."""
        return self._normalise(x, training, keep=True)

    def _forward_in_model(self, x: Array, training: bool, keep: bool, first_row: int = 0) -> Array:
        return self._normalise(x, training, keep)  # its rows' own statistics: where they start does not enter

    def backward(self, dy: Array, need_input_grad: bool = True) -> Array | None:
        """Set ``dgamma``, ``dbeta``; return ``dL/dx`` when asked (see :meth:`fusednn.Backend.batchnorm_backward`).

        Raises:
            RuntimeError: no forward pass since the layer was (re)bound.
        """
        backend = self._require_backend()
        if self._cache is None:
            raise RuntimeError("backward() called before forward(): run forward on a batch first")
        x, mean, inv_std, training = self._cache
        return backend.batchnorm_backward(
            x, dy, self.gamma, mean, inv_std, self.dgamma, self.dbeta, training, need_dx=need_input_grad
        )

    def get_config(self) -> dict[str, Any]:
        """Constructor arguments; ``BatchNorm(**cfg)`` rebuilds the layer."""
        return {"features": self.features, "momentum": self.momentum, "eps": self.eps}
