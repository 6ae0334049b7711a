"""Command line: ``sdediff bench`` (also ``python -m sdediff bench``)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from . import __version__


def _bench(args: argparse.Namespace) -> int:
    from . import bench

    if args.full:
        kw = {"nfes": bench.NFES, "n_2d": args.samples or 2000, "n_64d": max(1, (args.samples or 2000) // 4)}
    else:  # reduced: a few NFE budgets, the main solvers, fewer samples (well under a minute)
        kw = {"nfes": (5, 10, 20), "n_2d": args.samples or 400, "n_64d": max(1, (args.samples or 400) // 4),
              "solvers": ["ddim", "heun", "dpm++2m", "dpm++3m", "unipc", "deis", "dpm_solver_fast", "dpm_solver_23"],
              "tols": (1e-2, 1e-3, 1e-4)}
    print("sdediff bench: PF-ODE of the linear DDPM schedule to sigma = 0 on a sharp 2-D mixture "
          "(8 modes, std 0.05) and an anisotropic 64-D mixture, exact scores")
    print("command: sdediff " + " ".join(sys.argv[1:] if args.argv is None else args.argv))
    rows = bench.run(seed=args.seed, progress=not args.no_progress, **kw)
    nfes = kw["nfes"]
    summary = bench.format_summary(rows, nfes)
    print(summary)
    for target in bench.TARGETS:
        a = bench.first_nfe_below(rows, "dpm_solver_23", target)
        d = bench.first_nfe_below(rows, "dopri5", target)
        print(f"{target}: first NFE with RMSE <= 1e-3: dpm_solver_23 {a}, torchdiffeq dopri5 {d}")
    if args.out:
        with open(args.out + ".md", "w") as fh:
            fh.write(summary + "\n\n" + bench.format_table(rows) + "\n")
        bench.write_csv(rows, args.out + ".csv")
        plotted = bench.plot(rows, args.out + ".png")
        if not plotted:
            print("note: matplotlib is not installed: no plot (pip install 'sdediff[bench]')")
        print(f"wrote {args.out}.md, {args.out}.csv" + (f", {args.out}.png" if plotted else ""))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="sdediff", description="ODE/SDE solvers for diffusion models")
    parser.add_argument("--version", action="version", version=f"sdediff {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("bench", help="step-count benchmark on analytic targets (no downloads)")
    b.add_argument("--full", action="store_true", help="every solver, NFE 5..50 (minutes)")
    b.add_argument("--samples", type=int, default=None, help="samples of the 2-D target (64-D: a quarter)")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--out", default=None, help="write OUT.md, OUT.csv and OUT.png")
    b.add_argument("--no-progress", action="store_true")
    b.set_defaults(func=_bench)
    args = parser.parse_args(argv)
    args.argv = list(argv) if argv is not None else None
    return args.func(args)
