"""A plain array-library MLP with hand-written forward, backward and Adam: the NumPy peer of the benchmarks.

It is deliberately independent of fusednn (it imports nothing from it), so the
comparison says what careful NumPy code achieves, not what fusednn's own
reference backend does. The code only calls the array module ``xp`` it is
given, so the same class runs on CuPy as the same-device peer on a GPU.

Like fusednn it keeps every parameter in one flat buffer (and every gradient
in another) so Adam is a handful of whole-buffer operations, not a loop over
layers; that is how a NumPy user would write a fast optimiser.

>>> import numpy as np
>>> mlp = NumpyMLP((2, 3, 2), "sigmoid", np, np.float32, seed=0)
>>> x = np.zeros((4, 2), np.float32); y = np.array([0, 1, 1, 0])
>>> loss = mlp.train_step(x, y)
>>> float(loss) > 0
True
"""

from __future__ import annotations

import math
from types import ModuleType
from typing import Any

import numpy as np

HIDDEN_ACTIVATIONS = ("relu", "sigmoid")
"""Hidden activations the peer implements: the ones the standard configurations use."""


class NumpyMLP:
    """An MLP ``sizes[0] -> ... -> sizes[-1]`` with a linear output, softmax cross-entropy and Adam.

    Weights start He/Xavier-uniform (``U(-1/sqrt(in), 1/sqrt(in))``, PyTorch's
    ``nn.Linear`` default) from ``numpy.random.default_rng(seed)``, or are copied from
    ``weights`` (``[W1 (in, out), b1, W2, b2, ...]``) when given. Adam follows
    ``torch.optim.Adam`` with its defaults (``betas=(0.9, 0.999)``, ``eps=1e-8``).

    Raises:
        ValueError: fewer than two sizes, an activation other than relu/sigmoid, or
            ``weights`` that do not hold the parameters of ``sizes``.
    """

    def __init__(
        self,
        sizes: tuple[int, ...],
        activation: str,
        xp: ModuleType,
        dtype: Any,
        seed: int = 0,
        lr: float = 1e-3,
        weights: list[np.ndarray] | None = None,
    ) -> None:
        if len(sizes) < 2:
            raise ValueError(f"An MLP needs at least an input and an output size, got {sizes!r}")
        if activation not in HIDDEN_ACTIVATIONS:
            raise ValueError(f"Unknown hidden activation {activation!r}; expected one of {HIDDEN_ACTIVATIONS}")
        self.xp, self.dtype, self.activation, self.lr = (
            xp,
            np.dtype(dtype),
            activation,
            lr,
        )
        self.beta1, self.beta2, self.eps = 0.9, 0.999, 1e-8
        shapes = list(zip(sizes[:-1], sizes[1:], strict=False))
        total = sum(n_in * n_out + n_out for n_in, n_out in shapes)
        if weights is None:
            rng = np.random.default_rng(seed)
            host = np.empty(total, dtype=self.dtype)
            offset = 0
            for n_in, n_out in shapes:
                count = n_in * n_out + n_out
                host[offset : offset + count] = rng.uniform(-1, 1, count) / math.sqrt(n_in)
                offset += count
        else:
            host = np.concatenate([np.ravel(w) for w in weights]).astype(self.dtype)
            if host.size != total:
                raise ValueError(f"weights hold {host.size} values; sizes {sizes} need {total}")
        self.params = xp.asarray(host)
        self.grads = xp.zeros_like(self.params)
        self.exp_avg = xp.zeros_like(self.params)
        self.exp_avg_sq = xp.zeros_like(self.params)
        self.layers = self._views(self.params, shapes)
        self.grad_layers = self._views(self.grads, shapes)
        self.step_count = 0

    @staticmethod
    def _views(flat: Any, shapes: list[tuple[int, int]]) -> list[tuple[Any, Any]]:
        """``(W, b)`` views into ``flat``: ``W (in, out)`` then ``b (out,)`` for each layer."""
        views, offset = [], 0
        for n_in, n_out in shapes:
            weight = flat[offset : offset + n_in * n_out].reshape(n_in, n_out)
            offset += n_in * n_out
            views.append((weight, flat[offset : offset + n_out]))
            offset += n_out
        return views

    def _act(self, z: Any) -> Any:
        xp = self.xp
        if self.activation == "relu":
            return xp.maximum(z, 0, out=z)
        # sigmoid(z) = 0.5 * (1 + tanh(z / 2)) never overflows.
        z *= 0.5
        xp.tanh(z, out=z)
        z += 1
        z *= 0.5
        return z

    def _act_grad(self, h: Any, dh: Any) -> Any:
        """``dh * act'(z)`` from the activation's output ``h`` (both activations allow it)."""
        if self.activation == "relu":
            dh *= h > 0
        else:
            dh *= h * (1 - h)
        return dh

    def train_step(self, x: Any, y: Any) -> Any:
        """Forward, softmax cross-entropy (mean over the batch), backward and one Adam step.

        ``x (B, sizes[0])`` of the model's dtype, ``y (B,)`` integer labels.
        Returns the loss as a 0-d array (no device synchronisation).
        """
        xp = self.xp
        inputs = [x]
        h = x
        for i, (weight, bias) in enumerate(self.layers):
            z = h @ weight
            z += bias
            h = z if i == len(self.layers) - 1 else self._act(z)
            inputs.append(h)
        logits = inputs.pop()
        n = logits.shape[0]
        logits -= logits.max(axis=1, keepdims=True)
        exp = xp.exp(logits)
        total = exp.sum(axis=1, keepdims=True)
        rows = xp.arange(n)
        loss = (xp.log(total[:, 0]) - logits[rows, y]).mean()
        dz = exp
        dz /= total
        dz[rows, y] -= 1
        dz *= 1.0 / n
        for i in range(len(self.layers) - 1, -1, -1):
            weight, _ = self.layers[i]
            d_weight, d_bias = self.grad_layers[i]
            h_in = inputs[i]
            xp.matmul(h_in.T, dz, out=d_weight)
            dz.sum(axis=0, out=d_bias)
            if i:
                dz = self._act_grad(h_in, dz @ weight.T)
        self._adam()
        return loss

    def _adam(self) -> None:
        """``torch.optim.Adam`` over the flat buffers; bias corrections on the host in float64."""
        xp, g = self.xp, self.grads
        self.step_count += 1
        step_size = self.lr / (1 - self.beta1**self.step_count)
        bias_correction2_sqrt = math.sqrt(1 - self.beta2**self.step_count)
        self.exp_avg *= self.beta1
        self.exp_avg += (1 - self.beta1) * g
        self.exp_avg_sq *= self.beta2
        g *= g
        g *= 1 - self.beta2
        self.exp_avg_sq += g
        # Reuse the gradient buffer for the denominator: it is rewritten next step.
        denom = xp.sqrt(self.exp_avg_sq, out=g)
        denom *= 1 / bias_correction2_sqrt
        denom += self.eps
        xp.divide(self.exp_avg, denom, out=denom)
        denom *= step_size
        self.params -= denom
