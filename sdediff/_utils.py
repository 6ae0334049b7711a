"""Small shared helpers: time tensors, broadcasting, validation.

Every other module goes through these, so that the rules (float64 time, one broadcasting
helper, errors that name the argument) live in one place.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

TIME_DTYPE = torch.float64
Time = float | torch.Tensor


def time_dtype_for(device: torch.device | str | None) -> torch.dtype:
    """float64 everywhere except on devices without it (MPS), where float32 is used."""
    if device is not None and torch.device(device).type == "mps":
        return torch.float32
    return TIME_DTYPE


def as_time(t: Time, device: torch.device | str | None = None) -> torch.Tensor:
    """Return ``t`` as a float64 tensor (keeping its autograd graph when it already is one)."""
    dtype = time_dtype_for(device)
    if isinstance(t, torch.Tensor):
        if t.dtype != dtype or (device is not None and t.device != torch.device(device)):
            t = t.to(device=device if device is not None else t.device, dtype=dtype)
        return t
    return torch.as_tensor(t, dtype=dtype, device=device)


def work_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype arithmetic on a state runs in: float32 for half-precision states, else the state's own."""
    return torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype


def expand_like(v: torch.Tensor | float, x: torch.Tensor) -> torch.Tensor:
    """Broadcast a scalar or per-sample value ``v`` (shape ``()`` or ``(B,)``) against ``x``.

    The result has ``x``'s dtype and device and shape ``(B, 1, ..., 1)`` (or ``()``), so
    ``expand_like(sigma, x) * x`` works for any state shape. This is the only place in the
    package where per-sample coefficients are reshaped.
    """
    v = torch.as_tensor(v, device=x.device)
    if v.ndim == 0:
        return v.to(x.dtype)
    if v.ndim != 1 or (x.ndim > 0 and v.shape[0] not in (1, x.shape[0])):
        raise ValueError(
            f"expected a scalar or a per-sample tensor of shape ({x.shape[0] if x.ndim else ''},), "
            f"got shape {tuple(v.shape)} for a state of shape {tuple(x.shape)}"
        )
    return v.to(x.dtype).reshape(v.shape[0], *([1] * (x.ndim - 1)))


def batch_time(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Time as a ``(B,)`` tensor for a batch ``x`` (scalars are repeated)."""
    t = torch.as_tensor(t)
    if t.ndim == 0:
        return t.expand(x.shape[0]) if x.ndim > 0 else t
    return t


def check_finite(name: str, x: torch.Tensor) -> None:
    """ValueError if ``x`` holds NaN or inf (used on user inputs before any model call)."""
    if x.is_floating_point() and not bool(torch.isfinite(x).all()):
        frac = float((~torch.isfinite(x)).float().mean())
        raise ValueError(
            f"{name} contains NaN or inf ({frac:.1%} of its entries); pass a finite tensor"
        )


def check_positive(name: str, value: Any) -> None:
    """ValueError unless ``value`` is a finite positive number (and needs no gradient)."""
    if isinstance(value, torch.Tensor):
        if value.requires_grad:
            raise ValueError(f"{name} must not require grad; pass a plain float")
        if not bool(torch.all(value > 0)) or not bool(torch.isfinite(value).all()):
            raise ValueError(f"{name} must be finite and > 0, got {value}")
        return
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    if not (value > 0) or not math.isfinite(value):
        raise ValueError(f"{name} must be finite and > 0, got {value!r}")


def check_choice(name: str, value: str, choices: Sequence[str]) -> None:
    """ValueError naming the valid choices when ``value`` is not one of them."""
    if value not in choices:
        raise ValueError(f"unknown {name} {value!r}; valid choices are: {', '.join(sorted(choices))}")


def as_grid(ts: Any, *, name: str = "ts", device: torch.device | str | None = None) -> torch.Tensor:
    """Validate a time grid: 1-D, finite, strictly monotone (either direction), float64."""
    if isinstance(ts, (float, int)):
        raise TypeError(f"{name} must be a 1-D sequence of times, got the scalar {ts!r}")
    # a list of floats is read in float64 directly (torch.as_tensor would round it to the default float32 first)
    if not isinstance(ts, torch.Tensor):
        ts = torch.as_tensor(ts, dtype=time_dtype_for(device))
    grid = as_time(ts, device)
    grid = grid.detach()
    if grid.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {tuple(grid.shape)}")
    if grid.numel() == 0:
        raise ValueError(f"{name} is empty; pass at least one time (two to integrate)")
    if not bool(torch.isfinite(grid).all()):
        raise ValueError(f"{name} contains NaN or inf: {grid.tolist()}")
    if grid.numel() > 1:
        d = grid.diff()
        if not (bool((d > 0).all()) or bool((d < 0).all())):
            bad = int(torch.nonzero(d * torch.sign(d[0]) <= 0)[0]) if bool(d[0] != 0) else 0
            raise ValueError(
                f"{name} must be strictly monotone (all increasing or all decreasing); "
                f"entries {bad} and {bad + 1} are {grid[bad].item()!r} and {grid[bad + 1].item()!r}"
                " (duplicated or out-of-order times)"
            )
    return grid


def check_time_range(name: str, t: torch.Tensor, t_min: float, T: float, *, slack: float = 1e-9) -> None:
    """ValueError if any time lies outside ``[t_min, T]`` (with a relative slack for rounding)."""
    lo = float(t.detach().min())
    hi = float(t.detach().max())
    tol = slack * max(1.0, abs(T))
    if lo < t_min - tol or hi > T + tol:
        raise ValueError(
            f"{name} must lie in [t_min, T] = [{t_min!r}, {T!r}] of the process, got the range "
            f"[{lo!r}, {hi!r}]; clip the times or build the process with a wider range"
        )
