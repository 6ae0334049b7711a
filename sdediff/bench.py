r"""Step-count benchmark on analytic targets with exact scores (``sdediff bench``; full run:
``benchmarks/step_counts.py``).

Targets: a sharp 2-D mixture (8 modes of std 0.05 on a circle) and an anisotropic 64-D mixture
(8 modes, per-dimension stds from 0.05 to 1). The ODE is the probability flow of the DDPM linear
schedule (``DiscreteVP``, 1000 steps) from label 999 to the data (σ = 0). Written in EDM's variables
:math:`y = x/\alpha`, :math:`\rho = \sigma/\alpha` the flow is :math:`dy/d\rho = \hat\epsilon(\rho, y)`,
the same for every linear process, so each method runs in its natural form from the same start
:math:`y_T` to the same end:

* sdediff solvers: the EDM process with :math:`\sigma_{max} = \rho(T)` and :math:`\sigma_{min} = 10^{-4}`,
  grids ``karras`` (to 1e-4 and to 2e-3), ``logsnr`` and ``ddpm-linspace`` (diffusers' default DDPM
  timesteps as noise levels), each ending with the denoise step onto σ = 0 (:func:`sdediff.sample`);
* diffusers schedulers (if installed): their own timesteps on the ``DiscreteVP`` labels, with an
  exact ε-network evaluated at the σ each scheduler assigns to the label, ending on σ = 0;
* torchdiffeq ``dopri5`` over tolerances, and the reference (``dopri8``, rtol = atol = 1e-10, float64),
  on :math:`dy/du = y - D(e^u, y)`, :math:`u = \log\rho` from :math:`\log\rho(T)` to :math:`\log 10^{-7}`.

Errors: RMSE per coordinate against the reference from the same :math:`y_T`, and the sliced
Wasserstein distance to true samples. Fixed-step methods get, at each NFE budget, the most steps
that fit; adaptive ones report their own NFE over a tolerance ladder (:data:`TOLS`, loose to tight,
stopped once RMSE <= :data:`LADDER_STOP_RMSE` or NFE > :data:`LADDER_STOP_NFE`).

Targets: :data:`TARGETS` (any number; samples per target in :data:`SAMPLES`). For any other model,
a user's network included, use :func:`sdediff.benchmark` (``sdediff bench --model pkg.module:factory``).
"""

from __future__ import annotations

import csv
import math
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from .analytic import GaussianMixture
from .bench_targets import anisotropic_mixture_64d, edm_flow, run_diffusers_scheduler, sharp_mixture_2d
from .metrics import sliced_wasserstein
from .processes import EDM, DiscreteVP
from .solve import sample
from .solvers import SOLVERS

NFES = (5, 6, 8, 10, 12, 15, 20, 25, 50)
# Tolerance ladder of the adaptive methods (sdediff's and dopri5 alike): quarter decades, fine enough to
# resolve where each first reaches a given RMSE (half decades were not: see benchmarks/RESULTS.md).
TOLS = tuple(10 ** (-k / 4) for k in range(4, 21))  # 1e-1 ... 1e-5
# An adaptive method's ladder stops after the first tolerance reaching RMSE <= LADDER_STOP_RMSE (a decade
# below the 1e-3 level reported) or using more than LADDER_STOP_NFE: tighter ones only cost time.
LADDER_STOP_RMSE = 1e-4
LADDER_STOP_NFE = 1000
SIGMA_MIN = 1e-4


# name -> a function returning the target's GaussianMixture; add entries freely (any number of targets)
TARGETS: dict[str, Callable[[], GaussianMixture]] = {"2d-sharp": sharp_mixture_2d, "64d-aniso": anisotropic_mixture_64d}
# samples per target in the full run (targets not listed: DEFAULT_SAMPLES); the quick run takes 40 %
SAMPLES: dict[str, int] = {"2d-sharp": 1000, "64d-aniso": 250}
DEFAULT_SAMPLES = 250


class Problem:
    """One target: start points, reference end points, true samples, and the models."""

    def __init__(self, name: str, gmm: GaussianMixture, n: int, seed: int) -> None:
        self.name, self.gmm = name, gmm
        self.vp = DiscreteVP()
        self.rho_T = float(self.vp.sigma(1.0) / self.vp.alpha(1.0))
        self.edm = EDM(sigma_min=SIGMA_MIN, sigma_max=self.rho_T)
        self.model = gmm.model(self.edm)
        g = torch.Generator().manual_seed(seed)
        self.x_T = torch.randn(n, gmm.dim, generator=g, dtype=torch.float64)  # VP scale at label 999
        self.y_T = self.x_T / float(self.vp.alpha(1.0))
        self.truth = gmm.sample(n, generator=seed + 1)
        self.ref = self.flow(self.y_T, "dopri8", 1e-10)[0]

    def flow(self, y: torch.Tensor, solver: str, tol: float) -> tuple[torch.Tensor, int]:
        return edm_flow(self.gmm, y, self.rho_T, 1e-7, solver, tol)

    def score(self, x: torch.Tensor) -> tuple[float, float]:
        rmse = float((x - self.ref).pow(2).mean().sqrt())
        return rmse, sliced_wasserstein(x, self.truth)


