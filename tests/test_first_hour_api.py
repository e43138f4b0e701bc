"""The first hour with the Python API (issue "The first hour"): images read the way photos are meant to be seen,
outputs written whole in the format their extension names, inversion that round-trips, and a cheap listing."""
from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import skimage.data
import torch
from PIL import Image
from safetensors.torch import load_file, safe_open

import zoo
from zoo.errors import ZooError
from zoo.outputs import atomic_path, save_tensors
from zoo.preprocess import load_images

from helpers.classifier_repos import timm_repo

VIT_REPO = "timm__vit_base_patch16_224.augreg2_in21k_ft_in1k"  # the fixture repo tests/test_classifier_cli.py uses

# -- images ---------------------------------------------------------------------------------------------------------


def rotated_jpeg(tmp_path, upright: Image.Image):
    """A JPEG whose pixels are stored turned 90 degrees, with EXIF orientation 6 ("turn 90 degrees clockwise
    to show"), as a phone writes a photo taken upright; and the upright image that file decodes to."""
    path = tmp_path / "phone.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6
    upright.transpose(Image.Transpose.ROTATE_90).save(path, quality=95, exif=exif.tobytes())
    with Image.open(path) as stored:  # the decoded pixels, turned back (lossless): what the viewer shows
        shown = stored.convert("RGB").transpose(Image.Transpose.ROTATE_270)
    return path, shown


def test_exif_orientation_is_applied_to_files_and_pil_images(tmp_path):
    path, shown = rotated_jpeg(tmp_path, Image.fromarray(skimage.data.chelsea()))
    assert Image.open(path).size == shown.size[::-1]  # stored sideways
    for given in (str(path), Image.open(path)):
        (img,) = load_images(given)
        assert img.size == shown.size
        assert np.array_equal(np.asarray(img), np.asarray(shown))


@pytest.fixture(scope="module")
def vit_repo(tmp_path_factory):
    path, _ = timm_repo(tmp_path_factory.mktemp("vit"), VIT_REPO, depth=2)
    return path


@pytest.fixture(scope="module")
def vit(vit_repo):
    return zoo.create("vit-b16", weights=vit_repo, device="cpu")


def test_classify_a_folder_classifies_its_images_sorted(tmp_path, vit_repo, capsys):
    from zoo.cli import main

    for name in ("b.png", "a.jpg"):
        Image.fromarray(skimage.data.chelsea()).save(tmp_path / name)
    (tmp_path / "notes.txt").write_text("not an image")
    threads = torch.get_num_threads()
    try:
        assert main(["classify", "vit-b16", "--weights", str(vit_repo), "--device", "cpu", "--top-k", "1",
                     "--threads", "1", str(tmp_path)]) == 0
    finally:
        torch.set_num_threads(threads)
    heads = [line for line in capsys.readouterr().out.splitlines() if not line.startswith(" ")]
    assert heads == [str(tmp_path / "a.jpg"), str(tmp_path / "b.png")]


def test_an_exif_rotated_photo_classifies_and_embeds_exactly_as_the_upright_one(tmp_path, vit):
    path, shown = rotated_jpeg(tmp_path, Image.fromarray(skimage.data.chelsea()))
    upright = tmp_path / "upright.png"
    shown.save(upright)
    with torch.inference_mode():
        rotated_x, upright_x = vit.preprocess([str(path)]), vit.preprocess([str(upright)])
        assert torch.equal(rotated_x, upright_x)
        assert torch.equal(vit.encode(rotated_x), vit.encode(upright_x))
    assert vit.classify([str(path)], top_k=3) == vit.classify([str(upright)], top_k=3)


def rgb(img: Image.Image) -> np.ndarray:
    (out,) = load_images(img)
    assert out.mode == "RGB" and out.size == img.size
    return np.asarray(out)


def test_palette_cmyk_greyscale_alpha_and_16_bit_images_become_rgb():
    base = Image.fromarray(skimage.data.coffee()).resize((64, 48))
    palette = base.convert("P", palette=Image.Palette.ADAPTIVE, colors=32)
    assert np.array_equal(rgb(palette), np.asarray(palette.convert("RGB")))  # timm's and transformers' convert
    cmyk = base.convert("CMYK")
    assert np.array_equal(rgb(cmyk), np.asarray(cmyk.convert("RGB")))
    la = Image.merge("LA", (base.convert("L"), Image.new("L", base.size, 255)))
    assert np.array_equal(rgb(la), np.repeat(np.asarray(base.convert("L"))[..., None], 3, axis=2))
    half = Image.merge("LA", (Image.new("L", base.size, 0), Image.new("L", base.size, 128)))  # black, half alpha
    assert np.abs(rgb(half).astype(int) - 127).max() <= 1  # composited onto white, as transformers does
    grey = np.asarray(base.convert("L")).astype(np.uint16)
    wide = Image.fromarray(grey * 257)  # the same picture in 16 bits: 0..65535
    assert wide.mode.startswith("I;16")
    assert np.array_equal(rgb(wide)[..., 0], grey)  # not clipped to white


def test_a_folder_given_as_an_image_says_it_is_a_folder(tmp_path):
    with pytest.raises(ZooError, match="is a folder, not an image file"):
        load_images(str(tmp_path))


# -- outputs --------------------------------------------------------------------------------------------------------


