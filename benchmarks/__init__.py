"""Benchmarks for fusednn: a pytest-benchmark suite and a comparison runner against NumPy, PyTorch and JAX.

* ``pytest benchmarks/ --benchmark-only`` times the kernels and one training step per
  configuration on every available device (a quick subset; ``--bench-full`` for the grid).
* ``python -m benchmarks.compare`` times a full training step of fusednn and its peers,
  each peer in its own process, and prints markdown tables (see ``benchmarks/RESULTS.md``).
"""
