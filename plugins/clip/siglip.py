"""SigLIP (Zhai et al. 2023): CLIP's two towers trained with a per-pair sigmoid loss instead of a softmax.

What differs from CLIP (``clip.py``, whose Transformer block and text tower this file reuses):

* image tower: patch embedding with a bias, no class token and no LayerNorm before the blocks; a LayerNorm over
  all tokens after them, then multi-head attention pooling (MAP): one learned probe attends over the tokens,
  followed by a residual MLP. The pooled vector is the embedding (no projection);
* text tower: bidirectional attention over text padded to a fixed 64 tokens (with ``</s>``, which the tower
  attends to like any token), pooled at the last position, and a projection with a bias;
* a learned ``logit_bias`` next to ``logit_scale``; probabilities are ``sigmoid(logit)`` per image-text pair;
* GELU is big_vision's tanh approximation, as the weights were trained (transformers agrees; timm/open_clip use
  the exact erf form on the same weights, which moves embeddings by ~1e-3; ``act="gelu"`` reproduces them).
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from zoo.registry.config import bound, check_fields
from zoo.registry.errors import InvalidInputError, UnsupportedError
from zoo.weights import fuse_qkv

from .clip import (MLP, OPEN_CLIP_BLOCK, TRANSFORMERS_BLOCK, TRANSFORMERS_TEXT,
                   ImageTextModel, TextTower, TowerConfig, _blocks, _hf_tower, _one_value, _square,
                   canonical_activation)


@dataclass(frozen=True)
class SigLIPConfig:
    """Defaults: google/siglip-base-patch16-224."""

    image_size: int = bound(224, 1, 4096)
    patch_size: int = bound(16, 1, 1024)
    vision: TowerConfig = TowerConfig()
    vocab_size: int = bound(32000, 1, 10_000_000)
    context_length: int = bound(64, 1, 65536)
    text: TowerConfig = TowerConfig()
    embed_dim: int = bound(768, 1, 16384)  # the text projection's output; the image embedding is the pooled vision width
    act: str = "gelu_tanh"
    eps: float = bound(1e-6, 1e-12, 1.0)

    def __post_init__(self) -> None:
        check_fields(self, "SigLIP config")

    @classmethod
    def from_transformers(cls, cfg: dict[str, Any]) -> SigLIPConfig:
        """From a transformers ``SiglipModel`` config.json; missing fields take transformers' defaults."""
        v, t = cfg.get("vision_config") or {}, cfg.get("text_config") or {}
        if not v.get("vision_use_head", True):
            raise UnsupportedError("SigLIP without the attention-pooling head (vision_use_head=false)")
        default = "gelu_pytorch_tanh"
        act = _one_value("hidden_act", v.get("hidden_act", default), t.get("hidden_act", default))
        eps = _one_value("layer_norm_eps", v.get("layer_norm_eps", 1e-6), t.get("layer_norm_eps", 1e-6))
        text = _hf_tower(t, TowerConfig())
        return cls(image_size=_square(v.get("image_size", 224)), patch_size=v.get("patch_size", 16),
                   vision=_hf_tower(v, TowerConfig()), vocab_size=t.get("vocab_size", 32000),
                   context_length=t.get("max_position_embeddings", 64), text=text,
                   embed_dim=t.get("projection_size") or text.width, act=canonical_activation(act), eps=eps)

    @classmethod
    def from_open_clip(cls, cfg: dict[str, Any]) -> SigLIPConfig:
        """From an open_clip ``open_clip_config.json`` of a timm-trunk SigLIP (``timm/ViT-*-SigLIP*``).

        The image tower is named by its timm model (``vit_base_patch16_siglip_224``); its width, depth, heads and
        patch size come from timm's registry.
        """
        m = cfg.get("model_cfg", cfg)
        v, t = m.get("vision_cfg", {}), m.get("text_cfg", {})
        if v.get("timm_pool") != "map" or v.get("timm_proj", "linear") not in ("none", "", None):
            raise UnsupportedError(f"timm image tower with pool={v.get('timm_pool')!r}, "
                                   f"proj={v.get('timm_proj')!r}: zoo's SigLIP implements 'map' and no projection")
        if not t.get("no_causal_mask") or t.get("pool_type") != "last" or not t.get("proj_bias"):
            raise UnsupportedError("open_clip text tower that is not SigLIP's (bidirectional, last-token pool, "
                                   "projection with bias)")
        eps = (t.get("norm_kwargs") or {}).get("eps", 1e-6)
        vision, patch_size = _timm_tower(v["timm_model_name"], eps)
        tw = t.get("width", 512)
        return cls(image_size=_square(v.get("image_size", 224)), patch_size=patch_size, vision=vision,
                   vocab_size=t.get("vocab_size", 32000), context_length=t.get("context_length", 64),
                   text=TowerConfig(width=tw, layers=t.get("layers", 12), heads=t.get("heads", 8),
                                    mlp_dim=int(tw * t.get("mlp_ratio", 4.0))),
                   embed_dim=m["embed_dim"], act="gelu_tanh", eps=eps)


