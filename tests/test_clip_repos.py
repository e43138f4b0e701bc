"""The CLIP / SigLIP fixture repos (``tests/helpers/clip_repos.py``) are faithful to the real ones: the rebuilt
vocabulary has the real files' sizes, the T5 stand-in has SigLIP's special ids, and its tokenizer.json tokenizes
as the SentencePiece model it was written from."""
from __future__ import annotations

import base64
import json
import os
from pathlib import Path

from helpers.clip_repos import needs_checkpoints, train_t5_spm, write_clip_vocab, write_t5_tokenizer_json


# -- the fixtures are faithful --------------------------------------------------------------------------------------


@needs_checkpoints
def test_rebuilt_clip_vocab_has_the_real_files_sizes(tmp_path: Path) -> None:
    write_clip_vocab(tmp_path)
    # the sizes offline-assets.md records for openai/clip-vit-base-patch32's vocab.json and merges.txt
    assert os.path.getsize(tmp_path / "vocab.json") == 862_328
    assert os.path.getsize(tmp_path / "merges.txt") == 524_619


def test_t5_stand_in_has_the_siglip_special_ids(tmp_path: Path) -> None:
    import sentencepiece as spm
    sp = spm.SentencePieceProcessor(model_file=str(train_t5_spm(tmp_path)))
    assert [sp.id_to_piece(i) for i in range(3)] == ["<pad>", "</s>", "<unk>"]
    assert (sp.pad_id(), sp.eos_id(), sp.unk_id(), sp.bos_id()) == (0, 1, 2, -1)


def test_t5_tokenizer_json_matches_its_spm_model(tmp_path: Path) -> None:
    """The tokenizer.json fixture tokenizes as the model it was written from (through HF tokenizers)."""
    import sentencepiece as spm
    from tokenizers import Tokenizer
    spiece = train_t5_spm(tmp_path)
    tok = Tokenizer.from_file(str(write_t5_tokenizer_json(spiece, tmp_path / "json")))
    sp = spm.SentencePieceProcessor(model_file=str(spiece))
    for text in ["a photo of a tabby cat", "ﬁne ＦＵＬＬ width", "golden retriever 123", ""]:
        assert tok.encode(text).ids == sp.encode(text) + [1], text
    assert base64.b64decode(json.loads((tmp_path / "json" / "tokenizer.json").read_text())
                            ["normalizer"]["normalizers"][0]["precompiled_charsmap"])
