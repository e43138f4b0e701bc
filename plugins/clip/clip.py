"""CLIP (Radford et al. 2021): a ViT image tower and a causal text Transformer, trained so that matching image and
text embeddings have a high cosine similarity.

The file also holds what SigLIP (``siglip.py``) reuses: the pre-norm Transformer block, the text tower and
:class:`ImageTextModel`, the shared interface (preprocess, tokenize, encode_image, encode_text, encode_tokens,
zero_shot): a zoo ``Encoder`` and ``TextEncoder`` at once.

Parameter names are ours (timm-like: ``blocks.i.norm1``, ``attn.qkv``, ``mlp.fc1``); the published layouts are
converted by the rename tables at the bottom plus one small function per layout for what a table cannot say
(q/k/v fused into one matrix, projections stored transposed). Each layout is one ``Component`` there: what
``zoo.loader.load_component`` needs to build the model from a repo in that layout.
"""
from __future__ import annotations

import math
from abc import abstractmethod
from dataclasses import dataclass, replace
from functools import partial
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from zoo.errors import MissingFileError
from zoo.registry import Encoder, TextEncoder, TextFeatures
from zoo.registry.errors import ConfigError, InvalidInputError, UnsupportedError
from zoo.registry.config import bound, check_fields

ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "quick_gelu": lambda x: x * torch.sigmoid(1.702 * x),  # OpenAI's weights were trained with this approximation
    "gelu": F.gelu,  # exact erf GELU: LAION's open_clip models (not the -quickgelu ones)
    "gelu_tanh": partial(F.gelu, approximate="tanh"),  # big_vision's GELU: SigLIP
}
# the names the reference configs use for the same functions
ACTIVATION_ALIASES = {"quick_gelu": "quick_gelu", "gelu": "gelu", "gelu_pytorch_tanh": "gelu_tanh",
                      "gelu_new": "gelu_tanh", "gelu_tanh": "gelu_tanh"}


# -- the Transformer ----------------------------------------------------------------------------------------------


