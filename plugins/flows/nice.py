"""NICE (Dinh, Krueger & Bengio 2014, arXiv:1410.8516): additive couplings and a diagonal scaling.

    h_1 = x_1,  h_2 = x_2 + m(x_1)               additive coupling (eq. 6): Jacobian unit triangular, det = 1
    ...  four couplings, alternating which half of the coordinates is x_1 (odd or even, section 5.1)
    z   = exp(s) * h                             the scaling layer (section 3.3): log |det| = sum s

so ``log p(x) = log p_Z(z) + sum s`` (+ the logit preprocessing's log-determinant, see ``base``). The coupling
functions m are ReLU MLPs on the flattened image. The paper's MNIST model: 4 couplings of 5 hidden layers of 1000
units and a logistic prior; ``nice-digits`` is smaller (4 couplings of 2 x 128 units) with a Gaussian prior: with
3 x 256 units (0.66 M parameters) it overfits the 1,500 training digits (1.5 bits/dim on them, 3.8 held out).

Shapes: x, z ``(N, C, H, W)``; every layer keeps the shape (the MLPs read it flattened, ``D = C H W``).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from zoo.registry.errors import InvalidInputError

from .base import ImageFlow
from .layers import MLP, AdditiveCoupling, Scaling, Sequential


@dataclass(frozen=True)
class NICEConfig:
    image_size: int = 8
    channels: int = 1
    couplings: int = 4
    hidden: int = 128
    hidden_layers: int = 2

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "NICEConfig":
        if d.get("architecture", "nice") != "nice":
            raise InvalidInputError(f"config.json describes a {d.get('architecture')!r} flow, not NICE")
        return cls(**{k: v for k, v in d.items() if k != "architecture"})

    def to_dict(self) -> dict[str, Any]:
        return {"architecture": "nice", **asdict(self)}


class NICE(ImageFlow):
    """NICE over ``(channels, image_size, image_size)`` images."""

    def __init__(self, config: NICEConfig = NICEConfig()):
        super().__init__(config.channels, config.image_size)
        self.config = config
        dims = config.channels * config.image_size**2
        self.body = Sequential(
            *(AdditiveCoupling("alternating", i % 2, MLP(dims, config.hidden, config.hidden_layers))
              for i in range(config.couplings)),
            Scaling(self.event_shape))
