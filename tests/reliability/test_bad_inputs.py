"""The bad-input matrix: every row of the checklist ../shared/BAD_INPUTS.md, through the public API.

Bad input gets a clear error (ValueError/TypeError naming the argument and the fix) or its defined
result. ``@covers(row)`` ties a test to its row of ``_checklist.ROWS``; this module holds the first
tests written for it, ``test_bad_inputs_rows.py`` the rest, and ``test_every_row_is_covered`` checks
that no row is left out (and, where the checklist is at hand, that ``ROWS`` matches it).
Rows that other work in progress must fix (adaptive step underflow, torchdiffeq leaving
``[t_min, T]``, the torchdiffeq path retrying a non-finite step) are ``xfail(strict=True)``, so
they show up as XPASS failures the moment they are fixed: then drop the mark. CI runs this
module a second time under ``python -O``.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from _checklist import COVERED, ROWS, covers

import sdediff as sd
from sdediff.analytic import GaussianMixture

GMM = GaussianMixture([[1.0, 0.0], [-1.0, 0.5]], 0.5)


class CountingNet:
    """A network that counts its calls and can be told to misbehave."""

    def __init__(self, out=None):
        self.calls = 0
        self.out = out

    def __call__(self, x, t):
        self.calls += 1
        return self.out(x, t) if self.out is not None else -x


def vp_model(out=None, prediction="score"):
    net = CountingNet(out)
    return sd.DiffusionModel(net, sd.VPSDE(), prediction), net


def x0(n=4, dtype=torch.float64):
    return torch.randn(n, 2, generator=torch.Generator().manual_seed(0), dtype=dtype)


# --- time grids -------------------------------------------------------------------------
@covers("non_monotone", "duplicated")
@pytest.mark.parametrize("ts", [[1.0, 0.5, 0.7], [1.0, 0.5, 0.5, 0.1], [0.1, 0.5, 0.3]])
def test_non_monotone_or_duplicated_grid(ts):
    model, net = vp_model()
    with pytest.raises(ValueError, match="strictly monotone"):
        sd.solve(model, x0(), ts=ts)
    assert net.calls == 0


@covers("t_range")
@pytest.mark.parametrize("ts", [[1.5, 0.1], [1.0, -0.1], [1.0, 0.0, -0.1]])
def test_times_outside_the_process_range(ts):
    model, net = vp_model()
    with pytest.raises(ValueError, match=r"\[t_min, T\]"):
        sd.solve(model, x0(), ts=ts)
    assert net.calls == 0


@covers("t_range")
def test_model_called_outside_range_and_at_vp_t0():
    model, _ = vp_model()
    with pytest.raises(ValueError, match="t must lie in"):
        model.score(0.0, x0())
    with pytest.raises(ValueError, match="t must lie in"):
        model.score(2.0, x0())


@covers("zero_steps")
def test_empty_grid_and_nan_grid():
    model, _ = vp_model()
    with pytest.raises(ValueError, match="empty"):
        sd.solve(model, x0(), ts=[])
    with pytest.raises(ValueError, match="NaN or inf"):
        sd.solve(model, x0(), ts=[1.0, float("nan")])
    with pytest.raises(TypeError, match="1-D sequence"):
        sd.solve(model, x0(), ts=0.5)
    with pytest.raises(ValueError, match=r"pass the times: ts=.* or t0= and t1="):
        sd.solve(model, x0())


@covers("one_step")
def test_single_point_grid_returns_x_without_a_model_call():
    model, net = vp_model()
    x = x0()
    sol = sd.solve(model, x, ts=[0.5])
    assert net.calls == 0 and sol.stats.nfe == 0
    assert torch.equal(sol.x, x) and sol.xs.shape == (1, *x.shape)
    assert sol.x is not x  # a copy, not an alias


@covers("batch_0")
def test_empty_batch_returns_empty():
    model, net = vp_model()
    sol = sd.solve(model, torch.zeros(0, 2, dtype=torch.float64), ts=[1.0, 0.1])
    assert sol.x.shape == (0, 2) and net.calls == 0


# --- states ------------------------------------------------------------------------------
@covers("nan_x")
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_nonfinite_initial_state_is_rejected_before_any_model_call(bad):
    model, net = vp_model()
    x = x0()
    x[1, 0] = bad
    with pytest.raises(ValueError, match="x contains NaN or inf"):
        sd.solve(model, x, ts=[1.0, 0.1])
    assert net.calls == 0


def test_integer_or_scalar_state():
    model, _ = vp_model()
    with pytest.raises(TypeError, match="floating-point"):
        sd.solve(model, torch.ones(3, 2, dtype=torch.long), ts=[1.0, 0.1])
    with pytest.raises(ValueError, match="batch dimension"):
        sd.solve(model, torch.tensor(1.0), ts=[1.0, 0.1])


# --- model outputs -------------------------------------------------------------------------
@covers("nan_model")
@pytest.mark.parametrize("solver", ["dopri5", "torchdiffeq:rk4", "torchsde:euler"])
def test_model_returning_nan_names_the_step_and_t(solver):
    def nan_late(x, t):  # finite until t < 0.5, then NaN
        return torch.where(t[:, None] < 0.5, torch.full_like(x, math.nan), -x)

    model, _ = vp_model(nan_late)
    with pytest.raises(sd.NonFiniteError, match=r"model output is not finite at step \d+ \(t=0\.\d+\)") as info:
        sd.solve(model, x0(), ts=[1.0, 0.1], solver=solver, steps=None if solver == "dopri5" else 20)
    assert info.value.step is not None and info.value.t < 0.5
    assert info.value.fraction == 1.0


@covers("nan_model")
def test_on_nonfinite_warn_goes_on():
    def inf_once(x, t):
        return torch.where((t[:, None] - 0.5).abs() < 0.026, torch.full_like(x, math.inf), -x)

    model, _ = vp_model(inf_once)
    with pytest.warns(RuntimeWarning, match="not finite"):
        sd.solve(model, x0(), ts=[1.0, 0.1], solver="torchdiffeq:euler", steps=18, on_nonfinite="warn")


@covers("wrong_shape")
def test_model_output_of_the_wrong_shape():
    model, _ = vp_model(lambda x, t: x[:, :1])
    with pytest.raises(ValueError, match=r"net output has shape \(4, 1\), expected \(4, 2\)"):
        sd.solve(model, x0(), ts=[1.0, 0.1])
    img = sd.DiffusionModel(lambda x, t: torch.cat([x, x], 1), sd.VPSDE(), "eps")
    with pytest.raises(ValueError, match="learned-variance"):
        img.eps(0.5, torch.zeros(2, 3, 4, 4))


def test_model_output_not_a_tensor():
    model, _ = vp_model(lambda x, t: {"out": x})
    with pytest.raises(TypeError, match="must return a tensor"):
        model.score(0.5, x0())


# --- names and numbers ----------------------------------------------------------------------
def test_unknown_solver_lists_the_valid_ones():
    with pytest.raises(ValueError, match=r"unknown solver 'dopri6'.*dopri5"):
        sd.solve(vp_model()[0], x0(), ts=[1.0, 0.1], solver="dopri6")


def test_unknown_prediction_lists_the_valid_ones():
    with pytest.raises(ValueError, match=r"unknown prediction 'noise'.*eps, score, v, velocity, x0.*epsilon"):
        sd.DiffusionModel(lambda x, t: x, sd.VPSDE(), "noise")


@covers("tolerances")
@pytest.mark.parametrize("kw", [{"rtol": 0.0}, {"atol": -1e-5}, {"rtol": float("nan")},
                                {"atol": torch.tensor(1e-5, requires_grad=True)}])
def test_bad_tolerances(kw):
    name = next(iter(kw))
    with pytest.raises(ValueError, match=name):
        sd.solve(vp_model()[0], x0(), ts=[1.0, 0.1], **kw)


@covers("adaptive_steps")
def test_steps_given_to_an_adaptive_solver_warns():
    with pytest.warns(UserWarning, match="ignored by the adaptive solver"):
        sol = sd.solve(GMM.model(sd.VPSDE()), x0(), ts=[1.0, 0.1], solver="dopri5", steps=10)
    assert sol.stats.nfe > 0


@covers("zero_steps")
def test_bad_steps():
    with pytest.raises(ValueError, match="steps must be an int >= 1"):
        sd.solve(vp_model()[0], x0(), ts=[1.0, 0.1], solver="torchdiffeq:rk4", steps=0)


def test_ode_solver_refuses_a_stochastic_system():
    with pytest.raises(ValueError, match="cannot integrate a stochastic system"):
        sd.solve(sd.reverse_sde(GMM.model(sd.VPSDE())), x0(), ts=[1.0, 0.1], solver="dopri5")


def test_sde_solver_steps_on_the_grid_without_a_step_count():
    # like every fixed-step solver, a torchsde method without steps=/dt= takes one step per interval
    sol = sd.solve(sd.reverse_sde(GMM.model(sd.VPSDE())), x0(), ts=[1.0, 0.1], solver="torchsde:euler", generator=0)
    assert sol.stats.n_steps == 1 and sol.stats.nfe == 2  # torchsde's contract check + one step
    with pytest.raises(ValueError, match="needs a first step"):
        sd.solve(sd.reverse_sde(GMM.model(sd.VPSDE())), x0(), ts=[1.0, 0.1], solver="srk", adaptive=True)


def test_torchsde_refuses_per_sample_generators():
    with pytest.raises(ValueError, match="one Brownian path for the whole batch"):
        sd.solve(sd.reverse_sde(GMM.model(sd.VPSDE())), x0(), ts=[1.0, 0.1], solver="srk", steps=4,
                 generator=[1, 2, 3, 4])


@covers("tiny_final")
def test_steps_and_dt_are_honoured_or_refused():
    model = GMM.model(sd.VPSDE())
    sol = sd.solve(model, x0(), t0=1.0, t1=0.1, solver="euler", dt=0.01)
    assert sol.stats.n_steps == 90 and len(sol.ts) == 91
    sol = sd.solve(model, x0(), t0=1.0, t1=0.1, solver="euler", steps=7)
    assert sol.stats.n_steps == 7
    with pytest.raises(ValueError, match="steps exactly on the grid ts"):
        sd.solve(model, x0(), ts=[1.0, 0.5], solver="dpm++2m", steps=50)
    with pytest.raises(ValueError, match="not both"):
        sd.solve(model, x0(), t0=1.0, t1=0.1, solver="euler", steps=3, dt=0.1)
    with pytest.raises(ValueError, match="adaptive=True is for torchsde"):
        sd.solve(model, x0(), ts=[1.0, 0.1], solver="ancestral", adaptive=True)


def test_dynamics_missing_protocol_attributes():
    class Half:
        def drift(self, t, x):
            return -x

        def diffusion(self, t, x):
            return 0.0

    with pytest.raises(TypeError, match=r"lacks is_ode, t_min, T, nfe.*sdediff.ODE"):
        sd.solve(Half(), x0(), t0=0.0, t1=1.0, solver="rk4", steps=2)


def test_bad_on_nonfinite_even_without_steps():
    with pytest.raises(ValueError, match="unknown on_nonfinite 'bogus'"):
        sd.solve(GMM.model(sd.VPSDE()), x0(), ts=[1.0], on_nonfinite="bogus")


def test_x0_prediction_at_zero_noise_is_refused():
    with pytest.raises(ValueError, match=r"prediction='x0' cannot recover eps at sigma\(t_min\) = 0"):
        sd.DiffusionModel(lambda x, t: x, sd.RectifiedFlow(), "x0")
    sd.DiffusionModel(lambda x, t: x, sd.RectifiedFlow(t_min=1e-3), "x0")  # fine


def test_sample_x_T_must_match_shape():
    with pytest.raises(ValueError, match=r"x_T has shape \(2, 7\) but shape=\(5, 3\)"):
        sd.sample(GMM.model(sd.VPSDE()), (5, 3), x_T=torch.randn(2, 7))


def test_not_a_system():
    with pytest.raises(TypeError, match="has no drift"):
        sd.solve(object(), x0(), ts=[1.0, 0.1])


# --- processes and models ---------------------------------------------------------------------
@covers("zero_snr")
def test_zero_terminal_snr_refuses_eps_prediction():
    betas = torch.linspace(1e-4, 0.02, 100, dtype=torch.float64)
    ac = torch.cumprod(1 - betas, 0)
    ac[-1] = 0.0  # zero terminal SNR
    proc = sd.DiscreteVP(alphas_cumprod=ac)
    assert proc.zero_terminal_snr and float(proc.alphas_cumprod[-1]) == 2.0**-24
    with pytest.raises(ValueError, match="zero terminal SNR"):
        sd.DiffusionModel(lambda x, t: x, proc, "eps")
    sd.DiffusionModel(lambda x, t: x, proc, "v")  # fine
    with pytest.raises(ValueError, match="zero terminal SNR"):
        sd.DiffusionModel(lambda x, t: x, sd.RectifiedFlow(), "eps")


@pytest.mark.parametrize("make", [
    lambda: sd.VPSDE(beta_min=-1.0),
    lambda: sd.VPSDE(beta_min=5.0, beta_max=1.0),
    lambda: sd.VESDE(sigma_min=1.0, sigma_max=0.5),
    lambda: sd.EDM(sigma_min=0.0),
    lambda: sd.CosineVPSDE(T=1.0),
    lambda: sd.VPSDE(T=0.5, t_min=0.6),
    lambda: sd.DiscreteVP(betas=[0.5]),
    lambda: sd.DiscreteVP(alphas_cumprod=[0.5, 0.9]),
    lambda: sd.DiscreteVP(beta_schedule="cubic"),
    lambda: sd.DiscreteVP(betas=[0.1, 0.2], alphas_cumprod=[0.9, 0.8]),
])
def test_bad_process_parameters(make):
    with pytest.raises(ValueError):
        make()


def test_generic_sde_only_takes_score_models():
    sde = sd.SDE(lambda t, x: -x, 1.0)
    with pytest.raises(ValueError, match="only supports prediction='score'"):
        sd.DiffusionModel(lambda x, t: x, sde, "eps")
    with pytest.raises(TypeError, match="drift must be a callable"):
        sd.SDE(3.0, 1.0)
    with pytest.raises(ValueError, match="has no prior"):
        sde.prior_sample((2, 2))


def test_bad_mixture():
    with pytest.raises(ValueError, match="stds must be > 0"):
        GaussianMixture([[0.0]], 0.0)
    with pytest.raises(ValueError, match="weights"):
        GaussianMixture([[0.0], [1.0]], 1.0, [1.0, -1.0])
    with pytest.raises(ValueError, match=r"x must have shape \(B, 1\)"):
        GaussianMixture([[0.0]], 1.0).log_prob(0.5, torch.zeros(3, 2), sd.VPSDE())


@covers("generators_len")
def test_generator_list_of_the_wrong_length():
    with pytest.raises(ValueError, match="one generator"):
        sd.noise.randn((3, 2), generator=[1, 2])
    with pytest.raises(TypeError, match="generator must be"):
        sd.noise.randn((3, 2), generator="seed")


def test_bad_eta():
    with pytest.raises(ValueError, match="eta must be"):
        sd.reverse_sde(GMM.model(sd.VPSDE()), eta=-0.5)


# ================================================================================================
def test_every_row_is_covered():
    import test_bad_inputs_rows  # noqa: F401  (its tests register their rows on import)

    missing = [ROWS[k] for k in ROWS if not COVERED.get(k)]
    assert not missing, f"checklist rows without a test: {missing}"
    checklist = Path(__file__).resolve().parents[2] / ".." / "shared" / "BAD_INPUTS.md"
    if not checklist.is_file():
        pytest.skip(f"{checklist} is not at hand (only in the development workspace)")
    titles = [line.split("|")[1].strip() for line in checklist.read_text(encoding="utf-8").splitlines()
              if line.startswith("| ") and not line.startswith("| Bad input")]
    assert sorted(titles) == sorted(ROWS.values()), "ROWS is out of date with the checklist"
