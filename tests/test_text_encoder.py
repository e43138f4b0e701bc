"""``encode_tokens``, the TextEncoder contract of CLIP and SigLIP, against the reference text models: the per-token
states of layer None (the final states, after the final LayerNorm), -1, -2 (what SD3 reads from CLIP) and 0 (the
embeddings), the pooled projection whatever the layer, and the mask; float32 within 1e-4, float64 within 1e-8.

References: transformers' ``CLIPTextModelWithProjection`` (the class SD3 loads its CLIP text encoders with) and
``SiglipModel``'s text model, called with ``output_hidden_states=True`` and no attention mask, as SD3 calls them;
open_clip's text towers read through forward hooks (layer 0: the input of its transformer, ``i``: the output of
residual block ``i``, None: the output of ``ln_final``). The fixtures are the real configs in the real Hub layouts
with 2 blocks per text tower and random weights (``tests/helpers/clip_repos.py``).
"""
from __future__ import annotations

import copy

import pytest
import torch
import transformers

import zoo
from helpers.clip_repos import (TEXTS, hf_clip_repo, hf_siglip_repo, maxdiff, needs_checkpoints,  # noqa: F401
                                one_thread, open_clip_repo, siglip_reference_tokenizer, timm_siglip_repo)
from zoo.registry import TextFeatures

pytestmark = needs_checkpoints

TOL = {torch.float64: 1e-8, torch.float32: 1e-4}
DTYPES = [torch.float64, torch.float32]
LAYERS = [None, -1, -2, 0]


@pytest.fixture(scope="module")
def hf_clip(tmp_path_factory: pytest.TempPathFactory):
    return hf_clip_repo(tmp_path_factory.mktemp("hf_clip"))[0]


@pytest.fixture(scope="module")
def hf_siglip(tmp_path_factory: pytest.TempPathFactory):
    return hf_siglip_repo(tmp_path_factory.mktemp("hf_siglip"))


@pytest.fixture(scope="module")
def oc_clip(tmp_path_factory: pytest.TempPathFactory):
    return open_clip_repo(tmp_path_factory.mktemp("open_clip"))


@pytest.fixture(scope="module")
def timm_siglip(tmp_path_factory: pytest.TempPathFactory):
    return timm_siglip_repo(tmp_path_factory.mktemp("timm_siglip"), text_layers=2)


def check_layers(model, ids: torch.Tensor, states: dict, pooled: torch.Tensor, dtype: torch.dtype) -> TextFeatures:
    """``encode_tokens(ids, layer=...)`` against the reference ``states[layer]`` for every layer of LAYERS, and
    its pooled embedding against ``pooled`` (and against ``encode_text``, the fast path) each time."""
    for layer in LAYERS:
        feats = model.encode_tokens(ids, layer=layer)
        assert feats.states.shape == states[layer].shape and feats.states.dtype == dtype
        assert maxdiff(feats.states, states[layer]) < TOL[dtype], layer
        assert maxdiff(feats.pooled, pooled) < TOL[dtype], layer
    assert maxdiff(model.encode_text(ids), feats.pooled) < TOL[dtype]
    assert feats.mask.shape == ids.shape and feats.mask.dtype == torch.bool
    return feats


def transformers_states(out) -> dict:
    """A transformers text model's output -> {layer: states} as ``encode_tokens`` numbers them."""
    return {None: out.last_hidden_state, **{layer: out.hidden_states[layer] for layer in LAYERS if layer is not None}}


def open_clip_states(tower, encode, ids: torch.Tensor) -> tuple[dict, torch.Tensor]:
    """An open_clip text tower (``transformer``, ``ln_final``) run once through ``encode(ids)``, its hidden states
    caught by hooks -> ({layer: states}, the pooled projection ``encode`` returns)."""
    caught: dict = {}
    blocks = tower.transformer.resblocks
    sequence_first = not tower.transformer.batch_first  # older open_clip ran its blocks on (L, N, D)

    def keep(layer, x: torch.Tensor, transpose: bool = False) -> None:
        caught[layer] = x.transpose(0, 1) if transpose else x
    hooks = [tower.transformer.register_forward_pre_hook(lambda module, args: keep(0, args[0])),
             tower.ln_final.register_forward_hook(lambda module, args, out: keep(None, out)),
             *(block.register_forward_hook(lambda module, args, out, i=i: keep(i, out, sequence_first))
               for i, block in enumerate(blocks, 1))]
    try:
        pooled = encode(ids)
    finally:
        for hook in hooks:
            hook.remove()
    numbered = {layer: layer if layer is None or layer >= 0 else len(blocks) + 1 + layer for layer in LAYERS}
    return {layer: caught[n] for layer, n in numbered.items()}, pooled