def ddpm_linspace_grid(process: EDM, n: int) -> torch.Tensor:
    """diffusers' default ("linspace") DDPM timesteps as noise levels ρ of ``process`` (EDM), then σ = 0:
    labels ``round(linspace(0, 999, n + 1))[::-1][:-1]`` of the linear-β schedule."""
    vp = DiscreteVP()
    labels = torch.linspace(0, vp.N - 1, n + 1, dtype=torch.float64).round().flip(0)[:-1]
    t = vp.t_from_label(labels)
    rho = torch.exp(-vp.log_snr(t)).clamp(max=process.T)
    return torch.cat([rho, rho.new_zeros(1)])


def karras_2e3(process: EDM, n: int) -> torch.Tensor:
    """Karras ρ = 7 from σ_max to EDM's default σ_min = 0.002."""
    from .timesteps import karras

    return karras(process, n, t_end=2e-3)


GRIDS: dict[str, Any] = {"karras": "karras", "karras-2e-3": karras_2e3, "logsnr": "logsnr",
                         "ddpm-linspace": ddpm_linspace_grid}


def _nfe_of(solver: Any, n: int) -> int:
    if n < 1:
        return 0
    return solver.nfe_per_step * (n - 1) + 1  # the last step is the denoise (1 NFE)


def _steps_for(solver: Any, budget: int) -> int:
    n = 0
    while _nfe_of(solver, n + 1) <= budget:
        n += 1
    return n


def _ours(nfes: Sequence[int], names: Sequence[str] | None) -> list[str]:
    """sdediff's own solvers that end on the data, one name per solver object (torchdiffeq/torchsde
    methods, also under their plain aliases such as ``dopri5``, are peers, not ours)."""
    external = {id(s) for name, s in SOLVERS.items() if name.startswith(("torchdiffeq:", "torchsde:"))}
    seen, out = set(), []
    for name, s in SOLVERS.items():
        if id(s) in external or not s.data_end_ok:
            continue
        if names is not None and name not in names:
            continue
        if id(s) not in seen:
            seen.add(id(s))
            out.append(name)
    return out


def _diffusers_peers() -> dict[str, tuple[Any, dict[str, Any]]]:
    import diffusers as d

    return {
        "DDIM": (d.DDIMScheduler, {"timestep_spacing": "trailing", "clip_sample": False}),
        "DPMSolverMultistep-2M": (d.DPMSolverMultistepScheduler, {"algorithm_type": "dpmsolver++", "solver_order": 2}),
        "DPMSolverMultistep-3M": (d.DPMSolverMultistepScheduler, {"algorithm_type": "dpmsolver++", "solver_order": 3}),
        "UniPC": (d.UniPCMultistepScheduler, {}),
        "Euler": (d.EulerDiscreteScheduler, {}),
        "Heun": (d.HeunDiscreteScheduler, {}),
        "DEIS": (d.DEISMultistepScheduler, {}),
    }


def _run_scheduler(p: Problem, cls: Any, cfg: dict[str, Any], steps: int) -> tuple[torch.Tensor, int]:
    def denoise(rho: float, y: torch.Tensor) -> torch.Tensor:
        return p.gmm.denoiser(torch.tensor(rho, dtype=torch.float64), y, p.edm)

    x, nfe, _ = run_diffusers_scheduler(denoise, p.x_T, cls, cfg, steps)
    return x, nfe


# The reduced run of ``sdediff bench`` (under 30 s on 2 cores) and the full one (``--full``, under 10 minutes).
QUICK: dict[str, Any] = {"nfes": (5, 10, 20), "sample_fraction": 0.4, "tols": (1e-2, 1e-3, 1e-4),
                         "solvers": ["ddim", "heun", "dpm++2m", "dpm++3m", "unipc", "deis", "dpm_solver_fast",
                                     "dpm_solver_23"]}
FULL: dict[str, Any] = {"nfes": NFES, "sample_fraction": 1.0, "tols": TOLS, "solvers": None}


def deterministic_solvers() -> list[str]:
    """sdediff's own deterministic solvers that end on the data (σ = 0), one name per solver object."""
    return [n for n in _ours(NFES, None) if not SOLVERS[n].stochastic]


