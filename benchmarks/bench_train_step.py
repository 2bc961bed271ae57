"""One full training step (forward, loss, backward, Adam update) per standard configuration, on every device.

The step is the one :mod:`benchmarks.compare` times against its peers
(:func:`benchmarks.peers.fusednn_step`), here under pytest-benchmark.
"""

from __future__ import annotations

import pytest

from .configs import CONFIGS
from .peers import fusednn_step
from .suite import grid

QUICK = ["xor", "digits", "mnist-s"]
FULL = [name for name in CONFIGS if name not in QUICK]


@pytest.mark.parametrize("case", grid(QUICK, FULL))
def test_train_step(device, measure, case):
    config = CONFIGS[case]
    kind = "cpu" if device == "numpy" else device
    if kind not in config.devices:
        pytest.skip(f"{case} runs on {', '.join(config.devices)} only")
    step = fusednn_step(config, device)
    measure(step.run, sync=step.sync)
