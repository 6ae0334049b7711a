r"""Noise streams per sample index, derived from ``(seed, index)``.

Gaussian draws (prior noise, the solvers' per-step noise, Hutchinson probes, dequantization noise) come
from :class:`~sdediff.noise.IndexStreams`: index ``i`` is row ``i mod k`` of block ``b = i // k`` (``k =``
:func:`~sdediff.noise.block_size` of the sample shape), whose CPU generator is seeded with the two words of
``SeedSequence(s, spawn_key=(b, k))`` (one draw per block of up to 256 samples instead of one per sample).
Draws that need one generator per sample (Brownian paths) use a CPU ``torch.Generator`` seeded with

.. math::  \mathrm{seed}_i = w_0 + 2^{32} w_1, \qquad (w_0, w_1) =
           \texttt{numpy.random.SeedSequence(s, spawn\_key=(i,)).generate\_state(2, uint32)},

i.e. the ``i``-th child of ``SeedSequence(s)`` (``SeedSequence(s).spawn(i + 1)[i]`` is the same
sequence). SeedSequence hashes the entropy and the spawn key together (O'Neill's seed_seq design, the
derivation numpy uses for parallel streams), so ``(s, i)`` and ``(s', i')`` give unrelated streams: no
collisions such as ``s + i = s' + i'`` that a naive ``seed + index`` would have. The generators are on the
CPU whatever the compute device (noise is drawn on the CPU and moved), so the stream does not depend
on the device.
"""

from __future__ import annotations

import numpy as np
import torch

from ..noise import IndexStreams, block_size

__all__ = ["SEED_DERIVATION", "block_seed", "check_seed", "index_generators", "index_seed", "index_streams"]

SEED_DERIVATION = ("gaussian: row i % k of block i // k (k = block_size(sample_shape)), block b seeded with "
                   "SeedSequence(seed, spawn_key=(b, k)).generate_state(2, uint32) -> w0 + 2**32 w1; per-sample "
                   "(Brownian): SeedSequence(seed, spawn_key=(index,)) likewise")
"""How the seed of sample ``index`` is made from the job's ``seed``: recorded in every shard manifest."""


def check_seed(seed: object) -> int:
    """``seed`` validated: an int >= 0 (what SeedSequence accepts)."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or int(seed) < 0:
        raise ValueError(f"seed must be an int >= 0, got {seed!r}; sample i then uses the generator "
                         "derived from (seed, i) (see sdediff.distributed.seeds)")
    return int(seed)


def index_seed(seed: int, index: int) -> int:
    """The 64-bit seed of sample ``index`` of a job seeded with ``seed`` (see the module docstring)."""
    w = np.random.SeedSequence(check_seed(seed), spawn_key=(int(index),)).generate_state(2, dtype=np.uint32)
    return int(w[0]) | (int(w[1]) << 32)


def _words(seed: int, key: tuple[int, ...]) -> int:
    w = np.random.SeedSequence(check_seed(seed), spawn_key=key).generate_state(2, dtype=np.uint32)
    return int(w[0]) | (int(w[1]) << 32)


def block_seed(seed: int, block: int, b: int) -> int:
    """The 64-bit seed of block ``b`` (indices ``b*block .. (b+1)*block - 1``) of a job seeded with ``seed``."""
    return _words(seed, (int(b), int(block)))


def index_streams(seed: int, start: int, stop: int, sample_shape: tuple[int, ...]) -> IndexStreams | list:
    """The noise streams of the samples ``start, ..., stop - 1`` (see the module docstring); an empty range
    (a validation-only solve) gets an empty list."""
    if stop <= start:
        return []
    k = block_size(sample_shape)
    blocks = range(start // k, (stop - 1) // k + 1)
    return IndexStreams(start, stop, k, [block_seed(seed, k, b) for b in blocks],
                        lambda: [index_seed(seed, i) for i in range(start, stop)])


def index_generators(seed: int, start: int, stop: int) -> list[torch.Generator]:
    """Fresh CPU generators for the samples ``start, ..., stop - 1``."""
    out = []
    for i in range(start, stop):
        g = torch.Generator(device="cpu")
        g.manual_seed(index_seed(seed, i))
        out.append(g)
    return out
