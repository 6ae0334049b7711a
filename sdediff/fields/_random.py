r"""Generator-driven draws for the PFGM++ kernel (no global RNG).

``torch.distributions.Beta``/``Gamma`` draw from the global generator, so the chi-square
variates here use the inverse CDF: :math:`Y = 2\,P^{-1}(D/2, U)` with
:math:`U \sim \mathcal U(0, 1)` from ``torch.rand(generator=...)`` and ``scipy.special.gammaincinv``
(exact for any real shape, one uniform per draw, so a list of per-sample generators gives
batch-size-independent draws).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from scipy import special

from ..noise import GeneratorSpec, per_sample_draw

__all__ = ["chi2", "uniform_open"]


def _rand(shape: tuple[int, ...], g: torch.Generator | None, device: torch.device) -> torch.Tensor:
    # drawn on the generator's own device (so a CUDA generator serves CPU-side inverse CDFs), then moved
    gdev = g.device if g is not None else device
    return torch.rand(shape, generator=g, dtype=torch.float64, device=gdev).to(device)


def uniform_open(shape: Sequence[int], *, generator: GeneratorSpec = None,
                 device: torch.device | str | None = None) -> torch.Tensor:
    """Float64 uniforms in the open interval (0, 1): ``torch.rand`` plus half its resolution (2^-54)."""
    dev = torch.device(device) if device is not None else torch.device("cpu")
    return per_sample_draw(shape, generator, lambda s, g: _rand(s, g, dev)) + 2.0**-54


def chi2(shape: Sequence[int], dof: float, *, generator: GeneratorSpec = None,
         device: torch.device | str | None = None) -> torch.Tensor:
    r"""Chi-square variates with ``dof`` degrees of freedom (any real > 0), float64, strictly > 0."""
    u = uniform_open(shape, generator=generator, device="cpu")
    y = special.gammaincinv(0.5 * float(dof), u.numpy())
    y = torch.from_numpy(2.0 * np.asarray(y, dtype=np.float64))
    return y.clamp_min(torch.finfo(torch.float64).tiny).to(device)
