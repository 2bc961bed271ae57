"""Models: :class:`Sequential` (a stack of layers over one flat parameter buffer) and :class:`MLP`.

One loop (:meth:`Sequential._run`) runs the layers for training, :meth:`Sequential.predict`
and :func:`~fusednn.nn.evaluate`; the model's mode (:meth:`Sequential.train`,
:meth:`Sequential.eval`) tells each layer which it is.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

import fusednn

from ..backends import Backend, resolve_dtype, to_host
from ..backends.base import unmasked
from .layers import Dense, Layer, layer_config, layer_from_config
from .parameters import Parameters
from .validation import check_seed

Array = Any


class Sequential:
    """Layers applied in order, with every parameter in one flat buffer.

    Args:
        layers: :class:`~fusednn.nn.Layer` instances (:class:`Dense`, :class:`~fusednn.nn.Dropout`,
            :class:`~fusednn.nn.BatchNorm` or your own); each one's ``in_features`` must equal the width
            the previous layers output. The first layer that declares ``in_features`` sets the model's.
        device: ``"numpy"``, ``"cpu"``, ``"cuda"``/``"cuda:N"`` or ``None`` for the default device.
        dtype: ``"float32"`` (default) or ``"float64"``.
        seed: seeds the NumPy Generator that draws the initial weights on the host, so one
            seed gives the same weights on every device; ``None`` draws fresh ones.

    >>> import numpy as np
    >>> from fusednn import nn
    >>> model = nn.Sequential([nn.Dense(4, 8, activation="relu"), nn.Dense(8, 3)], device="numpy", seed=0)
    >>> out = model.forward(np.ones((5, 4)))          # (5, 3) device array, kept for backward
    >>> loss, dout = nn.get_loss("mse", device="numpy")(out, np.zeros((5, 3)))
    >>> dx = model.backward(dout)                      # sets every gradient
    >>> [w.shape for w in model.get_gradients()]
    [(4, 8), (8,), (8, 3), (3,)]

    A model starts in training mode (``model.training``): :meth:`forward` uses batch statistics
    and dropout masks; :meth:`eval` switches to evaluation. :func:`~fusednn.nn.fit` trains in
    training mode and validates in evaluation mode; :meth:`predict` and
    :func:`~fusednn.nn.evaluate` always run in evaluation mode. Each leaves the mode as it was.

    Raises:
        ValueError: no layers, consecutive layer sizes disagree, no layer declares an input
            width, or ``seed`` is negative.
        TypeError: a layer is not an :class:`~fusednn.nn.Layer`, or ``seed`` is not an integer or ``None``.
    """

    def __init__(
        self,
        layers: Sequence[Layer],
        device: str | None = None,
        dtype: Any = "float32",
        seed: int | None = None,
    ) -> None:
        seed = check_seed(seed)
        layers = list(layers)
        if not layers:
            raise ValueError("Sequential needs at least one layer")
        for index, layer in enumerate(layers):
            if not isinstance(layer, Layer):
                raise TypeError(f"Layer {index} is a {type(layer).__name__}; expected nn.Dense or another nn.Layer")
            if layer.backend is not None:
                raise ValueError(f"Layer {index} already belongs to a model; build a new nn.{type(layer).__name__}")
        self._widths = _widths(layers)
        self.layers = layers
        self.seed = seed
        #: Epochs completed by :func:`fusednn.nn.fit`; travels in checkpoints so a resumed run continues.
        self.epochs_trained = 0
        #: Whether :meth:`forward` runs the layers in training mode (see :meth:`train`, :meth:`eval`).
        self.training = True
        self.backend: Backend = fusednn.backend(device)
        shapes = [shape for layer in layers for shape in layer.parameter_shapes]
        self._params = Parameters(shapes, self.backend, resolve_dtype(dtype))
        self._buffers = [self._device_buffers(layer.initial_buffers()) for layer in layers]
        self._output_shape: tuple[int, ...] | None = None  # of the last forward kept for backward
        self._bind()
        rng = np.random.default_rng(seed)
        self.set_weights([w for layer in layers for w in layer.initial_values(rng)])

    def _device_buffers(self, values: Sequence[Any]) -> list[Array]:
        return [self.backend.asarray(to_host(value), dtype=self.dtype) for value in values]

    def _bind(self) -> None:
        params, grads = self._params.views(), self._params.grad_views()
        start = 0
        for index, (layer, buffers) in enumerate(zip(self.layers, self._buffers, strict=True)):
            n = len(layer.parameter_shapes)
            layer.bind(self.backend, params[start : start + n], grads[start : start + n], buffers, index)
            start += n
        self._output_shape = None

    def __repr__(self) -> str:
        inner = ", ".join(repr(layer) for layer in self.layers)
        return f"{type(self).__name__}([{inner}], device={self.device!r}, dtype={self.dtype.name!r})"

    # ---------------------------------------------------------------- properties

    @property
    def device(self) -> str:
        """Canonical device string, e.g. ``"cpu"`` or ``"cuda:0"``."""
        return self.backend.name

    @property
    def dtype(self) -> np.dtype:
        """The dtype of every parameter and activation."""
        return self._params.dtype

    @property
    def in_features(self) -> int:
        """Width of the model's input."""
        return self._widths[0]

    @property
    def out_features(self) -> int:
        """Width of the model's output."""
        return self._widths[-1]

    def train(self, mode: bool = True) -> Sequential:
        """Set training mode (``mode=False``: evaluation mode); returns ``self``, as ``torch.nn.Module.train``."""
        if not isinstance(mode, bool):
            raise TypeError(f"train(mode) takes True or False, got {mode!r}")
        self.training = mode
        return self

    def eval(self) -> Sequential:
        """Set evaluation mode: dropout is the identity, batch norm uses its running statistics; returns ``self``."""
        self.training = False
        return self

    def parameters(self) -> Parameters:
        """The flat parameter/gradient buffers; what optimizers take."""
        return self._params

    def count_params(self) -> int:
        """Number of trainable parameters (padding excluded)."""
        return self._params.count

    # ------------------------------------------------------------------ compute

    def _input(self, x: Any) -> Array:
        x = self.backend.asarray(x, dtype=self.dtype, name="x")
        if x.ndim != 2:
            raise ValueError(f"Expected input of shape (N, {self.in_features}), got an array of shape {tuple(x.shape)}")
        if x.shape[1] != self.in_features:
            raise ValueError(
                f"Layer 0 ({type(self.layers[0]).__name__}) expects {self.in_features} input features, got {x.shape[1]}"
            )
        return x

    def _run(self, h: Array, training: bool, keep: bool, first_row: int = 0) -> Array:
        """The one forward loop: every layer on a checked input ``h``, in ``training`` mode or not.

        ``keep=False`` (prediction, evaluation) promises that no backward follows, so layers keep nothing.
        ``first_row`` is the index of ``h``'s first row in the whole batch it is part of (a rank's rows,
        in data-parallel training), so that dropout draws those rows' masks of the whole batch.
        """
        for layer in self.layers:
            h = layer._forward_in_model(h, training, keep, first_row)
        if keep:
            self._output_shape = h.shape
        return h

    def _train_without_rows(self) -> None:
        """The training step of a data-parallel rank that has no rows of a batch: layers count it, nothing runs."""
        for layer in self.layers:
            layer._train_without_rows()
        self._output_shape = None

    def forward(self, x: Any) -> Array:
        """Run every layer on ``x (N, in_features)`` in the model's mode and keep what :meth:`backward` needs.

        ``x`` is a NumPy array or an array of this model's device; it is converted to the
        model's dtype. Returns the output ``(N, out_features)`` on the model's device.

        Raises:
            ValueError: ``x`` is not 2-D, has the wrong number of features, or is a masked
                array with masked entries.
            TypeError: ``x`` does not hold real numbers (complex, objects, strings...).
        """
        return self._run(self._input(x), self.training, True)

    __call__ = forward

    def backward(self, dout: Any, need_input_grad: bool = True) -> Array | None:
        """Backpropagate ``dL/dout`` through the last forward pass.

        Sets (does not accumulate) every gradient in :attr:`Parameters.grad`, including the
        gradient of the L1/L2 penalties. Returns ``dL/dx (N, in_features)``, or ``None`` when
        ``need_input_grad`` is false (which saves the first layer's ``dz W^T`` product).

        Raises:
            RuntimeError: no forward pass since the model was built or moved.
            ValueError: ``dout`` does not have the shape of the last output.
        """
        expected = self._output_shape
        if expected is None:
            raise RuntimeError("backward() called before forward(): run model.forward(x) first")
        grad = self.backend.asarray(dout, dtype=self.dtype, name="dout")
        if tuple(grad.shape) != tuple(expected):
            raise ValueError(f"dout has shape {tuple(grad.shape)}; expected the output's shape {tuple(expected)}")
        last = len(self.layers) - 1
        for index in range(last, -1, -1):
            grad = self.layers[index]._backward_in_model(grad, need_input_grad or index > 0)
        return grad

    def predict(self, x: Any, batch_size: int | None = None) -> np.ndarray:
        """The model's output for ``x`` in evaluation mode as a NumPy array, in batches of ``batch_size`` rows
        (all at once if ``None``).

        Keeps nothing for backward and leaves the model's mode as it was. ``x`` is checked as in :meth:`forward`.
        """
        x = self._input(x)
        n = x.shape[0]
        if batch_size is None:
            batch_size = max(n, 1)
        elif isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer or None, got {batch_size!r}")
        chunks = [
            self.backend.to_numpy(self._run(x[start : start + batch_size], False, False))
            for start in range(0, n, batch_size)
        ]
        if not chunks:
            return np.zeros((0, self.out_features), dtype=self.dtype)
        return np.concatenate(chunks, axis=0)

    def regularization_loss(self) -> Array:
        """Sum of every layer's L1/L2 penalty, a 0-d device array (zero when no layer has one)."""
        total = self.backend.zeros((), self.dtype)
        for layer in self.layers:
            if layer.has_penalty:
                total = total + layer.regularization_loss()
        return total

    # ------------------------------------------------------------------ weights

    def get_weights(self) -> list[np.ndarray]:
        """NumPy copies ``[W1 (in, out), b1 (out,), W2, b2, ...]``."""
        return [np.array(self.backend.to_numpy(v)) for v in self._params.views()]

    def get_gradients(self) -> list[np.ndarray]:
        """NumPy copies of the gradients, laid out as :meth:`get_weights`."""
        return [np.array(self.backend.to_numpy(g)) for g in self._params.grad_views()]

    def set_weights(self, weights: Sequence[Any]) -> None:
        """Copy ``weights`` (laid out as :meth:`get_weights`) into the model, cast to its dtype.

        ``weights`` is a list (or tuple) of arrays ``[W1, b1, W2, b2, ...]``; a dict of
        weights by name, as :meth:`state_dict` returns, goes to :meth:`load_state_dict`.

        Raises:
            ValueError: wrong number of arrays, an array of the wrong shape, or a masked
                array with masked entries.
            TypeError: ``weights`` is not a sequence of arrays, or an array is not floating point.
        """
        shapes = self._params.shapes
        if isinstance(weights, (Mapping, str, bytes, np.ndarray)) or not isinstance(weights, Iterable):
            layout = ", ".join(str(shape) for shape in shapes)
            hint = "; for a dict from state_dict() use load_state_dict()" if isinstance(weights, Mapping) else ""
            raise TypeError(
                f"set_weights takes a list of {len(shapes)} arrays laid out as get_weights() (shapes {layout}), "
                f"got a {type(weights).__name__}{hint}"
            )
        weights = list(weights)
        if len(weights) != len(shapes):
            raise ValueError(f"Expected {len(shapes)} weight arrays, got {len(weights)}")
        checked = []
        for index, (w, shape) in enumerate(zip(weights, shapes, strict=True)):
            w = to_host(unmasked(w, f"Weight {index}"))
            if w.dtype.kind != "f":
                raise TypeError(f"Weight {index} has dtype {w.dtype.name!r}; expected a floating-point array")
            if tuple(w.shape) != shape:
                raise ValueError(f"Weight {index} has shape {tuple(w.shape)}; expected {shape}")
            checked.append(w)
        for view, w in zip(self._params.views(), checked, strict=True):
            view[...] = self.backend.asarray(w, dtype=self.dtype)

    def buffers(self) -> list[Array]:
        """Every layer's non-trainable buffers (a batch norm's running statistics), in layer order, on the device.

        >>> from fusednn import nn
        >>> model = nn.Sequential([nn.Dense(3, 4), nn.BatchNorm(4)], device="numpy")
        >>> [b.shape for b in model.buffers()]
        [(4,), (4,)]
        """
        return [b for layer_buffers in self._buffers for b in layer_buffers]

    def _buffer_names(self) -> list[str]:
        return [f"{i}.{name}" for i, layer in enumerate(self.layers) for name in layer.buffer_names]

    def state_dict(self) -> dict[str, np.ndarray]:
        """Weights, then buffers, by name (``"0.W"``, ``"0.b"``, ``"1.gamma"``, ..., ``"1.running_mean"``) as
        NumPy copies."""
        names = [f"{i}.{name}" for i, layer in enumerate(self.layers) for name in layer.parameter_names]
        state = dict(zip(names, self.get_weights(), strict=True))
        buffers = [np.array(self.backend.to_numpy(b)) for layer_buffers in self._buffers for b in layer_buffers]
        state.update(zip(self._buffer_names(), buffers, strict=True))
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Load weights and buffers saved by :meth:`state_dict`.

        Raises:
            KeyError: a weight or buffer is missing or an unexpected one is present.
            ValueError, TypeError: as :meth:`set_weights`, for weights and buffers alike.
        """
        expected = list(self.state_dict())
        missing = [k for k in expected if k not in state]
        extra = [k for k in state if k not in expected]
        if missing or extra:
            raise KeyError(f"State dict does not match the model: missing {missing}, unexpected {extra}")
        buffer_names = self._buffer_names()
        self.set_weights([state[k] for k in expected if k not in buffer_names])
        flat = [b for layer_buffers in self._buffers for b in layer_buffers]
        values = [
            self._checked_host_array(state[name], name, tuple(b.shape))
            for name, b in zip(buffer_names, flat, strict=True)
        ]
        for buffer, value in zip(flat, values, strict=True):
            buffer[...] = self.backend.asarray(value, dtype=self.dtype)

    @staticmethod
    def _checked_host_array(value: Any, name: str, shape: tuple[int, ...]) -> np.ndarray:
        value = to_host(unmasked(value, name))
        if value.dtype.kind != "f":
            raise TypeError(f"{name} has dtype {value.dtype.name!r}; expected a floating-point array")
        if tuple(value.shape) != shape:
            raise ValueError(f"{name} has shape {tuple(value.shape)}; expected {shape}")
        return value

    def layer_states(self) -> list[dict[str, Any]]:
        """Each layer's host-side counters (:meth:`Layer.state`), e.g. the step that keys dropout masks."""
        return [layer.state() for layer in self.layers]

    def load_layer_states(self, states: Sequence[dict[str, Any]]) -> None:
        """Restore :meth:`layer_states`.

        Raises:
            ValueError: not one state per layer, or a state a layer does not take.
        """
        if not isinstance(states, (list, tuple)) or len(states) != len(self.layers):
            raise ValueError(f"Expected a list of {len(self.layers)} layer states, got {states!r}")
        for layer, state in zip(self.layers, states, strict=True):
            if not isinstance(state, dict):
                raise ValueError(f"A layer state must be a dict, got {state!r}")
            layer.load_state(state)

    # ------------------------------------------------------------ config & move

    def get_config(self) -> dict[str, Any]:
        """The architecture as plain Python values; :meth:`from_config` rebuilds it (weights not included)."""
        return {"layers": [layer_config(layer) for layer in self.layers], "dtype": self.dtype.name, "seed": self.seed}

    @classmethod
    def from_config(cls, config: dict[str, Any], device: str | None = None, dtype: Any = None) -> Sequential:
        """Build a :class:`Sequential` from :meth:`get_config` output; ``dtype=None`` uses the config's.

        Each layer entry is ``{"type": tag, "config": ...}`` of a registered layer
        (:func:`~fusednn.nn.layer_from_config`); entries without a type are :class:`Dense` arguments.

        >>> from fusednn import nn
        >>> m = nn.MLP([2, 3, 1], device="numpy", seed=1)
        >>> nn.Sequential.from_config(m.get_config(), device="numpy").get_weights()[0].shape
        (2, 3)
        """
        layers = [layer_from_config(entry) for entry in config["layers"]]
        return Sequential(
            layers,
            device=device,
            dtype=config.get("dtype", "float32") if dtype is None else dtype,
            seed=config.get("seed"),
        )

    def to(self, device: str) -> Sequential:
        """Move weights and gradients, exactly, to ``device``; returns ``self``.

        Optimizers built on :meth:`parameters` keep working: they move their state on their next step.
        Buffers (running statistics) move with them. When the device changes the forward cache is
        dropped, so run forward again before backward.
        """
        backend = fusednn.backend(device)
        if backend is not self.backend:
            self._params.to(backend)
            host = [[self.backend.to_numpy(b) for b in layer_buffers] for layer_buffers in self._buffers]
            self.backend = backend
            self._buffers = [self._device_buffers(values) for values in host]
            self._bind()
        return self


