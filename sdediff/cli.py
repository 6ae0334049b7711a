"""Command line: ``sdediff bench`` (also ``python -m sdediff bench``)."""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from . import __version__


def _csv(kind: type = str) -> Callable[[str], list[Any]]:
    """An argparse type: a comma-separated list of ``kind``."""

    def parse(text: str) -> list[Any]:
        items = [s.strip() for s in text.split(",") if s.strip()]
        try:
            if not items:
                raise ValueError
            return [kind(s) for s in items]
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a comma-separated list of {kind.__name__}, got {text!r}"
                                             ) from None

    return parse


def _load_factory(spec: str) -> Callable[[], Any]:
    """``pkg.module:factory`` (importable, the current directory first on the path) or
    ``path/to/file.py:factory``."""
    mod_name, sep, attr = spec.rpartition(":")
    if not sep or not mod_name or not attr:
        raise SystemExit(f"sdediff bench: --model must be 'pkg.module:factory' or 'path/to/file.py:factory', "
                         f"got {spec!r}")
    if mod_name.endswith(".py") or os.sep in mod_name:
        path = Path(mod_name)
        if not path.is_file():
            raise SystemExit(f"sdediff bench: --model file {str(path)!r} does not exist")
        loader = importlib.util.spec_from_file_location(path.stem, path)
        module = importlib.util.module_from_spec(loader)  # type: ignore[arg-type]
        sys.modules[path.stem] = module
        loader.loader.exec_module(module)  # type: ignore[union-attr]
    else:
        if os.getcwd() not in sys.path and "" not in sys.path:
            sys.path.insert(0, os.getcwd())  # as `python -m` does, so a module of the current project imports
        try:
            module = importlib.import_module(mod_name)
        except ImportError as e:
            raise SystemExit(f"sdediff bench: cannot import {mod_name!r} for --model {spec!r}: {e}") from None
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise SystemExit(f"sdediff bench: {mod_name!r} has no callable {attr!r} (--model {spec!r})")
    return factory


def _write(out: str, name: str, md: str, to_csv: Callable[[Path], Any], plot: Callable[[Path], Any]) -> None:
    d = Path(out)
    d.mkdir(parents=True, exist_ok=True)
    (d / f"{name}.md").write_text(md)
    to_csv(d / f"{name}.csv")
    written = [d / f"{name}.md", d / f"{name}.csv"]
    try:
        if plot(d / f"{name}.png") is False:
            raise ImportError("matplotlib is not installed (pip install 'sdediff[bench]')")
        written.append(d / f"{name}.png")
    except ImportError as e:
        print(f"note: {e}: no plot")
    print("wrote " + ", ".join(map(str, written)))


def _bench_model(args: argparse.Namespace) -> int:
    from . import bench
    from .benchmarking import DEFAULT_NFE, benchmark
    from .model import ScoreModel

    made = _load_factory(args.model)()
    if not (isinstance(made, tuple) and len(made) == 2 and isinstance(made[0], ScoreModel)):
        raise SystemExit(f"sdediff bench: --model {args.model!r} must return (model, shape) or (model, x_T) with "
                         f"model an sdediff DiffusionModel; got {type(made).__name__}")
    model, x = made
    print("command: sdediff " + " ".join(sys.argv[1:] if args.argv is None else args.argv))
    solvers = args.solvers or (bench.deterministic_solvers() if args.full else None)
    reference = None if args.ref_tol is None else {"rtol": args.ref_tol, "atol": args.ref_tol}
    res = benchmark(model, x, solvers=solvers, grids=args.grids, nfe=args.nfe or (bench.NFES if args.full else
                    DEFAULT_NFE), generator=None if not isinstance(x, (tuple, list)) else args.seed,
                    reference=reference, progress=not args.no_progress)
    md = res.to_markdown()
    print(md)
    if args.out:
        _write(args.out, args.name, md, res.to_csv, res.plot)
    return 0


