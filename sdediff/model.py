r"""Models: a user's network plus a forward process, seen through every parameterization.

``DiffusionModel(net, process, prediction=...)`` is the only place where a network's raw output
is converted. For a linear process :math:`x_t = \alpha_t x_0 + \sigma_t\epsilon` the conversions
are (one table, :data:`PREDICTIONS`):

=============  ===========================================  ============================================
prediction     raw output                                    recovered :math:`(\hat x_0, \hat\epsilon)`
=============  ===========================================  ============================================
``eps``        :math:`\hat\epsilon`                          :math:`\hat x_0 = (x - \sigma\hat\epsilon)/\alpha`
``x0``         :math:`\hat x_0` (denoiser)                   :math:`\hat\epsilon = (x - \alpha\hat x_0)/\sigma`
``v``          :math:`v = \alpha\epsilon - \sigma x_0`       :math:`\hat x_0 = (\alpha x-\sigma v)/(\alpha^2+\sigma^2)`
``score``      :math:`s = \nabla\log p_t = -\epsilon/\sigma`  :math:`\hat\epsilon = -\sigma s`
``velocity``   :math:`u = \dot\alpha x_0 + \dot\sigma\epsilon`  solve the 2×2 system with :math:`x`
=============  ===========================================  ============================================

(Salimans & Ho 2022 for ``v``; Lipman et al. 2022 / Liu et al. 2022 for the flow velocity.)
Everything else follows: :math:`s = -\hat\epsilon/\sigma`,
:math:`u = \dot\alpha\hat x_0 + \dot\sigma\hat\epsilon`, which equals the probability-flow drift
:math:`f x - \tfrac12 g^2 s`.

The network keeps its own argument order ``net(x, t_label, **cond)``; inside sdediff the order is
``(t, x)``. The network evaluation count (NFE) is kept here, once, at the network.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from ._utils import (
    TIME_DTYPE,
    Time,
    as_time,
    attribute_ids,
    batch_time,
    check_time_range,
    did_you_mean,
    expand_like,
    memo,
    work_dtype,
)
from .counting import count
from .errors import nonfinite_policy, report_nonfinite
from .processes import LinearProcess, Process

__all__ = [
    "PREDICTIONS",
    "PREDICTION_ALIASES",
    "ClassifierFreeGuidance",
    "ClassifierGuidance",
    "DiffusionModel",
    "EpsScaled",
    "Prediction",
    "ScoreModel",
    "nonfinite_policy",
]

#: Grids up to this many points have their schedule records remembered per model (see :func:`_utils.memo`);
#: longer ones (huge step counts) are computed for each solve and not kept.
_MEMO_MAX_POINTS = 4096


@dataclass(frozen=True)
class Coefficients:
    r"""The schedule at ``t``: :math:`\alpha, \sigma, \dot\alpha, \dot\sigma` and the network's time label.

    Either tensors broadcast against the state (:meth:`at`, any ``t``), or python floats for one time
    (:meth:`exact`): solvers compute those once per grid point and per solve, so a network call at a
    grid point evaluates no schedule.
    """

    alpha: torch.Tensor | float
    sigma: torch.Tensor | float
    d_alpha: torch.Tensor | float
    d_sigma: torch.Tensor | float
    t: float | None = None
    label: float | None = None

    @classmethod
    def at(cls, process: LinearProcess, t: torch.Tensor, x: torch.Tensor) -> Coefficients:
        return cls(*(expand_like(c, x) for c in (process.alpha(t), process.sigma(t),
                                                  process.d_alpha(t), process.d_sigma(t))))

    @classmethod
    def exact(cls, process: LinearProcess, t: float, label: float | None = None) -> Coefficients:
        """Float64 python floats at one time ``t`` (and the network's label there)."""
        la, ls, da, ds = process.coefficient_tensors(torch.as_tensor(float(t), dtype=TIME_DTYPE))
        return cls(math.exp(float(la)), math.exp(float(ls)), float(da), float(ds), t=float(t), label=label)


def _affine(a: Any, x: torch.Tensor, b: Any, y: torch.Tensor) -> torch.Tensor:
    """``a x + b y``: two fused ops when ``a``, ``b`` are python floats (the per-solve fast path)."""
    if isinstance(a, float) and isinstance(b, float):
        return torch.mul(x, a).add_(y, alpha=b)
    return a * x + b * y


# Every parameterization is affine in (x, raw): x0_hat = a x + b raw and eps_hat = a' x + b' raw. One entry
# per parameterization gives the two coefficient pairs; the conversion and the fused fast paths use them.
Affine = tuple[tuple[Any, Any], tuple[Any, Any]]


def _eps_coefs(c: Coefficients) -> Affine:
    return (1.0 / c.alpha, -c.sigma / c.alpha), (0.0, 1.0)


def _x0_coefs(c: Coefficients) -> Affine:
    return (0.0, 1.0), (1.0 / c.sigma, -c.alpha / c.sigma)


def _v_coefs(c: Coefficients) -> Affine:
    den = c.alpha**2 + c.sigma**2
    return (c.alpha / den, -c.sigma / den), (c.sigma / den, c.alpha / den)


def _score_coefs(c: Coefficients) -> Affine:
    return (1.0 / c.alpha, c.sigma**2 / c.alpha), (0.0, -c.sigma)


def _velocity_coefs(c: Coefficients) -> Affine:
    det = c.alpha * c.d_sigma - c.sigma * c.d_alpha
    return (c.d_sigma / det, -c.sigma / det), (-c.d_alpha / det, c.alpha / det)


AFFINE: dict[str, Callable[[Coefficients], Affine]] = {
    "eps": _eps_coefs,
    "x0": _x0_coefs,
    "v": _v_coefs,
    "score": _score_coefs,
    "velocity": _velocity_coefs,
}
r"""Prediction name -> ``coefficients -> ((a, b), (a', b'))`` with :math:`\hat x_0 = a x + b\,raw` and
:math:`\hat\epsilon = a' x + b'\,raw` (the module docstring's table, as coefficients)."""


def _apply(ab: tuple[Any, Any], x: torch.Tensor, raw: torch.Tensor) -> torch.Tensor:
    a, b = ab
    if isinstance(a, float) and isinstance(b, float) and a == 0.0:
        return raw if b == 1.0 else torch.mul(raw, b)
    return _affine(a, x, b, raw)


def _converter(name: str) -> Callable[[torch.Tensor, torch.Tensor, Coefficients], tuple[torch.Tensor, torch.Tensor]]:
    coefs = AFFINE[name]

    def convert(raw: torch.Tensor, x: torch.Tensor, c: Coefficients) -> tuple[torch.Tensor, torch.Tensor]:
        ab_x0, ab_eps = coefs(c)
        return _apply(ab_x0, x, raw), _apply(ab_eps, x, raw)

    convert.__name__ = f"from_{name}"
    convert.__doc__ = f"``(raw, x, coefficients) -> (x0_hat, eps_hat)`` for a network predicting {name!r}."
    return convert


PREDICTIONS: dict[str, Callable[[torch.Tensor, torch.Tensor, Coefficients], tuple[torch.Tensor, torch.Tensor]]] = {
    name: _converter(name) for name in AFFINE
}
"""The conversion table: prediction name -> ``(raw, x, coefficients) -> (x0_hat, eps_hat)`` (module docstring)."""

#: diffusers' ``prediction_type`` names, accepted wherever a prediction is named, and their entry above.
PREDICTION_ALIASES: dict[str, str] = {
    "epsilon": "eps",
    "sample": "x0",
    "v_prediction": "v",
    "flow_prediction": "velocity",
}
"""diffusers' ``prediction_type`` names and the :data:`PREDICTIONS` entry each one means."""


def canonical_prediction(prediction: str) -> str:
    """The :data:`PREDICTIONS` key for ``prediction`` (an sdediff name or a diffusers alias)."""
    if isinstance(prediction, str) and prediction in PREDICTION_ALIASES:
        return PREDICTION_ALIASES[prediction]
    if not isinstance(prediction, str) or prediction not in PREDICTIONS:
        hint = did_you_mean(prediction, [*PREDICTIONS, *PREDICTION_ALIASES])
        raise ValueError(f"unknown prediction {prediction!r}; {hint}valid choices are: "
                         f"{', '.join(sorted(PREDICTIONS))} "
                         f"(or diffusers' names {', '.join(sorted(PREDICTION_ALIASES))})")
    return prediction


def unwrap_output(out: Any) -> Any:
    """The tensor in a network's return value, by one rule: a tensor as it is; else its ``.sample``
    tensor (diffusers' ``UNet2DOutput`` and friends); else the first element of a tuple or list
    (``return_dict=False``). Anything else is returned unchanged (and refused by the output check)."""
    if isinstance(out, torch.Tensor):
        return out
    sample = getattr(out, "sample", None)
    if isinstance(sample, torch.Tensor):
        return sample
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    return out


class Prediction:
    r"""Everything one network evaluation says about :math:`x_t`.

    ``score`` and ``velocity`` (the probability-flow drift) always exist; ``x0`` and ``eps`` exist
    for linear processes only. For linear processes all four are affine in the state and the raw
    network output and are computed when first read (most solvers read one or two);
    :meth:`affine` gives the coefficients, so a solver can fold the conversion into its own update.
    """

    __slots__ = ("_c", "_eps", "_form", "_raw", "_score", "_velocity", "_x", "_x0")

    def __init__(self, score: torch.Tensor | None = None, velocity: torch.Tensor | None = None,
                 x0: torch.Tensor | None = None, eps: torch.Tensor | None = None, *,
                 coefficients: Coefficients | None = None) -> None:
        self._score, self._velocity, self._x0, self._eps, self._c = score, velocity, x0, eps, coefficients
        self._x = self._raw = self._form = None

    @classmethod
    def from_x0_eps(cls, x0: torch.Tensor, eps: torch.Tensor, c: Coefficients,
                    velocity: torch.Tensor | None = None) -> Prediction:
        return cls(velocity=velocity, x0=x0, eps=eps, coefficients=c)

    @classmethod
    def from_raw(cls, raw: torch.Tensor, x: torch.Tensor, c: Coefficients, form: Affine,
                 velocity: torch.Tensor | None = None) -> Prediction:
        """A prediction whose ``x0``/``eps`` are ``form`` applied to ``(x, raw)``, computed when read."""
        p = cls(velocity=velocity, coefficients=c)
        p._x, p._raw, p._form = x, raw, form
        return p

    @property
    def x0(self) -> torch.Tensor | None:
        r"""The denoiser :math:`\hat x_0`."""
        if self._x0 is None and self._form is not None:
            self._x0 = _apply(self._form[0], self._x, self._raw)  # type: ignore[arg-type]
        return self._x0

    @property
    def eps(self) -> torch.Tensor | None:
        r"""The noise prediction :math:`\hat\epsilon`."""
        if self._eps is None and self._form is not None:
            self._eps = _apply(self._form[1], self._x, self._raw)  # type: ignore[arg-type]
        return self._eps

    def affine(self, field: str) -> tuple[float, torch.Tensor, float, torch.Tensor] | None:
        """``(a, x, b, raw)`` with ``field = a x + b raw`` (``field`` in x0, eps, velocity), when the
        coefficients are python floats (a solver's grid point); else ``None``."""
        if self._form is None:
            return None
        (a0, b0), (a1, b1) = self._form
        if field == "x0":
            a, b = a0, b0
        elif field == "eps":
            a, b = a1, b1
        elif field == "velocity" and self._velocity is None:
            da, ds = self._c.d_alpha, self._c.d_sigma  # type: ignore[union-attr]
            a, b = da * a0 + ds * a1, da * b0 + ds * b1
        else:
            return None
        if not (isinstance(a, float) and isinstance(b, float)):
            return None
        return a, self._x, b, self._raw  # type: ignore[return-value]

    @property
    def score(self) -> torch.Tensor:
        r""":math:`\nabla\log p_t = -\hat\epsilon/\sigma`."""
        if self._score is None:
            self._score = self.eps * (-1.0 / self._c.sigma)  # type: ignore[union-attr,operator]
        return self._score

    @property
    def velocity(self) -> torch.Tensor:
        r"""The probability-flow drift :math:`\dot\alpha\hat x_0 + \dot\sigma\hat\epsilon`."""
        if self._velocity is None:
            c = self._c
            self._velocity = _affine(c.d_alpha, self.x0, c.d_sigma, self.eps)  # type: ignore[union-attr,arg-type]
        return self._velocity

    def to(self, dtype: torch.dtype) -> Prediction:
        def cast(a: torch.Tensor | None) -> torch.Tensor | None:
            return None if a is None else a.to(dtype)
        return Prediction(cast(self._score), cast(self._velocity), cast(self.x0), cast(self.eps), coefficients=self._c)

    def lerp(self, other: Prediction, scale: float) -> Prediction:
        """``self + scale * (other - self)`` field by field (all fields are affine in the raw output)."""
        def mix(a: torch.Tensor | None, b: torch.Tensor | None) -> torch.Tensor | None:
            return None if a is None or b is None else a + scale * (b - a)
        if self._form is not None and other._form is not None and self._x is other._x:
            # the same state and schedule: mix the raw outputs once (fields are affine in them)
            return Prediction.from_raw(mix(self._raw, other._raw), self._x, self._c, self._form,  # type: ignore[arg-type]
                                       velocity=mix(self._velocity, other._velocity))
        if self.x0 is not None and other.x0 is not None and self._c is not None:
            return Prediction(x0=mix(self.x0, other.x0), eps=mix(self.eps, other.eps), coefficients=self._c)
        return Prediction(mix(self.score, other.score), mix(self.velocity, other.velocity),
                          mix(self.x0, other.x0), mix(self.eps, other.eps))


class _Counter:
    __slots__ = ("n",)

    def __init__(self) -> None:
        self.n = 0


class ScoreModel:
    """Interface of every model: :meth:`predict` plus derived views, a process and an NFE count."""

    process: Process
    _counter: _Counter

    @property
    def nfe(self) -> int:
        """Number of network evaluations so far (one per batched call of the network)."""
        return self._counter.n

    def predict(self, t: Time, x: torch.Tensor) -> Prediction:
        raise NotImplementedError

    def coefficients(self, t: float) -> Coefficients | None:
        """The schedule record at one time ``t`` for :meth:`predict_at` (``None``: no fast path)."""
        return None

    def coefficients_grid(self, ts: torch.Tensor) -> list[Coefficients] | None:
        """:meth:`coefficients` at every time of a float64 grid (``None``: no fast path)."""
        out = [self.coefficients(t) for t in ts.tolist()]
        return None if not out or any(c is None for c in out) else out  # type: ignore[return-value]

    def predict_at(self, c: Coefficients, x: torch.Tensor) -> Prediction:
        """:meth:`predict` at the time of a record from :meth:`coefficients` (a solver's grid point):
        no schedule evaluation and no time validation (the solver validated its grid once)."""
        return self.predict(c.t, x)  # type: ignore[arg-type]

    def _linear(self, what: str) -> LinearProcess:
        if not isinstance(self.process, LinearProcess):
            raise TypeError(f"{what} needs a linear process (alpha, sigma); {type(self.process).__name__} is not")
        return self.process

    def score(self, t: Time, x: torch.Tensor) -> torch.Tensor:
        r""":math:`\nabla_x \log p_t(x)`."""
        return self.predict(t, x).score.to(x.dtype)

    def velocity(self, t: Time, x: torch.Tensor) -> torch.Tensor:
        r"""Probability-flow drift :math:`f(t,x) - \tfrac12 g(t)^2\nabla\log p_t(x)`."""
        return self.predict(t, x).velocity.to(x.dtype)

    def eps(self, t: Time, x: torch.Tensor) -> torch.Tensor:
        self._linear("eps")
        return self.predict(t, x).eps.to(x.dtype)  # type: ignore[union-attr]

    def x0(self, t: Time, x: torch.Tensor) -> torch.Tensor:
        """The denoiser :math:`E[x_0 | x_t = x]`."""
        self._linear("x0")
        return self.predict(t, x).x0.to(x.dtype)  # type: ignore[union-attr]

    def v(self, t: Time, x: torch.Tensor) -> torch.Tensor:
        r""":math:`v = \alpha\hat\epsilon - \sigma\hat x_0`."""
        p = self._linear("v")
        pred = self.predict(t, x)
        tt = as_time(t, x.device)
        return (expand_like(p.alpha(tt), x) * pred.eps - expand_like(p.sigma(tt), x) * pred.x0).to(x.dtype)


class DiffusionModel(ScoreModel):
    """A network ``net(x, t_label, **cond)`` trained on ``process`` to predict ``prediction``.

    The network may return a tensor, an object with a ``.sample`` tensor (diffusers' ``UNet2DOutput``)
    or a tuple whose first element is the tensor (:func:`unwrap_output`), so a diffusers UNet is
    passed as it is.

    Args:
        net: the network; called once per evaluation with the state, the time label of shape
            ``(B,)`` and the conditioning keywords.
        process: the forward process it was trained on.
        prediction: one of ``"eps"``, ``"x0"``, ``"v"``, ``"score"``, ``"velocity"``, or diffusers'
            name for one of them (:data:`PREDICTION_ALIASES`: ``"epsilon"``, ``"sample"``,
            ``"v_prediction"``, ``"flow_prediction"``).
        time_label: maps float64 time ``t`` to the label the network expects; defaults to
            ``process.time_label`` (identity, or ``N t - 1`` for :class:`DiscreteVP`).
        cond: conditioning keywords passed to every call.
        check_outputs: check each output's shape and finiteness (cheap; on by default).

    The label is given to the network in the state's dtype (float32 for half-precision states).
    Conversions run in float32 for half-precision states; results are returned in the state's dtype.
    """

    def __init__(self, net: Callable[..., torch.Tensor], process: Process, prediction: str = "eps", *,
                 time_label: Callable[[torch.Tensor], torch.Tensor] | None = None,
                 cond: Mapping[str, Any] | None = None, check_outputs: bool = True,
                 _counter: _Counter | None = None) -> None:
        if not callable(net):
            raise TypeError(f"net must be callable as net(x, t_label, **cond), got {type(net).__name__}")
        if not isinstance(process, Process):
            raise TypeError(f"process must be an sdediff process (e.g. sd.VPSDE()), got {type(process).__name__}")
        prediction = canonical_prediction(prediction)
        if not isinstance(process, LinearProcess) and prediction != "score":
            raise ValueError(
                f"prediction={prediction!r} needs a linear process (alpha, sigma); a generic "
                f"{type(process).__name__} only supports prediction='score'"
            )
        if isinstance(process, LinearProcess) and prediction == "eps":
            if process.zero_terminal_snr or float(process.alpha(process.T)) == 0.0:
                raise ValueError(
                    f"prediction='eps' cannot recover x0 at zero terminal SNR (alpha(T) = 0 for {process!r}); "
                    "use prediction='v', 'x0' or 'velocity', or end the process below T"
                )
        if isinstance(process, LinearProcess) and prediction == "x0" and float(process.sigma(process.t_min)) == 0.0:
            raise ValueError(
                f"prediction='x0' cannot recover eps at sigma(t_min) = 0 ({process!r}); build the process with "
                "t_min > 0 (e.g. RectifiedFlow(t_min=1e-3)) or use prediction='velocity' or 'v'"
            )
        self.net = net
        self.process = process
        self.prediction = prediction
        self.time_label = time_label if time_label is not None else process.time_label
        self.cond = dict(cond or {})
        self.check_outputs = check_outputs
        self._counter = _counter or _Counter()

    def with_cond(self, **cond: Any) -> DiffusionModel:
        """The same network and NFE counter with other conditioning keywords."""
        return DiffusionModel(self.net, self.process, self.prediction, time_label=self.time_label,
                              cond=cond, check_outputs=self.check_outputs, _counter=self._counter)

    def raw(self, t: Time, x: torch.Tensor) -> torch.Tensor:
        """One network evaluation: ``net(x, label(t), **cond)``, counted and checked."""
        if x.ndim == 0:
            raise ValueError("x must have a batch dimension, got a 0-d tensor")
        tt = as_time(t, x.device)
        check_time_range("t", tt, self.process.t_min, self.process.T)
        label = batch_time(self.time_label(tt), x).to(work_dtype(x))
        return self._call(x, label, tt)

    def _call(self, x: torch.Tensor, label: torch.Tensor, t: Any) -> torch.Tensor:
        out = unwrap_output(self.net(x, label, **self.cond))
        self._counter.n += 1
        count()
        if self.check_outputs:
            if not isinstance(out, torch.Tensor):
                raise TypeError(f"net must return a tensor (or an object with a .sample tensor, or a tuple whose "
                                f"first element is one), got {type(out).__name__}")
            if out.shape != x.shape:
                hint = (" (a learned-variance model outputs 2C channels: wrap net to return the first C)"
                        if out.ndim == x.ndim and out.shape[1:2] == (2 * x.shape[1],) else "")
                raise ValueError(f"net output has shape {tuple(out.shape)}, expected {tuple(x.shape)} "
                                 f"(the shape of x){hint}")
            report_nonfinite("model output", out, t)
        return out

    def predict(self, t: Time, x: torch.Tensor) -> Prediction:
        tt = as_time(t, x.device)
        out = self.raw(tt, x)
        wd = work_dtype(x)
        raw, xw = out.to(wd), x.to(wd)
        if not isinstance(self.process, LinearProcess):
            g2 = expand_like(self.process.diffusion(tt) ** 2, xw)
            return Prediction(score=raw, velocity=self.process.drift(tt, xw) - 0.5 * g2 * raw)
        c = Coefficients.at(self.process, tt, xw)
        return Prediction.from_raw(raw, xw, c, AFFINE[self.prediction](c),
                                   velocity=raw if self.prediction == "velocity" else None)

    def coefficients_grid(self, ts: torch.Tensor) -> list[Coefficients] | None:
        """The records of a whole grid, vectorised: one schedule evaluation and one label call for all times."""
        p = self.process
        if not isinstance(p, LinearProcess):
            return None
        tt = ts.detach().to(TIME_DTYPE).cpu()
        if tt.numel() > _MEMO_MAX_POINTS or ts.requires_grad:
            return self._coefficients_grid(p, tt)
        key = ("coefficients_grid", attribute_ids(self), attribute_ids(p), tt.numpy().tobytes())
        out = memo(self, key, lambda: self._coefficients_grid(p, tt))
        return None if out is None else list(out)

    def _coefficients_grid(self, p: LinearProcess, tt: torch.Tensor) -> list[Coefficients] | None:
        labels = self.time_label(tt)
        lab = torch.as_tensor(labels, dtype=TIME_DTYPE).reshape(-1) if isinstance(labels, torch.Tensor) else None
        if lab is None or lab.numel() != tt.numel():  # a label function that is not elementwise: point by point
            return ScoreModel.coefficients_grid(self, tt)
        la, ls, da, ds = p.coefficient_tensors(tt)
        return [Coefficients(a, s, d_a, d_s, t=t, label=lb) for a, s, d_a, d_s, t, lb in zip(
            torch.exp(la).tolist(), torch.exp(ls).tolist(), da.tolist(), ds.tolist(), tt.tolist(), lab.tolist(),
            strict=True)]

    def coefficients(self, t: float) -> Coefficients | None:
        if not isinstance(self.process, LinearProcess):
            return None
        label = float(self.time_label(torch.as_tensor(float(t), dtype=TIME_DTYPE)))
        return Coefficients.exact(self.process, t, label)

    def predict_at(self, c: Coefficients, x: torch.Tensor) -> Prediction:
        wd = work_dtype(x)
        label = x.new_full((x.shape[0],), c.label, dtype=wd)  # type: ignore[arg-type]
        raw = self._call(x, label, c.t)
        if raw.dtype != wd:
            raw, x = raw.to(wd), x.to(wd)
        elif x.dtype != wd:
            x = x.to(wd)
        return Prediction.from_raw(raw, x, c, AFFINE[self.prediction](c),
                                   velocity=raw if self.prediction == "velocity" else None)

    def __repr__(self) -> str:
        net = getattr(self, "net", None)
        name = getattr(net, "__name__", type(net).__name__)
        process, prediction = getattr(self, "process", None), getattr(self, "prediction", None)
        return f"DiffusionModel({name}, {process!r}, prediction={prediction!r})"


class ClassifierFreeGuidance(ScoreModel):
    r"""Classifier-free guidance (Ho & Salimans 2022):
    :math:`\hat\epsilon = \hat\epsilon_u + w(\hat\epsilon_c - \hat\epsilon_u)`, applied to every
    field of the prediction (all are affine in the raw output, so any parameterization agrees).

    Two network calls per evaluation (conditional and unconditional), both counted in ``nfe``.
    ``scale=1`` is the conditional model, ``scale=0`` the unconditional one.
    """

    def __init__(self, model: DiffusionModel, *, cond: Mapping[str, Any], uncond: Mapping[str, Any],
                 scale: float) -> None:
        if not isinstance(model, DiffusionModel):
            raise TypeError("model must be a DiffusionModel whose net takes the conditioning keywords")
        self.conditional = model.with_cond(**cond)
        self.unconditional = model.with_cond(**uncond)
        self.scale = float(scale)
        self.process = model.process
        self._counter = model._counter

    def predict(self, t: Time, x: torch.Tensor) -> Prediction:
        return self.unconditional.predict(t, x).lerp(self.conditional.predict(t, x), self.scale)

    def coefficients(self, t: float) -> Coefficients | None:
        return self.conditional.coefficients(t)

    def coefficients_grid(self, ts: torch.Tensor) -> list[Coefficients] | None:
        return self.conditional.coefficients_grid(ts)

    def predict_at(self, c: Coefficients, x: torch.Tensor) -> Prediction:
        return self.unconditional.predict_at(c, x).lerp(self.conditional.predict_at(c, x), self.scale)


class ClassifierGuidance(ScoreModel):
    r"""Classifier guidance (Dhariwal & Nichol 2021):
    :math:`\nabla\log p_t(x|y) = \nabla\log p_t(x) + w\,\nabla_x\log p_\phi(y|x, t)`.

    ``classifier(x, t_label)`` returns logits ``(B, C)`` (then ``y`` picks the class per sample)
    or, with ``y=None``, the log-probability ``(B,)`` itself.
    """

    def __init__(self, model: ScoreModel, classifier: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], *,
                 scale: float, y: torch.Tensor | None = None) -> None:
        if not callable(classifier):
            raise TypeError("classifier must be callable as classifier(x, t_label)")
        self.model = model
        self.classifier = classifier
        self.y = y
        self.scale = float(scale)
        self.process = model.process
        self._counter = model._counter

    def log_prob_grad(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        r""":math:`\nabla_x \log p_\phi(y | x, t)`."""
        label_fn = getattr(self.model, "time_label", self.process.time_label)
        with torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            out = self.classifier(xg, batch_time(label_fn(t), x).to(work_dtype(x)))
            if self.y is not None:
                out = torch.log_softmax(out, dim=-1).gather(-1, self.y.reshape(-1, 1).to(out.device)).squeeze(-1)
            if out.shape != (x.shape[0],):
                raise ValueError(f"classifier log-probability must have shape ({x.shape[0]},), got {tuple(out.shape)}")
            (grad,) = torch.autograd.grad(out.sum(), xg)
        return grad

    def predict(self, t: Time, x: torch.Tensor) -> Prediction:
        tt = as_time(t, x.device)
        base = self.model.predict(tt, x)
        wd = work_dtype(x)
        extra = self.scale * self.log_prob_grad(tt, x).to(wd)
        score = base.score + extra
        if not isinstance(self.process, LinearProcess):
            g2 = expand_like(self.process.diffusion(tt) ** 2, score)
            return Prediction(score=score, velocity=base.velocity - 0.5 * g2 * extra)
        c = Coefficients.at(self.process, tt, x.to(wd))
        x0, eps = PREDICTIONS["score"](score, x.to(wd), c)
        return Prediction.from_x0_eps(x0, eps, c)


def step_values(times: torch.Tensor, values: torch.Tensor, t: Time) -> torch.Tensor:
    r"""``values[k]`` for :math:`t_{k+1} < t \le t_k` on the decreasing grid ``times`` (``values[-1]`` below its
    last time, ``values[0]`` above its first): the step an evaluation at ``t`` belongs to, a grid time
    :math:`t_k` taking the step it starts. Float64, the shape of ``t``."""
    ts = torch.as_tensor(times, dtype=TIME_DTYPE).detach().cpu().reshape(-1)
    tt = torch.as_tensor(t, dtype=TIME_DTYPE).detach().cpu()
    tol = 1e-12 * max(1.0, float(ts.abs().max()))
    k = (ts[1:-1] >= tt.unsqueeze(-1) - tol).sum(-1)
    return torch.as_tensor(values, dtype=TIME_DTYPE).reshape(-1)[k]


def eps_scaled_x0(x0: torch.Tensor, x: torch.Tensor, alpha: Any, s: Any) -> torch.Tensor:
    r"""The data prediction of a noise prediction scaled by ``s`` at the same state:
    :math:`\tilde x_0 = (x - \sigma s\hat\epsilon)/\alpha = s\,\hat x_0 + (1 - s)\,x/\alpha`
    (:class:`EpsScaled`)."""
    return s * x0 + (1.0 - s) * x / alpha


class EpsScaled(ScoreModel):
    r"""A model whose noise prediction is scaled per step of a grid: :math:`\tilde\epsilon = s(t)\,\hat\epsilon`.

    ``s(t)`` is piecewise constant on the grid ``times`` (decreasing, :math:`t_0 = T > \dots > t_n`):
    :math:`s(t) = s_k` for :math:`t_{k+1} < t \le t_k` (an evaluation at a grid time :math:`t_k` takes the
    scale of the step it starts), and :math:`s_{n-1}` below :math:`t_n`. The other fields follow from
    :math:`\tilde\epsilon` at the same state: :math:`\tilde x_0 = (x - \sigma\tilde\epsilon)/\alpha
    = s\,\hat x_0 + (1 - s)\,x/\alpha` (a per-step weight between the denoiser and the state), the score
    :math:`-\tilde\epsilon/\sigma` and the probability-flow drift.

    These are the per-step correction coefficients of :func:`sdediff.timesteps.calibrate`
    (``eps_scale=True``): a learned scale of each step's model output, which absorbs part of a coarse
    grid's discretisation error. The form is the per-step ε-scaling of Ning et al. 2024 ("Elucidating the
    exposure bias in diffusion models", ICLR), fitted to the model by least squares as the learned solver
    coefficients of S4S (Frankel et al. 2025) are; it is one coefficient per step, not S4S's full set.
    The evaluations are counted once, at the wrapped model.
    """

    def __init__(self, model: ScoreModel, times: Any, scales: Any) -> None:
        if not isinstance(model, ScoreModel):
            raise TypeError(f"model must be an sdediff model (DiffusionModel, ...), got {type(model).__name__}")
        if not isinstance(model.process, LinearProcess):
            raise TypeError(f"EpsScaled needs a linear process (alpha, sigma); {type(model.process).__name__} "
                            "is not one")
        ts = torch.as_tensor(times, dtype=TIME_DTYPE).detach().cpu().reshape(-1)
        sc = torch.as_tensor(scales, dtype=TIME_DTYPE).detach().cpu().reshape(-1)
        if len(ts) < 2 or not bool((ts[1:] < ts[:-1]).all()):
            raise ValueError(f"times must be a strictly decreasing grid of at least 2 times, got {ts.tolist()}")
        if len(sc) != len(ts) - 1:
            raise ValueError(f"scales must hold one value per step of the grid ({len(ts) - 1}), got {len(sc)}")
        if not bool(torch.isfinite(sc).all()) or not bool((sc > 0).all()):
            raise ValueError(f"scales must be finite and > 0, got {sc.tolist()}")
        self.model, self.times, self.scales = model, ts, sc
        self.process = model.process
        self._counter = model._counter

    def scale_at(self, t: Time) -> torch.Tensor:
        """:math:`s(t)` (float64, the shape of ``t``)."""
        return step_values(self.times, self.scales, t)

    def _scaled(self, pred: Prediction, s: Any, x: torch.Tensor) -> Prediction:
        c = pred._c
        form = pred._form
        if form is not None and isinstance(s, float) and isinstance(c.alpha, float) and isinstance(c.sigma, float):
            (_, _), (a1, b1) = form  # eps = a1 x + b1 raw: scale it, and x0 = (x - sigma eps) / alpha
            e = (s * a1, s * b1)
            x0 = ((1.0 - c.sigma * e[0]) / c.alpha, -c.sigma * e[1] / c.alpha)
            return Prediction.from_raw(pred._raw, pred._x, c, (x0, e))  # type: ignore[arg-type]
        eps = pred.eps * s  # type: ignore[operator]
        xw = pred._x if pred._x is not None else x.to(eps.dtype)
        return Prediction.from_x0_eps(eps_scaled_x0(pred.x0, xw, c.alpha, s), eps, c)  # type: ignore[union-attr,arg-type]

    def predict(self, t: Time, x: torch.Tensor) -> Prediction:
        tt = as_time(t, x.device)
        pred = self.model.predict(tt, x)
        s = self.scale_at(tt)
        scale: Any = float(s) if s.numel() == 1 else expand_like(s.to(device=x.device), x).to(pred.eps.dtype)
        if pred._c is None:
            pred = Prediction.from_x0_eps(pred.x0, pred.eps, Coefficients.at(self.process, tt, x))  # type: ignore[arg-type]
        return self._scaled(pred, scale, x)

    def coefficients(self, t: float) -> Coefficients | None:
        return self.model.coefficients(t)

    def coefficients_grid(self, ts: torch.Tensor) -> list[Coefficients] | None:
        return self.model.coefficients_grid(ts)

    def predict_at(self, c: Coefficients, x: torch.Tensor) -> Prediction:
        return self._scaled(self.model.predict_at(c, x), float(self.scale_at(float(c.t))), x)  # type: ignore[arg-type]

    def __repr__(self) -> str:
        return f"EpsScaled({self.model!r}, steps={len(self.scales)})"
