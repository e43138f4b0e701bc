"""`zoo detect NAME IMAGE... [--threshold T] [-o boxes.png]` (the detr plugin's command), in-process, on real
photos: one line per detection as the Python API finds them, the boxes drawn on the image, errors as one line.

The model is the test fixture repo (the real R50 config, a shorter transformer, random weights) with a smaller
resize in its preprocessor config, passed with ``--weights DIR``.
"""
from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pytest
import skimage.data
import torch
from PIL import Image

import zoo
from helpers.detr_repos import one_thread, shared_repo
from zoo.cli import main

LINE = re.compile(r"(.+): (.+) (\d\.\d{3}) \[(-?[\d.]+), (-?[\d.]+), (-?[\d.]+), (-?[\d.]+)\]")


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    with one_thread():
        yield


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    folder = shutil.copytree(shared_repo()[0], tmp_path_factory.mktemp("detr") / "r50-small")
    prep = json.loads((folder / "preprocessor_config.json").read_text())
    prep["size"] = {"shortest_edge": 160, "longest_edge": 266}
    (folder / "preprocessor_config.json").write_text(json.dumps(prep))
    return str(folder)


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> list[str]:
    folder = tmp_path_factory.mktemp("photos")
    cat, coffee = folder / "cat.png", folder / "coffee.jpg"
    Image.fromarray(skimage.data.chelsea()).save(cat)
    Image.fromarray(skimage.data.coffee()).save(coffee, quality=90)
    return [str(cat), str(coffee)]


def run(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_detect_prints_the_apis_detections_and_draws_them(repo, photos, tmp_path, capsys):
    det = zoo.create("detr-r50", weights=repo, device="cpu")
    scores = torch.cat([d.scores for d in det.detect(photos, threshold=0.0)])
    threshold = round(float(scores.quantile(0.97)), 3)  # a few of the random model's queries per photo
    expected = det.detect(photos, threshold=threshold)
    out_png = tmp_path / "boxes.png"
    code, out, err = run(capsys, "detect", "detr-r50", "--weights", repo, *photos, "--threshold", threshold,
                         "-o", out_png, "--device", "cpu")
    assert code == 0, err
    lines = [LINE.fullmatch(line) for line in out.splitlines() if not line.startswith("wrote ")]
    assert all(lines), out
    for image, dets in zip(photos, expected):
        mine = [m for m in lines if m[1] == image]
        assert len(mine) == len(dets.scores) > 0
        for m, box, score, name in zip(mine, dets.boxes.tolist(), dets.scores.tolist(), dets.names):
            assert m[2] == name and abs(float(m[3]) - score) <= 5e-4
            assert [float(v) for v in m.groups()[3:]] == pytest.approx(box, abs=0.051)
    for i, photo in enumerate(photos):  # several images: boxes-0.png, boxes-1.png, each the photo's own size
        drawn = tmp_path / f"boxes-{i}.png"
        assert f"wrote {drawn}" in out
        with Image.open(drawn) as img, Image.open(photo) as original:
            assert img.size == original.size
            changed = np.any(np.asarray(img.convert("RGB")) != np.asarray(original.convert("RGB")), axis=2)
        assert changed.any() and changed.mean() < 0.5  # outlines and labels, not a repainted image


def test_one_image_writes_the_path_given(repo, photos, tmp_path, capsys):
    out_png = tmp_path / "one.png"
    code, out, err = run(capsys, "detect", "detr-r50", "--weights", repo, photos[0], "--threshold", "1", "-o",
                         out_png, "--device", "cpu")
    assert code == 0, err
    assert f"{photos[0]}: nothing at threshold 1.0" in out and out_png.is_file()


def test_errors_are_one_line(photos, tmp_path, capsys):
    code, _, err = run(capsys, "detect", "detr-r50", str(tmp_path / "missing.jpg"))
    assert code == 2 and err.count("\n") == 1 and "image file not found" in err
    code, _, err = run(capsys, "detect", "vit-b16", photos[0])
    assert code == 2 and "cannot detect" in err and "classifier" in err
    (tmp_path / "a-file").write_text("")
    code, _, err = run(capsys, "detect", "detr-r50", photos[0], "-o", tmp_path / "a-file" / "x.png")
    assert code == 2 and "cannot be created" in err  # refused before the model loads
    code, _, err = run(capsys, "detect", "detr-r50", photos[0], "-o", tmp_path / "x.unknown")
    assert code == 2 and "names no format" in err
    with pytest.raises(SystemExit):
        main(["detect", "detr-r50", photos[0], "--threshold", "1.5"])
    assert "must be in [0, 1]" in capsys.readouterr().err
