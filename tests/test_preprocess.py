"""zoo.preprocess: every input kind, the clear errors, and parity with the reference pipelines on real photos.

References: timm's ``create_transform(**resolve_data_config(pretrained_cfg))`` for timm configs, transformers'
PIL-backend image processors (``ViTImageProcessorPil``, ``CLIPImageProcessorPil``, ``SiglipImageProcessorPil``:
the pipeline these checkpoints were evaluated with) for ``preprocessor_config.json``. Both resize PIL images with
PIL, as zoo does, so the results agree to float rounding (observed max abs diff <= 7.2e-7 after normalisation).
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import skimage.data
import torch
from PIL import Image

from zoo.preprocess import ImagePreprocess, load_images

from checkpoints import CHECKPOINTS  # noqa: E402
needs_configs = pytest.mark.skipif(not CHECKPOINTS.is_dir(), reason=f"{CHECKPOINTS} not found")
PHOTOS = {name: getattr(skimage.data, name)() for name in ("chelsea", "coffee", "astronaut")}  # (H, W, 3) uint8
TIMM = {"input_size": [3, 224, 224], "interpolation": "bicubic", "crop_pct": 0.9, "crop_mode": "center",
        "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}
TOL = 1e-5  # float rounding of the normalisation; a one-pixel or filter mistake gives > 1e-2


def _pil(name: str) -> Image.Image:
    return Image.fromarray(PHOTOS[name])


def _config(repo: str, file: str) -> dict:
    return json.loads((CHECKPOINTS / repo / file).read_text())


# -- parity with the references ---------------------------------------------------------------------------------


@needs_configs
@pytest.mark.parametrize("repo", ["timm__vit_base_patch16_224.augreg2_in21k_ft_in1k",
                                  "timm__swin_tiny_patch4_window7_224.ms_in1k"])
@pytest.mark.parametrize("photo", sorted(PHOTOS))
def test_timm_config_matches_timm_transform(repo, photo):
    from timm.data import create_transform, resolve_data_config

    cfg = _config(repo, "config.json")["pretrained_cfg"]
    ours = ImagePreprocess.from_timm_config(cfg)
    ref = create_transform(**resolve_data_config({}, pretrained_cfg=cfg))
    assert ours.resize == 248 and ours.crop == (224, 224) and ours.interpolation == "bicubic"
    assert (ours(_pil(photo))[0] - ref(_pil(photo))).abs().max() < TOL


def _hf_reference(repo: str):
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil
    from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil
    from transformers.models.vit.image_processing_pil_vit import ViTImageProcessorPil

    cls = CLIPImageProcessorPil if "clip" in repo else SiglipImageProcessorPil if "siglip" in repo \
        else ViTImageProcessorPil
    return cls(**_config(repo, "preprocessor_config.json"))


def _defaults(repo: str):
    """What the repo's processor class assumes for keys its config leaves out: the family says (zoo's core knows
    no family by name); ViT's and Swin's processors use the plain defaults."""
    from zoo.plugins.clip.build import CLIP_PROCESSOR, SIGLIP_PROCESSOR

    return CLIP_PROCESSOR if "clip" in repo else SIGLIP_PROCESSOR if "siglip" in repo else None


@needs_configs
@pytest.mark.parametrize("repo", ["google__vit-base-patch16-224", "microsoft__swin-tiny-patch4-window7-224",
                                  "openai__clip-vit-base-patch32", "google__siglip-base-patch16-224"])
@pytest.mark.parametrize("photo", sorted(PHOTOS))
def test_hf_config_matches_transformers_processor(repo, photo):
    ours = ImagePreprocess.from_hf_preprocessor(_config(repo, "preprocessor_config.json"), _defaults(repo))
    ref = torch.from_numpy(np.asarray(_hf_reference(repo)(_pil(photo), return_tensors="np")["pixel_values"][0]))
    assert (ours(_pil(photo))[0] - ref).abs().max() < TOL


@needs_configs
def test_hf_bare_int_size_means_square_for_vit_and_shorter_edge_for_clip():
    vit = ImagePreprocess.from_hf_preprocessor(_config("google__vit-base-patch16-224", "preprocessor_config.json"))
    clip = ImagePreprocess.from_hf_preprocessor(_config("openai__clip-vit-base-patch32", "preprocessor_config.json"),
                                                _defaults("openai__clip-vit-base-patch32"))
    assert (vit.resize, vit.crop, vit.interpolation) == ((224, 224), None, "bilinear")  # ViT's default resample
    assert (clip.resize, clip.crop, clip.interpolation) == (224, (224, 224), "bicubic")
    assert clip.crop_rounding == "floor" and vit.mean == (0.5, 0.5, 0.5)


def test_crop_offset_rounding_follows_the_reference():
    """An odd margin: torchvision/timm round the offset (27 / 2 -> 14), transformers floor it (-> 13)."""
    img = torch.arange(251, dtype=torch.uint8).repeat(3, 224, 1)   # column index as the pixel value
    kw = dict(size=(224, 224), resize=None, crop=(224, 224), interpolation="bicubic", mean=(0, 0, 0), std=(1, 1, 1),
              rescale=1.0)
    assert ImagePreprocess(**kw, crop_rounding="round")(img)[0, 0, 0, 0] == 14
    assert ImagePreprocess(**kw, crop_rounding="floor")(img)[0, 0, 0, 0] == 13


# -- input kinds ---------------------------------------------------------------------------------------------


@pytest.fixture
def prep() -> ImagePreprocess:
    return ImagePreprocess.from_timm_config(TIMM)


def test_uint8_tensors_and_arrays_take_the_pil_path_exactly(prep):
    a = PHOTOS["chelsea"]
    want = prep(_pil("chelsea"))
    chw = torch.from_numpy(a).permute(2, 0, 1)
    for given in (a, torch.from_numpy(a), chw, chw[None], [chw], [a, chw]):
        got = prep(given)
        assert got.shape[1:] == (3, 224, 224) and (got - want).abs().max() == 0, type(given)


def test_float_tensors_match_torchvision_tensor_resize(prep):
    """Float input cannot go through PIL losslessly; it follows torchvision's tensor path exactly."""
    import torchvision.transforms.functional as tvF

    x = torch.from_numpy(PHOTOS["coffee"]).permute(2, 0, 1) / 255.0
    ref = tvF.resize(x, 248, interpolation=tvF.InterpolationMode.BICUBIC, antialias=True)
    ref = tvF.normalize(tvF.center_crop(ref, 224), [0.5] * 3, [0.5] * 3)
    assert (prep(x)[0] - ref).abs().max() < TOL
    assert (prep(x[None]) - prep(x)).abs().max() == 0
    # and it stays close to the PIL path (PIL rounds to uint8 between its passes)
    assert (prep(x) - prep(_pil("coffee"))).abs().max() < 0.25


