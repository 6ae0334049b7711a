"""k-diffusion's samplers as the reference for sdediff.integrations.k_diffusion.

k-diffusion's wheel pulls heavy dependencies, so it is not installed: its ``k_diffusion/sampling.py`` is
read from the published wheel (``pip download k-diffusion==0.1.1.post1 --no-deps -d /tmp/kd``) and run
with a stand-in for the one helper it takes from ``k_diffusion.utils`` (``append_dims``). Nothing of
k-diffusion is stored in this repository; the outputs are recorded with

    python tests/integrations/_kd_reference.py /tmp/kd/k_diffusion-0.1.1.post1-py3-none-any.whl

into ``data/k_diffusion_reference.json``; with ``SDEDIFF_K_DIFFUSION_WHEEL=<wheel>`` the tests also
run the wheel's samplers live.
"""

from __future__ import annotations

import json
import pathlib
import sys
import types
import zipfile

import torch

import sdediff as sd

RECORD = pathlib.Path(__file__).parent / "data" / "k_diffusion_reference.json"
SAMPLERS = ("sample_euler", "sample_heun", "sample_dpmpp_2m")
GRIDS = {  # name -> (k-diffusion function, its arguments)
    "karras": ("get_sigmas_karras", (8, 0.002, 80.0), {"rho": 7.0}),
    "exponential": ("get_sigmas_exponential", (8, 0.002, 80.0), {}),
    "polyexponential": ("get_sigmas_polyexponential", (8, 0.002, 80.0), {"rho": 2.0}),
    "vp": ("get_sigmas_vp", (8,), {}),
}
GMM = sd.analytic.GaussianMixture([[-1.0, 0.5], [1.0, -0.5]], [[0.3, 0.5], [0.4, 0.2]])


def denoiser():
    """The exact denoiser D(x; sigma) of the mixture (EDM: x = x0 + sigma eps), as k-diffusion calls it."""
    exact = GMM.model(sd.EDM(sigma_min=1e-4, sigma_max=200.0), prediction="x0")
    count = {"n": 0}

    def model(x, sigma, **extra):
        count["n"] += 1
        return exact.net(x, sigma.to(torch.float64)) * extra.get("scale", 1.0)

    return model, count


def x_start(sigma_max: float) -> torch.Tensor:
    return torch.randn(4, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * sigma_max


def load_sampling(wheel: str | pathlib.Path) -> types.ModuleType:
    """k-diffusion's sampling module, read from its wheel (sys.modules left as it was)."""
    src = zipfile.ZipFile(wheel).read("k_diffusion/sampling.py").decode()
    utils = types.ModuleType("k_diffusion.utils")
    utils.append_dims = lambda x, n: x[(...,) + (None,) * (n - x.ndim)]
    pkg = types.ModuleType("k_diffusion")
    pkg.__path__ = []
    pkg.utils = utils
    saved = {k: sys.modules.get(k) for k in ("k_diffusion", "k_diffusion.utils")}
    sys.modules.update({"k_diffusion": pkg, "k_diffusion.utils": utils})
    try:
        mod = types.ModuleType("k_diffusion.sampling")
        mod.__package__ = "k_diffusion"
        exec(compile(src, "k_diffusion/sampling.py", "exec"), mod.__dict__)
    finally:
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v
    return mod


def run_reference(kd: types.ModuleType) -> dict:
    """Every sampler on every grid (float64 sigmas, so the comparison measures the update rules)."""
    out: dict = {"grids": {}, "runs": {}}
    for gname, (fn, args, kw) in GRIDS.items():
        out["grids"][gname] = getattr(kd, fn)(*args, **kw).tolist()
        sigmas = torch.tensor(out["grids"][gname], dtype=torch.float64)
        for sname in SAMPLERS:
            model, count = denoiser()
            calls = []

            def cb(d, calls=calls):
                calls.append([d["i"], float(d["sigma"]), float(d["sigma_hat"]), d["denoised"].tolist()])

            x = getattr(kd, sname)(model, x_start(float(sigmas[0])), sigmas, extra_args={"scale": 1.0},
                                   callback=cb, disable=True)
            out["runs"][f"{sname}/{gname}"] = {"x": x.tolist(), "nfe": count["n"], "callback": calls}
    return out


if __name__ == "__main__":
    kd = load_sampling(sys.argv[1])
    RECORD.parent.mkdir(exist_ok=True)
    RECORD.write_text(json.dumps(run_reference(kd), indent=1))
    print(f"wrote {RECORD}")
