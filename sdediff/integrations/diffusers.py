r"""sdediff and diffusers: diffusers' networks as sdediff models, sdediff's solvers as a diffusers scheduler.

``model_from_diffusers(unet, pipe.scheduler)`` is a :class:`~sdediff.DiffusionModel` on the process
the scheduler describes: :class:`~sdediff.DiscreteVP` for the DDPM family (its ``beta_schedule``,
``trained_betas``, ``rescale_betas_zero_snr``; the network sees diffusers' labels
:math:`n = N t - 1`) or :class:`~sdediff.RectifiedFlow` for the flow-matching schedulers (labels
:math:`N t`, velocity prediction). The config's ``prediction_type`` names the prediction
(``epsilon``, ``sample``, ``v_prediction``, ``flow_prediction``).

:class:`Scheduler` runs any fixed-step sdediff solver inside an unmodified pipeline::

    pipe.scheduler = Scheduler.from_config(pipe.scheduler.config, solver="unipc", grid="karras")

**How a solver becomes a scheduler.** A fixed-step solver's sequence of model requests
:math:`(t_k, x_k)` is fixed once the grid is: ``set_timesteps`` runs the solver once on a
one-element state with a zero-cost model that records the request times, and exposes them as
``timesteps`` (diffusers labels; singlestep solvers and Heun list their intermediate times, as
diffusers' own Heun/DPM-singlestep schedulers do). The first ``step`` starts the actual
:func:`sdediff.sample` run in a worker thread whose network hands each request :math:`x_k` to the
pipeline and waits for the pipeline's model output; ``step(model_output, t_k, x_k)`` passes the
output in and returns the next request's state as ``prev_sample`` (the final state after the last
request). So the pipeline computes exactly what ``sd.sample(model_from_diffusers(unet, scheduler),
..., x_T=noise)`` computes, with the same number of network evaluations, for every solver, stochastic
ones included (their noise is drawn, in order, from the generator given to the first ``step``).

*Why a coroutine thread and not a replay.* Replaying the solve from the start at every step with the
recorded outputs is as exact and as general, but costs :math:`O(N^2)` solver steps and keeps all
:math:`N` model outputs in memory (786 MB for 1000 DDPM steps of one 3×256×256 image); the worker
thread costs one solve and holds what the solver holds. The thread runs with the caller's grad and
inference modes, forwards any exception to the ``step`` that is waiting, and is cancelled by the next
``set_timesteps`` or when the scheduler is collected.

*Limits, each refused with a ValueError that says so:* adaptive solvers (their requests depend on
the outputs); a solver whose first request is not at the initial state (Heun's churn at
:math:`\sigma_{max}`); a pipeline that edits the state between steps (inpainting's blend), since a
solver's state cannot be replaced mid-solve; an img2img start (``set_begin_index``, or a first
``timestep`` past the first) that is not at a grid point where the same solver restarted on the rest
of the grid makes the same requests.
"""

from __future__ import annotations

import queue
import threading
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

try:
    from diffusers.configuration_utils import ConfigMixin, register_to_config
    from diffusers.schedulers.scheduling_utils import SchedulerMixin
    from diffusers.utils import BaseOutput
except ImportError as err:  # pragma: no cover - exercised only without diffusers
    raise ImportError(
        "sdediff.integrations.diffusers needs the diffusers package: pip install 'sdediff[diffusers]'"
    ) from err

from .. import sample as _sample
from .. import solve as _solve
from .. import timesteps as _timesteps
from .._utils import work_dtype
from ..calibration import CalibratedGrid
from ..model import (
    PREDICTIONS,
    Coefficients,
    DiffusionModel,
    canonical_prediction,
    eps_scaled_x0,
    step_values,
    unwrap_output,
)
from ..processes import DiscreteVP, LinearProcess, RectifiedFlow
from ..solve import DEFAULT_SOLVER
from ..solvers import SOLVERS, FixedStepSolver, get_solver

__all__ = ["Scheduler", "SchedulerOutput", "model_from_diffusers", "process_from_diffusers"]

_LEARNED_VARIANCE = ("learned", "learned_range")


# ------------------------------------------------------------------------------------------ configs
def _config(obj: Any) -> dict[str, Any]:
    """The config dict of a pipeline, a scheduler or a config (``_class_name`` kept)."""
    if isinstance(obj, Mapping):
        return dict(obj)
    sched = getattr(obj, "scheduler", None)
    if sched is not None and not isinstance(obj, SchedulerMixin):
        obj = sched
    cfg = getattr(obj, "config", None)
    if isinstance(cfg, Mapping):
        out = dict(cfg)
        out.setdefault("_class_name", type(obj).__name__)
        return out
    raise TypeError(f"expected a diffusers scheduler, its config dict or a pipeline, got {type(obj).__name__}")


