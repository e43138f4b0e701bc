"""SD3's text conditioning: the two CLIP text towers, the T5 encoder, and the prompt embedding built from them
exactly as diffusers' ``StableDiffusion3Pipeline.encode_prompt`` builds it.

For a prompt (Esser et al. 2024, section 5.1 and fig. 2a)::

    CLIP-L  (77 tokens) -> hidden_states[-2]  (N, 77, 768)    the penultimate block's output, no final LayerNorm
    CLIP-G  (77 tokens) -> hidden_states[-2]  (N, 77, 1280)
    cat on channels, zero-pad to 4096         (N, 77, 4096)
    T5-XXL  (256 tokens) -> last_hidden_state (N, 256, 4096)  zeros when T5 is left out (text_encoder_3=False)
    cat on tokens                             (N, 333, 4096)  -> encoder_hidden_states
    pooled = cat(CLIP-L text_embeds, CLIP-G text_embeds)  (N, 2048) -> pooled_projections

The negative prompt (default ``""``) goes through the same path and is the unconditional branch of
classifier-free guidance. ``prompt_embeds=``, ``pooled_prompt_embeds=`` and their negatives skip the encoders,
as in diffusers.

The CLIP towers are the CLIP family's text tower (``zoo.plugins.clip.clip.TextTower``: the same blocks, hidden
state numbering and end-of-text pooling as CLIP's own entries), loaded here from the text-only layout SD3 ships
(transformers' ``CLIPTextModelWithProjection``: ``text_model.*`` and ``text_projection``) with the CLIP family's
rename tables, and tokenized with its BPE tokenizer from each ``tokenizer*/`` folder (whose ``pad_token`` is read
from the files: the two SD3 tokenizers pad differently).
"""
from __future__ import annotations

import json
import re
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from zoo.errors import MissingFileError
from zoo.plugins.clip.bpe import CLIPTokenizer
from zoo.plugins.clip.clip import TRANSFORMERS_BLOCK, TRANSFORMERS_TEXT, TextTower, TowerConfig, canonical_activation
from zoo.registry import Conditioner, TextEncoder, TextFeatures
from zoo.registry.errors import InvalidInputError

from .t5 import T5Encoder, check_layer


@dataclass(frozen=True)
class CLIPTextConfig:
    """A transformers ``CLIPTextConfig`` (``model_type: clip_text_model``); defaults: SD3's CLIP-L/14 text tower."""

    vocab_size: int = 49408
    hidden_size: int = 768
    intermediate_size: int = 3072
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    max_position_embeddings: int = 77
    projection_dim: int = 768
    hidden_act: str = "quick_gelu"
    layer_norm_eps: float = 1e-5

    @classmethod
    def from_dict(cls, cfg: dict[str, Any]) -> CLIPTextConfig:
        config = cls(**{k: cfg[k] for k in cls.__dataclass_fields__ if k in cfg})
        canonical_activation(config.hidden_act)  # refuses an activation the tower does not know
        return config


class CLIPTextEncoder(TextEncoder):
    """A CLIP text tower with its projection (transformers' ``CLIPTextModelWithProjection``) as a TextEncoder.

    ``encode_tokens(ids, layer=-2)`` gives SD3's per-token input; ``pooled`` is the projected end-of-text token
    (``text_embeds``) from the final layer.
    """

    def __init__(self, cfg: CLIPTextConfig = CLIPTextConfig()) -> None:
        super().__init__()
        self.config = cfg
        self.context_length = cfg.max_position_embeddings
        tower = TowerConfig(cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads, cfg.intermediate_size)
        self.text = TextTower(cfg.vocab_size, cfg.max_position_embeddings, tower, cfg.projection_dim,
                              act=canonical_activation(cfg.hidden_act), eps=cfg.layer_norm_eps)
        self.tokenizer: CLIPTokenizer | None = None
        self.name = ""

    def tokenize(self, texts: str | Sequence[str]) -> Tensor:
        if self.tokenizer is None:
            raise MissingFileError(f"{self.name or 'this CLIP text encoder'} has no tokenizer (built without its "
                                   f"files); pass (N, 77) int64 token ids, or load it with its tokenizer folder")
        return self.tokenizer([texts] if isinstance(texts, str) else list(texts))

    def text_mask(self, ids: Tensor) -> Tensor:
        return torch.arange(ids.shape[1], device=ids.device) <= self.text.pooled_index(ids)[:, None]

    def encode_tokens(self, ids: Tensor, *, layer: int | None = None) -> TextFeatures:
        ids = self.token_ids(ids)
        states = self.text.hidden_states(ids)
        check_layer(layer, len(states) - 1)
        final = self.text.norm_final(states[-1])
        pooled = self.text.proj(final[torch.arange(ids.shape[0], device=ids.device), self.text.pooled_index(ids)])
        return TextFeatures(states=final if layer is None else states[layer], pooled=pooled, mask=self.text_mask(ids))

    def forward(self, ids: Tensor) -> Tensor:
        """``(N, L)`` ids -> ``(N, projection_dim)`` projected text embeddings (the fast path)."""
        return self.text(ids)


