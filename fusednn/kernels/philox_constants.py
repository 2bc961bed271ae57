"""The constants of Philox 4x32-10 (Random123's ``philox4x32``), shared by every implementation of dropout's generator.

The NumPy reference (:mod:`fusednn.backends.philox`) and the Numba kernel import them; the
CUDA C kernels receive them as ``-D`` defines (:func:`fusednn.kernels.cuda.sources.compile_defines`).
"""

PHILOX_M0 = 0xD2511F53
"""Multiplier of counter word 0."""
PHILOX_M1 = 0xCD9E8D57
"""Multiplier of counter word 2."""
PHILOX_W0 = 0x9E3779B9
"""Weyl increment of key word 0 between rounds (the golden ratio)."""
PHILOX_W1 = 0xBB67AE85
"""Weyl increment of key word 1 between rounds (sqrt(3) - 1)."""
PHILOX_ROUNDS = 10
"""Rounds of Philox 4x32-10."""
