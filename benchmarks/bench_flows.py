"""Flows on CPU: training throughput and bits/dim evaluation throughput of nice/realnvp/glow-digits, and the
sampling time of rectified-flow-digits-2 at one Euler step against ddpm-digits at 50 DDIM steps, with the digit
judge's score of each. Not a test; prints a table (``--threads`` sets torch's threads, default 1).

``--figures`` also writes the README's pictures: ``docs/flows-samples.png`` (a grid per shipped generative model)
and ``docs/flows-straightness.png`` (straightness and judged quality against Euler steps, 1-RF and 2-RF).

    python benchmarks/bench_flows.py [--threads 1] [--figures]
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

import zoo
from zoo.plugins.flows import FLOWS
from zoo.plugins.flows.judge import DigitJudge
from zoo.plugins.flows.rectified_flow import straightness
from zoo.plugins.flows.train_digits import load_digits_split

DOCS = Path(__file__).resolve().parent.parent / "docs"


def timed(fn, repeat: int = 3) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def flow_throughput(name: str, train: torch.Tensor, held: torch.Tensor, batch: int = 128) -> tuple[float, float, float]:
    """(training images/s, bits/dim evaluation images/s, held-out bits/dim) of a shipped flow."""
    model = zoo.create(name, device="cpu")
    g = torch.Generator().manual_seed(0)
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-5)

    def step():
        for _ in range(5):
            loss = model.bits_per_dim(model.dequantize(train[:batch], g)).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()

    train_ips = 5 * batch / timed(step)
    model.eval()
    with torch.inference_mode():
        x = model.dequantize(held, g)
        eval_ips = len(held) / timed(lambda: model.bits_per_dim(x))
    model = zoo.create(name, device="cpu")  # the shipped weights, not the ones stepped above
    return train_ips, eval_ips, float(model.image_bits_per_dim(held).mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--figures", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    train, _, held, _ = load_digits_split()
    judge = DigitJudge()

    print(f"| flow | parameters | train images/s | bits/dim eval images/s | held-out bits/dim |  (threads={args.threads})")
    print("|---|---|---|---|---|")
    for name in FLOWS:
        params = sum(p.numel() for p in zoo.create(name, device="cpu").parameters())
        tr, ev, bpd = flow_throughput(name, train, held)
        print(f"| `{name}` | {params / 1e3:.0f} k | {tr:.0f} | {ev:.0f} | {bpd:.3f} |")

    n = 256
    rf2, ddpm = zoo.create("rectified-flow-digits-2", device="cpu"), zoo.create("ddpm-digits", device="cpu")
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    rows = [("rectified-flow-digits-2", rf2, dict(sampler="euler", steps=1)),
            ("rectified-flow-digits", zoo.create("rectified-flow-digits", device="cpu"), dict(sampler="euler", steps=20)),
            ("ddpm-digits", ddpm, dict(sampler="ddim", steps=50))]
    print(f"\n| model | sampler | seconds for {n} samples | judged digits | class-balanced | classes |")
    print("|---|---|---|---|---|---|")
    for name, pipe, kw in rows:
        seconds = timed(lambda: pipe.sample(n, generator=g(), progress=False, **kw), repeat=2)
        verdict = judge(pipe.sample(n, generator=g(), progress=False, **kw))
        print(f"| `{name}` | {kw['sampler']}, {kw['steps']} steps | {seconds:.2f} | {verdict.recognised:.0%} | "
              f"{verdict.balanced:.2f} | {verdict.classes} |")
    for name in FLOWS:
        model = zoo.create(name, device="cpu")
        seconds = timed(lambda: model.sample(n, generator=g(), temperature=0.8), repeat=2)
        verdict = judge(model.sample(n, generator=g(), temperature=0.8))
        print(f"| `{name}` | inverse, T=0.8 | {seconds:.2f} | {verdict.recognised:.0%} | {verdict.balanced:.2f} | "
              f"{verdict.classes} |")

    if args.figures:
        figures(judge)


def figures(judge: DigitJudge) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from zoo.image import make_grid

    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    panels = [(name, zoo.create(name, device="cpu").sample(64, generator=g(), temperature=0.8)) for name in FLOWS]
    rf1, rf2 = zoo.create("rectified-flow-digits", device="cpu"), zoo.create("rectified-flow-digits-2", device="cpu")
    panels += [("rectified-flow-digits, 20 Euler steps", rf1.sample(64, generator=g(), progress=False)),
               ("rectified-flow-digits, 1 Euler step", rf1.sample(64, steps=1, generator=g(), progress=False)),
               ("rectified-flow-digits-2, 1 Euler step", rf2.sample(64, steps=1, generator=g(), progress=False))]
    fig, axes = plt.subplots(1, len(panels), figsize=(2.6 * len(panels), 3.0))
    for ax, (title, images) in zip(axes, panels):
        ax.imshow(make_grid(images, nrow=8, scale=1), cmap="gray", interpolation="nearest")
        ax.set_title(title, fontsize=8)
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(DOCS / "flows-samples.png", dpi=110)

    noise = torch.randn(256, 1, 8, 8, generator=g())
    steps = [1, 2, 4, 8, 16]
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.3))
    for label, pipe in (("1-RF", rf1), ("2-RF (reflow)", rf2)):
        quality = [judge(pipe.sample(256, sampler="euler", steps=s, noise=noise, progress=False)).balanced
                   for s in steps]
        b.plot(steps, quality, marker="o", label=label)
        s = straightness(pipe, noise=noise, steps=64)
        a.bar(label, s)
        a.text(label, s, f"{s:.3f}", ha="center", va="bottom")
    a.set_title("straightness (Liu et al. 2022, eq. 7), lower is straighter", fontsize=9)
    b.set_xscale("log", base=2)
    b.set_xlabel("Euler steps")
    b.set_ylabel("judged digits, class-balanced")
    b.set_ylim(0, 1)
    b.legend()
    b.set_title("sample quality against steps", fontsize=9)
    fig.tight_layout()
    fig.savefig(DOCS / "flows-straightness.png", dpi=110)
    print(f"wrote {DOCS / 'flows-samples.png'} and {DOCS / 'flows-straightness.png'}")


if __name__ == "__main__":
    main()
