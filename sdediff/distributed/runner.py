"""The sharded loop shared by :func:`~sdediff.sample_many` and :func:`~sdediff.log_likelihood_many`.

The job's indices ``0..n-1`` are cut into the ranges of :func:`~sdediff.distributed.store.plan`
(``batch_size`` each, the last one shorter), fixed by ``n`` and ``batch_size`` alone. With ``out=DIR``
rank 0 checks or writes the manifest, then every rank verifies the shards ``k ≡ rank (mod world)`` and
the verdicts are gathered, so all ranks agree on the unfinished ranges; those are dealt out in index
order, round by round (round ``j`` gives range ``todo[j W + r]`` to rank ``r``). After each round one
integer all-reduce advances rank 0's progress bar by the samples finished on all ranks. Results
handed back in memory are broadcast range by range from the rank that holds them, so every rank
returns the same tensors, in index order.

Ordering and barriers: no rank writes a shard before rank 0 has validated the directory (the verdict
is broadcast, and a refusal raises the same ``ValueError`` on every rank); rank 0 marks the manifest
complete after the last round's all-reduce, and a final barrier means that when the call returns on
any rank, every shard and the manifest are on disk.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from .comm import Comm
from .store import ShardStore, TensorSpec, plan

__all__ = ["JobStats", "check_count", "run_sharded"]

Compute = Callable[[int, int], "tuple[dict[str, torch.Tensor], int]"]


@dataclass(frozen=True)
class JobStats:
    """What a sharded job did, summed over all ranks.

    Attributes:
        n: indices in the job.
        shards: index ranges in the job (``ceil(n / batch_size)``).
        computed: ranges computed by this call.
        resumed: ranges found finished and verified in ``out`` and skipped.
        nfe: network evaluations made by this call.
        nfe_total: network evaluations of the whole job (resumed shards' recorded counts included).
        world_size: processes that ran this call.
    """

    n: int
    shards: int
    computed: int
    resumed: int
    nfe: int
    nfe_total: int
    world_size: int


def check_count(name: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def run_sharded(*, kind: str, n: int, batch_size: int, spec: Callable[[int, int], TensorSpec], compute: Compute,
                config: Mapping[str, Any], out: str | os.PathLike | None, keep: bool, result_device: torch.device,
                progress: bool, desc: str, group: Any, version: str) -> tuple[dict[str, torch.Tensor] | None, JobStats]:
    """Run ``compute(start, stop) -> ({name: tensor}, nfe)`` over the job's ranges (see the module docstring).

    Returns the per-index tensors assembled in index order on every rank when ``keep`` (shapes and dtypes
    from ``spec``), else ``None``; and the :class:`JobStats`.
    """
    comm = Comm(group)
    ranges = plan(n, batch_size)
    store = ShardStore(out, kind, config, version) if out is not None else None

    done: dict[int, dict[str, Any]] = {}
    owner: dict[int, int] = {}
    if store is not None:
        msg: str | None = None
        if comm.rank == 0:
            try:
                msg = store.prepare()
            except Exception as e:  # told to every rank, so none waits for a verdict that never comes
                msg = f"cannot use out={str(out)!r}: {type(e).__name__}: {e}"
        msg = comm.broadcast_object(msg)
        if msg:
            raise ValueError(msg)
        mine = {k: store.check(*ranges[k], spec(*ranges[k]))[0] for k in range(comm.rank, len(ranges), comm.world)}
        for r, verdicts in enumerate(comm.all_gather_object({k: s for k, s in mine.items() if s is not None})):
            for k, side in verdicts.items():
                done[k], owner[k] = side, r
    todo = [k for k in range(len(ranges)) if k not in done]
    if store is not None and todo and comm.rank == 0:
        store.write_manifest(complete=False, nfe=None)  # until this run ends (a rerun after damage included)

    held: dict[int, dict[str, torch.Tensor]] = {}
    nfe_local = 0
    bar = None
    if progress and comm.rank == 0:
        from tqdm import tqdm

        bar = tqdm(total=n, initial=sum(ranges[k][1] - ranges[k][0] for k in done), desc=desc, unit="sample")
    try:
        for j in range(0, len(todo), comm.world):
            finished = 0
            if j + comm.rank < len(todo):
                k = todo[j + comm.rank]
                start, stop = ranges[k]
                tensors, nfe = compute(start, stop)
                nfe_local += int(nfe)
                if store is not None:
                    store.write(start, stop, tensors, nfe)
                if keep:
                    held[k] = {name: t.to(result_device) for name, t in tensors.items()}
                finished = stop - start
            for pos in range(j, min(j + comm.world, len(todo))):
                owner[todo[pos]] = pos - j
            step = comm.sum_ints([finished])[0]
            if bar is not None:
                bar.update(step)
    finally:
        if bar is not None:
            bar.close()

    nfe_run = comm.sum_ints([nfe_local])[0]
    nfe_total = nfe_run + sum(int(side.get("nfe", 0)) for side in done.values())
    if store is not None:
        if comm.rank == 0:
            store.write_manifest(complete=True, nfe=nfe_total)
        comm.barrier()
    stats = JobStats(n=n, shards=len(ranges), computed=len(todo), resumed=len(done), nfe=nfe_run,
                     nfe_total=nfe_total, world_size=comm.world)
    if not keep:
        return None, stats

    empty = spec(0, 0)
    parts: dict[str, list[torch.Tensor]] = {name: [] for name in empty}
    for k, (start, stop) in enumerate(ranges):
        want = spec(start, stop)
        if owner[k] == comm.rank and k not in held and store is not None:  # resumed and verified here
            held[k] = {name: t.to(result_device) for name, t in store.read(start, stop, want).items()}
        mine = held.pop(k, None)
        for name, (shape, dtype) in want.items():
            t = mine[name] if mine is not None else torch.empty(shape, dtype=dtype, device=result_device)
            parts[name].append(comm.broadcast_tensor(t, owner[k]))
    result = {name: torch.cat(ps) if ps else torch.empty(shape, dtype=dtype, device=result_device)
              for (name, (shape, dtype)), ps in zip(empty.items(), parts.values(), strict=True)}
    return result, stats
