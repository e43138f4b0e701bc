"""``zoo bench``'s references for CLIP: transformers' ``CLIPModel`` and open_clip's ``CLIP`` on zoo's weights.

Each twin is built from zoo's config and filled with zoo's tensors under the library's names (zoo's rename tables
run backwards, zoo's fused q|k|v split for transformers, open_clip's projections transposed back), then times
the same work: image embeddings of the preprocessed batch, or with ``zoo bench --text`` text embeddings of the
same token ids.
"""
from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor

from zoo.weights import rename

from .clip import OPEN_CLIP, TRANSFORMERS_CLIP, CLIPConfig


def _library_state(model: Any, names: list[str], table: Any) -> dict[str, Tensor]:
    """``model``'s tensors under the library's ``names``: each name renamed by zoo's ``table`` to find its tensor;
    a q, k or v projection is its third of zoo's fused ``qkv``."""
    ours = model.state_dict()
    state = {}
    for name in names:
        (key,) = rename({name: None}, table)
        head, _, leaf = key.rpartition(".")  # ...attn.q + weight
        if head.endswith((".attn.q", ".attn.k", ".attn.v")):
            fused = ours[f"{head[:-2]}.qkv.{leaf}"]
            state[name] = fused.chunk(3)["qkv".index(head[-1])]
        else:
            state[name] = ours[key]
    return state


def _load(twin: torch.nn.Module, state: dict[str, Tensor]) -> None:
    """Load every tensor of ``twin`` but the buffers it computes itself (position ids, the causal mask)."""
    missing = twin.load_state_dict(state, strict=False).missing_keys
    if any(not k.endswith(("position_ids", "attn_mask")) for k in missing):
        raise KeyError(f"{type(twin).__name__}: no zoo tensor for {missing}")


def transformers_config(cfg: CLIPConfig) -> dict[str, Any]:
    """zoo's CLIP config as a transformers ``CLIPConfig``'s arguments."""
    def tower(t: Any) -> dict[str, Any]:
        return {"hidden_size": t.width, "num_hidden_layers": t.layers, "num_attention_heads": t.heads,
                "intermediate_size": t.mlp_dim, "hidden_act": cfg.act, "layer_norm_eps": cfg.eps}

    return {"projection_dim": cfg.embed_dim,
            "vision_config": {**tower(cfg.vision), "image_size": cfg.image_size, "patch_size": cfg.patch_size},
            "text_config": {**tower(cfg.text), "vocab_size": cfg.vocab_size,
                            "max_position_embeddings": cfg.context_length}}


def _run(inputs: Any, image: Callable[[Tensor], Any], text: Callable[[Tensor], Any]) -> Callable[[], Any]:
    """The work ``zoo bench`` gave zoo: image embeddings of a float batch, text embeddings of int64 ids."""
    x = inputs.x
    if x.is_floating_point():
        x = x.to(inputs.ref_dtype)
        return lambda: image(x)
    return lambda: text(x)


def transformers_reference(model: Any, inputs: Any) -> dict[str, Callable[[], Any]]:
    """``{"transformers CLIPModel": run}`` on ``model``'s weights."""
    import transformers

    twin = transformers.CLIPModel(transformers.CLIPConfig(**transformers_config(model.config))).eval()
    names = [n for n in twin.state_dict() if not n.endswith("position_ids")]
    _load(twin, _library_state(model, names, TRANSFORMERS_CLIP))
    twin.to(device=inputs.device, dtype=inputs.ref_dtype)
    return {"transformers CLIPModel": _run(inputs, lambda x: twin.get_image_features(pixel_values=x),
                                           lambda ids: twin.get_text_features(input_ids=ids))}


def open_clip_reference(model: Any, inputs: Any) -> dict[str, Callable[[], Any]]:
    """``{"open_clip": run}`` on ``model``'s weights."""
    from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg

    cfg: CLIPConfig = model.config
    v, t = cfg.vision, cfg.text
    twin = CLIP(cfg.embed_dim, CLIPVisionCfg(layers=v.layers, width=v.width, head_width=v.width // v.heads,
                                             mlp_ratio=v.mlp_dim / v.width, patch_size=cfg.patch_size,
                                             image_size=cfg.image_size),
                CLIPTextCfg(context_length=cfg.context_length, vocab_size=cfg.vocab_size, width=t.width,
                            heads=t.heads, layers=t.layers, mlp_ratio=t.mlp_dim / t.width),
                quick_gelu=cfg.act == "quick_gelu").eval()
    names = [n for n in twin.state_dict() if n != "attn_mask"]
    state = _library_state(model, names, OPEN_CLIP)
    for name in ("visual.proj", "text_projection"):  # open_clip computes x @ P: nn.Linear holds P.T
        state[name] = state[name].T
    _load(twin, state)
    twin.to(device=inputs.device, dtype=inputs.ref_dtype)
    return {"open_clip": _run(inputs, twin.encode_image, twin.encode_text)}
