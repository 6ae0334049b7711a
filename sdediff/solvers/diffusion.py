r"""The base of the diffusion solvers: the schedule on a grid, one model call, and the end of a solve.

Notation (Lu et al. 2022, *DPM-Solver*, NeurIPS; Lu et al. 2022b, *DPM-Solver++*): a linear process
:math:`x_t = \alpha_t x_0 + \sigma_t\epsilon`, half log-SNR :math:`\lambda_t = \log(\alpha_t/\sigma_t)`,
step :math:`h = \lambda_t - \lambda_s` from ``s = ts[i]`` to ``t = ts[i+1]``; the data prediction
:math:`D = \hat x_0` and the noise prediction :math:`\hat\epsilon` come from one call of the model
(one NFE). The exponential-integrator algebra is in :mod:`sdediff.solvers.exponential`.

**The end of a solve** (every solver, one place: :func:`sdediff.solve` with :func:`denoise`). A grid may
end at ``t = 0``, read as the clean-data end :math:`\sigma = 0,\ \alpha = 1,\ \lambda = +\infty` whatever
the process formula gives there. The solver integrates up to the last positive grid time (adaptive
solvers on to ``t_min``), and the last step onto ``t = 0`` is a *denoise*: :math:`x = \hat x_0(t_{N-1},
x_{N-1})`, which is the Euler step in EDM's variables :math:`(x/\alpha,\ \sigma/\alpha)` and the
first-order DPM-Solver++ step with :math:`\sigma_t = 0`; the model is never evaluated at ``t = 0``, and no
:math:`\log 0` or :math:`0\cdot\infty` is formed. Multistep solvers know the denoise step follows
(``ctx.data_end``) and cap the order of each step at the number of steps left (``lower_order_final`` in
diffusers). A grid ending at ``t > 0`` gets full-order steps throughout (after the multistep warm-up)
and stops there.

**No signal at the start.** A grid point where :math:`\alpha = 0` (rectified flow at ``t = 1``, where
:math:`\lambda = -\infty` and :math:`\sigma/\alpha = \infty`) is read at :data:`LAMBDA_MIN` (the time where
:math:`\alpha^2 = 2^{-24}`, diffusers' zero-terminal-SNR clamp): the state there is pure noise to that
precision, and every λ- or ρ-space formula stays finite. The σ = 0 end is the data end above.

**Cheap steps.** :class:`Schedule` computes, once per solve and vectorised over the grid, the float64
:math:`(t, \alpha, \sigma, \lambda)` of every grid point and the model's conversion record
(:class:`~sdediff.model.Coefficients`: :math:`\alpha, \sigma, \dot\alpha, \dot\sigma` and the network's
label), so a network call at a grid point evaluates no schedule and validates no time (the grid was
validated once). The final denoise reuses the record of the last positive time. A named grid's times and a
grid's records are remembered per process and model (:func:`sdediff._utils.memo`, keyed by the identities of
their attributes, so re-assigning one, e.g. ``process.beta_max = 15``, is seen), so a loop of identical solves
pays the setup once. Grids longer than :data:`STREAM_CHUNK` points stream their records, a chunk at a time, as
the solve reaches them: ``steps=10**6`` starts at once instead of building a million records first.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import torch

from .._utils import TIME_DTYPE, work_dtype
from ..model import Coefficients, Prediction, ScoreModel
from ..processes import ZERO_SNR_CLAMP, LinearProcess
from .base import FixedStepSolver, SolveContext
from .exponential import lincomb

#: The half log-SNR a grid point with :math:`\alpha = 0` (rectified flow at ``t = 1``, a zero-terminal-SNR
#: schedule) is moved to: :math:`\bar\alpha = \alpha^2 = 2^{-24}`, diffusers' zero-SNR clamp.
LAMBDA_MIN = 0.5 * math.log(ZERO_SNR_CLAMP) - 0.5 * math.log1p(-ZERO_SNR_CLAMP)

__all__ = [
    "FINAL_STEPS",
    "DState",
    "DiffusionSolver",
    "Eta",
    "Schedule",
    "Tail",
    "WarmStart",
    "denoise",
    "extrapolation_weight",
    "is_data_end",
    "linear_model",
    "point",
    "predict",
    "predict_at",
    "t_at_log_snr",
    "work_dtype",
]


def is_data_end(ts: torch.Tensor) -> bool:
    """A decreasing grid whose last time is exactly 0: the last step denoises onto :math:`\\sigma = 0`."""
    return len(ts) > 1 and float(ts[-1]) == 0.0 and float(ts[0]) > 0.0


class _InStateDtype(ScoreModel):
    """A view of a model that calls the network on the state's own dtype.

    Solver arithmetic for half-precision states runs in float32; the network (whose weights may be
    half) must still receive the state's dtype. The NFE counter is the model's."""

    def __init__(self, model: ScoreModel, dtype: torch.dtype) -> None:
        self.model, self.dtype = model, dtype
        self.process = model.process
        self._counter = model._counter

    def predict(self, t: Any, x: torch.Tensor):
        return self.model.predict(t, x.to(self.dtype))

    def coefficients(self, t: float) -> Coefficients | None:
        return self.model.coefficients(t)

    def coefficients_grid(self, ts: torch.Tensor) -> list[Coefficients] | None:
        return self.model.coefficients_grid(ts)

    def predict_at(self, c: Coefficients, x: torch.Tensor):
        return self.model.predict_at(c, x.to(self.dtype))


def model_of(dynamics: Any) -> ScoreModel | None:
    """The score model of a linear process behind ``dynamics`` (``None`` when there is none)."""
    model = getattr(dynamics, "model", None)
    if isinstance(model, ScoreModel) and isinstance(getattr(model, "process", None), LinearProcess):
        return model
    return None


def linear_model(dynamics: Any, solver: str, state_dtype: torch.dtype | None = None
                 ) -> tuple[ScoreModel, LinearProcess]:
    """The model and linear process behind ``dynamics`` (a probability flow or reverse SDE);
    with ``state_dtype`` a half type, a view of the model that feeds the network that dtype."""
    model = model_of(dynamics)
    if model is None:
        raise TypeError(
            f"the solver {solver!r} integrates diffusion models of a linear process (alpha, sigma, log-SNR); "
            f"got {type(dynamics).__name__}. Pass a DiffusionModel (or probability_flow(model)), or use a "
            "generic solver such as 'rk4' or 'dopri5'"
        )
    if state_dtype in (torch.float16, torch.bfloat16):
        return _InStateDtype(model, state_dtype), model.process  # type: ignore[return-value]
    return model, model.process  # type: ignore[return-value]


#: Grid points per chunk of a streamed schedule (:meth:`Schedule.of` on longer grids).
STREAM_CHUNK = 4096


def _records(process: LinearProcess, tt: torch.Tensor, model: ScoreModel | None
             ) -> tuple[list[float], list[float], list[float], list[float], list[Coefficients]]:
    """``(t, alpha, sigma, lambda, model records)`` at the float64 CPU times ``tt``, vectorised."""
    coef = (model.coefficients_grid(tt) if model is not None else None) or []
    if coef:  # one schedule evaluation: the model's records
        if any(c.alpha == 0.0 for c in coef):  # alpha = 0 (no signal): solve from the clamped log-SNR instead
            tt = _clamp_no_signal(process, tt)
            coef = model.coefficients_grid(tt) or []  # type: ignore[union-attr]
        alpha = [c.alpha for c in coef]
        sigma = [c.sigma for c in coef]
        lam = [math.log(a) - math.log(s) if s > 0.0 else math.inf for a, s in zip(alpha, sigma, strict=True)]
        return tt.tolist(), alpha, sigma, lam, coef
    tt = _clamp_no_signal(process, tt)
    la, ls = process.log_alpha(tt), process.log_sigma(tt)
    return tt.tolist(), torch.exp(la).tolist(), torch.exp(ls).tolist(), (la - ls).tolist(), []


def _clamp_no_signal(process: LinearProcess, tt: torch.Tensor) -> torch.Tensor:
    """Times where :math:`\alpha = 0` moved to the time of :data:`LAMBDA_MIN` (the module docstring)."""
    la = process.log_alpha(tt)
    if not bool(torch.isinf(la).any()):
        return tt
    t_c = process.t_from_log_snr(torch.tensor(LAMBDA_MIN, dtype=TIME_DTYPE))
    return torch.where(torch.isinf(la), t_c, tt)


class _Streamed:
    """The records of a long grid, computed :data:`STREAM_CHUNK` points at a time when first read; the
    last few chunks are kept (solvers read the current step and a few before it)."""

    KEEP = 3

    def __init__(self, process: LinearProcess, tt: torch.Tensor, model: ScoreModel | None, data_end: bool) -> None:
        self.process, self.tt, self.model, self.data_end = process, tt, model, data_end
        self.n = len(tt)
        self.chunks: dict[int, tuple[list[Any], ...]] = {}
        self.has_coef = bool(self.chunk(0)[4])

    def chunk(self, k: int) -> tuple[list[Any], ...]:
        got = self.chunks.get(k)
        if got is None:
            got = _records(self.process, self.tt[k * STREAM_CHUNK:(k + 1) * STREAM_CHUNK], self.model)
            if len(self.chunks) >= self.KEEP:
                self.chunks.pop(next(iter(self.chunks)))
            self.chunks[k] = got
        return got

    def fields(self) -> tuple[_Column, ...]:
        end = self.data_end
        return (_Column(self, 0, 0.0 if end else None), _Column(self, 1, 1.0 if end else None),
                _Column(self, 2, 0.0 if end else None), _Column(self, 3, math.inf if end else None),
                _Column(self, 4, None, empty=not self.has_coef))


class _Column(Sequence):
    """One field of a streamed schedule as a read-only sequence (with the data-end point appended)."""

    def __init__(self, src: _Streamed, field: int, end: Any, *, empty: bool = False) -> None:
        self.src, self.field, self.end = src, field, end
        self.n = 0 if empty else src.n + int(end is not None)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: Any) -> Any:
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(self.n))]
        if i < 0:
            i += self.n
        if not 0 <= i < self.n:
            raise IndexError(i)
        if i == self.src.n:
            return self.end
        return self.src.chunk(i // STREAM_CHUNK)[self.field][i % STREAM_CHUNK]


@dataclass(frozen=True)
class Schedule:
    r"""Float64 :math:`t, \alpha, \sigma, \lambda` at every grid time (python floats, exact at the data end),
    and the model's conversion record at each time the model is evaluated (``coef``)."""

    t: Sequence[float]
    alpha: Sequence[float]
    sigma: Sequence[float]
    lam: Sequence[float]
    data_end: bool
    coef: Sequence[Coefficients | None] = ()

    @classmethod
    def of(cls, process: LinearProcess, ts: torch.Tensor, *, data_end: bool | None = None,
           model: ScoreModel | None = None) -> Schedule:
        """The schedule on ``ts``. ``data_end=None`` reads a last ``t = 0`` of ``ts`` as the data end;
        ``True`` appends the data end after ``ts`` (the loop's denoise step follows).

        Grids longer than :data:`STREAM_CHUNK` points are not computed up front: the records are made
        :data:`STREAM_CHUNK` at a time as the solve reaches them (:class:`_Streamed`), so a huge step count
        starts at once and holds a few chunks, not one record per step."""
        if data_end is None:
            end = is_data_end(ts)
            inner = ts[:-1] if end else ts
        else:
            end, inner = bool(data_end), ts
        tt = inner.detach().to(TIME_DTYPE).cpu()
        if len(tt) > STREAM_CHUNK:
            t, alpha, sigma, lam, coef = _Streamed(process, tt, model, end).fields()
            return cls(t, alpha, sigma, lam, end, coef)
        t, alpha, sigma, lam, coef = _records(process, tt, model)
        if end:
            t.append(0.0)
            alpha.append(1.0)
            sigma.append(0.0)
            lam.append(math.inf)
        return cls(tuple(t), tuple(alpha), tuple(sigma), tuple(lam), end, tuple(coef))

    @property
    def n_steps(self) -> int:
        return len(self.t) - 1

    def rho(self, i: int) -> float:
        r""":math:`\rho = \sigma/\alpha = e^{-\lambda}` (EDM's noise level of :math:`x/\alpha`)."""
        return self.sigma[i] / self.alpha[i]


