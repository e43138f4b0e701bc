"""`zoo classify`, `zoo zero-shot` and `zoo embed` end to end, in-process (zoo.cli.main), on real photos.

The models are the fixture repos the parity tests write (real configs, fewer blocks, random weights, real Hub
layout), passed with ``--weights DIR``; what the CLI prints or writes is compared with the Python API on the
same files, and errors in the input must be one line on stderr with exit status 2.
"""
from __future__ import annotations

import json
import re

import pytest
import skimage.data
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import zoo
from test_clip_fixtures import hf_clip_repo, hf_siglip_repo, needs_checkpoints, one_thread  # noqa: F401
from test_vit_swin_parity import _timm_fixture
from zoo.cli import build_parser, main

pytestmark = needs_checkpoints

VIT_REPO = "timm__vit_base_patch16_224.augreg2_in21k_ft_in1k"
LABELS = ["a cat", "a dog", "a cup"]
ROUNDING = 0.5e-4  # the CLI prints probabilities as percentages with two decimals


# -- fixtures -------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> tuple[str, str]:
    """Two real photos on disk, one PNG and one JPEG: a cat and a cup of coffee."""
    folder = tmp_path_factory.mktemp("photos")
    cat, coffee = folder / "cat.png", folder / "coffee.jpg"
    Image.fromarray(skimage.data.chelsea()).save(cat)
    Image.fromarray(skimage.data.coffee()).save(coffee, quality=90)
    return str(cat), str(coffee)


@pytest.fixture(scope="module")
def vit(tmp_path_factory):
    """(weights dir, zoo model) of a 2-block vit-b16 in timm's layout."""
    path, _ = _timm_fixture(tmp_path_factory.mktemp("vit"), VIT_REPO, depth=2)
    return str(path), zoo.create("vit-b16", weights=path, device="cpu")


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    """(weights dir, zoo model) of a 2-layer clip-vit-b32 in transformers' layout."""
    path, _ = hf_clip_repo(tmp_path_factory.mktemp("clip"))
    return str(path), zoo.create("clip-vit-b32", weights=path, device="cpu")


@pytest.fixture(scope="module")
def siglip(tmp_path_factory):
    """(weights dir, zoo model) of a 2-layer siglip-b16 in transformers' layout, its logit bias set to 0 (the
    builder's -9 would make every pair's sigmoid print as 0.00%)."""
    path, _ = hf_siglip_repo(tmp_path_factory.mktemp("siglip"))
    weights = path / "model.safetensors"
    state = load_file(str(weights))
    state["logit_bias"] = torch.zeros_like(state["logit_bias"])
    save_file(state, str(weights), metadata={"format": "pt"})
    return str(path), zoo.create("siglip-b16", weights=path, device="cpu")


# -- helpers --------------------------------------------------------------------------------------------------------


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def parse_rankings(out: str) -> dict[str, list[tuple[str, float]]]:
    """The CLI's per-image listing -> {image: [(label, probability), ...]} in the printed order."""
    result: dict[str, list[tuple[str, float]]] = {}
    for line in out.splitlines():
        m = re.fullmatch(r" +(\d+\.\d\d)%  (.+)", line)
        if m:
            result[image].append((m[2], float(m[1]) / 100))
        else:
            image = line
            result[image] = []
    return result


