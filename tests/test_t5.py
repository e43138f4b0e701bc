"""SD3's T5 encoder and tokenizer (``zoo.plugins.sd3.t5``) against transformers' ``T5EncoderModel`` and
``T5TokenizerFast``.

The encoder fixture is the real ``text_encoder_3/config.json`` (t5-v1_1-xxl) narrowed to 3 blocks of width 64,
with random weights, written by ``save_pretrained`` with a small shard size, so that it has the real file's
layout: ``shared.weight`` alone (the tied ``encoder.embed_tokens.weight`` dropped) behind a sharded
``model.safetensors.index.json``, read through ``zoo.loader`` as the real one is. The tokenizer's SentencePiece
model is trained in the test with T5's special ids (the real 32k model is not available offline), and the
reference is transformers' fast tokenizer on the ``tokenizer.json`` transformers' T5 conversion makes of it.
"""
from __future__ import annotations

import json

import pytest
import torch

from checkpoints import CHECKPOINTS
from helpers.clip_repos import maxdiff, one_thread, train_t5_spm, write_t5_tokenizer_json  # noqa: F401
from zoo.loader import load_component
from zoo.plugins.sd3.t5 import T5Tokenizer
from zoo.plugins.sd3 import t5_component
from zoo.plugins.sd3.t5 import relative_position_bucket

transformers = pytest.importorskip("transformers")

SD3 = CHECKPOINTS / "stabilityai__stable-diffusion-3-medium-diffusers"
NARROW = {"d_model": 64, "d_kv": 16, "d_ff": 96, "num_heads": 4, "num_layers": 3, "vocab_size": 1100}

#: strings on which a tokenizer reimplementation is most likely to go wrong.
AWKWARD = ["a photo of a cat", "  leading and trailing  ", "multiple    spaces\tand\ttabs\nnewline",
           "UPPER lower MiXeD", "ﬁ ligature and full-width ＡＢＣ", "emoji 🚀🐱 and 中文字符",
           "</s> inside <pad> text <extra_id_0>", "", " ", " \t ", "\n\n", "punctuation!!! ... ,,, ;;",
           "café naïve résumé", "a\u0301 combining", "tab\tend\t", "x  </s>  y", "zero\u200bwidth", "<unk>",
           "</s></s>", "<extra_id_99>x<extra_id_5>", "<extra_id_100>", "</S> <Pad>", "ideographic\u3000space",
           "nbsp\u00a0here", "line\r\nbreak\n", "①②③ ㎏ ™", "▁already▁marked ▁", "dots...end.",
           "a golden retriever " * 80]


@pytest.fixture(scope="module")
def t5_repo(tmp_path_factory):
    """(folder, reference model): a narrowed T5 encoder saved by transformers in two or more shards."""
    cfg = {k: v for k, v in json.loads((SD3 / "text_encoder_3" / "config.json").read_text()).items()
           if not k.startswith("_")}
    torch.manual_seed(0)
    ref = transformers.T5EncoderModel(transformers.T5Config(**{**cfg, **NARROW})).eval()
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    root = tmp_path_factory.mktemp("t5")
    ref.save_pretrained(root, max_shard_size="100KB")
    return root, ref


