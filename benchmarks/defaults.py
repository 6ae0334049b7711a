r"""Defaults by evidence (issue 10): rank single (solver, grid) configurations against the best peer.

``OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/defaults.py run --seed 1 --out /tmp/acc/ours_s1.csv``
runs every candidate (:data:`SOLVERS` × :data:`GRIDS`, ``sd.sample``'s default end) on the four exact
targets of :mod:`sdediff.bench_targets` at the NFE budgets of ``benchmarks/accuracy.py``, scored against the
true σ = 0 end (:meth:`~sdediff.bench_targets.Target.reference_data`); a candidate's row at budget ``k`` is its
run with the most NFE that fits ``k``.

``python benchmarks/defaults.py select --peers PEERS.csv --ours OURS.csv [--seed 1]`` ranks the candidates by
the geometric mean and the worst of their ratio to the best peer configuration (the minimum over every peer
row of ``benchmarks/accuracy.py``'s csv that fits the budget) over the targets and NFE 5–25, and prints the
per-NFE leaders. Choose on one seed (1), report on another (0, ``benchmarks/accuracy.md``).
"""

from __future__ import annotations

import argparse
import collections
import csv
import math

import torch

import sdediff as sd
from sdediff.bench_targets import TARGETS

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
    for c in (ranking[0][2], ("dpm++2m", "logsnr")):
        print(f"\n{c[0]}, {c[1]} per target:")
        for t in targets:
            print(t, " ".join(f"{k}:{ratio[c].get((t, k), math.inf):.2f}" for k in NFES if (t, k) in best))


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
    a = ap.parse_args()
    if a.cmd == "run":
        run(a.seed, a.out)
    else:
        select(a.peers, a.ours, a.seed)


if __name__ == "__main__":
    main()
