"""The few collectives a sharded job needs, over an initialised ``torch.distributed`` group or none.

Without an initialised group (or with ``torch.distributed`` unavailable) the job is one process:
rank 0 of a world of 1, and every collective is the identity. Collectives on tensors run on the
backend's device (the current CUDA device for NCCL, the CPU otherwise).
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["Comm"]


class Comm:
    """Rank, world size and the collectives of ``group`` (``None``: the default group, if initialised)."""

    def __init__(self, group: Any = None) -> None:
        import torch.distributed as dist

        self._dist = dist
        self.on = bool(dist.is_available() and dist.is_initialized())
        if group is not None and not self.on:
            raise ValueError("group= was given but torch.distributed is not initialised; call "
                             "torch.distributed.init_process_group(...) first (torchrun does the setup)")
        self.group = group
        self.rank = dist.get_rank(group) if self.on else 0
        self.world = dist.get_world_size(group) if self.on else 1
        self.device = torch.device("cpu")
        if self.on and dist.get_backend(group) == "nccl":
            self.device = torch.device("cuda", torch.cuda.current_device())

    def _global(self, rank: int) -> int:
        return self._dist.get_global_rank(self.group, rank) if self.group is not None else rank

    def broadcast_object(self, obj: Any, src: int = 0) -> Any:
        """``obj`` of rank ``src`` on every rank (a small picklable object; ours are dicts of plain data)."""
        if not self.on:
            return obj
        box = [obj if self.rank == src else None]
        self._dist.broadcast_object_list(box, src=self._global(src), group=self.group, device=self.device)
        return box[0]

    def all_gather_object(self, obj: Any) -> list[Any]:
        """Every rank's ``obj``, in rank order."""
        if not self.on:
            return [obj]
        out: list[Any] = [None] * self.world
        self._dist.all_gather_object(out, obj, group=self.group)
        return out

    def sum_ints(self, values: list[int]) -> list[int]:
        """Element-wise sum over ranks of a list of ints (exact: int64)."""
        if not self.on:
            return list(values)
        t = torch.tensor(values, dtype=torch.int64, device=self.device)
        self._dist.all_reduce(t, group=self.group)
        return [int(v) for v in t.tolist()]

    def broadcast_tensor(self, t: torch.Tensor, src: int) -> torch.Tensor:
        """``t`` of rank ``src`` on every rank (``t`` gives the shape and dtype on the others)."""
        if not self.on:
            return t
        buf = t.to(self.device).contiguous()
        self._dist.broadcast(buf, src=self._global(src), group=self.group)
        return buf.to(t.device)

    def barrier(self) -> None:
        if self.on:
            self._dist.barrier(group=self.group)
