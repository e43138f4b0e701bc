"""SigLIP's tokenizer: big_vision's text canonicalisation, then a SentencePiece unigram model (T5's c4-en vocab).

Ids: ``<pad>`` 0, ``</s>`` 1, ``<unk>`` 2, no start token. A text becomes its pieces + ``</s>``, cut to 63 pieces
so that ``</s>`` stays, then padded to 64 with ``</s>``: SigLIP was trained on fixed-length text padded with id 1
(big_vision ``pad_value=1``) and pools the last position, so the padding id changes the embedding.

The model comes from either file a repo carries:

* ``spiece.model`` (google/siglip-*), loaded by the ``sentencepiece`` library as it is;
* ``tokenizer.json`` (timm/ViT-*-SigLIP), a Hugging Face ``tokenizers`` Unigram model holding the same pieces,
  scores and normalisation table. :func:`model_proto_from_tokenizer_json` writes them back into the SentencePiece
  model format (a small protobuf, written by hand here: neither ``protobuf`` nor ``tokenizers`` is needed), so
  both files go through the same SentencePiece code.

Canonicalisation (lower-case, drop ASCII punctuation, collapse whitespace) follows each format's reference:
transformers' ``SiglipTokenizer`` for the google repos, open_clip's ``clean="canonicalize"`` (which also runs ftfy
and HTML unescaping first and turns ``_`` into a space, as big_vision does) for the timm repos.
"""
from __future__ import annotations

import base64
import json
import string
import struct
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import Tensor

from zoo.registry.errors import InvalidInputError, UnsupportedError

from .bpe import basic_clean

_NO_PUNCTUATION = str.maketrans("", "", string.punctuation)


def canonicalize(text: str, *, open_clip: bool = False) -> str:
    """big_vision's prompt canonicalisation: lower-case, ASCII punctuation removed, whitespace collapsed.

    ``open_clip=True`` first applies open_clip's cleaning (ftfy, HTML unescape) and maps ``_`` to a space;
    transformers' ``SiglipTokenizer`` does neither (``_`` is dropped with the other punctuation).
    """
    if open_clip:
        text = basic_clean(text).replace("_", " ")
    return " ".join(text.lower().translate(_NO_PUNCTUATION).split())


# -- SentencePiece's model file, written from a tokenizers Unigram model ------------------------------------------
# sentencepiece_model.proto: ModelProto{1: repeated SentencePiece pieces, 3: NormalizerSpec normalizer_spec};
# SentencePiece{1: piece, 2: score (float), 3: type}; NormalizerSpec{1: name, 2: precompiled_charsmap,
# 3: add_dummy_prefix, 4: remove_extra_whitespaces, 5: escape_whitespaces}. Unset fields keep proto defaults
# (trainer_spec: unigram).
NORMAL, UNKNOWN, CONTROL = 1, 2, 3  # SentencePiece.Type


def _varint(n: int) -> bytes:
    n &= (1 << 64) - 1  # negative int32 are written as 10-byte two's complement
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _field(number: int, value: bytes | str | int | float) -> bytes:
    """One protobuf field: length-delimited for bytes/str, 32-bit for float, varint for int/bool."""
    if isinstance(value, str):
        value = value.encode("utf-8")
    if isinstance(value, bytes):
        return _varint(number << 3 | 2) + _varint(len(value)) + value
    if isinstance(value, float):
        return _varint(number << 3 | 5) + struct.pack("<f", value)
    return _varint(number << 3 | 0) + _varint(int(value))


def _find(node: Any, kind: str) -> Iterator[dict]:
    """Every component of type ``kind`` in a tokenizer.json section (sequences nest)."""
    if isinstance(node, dict):
        if node.get("type") == kind:
            yield node
        for value in node.values():
            yield from _find(value, kind)
    elif isinstance(node, list):
        for value in node:
            yield from _find(value, kind)


