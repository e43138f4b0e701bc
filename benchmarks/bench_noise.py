"""Per-sample noise: the old scheme (one torch.Generator per sample, one draw per sample per step) against
zoo.noise's counter-based Philox (the whole batch in one call), in draws per second.

    OMP_NUM_THREADS=1 python benchmarks/bench_noise.py [--threads 1] [--shape 3 32 32] [--batches 1 8 64 256]
    (the CPU, then CUDA when a GPU is there, with its name; --device cpu or cuda for one)

A draw is one sample's ``(C, H, W)`` standard-normal tensor; a step of a stochastic sampler draws ``batch`` of
them. ``setup`` is what a ``pipe.sample`` call pays once before its first draw (the old scheme seeds one
generator per sample). Both make float32; times are the best of ``--repeats`` runs of ``--seconds`` each.
"""
from __future__ import annotations

import argparse
import os
import time

import torch

from zoo.noise import CounterNoise, run_seed


class GeneratorPerSample:
    """The old scheme, as zoo.diffusion drew noise before zoo.noise: generator i seeded by the i-th draw from the
    user's generator; each draw stacks one ``randn`` per generator."""

    def __init__(self, n: int, shape: tuple[int, ...], *, generator: torch.Generator, device: torch.device):
        seeds = torch.randint(0, 2**62, (n,), generator=generator)
        self.generators = [torch.Generator(device).manual_seed(int(s)) for s in seeds]
        self.shape, self.device = shape, device

    def __call__(self) -> torch.Tensor:
        return torch.stack([torch.randn(self.shape, generator=g, device=self.device) for g in self.generators])


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def per_call(fn, device: torch.device, seconds: float, repeats: int) -> float:
    """Best over ``repeats`` of the mean seconds per call of ``fn`` over about ``seconds``."""
    fn()
    _sync(device)
    best = float("inf")
    for _ in range(repeats):
        calls, start = 0, time.perf_counter()
        while True:
            fn()
            calls += 1
            if calls % 4 == 0:
                _sync(device)
                elapsed = time.perf_counter() - start
                if elapsed >= seconds:
                    break
        best = min(best, elapsed / calls)
    return best


def bench(device: torch.device, shape: tuple[int, ...], batches: list[int], seconds: float, repeats: int) -> None:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else \
        f"cpu ({torch.get_num_threads()} thread(s) of {os.cpu_count()} cores)"
    print(f"\n{name}, sample shape {shape}, float32\n")
    print("| batch | old draws/s | new draws/s | new / old | old setup ms | new setup ms |")
    print("|---:|---:|---:|---:|---:|---:|")
    for n in batches:
        old_setup = per_call(lambda: GeneratorPerSample(n, shape, generator=torch.Generator().manual_seed(0),
                                                        device=device), device, seconds / 4, repeats)
        new_setup = per_call(lambda: CounterNoise(torch.arange(n), shape, device=device,
                                                  seed=run_seed(torch.Generator().manual_seed(0))),
                             device, seconds / 4, repeats)
        old = GeneratorPerSample(n, shape, generator=torch.Generator().manual_seed(0), device=device)
        new = CounterNoise(torch.arange(n), shape, seed=0, device=device)
        t_old, t_new = per_call(old, device, seconds, repeats), per_call(new, device, seconds, repeats)
        print(f"| {n} | {n / t_old:,.0f} | {n / t_new:,.0f} | {t_old / t_new:.2f} | {1e3 * old_setup:.3f} | "
              f"{1e3 * new_setup:.3f} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="all", help="cpu, cuda or all (default: all available)")
    parser.add_argument("--threads", type=int, default=1, help="CPU intra-op threads (default 1)")
    parser.add_argument("--shape", type=int, nargs="+", default=[3, 32, 32])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 64, 256])
    parser.add_argument("--seconds", type=float, default=1.0, help="time per measurement (default 1)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    devices = ["cpu", "cuda"] if args.device == "all" else [args.device]
    for device in devices:
        if device.startswith("cuda") and not torch.cuda.is_available():
            print("\nno CUDA device: skipped")
            continue
        bench(torch.device(device), tuple(args.shape), args.batches, args.seconds, args.repeats)


if __name__ == "__main__":
    main()