def test_tensors_are_written_in_the_format_the_extension_names(tmp_path):
    a, b = torch.randn(3, 4), torch.randn(2, 5)
    save_tensors({"a": a, "b": b}, tmp_path / "x.safetensors", metadata={"model": "m"})
    assert torch.equal(load_file(tmp_path / "x.safetensors")["b"], b)
    with safe_open(tmp_path / "x.safetensors", "pt") as f:
        assert f.metadata() == {"model": "m"}
    save_tensors({"a": a, "b": b}, tmp_path / "x.npz", metadata={"model": "m"})
    with np.load(tmp_path / "x.npz", allow_pickle=False) as z:
        assert np.array_equal(z["a"], a.numpy()) and json.loads(str(z["__metadata__"])) == {"model": "m"}
    save_tensors({"a": a}, tmp_path / "x.npy")
    assert np.array_equal(np.load(tmp_path / "x.npy", allow_pickle=False), a.numpy())
    with pytest.raises(ZooError, match="holds one array"):
        save_tensors({"a": a, "b": b}, tmp_path / "y.npy")
    with pytest.raises(ZooError, match="extension '.pt'"):
        save_tensors({"a": a}, tmp_path / "y.pt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.npy", "x.npz", "x.safetensors"]


def test_an_interrupted_write_leaves_neither_file_nor_temporary(tmp_path):
    (tmp_path / "keep.png").write_bytes(b"old")
    with pytest.raises(KeyboardInterrupt):
        with atomic_path(tmp_path / "keep.png") as tmp:
            tmp.write_bytes(b"half")
            raise KeyboardInterrupt
    assert [p.name for p in tmp_path.iterdir()] == ["keep.png"]
    assert (tmp_path / "keep.png").read_bytes() == b"old"


# -- inversion ------------------------------------------------------------------------------------------------------


def test_sample_undoes_invert_with_both_defaults():
    """ddpm-digits samples with DDIM-50 (no x0 clipping): invert undoes its steps exactly, so sampling from the
    inverted noise with the defaults returns the input (measured 1.0e-3 max abs on 8 samples; the previous
    default, the ODE, landed 0.99 away)."""
    with one_thread():
        pipe = zoo.create("ddpm-digits", device="cpu")
        assert (pipe.invert_sampler, pipe.default_sampler) == ("ddim", "ddim")
        x = pipe.sample(4, generator=torch.Generator().manual_seed(0), progress=False)
        noise = pipe.invert(x, progress=False)
        back = pipe.sample(4, noise=noise, progress=False)
        assert float((back - x).abs().max()) < 5e-3
        assert 0.8 < float(noise.std()) < 1.2  # a plausible draw from the prior, not a far-off preimage
        # without the exact undoing, the same DDIM run backwards in one pass is only first-order accurate
        one_pass = pipe.sample(4, noise=pipe.invert(x, sampler="dpmpp-2m", progress=False), sampler="dpmpp-2m",
                               progress=False)
        assert float((one_pass - x).abs().max()) > 10 * float((back - x).abs().max())


def test_the_ode_round_trips_through_itself():
    """ode-rk45 both ways: within 0.05 on [0, 1] pixels (measured 0.026 on 8 samples)."""
    with one_thread():
        pipe = zoo.create("ddpm-digits", device="cpu")
        x = pipe.sample(2, generator=torch.Generator().manual_seed(0), steps=20, progress=False)
        back = pipe.sample(2, noise=pipe.invert(x, sampler="ode-rk45", progress=False), sampler="ode-rk45",
                           progress=False)
        assert float((back - x).abs().max()) < 0.05


def test_a_clipped_default_falls_back_to_the_entrys_ode():
    pipe = zoo.create("ddim-cifar", pretrained=False)
    assert pipe.sampler_defaults["ddim"]["clip_denoised"] == 1.0 and pipe.invert_sampler == "ode-rk45"


@contextlib.contextmanager
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


# -- import cost ----------------------------------------------------------------------------------------------------


def test_listing_and_info_import_no_model_module_and_no_scipy():
    """``zoo.list_models()`` and ``zoo.info`` of every entry import no family module (only the plugins' own
    ``__init__``, where the entries are data) and none of scipy, timm or PIL: builders are ``zoo.registry.lazy``."""
    code = ("import sys, zoo\n"
            "for name in zoo.list_models(): zoo.info(name)\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('scipy', 'timm', 'PIL')\n"
            "             or (m.startswith('zoo.plugins.') and m.count('.') > 2 and '.samplers.' not in m)))")
    out = subprocess.run([sys.executable, "-X", "importtime", "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert out.stdout.strip() == "[]"
    # -X importtime, the measurement, agrees (it logs `import` statements, not importlib's entry-point loads)
    imported = [line.rsplit("|", 1)[-1].strip() for line in out.stderr.splitlines() if line.startswith("import time:")]
    assert "zoo.registry.entry" in imported  # it sees zoo's own imports
    assert not [m for m in imported if m.split(".")[0] in ("scipy", "timm")
                or (m.startswith("zoo.plugins.") and m.count(".") > 2 and ".samplers." not in m)]


def test_a_lazy_builder_imports_its_module_on_first_use():
    code = ("import sys, zoo\n"
            "zoo.list_models(); before = 'zoo.plugins.ddpm.model' in sys.modules\n"
            "zoo.create('ddpm-digits'); print(before, 'zoo.plugins.ddpm.model' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "HF_HUB_OFFLINE": "1"}).stdout
    assert out.split() == ["False", "True"]
