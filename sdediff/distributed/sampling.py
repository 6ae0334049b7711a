"""``sample_many``: ``n`` samples in batches, seeded per index, sharded over ranks, resumable on disk."""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..model import ScoreModel
from ..solve import DEFAULT_GRID, DEFAULT_SOLVER, sample, sampling_steps
from ..solvers import get_solver
from ..solvers.base import Solver
from .comm import Comm
from .runner import JobStats, check_count, run_sharded
from .seeds import SEED_DERIVATION, check_seed, index_streams
from .store import MANIFEST, ShardStore, parse_dtype, plan, read_manifest

__all__ = ["SampleManyResult", "load_samples", "sample_many"]

# Keep only the final state of each batch solve where the solver core offers it (``save="final"``),
# so memory is one batch, not one batch per step.
_FINAL_ONLY: dict[str, Any] = {"save": "final"} if "save" in inspect.signature(sample).parameters else {}


@dataclass(frozen=True)
class SampleManyResult:
    """What :func:`sample_many` returns (the same on every rank).

    Attributes:
        x: the samples ``(n, *sample_shape)`` in index order when ``out`` is ``None``; ``None`` with
            ``out=`` (read them with :func:`load_samples`, so memory stays bounded by the batch).
        out: the shard directory, or ``None``.
        stats: shards computed and resumed, NFE (:class:`~sdediff.distributed.runner.JobStats`).
    """

    x: torch.Tensor | None
    out: Path | None
    stats: JobStats


@dataclass(frozen=True)
class _Job:
    model: ScoreModel
    sample_shape: tuple[int, ...]
    solver: Solver
    steps: int
    grid: Any
    denoise: bool
    seed: int
    dtype: torch.dtype
    device: torch.device
    rtol: float
    atol: float
    on_nonfinite: str
    options: dict[str, Any]


def _solve_batch(job: _Job, start: int, stop: int) -> tuple[torch.Tensor, int]:
    """Samples ``start..stop-1``: the one place a batch is solved (noise streams per index)."""
    sol = sample(job.model, (stop - start, *job.sample_shape), solver=job.solver, steps=job.steps, grid=job.grid,
                 denoise=job.denoise, generator=index_streams(job.seed, start, stop, tuple(job.sample_shape)),
                 dtype=job.dtype,
                 device=job.device, rtol=job.rtol, atol=job.atol, on_nonfinite=job.on_nonfinite,
                 options=dict(job.options), **_FINAL_ONLY)
    return sol.x.clone(), int(sol.stats.nfe)  # a copy: the trajectory buffer is not kept alive


def _describe_model(model: ScoreModel) -> dict[str, Any]:
    net = getattr(model, "net", None)
    net_name = None if net is None else (getattr(net, "__qualname__", None) or type(net).__name__)
    return {"type": type(model).__name__, "net": net_name, "process": repr(model.process),
            "prediction": getattr(model, "prediction", None)}


