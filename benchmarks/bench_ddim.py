"""ddim-cifar sampling throughput: zoo against diffusers' DDIMPipeline, same weights, same noise, same run.

    python benchmarks/bench_ddim.py                                   # CPU, fp32, batch 16, 50 steps
    python benchmarks/bench_ddim.py --device cuda --dtype fp16 bf16 fp32 --batch 256 --steps 50

Prints a markdown table (device, dtype, batch, steps, images/s for both, ratio) to paste into BENCHMARKS.md.
The weights are random, with the architecture of google/ddpm-cifar10-32: speed does not depend on their values.
"""
from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import torch

import zoo
from zoo.plugins.ddpm import PUBLISHED_CONFIGS

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({platform.machine()}, {torch.get_num_threads()} threads)"


def best_time(fn, device: torch.device, repeats: int) -> float:
    """Best wall time of ``repeats`` runs after one warm-up, synchronising the GPU around each."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        best = min(best, time.perf_counter() - start)
    return best


def write_fixture(folder: Path) -> None:
    """Random weights for the cifar10-32 architecture, saved by diffusers in the repo's root layout."""
    from diffusers import UNet2DModel

    unet_cfg, sched_cfg = PUBLISHED_CONFIGS["google/ddpm-cifar10-32"]
    torch.manual_seed(0)
    UNet2DModel.from_config(unet_cfg).save_pretrained(folder)
    (folder / "scheduler_config.json").write_text(json.dumps({"_class_name": "DDPMScheduler", **sched_cfg}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", nargs="+", default=["fp32"], choices=list(DTYPES))
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    device = torch.device(args.device)
    from diffusers import DDIMPipeline, DDIMScheduler, UNet2DModel

    print(f"device: {device_name(device)}; torch {torch.__version__}")
    print("| device | dtype | batch | steps | zoo images/s | diffusers images/s | zoo / diffusers |")
    print("|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        write_fixture(folder)
        scheduler = DDIMScheduler.from_config(json.loads((folder / "scheduler_config.json").read_text()))
        for name in args.dtype:
            dtype = DTYPES[name]
            pipe = zoo.create("ddim-cifar", weights=folder, device=device, dtype=dtype)
            reference = DDIMPipeline(UNet2DModel.from_pretrained(folder).to(device, dtype), scheduler)
            reference.set_progress_bar_config(disable=True)
            noise = torch.randn(args.batch, 3, 32, 32, device=device, dtype=dtype)

            def run_zoo():
                pipe.sample(args.batch, steps=args.steps, noise=noise, progress=False)

            def run_reference():
                reference(batch_size=args.batch, num_inference_steps=args.steps, eta=0.0, output_type="np",
                          generator=torch.Generator(device).manual_seed(0))

            with torch.inference_mode():
                t_zoo = best_time(run_zoo, device, args.repeats)
                t_ref = best_time(run_reference, device, args.repeats)
            print(f"| {device_name(device)} | {name} | {args.batch} | {args.steps} | {args.batch / t_zoo:.1f} | "
                  f"{args.batch / t_ref:.1f} | {t_ref / t_zoo:.2f} |")


if __name__ == "__main__":
    main()
