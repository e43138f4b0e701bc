"""SigLIP's tokenizer gives the reference ids, on a T5-layout unigram model trained here (pad 0, eos 1, unk 2, no
bos: the real c4-en vocabulary's special-id layout; the real spiece.model is not available offline):

* from ``spiece.model`` (google/siglip-*): transformers' ``SiglipTokenizer`` with ``padding="max_length"``, 64;
* from ``tokenizer.json`` (timm/ViT-B-16-SigLIP): open_clip's ``HFTokenizer(clean="canonicalize")`` over
  transformers' T5 tokenizer, as ``open_clip.get_tokenizer`` builds it for that repo.

One documented difference: ``SiglipTokenizer`` splits literal special-token strings (``</s>``, ``<unk>``) off the
text before canonicalising it, while big_vision, open_clip and zoo canonicalise first (dropping ``<``, ``/``, ``>``).
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from open_clip.tokenizer import HFTokenizer

from helpers.clip_repos import siglip_reference_tokenizer, train_t5_spm, write_t5_tokenizer_json
from zoo.plugins.clip.spm import SigLIPTokenizer, canonicalize, model_proto_from_tokenizer_json

AWKWARD = [
    "a photo of a cat",
    "A Photo, of A CAT!",
    "",
    "   ",
    "!!! ??? ...",
    "\t\n  \r\n",
    "Héllo Wörld! Ça va? naïve café résumé",
    "e\u0301 combining accent",
    "🐱🐶 emoji 👍🏽 ok",
    "I'm here, you're there, it'll be",
    "Tom &amp; Jerry &lt;3",
    "numbers 12345 3.14 1,000,000 ⅷ ² ½",
    "ﬁne ﬂow ＦＵＬＬ width ①",
    "中文字符 日本語 한국어",
    "tab\tseparated\nnew line   spaces",
    "a_b-c/d\\e",
    "ΟΔΟΣ İstanbul straße",
    "\u200bzero\u200dwidth\u00a0nbsp",
    "golden retriever " * 40,
    "x" * 300,
]
HF_DIFFERS = ["a cat </s> <unk> a dog"]


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("siglip_tok")
    write_t5_tokenizer_json(train_t5_spm(root), root / "json")
    return root


def test_spiece_matches_transformers(files: Path) -> None:
    ours = SigLIPTokenizer.from_files(files)
    ref = siglip_reference_tokenizer(files / "spiece.model")
    expected = ref(AWKWARD, padding="max_length", max_length=64, truncation=True, return_tensors="pt").input_ids
    for text, a, b in zip(AWKWARD, ours(AWKWARD), expected):
        assert a.tolist() == b.tolist(), f"{text!r}"
    for text in HF_DIFFERS:
        assert ours([text])[0].tolist() != ref([text], padding="max_length", max_length=64).input_ids[0]


def test_tokenizer_json_matches_open_clip(files: Path) -> None:
    ours = SigLIPTokenizer.from_files(files / "json")
    ref = HFTokenizer(str(files / "json"), context_length=64, clean="canonicalize")
    for text, a, b in zip(AWKWARD + HF_DIFFERS, ours(AWKWARD + HF_DIFFERS), ref(AWKWARD + HF_DIFFERS)):
        assert a.tolist() == b.tolist(), f"{text!r}"


def test_tokenizer_json_becomes_the_same_sentencepiece_model(files: Path) -> None:
    """tokenizer.json -> SentencePiece proto keeps every piece, score and special type, and the normaliser."""
    import json
    sp_file = SigLIPTokenizer.from_files(files).sp
    sp_json = SigLIPTokenizer(model_proto_from_tokenizer_json(
        json.loads((files / "json" / "tokenizer.json").read_text()))).sp
    n = sp_file.get_piece_size()
    assert sp_json.get_piece_size() == n + 100  # + the <extra_id_N> sentinels, as control pieces
    for i in range(n):
        assert sp_json.id_to_piece(i) == sp_file.id_to_piece(i)
        assert sp_json.get_score(i) == pytest.approx(sp_file.get_score(i))
        assert (sp_json.is_control(i), sp_json.is_unknown(i)) == (sp_file.is_control(i), sp_file.is_unknown(i))
    assert sp_json.is_control(n)
    for text in AWKWARD:  # raw text: exercises the NFKC table and whitespace handling too
        assert sp_json.encode(text) == sp_file.encode(text), f"{text!r}"


def test_layout_eos_padding_truncation(files: Path) -> None:
    tok = SigLIPTokenizer.from_files(files)
    ids = tok(["", "a photo of a cat", "golden retriever " * 40])
    assert ids.shape == (3, 64) and ids.dtype == torch.long
    assert (ids[0] == 1).all()  # just </s>, then </s> padding
    n = len(tok.encode("a photo of a cat"))
    assert ids[1, n] == 1 and (ids[1, n:] == 1).all() and (ids[1, :n] > 2).all()
    assert ids[2, 63] == 1 and (ids[2, :63] > 2).all()  # cut at 63 pieces; </s> kept last
    assert tok(["a cat"], context_length=16).shape == (1, 16)


def test_canonicalisation() -> None:
    assert canonicalize("  A Photo, of A CAT!  ") == "a photo of a cat"
    assert canonicalize("a_b") == "ab"  # transformers drops '_' with the punctuation
    assert canonicalize("a_b", open_clip=True) == "a b"  # open_clip / big_vision map it to a space first
    assert canonicalize("Tom &amp; Jerry", open_clip=True) == "tom jerry"  # open_clip unescapes HTML first
    assert canonicalize("Tom &amp; Jerry") == "tom amp jerry"
