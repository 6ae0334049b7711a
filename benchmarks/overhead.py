"""Per-step solver overhead, side by side in one process: sdediff vs diffusers' schedulers vs k-diffusion.

    python benchmarks/overhead.py                 # ~2 minutes on a quiet 2-core machine
    python benchmarks/overhead.py --quick         # ~20-30 s: 2 rounds (1 for the MLP table), noisier
    python benchmarks/overhead.py --out benchmarks/overhead.md

What is timed: 50 steps of each sampler with a *zero-cost* ε model (a network that returns a
preallocated tensor of the state's shape, so the model costs a function call and nothing else),
one torch thread, under ``torch.no_grad()``:

* sdediff through its public API only: ``sd.sample(model, shape, solver=..., steps=50, x_T=x)`` with
  ``model = sd.DiffusionModel(net, sd.DiscreteVP(), prediction="eps")`` (the linear-β DDPM schedule),
  everything else at its defaults (grid, final denoise, output checks);
* diffusers' schedulers driven as a pipeline drives them: ``set_timesteps(50)``, then for each
  timestep ``scale_model_input``, the model, ``step(..., return_dict=False)``;
* k-diffusion's ``sample_euler``, ``sample_heun``, ``sample_dpmpp_2m`` on a Karras σ grid of 50 steps.
  Its ``sampling.py`` is read from the published wheel (not vendored): pass ``--k-diffusion PATH``
  (or set ``K_DIFFUSION_SAMPLING``), e.g. after
  ``pip download k-diffusion==0.1.1.post1 --no-deps -d /tmp/kd && unzip -o /tmp/kd/*.whl -d /tmp/kd``
  the default ``/tmp/kd/k_diffusion/sampling.py`` is found; an installed ``k_diffusion`` is used as it
  is. Its package-relative ``utils`` import is satisfied by a stub with the one function those
  samplers call (``append_dims``). Without it the column is left out.

A "step" is one interval of the 50-step grid (Heun's take two model calls; the NFE column says
how many calls each made). Times are medians over interleaved rounds (every sampler once per round,
in a shuffled order), so a slow patch of a shared machine hits all columns alike; compare the
ratios, not the absolute µs.

The second table is a first solve on a new model (a new process and model on every call, so the per-solve plan
that sdediff remembers per model and process, the grid and its schedule records, is built each time) against a
repeated solve and diffusers.

The third table is the solver's share of sampling time with a ~1M-parameter MLP on 256×64
float32: the model's own time is measured inside its calls, share = 1 − t_model / t_total.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.util
import math
import os
import random
import statistics
import sys
import time
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

import sdediff as sd

STEPS = 50
SHAPES: list[tuple[str, tuple[int, ...], torch.dtype]] = [
    ("1×4 f32", (1, 4), torch.float32),
    ("256×64 f32", (256, 64), torch.float32),
    ("256×64 f64", (256, 64), torch.float64),
    ("16×3×64×64 f32", (16, 3, 64, 64), torch.float32),
]
# (sdediff solver, diffusers scheduler, k-diffusion sampler) doing the same job
PAIRS: list[tuple[str, str | None, str | None]] = [
    ("ddim", "DDIM", None),
    ("euler", "Euler", "sample_euler"),
    ("dpm++2m", "DPMSolverMultistep-2M", "sample_dpmpp_2m"),
    ("dpm++3m", "DPMSolverMultistep-3M", None),
    ("unipc", "UniPC", None),
    ("heun", "Heun", "sample_heun"),
    ("deis", "DEIS", None),
]
BETAS = {"num_train_timesteps": 1000, "beta_schedule": "linear", "beta_start": 1e-4, "beta_end": 0.02}
DEFAULT_KD = "/tmp/kd/k_diffusion/sampling.py"
LIBS = {"sd": "sdediff", "df": "diffusers", "kd": "k-diffusion"}


# ----------------------------------------------------------------------------------------- peers
def diffusers_schedulers() -> dict[str, Any]:
    """diffusers' scheduler objects by name (empty without diffusers)."""
    try:
        import diffusers as d
    except ImportError:
        return {}
    cfgs = {
        "DDIM": (d.DDIMScheduler, {"clip_sample": False, "set_alpha_to_one": True}),
        "Euler": (d.EulerDiscreteScheduler, {}),
        "DPMSolverMultistep-2M": (d.DPMSolverMultistepScheduler, {"algorithm_type": "dpmsolver++", "solver_order": 2}),
        "DPMSolverMultistep-3M": (d.DPMSolverMultistepScheduler, {"algorithm_type": "dpmsolver++", "solver_order": 3}),
        "UniPC": (d.UniPCMultistepScheduler, {}),
        "Heun": (d.HeunDiscreteScheduler, {}),
        "DEIS": (d.DEISMultistepScheduler, {}),
    }
    return {name: cls(**BETAS, **cfg) for name, (cls, cfg) in cfgs.items()}


