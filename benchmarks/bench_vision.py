"""Throughput of zoo's ViT / Swin classifiers against the bare timm models they wrap, in the same run.

zoo runs timm's own modules, so this measures zoo's overhead (input checks, the wrapper) and the one change it
makes: Swin's window attention through ``F.scaled_dot_product_attention`` (timm keeps Swin on its manual path).
Both sides hold the same weights and get the same preprocessed batch; calls alternate so that load from other
processes hits both alike; the best of ``--repeats`` timed calls counts.

    OMP_NUM_THREADS=1 python benchmarks/bench_vision.py                 # batch 32, CPU
    python benchmarks/bench_vision.py --device cuda --dtype float16     # where a GPU is available
"""
from __future__ import annotations

import argparse
import time

import skimage.data
import timm
import torch

import zoo

MODELS = {"vit-b16": "vit_base_patch16_224", "swin-t": "swin_tiny_patch4_window7_224"}


def _best_time(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return best


def bench(name: str, batch: int, repeats: int, device: str, dtype: torch.dtype) -> dict:
    clf = zoo.create(name, pretrained=False, device=device, dtype=dtype)
    ref = timm.create_model(MODELS[name], pretrained=False).to(device=device, dtype=dtype).eval()
    ref.load_state_dict(clf.model.state_dict())
    photos = [skimage.data.chelsea(), skimage.data.coffee(), skimage.data.astronaut(), skimage.data.rocket()]
    x = clf.preprocess([photos[i % len(photos)] for i in range(batch)])
    with torch.inference_mode():
        diff = (clf(x).float() - ref(x).float()).abs().max().item()  # also the warm-up call of each
        zoo_s, timm_s = float("inf"), float("inf")
        for _ in range(repeats):  # alternate, so that background load is shared fairly
            zoo_s = min(zoo_s, _best_time(lambda: clf(x), 1))
            timm_s = min(timm_s, _best_time(lambda: ref(x), 1))
        prep_s = _best_time(lambda: clf.preprocess(photos * (batch // len(photos))), 1)
    return {"model": name, "zoo": batch / zoo_s, "timm": batch / timm_s, "ratio": timm_s / zoo_s, "diff": diff,
            "preprocess": batch / prep_s}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    args = parser.parse_args()
    dtype = getattr(torch, args.dtype)
    print(f"batch {args.batch}, {args.device}, {args.dtype}, torch {torch.__version__}, timm {timm.__version__}, "
          f"{torch.get_num_threads()} thread(s), best of {args.repeats}")
    print("| model | zoo img/s | timm img/s | zoo / timm | max abs logit diff | zoo preprocess img/s |")
    print("|---|---:|---:|---:|---:|---:|")
    for name in args.models:
        r = bench(name, args.batch, args.repeats, args.device, dtype)
        print(f"| {r['model']} | {r['zoo']:.2f} | {r['timm']:.2f} | {r['ratio']:.3f} | {r['diff']:.1e} | "
              f"{r['preprocess']:.1f} |")


if __name__ == "__main__":
    main()
