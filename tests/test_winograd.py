"""Winograd F(4x4, 3x3) convolutions (zoo/winograd.py): the same convolution as F.conv2d, exact in float64, within a
stated bound in float32; a drop-in nn.Conv2d (same state_dict) that falls back to F.conv2d where it does not apply.

Each new layer shape compiles once (10-30 s of C++ on a cold cache), so one test runs the compiled path and the
others run the same functions eagerly (``eager_winograd``, tests/conftest.py): what torch.compile makes of them is
that test's subject.
"""
from __future__ import annotations

import copy
import pickle

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import zoo
from zoo import onednn
from zoo.errors import InvalidInputError
from zoo.winograd import (MAX_PACKS, WinogradConv2d, eligible, pack_weight, tile_count, transform_weight, winograd,
                          winograd_conv2d)

F64 = torch.float64


def _case(n, c_in, c_out, h, w, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c_in, h, w, generator=g, dtype=dtype)
    weight = torch.randn(c_out, c_in, 3, 3, generator=g, dtype=dtype) / (9 * c_in) ** 0.5
    bias = torch.randn(c_out, generator=g, dtype=dtype)
    return x, weight, bias


@pytest.mark.parametrize("padding", [1, 0])
def test_eager_transforms_are_the_convolution_float64(padding):
    # Sizes that are not multiples of the 4-wide tile: the far-side padding and the crop are exercised.
    x, weight, bias = _case(2, 5, 7, 9, 6, F64)
    ours = winograd_conv2d(x, transform_weight(weight), bias, padding=padding)
    ref = F.conv2d(x, weight, bias, padding=padding)
    assert ours.shape == ref.shape
    assert (ours - ref).abs().max().item() <= 1e-12


def test_compiled_module_float64_float32_and_channels_last_input():
    conv = nn.Conv2d(32, 40, 3, padding=1).double()
    x = torch.randn(2, 32, 10, 7, dtype=F64)
    ref = conv(x)
    assert winograd(conv) == [""]
    assert type(conv) is WinogradConv2d and isinstance(conv, nn.Conv2d)
    with torch.no_grad():
        ours = conv(x)
        again = conv(x.contiguous(memory_format=torch.channels_last))
    assert (ours - ref).abs().max().item() <= 1e-12
    assert torch.equal(ours, again)
    assert not conv._packs  # float64's products run through einsum
    conv.float()  # float32: the products through oneDNN, on a weight packed for this input's tile count
    with torch.no_grad():
        single = conv(x.float())
    assert (single.double() - ref).abs().max().item() <= 1e-4
    expected = [tile_count(x.shape, 1)] if onednn.available(*onednn.BATCHED_OPS) else []
    assert list(conv._packs) == expected


@pytest.mark.skipif(not onednn.available(*onednn.BATCHED_OPS), reason="no oneDNN packed convolution")
def test_onednn_products_packed_per_input_size(eager_winograd):
    x, weight, bias = _case(2, 40, 48, 9, 11, torch.float32, seed=2)
    u = transform_weight(weight)
    exact = F.conv2d(x.double(), weight.double(), bias.double(), padding=1)
    by_einsum = winograd_conv2d(x, u, bias)
    by_onednn = winograd_conv2d(x, u, bias, packed=pack_weight(u, tile_count(x.shape, 1)))
    assert (by_onednn.double() - exact).abs().max().item() <= 1e-4
    assert (by_onednn - by_einsum).abs().max().item() <= 1e-5  # the same products, summed in another order

    conv = nn.Conv2d(40, 48, 3, padding=1)
    with torch.no_grad():
        conv.weight.copy_(weight), conv.bias.copy_(bias)
    winograd(conv)
    with torch.no_grad():
        assert torch.equal(conv(x), by_onednn)
        for n in range(1, MAX_PACKS + 3):  # one pack per input size, the latest MAX_PACKS kept
            conv(x[:1].expand(n, -1, -1, -1))
        assert list(conv._packs) == [tile_count((n, 40, 9, 11), 1) for n in range(3, MAX_PACKS + 3)]
        for twin in (copy.deepcopy(conv), pickle.loads(pickle.dumps(conv))):  # a copy packs its own
            assert twin._packs is None and torch.equal(twin(x), by_onednn)


