"""Issue 11's performance targets, checked against ratios measured in one run of the runner.

Every target compares fusednn with something measured in the same run on the same
machine, never with a figure from elsewhere: either a peer (``fusednn at least
factor × faster than the fastest of these peers``) or the GEMM bound (``fusednn's
step at most factor × the time of its FLOPs at the best GEMM rate``). Pure functions
over the runner's result rows, so they are unit-tested on made-up timings.

>>> [t.label for t in TARGETS if t.device == "cpu" and t.applies_to("xor")]
['≥ 15× jax', '≥ 1× fastest of torch, torch-foreach, torch-fused']
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from .configs import CONFIGS, gemm_bound_us, ratio
from .peers import TORCH_PEERS


@dataclass(frozen=True)
class Target:
    """One target: on ``device`` in ``mode``, for ``configs`` (``None``: every configuration measured).

    ``kind`` is ``"faster"`` (the fastest of ``peers``' median ÷ fusednn's median
    must be at least ``factor``) or ``"bound"`` (fusednn's median ÷ the GEMM bound
    must be at most ``factor``).
    """

    device: str
    configs: tuple[str, ...] | None
    kind: str
    factor: float
    peers: tuple[str, ...] = ()
    mode: str = "fit"

    def __post_init__(self) -> None:
        if self.kind not in ("faster", "bound") or (self.kind == "faster") != bool(self.peers):
            raise ValueError(f"A target is 'faster' than some peers or within a 'bound', got {self.kind!r}")

    def applies_to(self, config: str) -> bool:
        """Whether the target concerns ``config``."""
        return self.configs is None or config in self.configs

    @property
    def label(self) -> str:
        """The requirement in words, e.g. ``'≥ 15× jax'`` or ``'≤ 1.05× GEMM bound'``."""
        if self.kind == "bound":
            return f"≤ {self.factor:g}× GEMM bound"
        peers = self.peers[0] if len(self.peers) == 1 else f"fastest of {', '.join(self.peers)}"
        return f"≥ {self.factor:g}× {peers}"


TARGETS: tuple[Target, ...] = (
    # CPU, per step through nn.fit over epochs of >= 1,000 steps.
    Target("cpu", ("xor",), "faster", 15.0, ("jax",)),
    Target("cpu", ("digits",), "faster", 3.0, ("jax",)),
    Target("cpu", ("mnist-s",), "faster", 1.5, ("jax",)),
    Target("cpu", ("mnist-l",), "bound", 1.05),
    Target("cpu", ("wide",), "bound", 1.05),
    Target("cpu", None, "faster", 1.0, TORCH_PEERS),
    # CUDA, when a GPU is lent.
    Target("cuda", ("xor", "digits", "mnist-s"), "faster", 5.0, TORCH_PEERS),
    Target("cuda", None, "faster", 1.0, ("jax",)),
    Target("cuda", ("huge-batch",), "bound", 1.1),
)
"""The targets of issue 11 ("Compiled training: whole epochs inside Numba on the CPU, graph-replayed
steps on the GPU"), section "Targets": on the CPU, per step through ``fit``, xor ≥ 15× JAX-jit, digits
≥ 3×, mnist-s ≥ 1.5×, mnist-l ≤ 1.05× the GEMM bound, wide within 1.05× of it, ahead of every PyTorch
variant everywhere; on CUDA ≥ 5× PyTorch eager (fastest Adam) on xor, digits and mnist-s, ≥ JAX-jit
everywhere and ≤ 1.1× the cuBLAS bound at batch 65,536 on mnist-l (``huge-batch``)."""


@dataclass(frozen=True)
class Outcome:
    """A target checked on one configuration: the measured ratio and whether it passed.

    ``passed`` is ``None`` when something it needs was not measured; ``note`` says what
    (or which peer was the fastest compared with).
    """

    config: str
    target: str
    measured: float | None
    passed: bool | None
    note: str = ""


def median_of(results: list[dict[str, Any]], config: str, peer: str, mode: str) -> float | None:
    """The median µs/step of ``peer`` on ``config`` in ``mode``, or ``None`` if it has none.

    Rows without a ``mode`` (reports written before there were modes) are ``step`` rows.
    """
    for row in results:
        if (row["config"], row["peer"], row.get("mode", "step")) == (config, peer, mode) and "median_us" in row:
            return row["median_us"]
    return None


def check(target: Target, config: str, results: list[dict[str, Any]], gemm_flops_per_s: float | None) -> Outcome:
    """``target`` on ``config`` from the result rows and the GEMM rate of the same run."""
    fusednn = median_of(results, config, "fusednn", target.mode)
    if target.kind == "bound":
        bound = gemm_bound_us(CONFIGS[config], gemm_flops_per_s) if gemm_flops_per_s else None
        measured = ratio(fusednn, bound)
        missing = "fusednn" if fusednn is None else "GEMM bound"
        note = ""
    else:
        timed = {peer: t for peer in target.peers if (t := median_of(results, config, peer, target.mode)) is not None}
        fastest = min(timed, key=timed.__getitem__, default=None)
        measured = ratio(timed.get(fastest) if fastest else None, fusednn)
        missing = "fusednn" if fusednn is None else " / ".join(target.peers)
        note = f"fastest: {fastest}" if fastest and len(target.peers) > 1 else ""
    if measured is None:
        return Outcome(config, target.label, None, None, f"no {missing} timing")
    passed = measured <= target.factor if target.kind == "bound" else measured >= target.factor
    return Outcome(config, target.label, measured, passed, note)


def outcomes(device: str, mode: str, results: list[dict[str, Any]], gemm_flops_per_s: float | None) -> list[Outcome]:
    """Every target of ``device`` and ``mode`` on each configuration the results hold, in run order."""
    configs = dict.fromkeys(row["config"] for row in results)
    return [
        check(target, config, results, gemm_flops_per_s)
        for config in configs
        for target in TARGETS
        if target.device == device and target.mode == mode and target.applies_to(config)
    ]


def as_json(found: list[Outcome]) -> list[dict[str, Any]]:
    """Outcomes as plain dicts, for the runner's JSON report."""
    return [asdict(outcome) for outcome in found]
