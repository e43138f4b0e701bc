"""Fixture repos for the CLIP / SigLIP tests, in the real Hub layouts, and what the tests compare them with.

Every repo is written by its reference library from the real config in tests/checkpoints, with random weights
moved off their initial values (LayerNorm scales off 1, biases off 0) so that a wrong mapping cannot hide behind
a neutral value:

* transformers repos: ``CLIPModel`` / ``SiglipModel`` ``save_pretrained`` + the real preprocessor and tokenizer
  configs; CLIP's ``vocab.json`` / ``merges.txt`` rebuilt byte for byte from open_clip's bundled BPE file;
  SigLIP's ``spiece.model`` a small T5-layout unigram model trained here (the real one is not available offline);
* open_clip repos: the model's state dict as ``open_clip_model.safetensors`` + the real ``open_clip_config.json``;
  timm/ViT-B-16-SigLIP's ``tokenizer.json`` is written with ``tokenizers`` from the same trained model, in the
  layout transformers' T5 conversion gives (Precompiled normaliser, Metaspace, 100 ``<extra_id_N>``).

Test modules import the builders, constants and the ``one_thread`` fixture from here (importing ``one_thread``
makes it apply to the module: it is autouse); ``tests/test_clip_repos.py`` checks that the fixtures are faithful.
"""
from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import open_clip
import pytest
import torch
import transformers
from safetensors.torch import save_file

from checkpoints import CHECKPOINTS

OPEN_CLIP_BPE = Path(open_clip.__file__).parent / "bpe_simple_vocab_16e6.txt.gz"
HF_CLIP = ["openai__clip-vit-base-patch32", "openai__clip-vit-large-patch14"]
LAION_B32, GOOGLE_SIGLIP, TIMM_SIGLIP = ("laion__CLIP-ViT-B-32-laion2B-s34B-b79K", "google__siglip-base-patch16-224",
                                         "timm__ViT-B-16-SigLIP")
needs_checkpoints = pytest.mark.skipif(not CHECKPOINTS.is_dir(), reason=f"{CHECKPOINTS} not found")


def real(repo: str, name: str = "config.json") -> dict:
    return json.loads((CHECKPOINTS / repo / name).read_text())


def perturb(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Move every parameter off its initial value; logit_scale to about ln(100), logit_bias to about -10."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.startswith("logit_scale"):
                p.fill_(4.2)
            elif name.startswith("logit_bias"):
                p.fill_(-9.0)
            else:
                p.add_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.05)
    return model.eval()


# -- tokenizer files ------------------------------------------------------------------------------------------------


def write_clip_vocab(out: Path, repo: str = HF_CLIP[0]) -> Path:
    """vocab.json + merges.txt rebuilt from open_clip's BPE file (as the real repos hold them), and the repo's
    real tokenizer_config.json / special_tokens_map.json."""
    from zoo.plugins.clip.bpe import CLIPTokenizer
    CLIPTokenizer.from_openai_bpe(OPEN_CLIP_BPE).save(out)
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(CHECKPOINTS / repo / name, out)
    return out


_SPM_CACHE: dict[str, bytes] = {}


def train_t5_spm(out: Path, vocab_size: int = 1000) -> Path:
    """``out/spiece.model``: a unigram model with the T5 / SigLIP special ids (pad 0, eos 1, unk 2, no bos),
    trained on timm's ImageNet class names (about a second; cached per process)."""
    import sentencepiece as spm
    import timm
    out.mkdir(parents=True, exist_ok=True)
    if "model" not in _SPM_CACHE:
        lemmas = Path(timm.__file__).parent / "data" / "_info" / "imagenet_synset_to_lemma.txt"
        corpus = out / "corpus.txt"
        corpus.write_text("\n".join(line.split("\t", 1)[1].strip() for line in lemmas.read_text().splitlines()))
        spm.SentencePieceTrainer.train(input=str(corpus), model_prefix=str(out / "spiece"), vocab_size=vocab_size,
                                       model_type="unigram", pad_id=0, eos_id=1, unk_id=2, bos_id=-1,
                                       minloglevel=2, num_threads=1)
        corpus.unlink()
        (out / "spiece.vocab").unlink()
        _SPM_CACHE["model"] = (out / "spiece.model").read_bytes()
    (out / "spiece.model").write_bytes(_SPM_CACHE["model"])
    return out / "spiece.model"


