"""DiT-XL/2 forward passes: zoo's DiT against diffusers' DiTTransformer2DModel in the same run, same weights.

Both hold the full-size DiT-XL/2-256 architecture (random weights, copied from diffusers' model into zoo's with the
real file's names), get the same latents, timesteps and labels, and run under ``inference_mode``. A first call
of each is the warm-up (and the max-abs-difference check); the calls then alternate so that load from other
processes hits both alike, and the best of ``--repeats`` counts. ratio = diffusers time / zoo time (> 1: zoo is
faster).

    python benchmarks/bench_dit.py                                     # batch 1 and 8, CPU, float32
    python benchmarks/bench_dit.py --device cuda --dtype bfloat16 --batch 1 8 32
"""
from __future__ import annotations

import argparse
import time

import diffusers
import torch
from diffusers import DiTTransformer2DModel

import zoo


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - start


def bench(batch: int, repeats: int, device: str, dtype: torch.dtype, ours, ref) -> dict:
    gen = torch.Generator().manual_seed(batch)
    x = torch.randn(batch, 4, 32, 32, generator=gen).to(device, dtype)
    t = torch.randint(0, 1000, (batch,), generator=gen).to(device)
    y = torch.randint(0, 1000, (batch,), generator=gen).to(device)
    with torch.inference_mode():
        diff = float((ours(x, t, y).float() - ref(x, timestep=t, class_labels=y).sample.float()).abs().max())
        zoo_s = ref_s = float("inf")
        for _ in range(repeats):
            zoo_s = min(zoo_s, _timed(lambda: ours(x, t, y)))
            ref_s = min(ref_s, _timed(lambda: ref(x, timestep=t, class_labels=y)))
    return {"batch": batch, "zoo": zoo_s, "ref": ref_s, "ratio": ref_s / zoo_s, "diff": diff}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    args = parser.parse_args()
    dtype = getattr(torch, args.dtype)
    pipe = zoo.create("dit-xl-2-256", pretrained=False, device=args.device, dtype=dtype)
    ours = pipe.denoiser.transformer
    entry = zoo.get_entry("dit-xl-2-256")
    config = {k: v for k, v in entry.component("transformer").config.__dict__.items()}
    ref = DiTTransformer2DModel(**{k: config[k] for k in (
        "num_attention_heads", "attention_head_dim", "in_channels", "out_channels", "num_layers", "patch_size",
        "sample_size", "num_embeds_ada_norm", "activation_fn", "attention_bias", "norm_type",
        "norm_elementwise_affine", "norm_eps")}).to(args.device, dtype).eval()
    with torch.no_grad():  # off the zero init of adaLN-Zero, so that the difference column means something
        gen = torch.Generator().manual_seed(0)
        for p in ref.parameters():
            p.add_(0.02 * torch.randn(p.shape, generator=gen).to(p))
    ours.load_state_dict(ref.state_dict())
    print(f"DiT-XL/2-256 forward, {args.device}, {args.dtype}, torch {torch.__version__}, diffusers "
          f"{diffusers.__version__}, {torch.get_num_threads()} thread(s), best of {args.repeats}")
    print("| batch | zoo s | diffusers s | diffusers / zoo | max abs diff |")
    print("|---:|---:|---:|---:|---:|")
    for batch in args.batch:
        r = bench(batch, args.repeats, args.device, dtype, ours, ref)
        print(f"| {r['batch']} | {r['zoo']:.3f} | {r['ref']:.3f} | {r['ratio']:.3f} | {r['diff']:.1e} |")


if __name__ == "__main__":
    main()
