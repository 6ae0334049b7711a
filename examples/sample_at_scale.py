"""Sampling and likelihoods past one process with sd.sample_many / sd.log_likelihood_many.

One process (a few seconds at the default size; it checks its own claims and exits 1 if one fails):

    python examples/sample_at_scale.py

Several processes on one machine (CPU: gloo; with GPUs each rank uses cuda:<local rank> and NCCL):

    torchrun --standalone --nproc-per-node 2 examples/sample_at_scale.py --out /tmp/sdediff-samples

Kill it (Ctrl-C) and run the same command again: finished shards are verified and skipped, and the
samples are bitwise those of an uninterrupted run, whatever the number of processes.

The model is the exact score of a 2-D Gaussian mixture (modes at x = -2 and x = 2), so the result
can be checked: about half of the samples near each mode, and the mean log-likelihood of fresh data
from the mixture close to its closed form.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile

import torch
import torch.distributed as dist

import sdediff as sd


def plot(x: torch.Tensor, path: str) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("note: matplotlib is not installed: no plot (pip install 'sdediff[bench]')")
        return
    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.scatter(x[:, 0], x[:, 1], s=2, alpha=0.5)
    ax.set(xlabel="x1", ylabel="x2", title=f"{len(x)} samples of sd.sample_many (exact 2-D mixture score)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    print(f"wrote {path}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=2000, help="samples to draw")
    ap.add_argument("--batch-size", type=int, default=250)
    ap.add_argument("--solver", default="dpm++2m")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="shard directory (resumable; default: a new temporary one)")
    ap.add_argument("--plot", default="sample_at_scale.png", help="plot file ('' for none)")
    args = ap.parse_args()

    torch.set_num_threads(1)
    device = None
    if "RANK" in os.environ:  # started by torchrun
        if torch.cuda.is_available():
            local = int(os.environ.get("LOCAL_RANK", 0))
            torch.cuda.set_device(local)
            device = torch.device("cuda", local)
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    rank = dist.get_rank() if dist.is_initialized() else 0
    if args.out is None and dist.is_initialized():
        raise SystemExit("under torchrun pass --out DIR, a directory every process shares")
    out = args.out or tempfile.mkdtemp(prefix="sdediff-samples-")

    gmm = sd.analytic.GaussianMixture([[-2.0, 0.0], [2.0, 0.0]], 0.3)
    model = gmm.model(sd.VPSDE())
    kw = dict(batch_size=args.batch_size, solver=args.solver, steps=args.steps, seed=args.seed, device=device)
    res = sd.sample_many(model, args.n, (2,), out=out, **kw)
    x = sd.load_samples(out)
    again = sd.sample_many(model, args.n, (2,), out=out, progress=False, **kw)  # a rerun: everything resumed
    in_memory = sd.sample_many(model, args.n, (2,), progress=False, **kw).x
    data = gmm.sample(min(args.n, 200), generator=args.seed + 1).to(torch.float64)
    lik = sd.log_likelihood_many(model, data, batch_size=args.batch_size, seed=args.seed, solver="rk4", steps=10,
                                 device=device, progress=False)
    if dist.is_initialized():
        dist.destroy_process_group()
    if rank != 0:
        return 0

    s = res.stats
    print(f"{s.n} samples in {s.shards} shards of {out} on {s.world_size} process(es): computed {s.computed}, "
          f"resumed {s.resumed}; NFE {s.nfe} this run, {s.nfe_total} in all")
    near = float((x[:, 0] > 0).double().mean())
    exact = float(gmm.log_prob(model.process.t_min, data, model.process).mean())
    print(f"fraction near x = +2: {near:.3f} (exact 0.5); mean |x1| = {float(x[:, 0].abs().mean()):.3f} (about 2)")
    print(f"mean log-likelihood of {len(data)} fresh points: {lik.mean_logp:.4f} nats (closed form {exact:.4f}; "
          "the prior at T is N(0, I), not the exact p_T)")
    checks = {
        "the rerun resumed every shard, computed none": (again.stats.resumed, again.stats.computed) == (s.shards, 0),
        "the shards hold the in-memory samples bitwise": bool(torch.equal(x, in_memory.to(x.device))),
        "about half the samples near each mode (5 standard errors)": abs(near - 0.5) < 5 * (0.25 / len(x)) ** 0.5,
        "mean log-likelihood within 0.05 nats of the closed form": abs(lik.mean_logp - exact) < 0.05,
    }
    for claim, ok in checks.items():
        print(f"{'ok  ' if ok else 'FAIL'} {claim}")
    if args.plot:
        plot(x.cpu(), args.plot)
    if args.out is None:
        shutil.rmtree(out)  # the temporary shard directory of this demonstration
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
