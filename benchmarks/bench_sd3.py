"""zoo's MMDiT against diffusers' SD3Transformer2DModel in the same run: one transformer forward at 512x512.

The architecture is SD3-medium's (width 1536, 24 heads of 64, the 192x192 position table, the real context of
77 + 256 tokens of 4096 channels), with ``--layers`` blocks instead of 24 so that a CPU run takes seconds (the
cost is linear in the blocks: every block is the same size; the last one is ``context_pre_only`` in both). Both
sides hold the same random weights and get the same batch: a 512x512 image is a 64x64 latent, 1024 patch tokens
beside the 333 text tokens. A first untimed call warms the kernels; then the calls alternate, so that load from
other processes hits both alike, and the best of ``--repeats`` counts. ratio = diffusers time / zoo time
(> 1: zoo is faster).

    python benchmarks/bench_sd3.py                        # 4 blocks, batch 1, float32, CPU, 3 repeats
    python benchmarks/bench_sd3.py --layers 24 --device cuda --dtype bfloat16 --batch 2
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

CHECKPOINTS = Path(__file__).resolve().parents[1] / "tests" / "checkpoints"
CONFIG = CHECKPOINTS / "stabilityai__stable-diffusion-3-medium-diffusers" / "transformer" / "config.json"


def pair(layers: int, device: str, dtype: torch.dtype):
    from diffusers import SD3Transformer2DModel

    from zoo.plugins.sd3.mmdit import MMDiT, MMDiTConfig

    config = {k: v for k, v in json.loads(CONFIG.read_text()).items() if not k.startswith("_")}
    config["num_layers"] = layers
    torch.manual_seed(0)
    ref = SD3Transformer2DModel(**config).eval()
    ours = MMDiT(MMDiTConfig.from_dict(config)).eval()
    ours.load_state_dict(ref.state_dict())
    return ours.to(device, dtype), ref.to(device, dtype)


def timed(fn, device: str) -> float:
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--size", type=int, default=512, help="image side in pixels (latent = size / 8)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    ours, ref = pair(args.layers, args.device, dtype)
    gen = torch.Generator().manual_seed(0)
    side = args.size // 8
    x = torch.randn(args.batch, 16, side, side, generator=gen).to(args.device, dtype)
    c = torch.randn(args.batch, 333, 4096, generator=gen).to(args.device, dtype)
    y = torch.randn(args.batch, 2048, generator=gen).to(args.device, dtype)
    t = torch.full((args.batch,), 500.0, device=args.device)
    with torch.inference_mode():
        run_ours = lambda: ours(x, t, c, y)  # noqa: E731
        run_ref = lambda: ref(hidden_states=x, encoder_hidden_states=c, pooled_projections=y, timestep=t)  # noqa: E731
        diff = (run_ours().float() - run_ref().sample.float()).abs().max().item()  # also the warm-up
        best = {"zoo": float("inf"), "diffusers": float("inf")}
        for _ in range(args.repeats):
            best["zoo"] = min(best["zoo"], timed(run_ours, args.device))
            best["diffusers"] = min(best["diffusers"], timed(run_ref, args.device))
    cuda = args.device.startswith("cuda")
    device = torch.cuda.get_device_name() if cuda else f"CPU ({torch.get_num_threads()} threads)"
    print(f"SD3 MMDiT forward, {args.size}x{args.size}, {args.layers} of 24 blocks, batch {args.batch}, {args.dtype}, "
          f"{device}")
    ratio = best["diffusers"] / best["zoo"]
    print(f"  zoo {best['zoo']:.3f} s   diffusers {best['diffusers']:.3f} s   ratio {ratio:.2f}"
          f"   max |diff| {diff:.2e}")


if __name__ == "__main__":
    main()