def run(nfes: Sequence[int] = NFES, n_2d: int | None = None, n_64d: int | None = None, seed: int = 0,
        solvers: Sequence[str] | None = None, peers: bool = True, tols: Sequence[float] = TOLS,
        progress: bool = True, log: Any = print, targets: Sequence[str] | None = None,
        grids: Sequence[str] | None = None, samples: int | Mapping[str, int] | None = None,
        sample_fraction: float = 1.0) -> list[dict[str, Any]]:
    """All rows of the benchmark (see the module docstring) on ``targets`` (names in :data:`TARGETS`,
    default all) with ``grids`` (names in :data:`GRIDS`, default all). ``samples``: per target (an int
    for all, or a mapping), default :data:`SAMPLES` times ``sample_fraction``; ``n_2d``/``n_64d`` set
    the two original targets'."""
    ours = _ours(nfes, solvers)
    unknown = sorted(set(solvers or ()) - set(ours))
    if unknown:
        raise ValueError(f"solvers {unknown} are not sdediff solvers that end on the data; valid: "
                         f"{', '.join(_ours(nfes, None))}")
    grid_names = list(GRIDS) if grids is None else list(grids)
    for g in grid_names:
        if g not in GRIDS:
            raise ValueError(f"unknown grid {g!r} for the built-in benchmark; valid: {', '.join(GRIDS)}")
    names = list(TARGETS) if targets is None else list(targets)
    for name in names:
        if name not in TARGETS:
            raise ValueError(f"unknown target {name!r}; built-in targets: {', '.join(TARGETS)}")
    counts = {n: max(1, round(SAMPLES.get(n, DEFAULT_SAMPLES) * sample_fraction)) for n in names}
    if isinstance(samples, int):
        counts = dict.fromkeys(names, samples)
    elif samples is not None:
        counts.update({n: int(v) for n, v in samples.items() if n in counts})
    for n, v in (("2d-sharp", n_2d), ("64d-aniso", n_64d)):
        if v is not None and n in counts:
            counts[n] = v
    problems = [(name, TARGETS[name], counts[name]) for name in names]
    diff_peers: dict[str, tuple[Any, dict[str, Any]]] = {}
    if peers:
        try:
            diff_peers = _diffusers_peers()
        except ImportError:
            log("note: diffusers is not installed: its schedulers are skipped (pip install 'sdediff[bench]')")
    jobs: list[tuple[str, str, str, Any]] = []
    for tname, _, _ in problems:
        for name in ours:
            s = SOLVERS[name]
            if s.adaptive:
                jobs += [(tname, "sdediff", name, ("tol", tol)) for tol in tols]
            else:
                jobs += [(tname, "sdediff", f"{name}", ("grid", grid)) for grid in grid_names]
        for pname in diff_peers:
            jobs.append((tname, "diffusers", pname, None))
        if peers:
            jobs += [(tname, "torchdiffeq", "dopri5", ("tol", tol)) for tol in tols]
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(jobs), desc="sdediff bench")
    rows: list[dict[str, Any]] = []
    built: dict[str, Problem] = {}
    ladder_done: set[tuple[str, str, str]] = set()  # adaptive methods past the ladder's stopping rule
    for tname, family, method, how in jobs:
        if how is not None and how[0] == "tol" and (tname, family, method) in ladder_done:
            if bar is not None:
                bar.update(1)
            continue
        if tname not in built:
            make, n = next((g, n) for name, g, n in problems if name == tname)
            built[tname] = Problem(tname, make(), n, seed)
        p = built[tname]
        t0 = time.perf_counter()
        if family == "sdediff" and how[0] == "grid":
            s = SOLVERS[method]
            for budget in nfes:
                if method == "dpm_solver_fast":
                    steps = budget
                else:
                    steps = _steps_for(s, budget)
                if steps < 1:
                    continue
                sol = sample(p.model, p.y_T.shape, solver=method, steps=steps, grid=GRIDS[how[1]], x_T=p.y_T,
                             generator=seed + 7)
                rows.append(_row(p, family, method, how[1], budget, sol.stats.nfe, sol.x, s.stochastic, t0))
        elif family == "sdediff":
            sol = sample(p.model, p.y_T.shape, solver=method, x_T=p.y_T, rtol=how[1], atol=how[1])
            rows.append(_row(p, family, method, f"tol={how[1]:g}", None, sol.stats.nfe, sol.x, False, t0))
        elif family == "diffusers":
            cls, cfg = diff_peers[method]
            for budget in nfes:
                steps = (budget + 1) // 2 if method == "Heun" else budget
                x, nfe = _run_scheduler(p, cls, cfg, steps)
                rows.append(_row(p, family, method, "own", budget, nfe, x, False, t0))
        else:
            x, nfe = p.flow(p.y_T, "dopri5", how[1])
            rows.append(_row(p, family, method, f"tol={how[1]:g}", None, nfe, x, False, t0))
        last = rows[-1] if rows else None
        if how is not None and how[0] == "tol" and last is not None and (
                last["rmse"] <= LADDER_STOP_RMSE or last["nfe"] > LADDER_STOP_NFE):
            ladder_done.add((tname, family, method))
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    return rows