def load_k_diffusion(path: str | None) -> Any | None:
    """k-diffusion's ``sampling`` module: installed, or read from ``path`` with a stub ``utils``."""
    with contextlib.suppress(ImportError):
        return importlib.import_module("k_diffusion.sampling")
    path = path or os.environ.get("K_DIFFUSION_SAMPLING") or DEFAULT_KD
    if not Path(path).is_file():
        return None
    pkg = types.ModuleType("k_diffusion")
    pkg.__path__ = []  # a package, so that `from . import utils` resolves
    utils = types.ModuleType("k_diffusion.utils")

    def append_dims(x: torch.Tensor, target_dims: int) -> torch.Tensor:
        """Trailing singleton dimensions up to ``target_dims`` (what k-diffusion's ``utils`` does)."""
        return x[(...,) + (None,) * (target_dims - x.ndim)]

    utils.append_dims = append_dims  # type: ignore[attr-defined]
    pkg.utils = utils  # type: ignore[attr-defined]
    sys.modules.setdefault("k_diffusion", pkg)
    sys.modules.setdefault("k_diffusion.utils", utils)
    spec = importlib.util.spec_from_file_location("k_diffusion.sampling", path)
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    try:
        spec.loader.exec_module(module)  # type: ignore[union-attr]
    except ImportError as e:  # scipy / torchsde / tqdm missing
        print(f"note: k-diffusion's sampling.py at {path} does not import ({e}); its column is skipped")
        return None
    return module


def karras_sigmas(n: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> torch.Tensor:
    """Karras et al. (2022) eq. 5, then a final 0 (k-diffusion's ``get_sigmas_karras``)."""
    ramp = torch.linspace(0, 1, n, dtype=torch.float64)
    s = (sigma_max ** (1 / rho) + ramp * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho
    return torch.cat([s, s.new_zeros(1)])


# ----------------------------------------------------------------------------------------- runners
class Counted:
    """The model of every runner: ``fn(x)`` counted, its own time summed when ``timed``."""

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor], timed: bool = False) -> None:
        self.fn, self.timed, self.n, self.seconds = fn, timed, 0, 0.0

    def __call__(self, x: torch.Tensor, *_: Any) -> torch.Tensor:
        self.n += 1
        if not self.timed:
            return self.fn(x)
        t0 = time.perf_counter()
        out = self.fn(x)
        self.seconds += time.perf_counter() - t0
        return out


def sdediff_runner(solver: str, x: torch.Tensor, net: Counted, cold: bool = False) -> Callable[[], torch.Tensor]:
    """``sd.sample`` on one model; ``cold``: a new process and model on every call, so nothing of the
    per-solve plan (grid, schedule records) is remembered from an earlier solve."""
    if cold:
        return lambda: sd.sample(sd.DiffusionModel(lambda x, t: net(x, t), sd.DiscreteVP(), prediction="eps"),
                                 tuple(x.shape), solver=solver, steps=STEPS, x_T=x).x
    model = sd.DiffusionModel(lambda x, t: net(x, t), sd.DiscreteVP(), prediction="eps")
    return lambda: sd.sample(model, tuple(x.shape), solver=solver, steps=STEPS, x_T=x).x