def test_paths_str_and_pathlib(prep, tmp_path):
    path = tmp_path / "cat.png"
    _pil("chelsea").save(path)
    want = prep(_pil("chelsea"))
    assert (prep(str(path)) - want).abs().max() == 0
    assert prep([path, str(path)]).shape == (2, 3, 224, 224)


def test_greyscale_palette_and_rgba_become_rgb():
    grey = Image.fromarray(skimage.data.camera())
    assert grey.mode == "L" and load_images(grey)[0].mode == "RGB"
    assert load_images(_pil("chelsea").convert("P"))[0].mode == "RGB"
    rgba = np.zeros((4, 4, 4), dtype=np.uint8)
    rgba[..., 0] = 255                      # red, but fully transparent ...
    rgba[0, 0, 3] = 255                     # ... except one opaque pixel
    rgb = np.asarray(load_images(Image.fromarray(rgba, "RGBA"))[0])
    assert rgb[1, 1].tolist() == [255, 255, 255] and rgb[0, 0].tolist() == [255, 0, 0]  # composited onto white


def test_batch_of_mixed_sizes_comes_out_stacked(prep):
    out = prep([_pil("chelsea"), PHOTOS["astronaut"], torch.rand(3, 300, 500)])
    assert out.shape == (3, 3, 224, 224) and out.dtype == torch.float32 and torch.isfinite(out).all()


def test_squash_resize_without_crop():
    squash = ImagePreprocess(size=(224, 224), resize=(224, 224), crop=None, interpolation="bilinear",
                             mean=(0.5,) * 3, std=(0.5,) * 3)
    ref = np.asarray(_pil("coffee").resize((224, 224), Image.BILINEAR), dtype=np.float32) / 255
    got = squash(_pil("coffee"))[0].permute(1, 2, 0).numpy() * 0.5 + 0.5
    assert np.abs(got - ref).max() < TOL


# -- clear errors ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bad,match", [
    (torch.rand(4, 32, 32), r"3 channels.*RGBA: drop alpha with x\[:3\]"),
    (torch.rand(1, 32, 32), r"3 channels.*greyscale: repeat"),
    (torch.rand(2, 1, 32, 32), r"3 channels"),
    (torch.rand(32, 32), r"greyscale\? repeat it to 3 channels"),
    (torch.rand(3, 32, 32) * 255, r"\[0, 1\].*divide by 255"),
    (torch.randn(3, 32, 32), r"\[0, 1\].*already normalised"),
    (torch.full((3, 8, 8), float("nan")), r"NaN"),
    (torch.ones(3, 8, 8, dtype=torch.int32), r"uint8 \(0\.\.255\) or float"),
    (torch.rand(1, 2, 3, 8, 8), r"must be \(3, H, W\)"),
    ([], r"no images"),
])
def test_bad_tensors_raise_value_errors_that_name_the_fix(prep, bad, match):
    with pytest.raises(ValueError, match=match):
        prep(bad)


def test_wrong_types_and_missing_files(prep, tmp_path):
    with pytest.raises(TypeError, match="cannot read images from int"):
        prep(3)
    with pytest.raises(FileNotFoundError, match="nothere.png"):
        prep(tmp_path / "nothere.png")


def test_inconsistent_preprocess_is_refused():
    with pytest.raises(ValueError, match="disagrees"):
        ImagePreprocess(size=(224, 224), resize=256, crop=(256, 256), interpolation="bicubic",
                        mean=(0,) * 3, std=(1,) * 3)
    with pytest.raises(ValueError, match="interpolation"):
        ImagePreprocess(size=(8, 8), resize=(8, 8), crop=None, interpolation="lanczos", mean=(0,) * 3, std=(1,) * 3)


def test_unsupported_reference_options_say_so():
    with pytest.raises(NotImplementedError, match="lanczos"):
        ImagePreprocess.from_hf_preprocessor({"resample": 1, "size": 224})
    with pytest.raises(NotImplementedError, match="border"):
        ImagePreprocess.from_timm_config({**TIMM, "crop_mode": "border"})