@pytest.mark.parametrize("dtype", DTYPES)
def test_clip_transformers(hf_clip, dtype: torch.dtype) -> None:
    """Against ``CLIPTextModelWithProjection`` loaded from the same repo; the mask is the tokenizer's own
    attention mask (the text through its first end token)."""
    model = zoo.create("clip-vit-b32", weights=hf_clip, device="cpu", dtype=dtype)
    ref = transformers.CLIPTextModelWithProjection.from_pretrained(hf_clip).to(dtype).eval()
    enc = transformers.CLIPTokenizer.from_pretrained(hf_clip)(TEXTS, padding="max_length", max_length=77,
                                                              return_tensors="pt")
    with torch.no_grad():
        out = ref(input_ids=enc.input_ids, output_hidden_states=True)
        feats = check_layers(model, enc.input_ids, transformers_states(out), out.text_embeds, dtype)
    assert feats.states.shape == (len(TEXTS), 77, 512)
    assert torch.equal(feats.mask, enc.attention_mask.bool())


@pytest.mark.parametrize("dtype", DTYPES)
def test_clip_open_clip(oc_clip, dtype: torch.dtype) -> None:
    """Against open_clip's CLIP text tower; open_clip pads with 0, so the text is the ids that are not 0."""
    path, ref = oc_clip
    ref = copy.deepcopy(ref).to(dtype)
    model = zoo.create("clip-vit-b32-laion2b", weights=path, device="cpu", dtype=dtype)
    ids = model.tokenize(TEXTS)
    with torch.no_grad():
        states, pooled = open_clip_states(ref, ref.encode_text, ids)
        feats = check_layers(model, ids, states, pooled, dtype)
    assert torch.equal(feats.mask, ids != 0)


@pytest.mark.parametrize("dtype", DTYPES)
def test_siglip_transformers(hf_siglip, dtype: torch.dtype) -> None:
    """Against ``SiglipModel.text_model``; SigLIP attends to its ``</s>`` padding, and the mask marks the text as
    transformers' SiglipTokenizer's attention mask does (through the first ``</s>``)."""
    path, ref = hf_siglip
    ref = copy.deepcopy(ref.text_model).to(dtype)
    model = zoo.create("siglip-b16", weights=path, device="cpu", dtype=dtype)
    enc = siglip_reference_tokenizer(path / "spiece.model")(TEXTS, padding="max_length", max_length=64,
                                                            truncation=True, return_tensors="pt")
    assert torch.equal(model.tokenize(TEXTS), enc.input_ids)
    with torch.no_grad():
        out = ref(input_ids=enc.input_ids, output_hidden_states=True)
        feats = check_layers(model, enc.input_ids, transformers_states(out), out.pooler_output, dtype)
    assert feats.states.shape == (len(TEXTS), 64, 768)
    assert torch.equal(feats.mask, enc.attention_mask.bool())
    assert feats.mask[-1].sum() == 1  # the empty text is its end token alone


@pytest.mark.parametrize("dtype", DTYPES)
def test_siglip_open_clip(timm_siglip, dtype: torch.dtype) -> None:
    """Against open_clip's SigLIP text tower (timm/ViT-B-16-SigLIP's layout), run with its exact GELU."""
    path, ref = timm_siglip
    ref = copy.deepcopy(ref.text).to(dtype)
    model = zoo.create("siglip-b16-timm", weights=path, device="cpu", dtype=dtype, act="gelu")
    ids = model.tokenize(TEXTS)
    with torch.no_grad():
        states, pooled = open_clip_states(ref, ref, ids)
        feats = check_layers(model, ids, states, pooled, dtype)
    assert torch.equal(feats.mask.sum(-1), (ids != 1).sum(-1) + 1)  # the text's pieces and one </s>