def diffusers_runner(sched: Any, x: torch.Tensor, net: Counted) -> Callable[[], torch.Tensor]:
    def run() -> torch.Tensor:
        sched.set_timesteps(STEPS)
        lat = x * sched.init_noise_sigma
        for t in sched.timesteps:
            inp = sched.scale_model_input(lat, t)
            lat = sched.step(net(inp, t), t, lat, return_dict=False)[0]
        return lat

    return run


def kdiff_runner(kd: Any, name: str, x: torch.Tensor, net: Counted) -> Callable[[], torch.Tensor]:
    vp = sd.DiscreteVP()
    rho_max = math.exp(-float(vp.log_snr(vp.T)))
    rho_min = math.exp(-float(vp.log_snr(vp.t_min)))
    sigmas = karras_sigmas(STEPS, rho_min, rho_max).to(x.dtype)
    fn = getattr(kd, name)
    return lambda: fn(net, x * float(sigmas[0]), sigmas, disable=True)


# ----------------------------------------------------------------------------------------- timing
def time_rounds(runners: dict[str, Callable[[], Any]], rounds: int, seed: int = 0) -> dict[str, float]:
    """Median seconds per call of each runner over ``rounds`` interleaved, shuffled rounds (one warm-up)."""
    order = list(runners)
    rng = random.Random(seed)
    for name in order:
        runners[name]()
    times: dict[str, list[float]] = {name: [] for name in order}
    for _ in range(rounds):
        rng.shuffle(order)
        for name in order:
            t0 = time.perf_counter()
            runners[name]()
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(v) for name, v in times.items()}


