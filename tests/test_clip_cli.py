"""`zoo zero-shot` (the clip plugin's command) and `zoo embed` (a core command: zoo.embedding), end to end,
in-process (zoo.cli.main), on real photos.

The CLIP and SigLIP models are the fixture repos the parity tests write (real configs, 2 blocks, random weights,
real Hub layout), passed with ``--weights DIR``; what the CLI prints or writes is compared with the Python API on
the same files. ``embed`` works for any Encoder: a random-weight vit-ti16 stands in for the classifier family
(handed to the commands in place of the model ``--weights`` would load; the command does not read its weights).
Errors in the input must be one line on stderr with exit status 2, and come before any model is loaded.
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
from helpers.clip_repos import hf_clip_repo, hf_siglip_repo, needs_checkpoints, one_thread  # noqa: F401
from zoo.cli import build_parser, main
from zoo import embedding
from zoo.plugins.clip import commands

pytestmark = needs_checkpoints

LABELS = ["a cat", "a dog", "a cup"]
ROUNDING = 0.5e-4  # the CLI prints probabilities as percentages with two decimals
CLASSIFIER = "vit-ti16"
needs_classifier = pytest.mark.skipif(CLASSIFIER not in zoo.list_models(),
                                      reason=f"{CLASSIFIER} is not registered (the classifier plugin is not loaded)")


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
def clip(tmp_path_factory):
    """(weights dir, zoo model) of a 2-layer clip-vit-b32 in transformers' layout."""
    path, _ = hf_clip_repo(tmp_path_factory.mktemp("clip"))
    return str(path), zoo.create("clip-vit-b32", weights=path, device="cpu")


@pytest.fixture(scope="module")
def siglip(tmp_path_factory):
    """(weights dir, zoo model) of a 2-layer siglip-b16 in transformers' layout, its logit bias set to 0 (the
    fixture's -9 would make every pair's sigmoid print as 0.00%)."""
    path, _ = hf_siglip_repo(tmp_path_factory.mktemp("siglip"))
    weights = path / "model.safetensors"
    state = load_file(str(weights))
    state["logit_bias"] = torch.zeros_like(state["logit_bias"])
    save_file(state, str(weights), metadata={"format": "pt"})
    return str(path), zoo.create("siglip-b16", weights=path, device="cpu")


@pytest.fixture
def classifier(monkeypatch: pytest.MonkeyPatch):
    """A random-weight vit-ti16, which the commands get in place of the one their arguments name."""
    torch.manual_seed(0)
    model = zoo.create(CLASSIFIER, pretrained=False, device="cpu")
    monkeypatch.setattr(commands, "create_from_args", lambda args, **kwargs: model)
    monkeypatch.setattr(embedding, "create_from_args", lambda args, **kwargs: model)
    return model


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


# -- where the commands come from ------------------------------------------------------------------------------------


def test_zero_shot_is_the_clip_plugins_and_embed_is_core() -> None:
    from zoo.cli import CORE_COMMANDS

    reg = zoo.get_registry()
    assert reg.command_plugins["zero-shot"] == "clip" and "embed" not in reg.commands
    assert "embed" in {c.name for c in CORE_COMMANDS}


@pytest.mark.parametrize("argv,images,text", [
    (["embed", "m", "--weights", "d", "a.png", "--text", "t", "b.png", "--out", "e"], ["a.png", "b.png"], ["t"]),
    (["embed", "m", "--text", "t", "--text", "u", "--out", "e"], [], ["t", "u"]),
    (["zero-shot", "m", "a.png", "--labels", "x,y", "b.png"], ["a.png", "b.png"], None),
])
def test_images_may_sit_between_options(argv, images, text) -> None:
    """`zoo embed NAME --weights DIR cat.png --text T`: plain argparse would refuse cat.png after an option."""
    args = build_parser().parse_args(argv)
    assert args.images == images
    if text is not None:
        assert args.text == text


# -- zero-shot ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["clip", "siglip"])
def test_zero_shot_prints_label_probabilities(kind, request, photos, capsys) -> None:
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


@needs_classifier
def test_zero_shot_with_a_classifier_is_refused(classifier, photos, capsys) -> None:
    code, out, err = run(capsys, "zero-shot", CLASSIFIER, photos[0], "--labels", "a cat,a dog")
    assert_one_line_error(code, err, f"{CLASSIFIER!r} cannot zero-shot", "classifier")
    assert out == ""


def test_zero_shot_without_labels_is_refused(photos, offline, capsys) -> None:
    code, _, err = run(capsys, "zero-shot", "clip-vit-b32", photos[0], "--labels", " , ")
    assert_one_line_error(code, err, "--labels", "no label")