def _proto_fields(buf: bytes):
    """(field number, value) of a serialized protobuf message (varint and length-delimited fields)."""
    i = 0
    while i < len(buf):
        key, i = _read_varint(buf, i)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, i = _read_varint(buf, i)
        elif wire == 2:
            n, i = _read_varint(buf, i)
            value, i = buf[i:i + n], i + n
        else:
            size = 4 if wire == 5 else 8
            value, i = buf[i:i + size], i + size
        yield number, value


def _read_varint(buf: bytes, i: int) -> tuple[int, int]:
    n = shift = 0
    while True:
        byte = buf[i]
        i += 1
        n |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return n, i


def write_t5_tokenizer_json(spiece: Path, out: Path) -> Path:
    """``tokenizer.json`` in the layout of timm/ViT-B-16-SigLIP (transformers' T5 conversion of the spm model):
    Unigram vocab + 100 ``<extra_id_N>``, Precompiled normaliser with the model's own charsmap, Metaspace, ``$A
    </s>``; and tokenizer configs with pad = ``</s>`` as the real repo's."""
    import sentencepiece as spm
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    out.mkdir(parents=True, exist_ok=True)
    sp = spm.SentencePieceProcessor(model_file=str(spiece))
    normalizer_spec = dict(_proto_fields(next(v for n, v in _proto_fields(spiece.read_bytes()) if n == 3)))
    extra = [f"<extra_id_{i}>" for i in range(99, -1, -1)]
    vocab = [(sp.id_to_piece(i), sp.get_score(i)) for i in range(sp.get_piece_size())] + [(t, 0.0) for t in extra]
    tok = Tokenizer(models.Unigram(vocab, unk_id=2, byte_fallback=False))
    tok.normalizer = normalizers.Sequence([normalizers.Precompiled(normalizer_spec[2]),
                                           normalizers.Replace(Regex(" {2,}"), " ")])
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    tok.add_special_tokens([AddedToken(t, special=True) for t in ["<pad>", "</s>", "<unk>", *extra]])
    tok.post_processor = processors.TemplateProcessing(single=["$A", "</s>"], pair=["$A", "</s>", "$B", "</s>"],
                                                       special_tokens=[("</s>", 1)])
    tok.save(str(out / "tokenizer.json"))
    (out / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "T5Tokenizer", "eos_token": "</s>", "pad_token": "</s>", "unk_token": "<unk>",
         "extra_ids": 100, "model_max_length": 64}))
    (out / "special_tokens_map.json").write_text(json.dumps(
        {"eos_token": "</s>", "pad_token": "</s>", "unk_token": "<unk>", "additional_special_tokens": extra}))
    return out / "tokenizer.json"


def siglip_reference_tokenizer(spiece: Path):
    """transformers' SiglipTokenizer on ``spiece``. Its constructor demands the protobuf package, which only its
    non-legacy mode uses (SiglipTokenizer runs in legacy mode); without protobuf the check is skipped."""
    import transformers.models.siglip.tokenization_siglip as module
    try:
        import google.protobuf  # noqa: F401
    except ImportError:
        module.requires_backends = lambda obj, backends: None
    return module.SiglipTokenizer(str(spiece))


# -- model repos ----------------------------------------------------------------------------------------------------


def hf_clip_repo(out: Path, repo: str = HF_CLIP[0], layers: int | None = 2, seed: int = 0):
    """A transformers CLIP repo with the real config (``layers`` blocks per tower unless None) -> (dir, model)."""
    cfg = copy.deepcopy(real(repo))
    if layers:
        cfg["text_config"]["num_hidden_layers"] = cfg["vision_config"]["num_hidden_layers"] = layers
    torch.manual_seed(seed)
    ref = perturb(transformers.CLIPModel(transformers.CLIPConfig(**cfg)), seed)
    ref.save_pretrained(out)
    shutil.copy(CHECKPOINTS / repo / "preprocessor_config.json", out)
    write_clip_vocab(out, repo)
    return out, ref


