"""Images/s of ``zoo.distributed.sample_to_dir`` at world sizes 1 and 2 (gloo on the CPU), and its overhead
against a plain ``pipe.sample`` loop that writes nothing.

    python benchmarks/bench_distributed.py [--model ddpm-digits] [-n 512] [--batch 64] [--steps 10] [--threads 1]
    python benchmarks/bench_distributed.py --model ddim-cifar --weights DIR --device cuda --dtype bf16 \\
        --batch 256 --steps 50 -n 2048 --worlds 1          # GPU: images/s and the projected 50k FID run

Each process uses ``--threads`` intra-op threads, so world size 2 uses twice the cores of world size 1: on a
machine with fewer free cores than processes the speed-up cannot show. The plain loop draws the same
per-sample noise (``zoo.noise.CounterNoise``) in the same batches, so the difference is the
distributed path's own cost: the sampler wrapper, uint8 conversion, shard writes, barriers, manifest.
Prints one JSON line per measurement (best of ``--repeats``).
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import zoo
from zoo.distributed import free_port, sample_to_dir, torchrun_environment
from zoo.noise import CounterNoise


def _create(args):
    return zoo.create(args.model, weights=args.weights, device=args.device, dtype=args.dtype)


def plain_loop(pipe, args) -> float:
    """Seconds for n samples with ``pipe.sample`` in batches, nothing written."""
    start = time.perf_counter()
    for b0 in range(0, args.n, args.batch):
        idx = list(range(b0, min(b0 + args.batch, args.n)))
        noise = CounterNoise(idx, pipe.sample_shape, seed=0, device=pipe.device, dtype=torch.float32)
        x = pipe.sample(len(idx), noise=noise.draw(), steps=args.steps, progress=False)
        x.cpu()
    if pipe.device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def _worker(rank: int, world: int, port: int, args, out: str, results) -> None:
    torch.set_num_threads(args.threads)
    torchrun_environment(rank, world, port)
    dist.init_process_group("gloo")
    try:
        pipe = _create(args)
        pipe.sample(2, steps=2, progress=False)  # warm-up, as in the single-process runs
        dist.barrier()
        start = time.perf_counter()
        sample_to_dir(pipe, args.n, out, batch_size=args.batch, shard_size=args.shard, steps=args.steps,
                      progress=False)
        if rank == 0:
            results.put(time.perf_counter() - start)
    finally:
        dist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="ddpm-digits")
    parser.add_argument("--weights")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("-n", type=int, default=512)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--shard", type=int, default=128)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--worlds", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=2, help="best of this many runs of each (default 2)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"cpu ({os.cpu_count()} cores)"
    common = {"model": args.model, "n": args.n, "batch": args.batch, "steps": args.steps, "dtype": args.dtype,
              "threads_per_process": args.threads, "device": device}

    pipe = _create(args)
    pipe.sample(2, steps=2, progress=False)  # warm-up
    plain = min(plain_loop(pipe, args) for _ in range(args.repeats))
    print(json.dumps({**common, "run": "plain pipe.sample loop", "seconds": round(plain, 3),
                      "images_per_s": round(args.n / plain, 2)}), flush=True)
    if 1 in args.worlds:
        one = float("inf")
        for _ in range(args.repeats):
            with tempfile.TemporaryDirectory() as out:
                start = time.perf_counter()
                sample_to_dir(pipe, args.n, out, batch_size=args.batch, shard_size=args.shard, steps=args.steps,
                              progress=False)
                one = min(one, time.perf_counter() - start)
        print(json.dumps({**common, "run": "sample_to_dir, 1 process", "seconds": round(one, 3),
                          "images_per_s": round(args.n / one, 2),
                          "overhead_vs_plain_pct": round(100 * (one - plain) / plain, 1),
                          "projected_50k_minutes": round(50000 / (args.n / one) / 60, 1)}), flush=True)
    for world in (w for w in args.worlds if w > 1):
        ctx = mp.get_context("spawn")
        results = ctx.Queue()
        seconds = float("inf")
        for _ in range(args.repeats):
            with tempfile.TemporaryDirectory() as out:
                mp.spawn(_worker, args=(world, free_port(), args, out, results), nprocs=world, join=True)
                seconds = min(seconds, results.get())
        print(json.dumps({**common, "run": f"sample_to_dir, {world} processes (gloo)", "seconds": round(seconds, 3),
                          "images_per_s": round(args.n / seconds, 2),
                          "speedup_vs_plain": round(plain / seconds, 2)}), flush=True)


if __name__ == "__main__":
    main()