class Attention(nn.Module):
    """Multi-head self-attention with one fused q|k|v projection."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor, causal: bool = False, index: Tensor | None = None) -> Tensor:
        """``(N, T, D) -> (N, T, D)``; ``causal`` lets each token see only itself and the tokens before it.

        ``index`` ``(N,)``: compute only the output of token ``index[i]`` of each sample, ``(N, 1, D)`` (the last
        block of a tower that pools a single token needs nothing else).
        """
        n, t, d = x.shape
        q, k, v = self.qkv(x).view(n, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)  # 3 x (N, H, T, Dh)
        mask = None
        if index is not None:
            q = q[torch.arange(n, device=x.device), :, index].unsqueeze(2)  # (N, H, 1, Dh)
            if causal:  # the query at position p sees keys 0..p
                mask = (torch.arange(t, device=x.device) <= index[:, None]).view(n, 1, 1, t)
            causal = False
        x = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal)
        return self.proj(x.transpose(1, 2).reshape(n, -1, d))


class MLP(nn.Module):
    def __init__(self, dim: int, hidden: int, act: str) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = ACTIVATIONS[act]
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm residual block: ``x + attn(norm1(x))``, then ``x + mlp(norm2(x))``."""

    def __init__(self, dim: int, heads: int, mlp_dim: int, act: str, eps: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = MLP(dim, mlp_dim, act)

    def forward(self, x: Tensor, causal: bool = False, index: Tensor | None = None) -> Tensor:
        """``(N, T, D) -> (N, T, D)``, or ``(N, 1, D)`` for the tokens at ``index`` only (see Attention)."""
        residual = x if index is None else x[torch.arange(x.shape[0], device=x.device), index].unsqueeze(1)
        x = residual + self.attn(self.norm1(x), causal, index)
        return x + self.mlp(self.norm2(x))


def _blocks(dim: int, layers: int, heads: int, mlp_dim: int, act: str, eps: float) -> nn.ModuleList:
    return nn.ModuleList(Block(dim, heads, mlp_dim, act, eps) for _ in range(layers))


# -- configuration --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TowerConfig:
    """One Transformer tower (defaults: CLIP ViT-B/32's image tower)."""

    width: int = bound(768, 1, 16384)
    layers: int = bound(12, 1, 256)
    heads: int = bound(12, 1, 512)
    mlp_dim: int = bound(3072, 1, 131072)

    def __post_init__(self) -> None:
        check_fields(self, "transformer tower config")
        if self.width % self.heads:
            raise ConfigError(f"transformer tower config: width {self.width} is not divisible by heads {self.heads}")


@dataclass(frozen=True)
class CLIPConfig:
    """Defaults: openai/clip-vit-base-patch32."""

    embed_dim: int = bound(512, 1, 16384)
    image_size: int = bound(224, 1, 4096)
    patch_size: int = bound(32, 1, 1024)
    vision: TowerConfig = TowerConfig()
    vocab_size: int = bound(49408, 1, 10_000_000)
    context_length: int = bound(77, 1, 65536)
    text: TowerConfig = TowerConfig(width=512, heads=8, mlp_dim=2048)
    act: str = "quick_gelu"
    eps: float = bound(1e-5, 1e-12, 1.0)

    def __post_init__(self) -> None:
        check_fields(self, "CLIP config")

    @classmethod
    def from_transformers(cls, cfg: dict[str, Any]) -> CLIPConfig:
        """From a transformers ``CLIPModel`` config.json; missing fields take transformers' defaults."""
        v, t = cfg.get("vision_config") or {}, cfg.get("text_config") or {}
        act = _one_value("hidden_act", v.get("hidden_act", "quick_gelu"), t.get("hidden_act", "quick_gelu"))
        eps = _one_value("layer_norm_eps", v.get("layer_norm_eps", 1e-5), t.get("layer_norm_eps", 1e-5))
        return cls(
            embed_dim=cfg.get("projection_dim", 512),
            image_size=v.get("image_size", 224), patch_size=v.get("patch_size", 32),
            vision=_hf_tower(v, TowerConfig()),
            vocab_size=t.get("vocab_size", 49408), context_length=t.get("max_position_embeddings", 77),
            text=_hf_tower(t, TowerConfig(width=512, heads=8, mlp_dim=2048)),
            act=canonical_activation(act), eps=eps)

    @classmethod
    def from_open_clip(cls, cfg: dict[str, Any]) -> CLIPConfig:
        """From an open_clip ``open_clip_config.json`` (its ``model_cfg``) for the plain ViT CLIP architecture."""
        m = cfg.get("model_cfg", cfg)
        v, t = m.get("vision_cfg", {}), m.get("text_cfg", {})
        _refuse_unsupported(v, t, m)
        vw, tw = v.get("width", 768), t.get("width", 512)
        return cls(
            embed_dim=m["embed_dim"], image_size=_square(v.get("image_size", 224)), patch_size=v.get("patch_size", 16),
            vision=TowerConfig(width=vw, layers=v.get("layers", 12), heads=vw // v.get("head_width", 64),
                               mlp_dim=int(vw * v.get("mlp_ratio", 4.0))),
            vocab_size=t.get("vocab_size", 49408), context_length=t.get("context_length", 77),
            text=TowerConfig(width=tw, layers=t.get("layers", 12), heads=t.get("heads", 8),
                             mlp_dim=int(tw * t.get("mlp_ratio", 4.0))),
            # open_clip's default is exact GELU; only the "-quickgelu" configs (and OpenAI's weights) use QuickGELU
            act="quick_gelu" if m.get("quick_gelu") else "gelu", eps=1e-5)


def _hf_tower(c: dict[str, Any], default: TowerConfig) -> TowerConfig:
    return TowerConfig(width=c.get("hidden_size", default.width), layers=c.get("num_hidden_layers", default.layers),
                       heads=c.get("num_attention_heads", default.heads),
                       mlp_dim=c.get("intermediate_size", default.mlp_dim))


def _one_value(name: str, vision: Any, text: Any) -> Any:
    if vision != text:
        raise UnsupportedError(f"the towers disagree on {name} ({vision!r} vs {text!r}); zoo's CLIP uses one")
    return vision


def canonical_activation(name: str) -> str:
    if name not in ACTIVATION_ALIASES:
        raise UnsupportedError(f"activation {name!r} is not supported (known: {sorted(ACTIVATION_ALIASES)})")
    return ACTIVATION_ALIASES[name]


def _square(size: int | Sequence[int]) -> int:
    if isinstance(size, int):
        return size
    if len(set(size)) != 1:
        raise UnsupportedError(f"non-square image size {size} is not supported")
    return int(size[0])


_OPEN_CLIP_DEFAULTS = {  # options of open_clip's CLIPVisionCfg / CLIPTextCfg that change the architecture
    "vision": {"ls_init_value": None, "patch_dropout": 0.0, "attentional_pool": False, "no_ln_pre": False,
               "pos_embed_type": "learnable", "final_ln_after_pool": False, "pool_type": "tok",
               "timm_model_name": None, "act_kwargs": None, "norm_kwargs": None, "block_type": None,
               "qk_norm": False, "scaled_cosine_attn": False, "scale_heads": False, "scale_attn_inner": False,
               "scale_attn": False, "scale_fc": False},
    "text": {"ls_init_value": None, "embed_cls": False, "no_causal_mask": False, "final_ln_after_pool": False,
             "pool_type": "argmax", "proj_bias": False, "proj_type": "linear", "hf_model_name": None,
             "act_kwargs": None, "norm_kwargs": None, "block_type": None, "qk_norm": False,
             "scaled_cosine_attn": False, "scale_heads": False, "scale_attn_inner": False, "scale_attn": False,
             "scale_fc": False},
}


def _refuse_unsupported(v: dict, t: dict, m: dict) -> None:
    """Raise for open_clip options this CLIP does not implement, instead of loading them wrongly."""
    odd = [f"vision_cfg.{k}={v[k]!r}" for k, d in _OPEN_CLIP_DEFAULTS["vision"].items() if k in v and v[k] != d]
    odd += [f"text_cfg.{k}={t[k]!r}" for k, d in _OPEN_CLIP_DEFAULTS["text"].items() if k in t and t[k] != d]
    odd += [f"{k}=true" for k in ("custom_text", "cast_dtype") if m.get(k)]
    odd += ["vision_cfg.layers (ResNet)"] if isinstance(v.get("layers"), (list, tuple)) else []
    if odd:
        raise UnsupportedError("this open_clip config uses options zoo's CLIP does not implement: " + ", ".join(odd))


# -- towers -----------------------------------------------------------------------------------------------------------


class VisionTower(nn.Module):
    """CLIP's ViT: patches + class token + learned positions, LayerNorm before and after the blocks, and a
    bias-free projection of the class token."""

    def __init__(self, cfg: CLIPConfig) -> None:
        super().__init__()
        d, grid = cfg.vision.width, cfg.image_size // cfg.patch_size
        self.patch_embed = nn.Conv2d(3, d, cfg.patch_size, stride=cfg.patch_size, bias=False)
        # random init as OpenAI's (what pretrained=False gives); loading replaces it
        self.cls_token = nn.Parameter(torch.randn(d) * d ** -0.5)
        self.pos_embed = nn.Parameter(torch.randn(1 + grid * grid, d) * d ** -0.5)
        self.norm_pre = nn.LayerNorm(d, eps=cfg.eps)
        self.blocks = _blocks(d, cfg.vision.layers, cfg.vision.heads, cfg.vision.mlp_dim, cfg.act, cfg.eps)
        self.norm_post = nn.LayerNorm(d, eps=cfg.eps)
        self.proj = nn.Linear(d, cfg.embed_dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        """``(N, 3, H, W)`` normalised pixels -> ``(N, embed_dim)`` image embeddings (not normalised)."""
        x = self.patch_embed(x).flatten(2).transpose(1, 2)  # (N, T, D), patches in row-major order
        x = torch.cat([self.cls_token.expand(x.shape[0], 1, -1), x], dim=1) + self.pos_embed
        x = self.norm_pre(x)
        for block in self.blocks[:-1]:
            x = block(x)
        # only the class token is read out: the last block computes its output alone
        x = self.blocks[-1](x, index=torch.zeros(x.shape[0], dtype=torch.long, device=x.device))
        return self.proj(self.norm_post(x[:, 0]))


class TextTower(nn.Module):
    """Token + learned position embeddings, Transformer, final LayerNorm, a linear projection of one token.

    ``pool="eot"`` (CLIP): causal attention, pooled at the first end-of-text token, found as the first position of
    the largest id (the end token is the last in CLIP's vocabulary, as OpenAI and transformers both assume).
    ``pool="last"`` (SigLIP): bidirectional attention over the fixed-length padded text, pooled at the last position.
    """

    def __init__(self, vocab_size: int, context_length: int, tower: TowerConfig, out_dim: int, *, act: str,
                 eps: float, pool: str = "eot", proj_bias: bool = False) -> None:
        super().__init__()
        if pool not in ("eot", "last"):
            raise InvalidInputError(f"pool must be 'eot' or 'last', got {pool!r}")
        self.pool = pool
        self.token_embed = nn.Embedding(vocab_size, tower.width)
        self.pos_embed = nn.Parameter(torch.randn(context_length, tower.width) * 0.01)
        self.blocks = _blocks(tower.width, tower.layers, tower.heads, tower.mlp_dim, act, eps)
        self.norm_final = nn.LayerNorm(tower.width, eps=eps)
        self.proj = nn.Linear(tower.width, out_dim, bias=proj_bias)

    @property
    def causal(self) -> bool:
        return self.pool == "eot"

    def pooled_index(self, ids: Tensor) -> Tensor:
        """``(N, L)`` token ids -> ``(N,)`` the position each text is pooled at."""
        if self.pool == "eot":
            return ids.argmax(dim=-1)
        return torch.full((ids.shape[0],), ids.shape[1] - 1, device=ids.device)

    def embed(self, ids: Tensor) -> Tensor:
        """``(N, L)`` token ids -> ``(N, L, width)`` token + position embeddings."""
        return self.token_embed(ids) + self.pos_embed[: ids.shape[1]]

    def forward(self, ids: Tensor) -> Tensor:
        """``(N, L)`` int64 token ids -> ``(N, out_dim)`` text embeddings (not normalised).

        The fast path: only what the pooled token depends on is computed (see :meth:`hidden_states` for all)."""
        pooled = self.pooled_index(ids)
        if self.causal:  # under a causal mask nothing after the last end token can reach it: skip the padding
            ids = ids[:, : int(pooled.max()) + 1]
        x = self.embed(ids)
        for block in self.blocks[:-1]:
            x = block(x, self.causal)
        x = self.blocks[-1](x, self.causal, index=pooled)  # (N, 1, D): only the pooled token is read out
        return self.proj(self.norm_final(x[:, 0]))

    def hidden_states(self, ids: Tensor) -> list[Tensor]:
        """``(N, L)`` int64 token ids -> ``layers + 1`` tensors ``(N, L, width)``: the embeddings, then the output
        of each block, every token computed (padding included, as the reference models do), before
        ``norm_final``. The numbering of transformers' ``output_hidden_states``."""
        states = [self.embed(ids)]
        for block in self.blocks:
            states.append(block(states[-1], self.causal))
        return states


def _layer(layer: int, blocks: int) -> int:
    """A hidden-state number (0..blocks, or negative from the end) checked against a tower of ``blocks`` blocks."""
    if isinstance(layer, bool) or not isinstance(layer, int) or not -(blocks + 1) <= layer <= blocks:
        raise InvalidInputError(f"layer must be None or an int from {-(blocks + 1)} to {blocks} (0: the embeddings, i: the "
                                f"output of block i, -1: of the last; this text tower has {blocks} blocks), got {layer!r}")
    return layer


# -- the shared model interface -------------------------------------------------------------------------------------


class ImageTextModel(Encoder, TextEncoder):
    """What CLIP and SigLIP share: two towers, their preprocessing and tokenizer, and zero-shot classification.

    The ``Encoder`` contract reads images (``preprocess``, ``encode`` = :meth:`encode_image`), the ``TextEncoder``
    contract text (``tokenize``, :meth:`encode_text`, :meth:`encode_tokens`). ``tokenizer`` (strings -> ``(N, L)``
    ids) and ``transform`` (images -> ``(N, 3, H, W)``) are attached by the builder from the checkpoint's own files
    (the tokenizer only when there are files: ``pretrained=False`` builds none).
    """

    visual: nn.Module
    text: TextTower
    logit_scale: nn.Parameter
    logit_bias: nn.Parameter | None  # set in __init__: a class default would hide the registered parameter
    tokenizer: Callable[[list[str]], Tensor] | None = None
    transform: Callable[[Any], Tensor] | None = None

    def preprocess(self, images: Any) -> Tensor:
        """PIL images, paths, uint8 / float ``[0, 1]`` tensors -> ``(N, 3, H, W)`` model input, on the model's
        device and in its dtype."""
        if self.transform is None:
            raise RuntimeError("this model has no preprocessing attached (built without its files)")
        return self.transform(images).to(device=self.device, dtype=self.dtype)

    def tokenize(self, texts: str | Sequence[str]) -> Tensor:
        """Strings -> ``(N, context_length)`` int64 token ids, with the checkpoint's own tokenizer."""
        if self.tokenizer is None:
            name = self.name or "the model"
            raise MissingFileError(
                f"{name} has no tokenizer: it was built without its tokenizer files (pretrained=False), so it cannot "
                f"read text. zoo.create({self.name or 'name'!r}) or weights= a folder holding the tokenizer files "
                f"gives one; or pass (N, L) int64 token ids")
        return self.tokenizer([texts] if isinstance(texts, str) else list(texts))

    def encode_image(self, x: Tensor, normalize: bool = False) -> Tensor:
        """``(N, 3, H, W)`` preprocessed images -> ``(N, E)`` embeddings, L2-normalised on request."""
        out = self.visual(self.model_input(x))
        return F.normalize(out, dim=-1) if normalize else out

    def encode_text(self, text: str | Sequence[str] | Tensor, normalize: bool = False) -> Tensor:
        """Strings or ``(N, L)`` int64 token ids -> ``(N, E)`` embeddings, L2-normalised on request.

        The same embedding as ``encode_tokens(ids).pooled``, on the text tower's fast path (the last block
        computes the pooled token alone; CLIP skips the padding after the last end token)."""
        out = self.text(self.token_ids(text))
        return F.normalize(out, dim=-1) if normalize else out

    def encode_tokens(self, ids: Tensor, *, layer: int | None = None) -> TextFeatures:
        """``(N, L)`` int64 token ids -> :class:`~zoo.registry.TextFeatures`.

        ``states`` ``(N, L, width)``: the hidden states of ``layer`` (0: the embeddings, ``i``: the output of
        block ``i``, negative from the end, before the final LayerNorm; None: the final states, after it).
        ``pooled`` ``(N, E)``: the projected text embedding, from the final layer whatever ``layer`` is (what
        :meth:`encode_text` returns). ``mask`` ``(N, L)`` bool: True on the text's tokens (see :meth:`text_mask`).
        """
        ids = self.token_ids(ids)
        states = self.text.hidden_states(ids)
        final = self.text.norm_final(states[-1])
        pooled = self.text.proj(final[torch.arange(ids.shape[0], device=ids.device), self.text.pooled_index(ids)])
        chosen = final if layer is None else states[_layer(layer, len(states) - 1)]
        return TextFeatures(states=chosen, pooled=pooled, mask=self.text_mask(ids))

    @abstractmethod
    def text_mask(self, ids: Tensor) -> Tensor:
        """``(N, L)`` token ids -> ``(N, L)`` bool, True on the text's own tokens (its end token included)."""

    def encode(self, x: Tensor) -> Tensor:
        """The Encoder contract: image embeddings (not normalised)."""
        return self.encode_image(x)

    def logits(self, image_embeds: Tensor, text_embeds: Tensor) -> Tensor:
        """Normalised ``(N, E)`` and ``(M, E)`` -> ``(N, M)``: ``exp(logit_scale) * cos`` (+ ``logit_bias``)."""
        logits = self.logit_scale.exp() * image_embeds @ text_embeds.T
        return logits + self.logit_bias if self.logit_bias is not None else logits

    def forward(self, x: Tensor, text: str | Sequence[str] | Tensor) -> Tensor:
        """``(N, 3, H, W)`` images and M texts -> ``(N, M)`` logits per image, as the reference models return."""
        return self.logits(self.encode_image(x, normalize=True), self.encode_text(text, normalize=True))

    def probabilities(self, logits: Tensor) -> Tensor:
        """Logits -> probabilities over the label axis (softmax for CLIP; SigLIP overrides with a sigmoid)."""
        return logits.softmax(dim=-1)

    @torch.inference_mode()
    def classifier(self, labels: Sequence[str], templates: Sequence[str] | None = None,
                   batch_size: int = 256) -> Tensor:
        """``(L, E)`` normalised label embeddings; with templates, the normalised mean over the filled-in
        templates of each label's normalised embeddings (CLIP paper, prompt ensembling)."""
        templates = list(templates or ["{}"])
        odd = [t for t in templates if not isinstance(t, str) or t.count("{}") != 1 or t.replace("{}", "").count("{")]
        if odd:
            raise InvalidInputError(f"each template needs exactly one '{{}}' where the label goes (and no other braces), "
                                    f"e.g. 'a photo of a {{}}.'; got {odd[0]!r}")
        if any(not isinstance(label, str) or not label.strip() for label in labels):
            raise InvalidInputError("labels must be non-empty strings")
        texts = [t.format(label) for label in labels for t in templates]
        emb = torch.cat([self.encode_text(texts[i:i + batch_size], normalize=True)
                         for i in range(0, len(texts), batch_size)])
        emb = emb.view(len(labels), len(templates), -1).mean(dim=1)
        return F.normalize(emb, dim=-1)

    @torch.inference_mode()
    def zero_shot(self, images: Any, labels: Sequence[str], templates: Sequence[str] | None = None,
                  batch_size: int = 64) -> Tensor:
        """Images (anything :meth:`preprocess` takes) and L label names -> ``(N, L)`` float32 probabilities.

        ``templates`` such as ``["a photo of a {}."]`` are filled with each label and averaged (see
        :meth:`classifier`); without them the labels are used as they are.
        """
        if isinstance(labels, str) or not labels:
            raise InvalidInputError("labels must be a non-empty list of strings, e.g. ['a cat', 'a dog']")
        classes = self.classifier(labels, templates)
        x = self.preprocess(images)
        image = torch.cat([self.encode_image(x[i:i + batch_size], normalize=True)
                           for i in range(0, x.shape[0], batch_size)])
        return self.probabilities(self.logits(image.float(), classes.float()))  # float32 even for a half model


# -- CLIP ----------------------------------------------------------------------------------------------------------


class CLIP(ImageTextModel):
    """CLIP: ``encode_image``/``encode_text`` give ``(N, embed_dim)``; zero-shot probabilities are a softmax over
    ``exp(logit_scale) * cos(image, label)``."""

    def __init__(self, cfg: CLIPConfig = CLIPConfig()) -> None:
        super().__init__()
        self.config = cfg
        self.image_size = (cfg.image_size, cfg.image_size)
        self.context_length = cfg.context_length
        self.visual = VisionTower(cfg)
        self.text = TextTower(cfg.vocab_size, cfg.context_length, cfg.text, cfg.embed_dim, act=cfg.act, eps=cfg.eps)
        self.vocab_size = cfg.vocab_size
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))  # 0-dim; trained value ln(100)
        self.logit_bias = None

    def text_mask(self, ids: Tensor) -> Tensor:
        """True through the first end-of-text token: what the causal tower pools (the padding after it, whatever
        its id, is not the text's)."""
        return torch.arange(ids.shape[1], device=ids.device) <= self.text.pooled_index(ids)[:, None]


