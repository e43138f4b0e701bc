"""oneDNN linear layers (zoo.onednn): the same layer as nn.Linear to float32 rounding, the state_dict unchanged,
weight changes followed, the fallbacks, the options and their refusals; and the batched matmul Winograd's products
run on."""
from __future__ import annotations

import copy
import pickle

import pytest
import torch
from torch import nn

import zoo
from zoo import onednn
from zoo.errors import ArgumentTypeError, InvalidInputError

pytestmark = pytest.mark.skipif(not onednn.available(), reason="this torch build has no oneDNN packed linear")


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(768, 3072), nn.GELU(), nn.Linear(3072, 768, bias=False))


def test_float32_bound_and_state_dict_kept():
    model, x = mlp(), torch.randn(4, 50, 768)
    with torch.inference_mode():
        exact = copy.deepcopy(model).double()(x.double())
        mkl = model(x)
        keys = {k: v.clone() for k, v in model.state_dict().items()}
        assert onednn.onednn_linear(model) == ["0", "2"]
        assert type(model[0]) is onednn.OneDNNLinear and not onednn.has_pack(model[0].weight)  # packed on first use
        out = model(x)
        assert onednn.has_pack(model[0].weight) and onednn.packed_linear_weight(model[0].weight).is_mkldnn
    assert out.shape == mkl.shape and out.dtype == torch.float32
    # float32 in both, summed in another order: the project's float32 bound, against float64 as well
    assert (out.double() - exact).abs().max() < 1e-4 and (out - mkl).abs().max() < 1e-4
    assert not torch.equal(out, torch.zeros_like(out))
    state = model.state_dict()
    assert state.keys() == keys.keys() and all(torch.equal(state[k], keys[k]) for k in keys)


@pytest.mark.skipif(not onednn.available(*onednn.BATCHED_OPS), reason="no oneDNN packed convolution")
@pytest.mark.parametrize("rows", [1, 7, 128, 300])
def test_batched_matmul_is_the_batched_product(rows):
    g = torch.Generator().manual_seed(rows)
    weight = torch.randn(36, 48, 40, generator=g) / 48 ** 0.5
    x = torch.randn(rows, 36, 48, generator=g)
    exact = torch.einsum("rgk,gkn->rgn", x.double(), weight.double())
    packed = onednn.pack_batched_weight(weight, rows)
    out = onednn.batched_matmul(x, packed)
    assert out.shape == (rows, 36, 40) and out.dtype == torch.float32
    assert (out.double() - exact).abs().max() < 1e-5
    # leading dimensions are rows however they are split; a pack made for another row count still computes the
    # product (it is only slower)
    split = onednn.batched_matmul(x.view(1, rows, 1, 36, 48), onednn.pack_batched_weight(weight, 1))
    assert split.shape == (1, rows, 1, 36, 40) and (split.view_as(out) - out).abs().max() < 1e-5


def test_weight_changes_copies_and_pickles_are_followed():
    model, x = mlp(), torch.randn(3, 768)
    onednn.onednn_linear(model)
    with torch.no_grad():
        before = model(x)
        twin = copy.deepcopy(model)  # the pack belongs to the weight: the copy's weight packs its own
        assert onednn.has_pack(model[0].weight) and not onednn.has_pack(twin[0].weight)
        torch.testing.assert_close(twin(x), before, atol=0, rtol=0)
        assert not onednn.has_pack(pickle.loads(pickle.dumps(model))[0].weight)
        packs = len(onednn._packs)
        del twin
        assert len(onednn._packs) == packs - 2  # a freed weight's pack goes with it
        fresh = mlp()
        fresh[0].weight.mul_(2.0)
        model.load_state_dict(fresh.state_dict())  # copied in place: the same storage, a new version
        torch.testing.assert_close(model(x), fresh(x), atol=1e-4, rtol=1e-4)
        assert not torch.allclose(model(x), before, atol=1e-3)
        model.to(torch.float64).to(torch.float32)  # new storage: packed again
        torch.testing.assert_close(model(x), fresh(x), atol=1e-4, rtol=1e-4)
    with torch.inference_mode():  # inference tensors keep no version: still runs, on the storage's key
        inference_twin = copy.deepcopy(model)
        torch.testing.assert_close(inference_twin(x), fresh(x), atol=1e-4, rtol=1e-4)