#: transformers' ``CLIPTextModelWithProjection`` names -> ours: the CLIP family's text tables, and the projection.
CLIP_TEXT_RENAMES = (*TRANSFORMERS_TEXT, (r"text_projection\.weight", "text.proj.weight"), *TRANSFORMERS_BLOCK)


class SD3CLIPTokenizer(CLIPTokenizer):
    """CLIP's BPE tokenizer with the special tokens its files name matched in the text first, as transformers'
    tokenizers match added tokens: with SD3's ``tokenizer_2``, whose pad token is ``!``, every ``!`` of a prompt is
    id 0 (the pad id), not the BPE token ``!</w>``, and that is what the published model was conditioned on."""

    def __init__(self, *args: Any, specials: dict[str, int] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.specials = dict(specials or {})
        self.split = re.compile("(" + "|".join(map(re.escape, sorted(self.specials, key=len, reverse=True))) + ")") \
            if self.specials else None

    def encode(self, text: str) -> list[int]:
        if self.split is None:
            return super().encode(text)
        ids: list[int] = []
        for part in self.split.split(text):
            ids += [self.specials[part]] if part in self.specials else super().encode(part)
        return ids


def clip_tokenizer(folder: Path, context_length: int = 77) -> SD3CLIPTokenizer:
    """The BPE tokenizer of one ``tokenizer*/`` folder, with the special tokens (and the ``pad_token``) its
    ``special_tokens_map.json`` or ``tokenizer_config.json`` names: SD3's ``tokenizer/`` pads with
    ``<|endoftext|>``, ``tokenizer_2/`` with ``!`` (id 0)."""
    base = CLIPTokenizer.from_files(folder, context_length=context_length)
    names: dict[str, Any] = {}
    for name in ("tokenizer_config.json", "special_tokens_map.json"):  # the second wins, as in transformers
        if (folder / name).is_file():
            names.update({k: v for k, v in json.loads((folder / name).read_text(encoding="utf-8")).items()
                          if k in ("bos_token", "eos_token", "pad_token", "unk_token") and v is not None})
    tokens = {k: v.get("content") if isinstance(v, dict) else v for k, v in names.items()}
    unknown = {k: t for k, t in tokens.items() if t not in base.encoder}
    if unknown:
        raise InvalidInputError(f"{folder}: special tokens {unknown} are not in vocab.json")
    pad_id = base.encoder[tokens["pad_token"]] if "pad_token" in tokens else base.pad_id
    return SD3CLIPTokenizer(base.encoder, base.merges, context_length=context_length, pad_id=pad_id,
                            specials={t: base.encoder[t] for t in tokens.values()})


# -- the prompt embedding -----------------------------------------------------------------------------------------


def _texts(value: str | Sequence[str], n: int, what: str) -> list[str]:
    texts = [value] if isinstance(value, str) else list(value)
    if len(texts) == 1:
        texts = texts * n
    if len(texts) != n or not all(isinstance(t, str) for t in texts):
        raise InvalidInputError(f"{what}= gives {len(texts)} texts for {n} samples: give one string, or one per sample")
    return texts


def _batch(t: Tensor, n: int, what: str, shape: tuple[int | None, ...]) -> Tensor:
    """A given embedding checked against ``(N, *shape)`` (None: any size) and broadcast from one row to n."""
    fits = isinstance(t, Tensor) and t.ndim == len(shape) + 1 and all(
        s in (None, d) for s, d in zip(shape, t.shape[1:]))
    if not fits:
        got = tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__
        want = ", ".join("L" if s is None else str(s) for s in shape)
        raise InvalidInputError(f"{what} must be a tensor (N, {want}), got {got}")
    if t.shape[0] == 1:
        return t.expand(n, *t.shape[1:])
    if t.shape[0] != n:
        raise InvalidInputError(f"{what} holds {t.shape[0]} rows for {n} samples: give 1 or {n}")
    return t


class SD3Conditioner(Conditioner):
    """Prompts -> ``encoder_hidden_states`` ``(N, 77 + T, 4096)`` and ``pooled_projections`` ``(N, 2048)``.

    Args:
        clip_l, clip_g: the two CLIP text encoders (None with ``text_encoders=False``: embeddings must be given).
        t5: the T5 encoder, or None for SD3 without T5 (zeros of ``(N, max_sequence_length, joint_dim)``).
        joint_dim: the transformer's ``joint_attention_dim`` (4096).
        max_sequence_length: T5 tokens (256, diffusers' default; at most the T5 tokenizer's).
    """

    inputs = ("prompt", "prompt_2", "prompt_3", "negative_prompt", "negative_prompt_2", "negative_prompt_3",
              "prompt_embeds", "pooled_prompt_embeds", "negative_prompt_embeds", "negative_pooled_prompt_embeds",
              "max_sequence_length")

    def __init__(self, clip_l: CLIPTextEncoder | None, clip_g: CLIPTextEncoder | None, t5: T5Encoder | None, *,
                 joint_dim: int = 4096, pooled_dim: int = 2048, max_sequence_length: int = 256) -> None:
        super().__init__()
        self.clip_l, self.clip_g, self.t5 = clip_l, clip_g, t5
        self.joint_dim, self.pooled_dim, self.max_sequence_length = joint_dim, pooled_dim, max_sequence_length

    #: set by the pipeline's ``enable_model_cpu_offload``: each encoder moves there only while it runs.
    offload_device: torch.device | None = None

    @contextmanager
    def _running(self, encoder: nn.Module) -> Iterator[None]:
        if self.offload_device is None:
            yield
            return
        encoder.to(self.offload_device)
        try:
            yield
        finally:
            encoder.to("cpu")
            if self.offload_device.type == "cuda":
                torch.cuda.empty_cache()

    @property
    def has_encoders(self) -> bool:
        return self.clip_l is not None and self.clip_g is not None

    def drop_t5(self) -> None:
        """Free T5-XXL (4.8B parameters) once the prompts you need are encoded (``cond, uncond =
        pipe.conditioner(n, prompt=...)``, then ``pipe.sample(n, cond=cond, uncond=uncond)``): later prompts get
        zeros in its place, as without T5."""
        self.t5 = None

    @torch.inference_mode()
    def encode_prompt(self, prompt: Sequence[str], prompt_2: Sequence[str] | None = None,
                      prompt_3: Sequence[str] | None = None,
                      max_sequence_length: int | None = None) -> tuple[Tensor, Tensor]:
        """N prompts (and optional different prompts for CLIP-G and T5) -> ``(N, 77 + T, 4096)``, ``(N, 2048)``."""
        if not self.has_encoders:
            raise InvalidInputError("this SD3 pipeline was built with text_encoders=False: pass prompt_embeds= and "
                                    "pooled_prompt_embeds= (and negative_prompt_embeds= / negative_pooled_prompt_embeds= "
                                    "for guidance) instead of prompts")
        length = max_sequence_length or self.max_sequence_length
        with self._running(self.clip_l):
            l = self.clip_l.encode_tokens(self.clip_l.tokenize(list(prompt)), layer=-2)
        with self._running(self.clip_g):
            g = self.clip_g.encode_tokens(self.clip_g.tokenize(list(prompt_2 or prompt)), layer=-2)
        dtype = l.states.dtype
        clip = torch.cat([l.states, g.states.to(dtype)], dim=-1)
        clip = F.pad(clip, (0, self.joint_dim - clip.shape[-1]))
        if self.t5 is None:
            t5 = torch.zeros(len(prompt), length, self.joint_dim, device=clip.device, dtype=dtype)
        else:
            with self._running(self.t5):
                t5 = self.t5(self.t5.tokenize(list(prompt_3 or prompt), max_length=length).to(self.t5.device))
                t5 = t5.to(device=clip.device, dtype=dtype)
        return torch.cat([clip, t5], dim=-2), torch.cat([l.pooled, g.pooled.to(l.pooled.dtype)], dim=-1)

    def forward(self, n: int, prompt: str | Sequence[str] | None = None, prompt_2: str | Sequence[str] | None = None,
                prompt_3: str | Sequence[str] | None = None, negative_prompt: str | Sequence[str] | None = None,
                negative_prompt_2: str | Sequence[str] | None = None,
                negative_prompt_3: str | Sequence[str] | None = None, prompt_embeds: Tensor | None = None,
                pooled_prompt_embeds: Tensor | None = None, negative_prompt_embeds: Tensor | None = None,
                negative_pooled_prompt_embeds: Tensor | None = None,
                max_sequence_length: int | None = None) -> tuple[dict[str, Any], dict[str, Any] | None]:
        cond = self._branch(n, prompt, prompt_2, prompt_3, prompt_embeds, pooled_prompt_embeds, max_sequence_length,
                            "prompt")
        if not self.has_encoders and negative_prompt_embeds is None and negative_pooled_prompt_embeds is None:
            return cond, None  # no encoders to embed "" with: guidance needs the negative embeddings given
        uncond = self._branch(n, "" if negative_prompt is None else negative_prompt, negative_prompt_2,
                              negative_prompt_3, negative_prompt_embeds, negative_pooled_prompt_embeds,
                              max_sequence_length, "negative_prompt")
        return cond, uncond

    def _branch(self, n: int, prompt, prompt_2, prompt_3, embeds: Tensor | None, pooled: Tensor | None,
                max_sequence_length: int | None, what: str) -> dict[str, Tensor]:
        if embeds is not None or pooled is not None:
            if embeds is None or pooled is None:
                raise InvalidInputError(f"pass both {what}_embeds= and pooled_{what}_embeds= (or neither)".replace(
                    "pooled_negative_prompt", "negative_pooled_prompt"))
            if prompt not in (None, "") and what == "prompt":
                raise InvalidInputError("pass either prompt= or prompt_embeds=, not both")
            return {"encoder_hidden_states": _batch(embeds, n, f"{what}_embeds", (None, self.joint_dim)),
                    "pooled_projections": _batch(pooled, n, "pooled_" + what + "_embeds", (self.pooled_dim,))}
        if prompt is None:
            raise InvalidInputError("SD3 is text-conditional: pass prompt= (or prompt_embeds= and pooled_prompt_embeds=)")
        texts = _texts(prompt, n, what)
        texts_2 = _texts(prompt_2, n, f"{what}_2") if prompt_2 is not None else None
        texts_3 = _texts(prompt_3, n, f"{what}_3") if prompt_3 is not None else None
        if len(set(zip(texts, texts_2 or texts, texts_3 or texts))) == 1:  # one prompt for all: encode it once
            states, pooled = self.encode_prompt(texts[:1], texts_2 and texts_2[:1], texts_3 and texts_3[:1],
                                                max_sequence_length)
            states, pooled = states.expand(n, *states.shape[1:]), pooled.expand(n, -1)
        else:
            states, pooled = self.encode_prompt(texts, texts_2, texts_3, max_sequence_length)
        return {"encoder_hidden_states": states, "pooled_projections": pooled}