# -- converting the published layouts -------------------------------------------------------------------------------

# Inside every transformers encoder layer (CLIP and SigLIP). q/k/v stay separate here and are fused by
# zoo.weights.fuse_qkv (the one the ViT and Swin conversions use; a missing projection is a WeightsMismatchError).
TRANSFORMERS_BLOCK = (
    (r"(.*\.blocks\.\d+)\.layer_norm([12])\.(weight|bias)", r"\1.norm\2.\3"),
    (r"(.*\.blocks\.\d+)\.self_attn\.([qkv])_proj\.(weight|bias)", r"\1.attn.\2.\3"),
    (r"(.*\.blocks\.\d+)\.self_attn\.out_proj\.(weight|bias)", r"\1.attn.proj.\2"),
)
# transformers' text model prefixes (CLIP and SigLIP)
TRANSFORMERS_TEXT = (
    (r"text_model\.embeddings\.token_embedding\.weight", "text.token_embed.weight"),
    (r"text_model\.embeddings\.position_embedding\.weight", "text.pos_embed"),
    (r"text_model\.encoder\.layers\.(\d+)\.(.*)", r"text.blocks.\1.\2"),
    (r"text_model\.final_layer_norm\.(weight|bias)", r"text.norm_final.\1"),
)
# transformers CLIPModel (openai/clip-vit-*, the laion repos' HF twins)
TRANSFORMERS_CLIP = (
    (r"vision_model\.embeddings\.patch_embedding\.weight", "visual.patch_embed.weight"),
    (r"vision_model\.embeddings\.class_embedding", "visual.cls_token"),
    (r"vision_model\.embeddings\.position_embedding\.weight", "visual.pos_embed"),
    (r"vision_model\.pre_layrnorm\.(weight|bias)", r"visual.norm_pre.\1"),  # sic: the key has a typo
    (r"vision_model\.encoder\.layers\.(\d+)\.(.*)", r"visual.blocks.\1.\2"),
    (r"vision_model\.post_layernorm\.(weight|bias)", r"visual.norm_post.\1"),
    (r"visual_projection\.weight", "visual.proj.weight"),
    (r"text_projection\.weight", "text.proj.weight"),
    *TRANSFORMERS_TEXT,
    *TRANSFORMERS_BLOCK,
)
# Inside every open_clip residual block (OpenAI's original names; in_proj is already our fused qkv).
OPEN_CLIP_BLOCK = (
    (r"(.*\.blocks\.\d+)\.ln_([12])\.(weight|bias)", r"\1.norm\2.\3"),
    (r"(.*\.blocks\.\d+)\.attn\.in_proj_(weight|bias)", r"\1.attn.qkv.\2"),
    (r"(.*\.blocks\.\d+)\.attn\.out_proj\.(weight|bias)", r"\1.attn.proj.\2"),
    (r"(.*\.blocks\.\d+)\.mlp\.c_fc\.(weight|bias)", r"\1.mlp.fc1.\2"),
    (r"(.*\.blocks\.\d+)\.mlp\.c_proj\.(weight|bias)", r"\1.mlp.fc2.\2"),
)
# open_clip CLIP (laion/CLIP-ViT-*; also OpenAI's original .pt layout). The text tower has no prefix.
OPEN_CLIP = (
    (r"visual\.conv1\.weight", "visual.patch_embed.weight"),
    (r"visual\.class_embedding", "visual.cls_token"),
    (r"visual\.positional_embedding", "visual.pos_embed"),
    (r"visual\.ln_pre\.(weight|bias)", r"visual.norm_pre.\1"),
    (r"visual\.transformer\.resblocks\.(\d+)\.(.*)", r"visual.blocks.\1.\2"),
    (r"visual\.ln_post\.(weight|bias)", r"visual.norm_post.\1"),
    (r"visual\.proj", "visual.proj.weight"),  # stored (D, E), used as x @ proj: transposed below
    (r"token_embedding\.weight", "text.token_embed.weight"),
    (r"positional_embedding", "text.pos_embed"),
    (r"transformer\.resblocks\.(\d+)\.(.*)", r"text.blocks.\1.\2"),
    (r"ln_final\.(weight|bias)", r"text.norm_final.\1"),
    (r"text_projection", "text.proj.weight"),  # stored (D, E) as well
    *OPEN_CLIP_BLOCK,
)
#: buffers in published files that the model recomputes (legacy transformers position ids, open_clip's mask)
IGNORED = (r".*position_ids", r"attn_mask", r"text\.attn_mask")


def transpose_projections(sd: dict[str, Tensor]) -> dict[str, Tensor]:
    """After :data:`OPEN_CLIP`: open_clip multiplies ``x @ P`` with both projections stored ``(D, E)``;
    ``nn.Linear`` holds ``P.T``."""
    return {k: v.T.contiguous() if k in ("visual.proj.weight", "text.proj.weight") else v for k, v in sd.items()}


# -- the published architectures (the entries in __init__.py name them) ------------------------------------------

B32 = CLIPConfig()
B16 = replace(B32, patch_size=16)
L14 = CLIPConfig(embed_dim=768, patch_size=14, vision=TowerConfig(1024, 24, 16, 4096), text=TowerConfig(768, 12, 12, 3072))
L14_336 = replace(L14, image_size=336)
H14 = CLIPConfig(embed_dim=1024, patch_size=14, vision=TowerConfig(1280, 32, 16, 5120),
                 text=TowerConfig(1024, 24, 16, 4096), act="gelu")
#: open_clip's LAION models run the exact GELU
B32_GELU, L14_GELU = replace(B32, act="gelu"), replace(L14, act="gelu")
