"""Build each peer the runner compares: fusednn, NumPy, PyTorch and JAX, in either measurement mode.

A peer is built in the worker process that times it (see :mod:`benchmarks._worker`),
so only that peer's libraries and thread pools are loaded there. Every peer trains
the same MLP (:class:`~benchmarks.configs.Config`) from the same initial weights
(:func:`initial_weights`) on data that already lives on the device, so the peers
compute the same training and differ only in how fast they do it:

* ``step`` mode: one step (forward, loss, backward, update) on one fixed batch;
* ``fit`` mode: a whole epoch of :attr:`Workload.steps` steps, each batch gathered
  on the device from the epoch's permutation ``default_rng([SEED, epoch])``, the
  order ``nn.fit`` draws; fusednn runs ``nn.fit`` itself, every other peer the loop
  its users would write (:mod:`benchmarks.peer_torch`, :mod:`benchmarks.peer_jax`).

>>> from benchmarks.configs import CONFIGS
>>> step = build_peer("numpy", Workload(CONFIGS["xor"]), "cpu")
>>> loss = step.run(); step.sync()
>>> step.info["library"].startswith("numpy")
True
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .configs import MODES, Config

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

TORCH_PEERS: tuple[str, ...] = ("torch", "torch-foreach", "torch-fused")
"""PyTorch eager with each of its Adam implementations (default, ``foreach=True``, ``fused=True``)."""

LEARNING_RATE = 1e-3
SEED = 0


class PeerUnavailable(RuntimeError):
    """The peer cannot run here (library not installed, or no such device); the message says why."""


@dataclass(frozen=True)
class Workload:
    """What a peer is timed on: a configuration, the mode, and in ``fit`` mode the steps of one epoch.

    ``steps`` is the number of training steps one :meth:`PeerStep.run` performs:
    always 1 in ``step`` mode, the epoch length in ``fit`` mode (whose data set has
    exactly ``steps * batch`` rows, so no epoch ends in a partial batch).

    Raises:
        ValueError: an unknown mode, or ``steps`` other than 1 in ``step`` mode.
    """

    config: Config
    mode: str = "step"
    steps: int = 1

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"Unknown mode {self.mode!r}; expected one of {', '.join(MODES)}")
        if self.steps < 1 or (self.mode == "step" and self.steps != 1):
            raise ValueError(f"A {self.mode}-mode workload runs 1 step per call, not {self.steps}")

    @property
    def rows(self) -> int:
        """Rows of the data set the peer holds: one batch in ``step`` mode, an epoch's in ``fit`` mode."""
        return self.config.batch * self.steps

    def data(self) -> tuple[np.ndarray, np.ndarray]:
        """Float32 inputs ``(rows, in)`` and int64 labels ``(rows,)``, the same for every peer."""
        rng = np.random.default_rng(SEED)
        x = rng.standard_normal((self.rows, self.config.sizes[0]), dtype=np.float32)
        y = rng.integers(0, self.config.sizes[-1], self.rows, dtype=np.int64)
        return x, y


def make_batch(config: Config) -> tuple[np.ndarray, np.ndarray]:
    """The fixed float32 input batch ``(B, in)`` and int64 labels ``(B,)`` of ``step`` mode."""
    return Workload(config).data()


def epoch_order(epoch: int, rows: int) -> np.ndarray:
    """The order in which epoch ``epoch`` (from 0) visits ``rows`` rows: ``nn.fit``'s permutation for ``SEED``."""
    return np.random.default_rng([SEED, epoch]).permutation(rows)


def initial_weights(config: Config) -> list[np.ndarray]:
    """``[W1 (in, out), b1 (out,), W2, b2, ...]`` in float32, PyTorch's ``nn.Linear`` range ``U(±1/sqrt(in))``.

    Every peer starts from these, so their losses agree step by step.
    """
    rng = np.random.default_rng(SEED + 1)
    weights = []
    for n_in, n_out in config.layer_shapes:
        bound = 1.0 / np.sqrt(n_in)
        weights.append(rng.uniform(-bound, bound, (n_in, n_out)).astype(np.float32))
        weights.append(rng.uniform(-bound, bound, n_out).astype(np.float32))
    return weights


@dataclass
class PeerStep:
    """One peer's unit of work, ready to time.

    ``run()`` queues ``steps`` training steps (one, or a whole epoch in ``fit`` mode)
    and returns the loss: of the step, or the epoch's mean as a Python float (read
    from the device once per epoch, as ``nn.fit`` does). ``sync()`` waits until the
    device has finished all queued work (a no-op on the CPU), so a timer reads the
    clock only after it. ``info`` names the library, version and threads in use.
    """

    run: Callable[[], Any]
    sync: Callable[[], None] = lambda: None
    info: dict[str, Any] = field(default_factory=dict)
    steps: int = 1


def peers_for(device: str) -> tuple[str, ...]:
    """The peers that make sense on ``device``: fusednn's NumPy backend is a host-only peer."""
    return PEERS if device == "cpu" else tuple(peer for peer in PEERS if peer != "fusednn-numpy")