def _is_flow(cfg: Mapping[str, Any]) -> bool:
    """A flow-matching config: by class name, by ``prediction_type``, by sdediff's ``flow`` key, or (a bare
    ``scheduler.config`` has no class name) by flow matching's ``shift`` keys without any beta schedule."""
    name = str(cfg.get("_class_name", ""))
    bare_flow = "beta_schedule" not in cfg and "trained_betas" not in cfg and (
        "use_dynamic_shifting" in cfg or "shift" in cfg)
    return "FlowMatch" in name or cfg.get("prediction_type") == "flow_prediction" or bool(cfg.get("flow")) \
        or bare_flow


class _FlowLabels:
    """Flow matching's label :math:`N t` (diffusers' ``timesteps = sigmas * num_train_timesteps``)."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __call__(self, t: torch.Tensor) -> torch.Tensor:
        return self.n * t

    def inverse(self, label: torch.Tensor) -> torch.Tensor:
        return label / self.n


def process_from_diffusers(scheduler_or_config: Any) -> tuple[LinearProcess, Callable[[torch.Tensor], torch.Tensor]]:
    """The process and the time-label map of a diffusers scheduler, config or pipeline."""
    if isinstance(scheduler_or_config, Scheduler):
        return scheduler_or_config.process, scheduler_or_config.time_label
    cfg = _config(scheduler_or_config)
    if _is_flow(cfg):
        n = int(cfg.get("num_train_timesteps", 1000))
        return RectifiedFlow(), _FlowLabels(n)
    src = scheduler_or_config
    if not hasattr(src, "alphas_cumprod"):
        src = getattr(src, "scheduler", cfg)
        if not hasattr(src, "alphas_cumprod"):
            src = cfg
    proc = DiscreteVP.from_diffusers(src)
    return proc, proc.time_label


def _prediction_of(cfg: Mapping[str, Any], prediction: str | None) -> str:
    if prediction is not None:
        return canonical_prediction(prediction)
    if _is_flow(cfg):
        return "velocity"
    return canonical_prediction(cfg.get("prediction_type", "epsilon") or "epsilon")


class _Net:
    """A diffusers network seen as ``net(x, label, **cond) -> tensor``: ``.sample`` / tuple outputs
    unwrapped, and the variance half of learned-variance outputs dropped."""

    def __init__(self, net: Callable[..., Any], learned_variance: bool) -> None:
        self.net, self.learned_variance = net, learned_variance
        self.__name__ = getattr(net, "__name__", type(net).__name__)

    def __call__(self, x: torch.Tensor, label: torch.Tensor, **cond: Any) -> Any:
        out = unwrap_output(self.net(x, label, **cond))
        if self.learned_variance and isinstance(out, torch.Tensor) and out.ndim > 1 \
                and out.shape[1] == 2 * x.shape[1]:
            out = out[:, : x.shape[1]]
        return out


def model_from_diffusers(net: Callable[..., Any], scheduler_or_config: Any, *, prediction: str | None = None,
                         cond: Mapping[str, Any] | None = None) -> DiffusionModel:
    """A :class:`~sdediff.DiffusionModel` of a diffusers network on the process of its scheduler.

    Args:
        net: the network, e.g. a ``UNet2DModel``, called as ``net(x, label, **cond)``; its
            ``UNet2DOutput`` (``.sample``) or tuple return is unwrapped, and with a learned-variance
            config (``variance_type`` ``learned``/``learned_range``) the first ``C`` channels are kept.
        scheduler_or_config: a diffusers scheduler, its ``config`` dict, a pipeline (its scheduler)
            or a :class:`Scheduler`.
        prediction: overrides the config's ``prediction_type`` (sdediff or diffusers names).
        cond: conditioning keywords for every call (e.g. ``encoder_hidden_states``).

    ``model_from_diffusers(pipe.unet, pipe.scheduler)`` replaces the glue
    ``net = lambda x, t: unet(x, t).sample`` plus a prediction-name table plus
    ``DiffusionModel(net, DiscreteVP.from_diffusers(sched), ...)``.
    """
    if not callable(net):
        raise TypeError(f"net must be callable (a diffusers UNet or any net(x, t, **cond)), got {type(net).__name__}")
    cfg = _config(scheduler_or_config) if not isinstance(scheduler_or_config, Scheduler) \
        else dict(scheduler_or_config.config)
    process, label = process_from_diffusers(scheduler_or_config)
    pred = _prediction_of(cfg, prediction)
    learned = cfg.get("variance_type") in _LEARNED_VARIANCE
    return DiffusionModel(_Net(net, learned), process, pred, time_label=label, cond=cond)


# ---------------------------------------------------------------------------------------- grids
class _Leading:
    """diffusers' ``leading`` spacing with ``steps_offset``: labels ``(N // n) k + offset``, then ``t = 0``."""

    def __init__(self, offset: int) -> None:
        self.offset = int(offset)

    def __call__(self, process: DiscreteVP, n: int) -> torch.Tensor:
        if self.offset == 0:
            return _timesteps.leading(process, n)
        labels = torch.arange(n - 1, -1, -1, dtype=torch.float64) * (process.N // n) + self.offset
        if float(labels[0]) > process.N - 1:
            raise ValueError(f"steps_offset={self.offset} with {n} leading steps gives label {int(labels[0])} > "
                             f"{process.N - 1}; use fewer steps or steps_offset=0")
        return torch.cat([process.t_from_label(labels), torch.zeros(1, dtype=torch.float64)])


class _ShiftedFlow:
    r"""Flow matching's default grid (diffusers' ``FlowMatchEulerDiscreteScheduler``): with the shift
    :math:`S(u) = s u / (1 + (s - 1) u)` (Esser et al. 2024), :math:`u` uniform from 1 to
    :math:`S(1/N)`, then :math:`t = S(u)`, then ``t = 0``."""

    def __init__(self, shift: float, n_train: int) -> None:
        self.shift, self.n_train = float(shift), int(n_train)

    def __call__(self, process: LinearProcess, n: int) -> torch.Tensor:
        def shift(u: torch.Tensor) -> torch.Tensor:
            return self.shift * u / (1.0 + (self.shift - 1.0) * u)

        u_end = float(shift(torch.tensor(1.0 / self.n_train, dtype=torch.float64)))
        t = shift(torch.linspace(1.0, u_end, n, dtype=torch.float64))
        return torch.cat([t, t.new_zeros(1)])


#: diffusers schedulers whose ``"linspace"`` spacing is ``round(linspace(0, N-1, n+1))[::-1][:-1]`` (no label 0),
#: sdediff's ``linspace_multistep``; DDIM, DDPM and PNDM mean ``round(linspace(0, N-1, n))[::-1]``, sdediff's
#: ``linspace`` (Euler, Heun, LMS and KDPM2 take those labels unrounded; sdediff rounds them).
#: ``DPMSolverSinglestepScheduler`` has no ``timestep_spacing`` key and always spaces so.
_MULTISTEP_LINSPACE = frozenset({"DPMSolverMultistepScheduler", "UniPCMultistepScheduler",
                                 "DEISMultistepScheduler", "SASolverScheduler", "DPMSolverSinglestepScheduler"})


def _multistep_family(cfg: Mapping[str, Any]) -> bool:
    """A config of one of :data:`_MULTISTEP_LINSPACE`: by its class name or, since a bare ``scheduler.config``
    has none, by those schedulers' ``solver_order`` / ``predictor_order`` keys."""
    name = str(cfg.get("_class_name", ""))
    if name:
        return name in _MULTISTEP_LINSPACE
    return "solver_order" in cfg or "predictor_order" in cfg


_SPACINGS: dict[str, Callable[[Mapping[str, Any]], Any]] = {
    "leading": lambda cfg: _Leading(int(cfg.get("steps_offset", 0) or 0)),
    "trailing": lambda cfg: "trailing",
    "linspace": lambda cfg: "linspace_multistep" if _multistep_family(cfg) else "linspace",
}


def grid_from_config(cfg: Mapping[str, Any]) -> Any:
    """The grid a diffusers config asks for: its ``timestep_spacing`` (with ``steps_offset`` for
    ``leading``; ``"linspace"`` as the config's scheduler defines it: ``linspace_multistep`` for the
    multistep DPM-Solver, UniPC, DEIS and SA-Solver, and for the singlestep DPM-Solver, which has no
    ``timestep_spacing`` and always spaces so), ``karras`` with ``use_karras_sigmas``, the shifted grid
    for flow matching."""
    if _is_flow(cfg):
        return _ShiftedFlow(float(cfg.get("shift", 1.0) or 1.0), int(cfg.get("num_train_timesteps", 1000)))
    if cfg.get("use_karras_sigmas"):
        return "karras"
    default = "linspace" if _multistep_family(cfg) else "leading"
    spacing = cfg.get("timestep_spacing", default) or default
    if spacing not in _SPACINGS:
        raise ValueError(f"unknown timestep_spacing {spacing!r}; valid: {', '.join(_SPACINGS)} (or pass grid=)")
    return _SPACINGS[spacing](cfg)


# ------------------------------------------------------------------------------- the coroutine
class _Cancelled(BaseException):
    """Ends a worker's solve (a BaseException, so no ``except Exception`` in a solver swallows it)."""


class _Runner:
    """One :func:`sdediff.solve` run in a worker thread, paused at every model request."""

    def __init__(self, run: Callable[[Callable[..., torch.Tensor]], torch.Tensor]) -> None:
        self._inbox: queue.SimpleQueue[tuple[str, Any]] = queue.SimpleQueue()
        self._outbox: queue.SimpleQueue[tuple[str, Any]] = queue.SimpleQueue()
        grad, inference = torch.is_grad_enabled(), torch.is_inference_mode_enabled()
        self._thread = threading.Thread(target=self._work, args=(run, grad, inference), daemon=True,
                                        name="sdediff-scheduler")
        self._thread.start()

    def _net(self, x: torch.Tensor, label: torch.Tensor, **cond: Any) -> torch.Tensor:
        self._outbox.put(("request", x))
        kind, value = self._inbox.get()
        if kind == "cancel":
            raise _Cancelled
        return value

    def _work(self, run: Callable[..., torch.Tensor], grad: bool, inference: bool) -> None:
        try:
            with torch.inference_mode(inference), torch.set_grad_enabled(grad):
                x = run(self._net)
            self._outbox.put(("done", x))
        except _Cancelled:
            pass
        except BaseException as exc:  # forwarded to the waiting step()
            self._outbox.put(("error", exc))

    def next(self, output: torch.Tensor | None = None) -> tuple[str, Any]:
        """Hand in the model output for the pending request (none before the first) and wait for the
        next request or the end."""
        if output is not None:
            self._inbox.put(("output", output))
        kind, value = self._outbox.get()
        if kind == "error":
            raise value
        return kind, value

    def cancel(self) -> None:
        if self._thread.is_alive():
            self._inbox.put(("cancel", None))
            self._thread.join(timeout=10.0)


class _PerRequestLabels(DiffusionModel):
    """A model without per-solve schedule records (:meth:`~sdediff.ScoreModel.coefficients`), so the
    label function runs at each request and the recorder sees the request times in order."""

    def coefficients(self, t: float) -> None:
        return None

    def coefficients_grid(self, ts: torch.Tensor) -> None:
        return None


class _Recorder:
    """A zero-cost network that records the request times and states (for ``set_timesteps``)."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self.states: list[torch.Tensor] = []

    def label(self, inner: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[torch.Tensor], torch.Tensor]:
        def rec(t: torch.Tensor) -> torch.Tensor:
            self.times.append(float(torch.as_tensor(t).detach().flatten()[0]))
            return inner(t)
        return rec

    def __call__(self, x: torch.Tensor, label: torch.Tensor, **cond: Any) -> torch.Tensor:
        self.states.append(x.detach().clone())
        return torch.zeros_like(x)


@dataclass
class SchedulerOutput(BaseOutput):
    """``prev_sample``: the state at the next request (the final sample after the last);
    ``pred_original_sample``: the :math:`\\hat x_0` prediction at the current request."""

    prev_sample: torch.Tensor
    pred_original_sample: torch.Tensor | None = None


def _same_state(a: torch.Tensor, b: torch.Tensor) -> bool:
    """The first request is at the initial state up to round-off (e.g. Heun's ``alpha * (x / alpha)``);
    the pipeline evaluates its network at the initial state itself."""
    return a.shape == b.shape and bool(torch.allclose(a.to(b.dtype), b, rtol=1e-5, atol=1e-6))


def _check_solver(solver: Any) -> Any:
    obj = get_solver(solver)
    if obj.adaptive or not isinstance(obj, FixedStepSolver):
        fixed = sorted(k for k, v in SOLVERS.items() if isinstance(v, FixedStepSolver) and not v.adaptive)
        raise ValueError(f"Scheduler runs sdediff's fixed-step solvers (their model requests are known from the "
                         f"grid); {solver!r} is not one. Valid: {', '.join(fixed)}")
    return obj


# -------------------------------------------------------------------------------------- scheduler
class Scheduler(SchedulerMixin, ConfigMixin):
    """A diffusers scheduler that runs a fixed-step sdediff solver on an sdediff grid (module docstring).

    Args (besides the DDPM-family config keys, read as :meth:`DiscreteVP.from_diffusers` reads them,
    and flow matching's ``shift``):
        solver: a fixed-step solver name of :data:`sdediff.solvers.SOLVERS` (or a solver object; the config
            then records its registry name, or None for an unregistered one).
        grid: a grid name of :data:`sdediff.timesteps.GRIDS`, a callable ``grid(process, n)`` (not saved
            by ``save_config``, pass it again to ``from_config``), a :class:`~sdediff.CalibratedGrid`
            (``num_inference_steps`` must then be its ``steps``; ``save_config`` records the whole grid, its
            per-step ``eps_scale`` included, and ``from_config`` rebuilds it), or the
            times themselves; ``None`` follows the config's ``timestep_spacing`` / ``steps_offset`` (or the
            shifted flow grid).
        solver_options: ``options=`` of :func:`sdediff.sample`.
    """

    config_name = "scheduler_config.json"
    _compatibles: ClassVar[list[Any]] = []
    order = 1

    @register_to_config
    def __init__(self, num_train_timesteps: int = 1000, beta_start: float = 0.0001, beta_end: float = 0.02,
                 beta_schedule: str = "linear", trained_betas: Sequence[float] | None = None,
                 prediction_type: str = "epsilon", timestep_spacing: str = "leading", steps_offset: int = 0,
                 rescale_betas_zero_snr: bool = False, variance_type: str | None = None,
                 use_karras_sigmas: bool = False, shift: float = 1.0, flow: bool = False,
                 solver: str = DEFAULT_SOLVER, grid: Any = None, solver_options: dict[str, Any] | None = None) -> None:
        if trained_betas is not None and not isinstance(trained_betas, list):
            self.register_to_config(trained_betas=[float(b) for b in torch.as_tensor(trained_betas).flatten()])
        if isinstance(grid, Mapping):  # a CalibratedGrid's record, as save_config wrote it
            grid = CalibratedGrid.from_dict(grid)
        if isinstance(grid, torch.Tensor):
            self.register_to_config(grid=[float(v) for v in grid.detach().flatten()])
        elif isinstance(grid, CalibratedGrid):  # the config records the whole grid (JSON): times, scales, provenance
            self.register_to_config(grid=grid.to_dict())
        elif callable(grid):  # not JSON: the config records None, pass the grid again to from_config
            self.register_to_config(grid=None)
        if solver is None:
            raise ValueError("solver is None (a config saved from an unregistered solver object); pass solver= "
                             "with a name of sdediff.solvers.SOLVERS or the solver object")
        self.solver = _check_solver(solver)
        if not isinstance(solver, str):  # a solver object: the config records its registry name, if it has one
            self.register_to_config(solver=next((k for k, v in SOLVERS.items() if v is solver), None))
        cfg = dict(self.config)
        if flow:
            cfg["prediction_type"] = "flow_prediction"
        self.process, self.time_label = process_from_diffusers(cfg)
        self.prediction = _prediction_of(cfg, None)
        self.learned_variance = variance_type in _LEARNED_VARIANCE
        self.grid = grid_from_config(cfg) if grid is None else grid
        self.solver_options = dict(solver_options or {})
        self.order = int(getattr(self.solver, "nfe_per_step", 1)) or 1
        self.init_noise_sigma = float(getattr(self.process.prior, "std", 1.0))
        self.timesteps: torch.Tensor | None = None
        self.sigmas: torch.Tensor | None = None
        self.num_inference_steps: int | None = None
        self._times: list[float] = []
        self._grid_ts: torch.Tensor | None = None
        self._run_args: dict[str, Any] = {}
        self._runner: _Runner | None = None
        self._finalizer: Any = None
        self._step_index: int | None = None
        self._begin_index: int | None = None
        self._expected: torch.Tensor | None = None
        self._generator: Any = None
        self._coefs: list[list[float]] = []
        self._scales: list[float] | None = None

    @classmethod
    def from_config(cls, config: Any = None, return_unused_kwargs: bool = False, **kwargs: Any) -> Any:
        """As diffusers' ``from_config``; a flow-matching config gives the flow process."""
        cfg = _config(config) if config is not None else {}
        if _is_flow(cfg):
            kwargs.setdefault("flow", True)
        if kwargs.get("grid") is None and cfg.get("grid") is None and not _is_flow(cfg):
            # the class decides what the config's spacing means (its name is not passed to __init__):
            # record that grid by name, so save_config / from_config keep it
            grid = grid_from_config({**cfg, **kwargs})  # an override (timestep_spacing=...) counts
            if isinstance(grid, str) and grid == "linspace_multistep":
                kwargs["grid"] = grid
        return super().from_config(cfg, return_unused_kwargs=return_unused_kwargs, **kwargs)

    def __len__(self) -> int:
        return int(self.config.num_train_timesteps)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_runner"] = state["_finalizer"] = None
        return state

    # ------------------------------------------------------------------ diffusers' scheduler API
    @property
    def step_index(self) -> int | None:
        return self._step_index

    @property
    def begin_index(self) -> int | None:
        return self._begin_index

    def set_begin_index(self, begin_index: int = 0) -> None:
        """Start at request ``begin_index`` (img2img pipelines call this)."""
        self._begin_index = int(begin_index)

    def scale_model_input(self, sample: torch.Tensor, timestep: Any = None) -> torch.Tensor:
        """The network sees the state itself (sdediff's state is not rescaled)."""
        return sample

    def _label_to_time(self, labels: torch.Tensor) -> torch.Tensor:
        inverse = getattr(self.time_label, "inverse", None) or self.process.t_from_label  # type: ignore[attr-defined]
        return inverse(labels.to(torch.float64))

    def set_timesteps(self, num_inference_steps: int | None = None, device: str | torch.device | None = None,
                      timesteps: Sequence[float] | torch.Tensor | None = None,
                      sigmas: Sequence[float] | torch.Tensor | None = None, *, generator: Any = None,
                      **kwargs: Any) -> None:
        """Fix the grid and list the solver's model requests in ``timesteps`` (diffusers labels).

        Give one of ``num_inference_steps`` (the solver's steps on ``grid``), ``timesteps`` (labels of
        the grid points, decreasing; the solve then denoises onto ``t = 0``) or ``sigmas``
        (diffusers' :math:`\\sigma/\\alpha` at the grid points, ``n + 1`` values; a last 0 ends on the data).
        ``generator`` is the default for ``step``.
        """
        given = [v is not None for v in (num_inference_steps, timesteps, sigmas)]
        if sum(given) != 1:
            raise ValueError("pass exactly one of num_inference_steps=, timesteps= or sigmas= to set_timesteps "
                             f"(got num_inference_steps={num_inference_steps!r}, timesteps={timesteps!r}, "
                             f"sigmas={sigmas!r})")
        grid, steps = self.grid, num_inference_steps
        if timesteps is not None:
            lab = torch.as_tensor(timesteps, dtype=torch.float64).flatten()
            grid = torch.cat([self._label_to_time(lab), torch.zeros(1, dtype=torch.float64)])
            steps = len(lab)
        elif sigmas is not None:
            sig = torch.as_tensor(sigmas, dtype=torch.float64).flatten()
            if sig.numel() < 2 or not bool((sig[:-1] > 0).all()) or float(sig[-1]) < 0:
                raise ValueError(f"sigmas must hold at least 2 values, all > 0 but a last one >= 0; got {sig.tolist()}")
            pos = sig[:-1] if float(sig[-1]) == 0.0 else sig
            # diffusers' sigma is sigma/alpha for the DDPM family and t itself for flow matching
            ts = pos if isinstance(self.process, RectifiedFlow) else self.process.t_from_log_snr(-torch.log(pos))
            grid = torch.cat([ts, ts.new_zeros(1)]) if float(sig[-1]) == 0.0 else ts
            steps = len(sig) - 1
        elif isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ValueError(f"num_inference_steps must be an int >= 1, got {num_inference_steps!r}")
        elif isinstance(grid, CalibratedGrid):
            grid.steps_for(steps, "num_inference_steps")
        self._cancel()
        self._run_args = {"solver": self.solver, "steps": int(steps), "grid": grid,
                          "options": dict(self.solver_options)}
        self._times, self._grid_ts = self._plan(int(steps), grid)
        t = torch.tensor(self._times, dtype=torch.float64)
        p = self.process
        self._coefs = [c.tolist() for c in (p.alpha(t), p.sigma(t), p.d_alpha(t), p.d_sigma(t))]
        # a CalibratedGrid's per-step noise-prediction scales at the requests (None without them), so that
        # pred_original_sample is the x0 the solver uses: s x0 + (1 - s) x / alpha (sdediff.model.EpsScaled)
        self._scales = (step_values(grid.times, torch.tensor(grid.eps_scale, dtype=torch.float64), t).tolist()
                        if isinstance(grid, CalibratedGrid) and grid.eps_scale is not None else None)
        labels = self.time_label(t)
        as_int = bool(((labels - labels.round()).abs() < 1e-6).all())
        self.timesteps = (labels.round().to(torch.int64) if as_int else labels.to(torch.float32)).to(device)
        ve = t if isinstance(self.process, RectifiedFlow) else self.process.sigma(t) / self.process.alpha(t)
        self.sigmas = torch.cat([ve, torch.zeros(1, dtype=torch.float64)]).to(torch.float32).to(device)
        self.num_inference_steps = int(steps)
        self._generator = generator
        self._step_index = None
        self._begin_index = None

    def _plan(self, steps: int, grid: Any) -> tuple[list[float], torch.Tensor]:
        """The request times and the grid, from one solve on a (1, 1) state with a zero-cost recording
        model (cached per steps and grid: a pipeline calls set_timesteps on every call)."""
        key = (steps, grid if isinstance(grid, str) else tuple(grid.tolist()) if isinstance(grid, torch.Tensor)
               else tuple(grid) if isinstance(grid, (list, tuple)) else id(grid))
        cache = self.__dict__.setdefault("_plans", {})
        if key in cache:
            return cache[key][0], cache[key][1]
        rec = _Recorder()
        model = _PerRequestLabels(rec, self.process, self.prediction, time_label=rec.label(self.time_label))
        x_rec = torch.full((1, 1), 0.7, dtype=torch.float64)
        sol = _sample(model, (1, 1), x_T=x_rec, generator=torch.Generator().manual_seed(0), save="all",
                      **self._run_args)
        if not rec.times:
            raise ValueError("the solver made no model request on this grid; nothing to schedule")
        if not _same_state(rec.states[0], x_rec):
            raise ValueError(f"solver {self.solver.name!r} first evaluates the model at a perturbed state (e.g. "
                             "Heun's churn at the first sigma), which a pipeline cannot supply; use another solver "
                             "or a grid whose first sigma lies outside the churn range")
        cache[key] = (rec.times, sol.ts.detach().cpu(), grid)  # the grid object is kept: its id stays unique
        return rec.times, cache[key][1]

    def index_for_timestep(self, timestep: Any) -> int:
        """The first request whose label is ``timestep``."""
        if self.timesteps is None:
            raise ValueError("call set_timesteps() before step()")
        value = float(torch.as_tensor(timestep).detach().flatten()[0])
        hits = torch.nonzero((self.timesteps.detach().cpu().to(torch.float64) - value).abs() < 1e-4).flatten()
        if hits.numel() == 0:
            raise ValueError(f"timestep {value!r} is not one of the scheduler's timesteps "
                             f"{self.timesteps.tolist()}; pass the values of scheduler.timesteps")
        return int(hits[0])

    def _start(self, k: int, sample: torch.Tensor, generator: Any) -> None:
        args = dict(self._run_args)
        proc, pred, label = self.process, self.prediction, self.time_label
        if k == 0:
            def run(net: Callable[..., torch.Tensor]) -> torch.Tensor:
                model = DiffusionModel(net, proc, pred, time_label=label)
                return _sample(model, tuple(sample.shape), x_T=sample, generator=generator, **args).x
        else:
            ts = self._restart_grid(k)
            opts = args["options"]
            grid = args["grid"]

            def run(net: Callable[..., torch.Tensor]) -> torch.Tensor:
                model = DiffusionModel(net, proc, pred, time_label=label)
                if isinstance(grid, CalibratedGrid):  # its per-step scales, as sample() applies them
                    model = grid.model_for(model)
                return _solve(model, sample, ts=ts.to(sample.device), solver=args["solver"],
                                        generator=generator, options=opts).x
        self._runner = _Runner(run)
        self._finalizer = weakref.finalize(self, self._runner.cancel)
        kind, x = self._runner.next()
        if kind != "request" or not _same_state(x, sample):
            self._cancel()
            raise RuntimeError("the solver's first request is not at the given sample; this is a bug in "
                               "sdediff's Scheduler")

    def _restart_grid(self, k: int) -> torch.Tensor:
        """The rest of the grid from request ``k``, checked to give the same remaining requests."""
        t_k = self._times[k]
        grid = self._grid_ts
        j = int(torch.argmin((grid - t_k).abs()))
        if abs(float(grid[j]) - t_k) > 1e-12 * max(1.0, abs(t_k)):
            raise ValueError(f"request {k} (label {self.timesteps[k].item()}) is an intermediate stage of a step "
                             f"of {self.solver.name!r}, not a grid point; start at a multiple of scheduler.order")
        rest = grid[j:]
        rec = _Recorder()
        model = _PerRequestLabels(rec, self.process, self.prediction, time_label=rec.label(self.time_label))
        _solve(model, torch.ones(1, 1, dtype=torch.float64), ts=rest, solver=self.solver,
                         generator=torch.Generator().manual_seed(0), options=self._run_args["options"])
        if len(rec.times) != len(self._times) - k or any(
                abs(a - b) > 1e-12 for a, b in zip(rec.times, self._times[k:], strict=False)):
            raise ValueError(f"{self.solver.name!r} restarted at request {k} makes other requests than the full "
                             "solve; start from the first timestep or use a solver without a step plan")
        return rest

    def _x0(self, k: int, out: torch.Tensor, sample: torch.Tensor) -> torch.Tensor:
        r""":math:`\hat x_0` at request ``k`` by the model's conversion table, from the schedule at the
        request times computed once in ``set_timesteps``."""
        wd = work_dtype(sample)
        coef = Coefficients(*(torch.tensor(v[k], dtype=wd, device=sample.device) for v in self._coefs))
        x0 = PREDICTIONS[self.prediction](out.to(wd), sample.to(wd), coef)[0]
        if self._scales is not None:  # the calibrated grid's scale of this request's step
            x0 = eps_scaled_x0(x0, sample.to(wd), coef.alpha, self._scales[k])
        return x0.to(sample.dtype)

    def _cancel(self) -> None:
        if self._finalizer is not None:
            self._finalizer()
        self._runner = self._finalizer = None
        self._expected = None

    def step(self, model_output: torch.Tensor, timestep: Any, sample: torch.Tensor, generator: Any = None,
             return_dict: bool = True, **kwargs: Any) -> SchedulerOutput | tuple[torch.Tensor, torch.Tensor]:
        """Hand in the model output at the current request and advance the solver to its next one.

        ``kwargs`` (``eta``, ``use_clipped_model_output``, ... of other schedulers) are ignored: the
        solver fixes the update. Returns ``prev_sample`` (next request's state, or the final sample)
        and ``pred_original_sample`` (:math:`\\hat x_0` at the current request; on a
        :class:`~sdediff.CalibratedGrid` with per-step scales, the scaled :math:`\\tilde x_0` the solver uses).
        """
        if self.timesteps is None:
            raise ValueError("call set_timesteps() before step()")
        if self._step_index is None:
            self._step_index = self._begin_index if self._begin_index is not None else self.index_for_timestep(timestep)
        k = self._step_index
        if k >= len(self._times):
            raise ValueError(f"step() called {k + 1} times but the solver makes {len(self._times)} requests; "
                             "call set_timesteps() again to start a new solve")
        out = unwrap_output(model_output)
        if self.learned_variance and out.ndim > 1 and out.shape[1] == 2 * sample.shape[1]:
            out = out[:, : sample.shape[1]]
        if self._runner is None:
            gen = generator if generator is not None else self._generator
            self._start(k, sample, gen)
        elif self._expected is not None and sample is not self._expected and not torch.equal(sample, self._expected):
            raise ValueError("the pipeline changed the sample between steps (e.g. inpainting's blend); sdediff's "
                             "Scheduler cannot replace a solver's state mid-solve. Use a diffusers scheduler for "
                             "such pipelines, or pass back the prev_sample unchanged")
        kind, x = self._runner.next(out.to(sample.dtype))  # type: ignore[union-attr]
        self._step_index = k + 1
        if kind == "done":
            if k + 1 != len(self._times):
                raise RuntimeError(f"the solve ended after {k + 1} of {len(self._times)} requests")
            self._runner = self._finalizer = None
        prev = x.clone()
        self._expected = prev
        x0 = self._x0(k, out, sample)
        if not return_dict:
            return prev, x0
        return SchedulerOutput(prev_sample=prev, pred_original_sample=x0)

    def add_noise(self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps: Any) -> torch.Tensor:
        r""":math:`x_t = \alpha_t x_0 + \sigma_t\epsilon` at the labels ``timesteps`` (scalar or per sample)."""
        lab = torch.as_tensor(timesteps).detach().to(device="cpu", dtype=torch.float64).flatten()
        t = self._label_to_time(lab)
        if t.numel() == 1:
            t = t.reshape(())
        x = self.process.marginal(t.to(original_samples.device), original_samples.to(torch.float64)
                                  if original_samples.dtype == torch.float64 else original_samples, noise)
        return x.to(original_samples.dtype)

    @property
    def grid_times(self) -> torch.Tensor:
        """The float64 grid of the solve (after ``set_timesteps``); ``grid_times[j:]`` restarts it at point ``j``."""
        if self._grid_ts is None:
            raise ValueError("call set_timesteps() first")
        return self._grid_ts.clone()

    def sample_kwargs(self) -> dict[str, Any]:
        """The :func:`sdediff.sample` keywords that reproduce this scheduler's solve (after ``set_timesteps``)."""
        if not self._run_args:
            raise ValueError("call set_timesteps() first")
        return dict(self._run_args)

    def __repr__(self) -> str:
        return f"sdediff.integrations.diffusers.Scheduler(solver={self.solver.name!r}, grid={self.grid!r}, " \
               f"process={self.process!r}, prediction={self.prediction!r})"
