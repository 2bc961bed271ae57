"""The layer protocol (:class:`Layer`), its registry, and :class:`Dense`, a fully connected layer.

A layer owns no memory of its own: its model allocates one flat parameter and one
flat gradient buffer, plus one array per non-trainable buffer, and hands each layer
views into them (:meth:`Layer.bind`). Forward keeps what backward needs; backward
writes the parameter gradients in place into the gradient views.

Every subclass of :class:`Layer` registers itself under its class name (or the
``tag`` it passes), so :func:`layer_from_config` and :func:`fusednn.nn.load` rebuild
it from the ``{"type": tag, "config": get_config()}`` entry a model's config holds.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np

from ..backends import Backend, check_activation
from .init import initial_weights, resolve_init

Array = Any

LAYERS: dict[str, type[Layer]] = {}
"""Every layer class by its type tag: what :func:`layer_from_config` can rebuild."""


def _check_penalty(name: str, value: float) -> float:
    value = float(value)
    if not value >= 0.0:  # also rejects NaN
        raise ValueError(f"Invalid {name} value: {value}; expected a number >= 0")
    return value


def check_features(owner: str, name: str, value: Any) -> int:
    """``value`` as an int if it is a positive integer; else a ValueError naming ``owner``'s argument ``name``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{owner} {name} must be a positive integer, got {value!r}")
    return int(value)


