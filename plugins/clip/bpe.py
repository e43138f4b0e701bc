"""CLIP's byte-level BPE tokenizer, read from a checkpoint's own vocabulary files.

Reproduces OpenAI's ``SimpleTokenizer`` (the one CLIP was trained with, kept verbatim by open_clip):

1. clean: ``ftfy.fix_text``, HTML-unescape twice, collapse whitespace, lower-case;
2. split into words with CLIP's pattern (special tokens, English contractions, runs of letters, single digits,
   runs of other symbols), written here as a small scanner over Unicode categories so that the third-party
   ``regex`` module is not needed;
3. map each word's UTF-8 bytes to printable characters (GPT-2's byte table), mark the last one with ``</w>`` and
   apply the merges by rank;
4. ``<|startoftext|> ids <|endoftext|>``, truncated to the context (77) with the end token kept, then padded.

transformers' ``CLIPTokenizer`` gives the same ids except where ftfy or the HTML unescaping change the text
(``&amp;``, mojibake, curly quotes, ligatures, full-width letters): it skips both. open_clip's copy gives the same
ids except for the literal special-token strings, which it spells ``<start_of_text>`` / ``<end_of_text>``.
The padding id differs between the two formats (0 in OpenAI/open_clip, ``<|endoftext|>`` in transformers' files);
it never changes the embedding, which is pooled at the first end token under a causal mask.
"""
from __future__ import annotations

import gzip
import html
import json
import unicodedata
import warnings
from functools import lru_cache
from pathlib import Path

import torch
from torch import Tensor
from zoo.registry.errors import InvalidInputError

SOT, EOT = "<|startoftext|>", "<|endoftext|>"
_CONTRACTIONS = ("'s", "'t", "'re", "'ve", "'m", "'ll", "'d")  # tried in this order, as the regex alternation


@lru_cache(maxsize=1)
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's table: every byte -> a printable character, so that BPE never sees whitespace or control bytes."""
    bs = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def _fix_text(text: str) -> str:
    try:
        import ftfy
    except ImportError:  # ftfy repairs mojibake, quotes and ligatures; without it only NFC is applied
        warnings.warn("ftfy is not installed: CLIP text cleaning falls back to NFC normalisation, which differs "
                      "from the reference on mojibake, curly quotes and ligatures (pip install ftfy)", stacklevel=3)
        return unicodedata.normalize("NFC", text)
    return ftfy.fix_text(text)


def basic_clean(text: str) -> str:
    """ftfy, then HTML-unescape twice (web captions are often escaped twice): OpenAI's and open_clip's first step."""
    return html.unescape(html.unescape(_fix_text(text)))


def clean(text: str) -> str:
    """OpenAI CLIP's text cleaning: :func:`basic_clean`, collapse whitespace, lower-case."""
    return " ".join(basic_clean(text).split()).lower()


def _kind(ch: str) -> str:
    """'L' letter, 'N' number, ' ' whitespace, 'O' anything else: the classes of CLIP's split pattern."""
    if ch.isspace():
        return " "
    cat = unicodedata.category(ch)[0]
    return cat if cat in "LN" else "O"


def split_words(text: str) -> list[str]:
    """CLIP's pre-tokenisation, the regex ``<|startoftext|>|<|endoftext|>|'s|'t|'re|'ve|'m|'ll|'d|[\\p{L}]+|
    [\\p{N}]|[^\\s\\p{L}\\p{N}]+`` applied with findall: at each position the first alternative that matches wins."""
    words, i, n = [], 0, len(text)
    while i < n:
        kind = _kind(text[i])
        if kind == " ":
            i += 1
            continue
        special = next((s for s in (SOT, EOT) if text.startswith(s, i)), None)
        contraction = next((c for c in _CONTRACTIONS if text.startswith(c, i)), None)
        if special or contraction:
            j = i + len(special or contraction)
        elif kind == "N":
            j = i + 1
        else:  # a run of letters, or of symbols (neither letter, digit nor space)
            j = i + 1
            while j < n and _kind(text[j]) == kind:
                j += 1
        words.append(text[i:j])
        i = j
    return words