def test_the_fixture_has_the_real_layout(t5_repo):
    root, _ = t5_repo
    index = json.loads((root / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) >= 2
    assert "shared.weight" in index["weight_map"] and "encoder.embed_tokens.weight" not in index["weight_map"]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_encoder_matches_transformers(t5_repo, dtype):
    """Every hidden state (embeddings, each block, the final RMSNorm) within 1e-5 (float32) / 1e-12 (float64),
    on ids longer than the 128 of the largest position bucket and with padding, as SD3 feeds them."""
    root, ref = t5_repo
    ours = load_component(t5_component(None, subfolder=""), root, dtype=dtype)
    ref = ref.to(dtype)
    ids = torch.randint(3, 1100, (2, 160))
    ids[1, 20] = 1
    ids[1, 21:] = 0
    with torch.no_grad():
        out = ref(input_ids=ids, output_hidden_states=True)
        tol = 1e-5 if dtype == torch.float32 else 1e-12
        assert maxdiff(ours(ids), out.last_hidden_state) < tol
        for layer in (0, 1, -2):
            assert maxdiff(ours.encode_tokens(ids, layer=layer).states, out.hidden_states[layer]) < tol, layer
        feats = ours.encode_tokens(ids)
        assert maxdiff(feats.states, out.last_hidden_state) < tol
        assert feats.mask[1].sum() == 21 and feats.mask[0].all()
        mask = torch.ones_like(ids)
        mask[1, 21:] = 0
        assert maxdiff(ours(ids, attention_mask=mask), ref(input_ids=ids, attention_mask=mask).last_hidden_state) < tol
    ref.float()


def test_relative_position_buckets_are_transformers():
    pos = torch.arange(300)
    rel = pos[None, :] - pos[:, None]
    expected = transformers.models.t5.modeling_t5.T5Attention._relative_position_bucket(
        rel, bidirectional=True, num_buckets=32, max_distance=128)
    assert torch.equal(relative_position_bucket(rel, 32, 128), expected)


def test_a_wrong_bucket_would_show(t5_repo):
    """The comparison is sensitive: the same weights with a unidirectional bucketing differ from transformers."""
    root, ref = t5_repo
    ours = load_component(t5_component(None, subfolder=""), root)
    ids = torch.randint(3, 1100, (1, 40))
    with torch.no_grad():
        expected = ref(input_ids=ids).last_hidden_state
        ours.position_bias = lambda n: ours.rel_bias(relative_position_bucket(
            -(torch.arange(n)[None, :] - torch.arange(n)[:, None]).abs(), 32, 128)).permute(2, 0, 1).unsqueeze(0)
        assert maxdiff(ours(ids), expected) > 1e-3


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory):
    root = tmp_path_factory.mktemp("t5_tokenizer")
    spiece = train_t5_spm(root)
    write_t5_tokenizer_json(spiece, root)
    return T5Tokenizer.from_files(root), transformers.T5TokenizerFast(tokenizer_file=str(root / "tokenizer.json"))


def test_tokenizer_ids_are_transformers_on_awkward_strings(tokenizers):
    ours, ref = tokenizers
    for text in AWKWARD:
        assert ours.encode(text) + [1] == ref(text).input_ids, repr(text)
    expected = ref(AWKWARD, padding="max_length", max_length=256, truncation=True, return_tensors="pt").input_ids
    assert torch.equal(ours(AWKWARD, 256), expected)  # truncation keeps </s>, padding is <pad> = 0


def test_tokenizer_refuses_a_model_without_t5_ids(tmp_path):
    import sentencepiece as spm

    corpus = tmp_path / "c.txt"
    corpus.write_text("\n".join(["a cat on a sofa", "a dog in the park", "the quick brown fox"] * 50))
    spm.SentencePieceTrainer.train(input=str(corpus), model_prefix=str(tmp_path / "m"), vocab_size=25,
                                   minloglevel=2, num_threads=1)
    with pytest.raises(ValueError, match="not T5's"):
        T5Tokenizer((tmp_path / "m.model").read_bytes())


def test_float16_keeps_large_activations_finite(t5_repo, tmp_path):
    """T5-XXL's MLP outputs exceed float16's range; in float16 zoo computes ``wo`` and the residual stream in
    float32 as transformers does (``_keep_in_fp32_modules``). Here the first block's ``wo`` is scaled so that its
    output is about 1e5 (> 65504): the float16 model stays finite and agrees with float32 and with transformers."""
    root, ref = t5_repo
    hot = transformers.T5EncoderModel.from_pretrained(root).eval()
    with torch.no_grad():
        hot.encoder.block[0].layer[1].DenseReluDense.wo.weight.mul_(3e4)
    hot.save_pretrained(tmp_path)
    ids = torch.randint(3, 1100, (2, 40))
    ours = load_component(t5_component(None, subfolder=""), tmp_path, dtype=torch.float16)
    with torch.no_grad():
        assert hot.encoder.block[0](hot.shared(ids))[0].abs().max() > 65504  # the stream leaves float16's range
        expected = hot(input_ids=ids).last_hidden_state
        ref16 = transformers.T5EncoderModel.from_pretrained(tmp_path, dtype=torch.float16)(input_ids=ids)
        got = ours(ids)
    assert got.dtype == torch.float16 and got.isfinite().all()
    assert maxdiff(got, expected) < 0.05 and maxdiff(got, ref16.last_hidden_state) < 0.05
