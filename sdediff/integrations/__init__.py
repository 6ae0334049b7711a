"""Bridges to other diffusion codebases, each behind an optional dependency.

* :mod:`sdediff.integrations.diffusers` — ``model_from_diffusers`` (a diffusers network and
  scheduler config as a :class:`~sdediff.DiffusionModel`) and ``Scheduler`` (any fixed-step sdediff
  solver inside an unmodified diffusers pipeline). Needs ``pip install 'sdediff[diffusers]'``.
* :mod:`sdediff.integrations.k_diffusion` — ``sample(model, x, sigmas, solver=...)`` with
  k-diffusion's calling convention, and its ``get_sigmas_*`` grids. Needs nothing beyond sdediff
  (k-diffusion itself is not imported).

The submodules are imported on first attribute access, so ``import sdediff`` never imports diffusers.
"""

from __future__ import annotations

import importlib
from types import ModuleType

__all__ = ["diffusers", "k_diffusion"]


def __getattr__(name: str) -> ModuleType:
    if name in __all__:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