def test_float32_bound(eager_winograd):
    """In float32 the transforms' constants (up to 8 and 1/24) round more than the direct sum: the bound is stated
    against float64, beside what F.conv2d itself gets there."""
    x, weight, bias = _case(2, 64, 64, 12, 12, torch.float32, seed=1)
    conv = nn.Conv2d(64, 64, 3, padding=1)
    with torch.no_grad():
        conv.weight.copy_(weight), conv.bias.copy_(bias)
    exact = F.conv2d(x.double(), weight.double(), bias.double(), padding=1)
    direct = (conv(x) - exact).abs().max().item()
    winograd(conv)
    with torch.no_grad():
        err = (conv(x) - exact).abs().max().item()
    print(f"float32 max abs error vs float64: Winograd {err:.2e}, F.conv2d {direct:.2e}, output scale "
          f"{exact.abs().max().item():.2f}")
    assert err <= 2e-4
    assert err > direct  # the cost is real and stated, not hidden: if this flips, update the docs


def test_state_dict_kept_and_weight_changes_followed(eager_winograd):
    model = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1),    # 3 input channels: too few
                          nn.Conv2d(32, 32, 3, padding=1),   # converted
                          nn.Conv2d(32, 32, 3, stride=2),    # strided: not
                          nn.Conv2d(32, 32, 1),              # 1x1: not
                          nn.Conv2d(32, 32, 3, padding=0))   # converted
    model = model.double()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(1, 3, 16, 16, dtype=F64)
    with torch.no_grad():
        ref = model(x)
    assert winograd(model) == ["1", "4"]
    assert [type(m).__name__ for m in model] == ["Conv2d", "WinogradConv2d", "Conv2d", "Conv2d", "WinogradConv2d"]
    state = model.state_dict()
    assert state.keys() == before.keys() and all(torch.equal(state[k], before[k]) for k in state)
    with torch.no_grad():
        assert (model(x) - ref).abs().max().item() <= 1e-12
        # new weights (a load copies into the same tensors): the cached transform must follow
        new = {k: torch.randn_like(v) * 0.1 for k, v in before.items()}
        model.load_state_dict(new)
        plain = nn.Sequential(*[nn.Conv2d(m.in_channels, m.out_channels, 3 if m.kernel_size == (3, 3) else 1,
                                          stride=m.stride, padding=m.padding) for m in model]).double()
        plain.load_state_dict(new)
        assert (model(x) - plain(x)).abs().max().item() <= 1e-12
        assert not torch.allclose(plain(x), ref)


def test_falls_back_where_it_does_not_apply():
    conv = nn.Conv2d(32, 32, 3, padding=1)
    x = torch.randn(1, 32, 8, 8, requires_grad=True)
    ref = F.conv2d(x, conv.weight, conv.bias, padding=1)
    winograd(conv)
    out = conv(x)  # autograd: the ordinary convolution (its weight now channels-last: rounding only), with gradient
    assert out.grad_fn is not None and (out - ref).abs().max().item() <= 1e-5
    out.sum().backward()
    assert x.grad is not None and conv.weight.grad is not None
    with torch.no_grad():  # a dtype without a Winograd path
        half = conv.to(torch.bfloat16)(x.detach().bfloat16())
    assert half.dtype == torch.bfloat16 and half.shape == ref.shape


def test_eligibility_and_bad_input():
    assert eligible(nn.Conv2d(64, 64, 3, padding=1))
    assert not eligible(nn.Conv2d(64, 64, 3, padding=1, dilation=2))
    assert not eligible(nn.Conv2d(64, 64, 3, padding=1, groups=2))
    assert not eligible(nn.Conv2d(64, 64, 3, padding=2))
    assert not eligible(nn.Conv2d(64, 64, 3, padding=1, padding_mode="reflect"))
    assert not eligible(nn.Conv2d(16, 64, 3, padding=1))
    assert eligible(nn.Conv2d(16, 64, 3, padding=1), min_channels=16)
    with pytest.raises(InvalidInputError, match="nn.Module"):
        winograd("not a model")
    with pytest.raises(InvalidInputError, match="min_channels"):
        winograd(nn.Conv2d(64, 64, 3), min_channels=0)


def test_create_option():
    pipe = zoo.create("ddim-cifar", pretrained=False, device="cpu", winograd=True)
    kinds = [type(m) for m in pipe.modules() if isinstance(m, nn.Conv2d)]
    assert kinds.count(WinogradConv2d) == 47  # every stride-1 3x3 of the U-Net but the 3-channel conv_in and conv_out
    with pytest.raises(InvalidInputError, match="do not combine"):
        zoo.create("ddim-cifar", pretrained=False, device="cpu", winograd=True, compile=True)
    with pytest.raises(InvalidInputError, match="no convolution Winograd applies to"):
        zoo.create("toy-mlp", pretrained=False, device="cpu", winograd=True)
    with pytest.raises(TypeError, match="True or False"):
        zoo.create("ddim-cifar", pretrained=False, device="cpu", winograd="yes")
