"""Command line: ``sdediff bench`` (also ``python -m sdediff bench``)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence


def _bench(args: argparse.Namespace) -> int:
    from .bench import format_table, run

    print("sdediff bench: sharp 2-D Gaussian mixture (8 modes, std 0.05) under VP, exact score")
    print(format_table(run(n_samples=args.samples, seed=args.seed)))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="sdediff", description="ODE/SDE solvers for diffusion models")
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("bench", help="step-count benchmark on an analytic target (no downloads)")
    b.add_argument("--samples", type=int, default=2000)
    b.add_argument("--seed", type=int, default=0)
    b.set_defaults(func=_bench)
    args = parser.parse_args(argv)
    return args.func(args)
