"""The layers of NICE, RealNVP and Glow, each with its log-determinant written beside its forward.

Every layer is a bijection ``f`` on tensors ``(N, C, H, W)`` (NICE's MLP couplings read them flattened) with

    forward(x) -> (y, logdet)        y = f(x),  logdet = log |det df/dx|  per sample, shape (N,)
    inverse(y) -> x                  x = f^{-1}(y), exact

so a flow is a :class:`Sequential` of them and ``log p(x) = log p_Z(f(x)) + sum of the layers' logdets``.

Each layer, its forward, and its log-determinant:

* :class:`LogitTransform`: ``y = logit(a + (1 - 2a) (x - lo) / w)``; ``sum log((1 - 2a) / w) - log p(1 - p)``
  (RealNVP 4.1)
* :class:`AdditiveCoupling`: ``y = m*x + (1-m)*(x + t(m*x))``; ``0`` (NICE, eq. 6)
* :class:`Scaling`: ``y = exp(s) * x``; ``sum s`` (NICE, 3.3)
* :class:`AffineCoupling`: ``y = m*x + (1-m)*(x*exp(s(m*x)) + t(m*x))``; ``sum (1-m)*s`` (RealNVP, eq. 9)
* :class:`Squeeze`: ``(C, H, W) -> (4C, H/2, W/2)``; ``0``, a permutation (RealNVP 3.6)
* :class:`FactorOut`: ``y = [g(x_1), x_2]``; ``log |det dg/dx_1|`` (RealNVP 3.6)
* :class:`ActNorm`: ``y = (x + b) * exp(logs)`` per channel; ``H W sum logs`` (Glow, table 1)
* :class:`InvConv1x1`: ``y = W x``, ``W = P L (U + diag(sign * exp(logs)))``; ``H W sum logs`` (Glow 3.2, LU form)

``m`` is a binary mask (:func:`checkerboard_mask`, :func:`channel_mask`): the coupling's networks see only the
masked half, which passes unchanged, so the Jacobian is triangular and its determinant the product of its diagonal.

References: Dinh, Krueger & Bengio 2014, "NICE: Non-linear Independent Components Estimation", arXiv:1410.8516;
Dinh, Sohl-Dickstein & Bengio 2016, "Density estimation using Real NVP", arXiv:1605.08803; Kingma & Dhariwal
2018, "Glow: Generative Flow with Invertible 1x1 Convolutions", arXiv:1807.03039.
"""
from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import Callable

import torch
from torch import Tensor, nn
from zoo.registry.errors import InvalidInputError


def _sum(t: Tensor) -> Tensor:
    """Per-sample sum over every dimension but the first: ``(N, ...) -> (N,)``."""
    return t.flatten(1).sum(1)


def _here() -> torch.device:
    """The device new tensors go to now (``meta`` while zoo's loader builds a module for its weights)."""
    return torch.empty(0).device