def point(process: LinearProcess, t: float) -> tuple[float, float, float]:
    r""":math:`(\alpha, \sigma, \lambda)` at one time off the grid, as float64 python floats."""
    tt = torch.as_tensor(t, dtype=TIME_DTYPE)
    la, ls = float(process.log_alpha(tt)), float(process.log_sigma(tt))
    return math.exp(la), math.exp(ls), la - ls


def t_at_log_snr(process: LinearProcess, lam: float) -> float:
    """The time where the half log-SNR is ``lam`` (clamped to the process range)."""
    t = float(process.t_from_log_snr(torch.as_tensor(lam, dtype=TIME_DTYPE)))
    return min(max(t, process.t_min), process.T)


def predict(model: ScoreModel, t: float, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    r"""One network call at a time off the grid: :math:`(\hat x_0, \hat\epsilon)` in the work dtype.

    The solvers compute such times inside ``[t_min, T]`` by construction, so the record of
    :meth:`~sdediff.ScoreModel.coefficients` is used without time validation where the model has one."""
    c = model.coefficients(t)
    pred = model.predict(t, x) if c is None else model.predict_at(c, x)
    wd = work_dtype(x)
    return pred.x0.to(wd), pred.eps.to(wd)  # type: ignore[union-attr]


def predict_at(state: DState, i: int, x: torch.Tensor) -> Prediction:
    r"""One network call at grid time ``i``: the :class:`~sdediff.model.Prediction` (read ``.x0``, ``.eps``:
    each is computed when read), with no schedule evaluation."""
    coef = state.sched.coef
    if coef:
        pred = state.model.predict_at(coef[i], x)
    else:
        x0, eps = predict(state.model, state.sched.t[i], x)
        pred = Prediction(x0=x0, eps=eps)
    tail = state.tail
    if tail is not None and i == tail.index:
        tail.keep(state.sched.sigma[i], state.sched.alpha[i], pred)
    return pred


#: The largest extrapolation weight :math:`w` the final step uses (where the last two noise levels are closer
#: than :math:`\rho_{prev}/\rho_s = \sqrt{1 + 1/w}` the plain :math:`\hat x_0` is taken: it amplifies the two
#: predictions' errors by about :math:`2w`).
MAX_EXTRAPOLATION_WEIGHT = 100.0

#: The final-step policies onto the clean data (``sample(denoise=...)``, ``solve(final_step=...)``).
FINAL_STEPS = ("extrapolate", "x0")


def extrapolation_weight(rho_s: float, rho_prev: float) -> float:
    r"""The weight :math:`w = \rho_s^2/(\rho_{prev}^2 - \rho_s^2)` of the extrapolated final step
    :math:`\hat x_0 = D_s + w (D_s - D_{prev})` (0 where it does not apply, see :func:`denoise`)."""
    if not (math.isfinite(rho_prev) and rho_prev > rho_s > 0):
        return 0.0
    w = rho_s * rho_s / ((rho_prev - rho_s) * (rho_prev + rho_s))
    return w if w <= MAX_EXTRAPOLATION_WEIGHT else 0.0


class Tail:
    """The model's prediction at the start of a solve's last step (grid index ``index``), kept for the
    extrapolated final step (:func:`denoise`): no extra network call."""

    __slots__ = ("index", "pred", "rho")

    def __init__(self, index: int) -> None:
        self.index, self.pred, self.rho = index, None, math.inf

    def keep(self, sigma: float, alpha: float, pred: Prediction) -> None:
        self.rho = sigma / alpha if alpha > 0 else math.inf
        self.pred = pred

    def end_point(self) -> tuple[float, torch.Tensor] | None:
        r""":math:`(\rho_{prev}, D_{prev})`, or ``None`` where no prediction was kept."""
        return None if self.pred is None else (self.rho, self.pred.x0)


def tail_for(ts: torch.Tensor, ctx: SolveContext) -> Tail | None:
    """A :class:`Tail` for a solve on ``ts`` that the loop ends with a denoise step (else ``None``)."""
    return Tail(len(ts) - 2) if ctx.data_end and len(ts) >= 2 else None


def denoise(dynamics: Any, t: float, x: torch.Tensor, record: Coefficients | None = None,
            prev: tuple[float, torch.Tensor] | None = None, policy: str = "extrapolate") -> torch.Tensor:
    r"""The last step of a solve onto the clean data (one NFE), in ``x``'s dtype.

    ``policy="x0"``: :math:`\hat x_0(t_s, x_s)` at the last positive time :math:`t_s`, the Euler step in
    EDM's variables :math:`y = x/\alpha`, :math:`\rho = \sigma/\alpha`. Along the probability-flow
    trajectory of smooth data :math:`D(\rho) = \hat x_0(\rho, y(\rho)) = y(0) + c\rho^2 + O(\rho^4)`
    (Tweedie: :math:`D = y + \rho^2\nabla\log p_\rho(y)` and :math:`dy/d\rho = -\rho\nabla\log p_\rho`),
    so the plain step leaves an error :math:`c\rho_s^2`: about 1e-3 at the DDPM schedule's
    :math:`\rho_s \approx 0.01`, a floor no step count removes.

    ``policy="extrapolate"`` (the default): with the prediction :math:`D_{prev}` at the start of the last
    step (``prev = (ρ_prev, D_prev)``, kept by the solver, no extra NFE), the line in :math:`\rho^2`
    through both is evaluated at :math:`\rho = 0`: :math:`\hat x_0 = D_s + w (D_s - D_{prev})`,
    :math:`w = \rho_s^2/(\rho_{prev}^2 - \rho_s^2)` (Richardson extrapolation; error
    :math:`O(\rho_s^2\rho_{prev}^2)`). It reduces to the plain step when :math:`\rho_{prev} \gg \rho_s`,
    and is not used (plain step) without a ``prev`` (stochastic solvers, a one-point solve, the torchdiffeq
    adapters, the adaptive DPM-Solver with ``prediction="noise"``, and ``solve(adjoint=True)``, whose forward
    solve keeps no prediction for the backward pass) or where
    :math:`w >` :data:`MAX_EXTRAPOLATION_WEIGHT`.

    ``record``: the model's conversion record at ``t`` from the solve's schedule (used when its time is
    ``t``; otherwise the schedule is evaluated at ``t``)."""
    if policy not in FINAL_STEPS:
        raise ValueError(f"final step {policy!r} is not one of {FINAL_STEPS}")
    model, process = linear_model(dynamics, "denoise", x.dtype)
    wd = work_dtype(x)
    xw = x.to(wd)
    if record is not None and record.t == t:
        d = model.predict_at(record, xw).x0
        alpha, sigma = float(record.alpha), float(record.sigma)
    else:
        d = predict(model, t, xw)[0]
        alpha, sigma, _ = point(process, t)
    w = 0.0 if prev is None or policy != "extrapolate" or alpha <= 0 else extrapolation_weight(sigma / alpha, prev[0])
    if w:
        d = lincomb(1.0 + w, d.to(wd), -w, prev[1].to(wd))
    return d.to(x.dtype)


C = TypeVar("C")
K = TypeVar("K")


@dataclass(frozen=True)
class Eta:
    r"""Per-solve constant of DDIM(η) and the SDE solvers: the noise level :math:`\eta` (0: ODE, 1: the reverse SDE)."""

    eta: float


@dataclass(frozen=True)
class WarmStart:
    """Carry of the third-order multistep solvers after their first step: the first state, which the
    warm-up correction of the second step recomputes (no extra NFE)."""

    x0: torch.Tensor


@dataclass(frozen=True)
class DState(Generic[C, K]):
    """Per-solve state of a diffusion solver.

    Per-solve constants: ``model``, ``process``, ``sched``, ``noise`` (a noise source for stochastic
    solvers) and ``consts`` (the family's settings resolved for this solve, a small frozen record of type
    ``C``: :class:`Eta` for DDIM(η) and the SDE solvers, ``FastOrders`` for DPM-Solver-fast, ``Churn``
    for EDM's Heun). What evolves from step to step: ``hist`` (multistep history, one
    ``(λ or t, model output)`` per step) and ``carry`` (a record of type ``K`` from the previous step:
    :class:`WarmStart` for the third-order warm-up corrections, ``UniPCCarry`` for UniPC's corrector).
    """

    model: ScoreModel
    process: LinearProcess
    sched: Schedule
    hist: tuple[Any, ...] = ()
    noise: Any = None
    consts: C | None = None
    carry: K | None = None
    tail: Tail | None = None

    def evolve(self, hist: tuple[Any, ...], carry: K | None = None) -> DState[C, K]:
        """The same per-solve constants with a new history and carry."""
        return DState(self.model, self.process, self.sched, hist, self.noise, self.consts, carry, self.tail)

    def with_consts(self, consts: C, noise: Any = None) -> DState[C, K]:
        """The state at the start of a solve with the family's constants (and noise source) set."""
        return DState(self.model, self.process, self.sched, self.hist, noise, consts, self.carry, self.tail)


class DiffusionSolver(FixedStepSolver):
    """A fixed-step solver for diffusion models of a linear process. Subclasses implement
    :meth:`advance` (one step between positive grid times); the end of the solve is the loop's."""

    order: float = 1

    def init(self, dynamics: Any, x: torch.Tensor, ts: torch.Tensor, ctx: SolveContext) -> DState:
        model, process = linear_model(dynamics, self.name, x.dtype)
        sched = Schedule.of(process, ts, data_end=ctx.data_end, model=model)
        return self.start(DState(model, process, sched, tail=tail_for(ts, ctx)), dynamics, x, ts, ctx)

    def start(self, state: DState, dynamics: Any, x: torch.Tensor, ts: torch.Tensor, ctx: SolveContext) -> DState:
        """Hook to add noise sources or per-solve constants to the state."""
        return state

    def step(self, dynamics: Any, i: int, ts: torch.Tensor, x: torch.Tensor, state: DState,
             ctx: SolveContext) -> tuple[torch.Tensor, DState]:
        wd = work_dtype(x)
        if wd == x.dtype:
            return self.advance(state, i, x, ctx)
        x_next, state = self.advance(state, i, x.to(wd), ctx)
        return x_next.to(x.dtype), state

    def advance(self, state: DState, i: int, x: torch.Tensor, ctx: SolveContext) -> tuple[torch.Tensor, DState]:
        raise NotImplementedError

    def last_record(self, state: DState) -> Coefficients | None:
        coef = state.sched.coef
        return coef[-1] if coef and len(coef) == len(state.sched.t) - int(state.sched.data_end) else None

    def end_point(self, state: DState) -> tuple[float, torch.Tensor] | None:
        """The prediction at the start of the last step for the extrapolated final step; ``None`` on a
        stochastic path (a noise source is set): there the two predictions differ by the injected noise."""
        if state.tail is None or state.noise is not None:
            return None
        return state.tail.end_point()

    def max_order_at(self, state: DState, i: int, order: int) -> int:
        """Order cap at step ``i``: steps left when the solve ends at the data (module docstring)."""
        if state.sched.data_end:
            return max(1, min(order, state.sched.n_steps - i))
        return order
