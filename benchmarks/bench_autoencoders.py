"""zoo's autoencoders against diffusers' in the same run: encode/decode speed, and the memory of a tiled decode.

1. Speed: encode and decode of a batch of 256x256 photos (astronaut, chelsea, ...) with the sd-vae-ft-ema
   (AutoencoderKL) and vqvae-celebahq (VQModel) architectures, random weights, on the CPU. Both sides hold the
   same weights and get the same batch; a first untimed call creates the oneDNN kernels for those shapes (they
   are cached per shape, for both sides alike); then the calls alternate, so that load from other processes hits
   both alike, and the best of ``--repeats`` counts. Encode is the encoder and quant_conv (diffusers'
   ``encode(x).latent_dist`` / ``.latents``); decode is post_quant_conv and the decoder, the VQ one quantising first
   (diffusers' ``decode(z).sample``). ratio = diffusers time / zoo time (> 1: zoo is faster).

2. Memory: a 1024x1024 decode with the SD3 VAE architecture (16 latent channels, float32, batch 1), each case in
   a fresh process: zoo untiled, zoo tiled (its default 512-pixel tiles), diffusers after ``enable_tiling()`` (its
   tile is the config's ``sample_size``, 1024 for SD3, so a 1024x1024 image is decoded in one piece), and with
   ``--full`` also diffusers tiled at zoo's tile size. Memory is the CPU resident set (Linux ``/proc/self/status``):
   the peak (``VmHWM``, reset through ``/proc/self/clear_refs`` just before the decode) minus the resident set
   after the model and its input were built, i.e. the working memory of the decode beyond the weights.
   (``tracemalloc`` cannot see it: torch allocates outside Python's allocator.)

    python benchmarks/bench_autoencoders.py                      # batch 1, 2 repeats, memory at 1024
    python benchmarks/bench_autoencoders.py --batch 2 --repeats 3 --full
    python benchmarks/bench_autoencoders.py --skip-memory
"""
from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import skimage.data
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
CHECKPOINTS = ROOT / "tests" / "checkpoints"
CONFIGS = {
    "sd-vae-ft-ema": CHECKPOINTS / "facebook__DiT-XL-2-256" / "vae" / "config.json",
    "vqvae-celebahq": CHECKPOINTS / "CompVis__ldm-celebahq-256" / "vqvae" / "config.json",
    "sd3-vae": CHECKPOINTS / "stabilityai__stable-diffusion-3-medium-diffusers" / "vae" / "config.json",
}
PHOTOS = (skimage.data.astronaut, skimage.data.chelsea, skimage.data.coffee, skimage.data.rocket)


def _config(name: str) -> dict:
    return {k: v for k, v in json.loads(CONFIGS[name].read_text()).items() if not k.startswith("_")}


def pair(name: str) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(zoo model, diffusers model) of ``name``'s architecture holding the same random weights."""
    import diffusers

    import zoo

    torch.manual_seed(0)
    ours = zoo.create(name, pretrained=False, device="cpu")
    cls = diffusers.VQModel if name.startswith("vq") else diffusers.AutoencoderKL
    ref = cls.from_config(_config(name)).eval()
    ref.load_state_dict(ours.state_dict())
    return ours, ref


def _best(fns: dict, repeats: int) -> dict[str, float]:
    """Each function's best wall time over ``repeats`` rounds, the functions alternating within a round."""
    best = {k: float("inf") for k in fns}
    for _ in range(repeats):
        for key, fn in fns.items():
            start = time.perf_counter()
            fn()
            best[key] = min(best[key], time.perf_counter() - start)
    return best


def bench_speed(name: str, batch: int, size: int, repeats: int) -> list[dict]:
    ours, ref = pair(name)
    photos = [Image.fromarray(PHOTOS[i % len(PHOTOS)]()).resize((size, size), Image.Resampling.BICUBIC)
              for i in range(batch)]
    x = ours.preprocess(photos)
    vq = name.startswith("vq")
    with torch.inference_mode():
        if vq:
            enc = {"zoo": lambda: ours.encode(x), "diffusers": lambda: ref.encode(x).latents}
            latents = ours.encode(x)
            dec = {"zoo": lambda: ours.decode_pixels(latents), "diffusers": lambda: ref.decode(latents).sample}
        else:
            enc = {"zoo": lambda: ours.moments(x), "diffusers": lambda: ref.encode(x).latent_dist}
            latents = ours.posterior(x).mean
            dec = {"zoo": lambda: ours.decode_pixels(latents), "diffusers": lambda: ref.decode(latents).sample}
        enc["diffusers"](), dec["diffusers"]()  # create the kernels for these shapes (shared by both sides)
        rows = []
        for what, fns in (("encode", enc), ("decode", dec)):
            t = _best(fns, repeats)
            rows.append({"model": name, "op": what, "shape": f"{batch}x3x{size}x{size}", "zoo_s": t["zoo"],
                         "diffusers_s": t["diffusers"], "ratio": t["diffusers"] / t["zoo"]})
    return rows


