"""``python -m fusednn ...``: the same command line as the ``fusednn`` console script."""

import sys

from .cli import main

sys.exit(main())
