"""The standard benchmark configurations and the arithmetic the runner reports about them.

Every configuration is a float32 MLP trained with softmax cross-entropy and Adam;
hidden layers use ReLU except ``xor``, which uses sigmoid.

>>> CONFIGS["digits"].sizes
(64, 128, 10)
>>> step_flops(CONFIGS["digits"])
1818624
"""

from __future__ import annotations

from dataclasses import dataclass

DEVICE_KINDS: tuple[str, ...] = ("cpu", "cuda")
"""Device kinds the comparison runner knows (``numpy`` is a peer on the cpu, not a device here)."""

MODES: tuple[str, ...] = ("step", "fit")
"""What the runner times: ``step``, one training step on a fixed device-resident batch; ``fit``, whole
epochs over a device-resident data set in a seeded permutation per epoch, as ``nn.fit`` trains."""

FIT_STEPS = 1000
"""Steps per epoch in ``fit`` mode (issue 11 asks for epochs of at least 1,000 steps)..."""
FIT_MAX_MB = 512
"""... unless the epoch's input rows would take more than this many MiB per peer (mnist-l, wide)..."""
FIT_MIN_STEPS = 8
"""... but never fewer steps than this (``huge-batch`` on a GPU), unless fewer are asked for."""


@dataclass(frozen=True)
class Config:
    """One benchmark configuration: layer sizes, hidden activation, batch size and where it runs.

    ``sizes`` lists the layer widths from input to output, so ``(784, 256, 10)``
    is one hidden layer of 256 units; the output layer is always linear and feeds
    softmax cross-entropy.
    """

    name: str
    sizes: tuple[int, ...]
    batch: int
    activation: str = "relu"
    devices: tuple[str, ...] = DEVICE_KINDS
    quick: bool = True

    @property
    def layer_shapes(self) -> list[tuple[int, int]]:
        """``(in, out)`` of each dense layer."""
        return list(zip(self.sizes[:-1], self.sizes[1:], strict=False))

    @property
    def n_params(self) -> int:
        """Number of trainable parameters (weights and biases)."""
        return sum(n_in * n_out + n_out for n_in, n_out in self.layer_shapes)

    def describe(self) -> str:
        """A short label such as ``784-256-256-10 relu, batch 128``."""
        return f"{'-'.join(map(str, self.sizes))} {self.activation}, batch {self.batch}"


_CONFIG_LIST = (
    Config("xor", (2, 3, 2), 4, activation="sigmoid"),
    Config("digits", (64, 128, 10), 32),
    Config("mnist-s", (784, 256, 256, 10), 128),
    Config("mnist-l", (784, 1024, 1024, 10), 1024),
    Config("wide", (2048, 2048, 2048, 2048, 10), 4096, quick=False),
    Config("huge-batch", (784, 1024, 1024, 10), 65536, devices=("cuda",)),
)

CONFIGS: dict[str, Config] = {config.name: config for config in _CONFIG_LIST}
"""Every standard configuration by name, in order of size."""


def select_configs(names: list[str] | None, device: str, quick: bool) -> list[Config]:
    """The configurations to run on ``device`` (``cpu`` or ``cuda``).

    ``names`` (from ``--configs``) picks configurations explicitly and wins over
    ``quick``; a named configuration that cannot run on ``device`` is left out.

    Raises:
        ValueError: a name is not a standard configuration.
    """
    if names:
        unknown = [name for name in names if name not in CONFIGS]
        if unknown:
            raise ValueError(f"Unknown configuration(s) {', '.join(unknown)}; expected some of {', '.join(CONFIGS)}")
        chosen = [CONFIGS[name] for name in CONFIGS if name in names]
    else:
        chosen = [config for config in CONFIGS.values() if config.quick or not quick]
    return [config for config in chosen if device in config.devices]


def fit_epoch_steps(config: Config, steps: int = FIT_STEPS, max_mb: float = FIT_MAX_MB) -> int:
    """Steps in one ``fit``-mode epoch of ``config``: ``steps``, fewer when its float32 inputs exceed ``max_mb``.

    Every peer holds the epoch's data set (``steps * batch`` rows) in its own worker,
    all workers at once, so the big configurations get shorter epochs; their steps
    cost milliseconds, so the per-epoch overhead still vanishes in the per-step figure.

    >>> fit_epoch_steps(CONFIGS["digits"]), fit_epoch_steps(CONFIGS["mnist-l"])
    (1000, 167)
    """
    batch_mb = config.batch * config.sizes[0] * 4 / 2**20
    return min(steps, max(FIT_MIN_STEPS, int(max_mb // batch_mb)))


@dataclass(frozen=True)
class Workload:
    """What a worker times: ``mode`` (``"step"``, one fixed batch, or ``"fit"``, whole epochs) and the epoch length.

    >>> Workload("fit").epoch_steps(CONFIGS["mnist-l"])
    167
    """

    mode: str = "step"
    fit_steps: int = FIT_STEPS
    fit_max_mb: float = FIT_MAX_MB

    def epoch_steps(self, config: Config) -> int:
        """Steps in one ``fit``-mode epoch of ``config`` (see :func:`fit_epoch_steps`)."""
        return fit_epoch_steps(config, self.fit_steps, self.fit_max_mb)

    def worker_flags(self) -> list[str]:
        """The flags that give a worker (:mod:`benchmarks._worker`) this workload."""
        return ["--mode", self.mode, "--fit-steps", str(self.fit_steps), "--fit-max-mb", str(self.fit_max_mb)]


STEP = Workload()
"""The default workload: one training step on a fixed batch."""


def step_flops(config: Config) -> int:
    """Floating-point operations of the GEMMs in one training step.

    Forward costs ``2 * B * in * out`` per layer and backward twice that
    (``dW = x^T dz`` and ``dx = dz W^T``), so a step is ``6 * B * sum(in * out)``.
    Elementwise work (activations, loss, Adam) is left out: it is what a GEMM
    bound ignores.
    """
    return 6 * config.batch * sum(n_in * n_out for n_in, n_out in config.layer_shapes)


def gemm_shapes(config: Config) -> list[tuple[int, int, int]]:
    """The ``(m, k, n)`` GEMMs of one step: per layer the forward, ``dW`` and ``dx`` products."""
    shapes: list[tuple[int, int, int]] = []
    for n_in, n_out in config.layer_shapes:
        shapes += [
            (config.batch, n_in, n_out),
            (n_in, config.batch, n_out),
            (config.batch, n_out, n_in),
        ]
    return list(dict.fromkeys(shapes))


def gemm_bound_us(config: Config, gemm_flops_per_s: float) -> float:
    """Time in µs a step would take if all its FLOPs ran at ``gemm_flops_per_s`` (the best GEMM rate measured).

    Raises:
        ValueError: the rate is not positive.
    """
    if not gemm_flops_per_s > 0:
        raise ValueError(f"The GEMM throughput must be positive, got {gemm_flops_per_s!r}")
    return step_flops(config) / gemm_flops_per_s * 1e6


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    """``numerator / denominator``, or ``None`` when either is missing or the denominator is not positive."""
    if numerator is None or denominator is None or not denominator > 0:
        return None
    return numerator / denominator