class Layer:
    """The protocol every layer of a :class:`~fusednn.nn.Sequential` implements, and its base class.

    A layer declares:

    * its trainable parameters: :attr:`parameter_names` with :attr:`parameter_shapes`, drawn
      by :meth:`initial_values`. The model binds each parameter ``P`` to the attribute ``P``
      and its gradient to ``dP`` (views of the model's flat buffers, never to be rebound);
    * its non-trainable buffers (running statistics, ...): :attr:`buffer_names` with
      :attr:`buffer_shapes` and :meth:`initial_buffers`, bound to attributes of those names.
      Buffers are saved in checkpoints and in :meth:`Sequential.state_dict`, but no optimizer
      updates them;
    * ``forward(x, training)`` and ``backward(dy, need_input_grad)``: forward keeps what
      backward needs; ``training`` is the model's mode (:meth:`Sequential.train` /
      :meth:`Sequential.eval`), which :func:`~fusednn.nn.fit`, :func:`~fusednn.nn.evaluate`
      and :meth:`Sequential.predict` set; backward sets (does not accumulate) the gradients;
    * its widths: ``in_features``/``out_features``, or ``None`` for a layer that keeps any
      width (:meth:`output_features`);
    * :meth:`get_config`, the constructor's arguments, and its type tag: the class name, or
      ``tag`` in ``class MyLayer(nn.Layer, tag="my_layer")``. Subclassing registers it.

    A layer of your own needs only public backend operations (``self.backend``):

    >>> import numpy as np
    >>> from fusednn import nn
    >>> class Scale(nn.Layer):
    ...     parameter_names = ("s",)
    ...     def __init__(self, features):
    ...         super().__init__()
    ...         self.in_features = self.out_features = features
    ...     @property
    ...     def parameter_shapes(self):
    ...         return [(self.out_features,)]
    ...     def initial_values(self, rng):
    ...         return [np.ones(self.out_features)]
    ...     def forward(self, x, training=True):
    ...         self._x = x
    ...         return x * self.s
    ...     def backward(self, dy, need_input_grad=True):
    ...         self.ds[...] = (dy * self._x).sum(axis=0)
    ...         return dy * self.s if need_input_grad else None
    ...     def get_config(self):
    ...         return {"features": self.out_features}
    >>> model = nn.Sequential([nn.Dense(3, 2), Scale(2)], device="numpy", seed=0)
    >>> model.get_config()["layers"][1]
    {'type': 'Scale', 'config': {'features': 2}}
    >>> model.predict(np.ones((4, 3))).shape
    (4, 2)

    :meth:`_forward_in_model` and :meth:`_backward_in_model` are the model's trusted entry
    points: the model has checked its input once (a C-contiguous array of its backend and
    dtype with the layer's input width) and calls backward only after a forward. They call
    :meth:`forward`/:meth:`backward`; a built-in layer may override them to skip the
    backend's per-call checks (:class:`Dense` does), which is most of a small layer's cost.
    The model also tells :meth:`_forward_in_model` where its input starts in the whole batch
    (``first_row``): a layer whose output depends on a row's index in the batch reads it
    (:class:`~fusednn.nn.Dropout`'s masks), the others ignore it, and :meth:`forward` never sees it.
    """

    tag: ClassVar[str] = "Layer"
    """This class's type tag in model configs."""
    parameter_names: ClassVar[tuple[str, ...]] = ()
    """Names of the trainable parameters, in buffer order."""
    buffer_names: ClassVar[tuple[str, ...]] = ()
    """Names of the non-trainable buffers."""
    has_penalty: bool = False
    """Whether the layer adds a term to the loss (:meth:`regularization_loss`)."""

    def __init_subclass__(cls, tag: str | None = None, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        register_layer(cls, tag or cls.__name__)

    def __init__(self) -> None:
        self.in_features: int | None = None
        self.out_features: int | None = None
        self.backend: Backend | None = None
        #: The layer's position in its model (keys dropout masks).
        self.index = 0

    @property
    def parameter_shapes(self) -> list[tuple[int, ...]]:
        """Shapes of the parameters, in the order of :attr:`parameter_names`."""
        return []

    @property
    def buffer_shapes(self) -> list[tuple[int, ...]]:
        """Shapes of the buffers, in the order of :attr:`buffer_names`."""
        return []

    def initial_values(self, rng: np.random.Generator) -> list[np.ndarray]:
        """Fresh float64 host values of the parameters, drawn from ``rng``."""
        return []

    def initial_buffers(self) -> list[np.ndarray]:
        """Initial float64 host values of the buffers."""
        return []

    def output_features(self, in_features: int) -> int:
        """The output width for an input ``in_features`` wide.

        Raises:
            ValueError: the layer declares another input width.
        """
        if self.in_features is not None and in_features != self.in_features:
            raise ValueError(f"expects {self.in_features} input features, got {in_features}")
        return in_features if self.out_features is None else self.out_features

    def bind(
        self,
        backend: Backend,
        params: Sequence[Array],
        grads: Sequence[Array],
        buffers: Sequence[Array] = (),
        index: int = 0,
    ) -> None:
        """Point the layer at its parameter, gradient and buffer views; drops anything kept by forward."""
        self.backend = backend
        self.index = index
        for name, param, grad in zip(self.parameter_names, params, grads, strict=True):
            setattr(self, name, param)
            setattr(self, f"d{name}", grad)
        for name, buffer in zip(self.buffer_names, buffers, strict=True):
            setattr(self, name, buffer)
        self._drop_cache()

    def _drop_cache(self) -> None:
        """Forget what forward kept (the model rebinds the layer on another device)."""

    def _require_backend(self) -> Backend:
        if self.backend is None:
            raise RuntimeError(
                f"This {type(self).__name__} layer has no parameters yet; put it in nn.Sequential([...]) first"
            )
        return self.backend

    def forward(self, x: Array, training: bool = True) -> Array:
        """The layer's output for ``x``; keeps what :meth:`backward` needs."""
        raise NotImplementedError(f"{type(self).__name__} must implement forward(x, training)")

    def backward(self, dy: Array, need_input_grad: bool = True) -> Array | None:
        """Set the parameter gradients from ``dy``; return ``dL/dx`` when ``need_input_grad``."""
        raise NotImplementedError(f"{type(self).__name__} must implement backward(dy, need_input_grad)")

    def _forward_in_model(self, x: Array, training: bool, keep: bool, first_row: int = 0) -> Array:
        """:meth:`forward` on an input its model has checked; ``keep=False`` promises no backward follows.

        ``first_row`` is the index of ``x``'s first row in the whole batch it is part of: data-parallel
        training runs each rank's rows of a batch as a batch of their own, so a layer that computes
        a row from its index needs it to give those rows what the whole batch would.
        """
        return self.forward(x, training)

    def _backward_in_model(self, dy: Array, need_input_grad: bool) -> Array | None:
        """:meth:`backward` after a forward of its model."""
        return self.backward(dy, need_input_grad)

    def _train_without_rows(self) -> None:
        """A training step in which the model saw none of the batch's rows (a data-parallel rank's share of
        a short last batch): a layer that counts its steps counts this one, so it stays in step with the
        other ranks. Nothing else happens: no forward ran, and no backward follows."""

    def regularization_loss(self) -> Array:
        """The layer's penalty as a 0-d device array; the model calls it only when :attr:`has_penalty`."""
        raise NotImplementedError(f"{type(self).__name__} has a penalty, so it must implement regularization_loss()")

    def state(self) -> dict[str, int]:
        """Host-side counters that checkpoints carry (e.g. the step that keys dropout masks); ``{}`` for most."""
        return {}

    def load_state(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state`.

        Raises:
            ValueError: ``state`` holds keys this layer does not have.
        """
        if state:
            raise ValueError(f"{type(self).__name__} keeps no state, got {sorted(state)}")

    def get_config(self) -> dict[str, Any]:
        """Constructor arguments as plain Python values; ``type(layer)(**cfg)`` rebuilds the layer."""
        raise NotImplementedError(f"{type(self).__name__} must implement get_config()")


def register_layer(cls: type[Layer], tag: str) -> None:
    """Register ``cls`` under ``tag`` for :func:`layer_from_config` (subclassing :class:`Layer` does this).

    Defining a class again under its tag (a re-run notebook cell, a subclass of the same name)
    replaces the earlier one; fusednn's own tags belong to fusednn.

    Raises:
        TypeError: ``tag`` is not a non-empty string, or names one of fusednn's layers.
    """
    if not isinstance(tag, str) or not tag:
        raise TypeError(f"A layer's tag must be a non-empty string, got {tag!r}")
    taken = LAYERS.get(tag)
    if taken is not None and taken.__module__.startswith("fusednn.") and not cls.__module__.startswith("fusednn."):
        raise TypeError(
            f"Layer tag {tag!r} belongs to {taken.__module__}.{taken.__qualname__}; "
            f"pass another one: class {cls.__name__}(nn.Layer, tag='...')"
        )
    cls.tag = tag
    LAYERS[tag] = cls


def layer_config(layer: Layer) -> dict[str, Any]:
    """The entry of ``layer`` in a model's config: ``{"type": its tag, "config": layer.get_config()}``."""
    return {"type": type(layer).tag, "config": layer.get_config()}


def layer_from_config(entry: dict[str, Any]) -> Layer:
    """Rebuild a layer from :func:`layer_config` output; an entry without ``"type"`` (checkpoints before
    layer types) is a :class:`Dense`'s constructor arguments.

    >>> from fusednn import nn
    >>> nn.layer_from_config({"type": "Dropout", "config": {"rate": 0.5, "seed": 0}})
    Dropout(rate=0.5, seed=0)

    Raises:
        ValueError: the type is not registered (the message lists those that are).
        TypeError: ``entry`` is not a dict, or its config does not fit the constructor.
    """
    if not isinstance(entry, dict):
        raise TypeError(f"A layer's config must be a dict, got {type(entry).__name__}")
    if "type" not in entry:
        return Dense(**entry)
    tag = entry["type"]
    cls = LAYERS.get(tag) if isinstance(tag, str) else None
    if cls is None:
        raise ValueError(f"Unknown layer type {tag!r}; registered: {', '.join(sorted(LAYERS))}")
    return cls(**entry.get("config", {}))


class Dense(Layer):
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

    parameter_names = ("W", "b")

    def __init__(
        self,
        in_features: int,
        out_features: int,
        activation: str | None = None,
        l1: float = 0.0,
        l2: float = 0.0,
        init: str = "auto",
    ) -> None:
        super().__init__()
        self.in_features: int = check_features("Dense", "in_features", in_features)
        self.out_features: int = check_features("Dense", "out_features", out_features)
        self.activation = "identity" if activation is None else activation
        check_activation(self.activation)
        self.l1 = _check_penalty("l1", l1)
        self.l2 = _check_penalty("l2", l2)
        self.init = init
        self._init_name = resolve_init(init, self.activation)
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
    def has_penalty(self) -> bool:  # type: ignore[override]  # a property over the base's class attribute
        """Whether the layer adds an L1/L2 term to the loss."""
        return bool(self.l1 or self.l2)

    def _drop_cache(self) -> None:
        self._cache = None

    def bind(
        self,
        backend: Backend,
        params: Sequence[Array],
        grads: Sequence[Array],
        buffers: Sequence[Array] = (),
        index: int = 0,
    ) -> None:
        """As :meth:`Layer.bind`, and fetch the backend's trusted dense paths once for the training steps."""
        super().bind(backend, params, grads, buffers, index)
        self._dense_forward = backend.trusted("dense_forward")
        self._dense_backward = backend.trusted("dense_backward")

    def initial_values(self, rng: np.random.Generator) -> list[np.ndarray]:
        """Fresh float64 host values ``[W, b]`` drawn with this layer's initialiser."""
        W = initial_weights(self._init_name, self.in_features, self.out_features, rng)
        return [W, np.zeros(self.out_features)]

    def forward(self, x: Array, training: bool = True) -> Array:
        """``y = act(x @ W + b)``, in either mode; remembers ``(x, z, y)`` for :meth:`backward`."""
        y, z = self._require_backend().dense_forward(x, self.W, self.b, self.activation)
        self._cache = (x, z, y)
        return y

    def backward(self, dy: Array, need_input_grad: bool = True) -> Array | None:
        """Write ``dW``, ``db`` (penalty gradient included) in place; return ``dL/dx`` when asked.

        Uses the inputs of the most recent :meth:`forward`.

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

    def _forward_in_model(self, x: Array, training: bool, keep: bool, first_row: int = 0) -> Array:
        """:meth:`forward` on an input its model has checked, through the backend's trusted path.

        The model's checked input, the model's own parameter views and the activation checked in
        ``__init__`` meet every guarantee of :meth:`~fusednn.backends.Backend.trusted`.
        """
        assert self.backend is not None  # the model bound the layer when it was built
        y, z = self._dense_forward(x, self.W, self.b, self.activation)
        if keep:
            self._cache = (x, z, y)
        return y

    def _backward_in_model(self, dy: Array, need_input_grad: bool) -> Array | None:
        """:meth:`backward` on a gradient its model has checked, after a forward pass that kept its inputs,
        through the backend's trusted path (the gradient views are the model's own C-contiguous buffers)."""
        # The model bound the layer and checked that a forward pass was kept.
        assert self.backend is not None and self._cache is not None
        x, z, y = self._cache
        backend = self.backend
        dx = self._dense_backward(x, self.W, z, y, dy, self.activation, self.dW, self.db, need_input_grad)
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
