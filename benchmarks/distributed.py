"""Throughput of sd.sample_many: against a plain in-process loop, and from 1 to 2 processes.

1. One process, same batch size, rounds interleaved, median time per configuration:
   * ``plain``      — ``for batch: sd.sample(model, (b, ...), generator=<one generator per batch>)``, what a
     user writes without sample_many (not batch-size invariant);
   * ``plain/idx``  — the same loop with sample_many's per-index generators (the same work, no orchestration);
   * ``many``       — ``sd.sample_many(..., out=None)``; ``many+out`` — with shards written to a temp dir.
   Reported as throughput ratios ``many / plain`` etc. from CPU time (and wall time); the target is >= 0.95.
2. ``sample_many`` of one job in 1 and in 2 processes (gloo, file store, one thread each), timed inside
   the workers from a barrier to the end (process start-up excluded), interleaved rounds, medians; also
   the CPU time of the busiest rank (the wall time it would take with a free core per process).

Models: ``gmm``: the exact 2-D mixture score (the solver and the orchestration are all the cost: a worst
case); ``conv``: a small random convolutional eps-network on 3x16x16 (the network dominates, as in practice).

    OMP_NUM_THREADS=1 python benchmarks/distributed.py            # the section in benchmarks/RESULTS.md
    OMP_NUM_THREADS=1 python benchmarks/distributed.py --quick    # fewer rounds
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import tempfile
import time
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import sdediff as sd
from sdediff.distributed import index_streams


class ConvEps(torch.nn.Module):
    """A small random eps-network (conv, SiLU, time embedding by a channel bias)."""

    def __init__(self, ch: int = 32) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.inp = torch.nn.Conv2d(3, ch, 3, padding=1)
        self.mid = torch.nn.Conv2d(ch, ch, 3, padding=1)
        self.out = torch.nn.Conv2d(ch, 3, 3, padding=1)
        self.emb = torch.nn.Linear(1, ch)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        h = torch.nn.functional.silu(self.inp(x) + self.emb(t.reshape(-1, 1).to(x.dtype))[:, :, None, None])
        return self.out(torch.nn.functional.silu(self.mid(h)))


MODELS = {
    "gmm": (lambda: sd.analytic.GaussianMixture([[-2.0, 0.0], [2.0, 0.0]], 0.3).model(sd.VPSDE()), (2,)),
    "conv": (lambda: sd.DiffusionModel(ConvEps().eval(), sd.VPSDE(), "eps"), (3, 16, 16)),
}


def plain_loop(model, n, shape, batch, solver, steps, seed, per_index):
    out = []
    for s in range(0, n, batch):
        b = min(batch, n - s)
        gen = (index_streams(seed, s, s + b, tuple(shape)) if per_index
               else torch.Generator().manual_seed(seed * 100003 + s))
        out.append(sd.sample(model, (b, *shape), solver=solver, steps=steps, generator=gen).x)
    return torch.cat(out)


def one_process(name: str, n: int, batch: int, solver: str, steps: int, rounds: int) -> dict[str, float]:
    make, shape = MODELS[name]
    model = make()
    tmp = Path(tempfile.mkdtemp())
    runs = {
        "plain": lambda i: plain_loop(model, n, shape, batch, solver, steps, 1, False),
        "plain/idx": lambda i: plain_loop(model, n, shape, batch, solver, steps, 1, True),
        "many": lambda i: sd.sample_many(model, n, shape, batch_size=batch, solver=solver, steps=steps, seed=1,
                                         progress=False),
        "many+out": lambda i: sd.sample_many(model, n, shape, batch_size=batch, solver=solver, steps=steps, seed=1,
                                             progress=False, out=tmp / f"r{i}"),
    }
    wall: dict[str, list[float]] = {k: [] for k in runs}
    cpu: dict[str, list[float]] = {k: [] for k in runs}
    with torch.no_grad():
        for fn in runs.values():  # warm-up
            fn(-1)
        order = list(runs)
        for i in range(rounds):
            random.Random(i).shuffle(order)  # interleaved in a new order each round
            for k in order:
                fn = runs[k]
                t0, c0 = time.perf_counter(), time.process_time()
                fn(i)
                wall[k].append(time.perf_counter() - t0)
                cpu[k].append(time.process_time() - c0)
    return {k: statistics.median(v) for k, v in wall.items()}, {k: statistics.median(v) for k, v in cpu.items()}


def _worker(rank: int, world: int, init: str, job: dict, result: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init}", rank=rank, world_size=world,
                            timeout=timedelta(seconds=300))
    make, shape = MODELS[job["model"]]
    model = make()
    with torch.no_grad():
        sd.sample_many(model, job["batch"], shape, batch_size=job["batch"], solver=job["solver"],
                       steps=job["steps"], progress=False)  # warm-up
        dist.barrier()
        t0, c0 = time.perf_counter(), time.process_time()
        sd.sample_many(model, job["n"], shape, batch_size=job["batch"], solver=job["solver"], steps=job["steps"],
                       progress=False)
        c1 = time.process_time()
        dist.barrier()
        elapsed = time.perf_counter() - t0
    cpus: list = [None] * world
    dist.all_gather_object(cpus, c1 - c0)
    if rank == 0:
        Path(result).write_text(json.dumps({"wall": elapsed, "cpu": cpus}))
    dist.destroy_process_group()


def scaling(name: str, n: int, batch: int, solver: str, steps: int, rounds: int) -> dict[str, dict[int, float]]:
    """Median wall time of the job and median CPU time of its busiest rank, for 1 and 2 processes."""
    tmp = Path(tempfile.mkdtemp())
    wall: dict[int, list[float]] = {1: [], 2: []}
    busiest: dict[int, list[float]] = {1: [], 2: []}
    job = {"model": name, "n": n, "batch": batch, "solver": solver, "steps": steps}
    for i in range(rounds):
        for world in (1, 2):
            res = tmp / f"t{world}-{i}"
            mp.start_processes(_worker, args=(world, str(tmp / f"store{world}-{i}"), job, str(res)), nprocs=world,
                               join=True, start_method="spawn")
            got = json.loads(res.read_text())
            wall[world].append(got["wall"])
            busiest[world].append(max(got["cpu"]))
    return {"wall": {w: statistics.median(v) for w, v in wall.items()},
            "cpu": {w: statistics.median(v) for w, v in busiest.items()}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="3 rounds")
    ap.add_argument("--rounds", type=int, default=9, help="interleaved rounds (scaling: half as many, >= 2)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    rounds = 3 if args.quick else args.rounds
    print(f"torch {torch.__version__}, sdediff {sd.__version__}, threads=1, float32, medians of {rounds} "
          "interleaved rounds\n")
    print("Throughput ratios of the numerator over the denominator (> 1: the numerator is faster), from the "
          "median CPU time of each (the process's own time: stable on a shared machine) and, in brackets, the "
          "median wall time.\n")
    print("| model | solver | n | batch | steps | many / plain | many / plain-idx | many+out / plain-idx "
          "| plain-idx / plain |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    cases = [("gmm", 2048, 256, "dpm++2m", 10), ("gmm", 2048, 256, "euler_maruyama", 10),
             ("conv", 256, 32, "dpm++2m", 10), ("conv", 256, 32, "euler_maruyama", 10)]
    for name, n, batch, solver, steps in cases:
        w, c = one_process(name, n, batch, solver, steps, rounds)
        cells = [f"{c[b] / c[a]:.3f} ({w[b] / w[a]:.2f})" for a, b in
                 (("many", "plain"), ("many", "plain/idx"), ("many+out", "plain/idx"), ("plain/idx", "plain"))]
        print(f"| {name} | {solver} | {n} | {batch} | {steps} | " + " | ".join(cells) + " |", flush=True)
    print("\nOne job in 1 and 2 processes (gloo, one thread each): median wall time, and the median CPU time of "
          "the busiest rank (what the wall time would be with a free core per process).\n")
    print("| model | solver | n | batch | steps | wall 1 proc (s) | wall 2 procs (s) | wall speed-up "
          "| busiest-rank CPU 1 / 2 (s) | CPU speed-up |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, n, batch, solver, steps in [("conv", 512, 32, "dpm++2m", 10), ("gmm", 8192, 256, "euler_maruyama", 10)]:
        t = scaling(name, n, batch, solver, steps, max(2, rounds // 2))
        w, c = t["wall"], t["cpu"]
        print(f"| {name} | {solver} | {n} | {batch} | {steps} | {w[1]:.2f} | {w[2]:.2f} | {w[1] / w[2]:.2f} | "
              f"{c[1]:.2f} / {c[2]:.2f} | {c[1] / c[2]:.2f} |", flush=True)
    print(f"\nload average at the end: {' '.join(f'{v:.1f}' for v in os.getloadavg())} (2 cores)")


if __name__ == "__main__":
    main()
