"""``log_likelihood_many``: per-example log-likelihoods of a tensor or a dataset, sharded and resumable."""

from __future__ import annotations

import hashlib
import inspect
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..likelihood import log_likelihood
from .comm import Comm
from .runner import JobStats, check_count, run_sharded
from .seeds import SEED_DERIVATION, check_seed, index_streams

__all__ = ["LikelihoodManyResult", "log_likelihood_many"]

_OWN = ("system", "x", "generator")
_FORWARDED = tuple(p for p in inspect.signature(log_likelihood).parameters if p not in _OWN)


@dataclass(frozen=True)
class LikelihoodManyResult:
    """What :func:`log_likelihood_many` returns (the same on every rank).

    Attributes:
        logp: :math:`\\log p(x_i)` in nats per example, ``(n,)`` float64, in index order.
        bpd: bits per dimension per example, ``(n,)`` float64.
        mean_logp, mean_bpd: their means over the ``n`` examples (summed in index order, so the same
            for any number of processes; NaN for ``n = 0``).
        out: the shard directory, or ``None``.
        stats: shards computed and resumed, NFE summed over ranks.
    """

    logp: torch.Tensor
    bpd: torch.Tensor
    mean_logp: float
    mean_bpd: float
    out: Path | None
    stats: JobStats


def _item(value: Any, index: int) -> torch.Tensor:
    if isinstance(value, (tuple, list)) and value:
        value = value[0]  # (x, label, ...) datasets: the data come first
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"data[{index}] must be a tensor or a tuple whose first element is one, got "
                        f"{type(value).__name__}")
    return value


def _fingerprint(data: torch.Tensor) -> str:
    flat = data.detach().to("cpu").contiguous().reshape(-1)
    return hashlib.sha256(flat.view(torch.uint8).numpy().tobytes() if flat.numel() else b"").hexdigest()


def log_likelihood_many(model: Any, data: torch.Tensor | torch.utils.data.Dataset, *, batch_size: int,
                        seed: int = 0, out: str | os.PathLike | None = None,
                        device: torch.device | str | None = None, progress: bool = True, group: Any = None,
                        **kwargs: Any) -> LikelihoodManyResult:
    """:func:`sdediff.log_likelihood` of every example of ``data``, in batches, over all ranks.

    Example ``i`` draws its dequantization noise and its Hutchinson probes from the generator derived
    from ``(seed, i)`` (:mod:`sdediff.distributed.seeds`). The examples are cut into the index ranges
    ``[k B, (k + 1) B)`` (``B = batch_size``), dealt out to the ranks in index order; since the ranges do not
    depend on the number of processes, neither do the results (adaptive solvers included: each range is one
    solve). Per-example results are gathered on every rank and the means are taken in index order.

    Args:
        model: a model or an ODE dynamics, as for :func:`sdediff.log_likelihood`.
        data: a tensor ``(n, ...)``, or a map-style ``torch.utils.data.Dataset`` whose items are tensors or
            tuples with the tensor first (labels are ignored).
        batch_size: examples per solve and per shard (>= 1).
        seed: the job seed (an int >= 0).
        out: a shard directory (shared by the ranks); a rerun verifies and skips the finished shards.
        device: where to compute (default: the CPU, or the current CUDA device under an NCCL group).
        progress: a tqdm bar on rank 0.
        group: a ``torch.distributed`` process group (default: the default group, if initialised).
        **kwargs: the options of :func:`sdediff.log_likelihood` (``solver``, ``rtol``, ``divergence``,
            ``n_probes``, ``dequantize``, ``data_range``, ...), except ``generator`` (use ``seed``).

    Returns:
        :class:`LikelihoodManyResult`.
    """
    from .. import __version__

    if "generator" in kwargs:
        raise TypeError("log_likelihood_many seeds every example from (seed, index); pass seed=<int> instead "
                        "of generator=")
    unknown = sorted(set(kwargs) - set(_FORWARDED))
    if unknown:
        raise TypeError(f"unknown option(s) {', '.join(map(repr, unknown))} for log_likelihood_many; valid: "
                        f"batch_size, seed, out, device, progress, group, {', '.join(_FORWARDED)}")
    check_count("batch_size", batch_size, 1)
    seed = check_seed(seed)
    if isinstance(data, torch.Tensor):
        if data.ndim < 2:
            raise ValueError(f"data must have shape (n, ...) with at least one data dimension, got "
                             f"{tuple(data.shape)}; for scalar data use shape (n, 1)")
        n = int(data.shape[0])
        item_shape, item_dtype = tuple(data.shape[1:]), data.dtype

        def batch(start: int, stop: int) -> torch.Tensor:
            return data[start:stop]

        described = {"type": "Tensor", "sha256": _fingerprint(data)}
    elif hasattr(data, "__getitem__") and hasattr(data, "__len__"):
        n = len(data)
        first = _item(data[0], 0) if n else None
        item_shape = tuple(first.shape) if first is not None else ()
        item_dtype = first.dtype if first is not None else None

        def batch(start: int, stop: int) -> torch.Tensor:
            if start == stop:
                return torch.empty((0, *item_shape), dtype=item_dtype)
            return torch.stack([_item(data[i], i) for i in range(start, stop)])

        described = {"type": type(data).__qualname__}
    else:
        raise TypeError(f"data must be a tensor (n, ...) or a map-style torch Dataset (len() and [i]), got "
                        f"{type(data).__name__}")
    dev = torch.device(device) if device is not None else Comm(group).device

    def solve_batch(start: int, stop: int, **extra: Any) -> tuple[torch.Tensor, torch.Tensor, int]:
        x = batch(start, stop).to(dev)
        with torch.no_grad():
            gen = index_streams(seed, start, stop, tuple(x.shape[1:]))
            res = log_likelihood(model, x, generator=gen, **{**kwargs, **extra})
        return res.logp.detach().to("cpu", torch.float64), res.bpd.detach().to("cpu", torch.float64), int(res.nfe)

    if n:  # an empty batch validates the options on every rank before any file is touched (no solve runs;
        # the prior is only evaluated on real latents)
        solve_batch(0, 0, **({} if "prior_logp" in kwargs else {"prior_logp": lambda z: z.new_zeros(0)}))
    config = {"kind": "likelihood", "n": n, "batch_size": batch_size, "seed": seed, "seed_derivation": SEED_DERIVATION,
              "data": {**described, "item_shape": list(item_shape), "dtype": str(item_dtype)},
              "system": type(model).__qualname__, "process": repr(getattr(model, "process", None)),
              "options": kwargs}

    def spec(start: int, stop: int) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
        return {"logp": ((stop - start,), torch.float64), "bpd": ((stop - start,), torch.float64)}

    def compute(start: int, stop: int) -> tuple[dict[str, torch.Tensor], int]:
        logp, bpd, nfe = solve_batch(start, stop)
        return {"logp": logp, "bpd": bpd}, nfe

    result, stats = run_sharded(kind="likelihood", n=n, batch_size=batch_size, spec=spec, compute=compute,
                                config=config, out=out, keep=True, result_device=torch.device("cpu"),
                                progress=progress, desc="log_likelihood_many", group=group, version=__version__)
    if result is None:  # keep=True always hands the results back
        raise RuntimeError("internal error: the sharded loop returned no likelihoods")
    logp, bpd = result["logp"], result["bpd"]
    mean = (lambda v: float(v.sum()) / n) if n else (lambda v: math.nan)
    return LikelihoodManyResult(logp=logp, bpd=bpd, mean_logp=mean(logp), mean_bpd=mean(bpd),
                                out=None if out is None else Path(out), stats=stats)
