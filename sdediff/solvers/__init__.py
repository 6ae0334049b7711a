"""Solver registry: :data:`SOLVERS` maps a name to a solver object (immutable: assigning an attribute
raises, so no caller can change the solver another caller gets; build a new one with the constructor).

torchdiffeq methods are registered as ``"torchdiffeq:<method>"`` and, where the name is not
taken by an sdediff solver, also plainly (``"dopri5"``); torchsde methods as
``"torchsde:<method>"`` plus ``"srk"``, ``"milstein"`` and ``"reversible_heun"``.

sdediff's own solvers (one small module per family): ``euler``, ``midpoint``, ``rk4`` (:mod:`.euler`),
``edm_heun`` (alias ``heun``), ``stochastic_heun`` (:mod:`.heun`), ``ddim`` (:mod:`.ddim`), ``dpm_solver_2``,
``dpm_solver_3``, ``dpm_solver_fast``, ``dpm++2s``, ``dpm++2m``, ``dpm++3m``, ``dpm++3m_common`` (:mod:`.dpm_solver`),
``unipc``, ``unipc_bh1``, ``unipc3`` (:mod:`.unipc`), ``deis``, ``ipndm`` (:mod:`.deis`),
``euler_maruyama``, ``ancestral``, ``sde_dpm++2m``, ``pc`` (:mod:`.sde`), ``dpm_solver_12``,
``dpm_solver_23`` (:mod:`.adaptive`). Final-step policy: :mod:`.diffusion`.
"""

from __future__ import annotations

from .._utils import did_you_mean
from .adaptive import AdaptiveDPMSolver
from .base import AdaptiveSolver, FixedStepSolver, PIController, RunResult, Solution, SolveContext, Solver, Stats
from .ddim import DDIM
from .deis import DEIS, IPNDM
from .dpm_solver import DPMSolverFast, DPMSolverMultistep, DPMSolverSinglestep
from .euler import ExplicitRK
from .external import TORCHDIFFEQ_METHODS, TORCHSDE_METHODS, TorchdiffeqSolver, TorchsdeSolver
from .heun import EDMHeun
from .sde import EulerMaruyama, PredictorCorrector, SDEDPMSolverPP
from .unipc import UniPC

SOLVERS: dict[str, Solver] = {}
"""The solver registry: name -> solver object; ``solve(..., solver=name)`` and ``sample`` look names up here."""

for _m in TORCHDIFFEQ_METHODS:
    SOLVERS[f"torchdiffeq:{_m}"] = TorchdiffeqSolver(_m)
for _m in TORCHSDE_METHODS:
    SOLVERS[f"torchsde:{_m}"] = TorchsdeSolver(_m)
for _m, (_, _adaptive) in TORCHDIFFEQ_METHODS.items():  # only what the installed torchdiffeq has
    if _adaptive:
        SOLVERS[_m] = SOLVERS[f"torchdiffeq:{_m}"]
for _m in ("srk", "milstein", "reversible_heun"):
    if _m in TORCHSDE_METHODS:
        SOLVERS[_m] = SOLVERS[f"torchsde:{_m}"]

SOLVERS.update({
    "euler": ExplicitRK("euler"),
    "midpoint": ExplicitRK("midpoint"),
    "rk4": ExplicitRK("rk4"),
    "edm_heun": EDMHeun(name="edm_heun"),
    "stochastic_heun": EDMHeun(S_churn=40.0, S_min=0.05, S_max=50.0, S_noise=1.0, name="stochastic_heun"),
    "ddim": DDIM(0.0),
    "dpm_solver_2": DPMSolverSinglestep(2, data=False, name="dpm_solver_2"),
    "dpm_solver_3": DPMSolverSinglestep(3, data=False, name="dpm_solver_3"),
    "dpm_solver_fast": DPMSolverFast(),
    "dpm++2s": DPMSolverSinglestep(2, data=True, name="dpm++2s"),
    "dpm++2m": DPMSolverMultistep(2, name="dpm++2m"),
    "dpm++3m": DPMSolverMultistep(3, name="dpm++3m"),
    "dpm++3m_common": DPMSolverMultistep(3, third="common", name="dpm++3m_common"),
    "unipc": UniPC(2, variant="bh2", name="unipc"),
    "unipc_bh1": UniPC(2, variant="bh1", name="unipc_bh1"),
    "unipc3": UniPC(3, variant="bh2", name="unipc3"),
    "deis": DEIS(3),
    "ipndm": IPNDM(),
    "euler_maruyama": EulerMaruyama(),
    "ancestral": SDEDPMSolverPP(1, name="ancestral"),
    "sde_dpm++2m": SDEDPMSolverPP(2, name="sde_dpm++2m"),
    "pc": PredictorCorrector(),
    "dpm_solver_12": AdaptiveDPMSolver(2, name="dpm_solver_12"),
    "dpm_solver_23": AdaptiveDPMSolver(3, name="dpm_solver_23"),
})
# ``heun`` is what k-diffusion's sample_heun and diffusers' HeunDiscreteScheduler mean by it: EDM's Heun
# (Karras et al. 2022, Algorithm 2); ``edm_heun`` names it plainly.
SOLVERS["heun"] = SOLVERS["edm_heun"]


def get_solver(solver: str | Solver) -> Solver:
    """Look up a solver by name (ValueError listing the valid names) or pass an instance through."""
    if isinstance(solver, Solver):
        return solver
    if not isinstance(solver, str):
        raise TypeError(f"solver must be a name or a Solver, got {type(solver).__name__}")
    try:
        return SOLVERS[solver]
    except KeyError:
        raise ValueError(f"unknown solver {solver!r}; {did_you_mean(solver, list(SOLVERS))}"
                         f"valid solvers are: {', '.join(sorted(SOLVERS))}") from None


__all__ = [
    "DDIM",
    "DEIS",
    "IPNDM",
    "SOLVERS",
    "AdaptiveDPMSolver",
    "AdaptiveSolver",
    "DPMSolverFast",
    "DPMSolverMultistep",
    "DPMSolverSinglestep",
    "EDMHeun",
    "EulerMaruyama",
    "ExplicitRK",
    "FixedStepSolver",
    "PIController",
    "PredictorCorrector",
    "RunResult",
    "SDEDPMSolverPP",
    "Solution",
    "SolveContext",
    "Solver",
    "Stats",
    "TorchdiffeqSolver",
    "TorchsdeSolver",
    "UniPC",
    "get_solver",
]