class FlowLayer(nn.Module, ABC):
    """A bijection with its log-determinant: ``forward(x) -> (y, logdet (N,))`` and ``inverse(y) -> x``."""

    @abstractmethod
    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``x (N, ...)`` -> ``(y (N, ...), log |det dy/dx| (N,))``."""

    @abstractmethod
    def inverse(self, y: Tensor) -> Tensor:
        """The exact inverse of :meth:`forward`."""


class Sequential(FlowLayer):
    """``f = f_K o ... o f_1``: log-determinants add (the chain rule), the inverse runs the layers backwards."""

    def __init__(self, *layers: FlowLayer):
        super().__init__()
        self.layers = nn.ModuleList(layers)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        logdet = x.new_zeros(x.shape[0])
        for layer in self.layers:
            x, ld = layer(x)
            logdet = logdet + ld
        return x, logdet

    def inverse(self, y: Tensor) -> Tensor:
        for layer in reversed(self.layers):
            y = layer.inverse(y)
        return y


class Invert(FlowLayer):
    """The inverse of a layer as a layer: ``forward = layer.inverse``, logdet negated (:class:`Squeeze` run
    backwards is the unsqueeze that closes a multi-scale level)."""

    def __init__(self, layer: FlowLayer):
        super().__init__()
        self.layer = layer

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        y = self.layer.inverse(x)
        _, logdet = self.layer(y)
        return y, -logdet

    def inverse(self, y: Tensor) -> Tensor:
        return self.layer(y)[0]


# -- preprocessing ------------------------------------------------------------------------------------------------


class LogitTransform(FlowLayer):
    """Bounded data to the real line (RealNVP, section 4.1): ``p = a + (1 - 2a) (x - lo) / w``, ``y = logit(p)``.

    ``x`` in ``[lo, lo + w]`` (dequantized pixels); ``a`` keeps p away from 0 and 1. Per dimension
    ``dy/dx = (1 - 2a) / w / (p (1 - p))``, so ``logdet = sum(log((1 - 2a) / w) - log p - log(1 - p))``.
    """

    def __init__(self, low: float = 0.0, width: float = 1.0, alpha: float = 0.05):
        super().__init__()
        self.low, self.width, self.alpha = low, width, alpha

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        p = self.alpha + (1 - 2 * self.alpha) * (x - self.low) / self.width
        y = p.log() - (-p).log1p()
        logdet = _sum(math.log((1 - 2 * self.alpha) / self.width) - p.log() - (-p).log1p())
        return y, logdet

    def inverse(self, y: Tensor) -> Tensor:
        return (torch.sigmoid(y) - self.alpha) / (1 - 2 * self.alpha) * self.width + self.low


# -- masks --------------------------------------------------------------------------------------------------------


def checkerboard_mask(shape: tuple[int, ...], parity: int = 0) -> Tensor:
    """``(1, C, H, W)`` float mask, 1 where ``(i + j + parity)`` is even (RealNVP, figure 3 left)."""
    c, h, w = shape
    i, j = torch.arange(h).reshape(-1, 1), torch.arange(w).reshape(1, -1)
    return ((i + j + parity) % 2 == 0).float().expand(c, h, w).reshape(1, c, h, w)


def channel_mask(shape: tuple[int, ...], parity: int = 0) -> Tensor:
    """``(1, C, H, W)`` float mask, 1 on the first half of the channels (parity 0) or the second (RealNVP,
    figure 3 right; Glow's split of the channels)."""
    c, h, w = shape
    first = (torch.arange(c) < c // 2).float()
    m = first if parity == 0 else 1 - first
    return m.reshape(1, c, 1, 1).expand(1, c, h, w)


def alternating_mask(shape: tuple[int, ...], parity: int = 0) -> Tensor:
    """``(1, *shape)`` NICE's partition of the flattened input into even and odd coordinates (section 5.1)."""
    dims = math.prod(shape)
    return ((torch.arange(dims) + parity) % 2 == 0).float().reshape(1, *shape)


MASKS: dict[str, Callable[..., Tensor]] = {"checkerboard": checkerboard_mask, "channel": channel_mask,
                                           "alternating": alternating_mask}


class _Masked(FlowLayer):
    """A coupling's mask, made for the shape of each input (so one model runs at every size it allows)."""

    def __init__(self, mask: str, parity: int):
        super().__init__()
        if mask not in MASKS:
            raise InvalidInputError(f"unknown mask {mask!r}: use one of {', '.join(MASKS)}")
        self.mask_kind, self.parity = mask, parity
        self._cache: dict[tuple, Tensor] = {}

    def mask(self, x: Tensor) -> Tensor:
        key = (tuple(x.shape[1:]), x.device, x.dtype)
        if key not in self._cache:
            self._cache[key] = MASKS[self.mask_kind](key[0], self.parity).to(device=x.device, dtype=x.dtype)
        return self._cache[key]

    def extra_repr(self) -> str:
        return f"mask={self.mask_kind}, parity={self.parity}"


# -- couplings ----------------------------------------------------------------------------------------------------


class AdditiveCoupling(_Masked):
    """NICE's additive coupling (eq. 6): ``y = m*x + (1-m)*(x + t(m*x))``; volume preserving, ``logdet = 0``.

    ``mask`` names the partition (:data:`MASKS`), ``parity`` which half passes unchanged; ``net`` maps a tensor
    shaped like x to one of the same shape (its output is used on the ``1 - m`` half).
    """

    def __init__(self, mask: str, parity: int, net: nn.Module):
        super().__init__(mask, parity)
        self.net = net

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        m = self.mask(x)
        y = x + (1 - m) * self.net(m * x)
        return y, x.new_zeros(x.shape[0])

    def inverse(self, y: Tensor) -> Tensor:
        m = self.mask(y)
        return y - (1 - m) * self.net(m * y)


class Scaling(FlowLayer):
    """NICE's diagonal scaling layer (section 3.3): ``y = exp(s) * x``, ``logdet = sum s``.

    The only non-volume-preserving layer of NICE: it lets the model spend variance where the data has it."""

    def __init__(self, shape: tuple[int, ...]):
        super().__init__()
        self.log_scale = nn.Parameter(torch.zeros(1, *shape))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return x * self.log_scale.exp(), self.log_scale.sum().expand(x.shape[0])

    def inverse(self, y: Tensor) -> Tensor:
        return y * (-self.log_scale).exp()


class AffineCoupling(_Masked):
    """RealNVP's affine coupling (eqs. 8-9), Glow's affine coupling (table 1):

        s, t = net(m * x)                      s bounded: s = scale * tanh(s_raw)
        y    = m*x + (1-m) * (x * exp(s) + t)
        logdet = sum (1 - m) * s

    ``mask``/``parity`` as for :class:`AdditiveCoupling`; ``net`` maps ``(N, C, H, W)`` to ``(N, 2C, H, W)``
    (s_raw, t). ``scale`` is a learned per-channel factor (RealNVP's tanh rescaling); with a zero-initialised
    last layer of ``net`` every coupling starts as the identity (Glow, section 3.3).
    """

    def __init__(self, mask: str, parity: int, net: nn.Module, channels: int):
        super().__init__(mask, parity)
        self.net = net
        self.scale = nn.Parameter(torch.ones(1, channels, 1, 1))

    def _s_t(self, xm: Tensor, m: Tensor) -> tuple[Tensor, Tensor]:
        s_raw, t = self.net(xm).chunk(2, dim=1)
        s = (1 - m) * self.scale * torch.tanh(s_raw)
        return s, (1 - m) * t

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        m = self.mask(x)
        s, t = self._s_t(m * x, m)
        y = m * x + (1 - m) * (x * s.exp() + t)
        return y, _sum(s)

    def inverse(self, y: Tensor) -> Tensor:
        m = self.mask(y)
        s, t = self._s_t(m * y, m)
        return m * y + (1 - m) * ((y - t) * (-s).exp())


# -- multi-scale --------------------------------------------------------------------------------------------------


class Squeeze(FlowLayer):
    """RealNVP's squeeze (section 3.6): each 2x2 block of every channel becomes 4 channels,
    ``(N, C, H, W) -> (N, 4C, H/2, W/2)``. A permutation of the coordinates: ``logdet = 0``."""

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        n, c, h, w = x.shape
        if h % 2 or w % 2:
            raise InvalidInputError(f"squeeze needs an even height and width, got {h}x{w}: use an image size divisible by "
                                    f"2 ** (number of squeezes)")
        y = x.reshape(n, c, h // 2, 2, w // 2, 2).permute(0, 1, 3, 5, 2, 4).reshape(n, 4 * c, h // 2, w // 2)
        return y, x.new_zeros(n)

    def inverse(self, y: Tensor) -> Tensor:
        n, c4, h, w = y.shape
        c = c4 // 4
        return y.reshape(n, c, 2, 2, h, w).permute(0, 1, 4, 2, 5, 3).reshape(n, c, 2 * h, 2 * w)


class FactorOut(FlowLayer):
    """Multi-scale factoring out (RealNVP, section 3.6; Glow's split): half the channels leave as latents, the
    other half goes on through ``rest``, the next, coarser scale:

        x_1, x_2 = x[:, :C/2], x[:, C/2:]        y = [rest(x_1), x_2]        logdet = logdet of rest

    ``x_2`` is not transformed any further, so the layer's output keeps its input's shape; both halves are
    modelled by the standard-normal prior (Glow's learned conditional prior of the split is not used here).
    """

    def __init__(self, rest: FlowLayer):
        super().__init__()
        self.rest = rest

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        x1, x2 = x.chunk(2, dim=1)
        z1, logdet = self.rest(x1)
        return torch.cat([z1, x2], dim=1), logdet

    def inverse(self, y: Tensor) -> Tensor:
        z1, x2 = y.chunk(2, dim=1)
        return torch.cat([self.rest.inverse(z1), x2], dim=1)


# -- Glow ---------------------------------------------------------------------------------------------------------


class ActNorm(FlowLayer):
    """Glow's activation normalisation (section 3.1): a per-channel affine map, ``y = (x + b) * exp(logs)``,
    ``logdet = H * W * sum(logs)``.

    Data-dependent initialisation: the first forward in training mode sets ``b = -mean`` and
    ``logs = -log(std)`` of that batch per channel, so its output has zero mean and unit variance; ``initialized``
    is saved with the weights, so a loaded model never re-initialises.
    """

    def __init__(self, channels: int, eps: float = 1e-6):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.log_scale = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.register_buffer("initialized", torch.tensor(0, dtype=torch.uint8))
        self.eps = eps

    @torch.no_grad()
    def initialize(self, x: Tensor) -> None:
        """Set ``b`` and ``logs`` from the batch ``x`` (N, C, H, W): zero mean, unit variance per channel."""
        mean = x.mean(dim=(0, 2, 3), keepdim=True)
        std = x.std(dim=(0, 2, 3), keepdim=True, unbiased=False)
        self.bias.copy_(-mean)
        self.log_scale.copy_(-(std + self.eps).log())
        self.initialized.fill_(1)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        if self.training and not bool(self.initialized):
            self.initialize(x)
        h, w = x.shape[2:]
        y = (x + self.bias) * self.log_scale.exp()
        return y, (h * w * self.log_scale.sum()).expand(x.shape[0])

    def inverse(self, y: Tensor) -> Tensor:
        return y * (-self.log_scale).exp() - self.bias


class InvConv1x1(FlowLayer):
    """Glow's invertible 1x1 convolution in its LU form (section 3.2, eq. 10):

        W = P L (U + diag(sign * exp(logs)))        y_ij = W x_ij at every pixel
        logdet = H * W * sum(logs)                  (|det W| = prod |diag|: P is a permutation, L unit-lower)

    P (a fixed permutation) and ``sign`` come from the LU decomposition of a random rotation at initialisation
    and are saved as buffers; L (strictly lower part), U (strictly upper part) and ``logs`` are learned.
    Computing ``log |det W|`` costs O(C) instead of O(C^3).
    """

    def __init__(self, channels: int):
        super().__init__()
        device = _here()
        # a random rotation, decomposed on the CPU (the loader may be building on the meta device)
        q = torch.linalg.qr(torch.randn(channels, channels, device="cpu"))[0]
        p, lower, upper = torch.linalg.lu(q)
        diag = upper.diagonal()
        self.register_buffer("perm", p.to(device))
        self.register_buffer("sign", diag.sign().to(device))
        self.lower = nn.Parameter(lower.tril(-1).to(device))
        self.upper = nn.Parameter(upper.triu(1).to(device))
        self.log_diag = nn.Parameter(diag.abs().log().to(device))

    def weight(self) -> Tensor:
        """``W = P L (U + diag(sign * exp(logs)))``, ``(C, C)``."""
        c = self.log_diag.shape[0]
        eye = torch.eye(c, device=self.log_diag.device, dtype=self.log_diag.dtype)
        lower = self.lower.tril(-1) + eye
        upper = self.upper.triu(1) + torch.diag(self.sign * self.log_diag.exp())
        return self.perm @ lower @ upper

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        h, w = x.shape[2:]
        y = torch.einsum("ij,njhw->nihw", self.weight(), x)
        return y, (h * w * self.log_diag.sum()).expand(x.shape[0])

    def inverse(self, y: Tensor) -> Tensor:
        # W^-1 = U'^-1 L^-1 P^T, by two triangular solves
        c = self.log_diag.shape[0]
        eye = torch.eye(c, device=y.device, dtype=y.dtype)
        lower = self.lower.tril(-1) + eye
        upper = self.upper.triu(1) + torch.diag(self.sign * self.log_diag.exp())
        flat = y.permute(1, 0, 2, 3).reshape(c, -1)  # (C, N*H*W)
        flat = self.perm.T @ flat
        flat = torch.linalg.solve_triangular(lower, flat, upper=False, unitriangular=True)
        flat = torch.linalg.solve_triangular(upper, flat, upper=True)
        n, _, h, w = y.shape
        return flat.reshape(c, n, h, w).permute(1, 0, 2, 3)


# -- the networks inside couplings --------------------------------------------------------------------------------


class ZeroConv2d(nn.Conv2d):
    """A 3x3 convolution initialised to zero (Glow, section 3.3): a coupling built with it starts as the identity."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(in_channels, out_channels, 3, padding=1)
        if not self.weight.is_meta:
            nn.init.zeros_(self.weight)
            nn.init.zeros_(self.bias)


class ConvNet(nn.Sequential):
    """The coupling network of Glow (section 3.3) and a small RealNVP: 3x3 conv, ReLU, 1x1 conv, ReLU, zero 3x3
    conv. ``(N, C, H, W) -> (N, out, H, W)``; sizes are free, so a model built for 8x8 also runs at 16x16."""

    def __init__(self, in_channels: int, out_channels: int, hidden: int):
        super().__init__(nn.Conv2d(in_channels, hidden, 3, padding=1), nn.ReLU(),
                         nn.Conv2d(hidden, hidden, 1), nn.ReLU(), ZeroConv2d(hidden, out_channels))


class MLP(nn.Module):
    """NICE's coupling function (section 5.1): a ReLU MLP on the flattened input, ``(N, C, H, W)`` ->
    the same shape. The last layer starts at zero, so the coupling starts as the identity."""

    def __init__(self, dims: int, hidden: int, layers: int):
        super().__init__()
        sizes = [dims] + [hidden] * layers
        blocks: list[nn.Module] = []
        for a, b in zip(sizes, sizes[1:]):
            blocks += [nn.Linear(a, b), nn.ReLU()]
        last = nn.Linear(hidden, dims)
        if not last.weight.is_meta:
            nn.init.zeros_(last.weight)
            nn.init.zeros_(last.bias)
        self.net = nn.Sequential(*blocks, last)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x.flatten(1)).reshape(x.shape)

