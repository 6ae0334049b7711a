r"""Exact-score benchmark targets: the data, the process users sample it with, and the model.

Four diverse targets with exact scores (so a solver's error is the only error), each under a process
users run (the DDPM linear schedule, EDM, the continuous VP SDE):

==================  ==================================================================  ===========
name                data                                                                process
==================  ==================================================================  ===========
``2d-sharp``        8 equal modes of std 0.05 on a circle of radius 2 (2-D)             DiscreteVP
``64d-aniso``       8 modes in 64-D, per-dimension stds log-spaced in [0.05, 1]         DiscreteVP
``image-3x8x8``     6 modes of 3×8×8 images with structured means (gradients, stripes,  EDM
                    checkerboard, a blob), pixel std 0.1; states shaped ``(B, 3, 8, 8)``
``box-16d``         uniform on a 16-D box (widths 0.5 to 2): not a Gaussian mixture     VPSDE
==================  ==================================================================  ===========

``TARGETS[name]()`` returns a :class:`Target`; the names are stable (benchmarks and the grid
calibration read them). ``benchmarks/accuracy.py`` runs every solver and peer on them.

**Held-out targets.** :data:`HELDOUT_TARGETS` holds three more, defined after every default, grid
setting and calibration setting of the library had been chosen on the four above, and never used to choose
one: they measure how those choices carry over to targets they were not developed on.

=========================  ===========================================================  ===========
name                       data                                                         process
=========================  ===========================================================  ===========
``heldout-2d-grid``        25 modes on a 5×5 lattice (spacing 1), stds 0.02 to 0.08,   DiscreteVP
                           weights 1 to 3 (2-D)
``heldout-32d-clusters``   12 modes in 32-D, per-dimension stds log-spaced in          VPSDE
                           [0.02, 0.5], unequal weights
``heldout-image-1x12x12``  8 modes of 1×12×12 images (rings, diagonals, corners, bars), EDM
                           pixel std 0.05; states shaped ``(B, 1, 12, 12)``
=========================  ===========================================================  ===========

**Reference ends.** Every linear process has the same probability-flow ODE in EDM's variables
:math:`y = x/\alpha`, :math:`\rho = \sigma/\alpha`: :math:`dy/d\rho = (y - D(\rho, y))/\rho`, with
:math:`D` the exact denoiser :math:`E[x_0 \mid y]` at noise level :math:`\rho`. With :math:`u = \log\rho`
it reads :math:`dy/du = y - D(e^u, y)`, smooth in :math:`u` (no knots of a discrete schedule), which
:func:`edm_flow` integrates with dopri8 in float64. :meth:`Target.reference_data` runs it from
:math:`\log\rho(T)` to :math:`\log 10^{-7}` and applies :math:`D` there (an :math:`O(\rho^2)` step
onto σ = 0); :meth:`Target.reference_at` stops at the ρ of a positive time ``t`` and returns
:math:`x = \alpha(t) y`. :meth:`Target.reference_check` re-solves 10x looser and returns the RMS
difference (the reference's own error is far below it).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from .analytic import GaussianMixture, UniformBox
from .model import DiffusionModel
from .noise import GeneratorSpec
from .processes import EDM, VPSDE, DiscreteVP, LinearProcess

REFERENCE_RHO_END = 1e-7
"""The ρ = σ/α where the σ = 0 reference stops integrating (then one exact denoiser step onto σ = 0)."""
REFERENCE_TOL = 1e-10
"""rtol = atol of the dopri8 reference solve."""


def edm_flow(dist: GaussianMixture | UniformBox, y: torch.Tensor, rho_from: float, rho_to: float,
             solver: str = "dopri8", tol: float = REFERENCE_TOL) -> tuple[torch.Tensor, int]:
    r"""The PF-ODE in EDM variables, :math:`dy/du = y - D(e^u, y)` with :math:`u = \log\rho`, from
    :math:`\rho` = ``rho_from`` to ``rho_to`` (> 0), for ``y`` of shape ``(B, dim)`` (float64).

    Returns the end point and the number of denoiser evaluations. ``solver`` is an adaptive sdediff
    solver name (``"dopri8"``, ``"dopri5"``: torchdiffeq's), ``tol`` its rtol = atol."""
    if not (rho_from > 0 and rho_to > 0):
        raise ValueError(f"rho_from and rho_to must be > 0, got {rho_from!r}, {rho_to!r}; the sigma = 0 end is "
                         "Target.reference_data")
    from .benchmarking import edm_variable_flow

    if rho_from == rho_to:
        return y.clone(), 0
    edm = EDM(sigma_min=min(rho_from, rho_to), sigma_max=max(rho_from, rho_to))
    sol = edm_variable_flow(lambda u, v: dist.denoiser(torch.exp(u), v, edm), y,
                            [math.log(rho_from), math.log(rho_to)], solver=solver, rtol=tol, atol=tol, save="final")
    return sol.x, int(sol.stats.nfe)


@dataclass(frozen=True)
class Target:
    """One exact target: ``dist`` (a :class:`~sdediff.analytic.GaussianMixture` or
    :class:`~sdediff.analytic.UniformBox`), the ``process`` it is sampled with, the per-sample
    ``event_shape`` of the states, and a one-line ``description``."""

    name: str
    dist: GaussianMixture | UniformBox
    process: LinearProcess
    event_shape: tuple[int, ...]
    description: str

    @property
    def model(self) -> DiffusionModel:
        """The exact model (score prediction) on states of shape ``(B, *event_shape)``."""
        return self.dist.model(self.process, event_shape=self.event_shape)

    def shape(self, n: int) -> tuple[int, ...]:
        """The batch shape of ``n`` samples."""
        return (n, *self.event_shape)

    def prior(self, n: int, generator: GeneratorSpec) -> torch.Tensor:
        """``n`` float64 draws of the process's prior at ``T`` (the start :math:`x_T`)."""
        return self.process.prior_sample(self.shape(n), generator=generator, dtype=torch.float64)

    def data(self, n: int, generator: GeneratorSpec) -> torch.Tensor:
        """``n`` float64 samples of the data, shaped ``(n, *event_shape)``."""
        return self.dist.sample(n, generator=generator).reshape(self.shape(n))

    # --- EDM variables y = x / alpha, rho = sigma / alpha -------------------------------------------------
    def rho(self, t: float) -> float:
        r""":math:`\rho(t) = \sigma(t)/\alpha(t)` of the process (float)."""
        return float(torch.exp(-self.process.log_snr(torch.tensor(float(t), dtype=torch.float64))))

    def t_of_rho(self, rho: float) -> float:
        """The process time whose ρ = σ/α is ``rho``."""
        return float(self.process.t_from_log_snr(torch.tensor(-math.log(rho), dtype=torch.float64)))

    def alpha(self, t: float) -> float:
        """α(t) of the process (float)."""
        return float(self.process.alpha(torch.tensor(float(t), dtype=torch.float64)))

    def denoiser_edm(self, rho: float | torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        r"""The exact denoiser :math:`D(\rho, y) = E[x_0 \mid x_0 + \rho\,\epsilon = y]` on states of
        shape ``(B, *event_shape)`` (``rho`` a float or a 0-d tensor)."""
        rho_t = torch.as_tensor(rho, dtype=torch.float64).reshape(())
        edm = EDM(sigma_min=min(float(rho_t), REFERENCE_RHO_END), sigma_max=max(float(rho_t), 1.0))
        flat = y.reshape(y.shape[0], -1).to(torch.float64)
        return self.dist.denoiser(rho_t, flat, edm).reshape(y.shape)

    def _flow(self, x_T: torch.Tensor, rho_to: float, tol: float) -> torch.Tensor:
        self._check_x_T(x_T)
        a_T = self.alpha(self.process.T)
        y = x_T.to(torch.float64).reshape(x_T.shape[0], -1) / a_T
        y_end, _ = edm_flow(self.dist, y, self.rho(self.process.T), rho_to, "dopri8", tol)
        return y_end.reshape(x_T.shape)

    def _check_x_T(self, x_T: Any) -> None:
        if not isinstance(x_T, torch.Tensor) or tuple(x_T.shape[1:]) != self.event_shape or x_T.shape[0] < 1:
            raise ValueError(f"x_T must be a tensor of shape (B, *{self.event_shape}) with B >= 1 (e.g. "
                             f"target.prior(n, generator=0)), got {getattr(x_T, 'shape', type(x_T).__name__)}")

    def reference_data(self, x_T: torch.Tensor, *, tol: float = REFERENCE_TOL) -> torch.Tensor:
        r"""The σ = 0 end of the PF-ODE from ``x_T`` (at the process's ``T``), float64: dopri8 at
        rtol = atol = ``tol`` on :math:`dy/du = y - D(e^u, y)` down to :math:`\rho = 10^{-7}`, then
        :math:`x_0 = D(10^{-7}, y)`."""
        y = self._flow(x_T, REFERENCE_RHO_END, tol)
        return self.denoiser_edm(REFERENCE_RHO_END, y)

    def reference_at(self, x_T: torch.Tensor, t: float, *, tol: float = REFERENCE_TOL) -> torch.Tensor:
        r"""The PF-ODE solution at a positive process time ``t`` (e.g. ``process.t_min``, where the
        official DPM-Solver stops) from ``x_T``, in the process's own scale :math:`x = \alpha(t)\,y`."""
        if not (isinstance(t, (int, float)) and 0 < t <= self.process.T):
            raise ValueError(f"t must be a number in (0, T={self.process.T}], got {t!r}; for the sigma = 0 end "
                             "use reference_data")
        return self._flow(x_T, self.rho(t), tol) * self.alpha(t)

    def reference_check(self, x_T: torch.Tensor, t: float | None = None, *, tol: float = REFERENCE_TOL
                        ) -> float:
        """RMS difference (per coordinate) between the reference (``t=None``: the σ = 0 end, else at
        ``t``) and the same solve 10x looser: an upper estimate of the looser one's error."""
        ends = [self.reference_data(x_T, tol=k) if t is None else self.reference_at(x_T, t, tol=k)
                for k in (tol, 10 * tol)]
        return float((ends[0] - ends[1]).pow(2).mean().sqrt())


def run_diffusers_scheduler(denoise: Callable[[float, torch.Tensor], torch.Tensor], x_T: torch.Tensor, cls: Any,
                            cfg: dict[str, Any], steps: int, *, betas: dict[str, Any] | None = None
                            ) -> tuple[torch.Tensor, int, float]:
    r"""Run a diffusers discrete-time scheduler ``cls(**betas, **cfg)`` (default: the DDPM linear betas,
    1000 steps) for ``steps`` timesteps from ``x_T`` (VP scale at label N-1), with the exact
    ε-network :math:`\hat\epsilon = (y - D(\rho, y))/\rho`, :math:`y = x\sqrt{1+\rho^2}` evaluated at the
    ρ the scheduler assigns to each timestep (its ``sigmas`` table when it has one, else
    :math:`\sqrt{(1-\bar\alpha)/\bar\alpha}` of the label). ``denoise(rho, y)`` is the exact denoiser
    on ``y``'s shape.

    Returns the end state (float64, in the VP scale :math:`x = y/\sqrt{1+\rho^2}`, which is the data
    when the end is σ = 0), the NFE, and the ρ of the end (0: the data)."""
    kw = {"num_train_timesteps": 1000, "beta_schedule": "linear", "beta_start": 1e-4, "beta_end": 0.02}
    sched = cls(**(betas or kw), **cfg)
    sched.set_timesteps(steps)
    ac = sched.alphas_cumprod.to(torch.float64)
    table: dict[float, float] = {}
    sig = getattr(sched, "sigmas", None)
    if sig is not None and len(sig) == len(sched.timesteps) + 1:
        table = {round(float(t), 3): float(s) for t, s in zip(sched.timesteps, sig[:-1], strict=True)}
    nfe = 0

    def eps(x: torch.Tensor, label: Any) -> torch.Tensor:
        nonlocal nfe
        nfe += 1
        key = round(float(label), 3)
        rho = table.get(key)
        if rho is None:
            a = float(ac[round(float(label))])
            rho = math.sqrt((1 - a) / a)
        y = x * math.sqrt(1 + rho * rho)
        return (y - denoise(rho, y)) / rho

    sigma_scale = hasattr(sched, "init_noise_sigma") and float(sched.init_noise_sigma) != 1.0
    x = (x_T / math.sqrt(float(ac[-1])) if sigma_scale else x_T).to(torch.float64).clone()
    for t in sched.timesteps:
        xin = sched.scale_model_input(x, t)
        x = sched.step(eps(xin, t).to(x.dtype), t, x).prev_sample
    if sig is not None:
        end = float(sig[-1])
    else:  # DDIM-type: the final alpha_cumprod
        a_end = float(getattr(sched, "final_alpha_cumprod", torch.tensor(1.0)))
        end = math.sqrt(max(0.0, (1 - a_end) / a_end))
    if sigma_scale:
        x = x / math.sqrt(1 + end * end)
    return x.to(torch.float64), nfe, end


def sharp_mixture_2d(n_modes: int = 8, radius: float = 2.0, std: float = 0.05) -> GaussianMixture:
    """``n_modes`` equal-weight modes of std ``std`` on a circle of ``radius``."""
    ang = torch.arange(n_modes, dtype=torch.float64) * (2 * math.pi / n_modes)
    means = radius * torch.stack([ang.cos(), ang.sin()], 1)
    return GaussianMixture(means, std)


def anisotropic_mixture_64d(n_modes: int = 8, dim: int = 64, seed: int = 0) -> GaussianMixture:
    """``n_modes`` modes in ``dim`` dimensions, per-dimension stds log-spaced in [0.05, 1], shuffled."""
    g = torch.Generator().manual_seed(seed)
    means = 1.5 * torch.randn(n_modes, dim, generator=g, dtype=torch.float64)
    base = torch.logspace(math.log10(0.05), 0.0, dim, dtype=torch.float64)
    stds = torch.stack([base[torch.randperm(dim, generator=g)] for _ in range(n_modes)])
    return GaussianMixture(means, stds)


def image_mixture(channels: int = 3, size: int = 8, std: float = 0.1) -> GaussianMixture:
    """Six ``channels × size × size`` image modes in [-1, 1] (flattened): a horizontal and a vertical
    gradient, stripes, a checkerboard, a centred blob and its negative, with channel-dependent tints;
    per-pixel std ``std``."""
    u = torch.linspace(-1.0, 1.0, size, dtype=torch.float64)
    yy, xx = torch.meshgrid(u, u, indexing="ij")
    blob = torch.exp(-(xx**2 + yy**2) / 0.3) * 1.6 - 0.8
    pats = [xx, yy, torch.sign(torch.sin(3 * math.pi * (xx + 1) / 2)) * 0.7,
            ((torch.arange(size)[:, None] + torch.arange(size)[None]) % 2).to(torch.float64) * 1.4 - 0.7,
            blob, -blob]
    tint = torch.linspace(1.0, 0.5, channels, dtype=torch.float64)
    means = torch.stack([(tint[:, None, None] * p[None] * (-1) ** k) for k, p in enumerate(pats)])
    return GaussianMixture(means.reshape(len(pats), -1), std)


def box_16d(dim: int = 16) -> UniformBox:
    """A ``dim``-D box with widths 0.5 to 2 (log-spaced) centred at alternating ±0.3."""
    width = torch.logspace(math.log10(0.5), math.log10(2.0), dim, dtype=torch.float64)
    centre = 0.3 * (-1.0) ** torch.arange(dim, dtype=torch.float64)
    return UniformBox(centre - width / 2, centre + width / 2)


def _factory(name: str, dist: Callable[[], GaussianMixture | UniformBox], process: Callable[[], LinearProcess],
             event_shape: tuple[int, ...], description: str) -> Callable[[], Target]:
    """A function building the :class:`Target` ``name`` afresh (its data and process are built on each call)."""
    def make() -> Target:
        return Target(name, dist(), process(), event_shape, description)

    make.__name__ = make.__qualname__ = f"target_{name.replace('-', '_')}"
    return make


TARGETS: dict[str, Callable[[], Target]] = {t[0]: _factory(*t) for t in (
    ("2d-sharp", sharp_mixture_2d, DiscreteVP, (2,), "8 modes of std 0.05 on a circle (2-D), DDPM linear schedule"),
    ("64d-aniso", anisotropic_mixture_64d, DiscreteVP, (64,),
     "8 modes, per-dimension stds 0.05 to 1 (64-D), DDPM linear schedule"),
    ("image-3x8x8", image_mixture, EDM, (3, 8, 8),
     "6 structured 3x8x8 image modes, pixel std 0.1, EDM (sigma 0.002 to 80)"),
    ("box-16d", box_16d, VPSDE, (16,), "uniform on a 16-D box (widths 0.5 to 2), continuous VP SDE"),
)}
"""The exact benchmark targets: name -> a function returning the :class:`Target` (names are stable)."""


def lattice_mixture_2d(side: int = 5, spacing: float = 1.0) -> GaussianMixture:
    """``side``² modes on a square lattice of ``spacing`` centred at 0, stds cycling over 0.02 to 0.08 and
    weights over 1 to 3 (a deterministic pattern, so neighbouring modes differ)."""
    c = (torch.arange(side, dtype=torch.float64) - (side - 1) / 2) * spacing
    means = torch.cartesian_prod(c, c)
    k = torch.arange(side * side, dtype=torch.float64)
    stds = 0.02 + 0.06 * ((k * 7) % 5) / 4
    weights = 1.0 + 2.0 * ((k * 3) % 4) / 3
    return GaussianMixture(means, stds, weights)


def cluster_mixture_32d(n_modes: int = 12, dim: int = 32, seed: int = 7) -> GaussianMixture:
    """``n_modes`` modes in ``dim`` dimensions (means ``randn``), per-dimension stds log-spaced in
    [0.02, 0.5] and shuffled per mode, weights ``1 + 4 u`` with ``u`` uniform (seeded)."""
    g = torch.Generator().manual_seed(seed)
    means = torch.randn(n_modes, dim, generator=g, dtype=torch.float64)
    base = torch.logspace(math.log10(0.02), math.log10(0.5), dim, dtype=torch.float64)
    stds = torch.stack([base[torch.randperm(dim, generator=g)] for _ in range(n_modes)])
    weights = 1.0 + 4.0 * torch.rand(n_modes, generator=g, dtype=torch.float64)
    return GaussianMixture(means, stds, weights)


def pattern_mixture_12x12(size: int = 12, std: float = 0.05) -> GaussianMixture:
    """Eight ``1 × size × size`` image modes in [-1, 1] (flattened): a ring, a disc, the two diagonals,
    a bright corner, a dark corner, horizontal bars and vertical bars; per-pixel std ``std``."""
    u = torch.linspace(-1.0, 1.0, size, dtype=torch.float64)
    yy, xx = torch.meshgrid(u, u, indexing="ij")
    r = (xx**2 + yy**2).sqrt()
    pats = [torch.exp(-((r - 0.6) ** 2) / 0.02), torch.exp(-(r**2) / 0.15), torch.exp(-((xx - yy) ** 2) / 0.05),
            torch.exp(-((xx + yy) ** 2) / 0.05), torch.exp(-((xx - 1) ** 2 + (yy - 1) ** 2) / 0.4),
            -torch.exp(-((xx + 1) ** 2 + (yy + 1) ** 2) / 0.4), (torch.cos(2 * math.pi * yy) > 0).double(),
            (torch.cos(2 * math.pi * xx) > 0).double()]
    means = torch.stack([1.8 * p - 0.9 for p in pats])
    return GaussianMixture(means.reshape(len(pats), -1), std)


HELDOUT_TARGETS: dict[str, Callable[[], Target]] = {t[0]: _factory(*t) for t in (
    ("heldout-2d-grid", lattice_mixture_2d, DiscreteVP, (2,),
     "25 lattice modes, stds 0.02 to 0.08, weights 1 to 3 (2-D), DDPM linear schedule"),
    ("heldout-32d-clusters", cluster_mixture_32d, VPSDE, (32,),
     "12 modes, per-dimension stds 0.02 to 0.5, unequal weights (32-D), continuous VP SDE"),
    ("heldout-image-1x12x12", pattern_mixture_12x12, EDM, (1, 12, 12),
     "8 patterned 1x12x12 image modes, pixel std 0.05, EDM (sigma 0.002 to 80)"),
)}
"""Targets never used to choose a default or a setting (module docstring): name -> a :class:`Target`."""

ALL_TARGETS: dict[str, Callable[[], Target]] = {**TARGETS, **HELDOUT_TARGETS}
""":data:`TARGETS` and :data:`HELDOUT_TARGETS` (the benchmarks' ``--targets`` choose among these)."""
