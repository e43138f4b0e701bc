"""Swin Transformer (Liu et al. 2021) classifiers, run by timm's ``SwinTransformer``.

Two checkpoint layouts load into the same timm module:

* timm's own (``timm/swin_*`` repos), loaded as they are (see ``classifier.build_timm_classifier``);
* transformers' (``microsoft/swin-*`` repos, ``SwinForImageClassification``), converted by :data:`HF_TO_TIMM`.

Where the layouts differ, and why the table looks as it does:

* **Patch merging sits at the end of a stage in transformers (and the original Microsoft code), at the start of
  the next one in timm >= 0.9**: ``swin.encoder.layers.{s}.downsample`` is ``layers.{s+1}.downsample``.
* **The merge's channel order is the same in both**: each concatenates the 2x2 neighbours as
  ``[x(0,0), x(1,0), x(0,1), x(1,1)]`` ((row, col) offsets; timm by a reshape/permute, transformers by slicing),
  so ``reduction`` ``(2C, 4C)`` and ``norm`` ``(4C,)`` copy unpermuted. The parity tests would catch a mismatch,
  and ``tests/test_vit_swin_parity.py`` checks the merge on its own.
* Relative position bias tables ``((2w-1)^2, heads)`` are indexed identically. The index itself is a buffer
  timm recomputes (non-persistent); the real HF files still hold it (transformers 4.x saved it), so
  :func:`convert_hf` compares it with timm's and drops it. timm's shifted-window masks are recomputed too.

Image ``(N, 3, 224, 224)`` -> 4x4 patches ``(N, 56, 56, C)`` -> four stages of window attention, halving the
resolution and doubling channels at each merge: maps ``(N, C*2^i, 56/2^i, 56/2^i)`` -> final LayerNorm ->
mean over tokens ``(N, 8C)`` -> head ``(N, classes)``.
"""
from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

import torch
from timm.models.swin_transformer import SwinTransformer, WindowAttention, get_relative_position_index
from torch import Tensor, nn

from zoo.errors import WeightsMismatchError
from zoo.registry import ModelEntry, Renames
from zoo.weights import fuse_qkv, invert_renames, rename, split_qkv
from zoo.registry.errors import UnsupportedError


from .classifier import ImageClassifier, build_hf_classifier, build_timm_classifier, hf_num_classes

_BLOCK = r"swin\.encoder\.layers\.(\d+)\.blocks\.(\d+)"

# transformers SwinForImageClassification (names as saved in the Hub files) -> timm SwinTransformer.
HF_TO_TIMM: Renames = [
    (r"swin\.embeddings\.patch_embeddings\.projection\.(weight|bias)", r"patch_embed.proj.\1"),
    (r"swin\.embeddings\.norm\.(weight|bias)", r"patch_embed.norm.\1"),
    (rf"{_BLOCK}\.layernorm_before\.(weight|bias)", r"layers.\1.blocks.\2.norm1.\3"),
    (rf"{_BLOCK}\.attention\.self\.query\.(weight|bias)", r"layers.\1.blocks.\2.attn.q.\3"),
    (rf"{_BLOCK}\.attention\.self\.key\.(weight|bias)", r"layers.\1.blocks.\2.attn.k.\3"),
    (rf"{_BLOCK}\.attention\.self\.value\.(weight|bias)", r"layers.\1.blocks.\2.attn.v.\3"),
    (rf"{_BLOCK}\.attention\.self\.(relative_position_bias_table|relative_position_index)",
     r"layers.\1.blocks.\2.attn.\3"),
    (rf"{_BLOCK}\.attention\.output\.dense\.(weight|bias)", r"layers.\1.blocks.\2.attn.proj.\3"),
    (rf"{_BLOCK}\.layernorm_after\.(weight|bias)", r"layers.\1.blocks.\2.norm2.\3"),
    (rf"{_BLOCK}\.intermediate\.dense\.(weight|bias)", r"layers.\1.blocks.\2.mlp.fc1.\3"),
    (rf"{_BLOCK}\.output\.dense\.(weight|bias)", r"layers.\1.blocks.\2.mlp.fc2.\3"),
    # the merge at the end of HF stage s is the merge at the start of timm stage s + 1 (one rule per stage:
    # a replacement string cannot add one)
    *[(rf"swin\.encoder\.layers\.{s}\.downsample\.(reduction|norm)\.(weight|bias)", rf"layers.{s + 1}.downsample.\1.\2")
      for s in range(7)],
    (r"swin\.layernorm\.(weight|bias)", r"norm.\1"),
    (r"classifier\.(weight|bias)", r"head.fc.\1"),
]


