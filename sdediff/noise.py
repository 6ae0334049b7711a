"""Reproducible noise: Gaussian draws from explicit generators, one per sample if wanted.

No function here touches the global RNG. A *generator spec* is ``None`` (a fresh generator
seeded from ``torch.seed``-free entropy is **not** used: ``None`` means torch's default
generator, as in torch itself), a ``torch.Generator``, an ``int`` seed, or a list of those,
one per sample, so that sample ``k`` of a batch of ``N`` equals the batch-of-1 result bitwise.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

GeneratorSpec = torch.Generator | int | Sequence[torch.Generator | int] | None

__all__ = ["GeneratorSpec", "as_generator", "randn", "seed_from"]


def as_generator(g: torch.Generator | int | None, device: torch.device | str | None = None) -> torch.Generator | None:
    """An ``int`` becomes a generator seeded with it (on ``device``, CPU by default)."""
    if g is None or isinstance(g, torch.Generator):
        return g
    if isinstance(g, bool) or not isinstance(g, int):
        raise TypeError(f"generator must be a torch.Generator, an int seed or a list of them, got {type(g).__name__}")
    gen = torch.Generator(device=device or "cpu")
    gen.manual_seed(g)
    return gen


def _draw(shape: Sequence[int], g: torch.Generator | None, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    draw_dtype = dtype if dtype in (torch.float32, torch.float64) else torch.float32
    if g is not None and g.device.type != device.type:
        if g.device.type != "cpu":
            raise ValueError(
                f"generator is on {g.device} but the noise is wanted on {device}; pass a generator "
                f"created with torch.Generator(device='{device.type}') or a CPU generator"
            )
        # A CPU generator drives noise on any device: draw on the CPU, then transfer.
        return torch.randn(tuple(shape), generator=g, dtype=draw_dtype).to(device=device, dtype=dtype)
    return torch.randn(tuple(shape), generator=g, dtype=draw_dtype, device=device).to(dtype)


def randn(shape: Sequence[int], *, generator: GeneratorSpec = None, dtype: torch.dtype | None = None,
          device: torch.device | str | None = None) -> torch.Tensor:
    """Standard normal noise of ``shape``; a list ``generator`` gives one generator per sample.

    Half-precision noise is drawn in float32 and rounded, so the stream does not depend on dtype.
    """
    dtype = dtype or torch.get_default_dtype()
    device = torch.device(device) if device is not None else torch.device("cpu")
    shape = tuple(int(s) for s in shape)
    if isinstance(generator, (list, tuple)):
        if len(shape) == 0 or len(generator) != shape[0]:
            raise ValueError(
                f"got a list of {len(generator)} generators for a batch of size "
                f"{shape[0] if shape else 0}; pass exactly one generator (or seed) per sample"
            )
        if shape[0] == 0:
            return torch.empty(shape, dtype=dtype, device=device)
        return torch.cat([_draw((1, *shape[1:]), as_generator(g), dtype, device) for g in generator])
    return _draw(shape, as_generator(generator), dtype, device)


def seed_from(generator: GeneratorSpec) -> int:
    """An integer seed drawn from ``generator`` (for libraries that take an entropy int)."""
    if isinstance(generator, (list, tuple)):
        generator = generator[0] if generator else None
    g = as_generator(generator)
    device = g.device if g is not None else "cpu"
    return int(torch.randint(0, 2**62, (1,), generator=g, device=device).item())
