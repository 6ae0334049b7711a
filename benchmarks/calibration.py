"""Calibrated grids on the exact targets, validated on the peers' own draws and divided by the best peer.

    OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/calibration.py                      # the full table
    OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/calibration.py --targets 2d-sharp --nfe 5 6 8 --n 500
    OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/calibration.py --targets box-16d --solvers ipndm --chain

Like with like: the **validation draws are the ones ``benchmarks/accuracy.py`` scored every peer on**
(``target.prior(n, generator=0)``, n = 1000 for 2d-sharp and 500 for the others) with the same reference
(``Target.reference_data``: float64 dopri8 of the exact flow to the σ = 0 limit), passed to ``calibrate``
as ``validation=``; the **calibration draws are separate** (``--cal-seed``, default 1, ``--n`` draws).
The "÷ best peer" column divides the validation RMSE by the smallest RMSE of any peer configuration at the
same NFE budget and seed 0 in ``--peer-csv`` (default ``benchmarks/accuracy.csv``; empty where it has none).

The references of both sets are solved once per target (``--ref-solver target``, the default, is the
harness's own; ``dpm_solver_23`` is ``benchmarking._Reference`` at ``--ref-tol``; ``fine`` is 500 ``unipc3``
logsnr steps, for quick comparisons) and handed to ``calibrate`` as a callable, so every solver and budget
of a target shares them. ``--chain`` fits the budgets in increasing order, each warm-started from the
previous calibrated grid (``init=CalibratedGrid``) as well as from the standard grids. Rows are appended to
``--out`` (markdown) as they finish; ``--summary`` then picks, per target and NFE, the solver with the
smallest *calibration* RMSE (the validation draws play no part in the choice), each solver having had
``--max-seconds``; ``--among`` makes that choice inside one ``calibrate(solver=[...])`` call, whose
``--max-seconds`` is split among the solvers. ``--eps-scale`` also fits the per-step noise-prediction scales
(half of each budget; the label says when no scale was kept).
"""

from __future__ import annotations

import argparse
import csv
import time
import warnings
from pathlib import Path

import torch

import sdediff as sd
from sdediff.bench_targets import ALL_TARGETS, TARGETS
from sdediff.benchmarking import _Reference
from sdediff.calibration import _ReferenceCache

SAMPLES = {"2d-sharp": 1000}  # the validation draws: as benchmarks/accuracy.py
DEFAULT_SAMPLES = 500
HEADER = ("| target | solver | NFE | steps | warm start | warm-start val RMSE | calibrated cal RMSE "
          "| calibrated val RMSE | val gain | best peer (seed 0) | ÷ best peer | evals | optimiser CPU s "
          "| total CPU s | wall s | calibrated val median | smallest peer median |\n"
          "|---|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n")


def best_peers(path: Path, column: str = "rmse") -> dict[tuple[str, int], tuple[float, str]]:
    """(target, budget) -> (the smallest peer ``column`` at seed 0, which configuration) from the accuracy csv."""
    best: dict[tuple[str, int], tuple[float, str]] = {}
    if not path.exists():
        return best
    with path.open() as fh:
        for r in csv.DictReader(fh):
            if r["seed"] != "0" or r["family"] == "sdediff" or not r["budget"] or not r[column]:
                continue
            key, v = (r["target"], int(r["budget"])), float(r[column])
            if v == v and (key not in best or v < best[key][0]):
                best[key] = (v, f"{r['family']} {r['method']} {r['grid']}")
    return best


def summary(path: Path) -> str:
    """Per (target, NFE): the solver whose calibrated grid has the smallest *calibration* RMSE (chosen on the
    calibration draws only), with its validation RMSE and ratio to the best peer (a markdown table)."""
    rows: dict[tuple[str, int], list[list[str]]] = {}
    for line in path.read_text().splitlines():
        c = [v.strip() for v in line.strip().strip("|").split("|")]
        if len(c) not in (15, 17) or not c[2].isdigit():
            continue
        rows.setdefault((c[0], int(c[2])), []).append(c)
    out = ["| target | NFE | solvers tried | chosen (smallest cal RMSE) | cal RMSE | val RMSE | best peer | "
           "÷ best peer | optimiser CPU s |", "|---|---:|---|---|---:|---:|---:|---:|---:|"]
    for (target, nfe), cs in sorted(rows.items()):
        c = min(cs, key=lambda r: float(r[6]))
        out.append(f"| {target} | {nfe} | {', '.join(r[1] for r in cs)} | {c[1]} | {c[6]} | {c[7]} | "
                   f"{c[9].split(' ')[0]} | {c[10]} | {c[12]} |")
    return "\n".join(out)