def assert_one_line_error(code: int, err: str, *needles: str) -> None:
    assert code == 2, err
    assert err.startswith("zoo: error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in err, (needle, err)


# -- classify -------------------------------------------------------------------------------------------------------


def test_classify_prints_top_k_imagenet_labels_per_image(vit, photos, capsys):
    path, model = vit
    code, out, err = run(capsys, "classify", "vit-b16", "--weights", path, *photos, "--top-k", "3", "--device", "cpu")
    assert code == 0, err
    printed = parse_rankings(out)
    assert list(printed) == list(photos)
    from timm.data import ImageNetInfo
    imagenet = set(ImageNetInfo("imagenet-1k").label_descriptions())
    for image, expected in zip(photos, model.classify(list(photos), top_k=3)):
        top = printed[image]
        assert len(top) == 3 and all(label in imagenet for label, _ in top), top
        probs = [p for _, p in top]
        assert probs == sorted(probs, reverse=True) and sum(probs) <= 1 + 3 * ROUNDING
        assert [label for label, _ in top] == [label for label, _ in expected]
        assert probs == pytest.approx([p for _, p in expected], abs=ROUNDING)


def test_classify_rejects_top_k_below_one(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["classify", "vit-b16", "cat.png", "--top-k", "0"])
    assert exit_.value.code == 2 and "--top-k: must be 1 or more" in capsys.readouterr().err


@pytest.mark.parametrize("argv,images,text", [
    (["classify", "vit-b16", "a.png", "--top-k", "3", "b.png"], ["a.png", "b.png"], None),
    (["embed", "m", "--weights", "d", "a.png", "--text", "t", "b.png", "--out", "e"], ["a.png", "b.png"], ["t"]),
    (["embed", "m", "--text", "t", "--text", "u", "--out", "e"], [], ["t", "u"]),
])
def test_images_may_sit_between_options(argv, images, text):
    """`zoo embed NAME --weights DIR cat.png --text T`: plain argparse would refuse cat.png after an option."""
    args = build_parser().parse_args(argv)
    assert args.images == images
    if text is not None:
        assert args.text == text


# -- zero-shot ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["clip", "siglip"])
def test_zero_shot_prints_label_probabilities(kind, request, photos, capsys):
    """CLIP: a softmax over the labels (sums to 1); SigLIP: a sigmoid per image-label pair (need not)."""
    path, model = request.getfixturevalue(kind)
    name = {"clip": "clip-vit-b32", "siglip": "siglip-b16"}[kind]
    cat = photos[0]
    code, out, err = run(capsys, "zero-shot", name, "--weights", path, cat, "--labels", " a cat,a dog ,a cup,",
                         "--device", "cpu")
    assert code == 0, err
    printed = parse_rankings(out)
    assert list(printed) == [cat]
    probs = dict(printed[cat])
    assert sorted(probs) == sorted(LABELS) and list(probs.values()) == sorted(probs.values(), reverse=True)
    with torch.inference_mode():
        logits = model(model.preprocess([cat]), LABELS)[0]
    expected = logits.softmax(-1) if kind == "clip" else torch.sigmoid(logits)
    assert [probs[label] for label in LABELS] == pytest.approx(expected.tolist(), abs=ROUNDING)
    if kind == "clip":
        assert sum(probs.values()) == pytest.approx(1, abs=3 * ROUNDING)
    else:
        assert abs(sum(probs.values()) - 1) > 0.05, probs  # a softmax would have summed to 1


def test_zero_shot_with_a_classifier_is_refused(vit, photos, capsys):
    code, out, err = run(capsys, "zero-shot", "vit-b16", "--weights", vit[0], photos[0], "--labels", "a cat,a dog",
                         "--device", "cpu")
    assert_one_line_error(code, err, "'vit-b16' cannot zero-shot", "classifier")
    assert out == ""


def test_zero_shot_without_labels_is_refused(photos, offline, capsys):
    code, _, err = run(capsys, "zero-shot", "clip-vit-b32", photos[0], "--labels", " , ")
    assert_one_line_error(code, err, "--labels", "no label")


# -- embed ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("normalize", [False, True])
def test_embed_clip_images_and_texts_match_the_api(clip, photos, tmp_path, capsys, normalize):
    path, model = clip
    out_file = tmp_path / "e.safetensors"
    texts = ["a cat", "a dog"]
    code, out, err = run(capsys, "embed", "clip-vit-b32", "--weights", path, photos[0], "--text", texts[0],
                         "--text", texts[1], "--out", out_file, "--device", "cpu",
                         *(["--normalize"] if normalize else []))
    assert code == 0, err
    assert str(out_file) in out
    saved = load_file(str(out_file))
    with torch.inference_mode():
        image = model.encode_image(model.preprocess([photos[0]]), normalize=normalize)
        text = model.encode_text(texts, normalize=normalize)
    assert set(saved) == {"image_embeds", "text_embeds"}
    assert saved["image_embeds"].shape == (1, 512) and saved["text_embeds"].shape == (2, 512)
    torch.testing.assert_close(saved["image_embeds"], image, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(saved["text_embeds"], text, rtol=1e-5, atol=1e-5)
    norms = torch.cat([saved["image_embeds"], saved["text_embeds"]]).norm(dim=-1)
    assert torch.allclose(norms, torch.ones(3), atol=1e-5) == normalize, norms
    with safe_open(str(out_file), "pt") as f:
        meta = f.metadata()
    assert meta["model"] == "clip-vit-b32"
    assert json.loads(meta["images"]) == [photos[0]] and json.loads(meta["texts"]) == texts
    assert json.loads(meta["normalized"]) is normalize


@pytest.mark.parametrize("normalize", [False, True])
def test_embed_classifier_writes_pooled_features(vit, photos, tmp_path, capsys, normalize):
    path, model = vit
    out_file = tmp_path / "f.safetensors"
    code, _, err = run(capsys, "embed", "vit-b16", "--weights", path, *photos, "--out", out_file, "--device", "cpu",
                       *(["--normalize"] if normalize else []))
    assert code == 0, err
    saved = load_file(str(out_file))
    with torch.inference_mode():
        features = model.encode(model.preprocess(list(photos)))
    expected = F.normalize(features, dim=-1) if normalize else features
    assert set(saved) == {"image_features"} and saved["image_features"].shape == (2, 768)
    torch.testing.assert_close(saved["image_features"], expected, rtol=1e-5, atol=1e-5)
    with safe_open(str(out_file), "pt") as f:
        assert f.metadata()["model"] == "vit-b16"


def test_embed_in_bfloat16_writes_float32_close_to_float32(vit, photos, tmp_path, capsys):
    path, model = vit
    out_file = tmp_path / "bf16.safetensors"
    code, _, err = run(capsys, "embed", "vit-b16", "--weights", path, photos[0], "--out", out_file, "--device", "cpu",
                       "--dtype", "bfloat16")
    assert code == 0, err
    saved = load_file(str(out_file))["image_features"]
    with torch.inference_mode():
        full = model.encode(model.preprocess([photos[0]]))
    assert saved.dtype == torch.float32 and not torch.equal(saved, full)  # computed in bfloat16, stored as float32
    assert F.cosine_similarity(saved, full).min() > 0.99


def test_an_unknown_dtype_is_one_line(photos, offline, capsys):
    code, _, err = run(capsys, "classify", "vit-b16", photos[0], "--dtype", "int7")
    assert_one_line_error(code, err, "unknown dtype 'int7'")


def test_embed_text_with_a_classifier_is_refused(vit, tmp_path, capsys):
    code, _, err = run(capsys, "embed", "vit-b16", "--weights", vit[0], "--text", "a cat", "--out",
                       tmp_path / "x.safetensors", "--device", "cpu")
    assert_one_line_error(code, err, "'vit-b16' cannot encode-text")
    assert not (tmp_path / "x.safetensors").exists()


def test_embed_needs_images_or_text(tmp_path, offline, capsys):
    code, _, err = run(capsys, "embed", "clip-vit-b32", "--out", tmp_path / "x.safetensors")
    assert_one_line_error(code, err, "at least one IMAGE or --text")
    assert not (tmp_path / "x.safetensors").exists()


def test_embed_into_a_missing_folder_is_refused_before_loading(photos, tmp_path, offline, capsys):
    code, _, err = run(capsys, "embed", "clip-vit-b32", photos[0], "--out", tmp_path / "nope" / "x.safetensors")
    assert_one_line_error(code, err, str(tmp_path / "nope"), "does not exist")


# -- bad images -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("command", [
    ["classify", "vit-b16"],
    ["zero-shot", "clip-vit-b32", "--labels", "a,b"],
    ["embed", "clip-vit-b32", "--out", "x.safetensors"],
])
def test_a_missing_image_is_one_line_naming_it(command, photos, tmp_path, offline, capsys):
    """Checked before the model is loaded (a typo must not cost a download): without --weights and offline,
    loading first would fail with a different error."""
    missing = tmp_path / "no-such-cat.png"
    code, out, err = run(capsys, *command, photos[0], missing)
    assert_one_line_error(code, err, "image file not found", str(missing))
    assert out == ""


def test_a_file_that_is_no_image_is_one_line_naming_it(tmp_path, offline, capsys):
    text = tmp_path / "notes.png"
    text.write_text("not a picture")
    code, _, err = run(capsys, "classify", "vit-b16", text)
    assert_one_line_error(code, err, str(text), "not an image file")
