"""``python -m fusednn.cli ...``: the ``fusednn`` command line, as before the module became a package."""

import sys

from . import main

sys.exit(main())
