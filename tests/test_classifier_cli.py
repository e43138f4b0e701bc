"""`zoo classify` (the classifiers plugin's command) end to end, in-process (zoo.cli.main), on real photos.

The model is the fixture repo the parity tests write (the real config, fewer blocks, random weights, real Hub
layout), passed with ``--weights DIR``; what the CLI prints is compared with the Python API on the same files,
and errors in the input must be one line on stderr with exit status 2. (`zoo zero-shot`, the clip plugin's,
and the core's `zoo embed` are tested in test_clip_cli.py and test_embed_distributed.py.)
"""
from __future__ import annotations

import re

import pytest
import skimage.data
from PIL import Image

import zoo
from helpers.classifier_repos import timm_repo
from zoo.cli import build_parser, main

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
    path, _ = timm_repo(tmp_path_factory.mktemp("vit"), VIT_REPO, depth=2)
    return str(path), zoo.create("vit-b16", weights=path, device="cpu")


# -- helpers --------------------------------------------------------------------------------------------------------


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def parse_rankings(out: str) -> dict[str, list[tuple[str, float]]]:
    """The CLI's per-image listing -> {image: [(label, probability), ...]} in the printed order."""
    result: dict[str, list[tuple[str, float]]] = {}
    image = ""
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
])
def test_images_may_sit_between_options(argv, images, text):
    """`zoo classify NAME a.png --top-k 3 b.png`: plain argparse would refuse b.png after an option."""
    args = build_parser().parse_args(argv)
    assert args.images == images
    if text is not None:
        assert args.text == text


def test_an_unknown_dtype_is_one_line(photos, offline, capsys):
    code, _, err = run(capsys, "classify", "vit-b16", photos[0], "--dtype", "int7")
    assert_one_line_error(code, err, "unknown dtype 'int7'")


# -- bad images -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("command", [["classify", "vit-b16"]])
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
