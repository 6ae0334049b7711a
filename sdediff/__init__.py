"""sdediff: numerical ODE/SDE solvers for diffusion models (torch, torchdiffeq, torchsde)."""

from . import analytic, diagnostics, noise, solvers
from .dynamics import ODE, ForwardSDE, ProbabilityFlow, ReverseSDE, probability_flow, reverse_sde
from .errors import NonFiniteError, SolverError
from .model import (
    PREDICTIONS,
    ClassifierFreeGuidance,
    ClassifierGuidance,
    DiffusionModel,
    Prediction,
    ScoreModel,
)
from .processes import (
    EDM,
    SDE,
    VESDE,
    VPSDE,
    CosineVPSDE,
    DiscreteVP,
    GaussianPrior,
    LinearProcess,
    LinearSDE,
    Process,
    RectifiedFlow,
    SubVPSDE,
)
from .solve import Solution, Stats, solve

__version__ = "0.1.0"

__all__ = [
    "EDM",
    "ODE",
    "PREDICTIONS",
    "SDE",
    "VESDE",
    "VPSDE",
    "ClassifierFreeGuidance",
    "ClassifierGuidance",
    "CosineVPSDE",
    "DiffusionModel",
    "DiscreteVP",
    "ForwardSDE",
    "GaussianPrior",
    "LinearProcess",
    "LinearSDE",
    "NonFiniteError",
    "Prediction",
    "ProbabilityFlow",
    "Process",
    "RectifiedFlow",
    "ReverseSDE",
    "ScoreModel",
    "Solution",
    "SolverError",
    "Stats",
    "SubVPSDE",
    "__version__",
    "analytic",
    "diagnostics",
    "noise",
    "probability_flow",
    "reverse_sde",
    "solve",
    "solvers",
]
