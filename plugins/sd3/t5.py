"""The T5 encoder (Raffel et al. 2020; v1.1: gated GELU, no bias anywhere, untied embeddings) and its tokenizer:
SD3's third text encoder, google/t5-v1_1-xxl's encoder stack as ``text_encoder_3`` of the SD3 repo.

The network, for token ids ``(N, L)``::

    x = embed(ids)                                    (N, L, d_model); no position embeddings and no scaling
    bias = rel_bias(bucket(j - i))                    (1, heads, L, L), computed once, shared by every block
    for each block:
        x += o(softmax(q k^T + bias) v)               on RMSNorm(x); no 1/sqrt(d) scaling (folded into q at training)
        x += wo(gelu_tanh(wi_0 h) * wi_1 h)           h = RMSNorm(x): the gated-GELU MLP of T5 v1.1
    out = RMSNorm(x)                                  (N, L, d_model): what SD3 reads (last_hidden_state)

``RMSNorm(x) = w * x / sqrt(mean(x^2) + eps)`` with the mean taken in float32 (T5's LayerNorm has no mean and no
bias). Relative positions are bucketed bidirectionally: half the buckets per direction, the first half of those
exact (distances 0..7 of 32 buckets), the rest logarithmic up to ``max_distance`` (128) and clipped there.

Published names are transformers' ``T5EncoderModel``'s, converted by :data:`RENAMES`. Its input embedding is
tied to ``shared.weight`` and stored once under that name (``encoder.embed_tokens.weight`` is dropped on save, and
ignored where a file has it anyway); the XXL weights are two safetensors shards behind
``model.safetensors.index.json``, which ``zoo.loader`` reads like any single file. In float16 (how the weights are
published) the MLP's output projection ``wo`` is computed in float32 and the residual stream is float32 from its
first addition on, as transformers runs T5 (its ``_keep_in_fp32_modules = ["wo"]``): the XXL model's activations
overflow float16 otherwise; the weights stay float16 as published.

The tokenizer reproduces transformers' ``T5TokenizerFast`` on the repo's SentencePiece model (what SD3's
pipeline calls): special tokens in the text (``</s>``, ``<pad>``, ``<unk>``, ``<extra_id_N>``) are matched first;
each piece of text between them is normalised by the model's own character map, runs of spaces collapsed, split
into words at spaces, each word prefixed by ``▁`` and segmented by the unigram model (a trailing space is a word
``▁`` of its own, as the fast tokenizer gives); then ``</s>``, truncation to ``max_length`` keeping ``</s>``, and
padding with ``<pad>`` (0).
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from zoo.errors import MissingFileError
from zoo.registry import TextEncoder, TextFeatures
from zoo.registry.errors import InvalidInputError


@dataclass(frozen=True)
class T5Config:
    """The encoder fields of a transformers ``T5Config`` (defaults: google/t5-v1_1-xxl, SD3's text_encoder_3)."""

    vocab_size: int = 32128
    d_model: int = 4096
    d_kv: int = 64
    d_ff: int = 10240
    num_layers: int = 24
    num_heads: int = 64
    relative_attention_num_buckets: int = 32
    relative_attention_max_distance: int = 128
    layer_norm_epsilon: float = 1e-6
    feed_forward_proj: str = "gated-gelu"

    @classmethod
    def from_dict(cls, cfg: dict[str, Any]) -> T5Config:
        """From a transformers T5 ``config.json``; only T5 v1.1's gated GELU MLP is implemented."""
        proj = cfg.get("feed_forward_proj", "relu")
        if proj != "gated-gelu":
            raise NotImplementedError(f"T5 config: feed_forward_proj={proj!r} is not implemented (zoo's T5 encoder is "
                                      f"T5 v1.1's; supported: 'gated-gelu')")
        if cfg.get("dense_act_fn", "gelu_new") not in ("gelu_new", "gelu_pytorch_tanh"):
            raise NotImplementedError(f"T5 config: dense_act_fn={cfg['dense_act_fn']!r} (supported: gelu_new)")
        return cls(**{k: cfg[k] for k in cls.__dataclass_fields__ if k in cfg})


def relative_position_bucket(relative_position: Tensor, num_buckets: int = 32, max_distance: int = 128) -> Tensor:
    """``(L, L)`` signed distances ``key - query`` -> bucket ids in ``[0, num_buckets)``, bidirectional.

    Half the buckets per direction (keys after the query in the upper half); in each, distances below
    ``num_buckets / 4`` get a bucket each, larger ones share logarithmically wider buckets up to ``max_distance``.
    """
    num_buckets //= 2
    buckets = (relative_position > 0).long() * num_buckets
    distance = relative_position.abs()
    max_exact = num_buckets // 2
    large = max_exact + (torch.log(distance.float() / max_exact) / math.log(max_distance / max_exact)
                         * (num_buckets - max_exact)).long()
    large = large.clamp(max=num_buckets - 1)
    return buckets + torch.where(distance < max_exact, distance, large)


class RMSNorm(nn.Module):
    """``w * x / sqrt(mean(x^2) + eps)``, the mean in float32; the result in the weight's dtype."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        variance = x.float().pow(2).mean(-1, keepdim=True)
        return self.weight * (x * torch.rsqrt(variance + self.eps)).to(self.weight.dtype)


class Attention(nn.Module):
    """T5 self-attention: bias-free q/k/v/o, no score scaling, an additive relative position bias."""

    def __init__(self, cfg: T5Config) -> None:
        super().__init__()
        inner = cfg.num_heads * cfg.d_kv
        self.heads, self.d_kv = cfg.num_heads, cfg.d_kv
        self.q = nn.Linear(cfg.d_model, inner, bias=False)
        self.k = nn.Linear(cfg.d_model, inner, bias=False)
        self.v = nn.Linear(cfg.d_model, inner, bias=False)
        self.o = nn.Linear(inner, cfg.d_model, bias=False)

    def forward(self, x: Tensor, bias: Tensor) -> Tensor:
        """``x (N, L, D)``, ``bias (1 or N, H, L, L)`` (position bias plus any mask) -> ``(N, L, D)``."""
        n, length, _ = x.shape
        q, k, v = (p(x).view(n, length, self.heads, self.d_kv).transpose(1, 2) for p in (self.q, self.k, self.v))
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.dtype), scale=1.0)
        return self.o(out.transpose(1, 2).reshape(n, length, -1))


class GatedGELU(nn.Module):
    """``wo(gelu_tanh(wi_0 x) * wi_1 x)``: T5 v1.1's MLP."""

    def __init__(self, cfg: T5Config) -> None:
        super().__init__()
        self.wi_0 = nn.Linear(cfg.d_model, cfg.d_ff, bias=False)
        self.wi_1 = nn.Linear(cfg.d_model, cfg.d_ff, bias=False)
        self.wo = nn.Linear(cfg.d_ff, cfg.d_model, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        h = F.gelu(self.wi_0(x), approximate="tanh") * self.wi_1(x)
        if self.wo.weight.dtype == torch.float16:
            # T5-XXL's MLP outputs overflow float16: compute wo in float32 (transformers keeps wo in float32 for
            # this), and so the residual stream it is added to becomes float32 from the first block on
            return F.linear(h.float(), self.wo.weight.float())
        return self.wo(h)


def _clamp_half(x: Tensor) -> Tensor:
    """float16 only: keep the residual stream finite (transformers' T5 clamps the same way)."""
    if x.dtype != torch.float16:
        return x
    limit = torch.finfo(torch.float16).max - 1000
    return x.clamp(-limit, limit)


class Block(nn.Module):
    def __init__(self, cfg: T5Config) -> None:
        super().__init__()
        self.norm1 = RMSNorm(cfg.d_model, cfg.layer_norm_epsilon)
        self.attn = Attention(cfg)
        self.norm2 = RMSNorm(cfg.d_model, cfg.layer_norm_epsilon)
        self.mlp = GatedGELU(cfg)

    def forward(self, x: Tensor, bias: Tensor) -> Tensor:
        x = _clamp_half(x + self.attn(self.norm1(x), bias))
        return _clamp_half(x + self.mlp(self.norm2(x)))


def check_layer(layer: int | None, blocks: int) -> None:
    """A hidden-state number (None, 0..blocks, or negative from the end) checked against ``blocks`` blocks."""
    valid = layer is None or (isinstance(layer, int) and not isinstance(layer, bool) and -blocks - 1 <= layer <= blocks)
    if not valid:
        raise InvalidInputError(f"layer must be None or an int from {-blocks - 1} to {blocks} (0: the embeddings, i: the "
                                f"output of block i; this encoder has {blocks} blocks), got {layer!r}")


class T5Encoder(TextEncoder):
    """The T5 encoder stack as a zoo :class:`~zoo.registry.TextEncoder`.

    ``encode_tokens(ids, layer=None)`` gives the final states after the last RMSNorm (SD3's input); ``layer``
    numbers hidden states as transformers does (0: the embeddings, ``i``: the output of block ``i``, before the
    final norm). T5 has no pooled token: ``pooled`` is the mean of the final states over the text's own tokens
    (through ``</s>``), the sentence-T5 pooling. Every token attends to every other, padding included, as SD3
    calls the encoder (no attention mask); pass ``attention_mask=`` to mask padding keys instead.
    """

    def __init__(self, cfg: T5Config = T5Config(), context_length: int = 256) -> None:
        super().__init__()
        self.config = cfg
        self.context_length = context_length
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.rel_bias = nn.Embedding(cfg.relative_attention_num_buckets, cfg.num_heads)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.num_layers))
        self.final_norm = RMSNorm(cfg.d_model, cfg.layer_norm_epsilon)
        self.tokenizer: T5Tokenizer | None = None
        self.name = ""

    def position_bias(self, length: int) -> Tensor:
        """``(1, heads, L, L)``: the learned bias of each query-key distance's bucket."""
        pos = torch.arange(length, device=self.rel_bias.weight.device)
        buckets = relative_position_bucket(pos[None, :] - pos[:, None], self.config.relative_attention_num_buckets,
                                           self.config.relative_attention_max_distance)
        return self.rel_bias(buckets).permute(2, 0, 1).unsqueeze(0)

    def hidden_states(self, ids: Tensor, attention_mask: Tensor | None = None) -> list[Tensor]:
        """``(N, L)`` ids -> ``num_layers + 1`` tensors ``(N, L, d_model)``: embeddings, then each block's output."""
        bias = self.position_bias(ids.shape[1]).to(torch.float64 if self.dtype == torch.float64 else torch.float32)
        if attention_mask is not None:  # padding keys get the lowest score (transformers' extended mask)
            bias = bias.masked_fill(~attention_mask.bool()[:, None, None, :], torch.finfo(bias.dtype).min)
        states = [self.embed(ids)]
        for block in self.blocks:
            states.append(block(states[-1], bias))
        return states

    def forward(self, ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """``(N, L)`` int64 ids -> ``(N, L, d_model)`` final states (transformers' ``last_hidden_state``)."""
        return self.final_norm(self.hidden_states(ids, attention_mask)[-1])

    def tokenize(self, texts: str | Sequence[str], max_length: int | None = None) -> Tensor:
        """Strings -> ``(N, max_length)`` ids (default :attr:`context_length`, SD3's 256)."""
        if self.tokenizer is None:
            raise MissingFileError(f"{self.name or 'this T5 encoder'} has no tokenizer: it was built without its "
                                   f"tokenizer files (pretrained=False); pass (N, L) int64 token ids, or load it from "
                                   f"a folder holding spiece.model")
        return self.tokenizer(texts, max_length or self.context_length)

    def text_mask(self, ids: Tensor) -> Tensor:
        """True through the first ``</s>`` (id 1) of each row; all True for a row without one (truncated ids)."""
        eos = (ids == T5Tokenizer.EOS_ID).int()
        first = torch.where(eos.any(1), eos.argmax(1), torch.full_like(eos[:, 0], ids.shape[1] - 1))
        return torch.arange(ids.shape[1], device=ids.device) <= first[:, None]

    def encode_tokens(self, ids: Tensor, *, layer: int | None = None) -> TextFeatures:
        ids = self.token_ids(ids)
        states = self.hidden_states(ids)
        check_layer(layer, len(states) - 1)
        final = self.final_norm(states[-1])
        mask = self.text_mask(ids)
        weights = mask.to(final.dtype)[..., None]
        pooled = (final * weights).sum(1) / weights.sum(1)
        return TextFeatures(states=final if layer is None else states[layer], pooled=pooled, mask=mask)


# -- the published layout -----------------------------------------------------------------------------------------

#: transformers' ``T5EncoderModel`` names -> ours (full match, in order).
RENAMES = (
    (r"shared\.weight", "embed.weight"),
    (r"encoder\.block\.0\.layer\.0\.SelfAttention\.relative_attention_bias\.weight", "rel_bias.weight"),
    (r"encoder\.block\.(\d+)\.layer\.0\.SelfAttention\.([qkvo])\.weight", r"blocks.\1.attn.\2.weight"),
    (r"encoder\.block\.(\d+)\.layer\.0\.layer_norm\.weight", r"blocks.\1.norm1.weight"),
    (r"encoder\.block\.(\d+)\.layer\.1\.DenseReluDense\.(wi_0|wi_1|wo)\.weight", r"blocks.\1.mlp.\2.weight"),
    (r"encoder\.block\.(\d+)\.layer\.1\.layer_norm\.weight", r"blocks.\1.norm2.weight"),
    (r"encoder\.final_layer_norm\.weight", "final_norm.weight"),
)
#: the tied copy of ``shared.weight`` some files also hold (transformers drops it on save).
IGNORED = (r"encoder\.embed_tokens\.weight",)


# -- the tokenizer ------------------------------------------------------------------------------------------------


class T5Tokenizer:
    """Strings -> ``(N, max_length)`` int64 ids as transformers' ``T5TokenizerFast`` gives them (module docstring).

    Ids: ``<pad>`` 0, ``</s>`` 1, ``<unk>`` 2, the SentencePiece pieces, then ``extra_ids`` sentinels with
    ``<extra_id_0>`` last (T5's layout: 32000 pieces, ``<extra_id_99>`` = 32000 ... ``<extra_id_0>`` = 32099).
    """

    PAD_ID, EOS_ID, UNK_ID = 0, 1, 2

    def __init__(self, model_proto: bytes, *, extra_ids: int = 100) -> None:
        import sentencepiece

        self.sp = sentencepiece.SentencePieceProcessor(model_proto=model_proto)
        layout = [self.sp.id_to_piece(i) for i in range(3)]
        if layout != ["<pad>", "</s>", "<unk>"]:
            raise InvalidInputError(f"the SentencePiece model's first ids are {layout}, not T5's ['<pad>', '</s>', '<unk>']")
        # the character map alone: whitespace is handled below, as the fast tokenizer's Metaspace does
        self.normalizer = sentencepiece.SentencePieceNormalizer(
            model_proto=model_proto, add_dummy_prefix=False, escape_whitespaces=False, remove_extra_whitespaces=False)
        size = self.sp.get_piece_size()
        self.special = {"<pad>": self.PAD_ID, "</s>": self.EOS_ID, "<unk>": self.UNK_ID,
                        **{f"<extra_id_{i}>": size + extra_ids - 1 - i for i in range(extra_ids)}}
        self.split = re.compile("(" + "|".join(re.escape(t) for t in sorted(self.special, key=len, reverse=True)) + ")")
        self.space_id = self.sp.piece_to_id("▁")

    @classmethod
    def from_files(cls, root: str | Path) -> T5Tokenizer:
        path = Path(root) / "spiece.model"
        if not path.is_file():
            raise MissingFileError(f"{root} has no spiece.model, the T5 tokenizer's SentencePiece model")
        return cls(path.read_bytes())

    def _words(self, text: str) -> list[int]:
        """Text without special tokens -> ids: normalise, collapse spaces, split at spaces, segment each word."""
        text = re.sub(" {2,}", " ", self.normalizer.normalize(text))
        if not text:
            return []
        ids: list[int] = []
        words = text.split(" ")
        for i, word in enumerate(words):
            if word:
                ids += self.sp.encode(word)  # the model prefixes the word with its own "▁"
            elif 0 < i == len(words) - 1:  # a trailing space: "▁" alone
                ids.append(self.space_id)
        return ids

    def encode(self, text: str) -> list[int]:
        """A string -> ids without ``</s>``, padding or truncation."""
        ids: list[int] = []
        for part in self.split.split(text):
            ids += [self.special[part]] if part in self.special else self._words(part)
        return ids

    def __call__(self, texts: str | Sequence[str], max_length: int = 256) -> Tensor:
        """Strings -> ``(N, max_length)``: ids (at most ``max_length - 1``), ``</s>``, ``<pad>`` padding."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        out = torch.full((len(texts), max_length), self.PAD_ID, dtype=torch.long)
        for row, text in enumerate(texts):
            ids = self.encode(text)[: max_length - 1] + [self.EOS_ID]
            out[row, : len(ids)] = torch.tensor(ids)
        return out