def test_falls_back_to_nn_linear_where_it_does_not_apply():
    model, x = mlp(), torch.randn(2, 768)
    reference = copy.deepcopy(model)
    onednn.onednn_linear(model)
    with torch.inference_mode():  # float64: nn.Linear's own kernel, bit for bit
        torch.testing.assert_close(copy.deepcopy(model).double()(x.double()), reference.double()(x.double()),
                                   atol=0, rtol=0)
    with torch.inference_mode():  # an empty batch
        assert model(torch.randn(0, 768)).shape == (0, 768)
    out = model(x.requires_grad_())  # autograd: nn.Linear's forward, so gradients flow
    out.sum().backward()
    assert model[0].weight.grad is not None and x.grad is not None and not onednn.has_pack(model[0].weight)


def test_compiled_blocks_call_the_op():
    """With compile=True the compiled graph calls zoo::onednn_linear (inductor would pick MKL's GEMM): the same
    numbers as the eager packed layers, and the same packs."""
    from torch._inductor.utils import run_and_get_code

    model, x = mlp(), torch.randn(4, 50, 768)
    onednn.onednn_linear(model)
    with torch.inference_mode():
        eager = model(x)
        compiled, (code, *_) = run_and_get_code(torch.compile(model, dynamic=False), x)
    assert "zoo.onednn_linear" in code and "extern_kernels.addmm" not in code and "mkl" not in code.lower()
    assert (compiled - eager).abs().max() < 1e-5
    assert torch.library.opcheck(onednn.linear_op, (x[:2], model[0].weight.detach(), model[0].bias.detach()))
    pipe = zoo.create("toy-mlp", pretrained=False, device="cpu", onednn=True, compile=True)
    assert any(isinstance(m, onednn.OneDNNLinear) for m in pipe.modules())


def test_create_and_bench_options_and_their_refusals():
    pipe_free = zoo.create("toy-mlp", pretrained=False, device="cpu", onednn=True)
    assert any(isinstance(m, onednn.OneDNNLinear) for m in pipe_free.modules())
    with pytest.raises(ArgumentTypeError, match="onednn is True or False"):
        zoo.create("toy-mlp", pretrained=False, device="cpu", onednn="yes")
    with pytest.raises(InvalidInputError, match="no nn.Linear"):
        onednn.onednn_linear(nn.Sequential(nn.Conv2d(3, 8, 3)), required="onednn=True")

    from zoo import bench

    plain = bench.bench("toy-mlp", device="cpu", batch=4, repeats=1, reference=False)
    fast = bench.bench("toy-mlp", device="cpu", batch=4, repeats=1, reference=False, onednn=True)
    assert fast["settings"]["onednn"] and not plain["settings"]["onednn"]
    assert fast["results"][0]["flops"] == plain["results"][0]["flops"] > 0  # counted before the switch
    assert "oneDNN linear layers" in bench.format_report(fast)


@pytest.mark.parametrize("name,target", [
    ("swin-t", "zoo.plugins.classifiers.bench:timm_reference"),
    ("clip-vit-b32", "zoo.plugins.clip.bench:open_clip_reference"),
])
def test_families_stay_within_the_float32_bound_of_their_references(name, target):
    """The family's parity tolerance (1e-4 in float32) holds with oneDNN linear layers, against the reference
    library on the same weights (which keeps its own nn.Linear)."""
    from zoo import bench
    from zoo.registry import lazy

    torch.manual_seed(0)
    model = zoo.create(name, pretrained=False, device="cpu")
    inputs = bench.BenchInputs(batch=2, device=torch.device("cpu"), dtype=torch.float32)
    work = bench.workload(model, inputs)
    with torch.inference_mode():
        (reference,) = lazy(target)(model, inputs).values()  # built now, from the unconverted model
        onednn.onednn_linear(model)
        theirs, ours = reference(), work.run()
    # every block's layers ran packed (the heads and text layers an image embedding skips did not run at all)
    assert sum(onednn.has_pack(m.weight) for m in model.modules() if isinstance(m, onednn.OneDNNLinear)) >= 4 * 12
    torch.testing.assert_close(getattr(theirs, "pooler_output", theirs), ours, atol=1e-4, rtol=1e-4)


def test_ddpm_attention_runs_its_projections_packed():
    """The DDPM U-Net's attention multiplies by its q|k|v weights concatenated, which would bypass converted
    layers: converted, it calls them, and stays at the float32 bound of the float64 attention."""
    from zoo.plugins.ddpm.unet import Attention

    torch.manual_seed(0)
    attention = Attention(64, head_dim=32, groups=8, eps=1e-6).eval()
    x = torch.randn(2, 64, 8, 8)
    with torch.inference_mode():
        expected = copy.deepcopy(attention).double()(x.double())
        onednn.onednn_linear(attention)
        out = attention(x)
    assert all(onednn.has_pack(attention.get_submodule(n).weight) for n in ("to_q", "to_k", "to_v", "to_out.0"))
    torch.testing.assert_close(out.double(), expected, atol=1e-5, rtol=0)
