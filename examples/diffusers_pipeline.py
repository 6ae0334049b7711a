"""sdediff's solvers inside an unmodified diffusers DDPMPipeline, against sd.sample from the same noise.

    python examples/diffusers_pipeline.py

A tiny randomly initialised UNet2DModel (no download); prints, per fixed-step solver and grid, the NFE
and the relative max difference between the pipeline's final state and sd.sample's.
"""

from __future__ import annotations

import torch
from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel
from diffusers.utils.torch_utils import randn_tensor

import sdediff as sd
from sdediff.integrations import diffusers as sdd

SHAPE = (2, 3, 8, 8)


def main() -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    unet = UNet2DModel(sample_size=8, in_channels=3, out_channels=3, block_out_channels=(8, 16), layers_per_block=1,
                       norm_num_groups=4, down_block_types=("DownBlock2D", "DownBlock2D"),
                       up_block_types=("UpBlock2D", "UpBlock2D")).eval()
    pipe = DDPMPipeline(unet=unet, scheduler=DDPMScheduler(steps_offset=1))
    pipe.set_progress_bar_config(disable=True)
    fixed = sorted(k for k, v in sd.solvers.SOLVERS.items()
                   if isinstance(v, sd.solvers.FixedStepSolver) and not v.adaptive)
    results: dict[str, list[float]] = {}
    for grid in (None, "karras"):
        for solver in fixed:
            # on the leading grid Heun's churn would perturb the first request: cap its range below it
            opts = {"S_max": 5.0} if solver == "stochastic_heun" and grid is None else None
            pipe.scheduler = sdd.Scheduler.from_config(pipe.scheduler.config, solver=solver, grid=grid,
                                                       solver_options=opts)
            last = {}
            step = pipe.scheduler.step

            def recording_step(*a, step=step, last=last, **k):
                out = step(*a, **k)
                last["x"] = out.prev_sample
                return out

            pipe.scheduler.step = recording_step
            pipe(batch_size=SHAPE[0], generator=torch.Generator().manual_seed(7), num_inference_steps=6,
                 output_type="np")
            g = torch.Generator().manual_seed(7)
            noise = randn_tensor(SHAPE, generator=g)
            with torch.no_grad():
                ref = sd.sample(sdd.model_from_diffusers(unet, pipe.scheduler), SHAPE, x_T=noise, generator=g,
                                **pipe.scheduler.sample_kwargs())
            rel = float((ref.x - last["x"]).abs().max() / ref.x.abs().max())
            print(f"grid={grid!s:7s} {solver:16s} nfe={ref.stats.nfe:3d} "
                  f"timesteps={len(pipe.scheduler.timesteps):3d} relative difference {rel:.1e}")
            results.setdefault(str(grid or "leading (config)"), []).append(rel)
            if not rel < 1e-5 or ref.stats.nfe != len(pipe.scheduler.timesteps):
                raise SystemExit(f"{solver} on {grid}: the pipeline differs from sd.sample ({rel:.1e})")
    plot(fixed, results)


def plot(solvers: list[str], results: dict[str, list[float]]) -> None:
    """Relative difference pipeline vs sd.sample per solver (a floor of 1e-9 shows exact zeros)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot")
        return
    fig, ax = plt.subplots(figsize=(9, 4))
    width = 0.4
    for k, (grid, rels) in enumerate(results.items()):
        xs = [i + (k - 0.5) * width for i in range(len(solvers))]
        ax.bar(xs, [max(r, 1e-9) for r in rels], width=width, label=f"grid: {grid}")
    ax.set_yscale("log")
    ax.set_xticks(range(len(solvers)), solvers, rotation=60, ha="right", fontsize=8)
    ax.set_ylabel("max |pipeline - sd.sample| / max |x|")
    ax.set_title("sdediff solvers inside an unmodified DDPMPipeline (float32; 1e-9 = bitwise equal)")
    ax.legend()
    fig.tight_layout()
    fig.savefig("diffusers_pipeline.png", dpi=120)
    print("wrote diffusers_pipeline.png")


if __name__ == "__main__":
    main()