def convert_hf(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """After :data:`HF_TO_TIMM`: q/k/v fused, and the legacy ``relative_position_index`` buffers checked against
    timm's own index, then dropped (works on meta tensors)."""
    out = {}
    for key, value in fuse_qkv(state_dict).items():
        if not key.endswith(".relative_position_index"):
            out[key] = value
            continue
        window = round(value.numel() ** 0.25)  # (w*w, w*w) in the files, flattened in some transformers versions
        expected = get_relative_position_index(window, window).reshape(-1)
        if not value.is_meta and not torch.equal(value.reshape(-1).long(), expected):
            raise WeightsMismatchError(f"{key}: the checkpoint's relative position index differs from timm's for a "
                                       f"{window}x{window} window, so its bias tables would be read differently")
    return out


#: timm's names -> transformers', for ``save_pretrained`` of a transformers-format entry
TIMM_TO_HF = invert_renames(HF_TO_TIMM)


def timm_to_hf(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """The inverse of loading a transformers Swin: q/k/v split apart, timm's names -> transformers' (the
    ``relative_position_index`` buffers, which timm and transformers both recompute, are not written)."""
    return rename(split_qkv(state_dict), TIMM_TO_HF)


def timm_args_from_hf(config: dict[str, Any]) -> dict[str, Any]:
    """A transformers ``SwinConfig`` dict -> ``SwinTransformer`` keyword arguments (defaults as SwinConfig's)."""
    if config.get("hidden_act", "gelu") != "gelu":
        raise UnsupportedError(f"hidden_act {config['hidden_act']!r}: only exact GELU ('gelu') is supported")
    if config.get("use_absolute_embeddings", False):
        raise UnsupportedError("use_absolute_embeddings=True (Swin with absolute position embeddings)")
    return dict(
        img_size=config.get("image_size", 224), patch_size=config.get("patch_size", 4),
        in_chans=config.get("num_channels", 3), embed_dim=config.get("embed_dim", 96),
        depths=tuple(config.get("depths", (2, 2, 6, 2))), num_heads=tuple(config.get("num_heads", (3, 6, 12, 24))),
        window_size=config.get("window_size", 7), mlp_ratio=config.get("mlp_ratio", 4.0),
        qkv_bias=config.get("qkv_bias", True), num_classes=hf_num_classes(config), global_pool="avg",
        norm_eps=config.get("layer_norm_eps", 1e-5), drop_path_rate=0.0,
    )


def swin_module(args: dict[str, Any]) -> nn.Module:
    """timm's SwinTransformer from :func:`timm_args_from_hf`'s arguments (``norm_eps`` -> its LayerNorms)."""
    args = dict(args)
    eps = args.pop("norm_eps")
    return SwinTransformer(**args, norm_layer=partial(nn.LayerNorm, eps=eps))


def build_hf(entry: ModelEntry, files: Path | None, *, device: torch.device, dtype: torch.dtype) -> ImageClassifier:
    """A transformers-format Swin repo (``config.json``, ``preprocessor_config.json``, weights) -> classifier."""
    return fused_attention(build_hf_classifier(entry, files, device=device, dtype=dtype, hierarchical=True))


def build_timm(entry: ModelEntry, files: Path | None, *, device: torch.device, dtype: torch.dtype,
               num_classes: int | None = None, global_pool: str | None = None,
               img_size: int | tuple[int, int] | None = None, features_only: bool = False,
               out_indices: tuple[int, ...] | int | None = None) -> ImageClassifier:
    """A timm-format Swin repo (``config.json`` with ``pretrained_cfg``, weights) -> classifier, with timm's
    options ``num_classes``, ``global_pool``, ``img_size``, ``features_only`` and ``out_indices`` as
    ``timm.create_model`` takes them (see
    ``classifier.build_timm_classifier``)."""
    return fused_attention(build_timm_classifier(entry, files, device=device, dtype=dtype, expect=SwinTransformer,
                                                 hierarchical=True, num_classes=num_classes, global_pool=global_pool,
                                                 img_size=img_size, features_only=features_only,
                                                 out_indices=out_indices))


class SDPAWindowAttention(WindowAttention):
    """timm's window attention, run through ``F.scaled_dot_product_attention`` in eager mode and written out under
    ``torch.compile``.

    timm has the fused path but leaves it off for Swin (``use_fused_attn(experimental=True)``); it adds the
    relative position bias and shift mask as SDPA's additive mask, the same arithmetic in one kernel:
    ``benchmarks/bench_vision.py`` measured 1.23x timm's eager throughput at batch 32 on one CPU thread. Under
    ``torch.compile`` the written-out ``softmax(q k^T + bias + mask) v`` is faster instead: the compiler fuses the
    bias, mask and softmax around the two matmuls, where SDPA stays one opaque call for 49-token windows
    (swin-t at batch 32, 2 CPU threads, compiled regionally: 2.39 s written out against 2.52 s with SDPA). The
    parity tests hold both to the reference within 1e-4 (fp32) and 1e-8 (fp64).
    """

    @property  # a data descriptor: shadows the instance attribute timm's __init__ set
    def fused_attn(self) -> bool:
        return not torch.compiler.is_compiling()


def fused_attention(clf: ImageClassifier) -> ImageClassifier:
    """Make each of timm's ``WindowAttention`` modules an :class:`SDPAWindowAttention`, in place (parameters
    and ``state_dict`` unchanged)."""
    for module in clf.modules():
        if type(module) is WindowAttention:
            module.__class__ = SDPAWindowAttention
            module.__dict__.pop("fused_attn", None)
    return clf
