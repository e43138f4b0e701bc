"""The flow layers and models against the definition of a normalizing flow, with no trained weights:

* each layer, and each whole flow, inverts exactly (1e-5 in float32, 1e-10 in float64) at two sizes;
* each layer's log-determinant is ``log |det J|`` of its Jacobian computed by autograd (1e-6 in float64), and a
  layer with a deliberately wrong log-determinant is caught by the same check;
* on 2-D data, ``exp(log_prob)`` of a small flow integrates to 1 over a grid;
* actnorm's data-dependent initialisation gives zero mean and unit variance on its first batch.

Parameters are perturbed away from their identity initialisation (zero last layers), or the checks would pass
for couplings that do nothing.
"""
from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

from zoo.plugins.flows.glow import Glow, GlowConfig
from zoo.plugins.flows.layers import (MLP, ActNorm, AdditiveCoupling, AffineCoupling, ConvNet, FactorOut,
                                      InvConv1x1, Invert, LogitTransform, Scaling, Sequential, Squeeze)
from zoo.plugins.flows.nice import NICE, NICEConfig
from zoo.plugins.flows.realnvp import RealNVP, RealNVPConfig
from zoo.registry import Flow


def perturbed(module: torch.nn.Module, seed: int = 0, scale: float = 0.1) -> torch.nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return module.eval()  # eval: no actnorm initialisation from the test's inputs


def jacobian_logdet(layer, x: Tensor) -> tuple[float, float]:
    """(the layer's logdet, log |det J| from autograd) for one sample ``x (1, C, H, W)``."""
    def f(flat: Tensor) -> Tensor:
        return layer(flat.reshape(x.shape))[0].flatten()

    jac = torch.autograd.functional.jacobian(f, x.flatten(), vectorize=True)
    return float(layer(x)[1][0].detach()), float(torch.linalg.slogdet(jac)[1])


C = 4  # channels of the layer tests' inputs, (1, 4, 4, 4)
#: layer -> a factory taking the input's spatial size (NICE's MLP and scaling are built for one size).
LAYERS = {
    "logit": lambda size: LogitTransform(-1 / 32, 17 / 16),
    "additive-checkerboard": lambda size: AdditiveCoupling("checkerboard", 0, ConvNet(C, C, 8)),
    "additive-alternating": lambda size: AdditiveCoupling("alternating", 1, MLP(C * size**2, 16, 2)),
    "scaling": lambda size: Scaling((C, size, size)),
    "affine-checkerboard": lambda size: AffineCoupling("checkerboard", 1, ConvNet(C, 2 * C, 8), C),
    "affine-channel": lambda size: AffineCoupling("channel", 0, ConvNet(C, 2 * C, 8), C),
    "squeeze": lambda size: Squeeze(),
    "unsqueeze": lambda size: Invert(Squeeze()),
    "factor-out": lambda size: FactorOut(AffineCoupling("checkerboard", 0, ConvNet(C // 2, C, 8), C // 2)),
    "actnorm": lambda size: ActNorm(C),
    "invconv-lu": lambda size: InvConv1x1(C),
}
MODELS = {
    "nice": lambda size: NICE(NICEConfig(image_size=size, hidden=32, hidden_layers=2)),
    "realnvp": lambda size: RealNVP(RealNVPConfig(image_size=size, hidden=8)),
    "glow": lambda size: Glow(GlowConfig(image_size=size, steps=2, hidden=8)),
}


def layer_input(name: str, dtype=torch.float64, n: int = 1, size: int = 4) -> Tensor:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, C, size, size, generator=g, dtype=dtype)
    if name == "logit":  # its domain: dequantized pixels in [-1/32, 1 + 1/32)
        x = torch.rand(n, C, size, size, generator=g, dtype=dtype) * 17 / 16 - 1 / 32
    return x


@pytest.mark.parametrize("name", list(LAYERS))
def test_layer_logdet_is_the_jacobians(name):
    torch.manual_seed(0)
    layer = perturbed(LAYERS[name](4).double(), scale=0.3)
    ours, autograd = jacobian_logdet(layer, layer_input(name))
    assert abs(ours - autograd) <= 1e-6, (ours, autograd)


@pytest.mark.parametrize("name", list(LAYERS))
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.float64, 1e-10)])
@pytest.mark.parametrize("size", [4, 8])
def test_layer_inverts(name, dtype, tol, size):
    torch.manual_seed(0)
    layer = perturbed(LAYERS[name](size).to(dtype), scale=0.3)
    x = layer_input(name, dtype, n=3, size=size)
    y, logdet = layer(x)
    assert logdet.shape == (3,)
    assert (layer.inverse(y) - x).abs().max() <= tol * (1 + x.abs().max())


