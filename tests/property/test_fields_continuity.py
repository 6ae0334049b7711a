"""Continuity d_r p + div(p v) = 0 for the Poisson (Green's-function) family and its field; wrong power laws fail."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sdediff import fields as F

TOL = 1e-6


def _setup(seed: int, n: int, m: int, r: float, spread: float):
    g = torch.Generator().manual_seed(seed)
    data = torch.randn(m, n, generator=g, dtype=torch.float64)
    x = spread * torch.randn(6, n, generator=g, dtype=torch.float64)
    rs = r * (0.5 + torch.rand(6, generator=g, dtype=torch.float64))  # one radius per point
    return data, x, rs


def _power_law_field(data: torch.Tensor, D: float, exponent: float) -> F.FieldFunction:
    """A user's field: charges at the data with weights |x~ - y~|^(-2 * exponent); Green's function at (N+D)/2."""

    def fn(r, x):
        sq = (x[:, None, :] - data[None]).pow(2).sum(-1)
        w = torch.softmax(-exponent * torch.log(sq + r[:, None] ** 2), dim=1)
        return x - w @ data, r

    return F.FieldFunction(fn, D)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), n=st.integers(1, 4), m=st.integers(1, 5),
       D=st.sampled_from([1.0, 2.0, 3.5, 16.0, 128.0, 1e4]), r=st.floats(0.05, 20.0), spread=st.floats(0.1, 10.0))
def test_poisson_field_satisfies_continuity(seed, n, m, D, r, spread):
    data, x, rs = _setup(seed, n, m, r, spread)
    res = F.check_poisson_continuity(F.EmpiricalField(data, D), data, rs, x)
    assert res.max_relative < TOL
    # the same field written by a user through the low-level API, with the Green's-function exponent
    assert F.check_poisson_continuity(_power_law_field(data, D, (n + D) / 2), data, rs, x).max_relative < TOL


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), n=st.integers(1, 3), D=st.sampled_from([1.0, 2.0, 8.0]),
       shift=st.sampled_from([-1.0, -0.5, 1.0]))
def test_wrong_power_law_fails_continuity(seed, n, D, shift):
    # two or more charges at a moderate radius: with one charge every radial field passes (module doc)
    data, x, rs = _setup(seed, n, 4, 1.0, 1.0)
    wrong = _power_law_field(data, D, (n + D + shift) / 2)
    assert F.check_poisson_continuity(wrong, data, rs, x).max_relative > 1e-4  # passes sit near 1e-12


def test_wrong_density_family_fails():
    """The right field against a claimed family with another power law also fails."""
    data, x, rs = _setup(0, 2, 4, 1.0, 1.0)
    field = F.EmpiricalField(data, 4.0)
    assert F.check_continuity(field, F.poisson_log_density(data, 4.0), rs, x).max_relative < TOL
    assert F.check_continuity(field, F.poisson_log_density(data, 5.0), rs, x).max_relative > 1e-3
