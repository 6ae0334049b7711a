"""Regressions for the front-door defects of issue 9 (items 4, 5, 7, 9, 12), public API only.

Each test failed on the main branch before the fix: an increasing ``sample`` grid silently encoded,
integer dtypes truncated the prior noise, ``log_likelihood`` on an empty batch raised IndexError,
``sample`` ignored ``steps`` of an adaptive solver without a word, ``device="cuda"`` without CUDA
gave torch's raw AssertionError, and unknown names listed the valid ones without a suggestion.
"""

from __future__ import annotations

import pytest
import torch

import sdediff as sd

P = sd.VPSDE()
GMM = sd.analytic.GaussianMixture([[-2.0, 0.0], [2.0, 0.0]], 0.3)


class Counting:
    """A network with the exact mixture score that counts its calls."""

    def __init__(self, process):
        self.process, self.calls = process, 0

    def __call__(self, x, t):
        self.calls += 1
        return GMM.score(t, x, self.process)


def counted(process=P):
    net = Counting(process)
    return sd.DiffusionModel(net, process, "score"), net


# --- item 4: sample() refuses an increasing grid --------------------------------------------------
@pytest.mark.parametrize("solver", ["euler_maruyama", "dpm++2m", "heun", "torchdiffeq:rk4"])
@pytest.mark.parametrize("grid", [[0.01, 0.5, 1.0], torch.linspace(1e-3, 1.0, 11, dtype=torch.float64)])
def test_sample_refuses_an_increasing_grid(solver, grid):
    model, net = counted()
    with pytest.raises(ValueError, match=r"grid must decrease.*sd\.encode"):
        sd.sample(model, (4, 2), solver=solver, grid=grid, generator=0)
    assert net.calls == 0


def test_sample_refuses_a_callable_grid_that_increases():
    model, net = counted()
    with pytest.raises(ValueError, match=r"grid must decrease.*sd\.encode"):
        sd.sample(model, (4, 2), solver="ddim", grid=lambda p, n: sd.timesteps.time_uniform(p, n).flip(0),
                  denoise=False, generator=0)
    assert net.calls == 0


def test_sample_still_takes_a_decreasing_grid_and_encode_goes_up():
    model, _ = counted()
    x = sd.sample(model, (4, 2), solver="dpm++2m", grid=[1.0, 0.5, 0.1, 0.0], generator=0).x
    assert torch.isfinite(x).all()
    z = sd.encode(model, x.double(), rtol=1e-6, atol=1e-6)
    assert z.shape == x.shape and torch.isfinite(z).all()


# --- item 5: non-floating dtypes are refused -------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.bool, torch.complex64])
def test_sample_and_prior_sample_refuse_non_floating_dtypes(dtype):
    model, net = counted()
    with pytest.raises(TypeError, match=rf"dtype must be a floating-point dtype.*{dtype}"):
        sd.sample(model, (4, 2), dtype=dtype, generator=0)
    with pytest.raises(TypeError, match=rf"dtype must be a floating-point dtype.*{dtype}"):
        P.prior_sample((4, 2), dtype=dtype)
    assert net.calls == 0


def test_dtype_must_be_a_torch_dtype():
    with pytest.raises(TypeError, match=r"dtype must be a torch\.dtype"):
        P.prior_sample((4, 2), dtype="float32")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_floating_dtypes_are_kept(dtype):
    assert P.prior_sample((4, 2), generator=0, dtype=dtype).dtype == dtype
    assert sd.sample(counted()[0], (4, 2), steps=3, generator=0, dtype=dtype).x.dtype == dtype


# --- item 7: log_likelihood on an empty batch --------------------------------------------------------
@pytest.mark.parametrize("kw", [{}, {"divergence": "hutchinson", "generator": 0}, {"solver": "rk4", "steps": 4},
                                {"prior_logp": lambda z: -0.5 * z.pow(2).sum(1)}])
def test_log_likelihood_of_an_empty_batch_is_empty(kw):
    model, net = counted()
    res = sd.log_likelihood(model, torch.zeros(0, 2, dtype=torch.float64), **kw)
    assert res.logp.shape == (0,) and res.bpd.shape == (0,) and res.z.shape == (0, 2)
    assert res.nfe == 0 and net.calls == 0


def test_log_likelihood_of_an_empty_integer_batch_is_empty():
    res = sd.log_likelihood(counted()[0], torch.zeros(0, 2, dtype=torch.int64), dequantize="uniform",
                            data_range=(-1.0, 1.0), generator=0)
    assert res.logp.shape == (0,) and res.bpd.shape == (0,)


