r"""Exact targets: Gaussian mixtures and Gaussians under any linear process.

For data :math:`p_0 = \sum_k w_k\,\mathcal N(\mu_k, \mathrm{diag}(s_k^2))` and a linear process
:math:`x_t = \alpha_t x_0 + \sigma_t\epsilon`, the marginal is again a mixture,

.. math:: p_t(x) = \sum_k w_k\,\mathcal N\big(x;\ \alpha_t\mu_k,\ \mathrm{diag}(\alpha_t^2 s_k^2 + \sigma_t^2)\big),

so the score and the denoiser :math:`E[x_0|x_t]` are exact at every ``t`` and a solver's error is
the only error. All computation runs in float64; results come back in the dtype of ``x``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from ._utils import TIME_DTYPE, Time, as_time, check_finite, expand_like
from .model import DiffusionModel
from .noise import GeneratorSpec, IndexStreams, as_generator, randn
from .processes import LinearProcess, Process

__all__ = ["Gaussian", "GaussianMixture"]

LOG_2PI = math.log(2.0 * math.pi)


def _collapse(t: torch.Tensor) -> torch.Tensor:
    """A batch of equal times (as networks receive them) becomes one scalar time: same values,
    one schedule evaluation instead of B (a gradient-carrying ``t`` is kept as it is)."""
    if t.ndim == 1 and t.numel() > 1 and not t.requires_grad and bool((t == t[0]).all()):
        return t[0]
    return t


def _linear(process: Process) -> LinearProcess:
    if not isinstance(process, LinearProcess):
        raise TypeError(f"exact marginals need a linear process; {type(process).__name__} is not one")
    return process


class GaussianMixture:
    """A mixture of diagonal Gaussians with exact marginals, scores and denoisers.

    Args:
        means: ``(K, D)`` component means.
        stds: per component and dimension ``(K, D)``, per component ``(K,)`` or one number (> 0).
        weights: ``(K,)`` positive weights (normalised here); uniform by default.
    """

    def __init__(self, means: Sequence[Sequence[float]] | torch.Tensor, stds: float | Sequence | torch.Tensor = 1.0,
                 weights: Sequence[float] | torch.Tensor | None = None) -> None:
        m = torch.as_tensor(means, dtype=TIME_DTYPE)
        if m.ndim == 1:
            m = m[None]
        if m.ndim != 2 or m.shape[0] == 0:
            raise ValueError(f"means must have shape (K, D), got {tuple(m.shape)}")
        check_finite("means", m)
        k, d = m.shape
        s = torch.as_tensor(stds, dtype=TIME_DTYPE)
        if s.ndim == 0:
            s = s.expand(k, d)
        elif s.ndim == 1 and s.shape[0] == k:
            s = s[:, None].expand(k, d)
        if s.shape != (k, d):
            raise ValueError(f"stds must be a number, shape ({k},) or ({k}, {d}), got {tuple(s.shape)}")
        if not bool((s > 0).all()):
            raise ValueError("stds must be > 0 (a point mass makes the score singular); use e.g. 1e-3")
        w = (torch.full((k,), 1.0 / k, dtype=TIME_DTYPE) if weights is None
             else torch.as_tensor(weights, dtype=TIME_DTYPE))
        if w.shape != (k,) or not bool((w > 0).all()):
            raise ValueError(f"weights must be {k} positive numbers, got {w.tolist()}")
        self.means = m
        self.stds = s.contiguous()
        self.weights = w / w.sum()
        self.dim = d

    @property
    def n_components(self) -> int:
        return self.means.shape[0]

    def _params(self, t: Time, x: torch.Tensor, process: Process) -> tuple[torch.Tensor, torch.Tensor]:
        p = _linear(process)
        t = _collapse(as_time(t, x.device))
        a = p.alpha(t)
        s = p.sigma(t)
        if t.ndim == 1:
            a, s = a[:, None, None], s[:, None, None]  # (B, 1, 1) against (B, K, D)
        mean = a * self.means.to(x.device)
        var = a**2 * self.stds.to(x.device) ** 2 + s**2
        return mean, var

    def _check_x(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 2 or x.shape[-1] != self.dim:
            raise ValueError(f"x must have shape (B, {self.dim}), got {tuple(x.shape)}")
        return x.to(TIME_DTYPE)

    def _responsibilities(self, t: Time, x: torch.Tensor, process: Process):
        xd = self._check_x(x)
        mean, var = self._params(t, xd, process)
        diff = xd[:, None, :] - mean  # (B, K, D)
        comp = -0.5 * (diff**2 / var + torch.log(var) + LOG_2PI).sum(-1) + torch.log(self.weights.to(xd.device))
        logp = torch.logsumexp(comp, dim=-1)
        return xd, mean, var, diff, torch.softmax(comp, dim=-1), logp

    def log_prob(self, t: Time, x: torch.Tensor, process: Process) -> torch.Tensor:
        r""":math:`\log p_t(x)` per sample (float64)."""
        return self._responsibilities(t, x, process)[-1]

    def score(self, t: Time, x: torch.Tensor, process: Process) -> torch.Tensor:
        r""":math:`\nabla_x\log p_t(x) = -\sum_k r_k (x - \alpha\mu_k)/v_k`."""
        _, _, var, diff, r, _ = self._responsibilities(t, x, process)
        return (-(r[..., None] * diff / var).sum(1)).to(x.dtype)

    def denoiser(self, t: Time, x: torch.Tensor, process: Process) -> torch.Tensor:
        r""":math:`E[x_0|x_t=x] = \sum_k r_k\big(\mu_k + \alpha s_k^2 (x - \alpha\mu_k)/v_k\big)`."""
        p = _linear(process)
        _, _, var, diff, r, _ = self._responsibilities(t, x, process)
        a = p.alpha(_collapse(as_time(t, x.device)))
        if a.ndim == 1:
            a = a[:, None, None]
        post = self.means.to(x.device) + a * self.stds.to(x.device) ** 2 * diff / var
        return (r[..., None] * post).sum(1).to(x.dtype)

    def sample(self, n: int, *, generator: GeneratorSpec = None, dtype: torch.dtype = TIME_DTYPE,
               device: torch.device | str | None = None) -> torch.Tensor:
        """``n`` samples of the data distribution (t = 0)."""
        if not isinstance(n, int) or n < 0:
            raise ValueError(f"n must be an int >= 0, got {n!r}")
        g = as_generator(generator) if not isinstance(generator, (list, tuple, IndexStreams)) else None
        comp = (torch.multinomial(self.weights, n, replacement=True, generator=g) if n
                else torch.zeros(0, dtype=torch.long))
        z = randn((n, self.dim), generator=g if g is not None else generator, dtype=TIME_DTYPE)
        x = self.means[comp] + self.stds[comp] * z
        return x.to(dtype=dtype, device=device)

    def model(self, process: Process, prediction: str | None = None) -> DiffusionModel:
        """A :class:`DiffusionModel` whose network is exact: it predicts ``prediction``
        (``"score"`` by default, ``"velocity"`` where :math:`\\alpha_T = 0`, e.g. rectified flow)."""
        p = _linear(process)
        if prediction is None:
            prediction = "velocity" if float(p.alpha(p.T)) == 0.0 else "score"
        gmm = self

        def exact_net(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            tt = _collapse(as_time(t, x.device))
            s = gmm.score(tt, x, p).to(TIME_DTYPE)
            if prediction == "score":
                return s.to(x.dtype)
            x0 = gmm.denoiser(tt, x, p).to(TIME_DTYPE)  # exact even where alpha = 0
            a, sg = expand_like(p.alpha(tt), s), expand_like(p.sigma(tt), s)
            eps = -sg * s
            out = {"eps": eps, "x0": x0, "v": a * eps - sg * x0,
                   "velocity": expand_like(p.d_alpha(tt), s) * x0 + expand_like(p.d_sigma(tt), s) * eps}[prediction]
            return out.to(x.dtype)

        exact_net.__name__ = "exact_gmm_" + prediction
        return DiffusionModel(exact_net, p, prediction, time_label=lambda t: t)

    def __repr__(self) -> str:
        return f"GaussianMixture(K={self.n_components}, D={self.dim})"


class Gaussian(GaussianMixture):
    r"""A single diagonal Gaussian :math:`\mathcal N(\mu, \mathrm{diag}(s^2))`.

    Its probability-flow ODE is linear, and its flow map between two times is the monotone
    affine map between the marginals: per dimension,
    :math:`x_t = \alpha_t\mu + \sqrt{\alpha_t^2 s^2+\sigma_t^2}\,(x_u - \alpha_u\mu)/\sqrt{\alpha_u^2 s^2+\sigma_u^2}`.
    """

    def __init__(self, mean: Sequence[float] | torch.Tensor, std: float | Sequence[float] | torch.Tensor = 1.0) -> None:
        m = torch.as_tensor(mean, dtype=TIME_DTYPE).reshape(1, -1)
        s = torch.as_tensor(std, dtype=TIME_DTYPE)
        s = s.reshape(1, -1).expand_as(m) if s.ndim > 0 else s.expand_as(m)
        super().__init__(m, s)

    def flow_map(self, x: torch.Tensor, t_from: Time, t_to: Time, process: Process) -> torch.Tensor:
        """Exact probability-flow transport of ``x`` from ``t_from`` to ``t_to`` (float64 inside)."""
        xd = self._check_x(x)
        m0, v0 = self._params(t_from, xd, process)
        m1, v1 = self._params(t_to, xd, process)
        return (m1[..., 0, :] + torch.sqrt(v1[..., 0, :] / v0[..., 0, :]) * (xd - m0[..., 0, :])).to(x.dtype)