@pytest.mark.parametrize("name", list(MODELS))
def test_whole_flow_logdet_is_the_jacobians(name):
    torch.manual_seed(0)
    model = perturbed(MODELS[name](4).double(), scale=0.05)
    x = torch.rand(1, 1, 4, 4, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    ours, autograd = jacobian_logdet(model, x)
    assert abs(ours - autograd) <= 1e-6, (ours, autograd)


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.float64, 1e-10)])
@pytest.mark.parametrize("size", [8, 16])
def test_whole_flow_inverts(name, dtype, tol, size):
    torch.manual_seed(0)
    model = perturbed(MODELS[name](size).to(dtype), scale=0.05)
    x = torch.rand(4, 1, size, size, generator=torch.Generator().manual_seed(3), dtype=dtype) * 17 / 16 - 1 / 32
    z, logdet = model.encode(x)
    assert z.shape == x.shape and logdet.shape == (4,)
    assert (model.decode(z) - x).abs().max() <= tol


class ForgetsTheMask(AffineCoupling):
    """A plausible bug: the log-determinant sums s over every coordinate, not just the transformed half."""

    def forward(self, x):
        y, _ = super().forward(x)
        s_raw, _ = self.net(self.mask(x) * x).chunk(2, dim=1)
        return y, (self.scale * torch.tanh(s_raw)).flatten(1).sum(1)


class ActNormWithoutArea(ActNorm):
    """Another: actnorm's log-determinant without the H*W factor (per pixel, not per image)."""

    def forward(self, x):
        y, logdet = super().forward(x)
        return y, logdet / (x.shape[2] * x.shape[3])


@pytest.mark.parametrize("broken", [lambda: ForgetsTheMask("checkerboard", 0, ConvNet(C, 2 * C, 8), C),
                                    lambda: ActNormWithoutArea(C)], ids=["coupling-mask", "actnorm-area"])
def test_a_broken_logdet_fails_the_check(broken):
    torch.manual_seed(0)
    layer = perturbed(broken().double(), scale=0.3)
    ours, autograd = jacobian_logdet(layer, layer_input("broken"))
    assert abs(ours - autograd) > 1e-2, (ours, autograd)


def pointwise(cin: int, cout: int, hidden: int = 16) -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Conv2d(cin, hidden, 1), torch.nn.Tanh(), torch.nn.Conv2d(hidden, cout, 1))


class Tiny2D(Flow):
    """A flow over 2-D points, as (N, 2, 1, 1) "images": affine and additive couplings, actnorm, an LU 1x1
    convolution and NICE's scaling, with small pointwise networks."""

    event_shape = (2, 1, 1)

    def __init__(self):
        super().__init__()
        self.body = Sequential(AffineCoupling("channel", 0, pointwise(2, 4), 2), ActNorm(2), InvConv1x1(2),
                               AffineCoupling("channel", 1, pointwise(2, 4), 2),
                               AdditiveCoupling("channel", 0, pointwise(2, 2)), Scaling((2, 1, 1)))

    def forward(self, x):
        return self.body(x)

    def inverse(self, z):
        return self.body.inverse(z)


