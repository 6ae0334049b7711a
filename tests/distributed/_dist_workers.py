"""Worker side of the multi-process tests: jobs run under a gloo group made from a file store.

Kept out of the test module so that the worker processes import only this (by reference, from the
parent's ``sys.path``).
"""

from __future__ import annotations

import os
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

import sdediff as sd

MEANS = [[-2.0, 0.0], [2.0, 0.0]]


def gmm_model() -> sd.DiffusionModel:
    return sd.analytic.GaussianMixture(MEANS, 0.3).model(sd.VPSDE())


def stoppable_model(die_after: int | None = None) -> sd.DiffusionModel:
    """The exact GMM model behind a network that ends its process (``os._exit``, no clean-up, like a
    killed worker) at network call ``die_after + 1``; ``None`` never stops."""
    base = gmm_model()
    calls = [0]

    def stoppable_net(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        calls[0] += 1
        if die_after is not None and calls[0] > die_after:
            os._exit(17)
        return base.net(x, t)

    return sd.DiffusionModel(stoppable_net, base.process, base.prediction, time_label=lambda t: t)


class PairDataset(torch.utils.data.Dataset):
    """A map-style dataset of ``(x, label)`` pairs over a tensor."""

    def __init__(self, data: torch.Tensor) -> None:
        self.data = data

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.data[i], i % 3


def run_task(task: dict[str, Any], rank: int) -> Any:
    """One job; the same call a single process makes in the test's reference."""
    kind = task["kind"]
    if kind == "sample":
        die = task.get("die_after") if rank == task.get("die_rank") else None
        model = stoppable_model(die) if task.get("stoppable") else gmm_model()
        res = sd.sample_many(model, task["n"], (2,), progress=False, **task["kwargs"])
        return {"x": res.x, "stats": res.stats}
    if kind == "likelihood":
        data = task["data"] if not task.get("dataset") else PairDataset(task["data"])
        res = sd.log_likelihood_many(gmm_model(), data, progress=False, **task["kwargs"])
        return {"logp": res.logp, "bpd": res.bpd, "mean_logp": res.mean_logp, "stats": res.stats}
    if kind == "load":
        return {"x": sd.load_samples(task["out"])}
    raise ValueError(kind)


def run_tasks(rank: int, world: int, init_file: str, tasks: list[dict[str, Any]], results_dir: str) -> None:
    """Entry point of ``torch.multiprocessing.spawn``: a gloo group, then the tasks in order; each
    rank saves what it got to ``results_dir/<task>-<rank>.pt`` before the next task starts."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world,
                            timeout=timedelta(seconds=120))
    try:
        for task in tasks:
            torch.save(run_task(task, rank), os.path.join(results_dir, f"{task['name']}-{rank}.pt"))
    finally:
        dist.destroy_process_group()
