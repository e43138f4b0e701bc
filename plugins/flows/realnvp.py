"""RealNVP (Dinh, Sohl-Dickstein & Bengio 2016, arXiv:1605.08803): affine couplings, masks, multi-scale.

One scale of the multi-scale architecture (section 3.6), on ``h (N, C, H, W)``:

    3 affine couplings with checkerboard masks        y = m*x + (1-m)*(x*exp(s(m*x)) + t(m*x)),  log|det| = sum s
    squeeze                                           (C, H, W) -> (4C, H/2, W/2)
    3 affine couplings with channel masks
    factor out half the channels                      [next scale(h_1), h_2]: h_2 goes straight to z
    unsqueeze                                         back to (C, H, W), so z has x's shape

and the last scale is 4 checkerboard couplings. The paper's s and t networks are deep ResNets with batch
normalisation; here they are Glow's three-layer conv net (``layers.ConvNet``, last layer zero) with RealNVP's
``scale * tanh`` bound on s, and no batch normalisation (so the density is the same in training and evaluation).

``realnvp-digits``: 8x8x1 -> two scales (8x8x1 checkerboard, 4x4x4 channel, factor out 2) -> 4x4x2 final scale.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from zoo.registry.errors import InvalidInputError

from .base import ImageFlow
from .layers import AffineCoupling, ConvNet, FactorOut, FlowLayer, Invert, Sequential, Squeeze


@dataclass(frozen=True)
class RealNVPConfig:
    image_size: int = 8
    channels: int = 1
    scales: int = 2
    hidden: int = 64

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "RealNVPConfig":
        if d.get("architecture", "realnvp") != "realnvp":
            raise InvalidInputError(f"config.json describes a {d.get('architecture')!r} flow, not RealNVP")
        return cls(**{k: v for k, v in d.items() if k != "architecture"})

    def to_dict(self) -> dict[str, Any]:
        return {"architecture": "realnvp", **asdict(self)}


def _coupling(mask: str, parity: int, channels: int, hidden: int) -> AffineCoupling:
    return AffineCoupling(mask, parity, ConvNet(channels, 2 * channels, hidden), channels)


def realnvp_scale(channels: int, scales: int, hidden: int) -> FlowLayer:
    """The flow of one scale and, inside its factor-out, of all coarser ones; ``(N, C, H, W)`` -> same shape."""
    if scales == 1:  # the final scale: four checkerboard couplings
        return Sequential(*(_coupling("checkerboard", i % 2, channels, hidden) for i in range(4)))
    c4 = 4 * channels
    return Sequential(
        *(_coupling("checkerboard", i % 2, channels, hidden) for i in range(3)),
        Squeeze(),
        *(_coupling("channel", i % 2, c4, hidden) for i in range(3)),
        FactorOut(realnvp_scale(c4 // 2, scales - 1, hidden)),
        Invert(Squeeze()))


class RealNVP(ImageFlow):
    """RealNVP over ``(channels, image_size, image_size)`` images; image_size divisible by 2 ** (scales - 1)."""

    def __init__(self, config: RealNVPConfig = RealNVPConfig()):
        super().__init__(config.channels, config.image_size)
        self.config = config
        if config.image_size % 2 ** (config.scales - 1):
            raise InvalidInputError(f"RealNVP with {config.scales} scales needs image_size divisible by "
                                    f"{2 ** (config.scales - 1)}, got {config.image_size}")
        self.body = realnvp_scale(config.channels, config.scales, config.hidden)
