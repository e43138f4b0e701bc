"""What :func:`zoo.fast.retain_freed_memory` buys: the same model timed in fresh processes with glibc's default
allocator and with freed memory retained (the ``zoo`` command's setting), alternating process by process.

    python benchmarks/bench_heap.py [--threads 2] [--rounds 2]

The setting holds for a whole process, so it cannot be compared inside one, as ``zoo bench`` compares libraries:
each figure here is one ``zoo.bench.bench`` call (zoo alone, random weights) in a process of its own, and the
table gives the median over ``--rounds`` processes per setting, with the minor page faults of the whole
``bench`` call (building the model, the warm-up, the five timed runs and the memory run).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

#: (model, zoo.bench.bench keyword arguments)
RUNS = [
    ("vit-b16", {"batch": 32}),
    ("swin-t", {"batch": 32}),
    ("clip-vit-b32", {"batch": 32}),
    ("ddim-cifar", {"batch": 8, "steps": 10}),
]

ONE_RUN = """
import json, resource, sys
import torch
from zoo import bench, fast

retain, name, options = sys.argv[1] == "1", sys.argv[2], json.loads(sys.argv[3])
if retain:
    fast.retain_freed_memory()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
report = bench.bench(name, pretrained=False, device="cpu", reference=False, repeats=5, **options)
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before  # building, warm-up, 5 timed runs, memory run
print(json.dumps({"median_s": report["results"][0]["median_s"], "faults": faults,
                  "retained": fast.freed_memory_retained()}))
"""


def one(retain: bool, name: str, options: dict, threads: int) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1"}
    done = subprocess.run([sys.executable, "-c", ONE_RUN, "1" if retain else "0", name, json.dumps(options)],
                          capture_output=True, text=True, env=env, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--only", nargs="+", metavar="NAME")
    args = parser.parse_args()
    import torch

    print(f"torch {torch.__version__}, {args.threads} threads, float32, random weights, zoo alone; medians over "
          f"{args.rounds} processes per setting\n")
    print("| model | work | default s | retained s | default / retained | page faults: default | retained |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for name, options in RUNS:
        if args.only and name not in args.only:
            continue
        results: dict[bool, list[dict]] = {False: [], True: []}
        for _ in range(args.rounds):
            for retain in (False, True):
                results[retain].append(one(retain, name, options, args.threads))
        assert all(r["retained"] for r in results[True]), "retain_freed_memory is not available here (not glibc)"
        time = {k: statistics.median(r["median_s"] for r in v) for k, v in results.items()}
        faults = {k: statistics.median(r["faults"] for r in v) for k, v in results.items()}
        work = ", ".join(f"{k} {v}" for k, v in options.items())
        print(f"| {name} | {work} | {time[False]:.3f} | {time[True]:.3f} | {time[False] / time[True]:.2f} | "
              f"{faults[False]:,.0f} | {faults[True]:,.0f} |", flush=True)


if __name__ == "__main__":
    main()
