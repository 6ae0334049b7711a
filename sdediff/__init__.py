"""sdediff: numerical ODE/SDE solvers for diffusion models (torch, torchdiffeq, torchsde)."""

from . import analytic, diagnostics, fields, integrations, losses, metrics, noise, solvers, timesteps
from .benchmarking import BenchmarkResult, benchmark
from .calibration import CalibratedGrid
from .distributed import load_samples, log_likelihood_many, sample_many
from .dynamics import ODE, Dynamics, ForwardSDE, ProbabilityFlow, ReverseSDE, probability_flow, reverse_sde
from .errors import NonFiniteError, SolverError
from .likelihood import LikelihoodResult, decode, encode, log_likelihood
from .model import (
    PREDICTIONS,
    ClassifierFreeGuidance,
    ClassifierGuidance,
    DiffusionModel,
    Prediction,
    ScoreModel,
    nonfinite_policy,
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
from .solve import DEFAULT_GRID, DEFAULT_SOLVER, DEFAULT_STEPS, Solution, Stats, sample, solve

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_GRID",
    "DEFAULT_SOLVER",
    "DEFAULT_STEPS",
    "EDM",
    "ODE",
    "PREDICTIONS",
    "SDE",
    "VESDE",
    "VPSDE",
    "BenchmarkResult",
    "CalibratedGrid",
    "ClassifierFreeGuidance",
    "ClassifierGuidance",
    "CosineVPSDE",
    "DiffusionModel",
    "DiscreteVP",
    "Dynamics",
    "ForwardSDE",
    "GaussianPrior",
    "LikelihoodResult",
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
    "benchmark",
    "calibration",
    "decode",
    "diagnostics",
    "encode",
    "fields",
    "integrations",
    "load_samples",
    "log_likelihood",
    "log_likelihood_many",
    "losses",
    "metrics",
    "noise",
    "nonfinite_policy",
    "probability_flow",
    "reverse_sde",
    "sample",
    "sample_many",
    "solve",
    "solvers",
    "timesteps",
]
