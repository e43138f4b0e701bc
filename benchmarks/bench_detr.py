"""Latency of zoo's detr-r50 against transformers' ``DetrForObjectDetection`` on the same weights, in the same run.

Both hold the real R50 architecture with the same random weights (speed does not depend on their values) and get
the same preprocessed batch of scikit-image photos at the real resolution (shortest edge 800): batch 1 is the
coffee photo (800x1200), batch 4 four photos of different sizes padded to 800x1202. zoo runs with its default
per-image padding policy (backbone per image size, batch invariant) and with ``padding="batch"`` (the reference's
single padded pass); its frozen BatchNorms are folded into the convolutions. Calls alternate so that load from
other processes hits all sides alike; the best of ``--repeats`` counts.

    OMP_NUM_THREADS=1 python benchmarks/bench_detr.py                      # batch 1 and 4, CPU, fp32
    python benchmarks/bench_detr.py --device cuda --dtype bfloat16 --compile  # bf16, CUDA graphs, batch 1
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import skimage.data
import torch

import zoo

PHOTOS = ("coffee", "chelsea", "astronaut", "rocket")


def _best(fn, repeats: int, sync) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile(mode='reduce-overhead') both models (CUDA graphs on a GPU)")
    args = parser.parse_args()
    import transformers
    from transformers import DetrConfig, DetrForObjectDetection

    dtype = getattr(torch, args.dtype)
    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    real = Path(__file__).resolve().parents[1] / "tests" / "checkpoints" / "facebook__detr-resnet-50"
    ref = DetrForObjectDetection(DetrConfig.from_pretrained(real)).eval()
    with tempfile.TemporaryDirectory() as folder:
        ref.save_pretrained(folder)
        (Path(folder) / "preprocessor_config.json").write_text((real / "preprocessor_config.json").read_text())
        det = zoo.create("detr-r50", weights=folder, device=device, dtype=dtype)
    ref = ref.to(device=device, dtype=dtype)
    zoo_fn, ref_fn = det, ref
    if args.compile:
        zoo_fn = torch.compile(det, mode="reduce-overhead")
        ref_fn = torch.compile(ref, mode="reduce-overhead")
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"{name}, {args.dtype}, torch {torch.__version__}, transformers {transformers.__version__}, "
          f"{torch.get_num_threads()} thread(s), best of {args.repeats}{', compiled' if args.compile else ''}")
    print("| batch | input | transformers s | zoo s (per-image) | ratio | zoo s (batch padding) | ratio | "
          "max abs logit diff |")
    print("|---:|---|---:|---:|---:|---:|---:|---:|")
    photos = [getattr(skimage.data, p)() for p in PHOTOS]
    for n in args.batch:
        batch = det.preprocess([photos[i % len(photos)] for i in range(n)])
        mask = (~batch.mask).long()
        times = {"ref": float("inf"), "per-image": float("inf"), "batch": float("inf")}
        with torch.inference_mode():
            det.padding = "batch"
            diff = float((zoo_fn(batch.pixels, batch.mask)["logits"].float()
                          - ref_fn(pixel_values=batch.pixels, pixel_mask=mask).logits.float()).abs().max())
            for _ in range(args.repeats):  # alternate, so that background load is shared fairly
                times["ref"] = min(times["ref"], _best(lambda: ref_fn(pixel_values=batch.pixels, pixel_mask=mask),
                                                       1, sync))
                for padding in ("per-image", "batch"):
                    det.padding = padding
                    times[padding] = min(times[padding], _best(lambda: zoo_fn(batch.pixels, batch.mask), 1, sync))
        shape = "x".join(str(s) for s in batch.pixels.shape[-2:])
        print(f"| {n} | {shape} | {times['ref']:.3f} | {times['per-image']:.3f} | "
              f"{times['ref'] / times['per-image']:.2f} | {times['batch']:.3f} | {times['ref'] / times['batch']:.2f} "
              f"| {diff:.1e} |", flush=True)


if __name__ == "__main__":
    main()
