"""Reproducible noise: Gaussian draws from explicit generators, one per sample if wanted.

Every draw takes a *generator spec*: a ``torch.Generator``, an ``int`` seed, or a list of those,
one per sample, so that sample ``k`` of a batch of ``N`` equals the batch-of-1 result bitwise.
``None`` means torch's default generator, exactly as in torch itself (the one place the global
stream is used, and only when the caller asks for it by passing nothing); pass a generator or a
seed for reproducible results.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch


class IndexStreams:
    r"""Per-sample noise streams for the sample indices ``start, ..., stop - 1``, drawn a block at a time.

    Index ``i`` belongs to block :math:`b = \lfloor i / \text{block}\rfloor`; block ``b`` has one CPU generator
    (seeded with ``block_seeds[k]`` for the ``k``-th block of the range) and every draw of shape ``(n, ...)``
    draws ``(block, ...)`` from each block's generator and keeps the rows of ``start..stop-1``. Sample ``i``
    therefore gets row ``i mod block`` of its block's stream whatever the batch it is solved in, as long as
    ``block`` (a function of the sample shape only, :func:`block_size`) and the sequence of draws are the
    same: batch-size invariance with one draw per block (up to 256 samples) instead of one per sample.

    Draws that need one generator per sample (Brownian paths, force-field radii) get
    ``sample_seeds`` (one per index, made once and then advanced) through :func:`split_generators`.
    """

    def __init__(self, start: int, stop: int, block: int, block_seeds: Sequence[int],
                 sample_seeds: Callable[[], Sequence[int]]) -> None:
        if not 0 <= start < stop or block < 1:
            raise ValueError(f"IndexStreams needs 0 <= start < stop and block >= 1, got {start}, {stop}, {block}")
        first, last = start // block, (stop - 1) // block
        if len(block_seeds) != last - first + 1:
            raise ValueError(f"indices {start}..{stop - 1} span {last - first + 1} blocks of {block}; "
                             f"got {len(block_seeds)} block seeds")
        self.start, self.stop, self.block = start, stop, block
        self.offset = start - first * block
        self.generators = [as_generator(int(s)) for s in block_seeds]
        self._sample_seeds = sample_seeds
        self._per_sample: list[torch.Generator] | None = None

    def __len__(self) -> int:
        return self.stop - self.start

    def check_batch(self, batch: int) -> IndexStreams:
        """These streams, after checking that they are for a batch of ``batch`` samples."""
        if len(self) != batch:
            raise ValueError(f"the streams of {len(self)} sample indices were given for a batch of {batch}")
        return self

    def per_sample(self) -> list[torch.Generator]:
        """One generator per index (made on first use, then advanced by every draw that uses them)."""
        if self._per_sample is None:
            self._per_sample = [as_generator(int(s)) for s in self._sample_seeds()]  # type: ignore[misc]
        return self._per_sample  # type: ignore[return-value]

    def draw(self, shape: tuple[int, ...], draw: Callable[[tuple[int, ...], torch.Generator | None], torch.Tensor]
             ) -> torch.Tensor:
        """``draw((block, ...), g)`` for every block's generator; the rows of this range."""
        if not shape or shape[0] != len(self):
            raise ValueError(f"a draw of shape {shape} from the streams of {len(self)} indices "
                             f"{self.start}..{self.stop - 1}: the batch must hold exactly those samples")
        parts = [draw((self.block, *shape[1:]), g) for g in self.generators]
        full = parts[0] if len(parts) == 1 else torch.cat(parts)
        return full[self.offset:self.offset + len(self)]


