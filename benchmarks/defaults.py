r"""Defaults by evidence (issue 10): rank single (solver, grid) configurations against the best peer.

``OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/defaults.py run --seed 1 --out /tmp/acc/ours_s1.csv``
runs every candidate (:data:`SOLVERS` × :data:`GRIDS`, ``sd.sample``'s default end) on the four exact
targets of :mod:`sdediff.bench_targets` at the NFE budgets of ``benchmarks/accuracy.py``, scored against the
true σ = 0 end (:meth:`~sdediff.bench_targets.Target.reference_data`); a candidate's row at budget ``k`` is its
run with the most NFE that fits ``k``.

``python benchmarks/defaults.py select --peers PEERS.csv --ours OURS.csv [--seed 1]`` ranks the candidates by
the geometric mean and the worst of their ratio to the best peer configuration (the minimum over every peer
row of ``benchmarks/accuracy.py``'s csv that fits the budget) over the targets and NFE 5–25, and prints the
per-NFE leaders, then the same ranking for one solver with one grid for the variance-preserving targets and
one for the EDM target (the rule behind ``grid="auto"``, :attr:`sdediff.LinearProcess.default_grid`).
Choose on one seed (1), report on another (0, ``benchmarks/accuracy.md``).

``python benchmarks/defaults.py report [--csv benchmarks/accuracy.csv] [--select-csv benchmarks/peers_seed1.csv]
[--method default|best]`` prints the default's (or the best sdediff row's) ratio to the best peer per target and
NFE on seed 0: against the minimum over the peers on the same draws, and against each cell's peer chosen on
seed 1.
"""

from __future__ import annotations

import argparse
import collections
import csv
import itertools
import math

import torch

import sdediff as sd
from sdediff.bench_targets import TARGETS
from sdediff.processes import EDM

SOLVERS = ("dpm++2m", "dpm++3m", "unipc", "unipc3", "deis", "ipndm", "dpm_solver_2", "dpm_solver_3", "dpm++2s",
           "dpm_solver_fast")
GRIDS = ("logsnr", "karras", "time_uniform", "time_quadratic")
NFES = (5, 6, 8, 10, 12, 15, 20, 25, 50)
SAMPLES = {"2d-sharp": 1000}
DEFAULT_SAMPLES = 500


