"""DETR (Carion et al. 2020, End-to-End Object Detection with Transformers), the network, in one readable file.

Detection as set prediction: a CNN backbone, a transformer encoder over its last feature map, and a decoder that
turns a fixed set of learned object queries into one (class, box) prediction each. No anchors, no NMS: training
matches predictions to targets one to one (``loss.py``), and every query that matches nothing learns "no object".

    pixels (N, 3, H, W), mask (N, H, W) True on padding
      -> timm ResNet, frozen BatchNorm folded into its convolutions, to layer4
                                                  (N, 2048, h, w), h = ceil(H / 32)  [H / 16 with dilation]
      -> input_proj (1x1 conv)                    (N, d, h, w) -> tokens (N, h*w, d)
      -> sine position embedding from the mask    (N, h*w, d), added to queries and keys, never to values
      -> encoder: L_e post-norm layers            memory (N, h*w, d), padded positions masked out as keys
      -> decoder: L_d post-norm layers over Q queries that start at zero, with learned query positions
         (N, Q, d) after each layer, through the shared final LayerNorm
      -> class_head (N, Q, classes + 1): the last class is "no object"
      -> box_head, a 3-layer MLP, sigmoid       (N, Q, 4) as (cx, cy, w, h) relative to the unpadded image

Post-norm everywhere (``x = norm(x + sublayer(x))``), as the paper and every published checkpoint. The decoder's
intermediate outputs (each layer's output through the final LayerNorm) feed the same heads for the auxiliary
losses; as in the original code, the un-normalised output continues to the next layer (transformers feeds the
normalised one on when its config's ``auxiliary_loss`` is on, which changes its outputs; the published configs
have it off).

**Padding policy (batch invariance).** A padded batch changes an image's features in the reference
implementations: the backbone's convolutions see the padding's activations near the bottom and right edges,
and the mask is nearest-downsampled from the padded size. Here (``padding="per-image"``, the default) the backbone
runs on each image at its own size (images of one size together), its feature map is padded bottom/right to the
batch's largest and the mask is exact at feature resolution; the transformer then masks the padding out of every
attention. An image's detections are thus the same alone or in any batch (to float rounding), and equal to
transformers' for that image alone. The cost is one backbone call per distinct image size in the batch (and no
compute spent on padding). ``padding="batch"`` reproduces transformers and the original code exactly: one
backbone pass over the padded batch.

Weights load from the transformers layout (``DetrForObjectDetection``, timm backbone under
``model.backbone.conv_encoder.model.``) through :data:`HF_TO_ZOO`, and from the ``no_timm`` branch (transformers'
own ResNet) through :data:`HF_RESNET_TO_TIMM` as well; the backbone is whatever timm ResNet the config names.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from zoo.errors import ConfigError, InvalidInputError, UnsupportedError
from zoo.registry import Renames
from zoo.registry.errors import ArgumentTypeError

Padding = Literal["per-image", "batch"]

# -- checkpoint names -> ours ------------------------------------------------------------------------------------

#: transformers ``DetrForObjectDetection`` (the layout its ``save_pretrained`` writes and the Hub files hold) ->
#: :class:`DetrNetwork`. The backbone keeps timm's own names under ``backbone.``.
HF_TO_ZOO: Renames = [
    (r"model\.backbone\.conv_encoder\.model\.(.+)", r"backbone.\1"),
    (r"model\.input_projection\.(weight|bias)", r"input_proj.\1"),
    (r"model\.query_position_embeddings\.weight", r"query_pos"),
    (r"model\.(encoder|decoder)\.layers\.(\d+)\.self_attn\.(q|k|v|out)_proj\.(weight|bias)",
     r"\1.layers.\2.self_attn.\3.\4"),
    (r"model\.decoder\.layers\.(\d+)\.encoder_attn\.(q|k|v|out)_proj\.(weight|bias)",
     r"decoder.layers.\1.cross_attn.\2.\3"),
    (r"model\.(encoder|decoder)\.layers\.(\d+)\.self_attn_layer_norm\.(weight|bias)", r"\1.layers.\2.norm1.\3"),
    (r"model\.decoder\.layers\.(\d+)\.encoder_attn_layer_norm\.(weight|bias)", r"decoder.layers.\1.norm2.\2"),
    (r"model\.encoder\.layers\.(\d+)\.final_layer_norm\.(weight|bias)", r"encoder.layers.\1.norm2.\2"),
    (r"model\.decoder\.layers\.(\d+)\.final_layer_norm\.(weight|bias)", r"decoder.layers.\1.norm3.\2"),
    (r"model\.(encoder|decoder)\.layers\.(\d+)\.(fc1|fc2)\.(weight|bias)", r"\1.layers.\2.\3.\4"),
    (r"model\.decoder\.layernorm\.(weight|bias)", r"decoder.norm.\1"),
    (r"class_labels_classifier\.(weight|bias)", r"class_head.\1"),
    (r"bbox_predictor\.layers\.(\d)\.(weight|bias)", r"box_head.layers.\1.\2"),
]

_BB = r"(model\.backbone\.conv_encoder\.model\.)"
_BN = r"(weight|bias|running_mean|running_var|num_batches_tracked)"
#: the ``no_timm`` branch's backbone (transformers ``ResNetBackbone`` under ``model.backbone.conv_encoder.model.``)
#: -> timm's ResNet names, applied before :data:`HF_TO_ZOO`. transformers numbers stages from 0 and calls the
#: downsampling branch ``shortcut``; a block's convs are ``layer.0..2`` (timm: ``conv1..3`` with ``bn1..3``).
HF_RESNET_TO_TIMM: Renames = [
    (_BB + r"embedder\.embedder\.convolution\.weight", r"\1conv1.weight"),
    (_BB + r"embedder\.embedder\.normalization\." + _BN, r"\1bn1.\2"),
    *((_BB + rf"encoder\.stages\.{s}\.layers\.(\d+)\.shortcut\.convolution\.weight",
       rf"\1layer{s + 1}.\2.downsample.0.weight") for s in range(4)),
    *((_BB + rf"encoder\.stages\.{s}\.layers\.(\d+)\.shortcut\.normalization\.{_BN}",
       rf"\1layer{s + 1}.\2.downsample.1.\3") for s in range(4)),
    *((_BB + rf"encoder\.stages\.{s}\.layers\.(\d+)\.layer\.{j}\.convolution\.weight",
       rf"\1layer{s + 1}.\2.conv{j + 1}.weight") for s in range(4) for j in range(3)),
    *((_BB + rf"encoder\.stages\.{s}\.layers\.(\d+)\.layer\.{j}\.normalization\.{_BN}",
       rf"\1layer{s + 1}.\2.bn{j + 1}.\3") for s in range(4) for j in range(3)),
]

#: tensors a published file may hold that the network does not: the four ``num_batches_tracked`` counters of the
#: downsample BatchNorms that transformers' old ``replace_batch_norm`` missed (see the checkpoint notes in
#: tests/checkpoints).
IGNORE = (r"backbone\..*\.num_batches_tracked",)


#: the whole conversion: either backbone layout, then the rest.
RENAMES: Renames = [*HF_RESNET_TO_TIMM, *HF_TO_ZOO]


# -- config ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DetrConfig:
    """What the network needs from a transformers ``DetrConfig`` ``config.json`` (defaults: DETR R50's)."""

    backbone: str = "resnet50"
    #: replace layer4's stride by a dilation (the DC5 models): stride 16 instead of 32.
    dilation: bool = False
    d_model: int = 256
    encoder_layers: int = 6
    decoder_layers: int = 6
    encoder_heads: int = 8
    decoder_heads: int = 8
    encoder_ffn_dim: int = 2048
    decoder_ffn_dim: int = 2048
    num_queries: int = 100
    #: classes without "no object": ``len(id2label)`` (91 COCO ids, gaps included).
    num_labels: int = 91
    activation: str = "relu"
    dropout: float = 0.1
    attention_dropout: float = 0.0
    activation_dropout: float = 0.0

    @classmethod
    def from_hf(cls, config: Mapping[str, Any]) -> DetrConfig:
        """A transformers DETR ``config.json`` (old top-level ``backbone`` or newer ``backbone_config``, timm's
        or transformers' own ResNet) -> DetrConfig. Refuses what this implementation does not cover."""
        if config.get("position_embedding_type", "sine") != "sine":
            raise UnsupportedError(f"position_embedding_type {config['position_embedding_type']!r}: only the "
                                   "sine embedding of the published DETR checkpoints is implemented")
        if config.get("activation_function", "relu") not in _ACTIVATIONS:
            raise UnsupportedError(f"activation_function {config['activation_function']!r}: supported are "
                                   f"{sorted(_ACTIVATIONS)}")
        id2label = config.get("id2label")
        num_labels = len(id2label) if isinstance(id2label, Mapping) else config.get("num_labels", 91)
        cfg = cls(backbone=_backbone_name(config), dilation=_dilation(config),
                  d_model=config.get("d_model", 256), encoder_layers=config.get("encoder_layers", 6),
                  decoder_layers=config.get("decoder_layers", 6),
                  encoder_heads=config.get("encoder_attention_heads", 8),
                  decoder_heads=config.get("decoder_attention_heads", 8),
                  encoder_ffn_dim=config.get("encoder_ffn_dim", 2048),
                  decoder_ffn_dim=config.get("decoder_ffn_dim", 2048), num_queries=config.get("num_queries", 100),
                  num_labels=num_labels, activation=config.get("activation_function", "relu"),
                  dropout=config.get("dropout", 0.1), attention_dropout=config.get("attention_dropout", 0.0),
                  activation_dropout=config.get("activation_dropout", 0.0))
        cfg.check()
        return cfg

    def check(self) -> None:
        """Refuse values no network can be built from (a damaged config), naming the key."""
        ints = {"d_model": self.d_model, "encoder_layers": self.encoder_layers, "decoder_layers": self.decoder_layers,
                "encoder_attention_heads": self.encoder_heads, "decoder_attention_heads": self.decoder_heads,
                "encoder_ffn_dim": self.encoder_ffn_dim, "decoder_ffn_dim": self.decoder_ffn_dim,
                "num_queries": self.num_queries, "num_labels": self.num_labels}
        for key, value in ints.items():
            if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 100_000:
                raise ConfigError(f"config {key} must be a positive whole number, got {value!r}")
        for key in ("encoder_attention_heads", "decoder_attention_heads"):
            if self.d_model % ints[key]:
                raise ConfigError(f"config d_model {self.d_model} is not divisible by {key} {ints[key]}")
        if self.d_model % 2:
            raise ConfigError(f"config d_model {self.d_model} must be even (half for y, half for x positions)")
        for key, value in (("dropout", self.dropout), ("attention_dropout", self.attention_dropout),
                           ("activation_dropout", self.activation_dropout)):
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 <= value < 1:
                raise ConfigError(f"config {key} must be a probability in [0, 1), got {value!r}")
        if not isinstance(self.dilation, bool):
            raise ConfigError(f"config dilation must be true or false, got {self.dilation!r}")


#: transformers ResNet depths -> the timm ResNet of the same architecture (the ``no_timm`` branches).
_BOTTLENECK_RESNETS = {(3, 4, 6, 3): "resnet50", (3, 4, 23, 3): "resnet101", (3, 8, 36, 3): "resnet152"}
_BASIC_RESNETS = {(2, 2, 2, 2): "resnet18", (3, 4, 6, 3): "resnet34"}


def _dilation(config: Mapping[str, Any]) -> Any:
    """Whether layer4 is dilated (stride 16). A timm ``backbone_config`` that names its ``output_stride`` decides, as
    transformers reads it; an old config without one says ``dilation``."""
    backbone = config.get("backbone_config")
    if isinstance(backbone, Mapping) and backbone.get("model_type") == "timm_backbone" and "output_stride" in backbone:
        return backbone["output_stride"] == 16
    return config.get("dilation", False)


def _backbone_name(config: Mapping[str, Any]) -> str:
    backbone = config.get("backbone_config") or {}
    if not isinstance(backbone, Mapping):
        raise ConfigError(f"config backbone_config must be an object, got {backbone!r}")
    if backbone.get("model_type") == "resnet":  # transformers' own ResNet (the no_timm branch)
        depths = backbone.get("depths", (3, 4, 6, 3))
        depths = tuple(depths) if isinstance(depths, (list, tuple)) else ()
        layer_type = backbone.get("layer_type", "bottleneck")
        names = _BOTTLENECK_RESNETS if layer_type == "bottleneck" else _BASIC_RESNETS
        name = names.get(depths)
        if name is None:
            raise UnsupportedError(f"a transformers ResNet backbone with depths {backbone.get('depths')} "
                                   f"({layer_type}) has no timm ResNet of the same architecture here")
        return name
    name = config.get("backbone") or backbone.get("backbone") or "resnet50"
    if not str(name).startswith("resnet"):
        raise UnsupportedError(f"backbone {name!r}: the DETR family runs timm ResNets (resnet18 ... resnet152)")
    return str(name)


# -- backbone ----------------------------------------------------------------------------------------------------


class FrozenBatchNorm2d(nn.Module):
    """BatchNorm with fixed statistics and affine parameters, all buffers (DETR trains none of them):
    ``y = x * scale + shift`` with ``scale = weight / sqrt(running_var + 1e-5)``,
    ``shift = bias - running_mean * scale``."""

    def __init__(self, num_features: int, eps: float = 1e-5, device=None, dtype=None):
        super().__init__()
        self.eps = eps
        factory = {"device": device, "dtype": dtype}
        self.register_buffer("weight", torch.ones(num_features, **factory))
        self.register_buffer("bias", torch.zeros(num_features, **factory))
        self.register_buffer("running_mean", torch.zeros(num_features, **factory))
        self.register_buffer("running_var", torch.ones(num_features, **factory))

    folded = False  # set by fold_frozen_batchnorm: the convolution before applies it

    def forward(self, x: Tensor) -> Tensor:
        if self.folded:
            return x
        scale = self.weight * (self.running_var + self.eps).rsqrt()
        shift = self.bias - self.running_mean * scale
        return x * scale[:, None, None] + shift[:, None, None]


def resnet_backbone(name: str, dilation: bool = False) -> nn.Module:
    """timm's ResNet ``name`` without its classifier, every BatchNorm frozen; ``forward_features`` -> layer4."""
    import timm

    return timm.create_model(name, pretrained=False, num_classes=0, global_pool="", norm_layer=FrozenBatchNorm2d,
                             output_stride=16 if dilation else 32)


class FoldedConv2d(nn.Conv2d):
    """A convolution followed by a frozen BatchNorm, computed as one convolution: ``conv(x, W) * scale + shift ==
    conv(x, W * scale) + shift``. The parameters keep their names and places (the state dict is unchanged); the
    BatchNorm module stays, passing its input through, and lends its buffers."""

    def forward(self, x: Tensor) -> Tensor:
        bn = self._folded_bn[0]
        scale = bn.weight * (bn.running_var + bn.eps).rsqrt()
        shift = bn.bias - bn.running_mean * scale
        return self._conv_forward(x, self.weight * scale[:, None, None, None], shift)


def fold_frozen_batchnorm(backbone: nn.Module, fold: bool = True) -> nn.Module:
    """Fold (or unfold) every frozen BatchNorm of a timm ResNet into the convolution before it, in place: one pass
    over each activation instead of three, the same numbers up to float rounding. Weights stay where the checkpoint
    puts them, so loading, saving and training work either way."""
    pairs = [(backbone.conv1, backbone.bn1)]
    for stage in (backbone.layer1, backbone.layer2, backbone.layer3, backbone.layer4):
        for block in stage:
            pairs += [(getattr(block, f"conv{i}"), getattr(block, f"bn{i}")) for i in (1, 2, 3)
                      if hasattr(block, f"bn{i}")]
            if block.downsample is not None:
                pairs.append((block.downsample[0], block.downsample[1]))
    for conv, bn in pairs:
        if not isinstance(bn, FrozenBatchNorm2d) or conv.bias is not None:
            raise ArgumentTypeError(f"cannot fold {type(bn).__name__} into a {type(conv).__name__} with a bias")
        conv.__class__ = FoldedConv2d if fold else nn.Conv2d
        conv.__dict__["_folded_bn"] = [bn]  # a plain attribute: not a submodule, not in the state dict
        bn.folded = fold
    return backbone


# -- position embedding ------------------------------------------------------------------------------------------


def sine_position_embedding(mask: Tensor, dim: int, temperature: float = 10000.0,
                            scale: float = 2 * math.pi) -> Tensor:
    """The 2-D sine embedding of DETR, from the padding mask ``(N, h, w)`` (True on padding) -> ``(N, h, w, 2 *
    dim)``: ``dim`` channels for y, then ``dim`` for x.

    Each valid position's row and column counts (cumulative sums of the valid mask) are normalised to
    ``(0, scale]`` by the image's own valid height and width, so an image's embedding does not depend on padding.
    Channel pairs ``2i, 2i + 1`` hold ``sin, cos`` of ``pos / temperature ** (2i / dim)``.
    """
    valid = (~mask).to(torch.float32)
    y = valid.cumsum(1)
    x = valid.cumsum(2)
    eps = 1e-6
    y = y / (y[:, -1:, :] + eps) * scale
    x = x / (x[:, :, -1:] + eps) * scale
    i = torch.arange(dim, dtype=torch.float32, device=mask.device)
    freq = temperature ** (2 * torch.div(i, 2, rounding_mode="floor") / dim)
    pos_x, pos_y = x[..., None] / freq, y[..., None] / freq
    pos_x = torch.stack((pos_x[..., 0::2].sin(), pos_x[..., 1::2].cos()), dim=4).flatten(3)
    pos_y = torch.stack((pos_y[..., 0::2].sin(), pos_y[..., 1::2].cos()), dim=4).flatten(3)
    return torch.cat((pos_y, pos_x), dim=3)


# -- transformer -------------------------------------------------------------------------------------------------

_ACTIVATIONS = {"relu": F.relu, "gelu": F.gelu, "silu": F.silu}


class Attention(nn.Module):
    """Multi-head attention with separate q/k/v projections: DETR adds position embeddings to the query and key
    inputs but not to the values, so the three inputs differ."""

    def __init__(self, dim: int, heads: int, dropout: float = 0.0):
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.q, self.k, self.v, self.out = (nn.Linear(dim, dim) for _ in range(4))

    def forward(self, query: Tensor, key: Tensor, value: Tensor, keep: Tensor | None = None) -> Tensor:
        """``query (N, Lq, d)``, ``key``/``value (N, Lk, d)``, ``keep (N, Lk)`` True on keys to attend to."""
        n, lq, d = query.shape
        split = lambda t: t.unflatten(-1, (self.heads, d // self.heads)).transpose(1, 2)  # (N, heads, L, d_h)
        mask = keep[:, None, None, :] if keep is not None else None
        out = F.scaled_dot_product_attention(split(self.q(query)), split(self.k(key)), split(self.v(value)),
                                             attn_mask=mask, dropout_p=self.dropout if self.training else 0.0)
        return self.out(out.transpose(1, 2).reshape(n, lq, d))


class EncoderLayer(nn.Module):
    """``x = norm1(x + SelfAttn(x + pos, x + pos, x))``, ``x = norm2(x + FFN(x))``."""

    def __init__(self, cfg: DetrConfig):
        super().__init__()
        d = cfg.d_model
        self.self_attn = Attention(d, cfg.encoder_heads, cfg.attention_dropout)
        self.norm1, self.norm2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.fc1, self.fc2 = nn.Linear(d, cfg.encoder_ffn_dim), nn.Linear(cfg.encoder_ffn_dim, d)
        self.act, self.dropout, self.act_dropout = _ACTIVATIONS[cfg.activation], cfg.dropout, cfg.activation_dropout

    def forward(self, x: Tensor, pos: Tensor, keep: Tensor | None) -> Tensor:
        drop = lambda t, p: F.dropout(t, p, self.training)
        qk = x + pos
        x = self.norm1(x + drop(self.self_attn(qk, qk, x, keep), self.dropout))
        ffn = self.fc2(drop(self.act(self.fc1(x)), self.act_dropout))
        return self.norm2(x + drop(ffn, self.dropout))


class DecoderLayer(nn.Module):
    """``t = norm1(t + SelfAttn(t + q_pos, t + q_pos, t))``,
    ``t = norm2(t + CrossAttn(t + q_pos, memory + pos, memory))``, ``t = norm3(t + FFN(t))``."""

    def __init__(self, cfg: DetrConfig):
        super().__init__()
        d = cfg.d_model
        self.self_attn = Attention(d, cfg.decoder_heads, cfg.attention_dropout)
        self.cross_attn = Attention(d, cfg.decoder_heads, cfg.attention_dropout)
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(d), nn.LayerNorm(d), nn.LayerNorm(d)
        self.fc1, self.fc2 = nn.Linear(d, cfg.decoder_ffn_dim), nn.Linear(cfg.decoder_ffn_dim, d)
        self.act, self.dropout, self.act_dropout = _ACTIVATIONS[cfg.activation], cfg.dropout, cfg.activation_dropout

    def forward(self, t: Tensor, query_pos: Tensor, memory: Tensor, pos: Tensor, keep: Tensor | None) -> Tensor:
        drop = lambda x, p: F.dropout(x, p, self.training)
        q = t + query_pos
        t = self.norm1(t + drop(self.self_attn(q, q, t), self.dropout))
        t = self.norm2(t + drop(self.cross_attn(t + query_pos, memory + pos, memory, keep), self.dropout))
        ffn = self.fc2(drop(self.act(self.fc1(t)), self.act_dropout))
        return self.norm3(t + drop(ffn, self.dropout))


class Encoder(nn.Module):
    def __init__(self, cfg: DetrConfig):
        super().__init__()
        self.layers = nn.ModuleList(EncoderLayer(cfg) for _ in range(cfg.encoder_layers))

    def forward(self, x: Tensor, pos: Tensor, keep: Tensor | None) -> Tensor:
        for layer in self.layers:
            x = layer(x, pos, keep)
        return x


class Decoder(nn.Module):
    def __init__(self, cfg: DetrConfig):
        super().__init__()
        self.layers = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.decoder_layers))
        self.norm = nn.LayerNorm(cfg.d_model)

    def forward(self, query_pos: Tensor, memory: Tensor, pos: Tensor, keep: Tensor | None) -> Tensor:
        """-> ``(L_d, N, Q, d)``: every layer's output through the final norm (the last is the prediction's)."""
        t = torch.zeros_like(query_pos)
        outputs = []
        for layer in self.layers:
            t = layer(t, query_pos, memory, pos, keep)
            outputs.append(self.norm(t))
        return torch.stack(outputs)


class MLP(nn.Module):
    """``Linear -> ReLU -> ... -> Linear``: the box head (d -> d -> d -> 4)."""

    def __init__(self, dim: int, hidden: int, out: int, layers: int):
        super().__init__()
        dims = [dim] + [hidden] * (layers - 1)
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims, dims[1:] + [out]))

    def forward(self, x: Tensor) -> Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x) if i == len(self.layers) - 1 else F.relu(layer(x))
        return x


