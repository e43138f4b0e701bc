"""Images/s of ``zoo.embedding.embed_to_dir`` (``zoo embed --out DIR``) at world sizes 1 and 2 (gloo on the CPU)
and with DataLoader workers, against a plain in-process loop (``encode(preprocess(paths))`` in batches, nothing
written).

    python benchmarks/bench_embed.py [--model vit-ti16 --random] [-n 256] [--batch 32] [--workers 0 2] [--threads 1]
    python benchmarks/bench_embed.py --model clip-vit-b32 --device cuda --dtype bfloat16 -n 4096 --batch 256 \\
        --workers 8 --worlds 1     # GPU: is decoding (the workers) or the network the bottleneck?

The images are random JPEGs of ``--size`` written into a temporary folder (decoding and resizing them is part of
the work, as for real photos). Each process uses ``--threads`` intra-op threads and each worker one, so world
size 2 and workers use more cores: on a machine with fewer free cores the speed-up cannot show. Prints one JSON
line per measurement (best of ``--repeats``).
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from PIL import Image

import zoo
from zoo.distributed import free_port, torchrun_environment
from zoo.embedding import embed_to_dir


def _create(args):
    return zoo.create(args.model, pretrained=not args.random, device=args.device, dtype=args.dtype)


def write_images(folder: Path, n: int, size: tuple[int, int]) -> list[str]:
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        path = folder / f"{i:06d}.jpg"
        Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(path, quality=90)
        paths.append(str(path))
    return paths


def plain_loop(model, paths: list[str], batch: int) -> float:
    """Seconds for ``encode(preprocess(paths))`` in batches, in this process, nothing written."""
    method = model.encode_image if hasattr(model, "encode_image") else model.encode
    start = time.perf_counter()
    with torch.inference_mode():
        for b0 in range(0, len(paths), batch):
            method(model.preprocess(paths[b0:b0 + batch])).float().cpu()
    return time.perf_counter() - start


def _worker(rank: int, world: int, port: int, args, images: str, out: str, workers: int, results) -> None:
    torch.set_num_threads(args.threads)
    torchrun_environment(rank, world, port)
    dist.init_process_group("gloo")
    try:
        model = _create(args)
        dist.barrier()
        start = time.perf_counter()
        embed_to_dir(model, images, out, batch_size=args.batch, shard_size=args.shard, workers=workers,
                     progress=False)
        if rank == 0:
            results.put(time.perf_counter() - start)
    finally:
        dist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="vit-ti16")
    parser.add_argument("--random", action="store_true", help="random weights (pretrained=False): no download")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("-n", type=int, default=256)
    parser.add_argument("--size", type=int, nargs=2, default=[240, 320], metavar=("H", "W"))
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--shard", type=int, default=64)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--worlds", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=2, help="best of this many runs of each (default 2)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"cpu ({os.cpu_count()} cores)"
    common = {"model": args.model, "n": args.n, "image_size": args.size, "batch": args.batch, "dtype": args.dtype,
              "threads_per_process": args.threads, "device": device}
    with tempfile.TemporaryDirectory() as images:
        paths = write_images(Path(images), args.n, tuple(args.size))
        model = _create(args)
        plain_loop(model, paths[:args.batch], args.batch)  # warm-up
        plain = min(plain_loop(model, paths, args.batch) for _ in range(args.repeats))
        print(json.dumps({**common, "run": "plain encode(preprocess(paths)) loop", "seconds": round(plain, 3),
                          "images_per_s": round(args.n / plain, 2)}), flush=True)
        for world in args.worlds:
            for workers in args.workers:
                seconds = float("inf")
                for _ in range(args.repeats):
                    with tempfile.TemporaryDirectory() as out:
                        if world == 1:
                            start = time.perf_counter()
                            embed_to_dir(model, images, out, batch_size=args.batch, shard_size=args.shard,
                                         workers=workers, progress=False)
                            seconds = min(seconds, time.perf_counter() - start)
                        else:
                            results = mp.get_context("spawn").Queue()
                            mp.spawn(_worker, args=(world, free_port(), args, images, out, workers, results),
                                     nprocs=world, join=True)
                            seconds = min(seconds, results.get())
                print(json.dumps({**common, "run": f"embed_to_dir, {world} process(es), {workers} worker(s) each",
                                  "seconds": round(seconds, 3), "images_per_s": round(args.n / seconds, 2),
                                  "speedup_vs_plain": round(plain / seconds, 2)}), flush=True)


if __name__ == "__main__":
    main()