def model_proto_from_tokenizer_json(tok: dict[str, Any]) -> bytes:
    """A parsed ``tokenizer.json`` holding a Unigram model -> a serialized SentencePiece ``ModelProto``.

    Pieces keep their ids and scores; added tokens marked special become control pieces (``<unk>`` the unknown
    piece); the ``Precompiled`` normaliser's table is SentencePiece's own ``precompiled_charsmap``.
    """
    model = tok.get("model") or {}
    if model.get("type") != "Unigram":
        raise InvalidInputError(f"tokenizer.json holds a {model.get('type')!r} model; SigLIP needs a Unigram model")
    if model.get("byte_fallback"):
        raise UnsupportedError("tokenizer.json Unigram model with byte_fallback")
    unk_id = model.get("unk_id")
    special = {t["id"] for t in tok.get("added_tokens", []) if t.get("special")}
    out = bytearray()
    for i, (piece, score) in enumerate(model["vocab"]):
        kind = UNKNOWN if i == unk_id else CONTROL if i in special else NORMAL
        out += _field(1, _field(1, piece) + _field(2, float(score)) + _field(3, kind))
    charsmaps = [n["precompiled_charsmap"] for n in _find(tok.get("normalizer"), "Precompiled")]
    metaspace = next(_find(tok.get("pre_tokenizer"), "Metaspace"), {})
    # a word-initial "▁" is added unless the Metaspace says otherwise (older files: add_prefix_space)
    dummy_prefix = metaspace.get("prepend_scheme", "always") != "never" and metaspace.get("add_prefix_space", True)
    spec = _field(1, "nmt_nfkc" if charsmaps else "identity")
    if charsmaps and charsmaps[0]:
        spec += _field(2, base64.b64decode(charsmaps[0]))
    spec += _field(3, bool(dummy_prefix)) + _field(4, True) + _field(5, True)
    out += _field(3, spec)
    return bytes(out)


class SigLIPTokenizer:
    """Strings -> ``(N, context_length)`` int64 token ids for SigLIP.

    Args:
        model_proto: a serialized SentencePiece model (the bytes of ``spiece.model``).
        context_length: 64 for the SigLIP checkpoints.
        open_clip_clean: canonicalise as open_clip does (timm repos) instead of as transformers does.
    """

    def __init__(self, model_proto: bytes, *, context_length: int = 64, open_clip_clean: bool = False) -> None:
        import sentencepiece
        self.sp = sentencepiece.SentencePieceProcessor(model_proto=model_proto)
        self.eos_id = self.sp.piece_to_id("</s>")
        if self.sp.id_to_piece(self.eos_id) != "</s>":
            raise InvalidInputError("the SentencePiece model has no '</s>' piece: not a T5/SigLIP vocabulary")
        self.pad_id = self.eos_id  # SigLIP pads with </s> (big_vision pad_value=1), whatever the files say
        self.context_length = context_length
        self.open_clip_clean = open_clip_clean

    @classmethod
    def from_files(cls, root: str | Path, *, context_length: int = 64) -> SigLIPTokenizer:
        """From ``spiece.model`` (google repos, transformers' cleaning) or ``tokenizer.json`` (timm repos,
        open_clip's cleaning)."""
        root = Path(root)
        if (root / "spiece.model").is_file():
            return cls((root / "spiece.model").read_bytes(), context_length=context_length)
        if (root / "tokenizer.json").is_file():
            tok = json.loads((root / "tokenizer.json").read_text(encoding="utf-8"))
            return cls(model_proto_from_tokenizer_json(tok), context_length=context_length, open_clip_clean=True)
        raise FileNotFoundError(f"{root} holds neither spiece.model nor tokenizer.json")

    def encode(self, text: str) -> list[int]:
        """A string -> piece ids, without ``</s>``, padding or truncation."""
        return self.sp.encode(canonicalize(text, open_clip=self.open_clip_clean))

    def __call__(self, texts: str | list[str], context_length: int | None = None) -> Tensor:
        """Strings -> ``(N, context_length)`` int64: pieces (at most ``context_length - 1``), ``</s>``, padding."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        length = context_length or self.context_length
        out = torch.full((len(texts), length), self.pad_id, dtype=torch.long)
        for row, ids in enumerate(self.sp.encode([canonicalize(t, open_clip=self.open_clip_clean) for t in texts])):
            ids = ids[: length - 1] + [self.eos_id]
            out[row, : len(ids)] = torch.tensor(ids)
        return out
