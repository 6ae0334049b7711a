"""Past one process: sharded, resumable sampling and likelihoods on ``torch.distributed``.

* :func:`sample_many` — ``n`` samples in batches, noise streams per index from ``(seed, index)``;
  under ``torchrun`` (any initialised process group) each rank takes its share of the index ranges.
* :func:`log_likelihood_many` — per-example log-likelihoods of a tensor or a dataset, the same way.
* :func:`load_samples` — a ``sample_many`` shard directory, verified and assembled in index order.

Results do not depend on the number of processes (the shards are index ranges fixed by ``n`` and
``batch_size``), and with ``out=DIR`` a rerun resumes a killed job. See ``docs/distributed.md``.
"""

from .likelihood import LikelihoodManyResult, log_likelihood_many
from .runner import JobStats
from .sampling import SampleManyResult, load_samples, sample_many
from .seeds import SEED_DERIVATION, block_seed, index_generators, index_seed, index_streams

__all__ = [
    "SEED_DERIVATION",
    "JobStats",
    "LikelihoodManyResult",
    "SampleManyResult",
    "block_seed",
    "index_generators",
    "index_seed",
    "index_streams",
    "load_samples",
    "log_likelihood_many",
    "sample_many",
]
