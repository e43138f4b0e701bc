"""Winograd F(4x4, 3x3) against F.conv2d, one convolution at a time: the layer shapes of the cifar U-Net (and a
3-channel input layer, which zoo.winograd leaves direct), float32 on the CPU, channels-last on both sides.

    OMP_NUM_THREADS=2 python benchmarks/bench_winograd.py [--batch 8] [--repeats 11]

Prints a markdown table: milliseconds per call (median, the three timed in turn each round), the speed ratios, for
Winograd's 36 products through oneDNN (what ``WinogradConv2d`` runs in float32) and through ``torch.bmm`` (MKL), and
max abs errors against a float64 F.conv2d. The first call of each shape compiles the transforms (not timed).
"""
from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from zoo import fast
from zoo.bench import alternating_medians
from zoo.winograd import pack_weight, tile_count, transform_weight, winograd_conv2d

#: (C_in, C_out, H = W): the cifar U-Net's 3x3 convolutions, and its 3-channel conv_in.
SHAPES = [(128, 128, 32), (256, 128, 32), (384, 128, 32), (128, 256, 16), (256, 256, 16), (512, 256, 16),
          (256, 256, 8), (256, 256, 4), (3, 128, 32)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=11)
    args = parser.parse_args()
    torch.manual_seed(0)
    retained = fast.retain_freed_memory()  # as `zoo bench` runs
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch}, float32, freed memory "
          f"{'retained' if retained else 'returned'}\n")
    print("| C_in -> C_out | size | F.conv2d ms | Winograd ms | speed ratio | products by torch.bmm ms | ratio | "
          "error F.conv2d | error Winograd |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    with torch.inference_mode():
        for c_in, c_out, size in SHAPES:
            x = torch.randn(args.batch, c_in, size, size).contiguous(memory_format=torch.channels_last)
            weight = (torch.randn(c_out, c_in, 3, 3) / (9 * c_in) ** 0.5).contiguous(memory_format=torch.channels_last)
            bias = torch.randn(c_out)
            u = transform_weight(weight)
            packed = pack_weight(u, tile_count(x.shape, 1))
            fns = {"direct": lambda: F.conv2d(x, weight, bias, padding=1),
                   "onednn": lambda: winograd_conv2d(x, u, bias, 1, packed=packed, compiled=True),
                   "bmm": lambda: winograd_conv2d(x, u, bias, 1, compiled=True)}
            exact = F.conv2d(x.double(), weight.double(), bias.double(), padding=1)
            direct_err = (fns["direct"]() - exact).abs().max().item()
            wino_err = (fns["onednn"]() - exact).abs().max().item()
            fns["bmm"]()  # the other two ran above
            ms = {key: t * 1e3 for key, t in alternating_medians(fns, torch.device("cpu"), args.repeats).items()}
            print(f"| {c_in} -> {c_out} | {size}x{size} | {ms['direct']:.2f} | {ms['onednn']:.2f} | "
                  f"{ms['direct'] / ms['onednn']:.2f} | {ms['bmm']:.2f} | {ms['direct'] / ms['bmm']:.2f} | "
                  f"{direct_err:.1e} | {wino_err:.1e} |", flush=True)


if __name__ == "__main__":
    main()