def run(seed: int, out: str) -> None:
    rows = []
    for name, make in TARGETS.items():
        tgt = make()
        n = SAMPLES.get(name, DEFAULT_SAMPLES)
        x_T = tgt.prior(n, generator=seed)
        ref = tgt.reference_data(x_T)
        for s in SOLVERS:
            for g in GRIDS:
                for b in NFES:  # steps = b: the multistep solvers' NFE; others' rows count where their NFE fits
                    with torch.no_grad():
                        sol = sd.sample(tgt.model, x_T.shape, solver=s, steps=b, grid=g, x_T=x_T)
                    e = (sol.x - ref).reshape(n, -1).pow(2).mean(1).sqrt()
                    rows.append({"seed": seed, "target": name, "method": s, "grid": g, "steps": b,
                                 "nfe": sol.stats.nfe, "rmse": float(e.pow(2).mean().sqrt()),
                                 "median": float(e.median())})
        print(f"{name}: done", flush=True)
    with open(out, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def _float(v: str) -> float:
    try:
        return float(v)
    except ValueError:
        return math.nan


def select(peers_csv: str, ours_csv: list[str], seed: int) -> None:
    peers = [r for r in csv.DictReader(open(peers_csv)) if r["family"] != "sdediff" and int(r["seed"]) == seed]
    ours = [r for p in ours_csv for r in csv.DictReader(open(p)) if int(r["seed"]) == seed]
    targets = sorted({r["target"] for r in ours})
    best: dict[tuple[str, int], float] = {}
    for r in peers:
        rm, nfe = _float(r["rmse"]), _float(r["nfe"])
        for k in NFES:
            if math.isfinite(rm) and 0 <= nfe <= k and r["budget"] in ("", str(k)):
                best[(r["target"], k)] = min(best.get((r["target"], k), math.inf), rm)
    runs: dict[tuple[str, str, str], list[tuple[int, float]]] = collections.defaultdict(list)
    for r in ours:
        runs[(r["method"], r["grid"], r["target"])].append((int(r["nfe"]), _float(r["rmse"])))
    ratio: dict[tuple[str, str], dict[tuple[str, int], float]] = collections.defaultdict(dict)
    for (m, g, t), lst in runs.items():
        for k in NFES:
            fit = [x for x in lst if x[0] <= k]
            if fit and (t, k) in best:
                ratio[(m, g)][(t, k)] = max(fit)[1] / best[(t, k)]
    cells = [(t, k) for t in targets for k in NFES if k <= 25 and (t, k) in best]
    ranking = []
    for c, d in ratio.items():
        v = [d.get(cell, math.inf) for cell in cells]
        gm = math.exp(sum(map(math.log, v)) / len(v)) if all(math.isfinite(x) for x in v) else math.inf
        ranking.append((gm, max(v), c))
    ranking.sort()
    print(f"seed {seed}: ratio to the best peer over {len(cells)} cells (targets x NFE 5-25)")
    print("| solver, grid | geometric mean | worst |\n|---|---:|---:|")
    for gm, worst, (m, g) in ranking[:12]:
        print(f"| {m}, {g} | {gm:.2f} | {worst:.2f} |")
    # one solver, one grid per process family (the variance-preserving DiscreteVP/VPSDE targets, the EDM one)
    edm = {name for name, make in TARGETS.items() if isinstance(make().process, EDM)}
    grids = sorted({g for (_, g) in ratio})
    family = []
    for m, gv, ge in itertools.product(sorted({m for (m, _) in ratio}), grids, grids):
        v = [ratio.get((m, ge if t in edm else gv), {}).get((t, k), math.inf) for (t, k) in cells]
        if all(math.isfinite(x) for x in v):
            family.append((math.exp(sum(map(math.log, v)) / len(v)), max(v), m, gv, ge))
    family.sort()
    print("\none solver, a grid for the VP targets and one for the EDM target:")
    print("| solver | VP grid | EDM grid | geometric mean | worst |\n|---|---|---|---:|---:|")
    for gm, worst, m, gv, ge in family[:8]:
        print(f"| {m} | {gv} | {ge} | {gm:.2f} | {worst:.2f} |")
    best_rule = family[0][3], family[0][4]
    print(f"\nper solver: logsnr everywhere against the best rule ({best_rule[0]} on VP, {best_rule[1]} on EDM); "
          "a solver's auto_grid is 'process' where the rule wins by more than 10 %")
    print("| solver | logsnr | rule |\n|---|---:|---:|")
    for m in sorted({m for (m, _) in ratio}):
        gms = []
        for rule in (("logsnr", "logsnr"), best_rule):
            v = [ratio.get((m, rule[1] if t in edm else rule[0]), {}).get((t, k)) for (t, k) in cells]
            v = [x for x in v if x is not None and math.isfinite(x)]
            gms.append(math.exp(sum(map(math.log, v)) / len(v)) if v else math.nan)
        print(f"| {m} | {gms[0]:.2f} | {gms[1]:.2f} |")
    for c in (ranking[0][2], ("dpm++2m", "logsnr")):
        print(f"\n{c[0]}, {c[1]} per target:")
        for t in targets:
            print(t, " ".join(f"{k}:{ratio[c].get((t, k), math.inf):.2f}" for k in NFES if (t, k) in best))


#: Each peer library's own default configuration (family, method, grid) as benchmarks/accuracy.py names it:
#: diffusers' DPMSolverMultistepScheduler (EDMDPMSolverMultistepScheduler on EDM), order 2; the official
#: DPM-Solver's ``sample()`` defaults (multistep, order 2, time_uniform, no denoise_to_zero); k-diffusion has no
#: default sampler, and its ``sample_dpmpp_2m`` on Karras σ is the one most pipelines call.
PEER_DEFAULTS = {"diffusers": (("diffusers", "DPMSolverMultistep-2M", "own"),
                               ("diffusers", "EDMDPMSolverMultistep-2M", "karras")),
                 "dpm-solver": (("dpm-solver", "multistep2", "time_uniform"),),
                 "k-diffusion": (("k-diffusion", "dpmpp_2m", "karras"),)}


def report(csv_path: str, select_csv: str | None, method: str = "default") -> None:
    """``method`` (sdediff's, seed 0 of ``csv_path``) ÷ the best peer, per target and NFE: the minimum over the
    peers' configurations on the same draws and, with ``select_csv``, the peer configuration that was best on
    seed 1 there, scored on seed 0 (chosen apart from the reported data). Markdown tables on stdout."""
    def key(r: dict[str, str]) -> tuple[str, ...]:
        return r["family"], r["method"], r["grid"], r["end"], r["tol"]

    def table(path: str, seed: str) -> dict[tuple[str, int], dict[tuple[str, ...], float]]:
        out: dict[tuple[str, int], dict[tuple[str, ...], float]] = collections.defaultdict(dict)
        for r in csv.DictReader(open(path)):
            v = _float(r["rmse"])
            if r["seed"] == seed and r["budget"] and math.isfinite(v):
                out[(r["target"], int(r["budget"]))][key(r)] = v
        return out

    s0 = table(csv_path, "0")
    s1 = table(select_csv, "1") if select_csv else {}
    targets = list(dict.fromkeys(t for t, _ in s0))
    ours = ("sdediff", method, "default", "data", "") if method == "default" else None
    sides = [("the minimum over the peers on the same draws", lambda t, k, p0: min(p0.values()))]
    if select_csv:
        def chosen(t: str, k: int, p0: dict) -> float:
            p1 = {c: v for c, v in s1.get((t, k), {}).items() if c in p0}
            return p0[min(p1, key=p1.get)] if p1 else math.nan
        sides.append(("the peer configuration best on seed 1, scored on seed 0", chosen))
    for title, peer in sides:
        print(f"\n{method} ÷ {title}\n\n| target | " + " | ".join(map(str, NFES)) + " |\n|---|"
              + "---:|" * len(NFES))
        logs = []
        for t in targets:
            cells = []
            for k in NFES:
                row = s0.get((t, k), {})
                mine = row.get(ours) if ours else min((v for c, v in row.items() if c[0] == "sdediff"),
                                                      default=math.nan)
                p0 = {c: v for c, v in row.items() if c[0] != "sdediff"}
                r = mine / peer(t, k, p0) if mine is not None and p0 else math.nan
                if k <= 25 and math.isfinite(r):
                    logs.append(math.log(r))
                cells.append(f"{r:.2f}")
            print(f"| {t} | " + " | ".join(cells) + " |")
        print(f"\ngeometric mean at NFE 5-25: {math.exp(sum(logs) / len(logs)):.2f}, worst {math.exp(max(logs)):.2f}")
    print(f"\n{method} ÷ each peer library's default (PEER_DEFAULTS; '-' where the library has none for the "
          "process), geometric mean at NFE 5-25 per target\n\n| target | " + " | ".join(PEER_DEFAULTS) + " |\n|---|"
          + "---:|" * len(PEER_DEFAULTS))
    for t in targets:
        cells = []
        for confs in PEER_DEFAULTS.values():
            logs = []
            for k in NFES:
                row = s0.get((t, k), {})
                mine = row.get(ours) if ours else None
                peer = [v for c, v in row.items() if c[:3] in confs]
                if k <= 25 and mine is not None and peer:
                    logs.append(math.log(mine / peer[0]))
            cells.append(f"{math.exp(sum(logs) / len(logs)):.2f}" if logs else "-")
        print(f"| {t} | " + " | ".join(cells) + " |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--seed", type=int, default=1)
    r.add_argument("--out", required=True)
    s = sub.add_parser("select")
    s.add_argument("--peers", required=True)
    s.add_argument("--ours", nargs="+", required=True)
    s.add_argument("--seed", type=int, default=1)
    rp = sub.add_parser("report")
    rp.add_argument("--csv", default="benchmarks/accuracy.csv")
    rp.add_argument("--select-csv", default=None, help="seed-1 peer rows to choose each cell's peer on")
    rp.add_argument("--method", default="default", help="'default', or 'best' (the best sdediff row per cell)")
    a = ap.parse_args()
    if a.cmd == "run":
        run(a.seed, a.out)
    elif a.cmd == "report":
        report(a.csv, a.select_csv, a.method)
    else:
        select(a.peers, a.ours, a.seed)


if __name__ == "__main__":
    main()
