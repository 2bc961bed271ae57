"""The JAX peer, as fast as its users make it: one ``jax.jit`` step that donates its buffers.

Parameters and optax's Adam state are donated (``donate_argnums``), so XLA updates
them in place instead of allocating new buffers every step. In ``fit`` mode the batch
gather happens inside the jitted step too: the step takes the whole device-resident
data set, the epoch's permutation and a step counter (donated and returned plus one),
slices its rows with ``lax.dynamic_slice`` and writes its loss into a donated loss
vector, so a step is exactly one dispatch from Python, with nothing copied to or from
the host until the epoch's losses are read.
"""

from __future__ import annotations

import importlib.util
import itertools
from typing import Any

import numpy as np

from .peers import LEARNING_RATE, PeerStep, PeerUnavailable, Workload, epoch_order, initial_weights


def jax_peer(workload: Workload, device: str) -> PeerStep:
    """JAX + optax: the MLP as a list of ``(W, b)``, softmax cross-entropy, ``optax.adam``, one jitted step.

    Raises:
        PeerUnavailable: JAX or optax is missing, or JAX has no such device.
    """
    if importlib.util.find_spec("jax") is None or importlib.util.find_spec("optax") is None:
        raise PeerUnavailable("JAX and optax are not installed")
    import jax
    import optax

    platform = "gpu" if device == "cuda" else "cpu"
    try:
        target = jax.devices(platform)[0]
    except RuntimeError as error:
        raise PeerUnavailable(f"JAX has no {platform} device: {error}") from error
    config = workload.config
    act = {"relu": jax.nn.relu, "sigmoid": jax.nn.sigmoid}[config.activation]
    weights = initial_weights(config)
    params = jax.device_put([(weights[i], weights[i + 1]) for i in range(0, len(weights), 2)], target)
    tx = optax.adam(LEARNING_RATE)
    x_host, y_host = workload.data()
    x, y = jax.device_put(x_host, target), jax.device_put(y_host.astype(np.int32), target)

    def loss_of(params: Any, xb: Any, yb: Any) -> Any:
        h = xb
        for i, (weight, bias) in enumerate(params):
            h = h @ weight + bias
            if i < len(params) - 1:
                h = act(h)
        return optax.softmax_cross_entropy_with_integer_labels(h, yb).mean()

    def update(params: Any, opt_state: Any, xb: Any, yb: Any) -> Any:
        loss, grads = jax.value_and_grad(loss_of)(params, xb, yb)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    state = {"params": params, "opt": tx.init(params)}
    sync = lambda: jax.block_until_ready(state["params"])  # noqa: E731
    info = {"library": f"jax {jax.__version__}"}
    if workload.mode == "step":
        step = jax.jit(update, donate_argnums=(0, 1))

        def run() -> Any:
            state["params"], state["opt"], loss = step(state["params"], state["opt"], x, y)
            return loss

        return PeerStep(run, sync, info)

    batch = config.batch

    def gathered_update(params: Any, opt_state: Any, losses: Any, i: Any, order: Any, xs: Any, ys: Any) -> Any:
        rows = jax.lax.dynamic_slice_in_dim(order, i * batch, batch)
        params, opt_state, loss = update(params, opt_state, xs[rows], ys[rows])
        return params, opt_state, losses.at[i].set(loss), i + 1

    fit_step = jax.jit(gathered_update, donate_argnums=(0, 1, 2, 3))
    epochs = itertools.count()

    def run_epoch() -> float:
        order = jax.device_put(epoch_order(next(epochs), workload.rows).astype(np.int32), target)
        losses = jax.device_put(np.zeros(workload.steps, np.float32), target)
        i = jax.device_put(np.int32(0), target)
        params, opt_state = state["params"], state["opt"]
        for _ in range(workload.steps):
            params, opt_state, losses, i = fit_step(params, opt_state, losses, i, order, x, y)
        state["params"], state["opt"] = params, opt_state
        return float(losses.mean())

    return PeerStep(run_epoch, sync, info, workload.steps)
