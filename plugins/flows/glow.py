"""Glow (Kingma & Dhariwal 2018, arXiv:1807.03039): actnorm, invertible 1x1 convolutions, affine couplings.

One step of flow (figure 2a, table 1), on ``h (N, C, H, W)``:

    actnorm            y = (x + b) * exp(logs)        log|det| = H W sum logs       (data-dependent init)
    invertible 1x1     y = W x,  W = P L (U + diag(sign exp(logs)))   log|det| = H W sum logs   (LU form)
    affine coupling    channel split; y_b = x_b * exp(s(x_a)) + t(x_a)   log|det| = sum s

and the multi-scale architecture (figure 2b), L levels:

    squeeze -> K steps of flow -> split (half the channels to z, half to the next level) -> ... -> unsqueeze

the last level without a split. The coupling network is Glow's: 3x3 conv, ReLU, 1x1 conv, ReLU, zero-initialised
3x3 conv (section 3.3). Differences from the paper, for a small model: the split's latents have a standard-normal
prior (not Glow's learned conditional prior), and the coupling's scale is RealNVP's ``scale * tanh`` rather than
``sigmoid(. + 2)``.

``glow-digits``: 8x8x1 -> squeeze 4x4x4, K steps, split 2 -> squeeze 2x2x8, K steps.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from zoo.registry.errors import InvalidInputError

from .base import ImageFlow
from .layers import ActNorm, AffineCoupling, ConvNet, FactorOut, FlowLayer, Invert, InvConv1x1, Sequential, Squeeze


@dataclass(frozen=True)
class GlowConfig:
    image_size: int = 8
    channels: int = 1
    levels: int = 2
    steps: int = 8
    hidden: int = 64

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "GlowConfig":
        if d.get("architecture", "glow") != "glow":
            raise InvalidInputError(f"config.json describes a {d.get('architecture')!r} flow, not Glow")
        return cls(**{k: v for k, v in d.items() if k != "architecture"})

    def to_dict(self) -> dict[str, Any]:
        return {"architecture": "glow", **asdict(self)}


def step_of_flow(channels: int, hidden: int) -> FlowLayer:
    """actnorm -> invertible 1x1 conv -> affine coupling (channel split)."""
    return Sequential(ActNorm(channels), InvConv1x1(channels),
                      AffineCoupling("channel", 0, ConvNet(channels, 2 * channels, hidden), channels))


def glow_level(channels: int, levels: int, steps: int, hidden: int) -> FlowLayer:
    """Squeeze, K steps of flow, split into the next level (unless the last), unsqueeze: keeps the shape."""
    c4 = 4 * channels
    layers: list[FlowLayer] = [Squeeze(), *(step_of_flow(c4, hidden) for _ in range(steps))]
    if levels > 1:
        layers.append(FactorOut(glow_level(c4 // 2, levels - 1, steps, hidden)))
    return Sequential(*layers, Invert(Squeeze()))


class Glow(ImageFlow):
    """Glow over ``(channels, image_size, image_size)`` images; image_size divisible by 2 ** levels."""

    def __init__(self, config: GlowConfig = GlowConfig()):
        super().__init__(config.channels, config.image_size)
        self.config = config
        if config.image_size % 2**config.levels:
            raise InvalidInputError(f"Glow with {config.levels} levels needs image_size divisible by {2 ** config.levels}, "
                                    f"got {config.image_size}")
        self.body = glow_level(config.channels, config.levels, config.steps, config.hidden)