def overhead_table(kd: Any, rounds: int, shapes: list[tuple[str, tuple[int, ...], torch.dtype]]) -> tuple[str, list]:
    scheds = diffusers_schedulers()
    lines, records = [], []
    for label, shape, dtype in shapes:
        g = torch.Generator().manual_seed(0)
        x = torch.randn(shape, generator=g, dtype=dtype)
        eps = 0.1 * torch.randn(shape, generator=g, dtype=dtype)  # preallocated output of the zero-cost model
        runners: dict[str, Callable[[], Any]] = {}
        nets: dict[str, Counted] = {}
        for ours, peer, kname in PAIRS:
            nets[f"sd:{ours}"] = Counted(lambda _x, e=eps: e)
            runners[f"sd:{ours}"] = sdediff_runner(ours, x, nets[f"sd:{ours}"])
            if peer in scheds:
                nets[f"df:{peer}"] = Counted(lambda _x, e=eps: e)
                runners[f"df:{peer}"] = diffusers_runner(scheds[peer], x, nets[f"df:{peer}"])
            if kd is not None and kname is not None:
                nets[f"kd:{kname}"] = Counted(lambda _x, e=eps: e)
                runners[f"kd:{kname}"] = kdiff_runner(kd, kname, x, nets[f"kd:{kname}"])
        with torch.no_grad():
            med = time_rounds(runners, rounds)
        calls = {k: v.n // (rounds + 1) for k, v in nets.items()}
        lines += [f"**{label}** (µs per step, {STEPS} steps; NFE in brackets)", "",
                  "| sdediff | µs/step | diffusers | µs/step | k-diffusion | µs/step | sdediff ÷ diffusers | "
                  "sdediff ÷ k-diffusion |", "|---|---:|---|---:|---|---:|---:|---:|"]
        for ours, peer, kname in PAIRS:
            o = med[f"sd:{ours}"] / STEPS * 1e6
            p = med.get(f"df:{peer}", math.nan) / STEPS * 1e6
            k = med.get(f"kd:{kname}", math.nan) / STEPS * 1e6 if kname else math.nan
            ps = f"{peer} ({calls[f'df:{peer}']})" if f"df:{peer}" in med else "—"
            ks = f"{kname} ({calls[f'kd:{kname}']})" if f"kd:{kname}" in med else "—"
            lines.append(f"| `{ours}` ({calls[f'sd:{ours}']}) | {o:.0f} | {ps} | {_f(p)} | {ks} | {_f(k)} | "
                         f"{_r(o, p)} | {_r(o, k)} |")
            records.append({"shape": label, "sdediff": ours, "us": o, "diffusers": peer, "us_diffusers": p,
                            "k_diffusion": kname, "us_k": k})
        lines.append("")
    return "\n".join(lines), records


def cold_table(rounds: int, shapes: list[tuple[str, tuple[int, ...], torch.dtype]]) -> str:
    """A solve that reuses nothing (new process and model each call) against a repeated one, and diffusers."""
    scheds = diffusers_schedulers()
    picks = [("ddim", "DDIM"), ("euler", "Euler"), ("dpm++2m", "DPMSolverMultistep-2M")]
    lines = [f"**First solve on a new model** (nothing remembered: a new `DiscreteVP` and model per call; µs per "
             f"step, {STEPS} steps, medians of {rounds} interleaved rounds)", "",
             "| shape | sdediff | repeated | first solve | diffusers | first ÷ diffusers |",
             "|---|---|---:|---:|---|---:|"]
    for label, shape, dtype in shapes:
        g = torch.Generator().manual_seed(0)
        x = torch.randn(shape, generator=g, dtype=dtype)
        eps = 0.1 * torch.randn(shape, generator=g, dtype=dtype)
        runners: dict[str, Callable[[], Any]] = {}
        for ours, peer in picks:
            runners[f"warm:{ours}"] = sdediff_runner(ours, x, Counted(lambda _x, e=eps: e))
            runners[f"cold:{ours}"] = sdediff_runner(ours, x, Counted(lambda _x, e=eps: e), cold=True)
            if peer in scheds:
                runners[f"df:{peer}"] = diffusers_runner(scheds[peer], x, Counted(lambda _x, e=eps: e))
        with torch.no_grad():
            med = {k: v / STEPS * 1e6 for k, v in time_rounds(runners, rounds).items()}
        for ours, peer in picks:
            p = med.get(f"df:{peer}", math.nan)
            lines.append(f"| {label} | `{ours}` | {med[f'warm:{ours}']:.0f} | {med[f'cold:{ours}']:.0f} | {peer} "
                         f"{_f(p)} | {_r(med[f'cold:{ours}'], p)} |")
    return "\n".join(lines) + "\n"


def _f(v: float) -> str:
    return "—" if not math.isfinite(v) else f"{v:.0f}"


def _r(a: float, b: float) -> str:
    return "—" if not (math.isfinite(a) and math.isfinite(b)) else f"{a / b:.2f}"


def mlp(dim: int = 64, width: int = 1000) -> torch.nn.Module:
    """~1.1M parameters: dim -> width -> width -> dim, SiLU."""
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(dim, width), torch.nn.SiLU(), torch.nn.Linear(width, width),
                               torch.nn.SiLU(), torch.nn.Linear(width, dim))