def _row(p: Problem, family: str, method: str, grid: str, budget: int | None, nfe: int, x: torch.Tensor,
         stochastic: bool, t0: float) -> dict[str, Any]:
    rmse, sw = p.score(x) if bool(torch.isfinite(x).all()) else (math.nan, math.nan)
    return {"target": p.name, "family": family, "method": method, "grid": grid, "budget": budget, "nfe": nfe,
            "rmse": rmse, "sw": sw, "stochastic": stochastic, "seconds": time.perf_counter() - t0}


def best_by_budget(rows: list[dict[str, Any]], nfes: Sequence[int] = NFES) -> list[dict[str, Any]]:
    """Per target and NFE budget: the best deterministic sdediff row and the best peer row (NFE <= budget)."""
    out = []
    for target in dict.fromkeys(r["target"] for r in rows):
        for k in nfes:
            cand = [r for r in rows if r["target"] == target and not r["stochastic"] and r["nfe"] <= k
                    and math.isfinite(r["rmse"]) and (r["budget"] in (None, k))]
            ours = [r for r in cand if r["family"] == "sdediff"]
            peers = [r for r in cand if r["family"] != "sdediff"]
            b_o = min(ours, key=lambda r: r["rmse"]) if ours else None
            b_p = min(peers, key=lambda r: r["rmse"]) if peers else None
            out.append({"target": target, "budget": k, "ours": b_o, "peer": b_p})
    return out


def format_summary(rows: list[dict[str, Any]], nfes: Sequence[int] = NFES) -> str:
    lines = ["| target | NFE ≤ | best sdediff (grid, NFE) | RMSE | best peer (NFE) | RMSE | ours ≤ peer |",
             "|---|---:|---|---:|---|---:|:---:|"]
    for b in best_by_budget(rows, nfes):
        o, p = b["ours"], b["peer"]
        os_ = f"{o['method']} ({o['grid']}, {o['nfe']})" if o else "—"
        ps = f"{p['family']}:{p['method']} ({p['nfe']})" if p else "—"
        ok = "—" if not (o and p) else ("yes" if o["rmse"] <= p["rmse"] else "**no**")
        lines.append(f"| {b['target']} | {b['budget']} | {os_} | {o['rmse'] if o else math.nan:.2e} | {ps} | "
                     f"{p['rmse'] if p else math.nan:.2e} | {ok} |")
    return "\n".join(lines)


def first_nfe_below(rows: list[dict[str, Any]], method: str, target: str, level: float = 1e-3) -> int | None:
    """Smallest NFE at which ``method`` (any tolerance) reaches RMSE <= ``level`` on ``target``."""
    hits = [r["nfe"] for r in rows if r["method"] == method and r["target"] == target and r["rmse"] <= level]
    return min(hits) if hits else None


def format_table(rows: list[dict[str, Any]]) -> str:
    lines = ["| target | family | method | grid | NFE budget | NFE | RMSE vs reference | sliced W2 vs true |",
             "|---|---|---|---|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['target']} | {r['family']} | {r['method']}{' (SDE)' if r['stochastic'] else ''} | "
                     f"{r['grid']} | {r['budget'] if r['budget'] is not None else '—'} | {r['nfe']} | "
                     f"{r['rmse']:.2e} | {r['sw']:.3e} |")
    return "\n".join(lines)


def write_csv(rows: list[dict[str, Any]], path: str) -> None:
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def plot(rows: list[dict[str, Any]], path: str) -> bool:
    """Log-log RMSE against NFE per target (best grid per sdediff solver); False without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    targets = list(dict.fromkeys(r["target"] for r in rows))
    fig, axes = plt.subplots(1, len(targets), figsize=(7 * len(targets), 5.5), squeeze=False)
    for ax, target in zip(axes[0], targets, strict=True):
        groups: dict[str, dict[int, float]] = {}
        for r in rows:
            if r["target"] != target or r["stochastic"] or not math.isfinite(r["rmse"]):
                continue
            key = f"{r['family']}:{r['method']}"
            pts = groups.setdefault(key, {})
            pts[r["nfe"]] = min(pts.get(r["nfe"], math.inf), r["rmse"])
        for key, pts in sorted(groups.items()):
            xs = sorted(pts)
            style = "-" if key.startswith("sdediff") else "--"
            ax.loglog(xs, [pts[x] for x in xs], style, marker=".", label=key, linewidth=1)
        ax.set_title(f"{target}: RMSE vs DOP853 reference")
        ax.set_xlabel("NFE")
        ax.set_ylabel("RMSE")
        ax.grid(True, which="both", alpha=0.3)
    axes[0][-1].legend(fontsize=6, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True
