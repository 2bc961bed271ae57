"""``timm.optim.Lamb`` and ``timm.optim.Lars`` as the reference for fusednn's LAMB and LARS, or ``None``.

timm is test-only and optional (``pip install timm torchvision==0.28.0``). Importing ``timm``
imports its models and so torchvision, whose compiled operators must match torch's build; the
two optimizers need neither, so their modules are loaded from timm's ``optim`` folder as a
package of their own and work whenever timm is installed.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import sys
from typing import Any

_PACKAGE = "_timm_optim_only"


def _load() -> tuple[Any, Any] | tuple[None, None]:
    try:
        folder = importlib.metadata.distribution("timm").locate_file("timm/optim")
    except importlib.metadata.PackageNotFoundError:
        return None, None
    if _PACKAGE not in sys.modules:
        spec = importlib.util.spec_from_loader(_PACKAGE, loader=None, is_package=True)
        assert spec is not None
        package = importlib.util.module_from_spec(spec)
        package.__path__ = [str(folder)]
        sys.modules[_PACKAGE] = package
    lamb = importlib.import_module(f"{_PACKAGE}.lamb")
    lars = importlib.import_module(f"{_PACKAGE}.lars")
    return lamb.Lamb, lars.Lars


Lamb, Lars = _load()