def _timm_tower(name: str, eps: float) -> tuple[TowerConfig, int]:
    """Width, depth, heads, MLP size and patch size of a timm SigLIP ViT, read from timm's model definition on the
    meta device (no weights), after checking it is the architecture :class:`VisionTower` implements."""
    import timm
    with torch.device("meta"):
        trunk = timm.create_model(name, pretrained=False, num_classes=0)
    block = trunk.blocks[0]
    if (trunk.cls_token is not None or trunk.global_pool != "map" or not isinstance(trunk.norm_pre, nn.Identity)
            or not isinstance(trunk.fc_norm, nn.Identity) or trunk.norm.eps != eps):
        raise UnsupportedError(f"timm model {name!r} is not a SigLIP ViT (no class token, MAP pooling, no "
                               f"pre-norm, LayerNorm eps {eps})")
    tower = TowerConfig(width=trunk.embed_dim, layers=len(trunk.blocks), heads=block.attn.num_heads,
                        mlp_dim=block.mlp.fc1.out_features)
    return tower, trunk.patch_embed.patch_size[0]


class AttentionPool(nn.Module):
    """Multi-head attention pooling (MAP): a learned probe attends over all tokens, then a residual MLP."""

    def __init__(self, dim: int, heads: int, mlp_dim: int, act: str, eps: float) -> None:
        super().__init__()
        self.heads = heads
        self.probe = nn.Parameter(torch.randn(1, 1, dim) * dim ** -0.5)
        self.q = nn.Linear(dim, dim)  # the probe's query
        self.kv = nn.Linear(dim, 2 * dim)  # the tokens' keys and values
        self.proj = nn.Linear(dim, dim)
        self.norm = nn.LayerNorm(dim, eps=eps)
        self.mlp = MLP(dim, mlp_dim, act)

    def forward(self, x: Tensor) -> Tensor:
        """``(N, T, D)`` tokens -> ``(N, D)``."""
        n, t, d = x.shape
        q = self.q(self.probe).view(1, self.heads, 1, d // self.heads).expand(n, -1, -1, -1)  # (N, H, 1, Dh)
        k, v = self.kv(x).view(n, t, 2, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)  # 2 x (N, H, T, Dh)
        x = self.proj(F.scaled_dot_product_attention(q, k, v).reshape(n, d))
        return x + self.mlp(self.norm(x))


class VisionTower(nn.Module):
    """SigLIP's ViT: biased patch embedding + learned positions, blocks, LayerNorm, attention pooling."""

    def __init__(self, cfg: SigLIPConfig) -> None:
        super().__init__()
        d, grid = cfg.vision.width, cfg.image_size // cfg.patch_size
        self.patch_embed = nn.Conv2d(3, d, cfg.patch_size, stride=cfg.patch_size)
        self.pos_embed = nn.Parameter(torch.randn(grid * grid, d) * d ** -0.5)
        self.blocks = _blocks(d, cfg.vision.layers, cfg.vision.heads, cfg.vision.mlp_dim, cfg.act, cfg.eps)
        self.norm = nn.LayerNorm(d, eps=cfg.eps)
        self.pool = AttentionPool(d, cfg.vision.heads, cfg.vision.mlp_dim, cfg.act, cfg.eps)

    def forward(self, x: Tensor) -> Tensor:
        """``(N, 3, H, W)`` normalised pixels -> ``(N, width)`` image embeddings (not normalised)."""
        x = self.patch_embed(x).flatten(2).transpose(1, 2) + self.pos_embed  # (N, T, D)
        for block in self.blocks:
            x = block(x)
        return self.pool(self.norm(x))


class SigLIP(ImageTextModel):
    """SigLIP: zero-shot probabilities are ``sigmoid(exp(logit_scale) * cos(image, label) + logit_bias)``, each
    image-label pair on its own (they do not sum to one over labels)."""

    #: ``</s>``, SigLIP's end token and its padding (T5's vocabulary; the tokenizer checks the piece is there).
    end_id: int = 1

    def __init__(self, cfg: SigLIPConfig = SigLIPConfig()) -> None:
        super().__init__()
        if cfg.embed_dim != cfg.vision.width:
            raise InvalidInputError(f"text embed_dim {cfg.embed_dim} must equal the image width {cfg.vision.width}")
        self.config = cfg
        self.image_size = (cfg.image_size, cfg.image_size)
        self.context_length = cfg.context_length
        self.visual = VisionTower(cfg)
        self.text = TextTower(cfg.vocab_size, cfg.context_length, cfg.text, cfg.embed_dim, act=cfg.act, eps=cfg.eps,
                              pool="last", proj_bias=True)
        self.vocab_size = cfg.vocab_size
        # 0-dim, as open_clip stores them; big_vision's initial values log(10) and -10
        self.logit_scale = nn.Parameter(torch.tensor(2.302585092994046))
        self.logit_bias = nn.Parameter(torch.tensor(-10.0))

    def probabilities(self, logits: Tensor) -> Tensor:
        return torch.sigmoid(logits)

    def text_mask(self, ids: Tensor) -> Tensor:
        """True through the first ``</s>``: the text padded with more ``</s>`` (which the tower attends to all the
        same, and pools the last of) is marked as the text and its end token; a text cut without one, all True."""
        end = ids == self.end_id
        first = torch.where(end.any(dim=-1), end.int().argmax(dim=-1), ids.shape[1] - 1)
        return torch.arange(ids.shape[1], device=ids.device) <= first[:, None]


# -- converting the published layouts -------------------------------------------------------------------------------

# transformers SiglipModel (google/siglip-*)
TRANSFORMERS_SIGLIP = (
    (r"vision_model\.embeddings\.patch_embedding\.(weight|bias)", r"visual.patch_embed.\1"),
    (r"vision_model\.embeddings\.position_embedding\.weight", "visual.pos_embed"),
    (r"vision_model\.encoder\.layers\.(\d+)\.(.*)", r"visual.blocks.\1.\2"),
    (r"vision_model\.post_layernorm\.(weight|bias)", r"visual.norm.\1"),
    (r"vision_model\.head\.probe", "visual.pool.probe"),
    (r"vision_model\.head\.attention\.in_proj_(weight|bias)", r"visual.pool.in_proj.\1"),  # split below
    (r"vision_model\.head\.attention\.out_proj\.(weight|bias)", r"visual.pool.proj.\1"),
    (r"vision_model\.head\.layernorm\.(weight|bias)", r"visual.pool.norm.\1"),
    (r"vision_model\.head\.mlp\.(fc[12])\.(weight|bias)", r"visual.pool.mlp.\1.\2"),
    (r"text_model\.head\.(weight|bias)", r"text.proj.\1"),
    *TRANSFORMERS_TEXT,
    *TRANSFORMERS_BLOCK,
)
# open_clip CustomTextCLIP with a timm trunk (timm/ViT-*-SigLIP*): timm's names are already ours inside blocks
OPEN_CLIP_SIGLIP = (
    (r"visual\.trunk\.patch_embed\.proj\.(weight|bias)", r"visual.patch_embed.\1"),
    (r"visual\.trunk\.pos_embed", "visual.pos_embed"),  # (1, T, D): squeezed below
    (r"visual\.trunk\.blocks\.(.*)", r"visual.blocks.\1"),
    (r"visual\.trunk\.norm\.(weight|bias)", r"visual.norm.\1"),
    (r"visual\.trunk\.attn_pool\.latent", "visual.pool.probe"),
    (r"visual\.trunk\.attn_pool\.(.*)", r"visual.pool.\1"),
    (r"text\.token_embedding\.weight", "text.token_embed.weight"),
    (r"text\.positional_embedding", "text.pos_embed"),
    (r"text\.transformer\.resblocks\.(\d+)\.(.*)", r"text.blocks.\1.\2"),
    (r"text\.ln_final\.(weight|bias)", r"text.norm_final.\1"),
    (r"text\.text_projection\.(weight|bias)", r"text.proj.\1"),
    *OPEN_CLIP_BLOCK,
)


def convert_transformers(sd: dict[str, Tensor]) -> dict[str, Tensor]:
    """After :data:`TRANSFORMERS_SIGLIP`: q/k/v fused in every block; the pooling head's torch
    ``MultiheadAttention`` in_proj (q|k|v rows) split into the probe's q and the tokens' k|v; the logit scale and
    bias, shape (1,) in transformers, made 0-dim."""
    sd = fuse_qkv(sd)  # before the split: the head's q would otherwise look like a block's
    for leaf in ("weight", "bias"):
        in_proj = sd.pop(f"visual.pool.in_proj.{leaf}", None)
        if in_proj is not None:
            d = in_proj.shape[0] // 3
            sd[f"visual.pool.q.{leaf}"], sd[f"visual.pool.kv.{leaf}"] = in_proj[:d], in_proj[d:]
    return {k: v.reshape(()) if k in ("logit_scale", "logit_bias") else v for k, v in sd.items()}


def squeeze_pos_embed(sd: dict[str, Tensor]) -> dict[str, Tensor]:
    """After :data:`OPEN_CLIP_SIGLIP`: timm's position embedding ``(1, T, D)`` -> ours ``(T, D)``."""
    return {k: v.reshape(v.shape[-2:]) if k == "visual.pos_embed" else v for k, v in sd.items()}


# -- the published architectures (the entries in __init__.py name them) ------------------------------------------

SIG_B16 = SigLIPConfig()
SIG_B16_384 = replace(SIG_B16, image_size=384)
SIG_L16 = SigLIPConfig(image_size=256, vision=TowerConfig(1024, 24, 16, 4096), text=TowerConfig(1024, 24, 16, 4096),
                       embed_dim=1024)
SIG_SO400M = SigLIPConfig(image_size=384, patch_size=14, vision=TowerConfig(1152, 27, 16, 4304),
                          text=TowerConfig(1152, 27, 16, 4304), embed_dim=1152)
