"""Cost and accuracy of sd.log_likelihood: exact vs Hutchinson divergence, dimension 2 to 256.

Target: a 2-component Gaussian mixture (exact score model) under VP; reference: its closed-form
log p_{t_min}(x), with the exact log p_T as the prior (so the solver and the estimator are the only
errors). Times are ratios within one process (exact / Hutchinson), one thread, float64.

    python benchmarks/likelihood.py                      # the table in benchmarks/RESULTS.md
    python benchmarks/likelihood.py --divergence-timing  # batched backward vs torch.func vs per-dim loop
"""

from __future__ import annotations

import argparse
import math
import time
from functools import partial

import torch

import sdediff as sd
from sdediff.analytic import GaussianMixture
from sdediff.likelihood import DIVERGENCES, AugmentedODE, exact_divergence


def target(dim: int, seed: int = 0) -> GaussianMixture:
    g = torch.Generator().manual_seed(seed)
    means = torch.randn(2, dim, generator=g, dtype=torch.float64) / math.sqrt(dim) * 2.0
    stds = 0.3 + 0.4 * torch.rand(2, dim, generator=g, dtype=torch.float64)
    return GaussianMixture(means, stds, [0.4, 0.6])


def timed(fn, repeats: int):
    """Result of ``fn()`` and its best wall time over ``repeats`` runs (after one warm-up run)."""
    out = fn()
    best = math.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return out, best


def run_table(dims: list[int], batch: int, tol: float, process_name: str, repeats: int) -> None:
    process = {"VP": sd.VPSDE, "VE": sd.VESDE, "EDM": sd.EDM}[process_name]()
    print(f"process={process_name} batch={batch} rtol=atol={tol} solver=dopri5 float64 threads=1 "
          f"time: best of {repeats} after a warm-up")
    print("| D | NFE exact | NFE Hutch. | time exact / Hutch. | max err exact (nats) | Hutch. err mean ± sd (nats) "
          "| round trip max err |")
    print("|---|---|---|---|---|---|---|")
    for dim in dims:
        gmm = target(dim)
        model = gmm.model(process)
        x = gmm.sample(batch, generator=1)
        ref = gmm.log_prob(process.t_min, x, process)
        kw = dict(rtol=tol, atol=tol, prior_logp=lambda z, gmm=gmm: gmm.log_prob(process.T, z, process))
        with torch.no_grad():
            ex, t_ex = timed(partial(sd.log_likelihood, model, x, **kw), repeats)
            hu, t_hu = timed(partial(sd.log_likelihood, model, x, divergence="hutchinson", generator=2, **kw), repeats)
            z = sd.encode(model, x, rtol=tol, atol=tol)
            back = sd.decode(model, z, rtol=tol, atol=tol)
        err_ex = float((ex.logp - ref).abs().max())
        e_hu = hu.logp - ref
        rt = float((back - x).abs().max())
        print(f"| {dim} | {ex.nfe} | {hu.nfe} | {t_ex / t_hu:.2f} | {err_ex:.1e} | "
              f"{float(e_hu.mean()):+.2e} ± {float(e_hu.std()):.2e} | {rt:.1e} |")


# --- exact-divergence implementations compared (the library keeps the fastest: exact_divergence)
def loop_divergence(func, x, probes, create_graph):
    v = func(x)
    d = x[0].numel()
    div = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
    flat = v.reshape(x.shape[0], d)
    for i in range(d):
        (g,) = torch.autograd.grad(flat[:, i].sum(), x, create_graph=create_graph, retain_graph=True)
        div = div + g.reshape(x.shape[0], d)[:, i]
    return v, div


def func_divergence(func, x, probes, create_graph):
    v, vjp_fn = torch.func.vjp(func, x)
    b, d = x.shape[0], x[0].numel()
    basis = torch.eye(d, dtype=x.dtype)[:, None, :].expand(d, b, d).reshape(d, *x.shape)
    (g,) = torch.vmap(vjp_fn)(basis)
    return v, torch.diagonal(g.reshape(d, b, d), dim1=0, dim2=2).sum(-1)


def run_divergence_timing(dims: list[int], batch: int, reps: int) -> None:
    impls = {"batched backward (kept)": exact_divergence, "torch.func vjp+vmap": func_divergence,
             "per-dim autograd loop": loop_divergence}
    assert DIVERGENCES["exact"] is exact_divergence
    process = sd.VPSDE()
    print(f"one drift + exact divergence, batch={batch}, float64, threads=1, median of {reps} (ms)")
    print("| D | " + " | ".join(impls) + " |")
    print("|---" * (len(impls) + 1) + "|")
    for dim in dims:
        gmm = target(dim)
        x = gmm.sample(batch, generator=1)
        y = torch.cat([x, torch.zeros(batch, 1, dtype=x.dtype)], 1)
        t = torch.tensor(0.3, dtype=torch.float64)
        row, outs = [], []
        for impl in impls.values():
            aug = AugmentedODE(sd.probability_flow(gmm.model(process)), x.shape, impl)
            times = []
            with torch.no_grad():
                for _ in range(reps + 2):
                    t0 = time.perf_counter()
                    out = aug.drift(t, y)
                    times.append(time.perf_counter() - t0)
            outs.append(out)
            row.append(sorted(times[2:])[reps // 2] * 1e3)
        for o in outs[1:]:
            torch.testing.assert_close(o, outs[0])
        print(f"| {dim} | " + " | ".join(f"{r:.2f}" for r in row) + " |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dims", type=int, nargs="+", default=[2, 8, 32, 128, 256])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--tol", type=float, default=1e-6)
    ap.add_argument("--process", default="VP", choices=["VP", "VE", "EDM"])
    ap.add_argument("--divergence-timing", action="store_true")
    ap.add_argument("--reps", type=int, default=15, help="repetitions of --divergence-timing")
    ap.add_argument("--repeats", type=int, default=3, help="timed runs per table cell")
    args = ap.parse_args()
    torch.set_num_threads(1)
    if args.divergence_timing:
        run_divergence_timing([d for d in args.dims if d >= 8] or args.dims, args.batch, args.reps)
    else:
        run_table(args.dims, args.batch, args.tol, args.process, args.repeats)


if __name__ == "__main__":
    main()
