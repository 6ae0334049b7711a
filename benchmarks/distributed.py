"""Throughput of sd.sample_many: against a plain in-process loop, and from 1 to 2 processes.

1. One process, same batch size, rounds interleaved, median time per configuration:
   * ``plain``      — ``for batch: sd.sample(model, (b, ...), generator=<one generator per batch>)``, what a
     user writes without sample_many (not batch-size invariant);
   * ``plain/idx``  — the same loop with sample_many's per-index generators (the same work, no orchestration);
   * ``many``       — ``sd.sample_many(..., out=None)``; ``many+out`` — with shards written to a temp dir.
   Reported as throughput ratios ``many / plain`` etc. (>= 0.95 is the target for ``many / plain/idx``).
2. ``sample_many`` of one job in 1 and in 2 processes (gloo, file store, one thread each), timed inside
   the workers from a barrier to the end (process start-up excluded), interleaved rounds, medians.

Models: ``gmm``: the exact 2-D mixture score (the solver and the orchestration are all the cost: a worst
case); ``conv``: a small random convolutional eps-network on 3x16x16 (the network dominates, as in practice).

    OMP_NUM_THREADS=1 python benchmarks/distributed.py            # the section in benchmarks/RESULTS.md
    OMP_NUM_THREADS=1 python benchmarks/distributed.py --quick    # fewer rounds
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import sdediff as sd
from sdediff.distributed import index_generators


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
        gen = index_generators(seed, s, s + b) if per_index else torch.Generator().manual_seed(seed * 100003 + s)
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
    times: dict[str, list[float]] = {k: [] for k in runs}
    with torch.no_grad():
        for fn in runs.values():  # warm-up
            fn(-1)
        for i in range(rounds):
            for k, fn in runs.items():
                t0 = time.perf_counter()
                fn(i)
                times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


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
        t0 = time.perf_counter()
        sd.sample_many(model, job["n"], shape, batch_size=job["batch"], solver=job["solver"], steps=job["steps"],
                       progress=False)
        dist.barrier()
        elapsed = time.perf_counter() - t0
    if rank == 0:
        Path(result).write_text(str(elapsed))
    dist.destroy_process_group()


def scaling(name: str, n: int, batch: int, solver: str, steps: int, rounds: int) -> dict[int, float]:
    tmp = Path(tempfile.mkdtemp())
    times: dict[int, list[float]] = {1: [], 2: []}
    job = {"model": name, "n": n, "batch": batch, "solver": solver, "steps": steps}
    for i in range(rounds):
        for world in (1, 2):
            res = tmp / f"t{world}-{i}"
            mp.start_processes(_worker, args=(world, str(tmp / f"store{world}-{i}"), job, str(res)), nprocs=world,
                               join=True, start_method="spawn")
            times[world].append(float(res.read_text()))
    return {w: statistics.median(v) for w, v in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer rounds")
    args = ap.parse_args()
    torch.set_num_threads(1)
    rounds = 3 if args.quick else 7
    print(f"torch {torch.__version__}, sdediff {sd.__version__}, threads=1, float32, medians of {rounds} "
          "interleaved rounds\n")
    print("| model | solver | n | batch | steps | many / plain | many / plain-idx | many+out / plain-idx "
          "| plain-idx / plain |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    cases = [("gmm", 4096, 256, "dpm++2m", 10), ("gmm", 4096, 256, "euler_maruyama", 10),
             ("conv", 256, 32, "dpm++2m", 10), ("conv", 256, 32, "euler_maruyama", 10)]
    for name, n, batch, solver, steps in cases:
        t = one_process(name, n, batch, solver, steps, rounds)
        print(f"| {name} | {solver} | {n} | {batch} | {steps} | {t['plain'] / t['many']:.3f} | "
              f"{t['plain/idx'] / t['many']:.3f} | {t['plain/idx'] / t['many+out']:.3f} | "
              f"{t['plain'] / t['plain/idx']:.3f} |", flush=True)
    print("\n(throughput ratios: time of the denominator / time of the numerator; > 1 means faster)\n")
    print("| model | solver | n | batch | steps | 1 process (s) | 2 processes (s) | speed-up |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for name, n, batch, solver, steps in [("conv", 512, 32, "dpm++2m", 10), ("gmm", 8192, 256, "euler_maruyama", 10)]:
        t = scaling(name, n, batch, solver, steps, max(2, rounds // 2))
        print(f"| {name} | {solver} | {n} | {batch} | {steps} | {t[1]:.3f} | {t[2]:.3f} | {t[1] / t[2]:.2f} |",
              flush=True)
    print(f"\nload average at the end: {' '.join(f'{v:.1f}' for v in os.getloadavg())} (2 cores)")


if __name__ == "__main__":
    main()