def sample_many(model: ScoreModel, n: int, sample_shape: Sequence[int], *, batch_size: int,
                solver: str | Solver = DEFAULT_SOLVER, steps: int | None = None,
                grid: str | Sequence[float] | torch.Tensor | Callable[..., torch.Tensor] = DEFAULT_GRID,
                denoise: bool = True, seed: int = 0, out: str | os.PathLike | None = None,
                dtype: torch.dtype | None = None, device: torch.device | str | None = None,
                rtol: float = 1e-4, atol: float = 1e-4, on_nonfinite: str = "raise",
                options: dict[str, Any] | None = None, progress: bool = True, group: Any = None) -> SampleManyResult:
    """Draw ``n`` samples of ``model`` in batches, one generator per sample index, over all ranks.

    Sample ``i`` uses the generator derived from ``(seed, i)`` (:mod:`sdediff.distributed.seeds`) for its
    prior draw and its solver noise, so with a batch-independent model and a fixed-step solver it is
    bitwise the same whatever ``batch_size``, the number of processes or the order of work. The indices
    are cut into ranges of ``batch_size`` (the shards); under an initialised ``torch.distributed`` group
    (e.g. ``torchrun``) each rank solves its share of them, else one process solves all.

    Args:
        model: an sdediff model (as for :func:`sdediff.sample`); every rank holds the same one.
        n: number of samples (``0`` gives an empty ``(0, *sample_shape)`` tensor).
        sample_shape: the shape of one sample, e.g. ``(3, 32, 32)``.
        batch_size: samples per solve and per shard (>= 1); memory is bounded by it, not by ``n``.
        solver, steps, grid, denoise, dtype, rtol, atol, on_nonfinite, options: as in :func:`sdediff.sample`.
        seed: the job seed (an int >= 0).
        out: a directory for the shards (shared by all ranks); a rerun with the same arguments verifies
            the finished shards, skips them and computes the rest (see :mod:`sdediff.distributed.store`).
            A directory of another configuration is refused, naming the difference.
        device: where to solve (default: the CPU, or the current CUDA device under an NCCL group).
        progress: a tqdm bar on rank 0 over the whole job.
        group: a ``torch.distributed`` process group (default: the default group, if initialised).

    Returns:
        :class:`SampleManyResult` (``x`` in index order on every rank when ``out`` is ``None``).

    Adaptive solvers pick their steps from the whole batch, so their samples depend on ``batch_size``
    (not on the number of processes: the shards are fixed by ``n`` and ``batch_size``).
    """
    from .. import __version__

    if not isinstance(model, ScoreModel):
        raise TypeError(f"model must be an sdediff model (DiffusionModel, ...), got {type(model).__name__}")
    check_count("n", n, 0)
    check_count("batch_size", batch_size, 1)
    if not isinstance(sample_shape, (tuple, list, torch.Size)) or any(
            isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in sample_shape):
        raise ValueError(f"sample_shape must be a sequence of ints >= 1 (one sample, no batch dimension), "
                         f"got {sample_shape!r}")
    dtype = dtype if dtype is not None else torch.get_default_dtype()
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"dtype must be a floating torch.dtype, got {dtype!r}")
    solver_obj = get_solver(solver)
    steps = sampling_steps(steps, grid)  # as sample() resolves it (the manifest records the count)
    dev = torch.device(device) if device is not None else Comm(group).device
    job = _Job(model=model, sample_shape=tuple(sample_shape), solver=solver_obj, steps=steps, grid=grid,
               denoise=bool(denoise), seed=check_seed(seed), dtype=dtype, device=dev, rtol=rtol, atol=atol,
               on_nonfinite=on_nonfinite, options=dict(options or {}))
    _solve_batch(job, 0, 0)  # validates every argument of sample() on every rank, before any file is touched
    config = {"kind": "samples", "n": n, "sample_shape": list(job.sample_shape), "batch_size": batch_size,
              "seed": job.seed, "seed_derivation": SEED_DERIVATION, "solver": solver_obj.name or repr(solver_obj),
              "steps": steps, "grid": grid, "denoise": job.denoise, "dtype": str(dtype), "rtol": rtol, "atol": atol,
              "options": job.options, "model": _describe_model(model)}

    def spec(start: int, stop: int) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
        return {"x": ((stop - start, *job.sample_shape), dtype)}

    def compute(start: int, stop: int) -> tuple[dict[str, torch.Tensor], int]:
        x, nfe = _solve_batch(job, start, stop)
        return {"x": x}, nfe

    result, stats = run_sharded(kind="samples", n=n, batch_size=batch_size, spec=spec, compute=compute,
                                config=config, out=out, keep=out is None, result_device=dev, progress=progress,
                                desc="sample_many", group=group, version=__version__)
    return SampleManyResult(x=None if result is None else result["x"], out=None if out is None else Path(out),
                            stats=stats)


def load_samples(out: str | os.PathLike, *, device: torch.device | str | None = None) -> torch.Tensor:
    """The samples of a :func:`sample_many` directory, ``(n, *sample_shape)`` in index order.

    Every shard is verified (size, SHA-256, index range, shape, dtype) and read with
    ``torch.load(..., weights_only=True)``. Missing or damaged ranges raise a ``ValueError`` listing them
    (rerun :func:`sample_many` with the same arguments to fill them in).
    """
    man = read_manifest(out)
    cfg = man["config"]
    if man.get("kind") != "samples":
        raise ValueError(f"{str(out)!r} holds {man.get('kind')!r} shards, not samples")
    try:
        n, batch_size, shape = int(cfg["n"]), int(cfg["batch_size"]), tuple(int(s) for s in cfg["sample_shape"])
        dtype = parse_dtype(cfg["dtype"])
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{MANIFEST} of {str(out)!r} lacks a valid {e}; it was changed by hand") from None
    store = ShardStore(out, "samples", cfg, str(man.get("sdediff_version")))
    specs = [((start, stop), {"x": ((stop - start, *shape), dtype)}) for start, stop in plan(n, batch_size)]
    checked = [store.check(*r, spec) for r, spec in specs]  # every shard checked before any is unpickled
    problems = [f"{start}..{stop - 1} ({why})" for ((start, stop), _), (side, why) in zip(specs, checked, strict=True)
                if side is None]
    if problems:
        more = f" and {len(problems) - 8} more" if len(problems) > 8 else ""
        raise ValueError(f"{str(out)!r} lacks samples at indices {', '.join(problems[:8])}{more}; rerun sample_many "
                         "with the same arguments and out= this directory to compute them")
    parts = [store.read(*r, spec, side)["x"] for (r, spec), (side, _) in zip(specs, checked, strict=True)]
    x = torch.cat(parts) if parts else torch.empty((0, *shape), dtype=dtype)
    return x.to(device) if device is not None else x
