"""Distance to the data against model evaluations, for every sampler, on the closed-form Gaussian mixture.

    OMP_NUM_THREADS=1 python benchmarks/plot_samplers.py [--out docs/samplers.png] [--n 4096]

The data and the distance are the tests' (tests/test_sampler_gmm.py): 4x4 "images" from 8 Gaussian modes on a
ring (std 0.2), sampled through ``zoo.testing.GMMDenoiser``, the exact E[x0 | x_t]; sliced 2-Wasserstein
distance to the mixture's exact quantiles, every sampler from the same noise tensor. Fixed-grid samplers sweep
their step count, ode-rk45 its tolerance. euler, flow-euler and ddim (eta = 0) take the same step in both
sampling spaces, as do euler-ancestral and ddpm (eta = 1): their curves coincide. The dotted line is where the
exact ODE lands from that noise (the floor 4096 samples allow). Prints the numbers as a table too.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

import zoo
from zoo.testing import gmm_pipeline, ring, sampler_distance

STEPS = [3, 5, 8, 12, 20, 30, 50, 100]
TOLERANCES = [1e-1, 3e-2, 1e-2, 3e-3, 1e-3, 1e-4, 1e-5]
SAMPLERS = ["ddim", "ddpm", "euler", "euler-ancestral", "heun", "dpmpp-2m", "flow-euler", "ode-rk45"]
PANELS = [("eps", None, "DDPM eps model, leading grid (default)"),
          ("eps", "exponential", "DDPM eps model, log-SNR grid"),
          ("flow", None, "rectified flow, default grid")]
STYLE = {"ddim": "o-", "ddpm": "v-", "euler": "x--", "euler-ancestral": "^:", "heun": "s-", "dpmpp-2m": "D-",
         "flow-euler": "+--", "ode-rk45": "*"}  # ode-rk45: points, its NFE is not monotone in the tolerance


def curves(prediction: str, schedule: str | None, n: int) -> tuple[dict[str, list[tuple[int, float]]], float]:
    gmm = ring(std=0.2, shape=(1, 4, 4))
    pipe = gmm_pipeline(prediction, gmm)
    noise = torch.randn(n, *gmm.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    out = {}
    for name in SAMPLERS:
        if name == "ode-rk45":
            out[name] = [sampler_distance(pipe, gmm, noise, name, rtol=tol, atol=tol, schedule=schedule)
                         for tol in TOLERANCES]
        else:
            out[name] = [sampler_distance(pipe, gmm, noise, name, steps=s, schedule=schedule) for s in STEPS]
        print(f"{prediction:<5} {schedule or 'default':<12} {name:<16} "
              + " ".join(f"{nfe}:{d:.4f}" for nfe, d in out[name]), flush=True)
    floor = sampler_distance(pipe, gmm, noise, "ode-rk45", rtol=1e-8, atol=1e-8, schedule=schedule)[1]
    return out, floor


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "docs" / "samplers.png"))
    parser.add_argument("--n", type=int, default=4096)
    args = parser.parse_args()

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(PANELS), figsize=(6 * len(PANELS), 5), sharey=True)
    print("NFE:distance per sampler")
    for ax, (prediction, schedule, title) in zip(axes, PANELS):
        data, floor = curves(prediction, schedule, args.n)
        for name, points in data.items():
            nfe, dist = zip(*points)
            ax.plot(nfe, dist, STYLE[name], label=name, markersize=5, alpha=0.85)
        ax.axhline(floor, color="gray", linestyle=":", label="exact ODE (sample floor)")
        ax.set(xscale="log", yscale="log", title=title, xlabel="model evaluations (NFE, pipe.last_nfe)")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel("sliced W2 to the data (lower is better)")
    axes[0].legend(fontsize=8)
    fig.suptitle(f"zoo samplers on a closed-form Gaussian mixture (16-dim, 8 modes; {args.n} samples, same noise). "
                 "euler = flow-euler = ddim and euler-ancestral = ddpm take the same steps; their curves coincide.")
    fig.tight_layout()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110)
    print(f"saved {args.out} ({', '.join(zoo.list_samplers())} registered)")


if __name__ == "__main__":
    main()
