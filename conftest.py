"""Collection rules for the doctests of the ``fusednn`` package (``--doctest-modules``; tests/ has its own conftest).

The examples of :mod:`fusednn.distributed` run MPI: they need the ``distributed`` extra
(mpi4py), which the README's test command installs. Without it they are not collected,
rather than failing on an import the package itself makes lazily.
"""

import importlib.util

collect_ignore_glob = [] if importlib.util.find_spec("mpi4py") else ["fusednn/distributed/*.py"]