def test_density_integrates_to_one():
    torch.manual_seed(0)
    flow = perturbed(Tiny2D().double(), scale=0.2)
    lim, n = 9.0, 451
    axis = torch.linspace(-lim, lim, n, dtype=torch.float64)
    grid = torch.stack(torch.meshgrid(axis, axis, indexing="ij"), -1).reshape(-1, 2, 1, 1)
    with torch.no_grad():
        density = torch.cat([flow.log_prob(chunk).exp() for chunk in grid.split(100_000)])
    total = float(density.sum()) * (axis[1] - axis[0]) ** 2
    assert abs(total - 1) < 1e-3, total
    # and it is not the prior's own integral: the flow changed the density
    prior = torch.cat([flow.prior_log_prob(chunk).exp() for chunk in grid.split(100_000)])
    assert float((density - prior).abs().max()) > 1e-2


def test_actnorm_initialises_from_its_first_batch():
    layer = ActNorm(3).double().train()
    scale = torch.tensor([0.1, 2.0, 7.0], dtype=torch.float64).reshape(1, 3, 1, 1)
    shift = torch.tensor([5.0, -1.0, 0.3], dtype=torch.float64).reshape(1, 3, 1, 1)
    x = torch.randn(64, 3, 5, 5, dtype=torch.float64) * scale + shift
    y, _ = layer(x)
    assert torch.allclose(y.mean(dim=(0, 2, 3)), torch.zeros(3, dtype=torch.float64), atol=1e-10)
    assert torch.allclose(y.std(dim=(0, 2, 3), unbiased=False), torch.ones(3, dtype=torch.float64), atol=1e-5)
    assert bool(layer.initialized)
    before = layer.bias.detach().clone()
    layer(x * 3 + 1)  # later batches do not re-initialise
    assert torch.equal(layer.bias.detach(), before)
    # a layer in evaluation mode (a loaded model) does not initialise at all
    fresh = ActNorm(3).eval()
    fresh(x)
    assert not bool(fresh.initialized) and float(fresh.bias.detach().abs().max()) == 0


def test_invconv_weight_is_plu_and_its_logdet_is_cheap():
    conv = perturbed(InvConv1x1(6).double(), scale=0.3).requires_grad_(False)
    w = conv.weight()
    assert abs(float(torch.linalg.slogdet(w)[1]) - float(conv.log_diag.sum().detach())) < 1e-10
    x = torch.randn(2, 6, 3, 3, dtype=torch.float64)
    y, logdet = conv(x)
    assert torch.allclose(y, torch.nn.functional.conv2d(x, w[:, :, None, None]))
    assert (conv.inverse(y) - x).abs().max() < 1e-12
    assert torch.allclose(logdet.detach(), torch.full((2,), 9 * float(torch.linalg.slogdet(w.detach())[1]),
                                                      dtype=torch.float64))


def test_squeeze_is_the_published_permutation():
    x = torch.arange(16.0).reshape(1, 1, 4, 4)
    y, _ = Squeeze()(x)
    assert y.shape == (1, 4, 2, 2)
    assert y[0, :, 0, 0].tolist() == [0.0, 1.0, 4.0, 5.0]  # the top-left 2x2 block becomes four channels
    with pytest.raises(ValueError, match="even"):
        Squeeze()(torch.zeros(1, 1, 3, 4))


def test_models_refuse_a_wrong_size():
    with pytest.raises(ValueError, match="shape"):
        MODELS["glow"](8).encode(torch.rand(1, 1, 16, 16))
    with pytest.raises(ValueError, match="divisible"):
        Glow(GlowConfig(image_size=6))


def test_bits_per_dim_of_the_uniform_model():
    """An identity body under a flat density is the uniform model over the 17 levels: log2(17) bits/dim once the
    prior is replaced by the uniform density on the dequantization interval (a check of bits_per_dim's units)."""
    model = MODELS["nice"](8)

    class Uniform(type(model)):
        def forward(self, x):
            return x, torch.zeros(len(x))

        def prior_log_prob(self, z):
            return torch.full((len(z),), -64 * math.log(17 / 16))

    flat = Uniform.__new__(Uniform)
    flat.__dict__ = model.__dict__
    bpd = flat.bits_per_dim(torch.rand(5, 1, 8, 8))
    assert torch.allclose(bpd, torch.full((5,), math.log2(17)), atol=1e-6)
