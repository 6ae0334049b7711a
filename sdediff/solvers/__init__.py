"""Solver registry: :data:`SOLVERS` maps a name to a solver object (immutable, reusable).

torchdiffeq methods are registered as ``"torchdiffeq:<method>"`` and, where the name is not
taken by an sdediff solver, also plainly (``"dopri5"``); torchsde methods as
``"torchsde:<method>"`` plus ``"srk"``, ``"milstein"`` and ``"reversible_heun"``.
"""

from __future__ import annotations

from .base import FixedStepSolver, RunResult, Solution, SolveContext, Solver, Stats
from .external import TORCHDIFFEQ_METHODS, TORCHSDE_METHODS, TorchdiffeqSolver, TorchsdeSolver

SOLVERS: dict[str, Solver] = {}

for _m in TORCHDIFFEQ_METHODS:
    SOLVERS[f"torchdiffeq:{_m}"] = TorchdiffeqSolver(_m)
for _m in TORCHSDE_METHODS:
    SOLVERS[f"torchsde:{_m}"] = TorchsdeSolver(_m)
for _m in ("dopri5", "dopri8", "tsit5", "bosh3", "adaptive_heun", "fehlberg2"):
    SOLVERS[_m] = SOLVERS[f"torchdiffeq:{_m}"]
for _m in ("srk", "milstein", "reversible_heun"):
    SOLVERS[_m] = SOLVERS[f"torchsde:{_m}"]


def get_solver(solver: str | Solver) -> Solver:
    """Look up a solver by name (ValueError listing the valid names) or pass an instance through."""
    if isinstance(solver, Solver):
        return solver
    if not isinstance(solver, str):
        raise TypeError(f"solver must be a name or a Solver, got {type(solver).__name__}")
    try:
        return SOLVERS[solver]
    except KeyError:
        raise ValueError(f"unknown solver {solver!r}; valid solvers are: {', '.join(sorted(SOLVERS))}") from None


__all__ = [
    "SOLVERS",
    "FixedStepSolver",
    "RunResult",
    "Solution",
    "SolveContext",
    "Solver",
    "Stats",
    "TorchdiffeqSolver",
    "TorchsdeSolver",
    "get_solver",
]