def share_table(kd: Any, rounds: int) -> str:
    """The solver's share of sampling time with a ~1M-parameter MLP, 256×64 float32."""
    net = mlp().eval()
    n_params = sum(p.numel() for p in net.parameters())
    x = torch.randn(256, 64, generator=torch.Generator().manual_seed(0))
    scheds = diffusers_schedulers()
    picks = [("sd:dpm++2m", "dpm++2m"), ("df:DPMSolverMultistep-2M", "DPMSolverMultistep-2M"),
             ("kd:sample_dpmpp_2m", "sample_dpmpp_2m"), ("sd:ddim", "ddim"), ("df:DDIM", "DDIM")]
    nets = {k: Counted(net, timed=True) for k, _ in picks}
    runners: dict[str, Callable[[], Any]] = {}
    for key, name in picks:
        if key.startswith("sd:"):
            runners[key] = sdediff_runner(name, x, nets[key])
        elif key.startswith("df:") and name in scheds:
            runners[key] = diffusers_runner(scheds[name], x, nets[key])
        elif key.startswith("kd:") and kd is not None:
            runners[key] = kdiff_runner(kd, name, x, nets[key])
    with torch.no_grad():
        net(x)  # first-call allocations of the MLP itself
        totals: dict[str, list[float]] = {k: [] for k in runners}
        models: dict[str, list[float]] = {k: [] for k in runners}
        order = list(runners)
        rng = random.Random(1)
        warm = 1 if rounds > 1 else 0  # the overhead table has already warmed the code paths up
        for r in range(rounds + warm):
            rng.shuffle(order)
            for k in order:
                nets[k].seconds = 0.0
                t0 = time.perf_counter()
                runners[k]()
                if r >= warm:  # round 0 warms up
                    totals[k].append(time.perf_counter() - t0)
                    models[k].append(nets[k].seconds)
    lines = [f"**Solver share of sampling time**, MLP of {n_params / 1e6:.2f}M parameters, 256×64 float32, "
             f"{STEPS} steps (share = 1 − model time / total, medians of per-round shares)", "",
             "| sampler | total ms | model ms | solver µs/step | solver share |", "|---|---:|---:|---:|---:|"]
    for k in runners:
        shares = [1 - m / t for m, t in zip(models[k], totals[k], strict=True)]
        tot, mod = statistics.median(totals[k]), statistics.median(models[k])
        lib, name = k.split(":", 1)
        lines.append(f"| {LIBS[lib]} `{name}` | {tot * 1e3:.1f} | {mod * 1e3:.1f} | {(tot - mod) / STEPS * 1e6:.0f} | "
                     f"{statistics.median(shares):.1%} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer rounds (~20-30 s)")
    ap.add_argument("--rounds", type=int, default=None, help="interleaved rounds per shape (default 9, quick 2)")
    ap.add_argument("--share-rounds", type=int, default=None, help="rounds of the MLP table (default 5, quick 1)")
    ap.add_argument("--k-diffusion", default=None, metavar="PATH",
                    help=f"k_diffusion/sampling.py (default {DEFAULT_KD})")
    ap.add_argument("--out", default=None, help="also write the markdown to this file")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    rounds = args.rounds or (2 if args.quick else 9)
    kd = load_k_diffusion(args.k_diffusion)
    t0 = time.perf_counter()
    head = [f"# Solver overhead per step (zero-cost ε model, one torch thread, {STEPS} steps)", "",
            f"command: `python benchmarks/overhead.py {' '.join(sys.argv[1:] if argv is None else argv)}`; torch "
            f"{torch.__version__}, sdediff {sd.__version__}, diffusers "
            f"{_version('diffusers')}, k-diffusion {'sampling.py loaded' if kd is not None else 'absent (skipped)'}; "
            f"medians of {rounds} interleaved rounds", ""]
    table, _ = overhead_table(kd, rounds, SHAPES)
    cold = cold_table(rounds, [SHAPES[0], SHAPES[-1]])
    share = share_table(kd, args.share_rounds or (1 if args.quick else 5))
    text = ("\n".join(head) + table + "\n" + cold + "\n" + share
            + f"\n(wall time {time.perf_counter() - t0:.0f} s)\n")
    print(text)
    if args.out:
        Path(args.out).write_text(text)
    return 0


def _version(mod: str) -> str:
    try:
        return importlib.import_module(mod).__version__
    except ImportError:
        return "absent (skipped)"


if __name__ == "__main__":
    sys.exit(main())
