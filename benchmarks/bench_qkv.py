"""Fused against separate q/k/v projections, one attention input at a time: the shapes of the zoo families that
keep three projections (DiT, SD3's MMDiT, T5) beside the fused ones timm and open_clip already use (ViT, CLIP).

    OMP_NUM_THREADS=2 python benchmarks/bench_qkv.py [--device cpu] [--dtype float32] [--repeats 25]

"separate" is three ``F.linear`` calls with (D, D) weights, as diffusers' ``to_q/to_k/to_v`` run; "fused" is one
``F.linear`` with the (3D, D) concatenated weight, then a split into three views. The two sides alternate call by
call so a busy machine slows both alike; the ratio (separate ms / fused ms, above 1: fusing is faster) is the
number to read. Whether zoo fuses the projections of a family at load time is decided by this table on the
device in question: a fused weight changes the state_dict every other library reads.
"""
from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from zoo.bench import alternating_medians

#: (what, model width D, tokens M = batch x sequence, bias)
SHAPES = [
    ("vit-b16, batch 32", 768, 32 * 197, True),
    ("clip-vit-b32, batch 32", 768, 32 * 50, True),
    ("DiT-XL/2-256, batch 2", 1152, 2 * 256, True),
    ("sd3-medium MMDiT 1024px, batch 1", 1536, 4096 + 333, True),
    ("T5-XXL encoder, 256 tokens", 4096, 256, False),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=("float32", "float16", "bfloat16"))
    parser.add_argument("--repeats", type=int, default=25)
    args = parser.parse_args()
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"{name}, torch {torch.__version__}, {args.dtype}, median of {args.repeats} alternating calls\n")
    print("| shapes of | D | tokens | separate ms | fused ms | separate / fused |")
    print("|---|---:|---:|---:|---:|---:|")
    torch.manual_seed(0)
    with torch.inference_mode():
        for what, width, tokens, has_bias in SHAPES:
            x = torch.randn(tokens, width, device=device, dtype=dtype)
            weights = [torch.randn(width, width, device=device, dtype=dtype) / width ** 0.5 for _ in range(3)]
            biases = [torch.randn(width, device=device, dtype=dtype) if has_bias else None for _ in range(3)]
            fused_weight = torch.cat(weights)
            fused_bias = torch.cat(biases) if has_bias else None

            def separate():
                return [F.linear(x, w, b) for w, b in zip(weights, biases)]

            def fused():
                return F.linear(x, fused_weight, fused_bias).chunk(3, dim=-1)

            separate(), fused()  # warm-up: allocator, GEMM kernel choice
            medians = alternating_medians({separate: separate, fused: fused}, device, args.repeats)
            sep_ms, fused_ms = (medians[fn] * 1e3 for fn in (separate, fused))
            print(f"| {what} | {width} | {tokens} | {sep_ms:.2f} | {fused_ms:.2f} | {sep_ms / fused_ms:.2f} |",
                  flush=True)


if __name__ == "__main__":
    main()
