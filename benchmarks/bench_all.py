"""Run ``zoo bench`` over the goal models and write the table into BENCHMARKS.md (between its bench markers).

Each model runs in its own ``zoo bench ... --json`` process (so one model's memory peak or compiled code does not
colour the next), with random weights of the real architecture unless ``--pretrained`` (speed does not depend on
the values). The CPU set runs at ``--threads`` (default 2) in float32; the GPU set runs when CUDA is available.

    python benchmarks/bench_all.py                        # the full run; rewrites the section of BENCHMARKS.md
    python benchmarks/bench_all.py --tiny --print-only    # seconds: checks the script, writes nothing
    python benchmarks/bench_all.py --only ddim-cifar --device cpu
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BEGIN, END = "<!-- bench:begin -->", "<!-- bench:end -->"
ROOT = Path(__file__).resolve().parents[1]

#: (model, options) per device: the issue's goals (see BENCHMARKS.md).
CPU_RUNS = [
    ("ddim-cifar", ["--batch", "8", "--steps", "50"]),
    ("ddim-cifar", ["--batch", "8", "--steps", "50", "--winograd"]),
    ("ddim-cifar", ["--batch", "8", "--steps", "50", "--winograd", "--onednn"]),
    ("clip-vit-b32", ["--batch", "32"]),
    ("clip-vit-b32", ["--batch", "32", "--onednn"]),
    ("vit-b16", ["--batch", "32"]),
    ("vit-b16", ["--batch", "32", "--onednn"]),
    ("vit-b16", ["--batch", "32", "--compile"]),
    ("vit-b16", ["--batch", "32", "--compile", "--onednn"]),
    ("swin-t", ["--batch", "32"]),
    ("swin-t", ["--batch", "32", "--onednn"]),
    ("swin-t", ["--batch", "32", "--compile"]),
    ("swin-t", ["--batch", "32", "--compile", "--onednn"]),
]
GPU_RUNS = [
    ("ddim-cifar", ["--dtype", "bf16", "--reference-dtype", "fp16", "--batch", "256", "--steps", "50"]),
    ("ddim-cifar", ["--dtype", "bf16", "--reference-dtype", "fp16", "--batch", "256", "--steps", "50",
                    "--compile", "reduce-overhead"]),
    ("clip-vit-b32", ["--dtype", "bf16", "--batch", "1024"]),
    ("detr-r50", ["--batch", "1"]),
    ("detr-r50", ["--batch", "1", "--compile", "reduce-overhead"]),
]
#: what --tiny replaces, to check the script in seconds
TINY = {"--batch": "1", "--steps": "2"}


def tiny(options: list[str]) -> list[str]:
    out = list(options)
    for i, word in enumerate(out[:-1]):
        if word in TINY:
            out[i + 1] = TINY[word]
    return [*out, "--repeats", "1", "--warmup", "0"]


def run_one(name: str, options: list[str], device: str, threads: int, pretrained: bool) -> dict:
    command = [sys.executable, "-m", "zoo", "bench", name, "--device", device, "--json", "-q", *options]
    if device == "cpu":
        command += ["--threads", str(threads)]
    if not pretrained:
        command.append("--random-weights")
    print("$ " + " ".join(["zoo", *command[3:]]), file=sys.stderr, flush=True)
    env = {**os.environ, "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1")}
    if device == "cpu":
        env["OMP_NUM_THREADS"] = str(threads)
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        return {"model": name, "error": (done.stderr.strip().splitlines() or ["failed"])[-1], "options": options}
    report = json.loads(done.stdout)
    report["options"] = options
    return report


def _memory(row: dict) -> str:
    mib = row["memory_bytes"] / 2**20
    return f"{mib / 1024:.2f} GiB" if mib >= 1024 else f"{mib:.0f} MiB"


def table(reports: list[dict]) -> str:
    """The markdown rows: one per library per run, with zoo's speed over each reference's."""
    lines = ["| model | device | dtype | batch | steps | fast path | library | throughput | latency / call | "
             "TFLOP/s (% of peak) | peak memory | zoo / library |",
             "|---|---|---|---:|---:|---|---|---:|---:|---:|---:|---:|"]
    for report in reports:
        if "error" in report:
            lines.append(f"| {report['model']} | {' '.join(report['options'])} | failed: {report['error']} "
                         f"| | | | | | | | | |")
            continue
        s = report["settings"]
        paths = [f"compile={s['compile_mode'] or 'default'}"] if s["compile"] else []
        paths += ["Winograd convs"] if s.get("winograd") else []
        paths += ["oneDNN linear"] if s.get("onednn") else []
        compiled = ", ".join(paths) or "-"
        steps = s["steps"] if report["interface"] == "pipeline" else "-"
        for row in report["results"]:
            ratio = "1" if row["library"] == "zoo" else f"{report['ratios'][row['library']]:.2f}"
            peak = f" ({100 * row['peak_fraction']:.0f}%)" if row["peak_fraction"] is not None else ""
            dtype = s["dtype"] if row["library"] == "zoo" else s["reference_dtype"]
            lines.append(f"| {report['model']} | {s['device_name']} | {dtype} | {s['batch']} | {steps} | {compiled} | "
                         f"{row['library']} | {row['throughput']:.4g} {row['unit']} | {row['latency_ms']:.4g} ms | "
                         f"{row['tflops']:.3g}{peak} | {_memory(row)} | {ratio} |")
        for ref, why in report["references_missing"].items():
            lines.append(f"| {report['model']} | | | | | | {ref} | not run: {why} | | | | |")
    return "\n".join(lines)


def section(reports: list[dict], command: str) -> str:
    ok = [r for r in reports if "error" not in r]
    first = ok[0]["settings"] if ok else {}
    by_device: dict[str, list[dict]] = {}
    for r in ok:
        by_device.setdefault(r["settings"]["device_name"], []).append(r)
    peaks = []  # a CPU's peak is probed in every process: give the spread
    for name, rs in by_device.items():
        values = sorted(r["peak_tflops"] or 0 for r in rs)
        spread = f"{values[0]:.3g}" if values[0] == values[-1] else f"{values[0]:.3g}-{values[-1]:.3g}"
        peaks.append(f"{name}: {spread} TFLOP/s ({rs[0]['peak_source']})")
    memory = sorted({r["results"][0]["memory_kind"] for r in ok})
    return "\n".join([
        BEGIN,
        f"Generated by `{command}` on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}: torch "
        f"{first.get('torch', '?')}, zoo {first.get('zoo', '?')}; CPU rows at {first.get('threads', '?')} threads "
        "(`--threads`). Each figure is the median over the timed runs (`zoo bench NAME --json` has the IQR and "
        "every time); the libraries alternate run by run, so the ratio is the number to read on a shared machine. "
        "Latency is per model call (a pipeline's run divided by its denoiser calls). FLOPs are counted by "
        "`torch.utils.flop_counter` on each library's own forward.",
        "",
        "Peaks: " + "; ".join(peaks) + ". Memory: " + "; ".join(memory) + ".",
        "",
        table(reports),
        END,
    ])


def write_section(path: Path, text: str) -> None:
    """Replace the marked section of ``path`` (append one if it has none), written whole (temp + rename)."""
    old = path.read_text() if path.exists() else ""
    if BEGIN in old and END in old:
        head, rest = old.split(BEGIN, 1)
        new = head + text + rest.split(END, 1)[1]
    else:
        new = old.rstrip("\n") + "\n\n## All goal models (`zoo bench`)\n\n" + text + "\n"
    with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False, suffix=".tmp") as tmp:
        tmp.write(new)
    os.replace(tmp.name, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["cpu", "cuda", "all"], default="all",
                        help="which set to run (default: CPU, and the GPU set when CUDA is available)")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads (default 2)")
    parser.add_argument("--only", nargs="+", metavar="NAME", help="run only these models")
    parser.add_argument("--pretrained", action="store_true", help="real weights (cached) instead of random ones")
    parser.add_argument("--tiny", action="store_true", help="batch 1, 2 steps, 1 run: checks the script only")
    parser.add_argument("--print-only", action="store_true", help="print the section instead of writing it")
    parser.add_argument("--output", type=Path, default=ROOT / "BENCHMARKS.md")
    args = parser.parse_args()

    import torch

    sets = []
    if args.device in ("cpu", "all"):
        sets.append(("cpu", CPU_RUNS))
    if args.device == "cuda" or (args.device == "all" and torch.cuda.is_available()):
        sets.append(("cuda", GPU_RUNS))
    reports = []
    for device, runs in sets:
        for name, options in runs:
            if args.only and name not in args.only:
                continue
            reports.append(run_one(name, tiny(options) if args.tiny else options, device, args.threads,
                                   args.pretrained))
    command = "python benchmarks/bench_all.py " + " ".join(sys.argv[1:])
    text = section(reports, command.strip())
    if args.print_only:
        print(text)
    else:
        write_section(args.output, text)
        print(f"wrote {len(reports)} runs into {args.output}")


if __name__ == "__main__":
    main()
