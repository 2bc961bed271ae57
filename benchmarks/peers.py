"""Build one training step of each peer the runner compares: fusednn, NumPy, PyTorch and JAX.

A peer is built in the worker process that times it (see :mod:`benchmarks._worker`),
so only that peer's libraries and thread pools are loaded there. Every peer trains
the same MLP (:class:`~benchmarks.configs.Config`) on one fixed random batch that
already lives on the device, so a step is exactly forward, loss, backward and update:
no data loading and no host transfer.

>>> from benchmarks.configs import CONFIGS
>>> step = build_peer("numpy", CONFIGS["xor"], "cpu")
>>> step.run(); step.sync()
>>> step.info["library"].startswith("numpy")
True
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .configs import Config

PEERS: tuple[str, ...] = (
    "fusednn",
    "fusednn-numpy",
    "numpy",
    "torch",
    "torch-foreach",
    "torch-fused",
    "jax",
)
"""Every peer, in table order. ``fusednn-numpy`` is fusednn's own reference backend (cpu only)."""

LEARNING_RATE = 1e-3
SEED = 0


class PeerUnavailable(RuntimeError):
    """The peer cannot run here (library not installed, or no such device); the message says why."""


@dataclass
class PeerStep:
    """One peer's training step, ready to time.

    ``run()`` queues one step; ``sync()`` waits until the device has finished all
    queued work (a no-op on the CPU), so a timer reads the clock only after it.
    ``info`` names the library, version and threads in use, for the report.
    """

    run: Callable[[], Any]
    sync: Callable[[], None] = lambda: None
    info: dict[str, Any] = field(default_factory=dict)


def make_batch(config: Config) -> tuple[np.ndarray, np.ndarray]:
    """The fixed float32 input batch ``(B, in)`` and int64 labels ``(B,)`` every peer trains on."""
    rng = np.random.default_rng(SEED)
    x = rng.standard_normal((config.batch, config.sizes[0]), dtype=np.float32)
    y = rng.integers(0, config.sizes[-1], config.batch, dtype=np.int64)
    return x, y


def peers_for(device: str) -> tuple[str, ...]:
    """The peers that make sense on ``device``: fusednn's NumPy backend is a host-only peer."""
    return PEERS if device == "cpu" else tuple(peer for peer in PEERS if peer != "fusednn-numpy")


def build_peer(peer: str, config: Config, device: str) -> PeerStep:
    """Build ``peer``'s training step for ``config`` on ``device`` (``"cpu"`` or ``"cuda"``).

    Raises:
        ValueError: ``peer`` is unknown.
        PeerUnavailable: the peer cannot run here.
    """
    builders: dict[str, Callable[[Config, str], PeerStep]] = {
        "fusednn": fusednn_step,
        "fusednn-numpy": lambda c, d: fusednn_step(c, "numpy"),
        "numpy": _numpy,
        "torch": lambda c, d: _torch(c, d, None),
        "torch-foreach": lambda c, d: _torch(c, d, "foreach"),
        "torch-fused": lambda c, d: _torch(c, d, "fused"),
        "jax": _jax,
    }
    if peer not in builders:
        raise ValueError(f"Unknown peer {peer!r}; expected one of {', '.join(PEERS)}")
    return builders[peer](config, device)


def blas_info() -> list[dict[str, Any]]:
    """BLAS/OpenMP libraries loaded in this process with their kernel (corearch) and thread count."""
    from threadpoolctl import threadpool_info

    keys = ("internal_api", "version", "architecture", "num_threads", "threading_layer")
    return [{key: lib.get(key) for key in keys} for lib in threadpool_info()]


def fusednn_step(config: Config, device: str) -> PeerStep:
    """fusednn's training step: ``nn.MLP``, categorical cross-entropy and ``nn.Adam`` on ``device``.

    ``device`` is any fusednn device string (``"numpy"``, ``"cpu"``, ``"cuda"``); the
    pytest-benchmark suite times this same step.
    """
    import fusednn
    from fusednn import nn

    backend = fusednn.backend(device)
    model = nn.MLP(
        list(config.sizes),
        activation=config.activation,
        device=device,
        dtype="float32",
        seed=SEED,
    )
    loss_fn = nn.get_loss("categorical_crossentropy", device=device)
    optimizer = nn.Adam(model.parameters(), lr=LEARNING_RATE)
    x_host, y_host = make_batch(config)
    x, y = backend.asarray(x_host), backend.asindex(y_host)

    def run() -> Any:
        out = model.forward(x)
        loss, dout = loss_fn(out, y)
        model.backward(dout, need_input_grad=False)
        optimizer.step()
        return loss

    info: dict[str, Any] = {
        "library": f"fusednn {fusednn.__version__}",
        "backend": backend.name,
    }
    if backend.kind == "cpu":
        import numba

        info["threads"] = numba.get_num_threads()
        info["numba_threading_layer"] = numba.config.THREADING_LAYER
    return PeerStep(run, backend.synchronize, info)