# -- the network -------------------------------------------------------------------------------------------------


class DetrNetwork(nn.Module):
    """Backbone, transformer and heads: ``(pixels, mask) -> {"logits", "boxes", "aux_logits", "aux_boxes"}``.

    ``logits (N, Q, num_labels + 1)``, ``boxes (N, Q, 4)`` normalised ``(cx, cy, w, h)``; ``aux_logits
    (L_d - 1, N, Q, num_labels + 1)`` and ``aux_boxes (L_d - 1, N, Q, 4)`` from the earlier decoder layers (for the
    auxiliary losses). As DETR trains it, the stem and layer1 of the backbone are frozen (``requires_grad=False``).
    Every frozen BatchNorm is folded into the convolution before it (:func:`fold_frozen_batchnorm`; the state dict
    keeps the checkpoint's names).
    """

    def __init__(self, cfg: DetrConfig, padding: Padding = "per-image"):
        super().__init__()
        self.cfg = cfg
        self.padding = padding
        self.backbone = fold_frozen_batchnorm(resnet_backbone(cfg.backbone, cfg.dilation))
        self.stride = 16 if cfg.dilation else 32
        self.input_proj = nn.Conv2d(self.backbone.num_features, cfg.d_model, kernel_size=1)
        self.query_pos = nn.Parameter(torch.randn(cfg.num_queries, cfg.d_model))
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)
        self.class_head = nn.Linear(cfg.d_model, cfg.num_labels + 1)
        self.box_head = MLP(cfg.d_model, cfg.d_model, 4, 3)
        for p in (*self.encoder.parameters(), *self.decoder.parameters()):
            if p.dim() > 1:  # DETR's initialisation of the transformer (weights the checkpoint replaces)
                nn.init.xavier_uniform_(p)
        for name, p in self.backbone.named_parameters():
            if not name.startswith(("layer2", "layer3", "layer4")):
                p.requires_grad_(False)

    def run_backbone(self, pixels: Tensor) -> Tensor:
        """``(N, 3, H, W)`` -> layer4 ``(N, C, h, w)``. The activations run channels-last (NHWC), which oneDNN and
        cuDNN convolve faster: 1.5x on the CPU for ResNet-50 at 512x768, the same numbers to float rounding."""
        return self.backbone.forward_features(pixels.contiguous(memory_format=torch.channels_last))

    def features(self, pixels: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """``(N, 3, H, W)`` pixels and padding mask -> backbone features ``(N, C, h, w)`` and their mask ``(N, h, w)``
        (True on padding), under :attr:`padding` (see the module docstring)."""
        if self.padding == "batch" or not bool(mask.any()):
            feats = self.run_backbone(pixels)
            return feats, F.interpolate(mask[None].float(), size=feats.shape[-2:])[0].bool()
        if self.padding != "per-image":
            raise InvalidInputError(f"padding must be 'per-image' or 'batch', got {self.padding!r}")
        valid = ~mask
        heights, widths = valid.any(2).sum(1).tolist(), valid.any(1).sum(1).tolist()
        groups: dict[tuple[int, int], list[int]] = {}
        for i, hw in enumerate(zip(heights, widths)):
            groups.setdefault(hw, []).append(i)
        maps = {hw: self.run_backbone(pixels[idx, :, :hw[0], :hw[1]]) for hw, idx in groups.items()}
        h = max(m.shape[-2] for m in maps.values())
        w = max(m.shape[-1] for m in maps.values())
        first = next(iter(maps.values()))
        feats = first.new_zeros((pixels.shape[0], first.shape[1], h, w))
        feat_mask = torch.ones((pixels.shape[0], h, w), dtype=torch.bool, device=pixels.device)
        for hw, idx in groups.items():
            m = maps[hw]
            feats[idx, :, :m.shape[-2], :m.shape[-1]] = m
            feat_mask[idx, :m.shape[-2], :m.shape[-1]] = False
        return feats, feat_mask

    def forward(self, pixels: Tensor, mask: Tensor | None = None) -> dict[str, Tensor]:
        if mask is None:
            mask = torch.zeros((pixels.shape[0], *pixels.shape[-2:]), dtype=torch.bool, device=pixels.device)
        return self.predict(*self.features(pixels, mask))

    def predict(self, feats: Tensor, feat_mask: Tensor) -> dict[str, Tensor]:
        """Backbone features ``(N, C, h, w)`` and their mask ``(N, h, w)`` (what :meth:`features` returns) -> the
        outputs: the transformer and the heads. (Fine-tuning with a frozen backbone can run the backbone once.)"""
        n = feats.shape[0]
        x = self.input_proj(feats).flatten(2).transpose(1, 2)                        # (N, h*w, d)
        pos = sine_position_embedding(feat_mask, self.cfg.d_model // 2).flatten(1, 2).to(x.dtype)
        keep = None if not bool(feat_mask.any()) else ~feat_mask.flatten(1)          # (N, h*w) True on image
        memory = self.encoder(x, pos, keep)
        hidden = self.decoder(self.query_pos[None].expand(n, -1, -1), memory, pos, keep)  # (L_d, N, Q, d)
        logits, boxes = self.class_head(hidden), self.box_head(hidden).sigmoid()
        return {"logits": logits[-1], "boxes": boxes[-1], "aux_logits": logits[:-1], "aux_boxes": boxes[:-1]}