def _bench(args: argparse.Namespace) -> int:
    if args.model:
        extra = [f for f, v in (("--targets", args.targets), ("--samples", args.samples), ("--no-peers", args.no_peers))
                 if v]
        if extra:
            raise SystemExit(f"sdediff bench: {', '.join(extra)} apply to the built-in targets, not to --model "
                             "(its factory chooses the samples)")
        return _bench_model(args)
    if args.ref_tol is not None:
        raise SystemExit("sdediff bench: --ref-tol applies to --model (the built-in targets have a fixed reference)")
    from . import bench

    targets = args.targets or list(bench.TARGETS)
    for name in targets:
        if name not in bench.TARGETS:
            raise SystemExit(f"sdediff bench: unknown target {name!r}; built-in targets: {', '.join(bench.TARGETS)}")
    grids = args.grids
    for g in grids or ():
        if g not in bench.GRIDS:
            raise SystemExit(f"sdediff bench: unknown grid {g!r} for the built-in targets; valid: "
                             f"{', '.join(bench.GRIDS)}")
    kw = dict(bench.FULL if args.full else bench.QUICK)
    if args.nfe:
        kw["nfes"] = tuple(args.nfe)
    if args.solvers:
        kw["solvers"] = args.solvers
    print("sdediff bench: PF-ODE of the linear DDPM schedule to sigma = 0 on the built-in analytic targets "
          f"({', '.join(targets)}), exact scores")
    print("command: sdediff " + " ".join(sys.argv[1:] if args.argv is None else args.argv))
    rows = bench.run(seed=args.seed, progress=not args.no_progress, targets=targets, grids=grids,
                     samples=args.samples, peers=not args.no_peers, **kw)
    nfes = kw["nfes"]
    summary = bench.format_summary(rows, nfes)
    print(summary)
    for target in targets:
        a = bench.first_nfe_below(rows, "dpm_solver_23", target)
        d = bench.first_nfe_below(rows, "dopri5", target)
        print(f"{target}: first NFE with RMSE <= 1e-3: dpm_solver_23 {a}, torchdiffeq dopri5 {d}")
    if args.out:
        _write(args.out, args.name, summary + "\n\n" + bench.format_table(rows) + "\n",
               lambda p: bench.write_csv(rows, str(p)), lambda p: bench.plot(rows, str(p)))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="sdediff", description="ODE/SDE solvers for diffusion models")
    parser.add_argument("--version", action="version", version=f"sdediff {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("bench", help="accuracy per NFE: built-in analytic targets (no downloads) or --model")
    b.add_argument("--model", default=None, metavar="MODULE:FACTORY",
                   help="benchmark your model: 'pkg.module:factory' or 'file.py:factory', a callable returning "
                        "(model, shape) or (model, x_T)")
    b.add_argument("--solvers", type=_csv(), default=None, help="comma-separated solver names")
    b.add_argument("--grids", type=_csv(), default=None, help="comma-separated grid names")
    b.add_argument("--nfe", type=_csv(int), default=None, help="comma-separated NFE budgets, e.g. 5,10,20")
    b.add_argument("--ref-tol", type=float, default=None,
                   help="--model: rtol = atol of the reference (checked against one ten times tighter); default "
                        "1e-9 in float64, 1e-5 in float32")
    b.add_argument("--targets", type=_csv(), default=None, help="built-in targets (default: all)")
    b.add_argument("--no-peers", action="store_true", help="built-in targets: skip diffusers and torchdiffeq")
    b.add_argument("--full", action="store_true", help="every solver, NFE 5..50, peers (minutes)")
    b.add_argument("--samples", type=int, default=None, help="samples per built-in target (default: per target)")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--out", default=None, metavar="DIR", help="write DIR/NAME.md, .csv and .png")
    b.add_argument("--name", default="bench", help="file stem of the --out files (default: bench)")
    b.add_argument("--no-progress", action="store_true")
    b.set_defaults(func=_bench)
    args = parser.parse_args(argv)
    args.argv = list(argv) if argv is not None else None
    return args.func(args)
