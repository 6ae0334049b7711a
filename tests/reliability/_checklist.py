"""The checklist ../shared/BAD_INPUTS.md as data: :data:`ROWS` and the ``@covers(row)`` registry.

``tests/reliability/test_bad_inputs.py`` checks that every row has at least one test.
"""

from __future__ import annotations

from collections.abc import Callable

# key -> the first column of the checklist row it stands for
ROWS: dict[str, str] = {
    "nan_model": "Model returns NaN/inf at some step",
    "nan_x": "NaN already in x_T / y0",
    "wrong_shape": "Model output of the wrong shape (e.g. learned-variance 2C channels, or (B,) vs (B,C,H,W))",
    "out_dtype": "Output dtype/device ≠ state dtype/device",
    "t_range": "t outside [eps, T], t = 0 with a VP score, t > T",
    "zero_steps": "Zero steps / empty time grid",
    "one_step": "One step / one time point",
    "too_many_steps": "num_steps > number of training timesteps",
    "non_monotone": "Non-monotone time grid",
    "decreasing": "Decreasing grid (reverse time / inversion)",
    "duplicated": "Duplicated time or sigma values",
    "data_end": "Grid not ending at 0 / final sigma = 0",
    "tiny_final": "Tiny final step from rounding (t1 - t < 1e-12)",
    "half": "float16 / bfloat16 state",
    "mps": "float64 unavailable (MPS)",
    "device": "Device mismatch (x on CUDA, t or generator on CPU)",
    "batch_1_vs_n": "Batch of size 1 vs N",
    "batch_0": "Batch of size 0",
    "generators_len": "List of generators of the wrong length",
    "zero_snr": "Zero terminal SNR (alpha_T = 0) with eps-prediction",
    "extreme": "Extreme or stiff schedules (cosine lambda_T ≈ -10, sigma_max=80, huge guidance)",
    "underflow": "Adaptive step underflow / max steps",
    "tolerances": "rtol/atol ≤ 0 or requiring grad",
    "adaptive_steps": "Step-count argument given to an adaptive solver",
    "reuse": "Solver object reused with a new shape or resolution, or from 2 threads",
    "python_O": "`python -O`",
    "likelihood_int": "Likelihood on integer data / without dequantization",
    "pfgm": "PFGM++ with D → ∞, small D, or a Beta draw → 1",
}
COVERED: dict[str, list[str]] = {}


def covers(*keys: str) -> Callable[[Callable], Callable]:
    """Register the decorated test under the checklist rows ``keys``."""
    def mark(fn: Callable) -> Callable:
        for key in keys:
            if key not in ROWS:
                raise KeyError(f"unknown checklist row {key!r}")
            COVERED.setdefault(key, []).append(fn.__name__)
        return fn
    return mark