def block_size(sample_shape: Sequence[int]) -> int:
    """The block of :class:`IndexStreams` for samples of ``sample_shape``: up to 256 indices, at most 16384
    numbers a draw (a function of the sample shape only, never of the batch)."""
    numel = int(math.prod(int(s) for s in sample_shape))
    return max(1, min(256, 16384 // max(numel, 1)))


GeneratorSpec = torch.Generator | int | Sequence[torch.Generator | int] | IndexStreams | None
"""What every ``generator=`` argument accepts: a generator, an int seed, one of those per sample,
:class:`IndexStreams`, or None."""

__all__ = [
    "NOISE_KINDS",
    "BrownianNoise",
    "GaussianNoise",
    "GeneratorSpec",
    "IndexStreams",
    "as_generator",
    "block_size",
    "live_generators",
    "make_noise",
    "per_sample_draw",
    "randn",
    "seed_from",
    "split_generators",
]


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


def split_generators(generator: GeneratorSpec, batch: int) -> list[torch.Generator | None] | None:
    """A per-sample list of generators (validated: one per sample), or ``None`` for a single spec."""
    if isinstance(generator, IndexStreams):
        return generator.check_batch(batch).per_sample()
    if not isinstance(generator, (list, tuple)):
        return None
    if len(generator) != batch:
        raise ValueError(f"got a list of {len(generator)} generators for a batch of size {batch}; "
                         "pass exactly one generator (or seed) per sample")
    return [as_generator(g) for g in generator]


def per_sample_draw(shape: Sequence[int], generator: GeneratorSpec,
                    draw: Callable[[tuple[int, ...], torch.Generator | None], torch.Tensor]) -> torch.Tensor:
    """``draw(shape, g)`` with one generator, or, for a per-sample list, batch-of-1 draws stacked,
    so that sample ``k`` does not depend on the batch size."""
    shape = tuple(int(s) for s in shape)
    if isinstance(generator, IndexStreams):
        return generator.draw(shape, draw)
    gens = split_generators(generator, shape[0] if shape else 0)
    if gens is None:
        return draw(shape, as_generator(generator))  # type: ignore[arg-type]
    if not gens:
        return draw(shape, None)  # an empty batch draws nothing
    return torch.cat([draw((1, *shape[1:]), g) for g in gens])


def randn(shape: Sequence[int], *, generator: GeneratorSpec = None, dtype: torch.dtype | None = None,
          device: torch.device | str | None = None) -> torch.Tensor:
    """Standard normal noise of ``shape``; a list ``generator`` gives one generator per sample.

    Half-precision noise is drawn in float32 and rounded, so the stream does not depend on dtype.
    """
    dtype = dtype or torch.get_default_dtype()
    dev = torch.device(device) if device is not None else torch.device("cpu")
    return per_sample_draw(shape, generator, lambda s, g: _draw(s, g, dtype, dev))


def live_generators(generator: GeneratorSpec) -> GeneratorSpec:
    """Int seeds become generators once, so successive draws from one spec (a prior draw, then a
    solver's noise; dequantization, then probes) continue one stream instead of repeating it."""
    if isinstance(generator, (list, tuple)):
        return [as_generator(g) for g in generator]
    if isinstance(generator, IndexStreams):
        return generator
    return as_generator(generator)


def seed_from(generator: GeneratorSpec) -> int:
    """An integer seed drawn from ``generator`` (for libraries that take an entropy int)."""
    if isinstance(generator, IndexStreams):
        generator = generator.per_sample()
    if isinstance(generator, (list, tuple)):
        generator = generator[0] if generator else None
    g = as_generator(generator)
    device = g.device if g is not None else "cpu"
    return int(torch.randint(0, 2**62, (1,), generator=g, device=device).item())


class GaussianNoise:
    r"""Per-step standard-normal draws for a stochastic solver, one stream per sample if asked.

    Built once per solve (in the solver's state), so the generators made from int seeds keep
    advancing from step to step. ``normal(t_a, t_b)`` ignores the times: each call is a fresh
    :math:`z \sim \mathcal N(0, I)` of the state's shape. With a list spec, sample ``k`` of a
    batch of ``N`` equals the batch-of-1 result bitwise.
    """

    def __init__(self, generator: GeneratorSpec, shape: Sequence[int], dtype: torch.dtype,
                 device: torch.device | str) -> None:
        if isinstance(generator, IndexStreams):  # drawn a block at a time (see IndexStreams)
            self._spec: GeneratorSpec = generator.check_batch(shape[0])
        else:
            gens = split_generators(generator, shape[0])
            self._spec = gens if gens is not None else as_generator(generator)
        self.shape = tuple(shape)
        self.dtype = dtype
        self.device = torch.device(device)

    def normal(self, t_a: float, t_b: float) -> torch.Tensor:
        """A standard-normal draw for the step from ``t_a`` to ``t_b``."""
        return randn(self.shape, generator=self._spec, dtype=self.dtype, device=self.device)


class BrownianNoise:
    r"""Brownian-interval noise (torchsde ``BrownianInterval``) keyed by the generator's seed.

    The Brownian path :math:`W` on ``[t0, t1]`` is fixed by the seed, so refining the step grid
    refines the *same* path (needed for strong-order tests and step-count studies).
    ``increment(t_a, t_b)`` is :math:`W(t_b) - W(t_a)` (either time order); ``normal(t_a, t_b)``
    the same increment scaled to unit variance. A list spec gives one interval per sample (batch-size
    invariant). ``dt`` is the smallest step (torchsde builds its tree from it; without it a
    query can take very long).
    """

    def __init__(self, generator: GeneratorSpec, shape: Sequence[int], t0: float, t1: float, *,
                 dtype: torch.dtype, device: torch.device | str, dt: float) -> None:
        import torchsde

        lo, hi = (float(t0), float(t1)) if t0 < t1 else (float(t1), float(t0))
        if not hi > lo:
            raise ValueError(f"Brownian noise needs t0 != t1, got {t0!r} and {t1!r}")
        self.shape = tuple(shape)
        self.lo, self.hi = lo, hi
        flat = (int(math.prod(self.shape[1:])),)
        wd = dtype if dtype in (torch.float32, torch.float64) else torch.float32
        self.dtype = dtype

        def make(spec: torch.Generator | int | None, b: int) -> torchsde.BrownianInterval:
            return torchsde.BrownianInterval(t0=lo, t1=hi, size=(b, *flat), dtype=wd, device=device,
                                             entropy=seed_from(spec), dt=abs(float(dt)))

        gens = split_generators(generator, self.shape[0])
        self._bms = [make(g, 1) for g in gens] if gens is not None else [make(generator, self.shape[0])]

    def increment(self, t_a: float, t_b: float) -> torch.Tensor:
        """:math:`W(t_b) - W(t_a)` shaped like the state."""
        a, b = float(t_a), float(t_b)
        lo, hi = min(a, b), max(a, b)
        tol = 1e-9 * max(1.0, abs(self.hi))
        if lo < self.lo - tol or hi > self.hi + tol:
            raise ValueError(f"Brownian query [{lo!r}, {hi!r}] outside the interval [{self.lo!r}, {self.hi!r}]")
        lo, hi = max(lo, self.lo), min(hi, self.hi)
        dw = torch.cat([bm(lo, hi) for bm in self._bms]).reshape(self.shape)
        return (dw if b > a else -dw).to(self.dtype)

    def normal(self, t_a: float, t_b: float) -> torch.Tensor:
        return self.increment(t_a, t_b) / math.sqrt(abs(float(t_b) - float(t_a)))


NOISE_KINDS = ("gaussian", "brownian")
"""The noise sources ``make_noise`` builds: independent Gaussian increments or a Brownian interval."""


def make_noise(kind: str, generator: GeneratorSpec, shape: Sequence[int], ts: torch.Tensor, *,
               dtype: torch.dtype, device: torch.device | str) -> GaussianNoise | BrownianNoise:
    """The noise source a stochastic solver draws from: ``"gaussian"`` (per-step draws, default)
    or ``"brownian"`` (one Brownian path over the grid ``ts``, same path for any step count)."""
    if kind == "gaussian":
        return GaussianNoise(generator, shape, dtype, device)
    if kind == "brownian":
        # The tree's resolution must not depend on the grid, or a finer grid gets another path.
        dt = abs(float(ts[-1] - ts[0])) / 1024 if len(ts) > 1 else 1.0
        return BrownianNoise(generator, shape, float(ts[0]), float(ts[-1]), dtype=dtype, device=device, dt=dt)
    raise ValueError(f"unknown noise {kind!r}; valid choices are: {', '.join(NOISE_KINDS)}")