def open_clip_repo(out: Path, layers: int | None = 2, seed: int = 0):
    """laion/CLIP-ViT-B-32-laion2B-s34B-b79K's layout: open_clip's state dict + the real open_clip_config.json +
    the HF tokenizer files the laion repos carry -> (dir, model). ``layers=None``: ``create_model('ViT-B-32')``."""
    cfg = real(LAION_B32, "open_clip_config.json")
    if layers:
        cfg["model_cfg"]["vision_cfg"]["layers"] = cfg["model_cfg"]["text_cfg"]["layers"] = layers
        torch.manual_seed(seed)
        ref = open_clip.model.CLIP(**cfg["model_cfg"])
    else:
        ref = open_clip.create_model("ViT-B-32")
    ref = perturb(ref, seed)
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, str(out / "open_clip_model.safetensors"))
    (out / "open_clip_config.json").write_text(json.dumps(cfg))
    write_clip_vocab(out, LAION_B32)
    return out, ref


def hf_siglip_repo(out: Path, layers: int | None = 2, seed: int = 0):
    """google/siglip-base-patch16-224's layout with the trained stand-in spiece.model -> (dir, model)."""
    cfg = copy.deepcopy(real(GOOGLE_SIGLIP))
    if layers:
        cfg["text_config"]["num_hidden_layers"] = layers
        cfg["vision_config"]["num_hidden_layers"] = layers
    torch.manual_seed(seed)
    ref = perturb(transformers.SiglipModel(transformers.SiglipConfig(**cfg)), seed)
    ref.save_pretrained(out)
    for name in ("preprocessor_config.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(CHECKPOINTS / GOOGLE_SIGLIP / name, out)
    train_t5_spm(out)
    return out, ref


def timm_siglip_repo(out: Path, text_layers: int | None = 2, seed: int = 0):
    """timm/ViT-B-16-SigLIP's layout: open_clip ``CustomTextCLIP`` state dict (full timm image tower: its depth
    comes from timm's registry) + the real open_clip_config.json + tokenizer.json -> (dir, model)."""
    cfg = real(TIMM_SIGLIP, "open_clip_config.json")
    model_cfg = {k: v for k, v in cfg["model_cfg"].items() if k != "custom_text"}
    if text_layers:
        model_cfg["text_cfg"]["layers"] = cfg["model_cfg"]["text_cfg"]["layers"] = text_layers
    torch.manual_seed(seed)
    ref = perturb(open_clip.model.CustomTextCLIP(**model_cfg), seed)
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, str(out / "open_clip_model.safetensors"))
    (out / "open_clip_config.json").write_text(json.dumps(cfg))
    spiece = train_t5_spm(out / "spm")
    write_t5_tokenizer_json(spiece, out)
    shutil.rmtree(out / "spm")
    return out, ref


# what the parity tests feed both sides, and their tolerances (max abs difference)
TOL = {torch.float64: 1e-10, torch.float32: 1e-4}
TEXTS = ["a photo of a cat", "A DOG, running!", "a cup of coffee", "an astronaut 🚀", ""]
LABELS = ["tabby cat", "coffee cup", "astronaut", "rocket"]
TEMPLATES = ["a photo of a {}.", "a blurry photo of the {}.", "art of a {}"]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Single-threaded torch in every module that imports this fixture (it is autouse)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def maxdiff(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| in float64, after checking the shapes agree."""
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a.double() - b.double()).abs().max().item()


def zero_shot_reference(encode_text, image_embeds: torch.Tensor, labels: list[str], templates: list[str],
                        scale: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """Zero-shot probabilities from a reference model's own towers, as the CLIP paper ensembles prompts: per
    label, the normalised mean of the normalised embeddings of the filled-in templates; softmax over labels
    (CLIP) or, with a ``bias``, a sigmoid per pair (SigLIP)."""
    import torch.nn.functional as F
    classes = torch.stack([F.normalize(F.normalize(encode_text([t.format(label) for t in templates]), dim=-1)
                                       .mean(0), dim=-1) for label in labels])
    logits = scale.exp() * F.normalize(image_embeds, dim=-1) @ classes.T
    return logits.softmax(dim=-1) if bias is None else torch.sigmoid(logits + bias)


def photos() -> list:
    """Three real photos as PIL images of different sizes: a cat (451x300), a cup (600x400), a person (512x512)."""
    import skimage.data
    from PIL import Image
    return [Image.fromarray(skimage.data.chelsea()), Image.fromarray(skimage.data.coffee()),
            Image.fromarray(skimage.data.astronaut())]
