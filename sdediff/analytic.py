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

__all__ = ["Gaussian", "GaussianMixture", "UniformBox"]

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

    def model(self, process: Process, prediction: str | None = None,
              event_shape: Sequence[int] | None = None) -> DiffusionModel:
        """A :class:`DiffusionModel` whose network is exact: it predicts ``prediction``
        (``"score"`` by default, ``"velocity"`` where :math:`\\alpha_T = 0`, e.g. rectified flow).
        ``event_shape`` (e.g. ``(3, 8, 8)``, product ``D``): the network takes and returns states of
        shape ``(B, *event_shape)``, flattened to ``(B, D)`` inside (image-shaped targets)."""
        return _exact_model(self, process, prediction, event_shape)

    def __repr__(self) -> str:
        return f"GaussianMixture(K={self.n_components}, D={self.dim})"


def _exact_model(dist: GaussianMixture | UniformBox, process: Process, prediction: str | None,
                 event_shape: Sequence[int] | None) -> DiffusionModel:
    """The exact network of ``dist`` (anything with ``score``, ``denoiser`` and ``dim``) under ``process``."""
    p = _linear(process)
    if prediction is None:
        prediction = "velocity" if float(p.alpha(p.T)) == 0.0 else "score"
    shape = None if event_shape is None else tuple(int(k) for k in event_shape)
    if shape is not None and math.prod(shape) != dist.dim:
        raise ValueError(f"event_shape {shape} has {math.prod(shape)} elements but the target has dim {dist.dim}")
    dist_ = dist

    def exact_net(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        tt = _collapse(as_time(t, x.device))
        flat = x.reshape(x.shape[0], -1) if shape is not None else x
        s = dist_.score(tt, flat, p).to(TIME_DTYPE)
        if prediction == "score":
            return s.to(x.dtype).reshape(x.shape)
        x0 = dist_.denoiser(tt, flat, p).to(TIME_DTYPE)  # exact even where alpha = 0
        a, sg = expand_like(p.alpha(tt), s), expand_like(p.sigma(tt), s)
        eps = -sg * s
        out = {"eps": eps, "x0": x0, "v": a * eps - sg * x0,
               "velocity": expand_like(p.d_alpha(tt), s) * x0 + expand_like(p.d_sigma(tt), s) * eps}[prediction]
        return out.to(x.dtype).reshape(x.shape)

    exact_net.__name__ = "exact_gmm_" + prediction if isinstance(dist, GaussianMixture) else \
        "exact_" + type(dist).__name__.lower() + "_" + prediction
    return DiffusionModel(exact_net, p, prediction, time_label=lambda t: t)


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


def _log_diff_ndtr(hi: torch.Tensor, lo: torch.Tensor) -> torch.Tensor:
    r""":math:`\log(\Phi(hi) - \Phi(lo))` for ``hi > lo``, stable in both tails (complements where
    both are positive, so no :math:`1 - 1` cancellation)."""
    flip = lo > 0
    a = torch.where(flip, -lo, hi)  # Phi(hi) - Phi(lo) = Phi(-lo) - Phi(-hi)
    b = torch.where(flip, -hi, lo)
    la, lb = torch.special.log_ndtr(a), torch.special.log_ndtr(b)
    return la + torch.log(-torch.expm1(lb - la))


class UniformBox:
    r"""The uniform distribution on the box :math:`\prod_d [l_d, u_d]`: a non-Gaussian target with an exact score.

    Under a linear process :math:`x_t = \alpha_t x_0 + \sigma_t\epsilon` each coordinate's marginal is
    the box convolved with a Gaussian,

    .. math:: p_t(x) = \prod_d \frac{\Phi(a_d) - \Phi(b_d)}{\alpha_t (u_d - l_d)},\qquad
              a_d = \frac{x_d - \alpha_t l_d}{\sigma_t},\ b_d = \frac{x_d - \alpha_t u_d}{\sigma_t},

    so the score is :math:`\partial_d \log p_t = (\varphi(a_d) - \varphi(b_d)) / (\sigma_t(\Phi(a_d) - \Phi(b_d)))`
    and the denoiser (Tweedie) :math:`E[x_0|x_t] = (x + \sigma_t^2\nabla\log p_t)/\alpha_t`. Computed in
    float64 in log space (stable far outside the box). The density has edges, so the flow's last
    stretch (small σ) is stiff near the faces: a test of the end of a solve.

    Args:
        low, high: ``(D,)`` lower and upper corners (``high > low``).
    """

    def __init__(self, low: Sequence[float] | torch.Tensor, high: Sequence[float] | torch.Tensor) -> None:
        lo = torch.as_tensor(low, dtype=TIME_DTYPE).reshape(-1)
        hi = torch.as_tensor(high, dtype=TIME_DTYPE).reshape(-1)
        if lo.shape != hi.shape or lo.numel() == 0:
            raise ValueError(f"low and high must be (D,) of equal length, got {tuple(lo.shape)} and {tuple(hi.shape)}")
        check_finite("low", lo)
        check_finite("high", hi)
        if not bool((hi > lo).all()):
            raise ValueError("high must be > low in every coordinate (a flat box has no density)")
        self.low, self.high = lo, hi
        self.dim = lo.numel()

    def _ab(self, t: Time, x: torch.Tensor, process: Process) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor,
                                                                          torch.Tensor, torch.Tensor]:
        if x.ndim != 2 or x.shape[-1] != self.dim:
            raise ValueError(f"x must have shape (B, {self.dim}), got {tuple(x.shape)}")
        p = _linear(process)
        xd = x.to(TIME_DTYPE)
        t = _collapse(as_time(t, x.device))
        al, sg = p.alpha(t), p.sigma(t)
        if t.ndim == 1:
            al, sg = al[:, None], sg[:, None]
        a = (xd - al * self.low.to(x.device)) / sg
        b = (xd - al * self.high.to(x.device)) / sg
        return xd, al, sg, a, b

    def log_prob(self, t: Time, x: torch.Tensor, process: Process) -> torch.Tensor:
        r""":math:`\log p_t(x)` per sample (float64)."""
        _, al, _, a, b = self._ab(t, x, process)
        width = (self.high - self.low).to(x.device)
        return (_log_diff_ndtr(a, b) - torch.log(al * width)).sum(-1)

    def score(self, t: Time, x: torch.Tensor, process: Process) -> torch.Tensor:
        r""":math:`\nabla_x\log p_t(x)` (see the class docstring)."""
        _, _, sg, a, b = self._ab(t, x, process)
        log_z = _log_diff_ndtr(a, b)
        half_log_2pi = 0.5 * LOG_2PI
        s = (torch.exp(-0.5 * a * a - half_log_2pi - log_z) - torch.exp(-0.5 * b * b - half_log_2pi - log_z)) / sg
        return s.to(x.dtype)

    def denoiser(self, t: Time, x: torch.Tensor, process: Process) -> torch.Tensor:
        r""":math:`E[x_0|x_t = x] = (x + \sigma_t^2\nabla\log p_t(x))/\alpha_t`, clamped to the box (where
        it lies up to rounding)."""
        xd, al, sg, _, _ = self._ab(t, x, process)
        x0 = (xd + sg**2 * self.score(t, xd, process)) / al
        return torch.maximum(torch.minimum(x0, self.high.to(x.device)), self.low.to(x.device)).to(x.dtype)

    def sample(self, n: int, *, generator: GeneratorSpec = None, dtype: torch.dtype = TIME_DTYPE,
               device: torch.device | str | None = None) -> torch.Tensor:
        """``n`` samples of the box (t = 0)."""
        if not isinstance(n, int) or n < 0:
            raise ValueError(f"n must be an int >= 0, got {n!r}")
        g = as_generator(generator) if not isinstance(generator, (list, tuple)) else None
        u = torch.rand((n, self.dim), generator=g, dtype=TIME_DTYPE)
        return (self.low + u * (self.high - self.low)).to(dtype=dtype, device=device)

    def model(self, process: Process, prediction: str | None = None,
              event_shape: Sequence[int] | None = None) -> DiffusionModel:
        """A :class:`DiffusionModel` with the exact network (as :meth:`GaussianMixture.model`)."""
        return _exact_model(self, process, prediction, event_shape)

    def __repr__(self) -> str:
        return f"UniformBox(D={self.dim})"
