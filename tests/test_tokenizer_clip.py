"""CLIP's BPE tokenizer gives the reference ids: open_clip's SimpleTokenizer (OpenAI's code) and transformers'
CLIPTokenizer, both on the real 49,408-token vocabulary rebuilt from open_clip's bundled BPE file.

The two references disagree with each other on a few inputs, and zoo follows OpenAI's tokenizer (the one the
weights were trained with), so:

* ``HF_DIFFERS``: transformers skips ftfy and HTML unescaping, so entities, mojibake, curly quotes, ligatures,
  full-width letters and a final capital sigma tokenize differently there;
* ``OPEN_CLIP_DIFFERS``: open_clip spells the special tokens ``<start_of_text>``/``<end_of_text>``, so a literal
  ``<|endoftext|>`` in the text is split into pieces there, while OpenAI and transformers map it to the end token.

The tests assert that those references really differ on exactly those strings, so the lists stay true.
"""
from __future__ import annotations

from pathlib import Path

import open_clip
import pytest
import torch
import transformers

from helpers.clip_repos import write_clip_vocab, needs_checkpoints
from zoo.plugins.clip.bpe import CLIPTokenizer, split_words

pytestmark = needs_checkpoints

AWKWARD = [
    "a photo of a cat",
    "A PHOTO OF A CAT.",
    "",
    "   ",
    "\t\n  \r\n",
    "Héllo Wörld! Ça va? naïve café résumé",
    "e\u0301 combining accent, Å vs A\u030a",
    "🐱🐶 emoji 👍🏽 family 👨‍👩‍👧 flags 🇫🇷",
    "I'm here, you're there, it'll be, they've, we'd, she's, don't DON'T",
    "numbers 12345 3.14159 1,000,000 -42 1e-3 ⅷ ² ½ ٣",
    "punct!!! ??? ... ;-) :) (a) [b] {c} <d> @#$%^&*_+=|\\/~`",
    "中文字符 日本語のテキスト 한국어 텍스트 ภาษาไทย العربية עברית",
    "tab\tseparated\nnew line   many    spaces",
    "a_b-c/d\\e.f,g;h:i",
    "\u200bzero\u200dwidth\u00a0nbsp\u2003em-space",
    "İstanbul straße",
    "x" * 300,
    "word " * 100,
    "a photo of a " + "very " * 80 + "big dog",
]
HF_DIFFERS = [
    "Tom &amp; Jerry &lt;3 &#39;quoted&#39; &amp;amp;",
    "“curly” ‘single’ quotes",
    "ﬁne ﬂow ligatures, ＦＵＬＬ width, ǅemal",
    "mojibake: cafÃ© donâ€™t",
    "ΟΔΟΣ final sigma",
]
OPEN_CLIP_DIFFERS = ["<|startoftext|> a cat <|endoftext|> and more"]


@pytest.fixture(scope="module")
def vocab_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_clip_vocab(tmp_path_factory.mktemp("clip_vocab"))


@pytest.fixture(scope="module")
def hf(vocab_dir: Path) -> transformers.CLIPTokenizer:
    return transformers.CLIPTokenizer(vocab=str(vocab_dir / "vocab.json"), merges=str(vocab_dir / "merges.txt"))


def _hf_ids(hf: transformers.CLIPTokenizer, texts: list[str]) -> torch.Tensor:
    return hf(texts, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids


def test_ids_match_open_clip(vocab_dir: Path) -> None:
    ours = CLIPTokenizer.from_files(vocab_dir, pad_id=0)  # open_clip pads with 0
    texts = AWKWARD + HF_DIFFERS
    ref = open_clip.tokenize(texts)
    got = ours(texts)
    for text, a, b in zip(texts, got, ref):
        assert a.tolist() == b.tolist(), f"{text!r}"


def test_ids_match_transformers(vocab_dir: Path, hf: transformers.CLIPTokenizer) -> None:
    ours = CLIPTokenizer.from_files(vocab_dir)  # transformers' files pad with <|endoftext|>
    texts = AWKWARD + OPEN_CLIP_DIFFERS
    for text, a, b in zip(texts, ours(texts), _hf_ids(hf, texts)):
        assert a.tolist() == b.tolist(), f"{text!r}"


def test_the_references_differ_where_documented(vocab_dir: Path, hf: transformers.CLIPTokenizer) -> None:
    ours = CLIPTokenizer.from_files(vocab_dir)
    for text in HF_DIFFERS:
        assert _hf_ids(hf, [text])[0].tolist() != ours([text])[0].tolist(), f"transformers now agrees on {text!r}"
    ours = CLIPTokenizer.from_files(vocab_dir, pad_id=0)
    for text in OPEN_CLIP_DIFFERS:
        assert open_clip.tokenize([text])[0].tolist() != ours([text])[0].tolist()
        assert ours([text])[0].tolist()[:3] == [49406, 49406, 320]  # "<|startoftext|> a ..." keeps the special


def test_layout_start_end_padding_truncation(vocab_dir: Path) -> None:
    tok = CLIPTokenizer.from_files(vocab_dir)
    ids = tok(["", "a photo of a cat", "word " * 100])
    assert ids.shape == (3, 77) and ids.dtype == torch.long
    assert ids[0, :2].tolist() == [49406, 49407] and (ids[0, 2:] == 49407).all()
    assert ids[1, :7].tolist() == [49406, 320, 1125, 539, 320, 2368, 49407]  # OpenAI's ids for this prompt
    assert ids[2, 0] == 49406 and ids[2, 76] == 49407 and (ids[2, 1:76] == 2653).all()  # cut, end token kept
    assert tok(["a cat"], context_length=8).shape == (1, 8)


def test_tokenizer_json_alone(vocab_dir: Path, hf: transformers.CLIPTokenizer, tmp_path: Path) -> None:
    """A repo with only tokenizer.json (HF tokenizers' format) gives the same ids as vocab.json + merges.txt."""
    hf.backend_tokenizer.save(str(tmp_path / "tokenizer.json"))
    assert not (tmp_path / "vocab.json").exists()
    texts = AWKWARD[:12]
    assert torch.equal(CLIPTokenizer.from_files(tmp_path)(texts), CLIPTokenizer.from_files(vocab_dir)(texts))


def test_split_words_follows_the_clip_pattern() -> None:
    assert split_words("don't stop!!! 2024 café's") == ["don", "'t", "stop", "!!!", "2", "0", "2", "4", "café", "'s"]
    assert split_words("<|endoftext|>x") == ["<|endoftext|>", "x"]
    assert split_words("!'s") == ["!'", "s"]  # a contraction only starts a word; a symbol run swallows the quote