def test_prior_log_density_of_an_empty_batch():
    assert P.prior_logp(torch.zeros(0, 3, 4)).shape == (0,)
    # and a batch of one still has the right value: d = 12 dimensions
    lp = P.prior_logp(torch.zeros(1, 3, 4, dtype=torch.float64))
    torch.testing.assert_close(lp, torch.tensor([-6.0 * torch.log(torch.tensor(2 * torch.pi, dtype=torch.float64))]))


# --- item 9: sample() warns that an adaptive solver ignores steps -----------------------------------
@pytest.mark.parametrize("solver", ["dopri5", "dpm_solver_23"])
def test_sample_warns_that_adaptive_solvers_ignore_steps(solver):
    with pytest.warns(UserWarning, match=r"steps=10 is ignored by the adaptive solver"):
        sol = sd.sample(GMM.model(P), (4, 2), solver=solver, steps=10, generator=0)
    assert sol.stats.nfe > 0 and torch.isfinite(sol.x).all()


@pytest.mark.parametrize("solver", ["dopri5", "dpm++2m"])
def test_no_warning_without_steps_or_with_a_fixed_step_solver(solver, recwarn):
    sd.sample(GMM.model(P), (4, 2), solver=solver, generator=0)
    if solver == "dpm++2m":
        sd.sample(GMM.model(P), (4, 2), solver=solver, steps=5, generator=0)
    assert not [w for w in recwarn if "ignored" in str(w.message)]


def test_default_steps_is_twenty():
    assert sd.sample(GMM.model(P), (4, 2), solver="ddim", generator=0).stats.n_steps == 20


# --- item 12: a device this machine lacks --------------------------------------------------------------
def test_cuda_without_cuda_names_the_device_and_the_fix(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    model, net = counted()
    for call in (lambda: sd.sample(model, (4, 2), device="cuda", generator=0),
                 lambda: P.prior_sample((4, 2), device=torch.device("cuda", 0))):
        with pytest.raises(ValueError, match=r"device=.*cuda.* torch\.cuda\.is_available\(\) is False.*'cpu'"):
            call()
    assert net.calls == 0


def test_not_a_device_string():
    with pytest.raises(ValueError, match=r"device='gpu' is not a torch device"):
        P.prior_sample((4, 2), device="gpu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_index_past_the_device_count():
    with pytest.raises(ValueError, match=r"this machine has \d+ cuda device"):
        P.prior_sample((4, 2), device=f"cuda:{torch.cuda.device_count()}")


def test_cpu_device_is_fine():
    assert P.prior_sample((4, 2), generator=0, device="cpu").device.type == "cpu"


# --- "did you mean" for unknown names --------------------------------------------------------------------
@pytest.mark.parametrize(("call", "pattern"), [
    (lambda: sd.sample(GMM.model(P), (4, 2), solver="dpm++2n"),
     r"unknown solver 'dpm\+\+2n'; did you mean .*'dpm\+\+2m'"),
    (lambda: sd.solve(GMM.model(P), torch.zeros(2, 2), ts=[1.0, 0.1], solver="Dopri5"),
     r"unknown solver 'Dopri5'; did you mean 'dopri5'\?"),
    (lambda: sd.sample(GMM.model(P), (4, 2), grid="karas"), r"unknown grid 'karas'; did you mean 'karras'\?"),
    (lambda: sd.timesteps.get_grid("logSNR"), r"unknown grid 'logSNR'; did you mean 'logsnr'\?"),
    (lambda: sd.DiffusionModel(lambda x, t: x, P, "scroe"), r"unknown prediction 'scroe'; did you mean 'score'\?"),
    (lambda: sd.solve(GMM.model(P), torch.zeros(2, 2), ts=[1.0, 0.1], on_nonfinite="warning"),
     r"unknown on_nonfinite 'warning'; did you mean 'warn'\?"),
])
def test_unknown_names_suggest_the_closest(call, pattern):
    with pytest.raises(ValueError, match=pattern):
        call()


def test_no_suggestion_for_a_name_far_from_all():
    with pytest.raises(ValueError, match=r"unknown solver 'zzzzzz'; valid solvers are") as info:
        sd.sample(GMM.model(P), (4, 2), solver="zzzzzz")
    assert "did you mean" not in str(info.value)
