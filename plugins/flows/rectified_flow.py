"""Rectified flow (Liu, Gong & Liu 2022, "Flow Straight and Fast", arXiv:2209.03003) and its reflow, as zoo
Denoisers with ``prediction="flow"`` on a ``FlowSchedule``, so ``DiffusionPipeline`` and every sampler drive them.

1-rectified flow learns the velocity of the straight path between a data point ``x0`` and independent noise
``eps`` (zoo's convention: ``t = sigma`` runs from data at 0 to noise at 1, as in SD3):

    x_t = (1 - t) x0 + t eps,        min_v  E_{x0, eps, t ~ U[0, 1]} || v(x_t, t) - (eps - x0) ||^2     (eq. 1)

and samples by solving ``dx/dt = v(x, t)`` from t = 1 down to 0. Paths of independent pairs cross, so the learned
ODE's paths curve and coarse solvers err. *Reflow* (section 2.2) trains the same objective again on the pairs
``(eps, x0_hat = ODE_1(eps))`` that the first flow couples: their straight lines cross less, the new flow's paths
are straighter, and few-step (even one-step) Euler samples improve. Straightness (eq. 7),

    S(v) = int_0^1 E || (x_1 - x_0) - v(x_t, t) ||^2 dt        (per dimension here; 0 for straight paths)

is what :func:`straightness` measures along the pipeline's own Euler solution.

The network (:class:`VelocityUNet`) is a small two-resolution U-Net with a sinusoidal time embedding of the model's
time ``t * 1000``; ``forward`` returns the velocity ``eps - x0`` as ``Denoiser.denoise`` expects of ``"flow"``.
Shapes: ``x_t (N, C, H, W)`` in [-1, 1] pixel units (``zoo.diffusion.PixelSpace``), ``t (N,)``.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from zoo.diffusion import DiffusionPipeline
from zoo.loader import load_component
from zoo.registry import Denoiser, FlowSchedule, ModelEntry
from zoo.registry.errors import ArgumentTypeError, InvalidInputError


@dataclass(frozen=True)
class VelocityConfig:
    image_size: int = 8
    in_channels: int = 1
    channels: int = 24
    groups: int = 8

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "VelocityConfig":
        if d.get("architecture", "velocity-unet") != "velocity-unet":
            raise InvalidInputError(f"config.json describes a {d.get('architecture')!r} model, not a velocity U-Net")
        return cls(**{k: v for k, v in d.items() if k != "architecture"})

    def to_dict(self) -> dict[str, Any]:
        return {"architecture": "velocity-unet", **asdict(self)}


def timestep_embedding(t: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """``(N,)`` times -> ``(N, dim)`` sinusoidal features (Vaswani et al. 2017; DDPM's time embedding)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([args.cos(), args.sin()], dim=1)


class ResBlock(nn.Module):
    """GroupNorm, SiLU, 3x3 conv, + time embedding, GroupNorm, SiLU, 3x3 conv, + skip (1x1 if channels change)."""

    def __init__(self, cin: int, cout: int, temb: int, groups: int):
        super().__init__()
        self.norm1, self.conv1 = nn.GroupNorm(groups, cin), nn.Conv2d(cin, cout, 3, padding=1)
        self.time = nn.Linear(temb, cout)
        self.norm2, self.conv2 = nn.GroupNorm(groups, cout), nn.Conv2d(cout, cout, 3, padding=1)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x))) + self.time(emb)[:, :, None, None]
        h = self.conv2(F.silu(self.norm2(h)))
        return self.skip(x) + h