def build_peer(peer: str, workload: Workload | Config, device: str) -> PeerStep:
    """Build ``peer``'s unit of work for ``workload`` (a bare config means ``step`` mode) on ``cpu`` or ``cuda``.

    Raises:
        ValueError: ``peer`` is unknown.
        PeerUnavailable: the peer cannot run here.
    """
    from .peer_jax import jax_peer
    from .peer_torch import torch_peer

    builders: dict[str, Callable[[Workload, str], PeerStep]] = {
        "fusednn": fusednn_peer,
        "fusednn-numpy": lambda w, d: fusednn_peer(w, "numpy"),
        "numpy": numpy_peer,
        "torch": lambda w, d: torch_peer(w, d, None),
        "torch-foreach": lambda w, d: torch_peer(w, d, "foreach"),
        "torch-fused": lambda w, d: torch_peer(w, d, "fused"),
        "jax": jax_peer,
    }
    if peer not in builders:
        raise ValueError(f"Unknown peer {peer!r}; expected one of {', '.join(PEERS)}")
    if isinstance(workload, Config):
        workload = Workload(workload)
    return builders[peer](workload, device)


def blas_info() -> list[dict[str, Any]]:
    """BLAS/OpenMP libraries loaded in this process with their kernel (corearch) and thread count."""
    from threadpoolctl import threadpool_info

    keys = ("internal_api", "version", "architecture", "num_threads", "threading_layer")
    return [{key: lib.get(key) for key in keys} for lib in threadpool_info()]


def fusednn_step(config: Config, device: str) -> PeerStep:
    """fusednn's ``step``-mode work on ``device``; the pytest-benchmark suite times this same step."""
    return fusednn_peer(Workload(config), device)


def fusednn_peer(workload: Workload, device: str) -> PeerStep:
    """fusednn: ``nn.MLP``, categorical cross-entropy and ``nn.Adam`` on ``device``.

    ``device`` is any fusednn device string (``"numpy"``, ``"cpu"``, ``"cuda"``). In
    ``step`` mode a step is ``forward``/``loss``/``backward``/``step`` from Python; in
    ``fit`` mode a call is ``nn.fit(..., epochs=1, progress=False)`` with no metrics and
    no validation, the optimizer (and its state) kept from call to call.
    """
    import fusednn
    from fusednn import nn

    config = workload.config
    backend = fusednn.backend(device)
    model = nn.MLP(list(config.sizes), activation=config.activation, device=device, dtype="float32", seed=SEED)
    model.set_weights(initial_weights(config))
    optimizer = nn.Adam(model.parameters(), lr=LEARNING_RATE)
    x_host, y_host = workload.data()
    info: dict[str, Any] = {"library": f"fusednn {fusednn.__version__}", "backend": backend.name}
    if backend.kind == "cpu":
        import numba

        info["threads"] = numba.get_num_threads()
        info["numba_threading_layer"] = numba.config.THREADING_LAYER

    if workload.mode == "fit":
        # The first call is what a user's first fit gets ("auto": per step while a cold kernel compiles in
        # the background); the later ones wait for the compiled path where there is one, so every timed
        # epoch takes the same path.
        paths = ["compiled", "auto"]  # popped from the end

        def fit(path: str) -> Any:
            return nn.fit(
                model, x_host, y_host, "categorical_crossentropy", optimizer,
                epochs=1, batch_size=config.batch, seed=SEED, progress=False, epoch_path=path,
            )  # fmt: skip

        def run_epoch() -> float:
            path = paths[-1] if len(paths) == 1 else paths.pop()
            try:
                history = fit(path)
            except ValueError as error:  # this device compiles no epochs of the model
                if not str(error).startswith("epoch_path='compiled'"):
                    raise
                paths[-1] = "per-step"
                history = fit("per-step")
            info["fit_params"] = {k: v for k, v in history.params.items() if isinstance(v, (str, int, float, bool))}
            return history.history["loss"][-1]

        return PeerStep(run_epoch, backend.synchronize, info, workload.steps)

    loss_fn = nn.get_loss("categorical_crossentropy", device=device)
    x, y = backend.asarray(x_host), backend.asindex(y_host)

    def run() -> Any:
        out = model.forward(x)
        loss, dout = loss_fn(out, y)
        model.backward(dout, need_input_grad=False)
        optimizer.step()
        return loss

    return PeerStep(run, backend.synchronize, info)


def numpy_peer(workload: Workload, device: str) -> PeerStep:
    """The hand-written :class:`~benchmarks.numpy_mlp.NumpyMLP`, on NumPy (cpu) or CuPy (cuda).

    In ``fit`` mode its loop is the plain one: per step, fancy-index the batch rows of
    the epoch's permutation (on the device) and train on them; step losses go into a
    device vector read once per epoch.
    """
    from .numpy_mlp import NumpyMLP

    if device == "cuda":
        from fusednn.backends.cuda_runtime import require_device

        xp = require_device(0)
        sync = xp.cuda.get_current_stream().synchronize
        library = f"cupy {xp.__version__}"
    else:
        xp, sync, library = np, (lambda: None), f"numpy {np.__version__}"
    config = workload.config
    x_host, y_host = workload.data()
    mlp = NumpyMLP(config.sizes, config.activation, xp, np.float32, lr=LEARNING_RATE, weights=initial_weights(config))
    x, y = xp.asarray(x_host), xp.asarray(y_host)
    if workload.mode == "step":
        return PeerStep(lambda: mlp.train_step(x, y), sync, {"library": library})
    epochs = itertools.count()
    batch = config.batch

    def run_epoch() -> float:
        order = xp.asarray(epoch_order(next(epochs), workload.rows))
        losses = xp.empty(workload.steps, dtype=np.float32)
        for i in range(workload.steps):
            rows = order[i * batch : (i + 1) * batch]
            losses[i] = mlp.train_step(x[rows], y[rows])
        return float(losses.mean())

    return PeerStep(run_epoch, sync, {"library": library}, workload.steps)