# -- memory, one case per process ------------------------------------------------------------------------------------

MEMORY_CASES = ("zoo-untiled", "zoo-tiled", "diffusers-enable_tiling", "diffusers-tiled-512")


def _rss_kib() -> dict[str, int]:
    text = Path("/proc/self/status").read_text()
    return {k: int(re.search(rf"{k}:\s+(\d+)", text).group(1)) for k in ("VmRSS", "VmHWM")}


def memory_child(case: str, size: int) -> dict:
    """Run one decode in this (fresh) process and report its working memory."""
    torch.manual_seed(0)
    if case.startswith("zoo"):
        import zoo

        vae = zoo.create("sd3-vae", pretrained=False, device="cpu")
        if case == "zoo-tiled":
            vae.enable_tiling()
        decode = vae.decode_pixels
        tile = vae.tile_size if vae.tile_size and size > vae.tile_size else None
    else:
        import diffusers

        ref = diffusers.AutoencoderKL.from_config(_config("sd3-vae")).eval()
        ref.enable_tiling()
        if case == "diffusers-tiled-512":
            ref.tile_sample_min_size, ref.tile_latent_min_size = 512, 64
        decode = lambda z: ref.decode(z).sample  # noqa: E731
        tile = ref.tile_sample_min_size if size > ref.tile_sample_min_size else None
    z = torch.randn(1, 16, size // 8, size // 8, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        before = _rss_kib()["VmRSS"]
        Path("/proc/self/clear_refs").write_text("5")  # reset the peak to the current resident set
        start = time.perf_counter()
        out = decode(z)
        seconds = time.perf_counter() - start
        peak = _rss_kib()["VmHWM"]
    assert out.shape == (1, 3, size, size)
    return {"case": case, "tile": tile, "working_mib": (peak - before) / 1024, "baseline_mib": before / 1024,
            "seconds": seconds}


def bench_memory(cases: list[str], size: int) -> list[dict]:
    rows = []
    for case in cases:
        result = subprocess.run([sys.executable, __file__, "--memory-child", case, "--memory-size", str(size)],
                                capture_output=True, text=True, check=True)
        rows.append(json.loads(result.stdout.strip().splitlines()[-1]))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--memory-size", type=int, default=1024)
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--skip-speed", action="store_true")
    parser.add_argument("--full", action="store_true", help="also diffusers tiled at zoo's tile size (slow)")
    parser.add_argument("--memory-child", choices=MEMORY_CASES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child:
        print(json.dumps(memory_child(args.memory_child, args.memory_size)))
        return

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU, float32")
    if not args.skip_speed:
        print("\n| model | op | batch | zoo (s) | diffusers (s) | ratio |\n|---|---|---|---|---|---|")
        for name in ("sd-vae-ft-ema", "vqvae-celebahq"):
            for r in bench_speed(name, args.batch, args.size, args.repeats):
                print(f"| {r['model']} | {r['op']} | {r['shape']} | {r['zoo_s']:.2f} | {r['diffusers_s']:.2f} | "
                      f"{r['ratio']:.2f} |", flush=True)
    if not args.skip_memory:
        cases = list(MEMORY_CASES if args.full else MEMORY_CASES[:3])
        print(f"\nsd3-vae decode, 1x16x{args.memory_size // 8}x{args.memory_size // 8} latents -> "
              f"{args.memory_size}x{args.memory_size}: working memory (peak RSS - RSS with the model loaded)")
        print("| case | tile (px) | working memory (MiB) | time (s) |\n|---|---|---|---|")
        for r in bench_memory(cases, args.memory_size):
            print(f"| {r['case']} | {r['tile'] or 'none'} | {r['working_mib']:.0f} | {r['seconds']:.1f} |", flush=True)


if __name__ == "__main__":
    main()
