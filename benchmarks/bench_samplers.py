"""How much time the samplers themselves cost, and zoo's ddim-cifar against diffusers' loop on the same weights.

    OMP_NUM_THREADS=1 python benchmarks/bench_samplers.py [--threads 1] [--batch 64] [--e2e-batch 4] [--steps 20]

1. Sampler overhead per step: each sampler driven by a zero-cost D (the identity, so every cost left is the
   sampler's own tensor arithmetic), at the CIFAR shape (batch, 3, 32, 32); then the same through
   ``DiffusionPipeline.sample`` with a zero-cost Denoiser (adds the noise draw, the eps -> x0 conversion, the
   NFE counter). Both as a percentage of one forward of the cifar UNet at that batch (target <= 5%).
2. End to end: ``zoo.create("ddim-cifar", weights=tmpdir)`` sampling with dpmpp-2m, against the loop of
   diffusers' pipelines (``scale_model_input``, UNet, ``step``) with DPMSolverMultistepScheduler(dpmsolver++,
   order 2) on diffusers' UNet2DModel holding the same (random) weights, same noise, same trailing grid,
   timed in the same run; the outputs are compared too.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import torch

import zoo
from zoo.diffusion import DiffusionPipeline
from zoo.registry import Denoiser, DiscreteVPSchedule

CHECKPOINT = Path(os.environ.get("ZOO_SHARED", "/work/shared")) / "checkpoints" / "google__ddpm-cifar10-32"
SAMPLERS = ["ddim", "ddpm", "euler", "euler-ancestral", "heun", "dpmpp-2m", "flow-euler", "ode-rk45"]


def best_of(fn, repeats: int) -> float:
    """Minimum wall time of ``repeats`` calls (after one warm-up call), seconds."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


class ZeroCost(Denoiser):
    """An eps model that predicts zeros instantly: what is left of sample()'s time is the pipeline's."""

    prediction = "eps"

    def __init__(self, schedule):
        super().__init__()
        self.schedule = schedule
        self.anchor = torch.nn.Parameter(torch.zeros(()), requires_grad=False)

    def forward(self, x_t, t, **cond):
        return torch.zeros_like(x_t)


def overhead_table(batch: int, steps: int, unet_forward_s: float, schedule) -> None:
    x = torch.randn(batch, 3, 32, 32)
    sigmas = schedule.sigmas(steps)
    pipe = DiffusionPipeline(ZeroCost(schedule), (3, 32, 32))
    print(f"\n1. sampler overhead, batch {batch}, {steps} steps; UNet forward at batch {batch}: "
          f"{unet_forward_s * 1e3:.0f} ms")
    print(f"{'sampler':<16} {'NFE':>4} {'sampler ms/NFE':>15} {'% of UNet':>10} {'pipeline ms/NFE':>16} "
          f"{'% of UNet':>10}")
    for name in SAMPLERS:
        impl = zoo.get_sampler(name)
        calls = []

        def identity(x, sigma):
            calls.append(1)
            return x

        def run_raw():
            calls.clear()
            impl(identity, x, sigmas, signal_scale=schedule.signal_scale, callback=None,
                 noise_sampler=(lambda s, t: torch.randn_like(x)) if impl.stochastic else None)

        raw = best_of(run_raw, 3) / len(calls)
        full = best_of(lambda: pipe.sample(batch, steps=steps, sampler=name, progress=False), 3) / pipe.last_nfe
        print(f"{name:<16} {pipe.last_nfe:>4} {raw * 1e3:>15.2f} {100 * raw / unet_forward_s:>9.2f}% "
              f"{full * 1e3:>16.2f} {100 * full / unet_forward_s:>9.2f}%")


def save_random_cifar(folder: Path, seed: int = 0):
    """diffusers' UNet2DModel from the checkpoint's config with random weights, saved in Hub layout."""
    from diffusers import UNet2DModel

    torch.manual_seed(seed)
    unet = UNet2DModel.from_config(json.loads((CHECKPOINT / "config.json").read_text())).eval()
    unet.save_pretrained(folder, safe_serialization=True)
    shutil.copy(CHECKPOINT / "scheduler_config.json", folder / "scheduler_config.json")
    return unet


def end_to_end(batch: int, steps: int) -> None:
    from diffusers import DPMSolverMultistepScheduler

    with tempfile.TemporaryDirectory() as tmp:
        ref_unet = save_random_cifar(Path(tmp))
        pipe = zoo.create("ddim-cifar", weights=tmp, device="cpu")
    scheduler = DPMSolverMultistepScheduler.from_config(
        json.loads((CHECKPOINT / "scheduler_config.json").read_text()), algorithm_type="dpmsolver++",
        solver_order=2, timestep_spacing="trailing")
    noise = torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(0))

    @torch.inference_mode()
    def diffusers_loop():
        scheduler.set_timesteps(steps)
        x = noise * scheduler.init_noise_sigma
        for t in scheduler.timesteps:
            eps = ref_unet(scheduler.scale_model_input(x, t), t).sample
            x = scheduler.step(eps, t, x).prev_sample
        return ((x + 1) / 2).clamp(0, 1)

    def zoo_sample():
        return pipe.sample(batch, steps=steps, sampler="dpmpp-2m", spacing="trailing", noise=noise, progress=False)

    ours, theirs = zoo_sample(), diffusers_loop()
    t_zoo, t_ref = best_of(zoo_sample, 2), best_of(diffusers_loop, 2)
    print(f"\n2. ddim-cifar (random weights), dpmpp-2m, {steps} steps, trailing grid, batch {batch}")
    print(f"{'':<44} {'s/batch':>8} {'ms/NFE':>8}")
    print(f"{'zoo: pipe.sample(sampler=dpmpp-2m)':<44} {t_zoo:>8.2f} {1e3 * t_zoo / pipe.last_nfe:>8.0f}")
    print(f"{'diffusers: UNet2DModel + DPMSolverMultistep':<44} {t_ref:>8.2f} {1e3 * t_ref / steps:>8.0f}")
    print(f"ratio zoo / diffusers: {t_zoo / t_ref:.3f}; NFE zoo {pipe.last_nfe}, diffusers {steps}; "
          f"max |image difference| {float((ours - theirs).abs().max()):.2e}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch", type=int, default=64, help="batch of the overhead measurement")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--e2e-batch", type=int, default=4, help="batch of the end-to-end comparison")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, CPU, {torch.get_num_threads()} thread(s), float32; {vars(args)}")

    schedule = DiscreteVPSchedule.from_scheduler_config(json.loads((CHECKPOINT / "scheduler_config.json").read_text()))
    unet = zoo.create("ddim-cifar", pretrained=False, device="cpu").denoiser
    x, t = torch.randn(args.batch, 3, 32, 32), torch.full((args.batch,), 500.0)
    with torch.inference_mode():
        unet_forward = best_of(lambda: unet(x, t), 1)
    del unet
    overhead_table(args.batch, args.steps, unet_forward, schedule)
    end_to_end(args.e2e_batch, args.steps)


if __name__ == "__main__":
    main()