# -- embed ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("normalize", [False, True])
def test_embed_clip_images_and_texts_match_the_api(clip, photos, tmp_path, capsys, normalize) -> None:
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


def test_embed_siglip_texts_alone(siglip, tmp_path, capsys) -> None:
    path, model = siglip
    out_file = tmp_path / "t.safetensors"
    code, out, err = run(capsys, "embed", "siglip-b16", "--weights", path, "--text", "a cat", "--out", out_file,
                         "--device", "cpu")
    assert code == 0, err
    assert out == f"wrote {out_file}: text_embeds (1, 768)\n"
    with torch.inference_mode():
        torch.testing.assert_close(load_file(str(out_file))["text_embeds"], model.encode_text(["a cat"]))


def test_embed_in_bfloat16_writes_float32_close_to_float32(clip, photos, tmp_path, capsys) -> None:
    path, model = clip
    out_file = tmp_path / "bf16.safetensors"
    code, _, err = run(capsys, "embed", "clip-vit-b32", "--weights", path, photos[0], "--out", out_file,
                       "--device", "cpu", "--dtype", "bfloat16")
    assert code == 0, err
    saved = load_file(str(out_file))["image_embeds"]
    with torch.inference_mode():
        full = model.encode_image(model.preprocess([photos[0]]))
    assert saved.dtype == torch.float32 and not torch.equal(saved, full)  # computed in bfloat16, stored as float32
    assert F.cosine_similarity(saved, full).min() > 0.99


@needs_classifier
@pytest.mark.parametrize("normalize", [False, True])
def test_embed_classifier_writes_pooled_features(classifier, photos, tmp_path, capsys, normalize) -> None:
    """Any Encoder: a classifier has no encode_image, so its pooled features (``encode``) are written."""
    out_file = tmp_path / "f.safetensors"
    code, _, err = run(capsys, "embed", CLASSIFIER, *photos, "--out", out_file, *(["--normalize"] if normalize else []))
    assert code == 0, err
    saved = load_file(str(out_file))
    with torch.inference_mode():
        features = classifier.encode(classifier.preprocess(list(photos)))
    expected = F.normalize(features, dim=-1) if normalize else features
    assert set(saved) == {"image_features"} and saved["image_features"].shape == (2, 192)
    torch.testing.assert_close(saved["image_features"], expected, rtol=1e-5, atol=1e-5)
    with safe_open(str(out_file), "pt") as f:
        assert f.metadata()["model"] == CLASSIFIER


@needs_classifier
def test_embed_text_with_a_classifier_is_refused_before_loading(tmp_path, offline, capsys) -> None:
    """The entry's interface says it: offline and without weights, loading first would fail otherwise."""
    code, _, err = run(capsys, "embed", CLASSIFIER, "--text", "a cat", "--out", tmp_path / "x.safetensors")
    assert_one_line_error(code, err, f"{CLASSIFIER!r} cannot encode-text: it is a classifier model")
    assert not (tmp_path / "x.safetensors").exists()


def test_embed_images_with_a_pipeline_is_refused_before_loading(photos, tmp_path, offline, capsys) -> None:
    code, _, err = run(capsys, "embed", "ddpm-cifar", photos[0], "--out", tmp_path / "x.safetensors")
    assert_one_line_error(code, err, "'ddpm-cifar' cannot encode: it is a pipeline model")


def test_embed_needs_images_or_text(tmp_path, offline, capsys) -> None:
    code, _, err = run(capsys, "embed", "clip-vit-b32", "--out", tmp_path / "x.safetensors")
    assert_one_line_error(code, err, "at least one IMAGE or --text")
    assert not (tmp_path / "x.safetensors").exists()


def test_embed_into_a_missing_folder_is_refused_before_loading(photos, tmp_path, offline, capsys) -> None:
    code, _, err = run(capsys, "embed", "clip-vit-b32", photos[0], "--out", tmp_path / "nope" / "x.safetensors")
    assert_one_line_error(code, err, str(tmp_path / "nope"), "does not exist")


# -- bad images -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("command", [
    ["zero-shot", "clip-vit-b32", "--labels", "a,b"],
    ["embed", "clip-vit-b32", "--out", "x.safetensors"],
])
def test_a_missing_image_is_one_line_naming_it(command, photos, tmp_path, offline, capsys) -> None:
    """Checked before the model is loaded (a typo must not cost a download): without --weights and offline,
    loading first would fail with a different error."""
    missing = tmp_path / "no-such-cat.png"
    code, out, err = run(capsys, *command, photos[0], missing)
    assert_one_line_error(code, err, "image file not found", str(missing))
    assert out == ""
