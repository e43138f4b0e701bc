"""Winograd F(4x4, 3x3) against F.conv2d, one convolution at a time: the layer shapes of the cifar U-Net (and a
3-channel input layer, which zoo.winograd leaves direct), float32 on the CPU, channels-last on both sides.

    OMP_NUM_THREADS=2 python benchmarks/bench_winograd.py [--batch 8] [--repeats 7]

Prints a markdown table: milliseconds per call (median), the speed ratio, and each side's max abs error against a
float64 F.conv2d. The first call of each shape compiles the transforms (not timed).
"""
from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from zoo.bench import median_iqr, timed
from zoo.winograd import compiled_winograd_conv2d, transform_weight

#: (C_in, C_out, H = W): the cifar U-Net's 3x3 convolutions, and its 3-channel conv_in.
SHAPES = [(128, 128, 32), (256, 128, 32), (384, 128, 32), (128, 256, 16), (256, 256, 16), (512, 256, 16),
          (256, 256, 8), (256, 256, 4), (3, 128, 32)]


def median_ms(fn, repeats: int) -> float:
    fn()
    cpu = torch.device("cpu")
    return median_iqr([timed(fn, cpu) for _ in range(repeats)])[0] * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch}, float32\n")
    print("| C_in -> C_out | size | F.conv2d ms | Winograd ms | speed ratio | error F.conv2d | error Winograd |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    with torch.inference_mode():
        for c_in, c_out, size in SHAPES:
            x = torch.randn(args.batch, c_in, size, size).contiguous(memory_format=torch.channels_last)
            weight = (torch.randn(c_out, c_in, 3, 3) / (9 * c_in) ** 0.5).contiguous(memory_format=torch.channels_last)
            bias = torch.randn(c_out)
            u = transform_weight(weight)
            exact = F.conv2d(x.double(), weight.double(), bias.double(), padding=1)
            direct_err = (F.conv2d(x, weight, bias, padding=1) - exact).abs().max().item()
            wino_err = (compiled_winograd_conv2d(x, u, bias, 1) - exact).abs().max().item()
            direct = median_ms(lambda: F.conv2d(x, weight, bias, padding=1), args.repeats)
            wino = median_ms(lambda: compiled_winograd_conv2d(x, u, bias, 1), args.repeats)
            print(f"| {c_in} -> {c_out} | {size}x{size} | {direct:.2f} | {wino:.2f} | {direct / wino:.2f} | "
                  f"{direct_err:.1e} | {wino_err:.1e} |", flush=True)


if __name__ == "__main__":
    main()
