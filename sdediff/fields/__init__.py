r"""Force-field ODEs: PFGM (Xu et al. 2022), PFGM++ for any ``D`` (Xu et al. 2023), exact empirical
fields, a low-level API for custom fields and a continuity check.

* :mod:`~sdediff.fields.base` — :class:`ForceField`, :class:`FieldFunction`, :class:`ForceFieldODE`.
* :mod:`~sdediff.fields.poisson` — the kernel :math:`p_r(x\mid y)`, :class:`KernelPrior`, :func:`sample_kernel`.
* :mod:`~sdediff.fields.empirical` — :class:`EmpiricalField`, :func:`field_target`.
* :mod:`~sdediff.fields.networks` — :class:`DenoiserField` (PFGM++ from any EDM denoiser), :class:`NetworkField`.
* :mod:`~sdediff.fields.continuity` — :func:`check_continuity`, :func:`check_poisson_continuity`.
"""

from .base import TIMES, FieldFunction, ForceField, ForceFieldODE, force_field_ode
from .continuity import check_continuity, check_poisson_continuity, poisson_log_density
from .empirical import EmpiricalField, field_target
from .networks import DenoiserField, NetworkField
from .poisson import (
    KernelPrior,
    kernel_log_prob,
    log_normalizer,
    pfgm_prior,
    r_from_sigma,
    radius_law,
    sample_kernel,
    sigma_from_r,
)

__all__ = [
    "TIMES",
    "DenoiserField",
    "EmpiricalField",
    "FieldFunction",
    "ForceField",
    "ForceFieldODE",
    "KernelPrior",
    "NetworkField",
    "check_continuity",
    "check_poisson_continuity",
    "field_target",
    "force_field_ode",
    "kernel_log_prob",
    "log_normalizer",
    "pfgm_prior",
    "poisson_log_density",
    "r_from_sigma",
    "radius_law",
    "sample_kernel",
    "sigma_from_r",
]
