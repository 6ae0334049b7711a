"""The solver interface and the one fixed-step loop.

A solver is a small immutable object: class attributes declare what it is (``order``,
``strong_order``, ``stochastic``, ``adaptive``, ``nfe_per_step``), and nothing on ``self`` changes
during a solve, so one object serves many solves and threads. Per-solve data (multistep
history, noise generators) lives in the ``state`` that :meth:`FixedStepSolver.init` returns and
:meth:`FixedStepSolver.step` passes along.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from ..errors import NonFiniteError
from ..model import report_nonfinite
from ..noise import GeneratorSpec

__all__ = ["FixedStepSolver", "RunResult", "Solution", "SolveContext", "Solver", "Stats"]


@dataclass(frozen=True)
class Stats:
    """Cost of a solve: network (or drift) evaluations, accepted and rejected steps
    (``n_steps = -1`` where the integrator does not report it: torchsde's adaptive mode)."""

    nfe: int
    n_steps: int
    n_rejected: int = 0


@dataclass(frozen=True)
class Solution:
    """Result of :func:`sdediff.solve`: the final state, the states at every save time, the times."""

    x: torch.Tensor
    xs: torch.Tensor
    ts: torch.Tensor
    stats: Stats


@dataclass(frozen=True)
class SolveContext:
    """Per-solve options handed to a solver (the solver object itself holds none)."""

    rtol: float = 1e-5
    atol: float = 1e-5
    steps: int | None = None
    dt: float | None = None
    adaptive: bool | None = None
    max_steps: int = 100_000
    generator: GeneratorSpec = None
    callback: Callable[[int, torch.Tensor, torch.Tensor], None] | None = None
    progress: bool = False
    options: dict[str, Any] = field(default_factory=dict)
    adjoint: bool = False


@dataclass(frozen=True)
class RunResult:
    """What a solver's :meth:`Solver.run` returns: states at the grid, step counts."""

    xs: torch.Tensor
    n_steps: int
    n_rejected: int = 0


class Solver(ABC):
    """Base class. ``run`` integrates ``dynamics`` from ``x`` at ``ts[0]`` through ``ts``."""

    name: str = ""
    order: float = 1
    strong_order: float | None = None
    stochastic: bool = False
    adaptive: bool = False
    nfe_per_step: int = 1

    @abstractmethod
    def run(self, dynamics: Any, x: torch.Tensor, ts: torch.Tensor, ctx: SolveContext) -> RunResult:
        """States at every time of ``ts`` (first entry ``x``), as a tensor ``(len(ts), *x.shape)``."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class FixedStepSolver(Solver):
    """A solver stepping exactly on the grid ``ts``: the one loop lives here."""

    def init(self, dynamics: Any, x: torch.Tensor, ts: torch.Tensor, ctx: SolveContext) -> Any:
        """Per-solve state (multistep history, noise, ...). ``None`` by default."""
        return None

    @abstractmethod
    def step(self, dynamics: Any, i: int, ts: torch.Tensor, x: torch.Tensor, state: Any,
             ctx: SolveContext) -> tuple[torch.Tensor, Any]:
        """Advance ``x`` from ``ts[i]`` to ``ts[i + 1]``; return the new state and solver state."""

    def run(self, dynamics: Any, x: torch.Tensor, ts: torch.Tensor, ctx: SolveContext) -> RunResult:
        n = len(ts) - 1
        state = self.init(dynamics, x, ts, ctx)
        xs = [x]
        steps = range(n)
        if ctx.progress:
            from tqdm.auto import tqdm

            steps = tqdm(steps, desc=self.name or type(self).__name__, leave=False)
        for i in steps:
            try:
                x, state = self.step(dynamics, i, ts, x, state, ctx)
                report_nonfinite("state", x, ts[i + 1])
            except NonFiniteError as err:
                raise err.at_step(i) from None
            xs.append(x)
            if ctx.callback is not None:
                ctx.callback(i, ts[i + 1], x)
        return RunResult(torch.stack(xs), n_steps=n)