class CLIPTokenizer:
    """Strings -> ``(N, context_length)`` int64 token ids, as CLIP was trained.

    Args:
        vocab: token -> id (49,408 entries for every OpenAI/LAION CLIP).
        merges: the BPE merges in rank order.
        context_length: 77 for every CLIP.
        pad_id: 0 for OpenAI / open_clip files, the end token for transformers' files.
    """

    def __init__(self, vocab: dict[str, int], merges: list[tuple[str, str]], *, context_length: int = 77,
                 pad_id: int = 0) -> None:
        self.encoder = vocab
        self.merges = list(merges)
        self.ranks = {pair: rank for rank, pair in enumerate(merges)}
        self.byte_encoder = bytes_to_unicode()
        self.sot_id, self.eot_id = vocab[SOT], vocab[EOT]
        self.context_length = context_length
        self.pad_id = pad_id
        self._cache: dict[str, list[int]] = {SOT: [self.sot_id], EOT: [self.eot_id]}

    @classmethod
    def from_files(cls, root: str | Path, *, context_length: int = 77, pad_id: int | None = None) -> CLIPTokenizer:
        """From ``vocab.json`` + ``merges.txt``, or else ``tokenizer.json`` (a transformers / HF tokenizers repo).

        ``pad_id`` defaults to the end token, as transformers' files say (``pad_token: <|endoftext|>``).
        """
        root = Path(root)
        if (root / "vocab.json").is_file() and (root / "merges.txt").is_file():
            vocab = json.loads((root / "vocab.json").read_text(encoding="utf-8"))
            lines = (root / "merges.txt").read_text(encoding="utf-8").split("\n")
            merges = [tuple(line.split()) for line in lines if line and not line.startswith("#version")]
        elif (root / "tokenizer.json").is_file():
            model = json.loads((root / "tokenizer.json").read_text(encoding="utf-8"))["model"]
            if model.get("type") != "BPE":
                raise InvalidInputError(f"{root / 'tokenizer.json'} holds a {model.get('type')} model, not CLIP's BPE")
            vocab = model["vocab"]
            # tokenizers writes merges as "a b" strings (<= 0.19) or as [a, b] pairs (>= 0.20)
            merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
        else:
            raise FileNotFoundError(f"{root} holds neither vocab.json + merges.txt nor tokenizer.json")
        return cls(vocab, merges, context_length=context_length,
                   pad_id=vocab[EOT] if pad_id is None else pad_id)

    @classmethod
    def from_openai_bpe(cls, path: str | Path, **kwargs) -> CLIPTokenizer:
        """From OpenAI's ``bpe_simple_vocab_16e6.txt.gz`` (shipped in the open_clip and OpenAI clip packages):
        its first 48,894 merges; the vocabulary is the 256 byte symbols, the same with ``</w>``, the merged pairs
        and the two special tokens, in that order (OpenAI's construction)."""
        lines = gzip.open(path).read().decode("utf-8").split("\n")
        merges = [tuple(line.split()) for line in lines[1:49152 - 256 - 2 + 1]]
        symbols = list(bytes_to_unicode().values())
        tokens = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges] + [SOT, EOT]
        return cls({t: i for i, t in enumerate(tokens)}, merges, **kwargs)

    def save(self, out: str | Path) -> None:
        """Write ``vocab.json`` and ``merges.txt`` as the transformers-format CLIP repos hold them (byte for byte
        for OpenAI's vocabulary)."""
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "vocab.json").write_text(json.dumps(self.encoder, ensure_ascii=False, separators=(",", ":")),
                                        encoding="utf-8")
        (out / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in self.merges),
                                        encoding="utf-8")

    def bpe(self, word: str) -> list[int]:
        """One pre-tokenised word -> its token ids (cached: prompts repeat words)."""
        if word in self._cache:
            return self._cache[word]
        symbols = [self.byte_encoder[b] for b in word.encode("utf-8")]
        symbols[-1] += "</w>"  # the end-of-word marker lives on the last symbol
        while len(symbols) > 1:
            # merge every occurrence of the best-ranked adjacent pair, left to right
            pairs = {(a, b) for a, b in zip(symbols, symbols[1:])}
            best = min(pairs, key=lambda p: self.ranks.get(p, float("inf")))
            if best not in self.ranks:
                break
            merged, i = [], 0
            while i < len(symbols):
                if i < len(symbols) - 1 and (symbols[i], symbols[i + 1]) == best:
                    merged.append(symbols[i] + symbols[i + 1])
                    i += 2
                else:
                    merged.append(symbols[i])
                    i += 1
            symbols = merged
        ids = [self.encoder[s] for s in symbols]
        if len(self._cache) < 100_000:
            self._cache[word] = ids
        return ids

    def encode(self, text: str) -> list[int]:
        """A string -> token ids without start/end tokens, padding or truncation."""
        return [i for word in split_words(clean(text)) for i in self.bpe(word)]

    def __call__(self, texts: str | list[str], context_length: int | None = None) -> Tensor:
        """Strings -> ``(N, context_length)`` int64: start, tokens, end, padding; an over-long text is cut
        and keeps its end token in the last position (the text tower pools there)."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        length = context_length or self.context_length
        out = torch.full((len(texts), length), self.pad_id, dtype=torch.long)
        for row, text in enumerate(texts):
            ids = [self.sot_id] + self.encode(text)[: length - 2] + [self.eot_id]
            out[row, : len(ids)] = torch.tensor(ids)
        return out