def _numpy(config: Config, device: str) -> PeerStep:
    from .numpy_mlp import NumpyMLP

    if device == "cuda":
        from fusednn.backends.cuda_runtime import require_device

        xp = require_device(0)
        sync = xp.cuda.get_current_stream().synchronize
        library = f"cupy {xp.__version__}"
    else:
        xp, sync, library = np, (lambda: None), f"numpy {np.__version__}"
    x_host, y_host = make_batch(config)
    mlp = NumpyMLP(config.sizes, config.activation, xp, np.float32, seed=SEED, lr=LEARNING_RATE)
    x, y = xp.asarray(x_host), xp.asarray(y_host)
    return PeerStep(lambda: mlp.train_step(x, y), sync, {"library": library})


def _torch(config: Config, device: str, implementation: str | None) -> PeerStep:
    if importlib.util.find_spec("torch") is None:
        raise PeerUnavailable("PyTorch is not installed")
    import torch

    if device == "cuda" and not torch.cuda.is_available():
        raise PeerUnavailable("PyTorch sees no CUDA device (a CPU-only build, or no GPU)")
    torch.manual_seed(SEED)
    act = {"relu": torch.nn.ReLU, "sigmoid": torch.nn.Sigmoid}[config.activation]
    layers: list[torch.nn.Module] = []
    for i, (n_in, n_out) in enumerate(config.layer_shapes):
        layers.append(torch.nn.Linear(n_in, n_out))
        if i < len(config.layer_shapes) - 1:
            layers.append(act())
    model = torch.nn.Sequential(*layers).to(device)
    options = {None: {}, "foreach": {"foreach": True}, "fused": {"fused": True}}[implementation]
    try:
        optimizer = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE, **options)
    except RuntimeError as error:  # e.g. fused Adam on a device without a fused kernel
        raise PeerUnavailable(f"torch.optim.Adam({implementation}=True) is not supported here: {error}") from error
    loss_fn = torch.nn.CrossEntropyLoss()
    x_host, y_host = make_batch(config)
    x, y = torch.from_numpy(x_host).to(device), torch.from_numpy(y_host).to(device)

    def run() -> Any:
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(model(x), y)
        loss.backward()
        optimizer.step()
        return loss.detach()

    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    info = {
        "library": f"torch {torch.__version__}",
        "adam": implementation or "default",
    }
    if device == "cpu":
        info["threads"] = torch.get_num_threads()
    return PeerStep(run, sync, info)


def _jax(config: Config, device: str) -> PeerStep:
    if importlib.util.find_spec("jax") is None or importlib.util.find_spec("optax") is None:
        raise PeerUnavailable("JAX and optax are not installed")
    import jax
    import jax.numpy as jnp
    import optax

    platform = "gpu" if device == "cuda" else "cpu"
    try:
        target = jax.devices(platform)[0]
    except RuntimeError as error:
        raise PeerUnavailable(f"JAX has no {platform} device: {error}") from error
    act = {"relu": jax.nn.relu, "sigmoid": jax.nn.sigmoid}[config.activation]
    key = jax.random.PRNGKey(SEED)
    params = []
    for n_in, n_out in config.layer_shapes:
        key, k_w, k_b = jax.random.split(key, 3)
        bound = 1.0 / np.sqrt(n_in)
        params.append(
            (
                jax.random.uniform(k_w, (n_in, n_out), jnp.float32, -bound, bound),
                jax.random.uniform(k_b, (n_out,), jnp.float32, -bound, bound),
            )
        )
    params = jax.device_put(params, target)
    tx = optax.adam(LEARNING_RATE)
    x_host, y_host = make_batch(config)
    x, y = jax.device_put(x_host, target), jax.device_put(y_host, target)

    def loss_of(params: Any) -> Any:
        h = x
        for i, (weight, bias) in enumerate(params):
            h = h @ weight + bias
            if i < len(params) - 1:
                h = act(h)
        return optax.softmax_cross_entropy_with_integer_labels(h, y).mean()

    @jax.jit
    def step(params: Any, opt_state: Any) -> Any:
        loss, grads = jax.value_and_grad(loss_of)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    state = {"params": params, "opt": tx.init(params)}

    def run() -> Any:
        state["params"], state["opt"], loss = step(state["params"], state["opt"])
        return loss

    return PeerStep(
        run,
        lambda: jax.block_until_ready(state["params"]),
        {"library": f"jax {jax.__version__}"},
    )