class MLP(Sequential):
    """A multi-layer perceptron: :class:`Dense` layers of the given sizes.

    Args:
        sizes: ``[in, hidden..., out]``, at least two entries.
        activation: activation of every hidden layer.
        output_activation: activation of the last layer (``None``: identity, i.e. logits).
        l1, l2, init: passed to every layer.
        device, dtype, seed: as :class:`Sequential`.

    >>> from fusednn import nn
    >>> model = nn.MLP([784, 256, 256, 10], activation="relu", device="numpy", seed=0)
    >>> [layer.activation for layer in model.layers]
    ['relu', 'relu', 'identity']

    ``get_config`` describes the layers, so ``Sequential.from_config`` rebuilds an MLP as a Sequential.
    """

    def __init__(
        self,
        sizes: Sequence[int],
        activation: str = "relu",
        output_activation: str | None = None,
        device: str | None = None,
        dtype: Any = "float32",
        seed: int | None = None,
        l1: float = 0.0,
        l2: float = 0.0,
        init: str = "auto",
    ) -> None:
        sizes = list(sizes)
        if len(sizes) < 2:
            raise ValueError(f"MLP sizes need at least an input and an output width, got {sizes}")
        last = len(sizes) - 2
        layers = [
            Dense(n_in, n_out, activation=output_activation if i == last else activation, l1=l1, l2=l2, init=init)
            for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True))
        ]
        super().__init__(layers, device=device, dtype=dtype, seed=seed)


def _widths(layers: Sequence[Layer]) -> list[int]:
    """The width of the model's input and of each layer's output.

    Raises:
        ValueError: no layer declares an input width, or a layer expects another width than it gets.
    """
    first = next((layer.in_features for layer in layers if layer.in_features is not None), None)
    if first is None:
        raise ValueError("Sequential needs a layer that declares its input width (e.g. nn.Dense) to know its input's")
    widths = [first]
    for index, layer in enumerate(layers):
        if layer.in_features is not None and layer.in_features != widths[-1]:
            raise ValueError(
                f"Layer {index} expects {layer.in_features} input features but layer {index - 1} outputs {widths[-1]}"
            )
        widths.append(layer.output_features(widths[-1]))
    return widths