def references(tg, xs: list[torch.Tensor], how: str, tol: float) -> list[tuple[torch.Tensor, torch.Tensor]]:
    out = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        for x in xs:
            if how == "target":
                out.append((x, tg.reference_data(x)))
            elif how == "fine":
                with torch.no_grad():
                    out.append((x, sd.sample(tg.model, tuple(x.shape), solver="unipc3", steps=500, grid="logsnr",
                                             x_T=x).x))
            else:
                out.append((x, _Reference(tg.model, x, {"solver": how, "rtol": tol, "atol": tol}).end(True)))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--targets", nargs="+", default=list(TARGETS), choices=list(ALL_TARGETS))
    ap.add_argument("--solvers", nargs="+", default=["ipndm"])
    ap.add_argument("--nfe", nargs="+", type=int, default=[5, 6, 8, 10, 12, 15, 20])
    ap.add_argument("--n", type=int, default=2000, help="calibration draws")
    ap.add_argument("--cal-seed", type=int, default=1, help="seed of the calibration draws (validation: seed 0)")
    ap.add_argument("--max-seconds", type=float, default=60.0,
                    help="CPU seconds per budget: the whole calibrate call apart from the reference solve")
    ap.add_argument("--max-evals", type=int, default=2000)
    ap.add_argument("--optimizer", default="powell", choices=["powell", "nelder-mead"])
    ap.add_argument("--among", action="store_true",
                    help="one calibrate call with solver=--solvers (the budget split among them, the best kept)")
    ap.add_argument("--eps-scale", action="store_true",
                    help="also fit one noise-prediction scale per step (calibrate(..., eps_scale=True))")
    ap.add_argument("--chain", action="store_true", help="warm-start each budget from the previous calibrated grid")
    ap.add_argument("--ref-solver", default="target", help="'target' (the harness's), 'fine', or an adaptive solver")
    ap.add_argument("--ref-tol", type=float, default=1e-8)
    ap.add_argument("--peer-csv", default="benchmarks/accuracy.csv")
    ap.add_argument("--out", default="benchmarks/calibration.md")
    ap.add_argument("--save", default=None, help="a folder to save each calibrated grid's JSON in")
    ap.add_argument("--summary", action="store_true",
                    help="print the per-(target, NFE) choice among the solvers in --out and exit")
    a = ap.parse_args()
    if a.summary:
        print(summary(Path(a.out)))
        return
    torch.set_num_threads(1)
    peers, peer_medians = best_peers(Path(a.peer_csv)), best_peers(Path(a.peer_csv), "median_error")
    if a.save:
        Path(a.save).mkdir(parents=True, exist_ok=True)
    out = Path(a.out)
    if not out.exists():
        out.write_text(HEADER)
    for name in a.targets:
        tg = ALL_TARGETS[name]()
        x_val = tg.prior(SAMPLES.get(name, DEFAULT_SAMPLES), generator=0)
        x_cal = tg.process.prior_sample((a.n, *tg.event_shape), generator=torch.Generator().manual_seed(a.cal_seed),
                                        dtype=torch.float64)
        t0 = time.process_time()
        refs = references(tg, [x_cal, x_val], a.ref_solver, a.ref_tol)
        print(f"{name}: references ({a.ref_solver}) of {a.n} + {len(x_val)} draws: "
              f"{time.process_time() - t0:.1f} CPU s", flush=True)

        reference = _ReferenceCache()  # only these two sets: a draw of calibrate's own would raise
        for x, end in refs:
            reference.put(x, end)

        for solver in [tuple(a.solvers)] if a.among else a.solvers:
            prev = None
            for nfe in sorted(a.nfe) if a.chain else a.nfe:
                w0, c0 = time.perf_counter(), time.process_time()
                cg = sd.timesteps.calibrate(tg.model, solver, nfe, n_samples=a.n, shape=tg.event_shape,
                                            reference=reference, generator=a.cal_seed, max_evals=a.max_evals,
                                            max_seconds=a.max_seconds, optimizer=a.optimizer, validation=x_val,
                                            init=prev, eps_scale=a.eps_scale)
                wall, cpu = time.perf_counter() - w0, time.process_time() - c0
                prev = cg if a.chain else None
                pv = cg.provenance
                if a.save:
                    cg.save(Path(a.save) / f"{name}_{'+'.join(solver) if a.among else solver}_nfe{nfe}.json")
                with torch.no_grad():  # the typical draw: median over draws of the per-draw RMS error
                    end = sd.sample(tg.model, tuple(x_val.shape), solver=cg.solver, grid=cg, x_T=x_val).x
                med = float((end.to(torch.float64) - refs[1][1]).pow(2).reshape(len(x_val), -1).mean(1).sqrt()
                            .median())
                pmed = peer_medians.get((name, nfe))
                peer = peers.get((name, nfe))
                ratio = f"{cg.validation_rmse / peer[0]:.2f}" if peer else ""
                label = f"{cg.solver} (of {', '.join(solver)})" if a.among else solver
                if a.eps_scale:
                    label += " + eps_scale" if cg.eps_scale is not None else " + eps_scale (none kept)"
                row = (f"| {name} | {label} | {nfe} | {cg.steps} | {cg.init_grid} | {cg.init_validation_rmse:.3e} | "
                       f"{cg.calibration_rmse:.3e} | {cg.validation_rmse:.3e} | "
                       f"{cg.init_validation_rmse / cg.validation_rmse:.2f}x | "
                       f"{f'{peer[0]:.3e} ({peer[1]})' if peer else ''} | {ratio} | {pv['evals']} | "
                       f"{pv['optimizer_cpu_seconds']:.1f} | {cpu:.1f} | {wall:.1f} | {med:.2e} | "
                       f"{f'{pmed[0]:.2e}' if pmed else ''} |\n")
                with out.open("a") as fh:
                    fh.write(row)
                print(row, end="", flush=True)


if __name__ == "__main__":
    main()
