"""Small shared helpers: time tensors, broadcasting, validation.

Every other module goes through these, so that the rules (float64 time, one broadcasting
helper, errors that name the argument) live in one place.
"""

from __future__ import annotations

import difflib
import math
import threading
import weakref
from collections.abc import Callable, Sequence
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


def did_you_mean(value: Any, choices: Sequence[str]) -> str:
    """``"did you mean 'x'? "`` for the closest names in ``choices`` (difflib), or ``""``."""
    if not isinstance(value, str):
        return ""
    lowered = {c.lower(): c for c in choices}
    key = value.lower()
    close = [key] if key in lowered else difflib.get_close_matches(key, list(lowered), n=3, cutoff=0.6)
    if not close:
        return ""
    names = ", ".join(repr(lowered[c]) for c in close)
    return f"did you mean {names}? " if len(close) == 1 else f"did you mean one of {names}? "


def check_choice(name: str, value: str, choices: Sequence[str]) -> None:
    """ValueError naming the closest and the valid choices when ``value`` is not one of them."""
    if value not in choices:
        raise ValueError(f"unknown {name} {value!r}; {did_you_mean(value, choices)}"
                         f"valid choices are: {', '.join(sorted(choices))}")


def check_float_dtype(name: str, dtype: Any) -> None:
    """TypeError unless ``dtype`` is ``None`` or a floating-point ``torch.dtype``."""
    if dtype is None:
        return
    if not isinstance(dtype, torch.dtype):
        raise TypeError(f"{name} must be a torch.dtype such as torch.float32, got {dtype!r}")
    if not dtype.is_floating_point:
        raise TypeError(f"{name} must be a floating-point dtype (torch.float16/bfloat16/float32/float64), "
                        f"got {dtype}; sample in floating point and convert the result if you need integers")


# device type -> (is it available?, the expression a user checks it with)
_DEVICE_AVAILABLE: dict[str, tuple[Callable[[], bool], str]] = {
    "cuda": (lambda: torch.cuda.is_available(), "torch.cuda.is_available()"),
    "mps": (lambda: torch.backends.mps.is_available(), "torch.backends.mps.is_available()"),
}
_DEVICE_COUNT: dict[str, Callable[[], int]] = {"cuda": lambda: torch.cuda.device_count()}


def check_device(name: str, device: torch.device | str | None) -> torch.device | None:
    """The ``torch.device`` of ``device``, or a ValueError naming it and the fix when this machine lacks it.

    Checked before anything is allocated, so a missing CUDA build gives this message rather than
    torch's raw ``AssertionError("Torch not compiled with CUDA enabled")``.
    """
    if device is None:
        return None
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError) as e:
        raise ValueError(f"{name}={device!r} is not a torch device ({e}); pass e.g. 'cpu' or 'cuda'") from None
    if dev.type in _DEVICE_AVAILABLE:
        available, probe = _DEVICE_AVAILABLE[dev.type]
        if not available():
            raise ValueError(
                f"{name}={device!r} was requested, but {probe} is False on this machine (no {dev.type} device, "
                f"or a torch build without {dev.type}); pass {name}='cpu', or choose at run time: "
                f"{name}='{dev.type}' if {probe} else 'cpu'"
            )
    count = _DEVICE_COUNT.get(dev.type)
    if count is not None and dev.index is not None and dev.index >= count():
        raise ValueError(f"{name}={device!r}: this machine has {count()} {dev.type} device(s), "
                         f"indices 0..{count() - 1}; pass one of those")
    return dev


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


# --------------------------------------------------------------------------- per-object memo
_MEMO: weakref.WeakKeyDictionary[Any, dict[Any, Any]] = weakref.WeakKeyDictionary()
_MEMO_LOCK = threading.Lock()
MEMO_SIZE = 8


def attribute_ids(obj: Any) -> tuple[Any, ...]:
    """The identities of an object's attributes: a memo entry keyed by it goes stale when an attribute
    is re-assigned (in-place changes of a tensor attribute are not seen)."""
    return tuple((k, id(v)) for k, v in vars(obj).items())


def memo(owner: Any, key: Any, compute: Callable[[], Any]) -> Any:
    """``compute()`` remembered per ``owner`` (weakly) and ``key``: the last :data:`MEMO_SIZE` keys are kept.

    Used for per-solve plans that repeat from solve to solve (a named grid's times, a grid's schedule
    records), so that a loop of identical solves pays their setup once. ``key`` must include everything
    the value depends on (see :func:`attribute_ids`)."""
    with _MEMO_LOCK:
        try:
            table = _MEMO.setdefault(owner, {})
        except TypeError:  # not weak-referenceable: no memo
            table = None
        if table is not None and key in table:
            return table[key]
    value = compute()  # outside the lock: two threads may both compute a missing entry (same value)
    if table is not None:
        with _MEMO_LOCK:
            if len(table) >= MEMO_SIZE:
                table.pop(next(iter(table)))
            table[key] = value
    return value
