"""oneDNN's packed matmul (zoo.onednn.OneDNNLinear) against nn.Linear's MKL GEMM, one layer at a time: the linear
layers of vit-b16, clip-vit-b32 and swin-t at batch 32, float32 on the CPU.

    OMP_NUM_THREADS=2 python benchmarks/bench_onednn.py [--repeats 9]

Prints a markdown table: milliseconds per call (median, the two alternating call by call), the speed ratio, the
TFLOP/s each reaches, and each side's max abs error against a float64 nn.Linear.
"""
from __future__ import annotations

import argparse
import copy

import torch
from torch import nn

from zoo.bench import alternating_medians
from zoo.onednn import onednn_linear

#: (layer, tokens M, in K, out N)
SHAPES = [
    ("vit-b16 qkv", 32 * 197, 768, 2304), ("vit-b16 fc1", 32 * 197, 768, 3072), ("vit-b16 fc2", 32 * 197, 3072, 768),
    ("clip-vit-b32 fc1", 32 * 50, 768, 3072), ("swin-t stage 1 fc1", 32 * 3136, 96, 384),
    ("swin-t stage 3 fc1", 32 * 196, 384, 1536),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=9)
    args = parser.parse_args()
    torch.manual_seed(0)
    cpu = torch.device("cpu")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, float32\n")
    print("| layer | M x K -> N | MKL ms | oneDNN ms | speed ratio | MKL TFLOP/s | oneDNN TFLOP/s | error MKL "
          "| error oneDNN |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    with torch.inference_mode():
        for what, m, k, n in SHAPES:
            mkl = nn.Linear(k, n)
            packed = copy.deepcopy(mkl)
            onednn_linear(packed)
            x = torch.randn(m, k)
            exact = copy.deepcopy(mkl).double()(x.double())
            errors = [(layer(x).double() - exact).abs().max().item() for layer in (mkl, packed)]
            medians = alternating_medians({layer: (lambda layer=layer: layer(x)) for layer in (mkl, packed)}, cpu,
                                          args.repeats)
            ms = [medians[layer] * 1e3 for layer in (mkl, packed)]
            tflops = [2 * m * k * n / (t / 1e3) / 1e12 for t in ms]
            print(f"| {what} | {m} x {k} -> {n} | {ms[0]:.1f} | {ms[1]:.1f} | {ms[0] / ms[1]:.2f} | {tflops[0]:.3f} | "
                  f"{tflops[1]:.3f} | {errors[0]:.1e} | {errors[1]:.1e} |", flush=True)


if __name__ == "__main__":
    main()