class VelocityUNet(nn.Module):
    """``v(x_t, t)``: two resolutions (H and H/2) of C and 2C channels, skip connections, zero-initialised output.

    ``(N, in_channels, H, W)``, ``(N,)`` model time (0..1000) -> ``(N, in_channels, H, W)``; H, W even.
    """

    def __init__(self, config: VelocityConfig = VelocityConfig()):
        super().__init__()
        self.config = config
        c, c2, e, g = config.channels, 2 * config.channels, 4 * config.channels, config.groups
        self.time_mlp = nn.Sequential(nn.Linear(c, e), nn.SiLU(), nn.Linear(e, e))
        self.conv_in = nn.Conv2d(config.in_channels, c, 3, padding=1)
        self.down1 = ResBlock(c, c, e, g)
        self.downsample = nn.Conv2d(c, c, 3, stride=2, padding=1)
        self.down2 = ResBlock(c, c2, e, g)
        self.mid = ResBlock(c2, c2, e, g)
        self.up2 = ResBlock(2 * c2, c2, e, g)
        self.up1 = ResBlock(c2 + c, c, e, g)
        self.norm_out = nn.GroupNorm(g, c)
        self.conv_out = nn.Conv2d(c, config.in_channels, 3, padding=1)
        if not self.conv_out.weight.is_meta:
            nn.init.zeros_(self.conv_out.weight)
            nn.init.zeros_(self.conv_out.bias)

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        emb = self.time_mlp(timestep_embedding(t, self.config.channels).to(x.dtype))
        h1 = self.down1(self.conv_in(x), emb)                       # (N, C, H, W)
        h2 = self.down2(self.downsample(h1), emb)                   # (N, 2C, H/2, W/2)
        h = self.up2(torch.cat([self.mid(h2, emb), h2], 1), emb)    # (N, 2C, H/2, W/2)
        h = F.interpolate(h, scale_factor=2.0, mode="nearest")
        h = self.up1(torch.cat([h, h1], 1), emb)                    # (N, C, H, W)
        return self.conv_out(F.silu(self.norm_out(h)))


class RectifiedFlowDenoiser(Denoiser):
    """A velocity network as a zoo Denoiser: ``prediction = "flow"`` (it returns ``eps - x0``) on rectified flow's
    straight-path schedule ``x_t = (1 - t) x0 + t eps``, model time ``1000 t``."""

    prediction = "flow"

    def __init__(self, net: VelocityUNet, schedule: FlowSchedule | None = None):
        super().__init__()
        self.net = net
        self.schedule = schedule or FlowSchedule(num_train_timesteps=1000)

    def forward(self, x_t: Tensor, t: Tensor, **cond: Any) -> Tensor:
        if cond:
            raise ArgumentTypeError(f"the digits rectified flows are unconditional; got conditioning {sorted(cond)}")
        return self.net(x_t, t)


def build_pipeline(entry: ModelEntry, files: Path | None, *, device: Any = "cpu", dtype: Any = torch.float32,
                   **kwargs: Any) -> DiffusionPipeline:
    """A rectified-flow entry -> ``DiffusionPipeline`` (pixel space [-1, 1], the entry's default sampler/steps)."""
    if kwargs:
        raise ArgumentTypeError(f"{entry.name} takes no options {sorted(kwargs)}")
    net = load_component(entry.component("velocity"), files, device=device, dtype=dtype)
    c = net.config
    schedule = FlowSchedule(entry.config.get("num_train_timesteps", 1000), entry.config.get("shift", 1.0))
    return DiffusionPipeline(RectifiedFlowDenoiser(net, schedule), (c.in_channels, c.image_size, c.image_size),
                             default_sampler=entry.config.get("default_sampler", "euler"),
                             default_steps=entry.config.get("default_steps", 20),
                             invert_sampler=entry.config.get("invert_sampler", "euler"), name=entry.name)


@torch.inference_mode()
def straightness(pipe: DiffusionPipeline, n: int = 256, *, steps: int = 100, noise: Tensor | None = None,
                 generator: torch.Generator | None = None) -> float:
    """Liu et al.'s straightness (eq. 7) of the pipeline's ODE paths, per dimension: 0 for straight lines.

    Solves the ODE with the pipeline's own ``euler`` sampler on ``steps`` uniform steps of t from 1 to 0 from
    ``noise`` (or ``n`` draws from ``generator``), and returns ``sum_i dt_i * mean ||v_i - (x_end - x_start)/(0 - 1)||^2``
    over samples and dimensions: the mean squared deviation of the velocity from the chord of its path.
    """
    grid = torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64)
    shape = (n, *pipe.sample_shape)
    if noise is None:
        noise = torch.randn(shape, generator=generator, dtype=torch.float32)
    xs = [noise.to(pipe.device, torch.float64 if pipe.dtype == torch.float64 else torch.float32)]
    pipe.sample(len(noise), sampler="euler", schedule=grid, noise=noise, output="raw", progress=False,
                callback=lambda info: xs.append(info.x.clone()))
    path = torch.stack(xs).to(torch.float64)                     # (steps + 1, N, C, H, W)
    dt = (grid[1:] - grid[:-1]).to(path.device)                  # negative: t descends
    slopes = (path[1:] - path[:-1]) / dt.reshape(-1, *[1] * (path.ndim - 1))
    chord = (path[-1] - path[0]) / (grid[-1] - grid[0])
    deviation = ((slopes - chord) ** 2).flatten(2).mean(2).mean(1)  # (steps,)
    return float((dt.abs() * deviation).sum())
