"""Image preprocessing that reproduces each checkpoint's own reference pipeline.

Two references exist for the checkpoints zoo serves, and they disagree in small ways that matter numerically:

* timm (``pretrained_cfg`` in ``config.json``): torchvision ``Resize(floor(size / crop_pct))`` on the shorter
  edge, ``CenterCrop(size)`` whose offset is ``round((h - crop) / 2)``, ``ToTensor``, ``Normalize``;
* transformers (``preprocessor_config.json``): a resize to ``size`` (exact ``height x width``, or the shorter
  edge for CLIP-style processors), an optional centre crop whose offset is ``floor((h - crop) / 2)``,
  rescale by ``rescale_factor`` and normalise.

Both resize PIL images with PIL itself, so for PIL input (and uint8 tensors, which convert to PIL without loss)
:class:`ImagePreprocess` does the same and matches the reference to float rounding. Float tensors cannot go
through PIL without quantising them; they are resized with ``F.interpolate(antialias=True)``, which is exactly
torchvision's tensor path. It differs from PIL's uint8 path by up to ~0.05 on [0, 1] pixels at sharp edges,
because PIL rounds and clips to uint8 between its horizontal and vertical passes (bicubic overshoot is cut).

transformers 5's default image processors (torchvision backend) convert PIL input to tensors and resize with
torch; zoo follows their PIL backend (``*ImageProcessorPil``), the pipeline these checkpoints were published and
evaluated with. On the scikit-image photos the two backends differ by up to 0.0175 after normalisation.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps
from torch import Tensor
from zoo.registry.errors import ArgumentTypeError, InvalidInputError, MissingFileError, UnsupportedError

ImageLike = Any
"""A path, a PIL image, a uint8 / float tensor or numpy array ``(3, H, W)``, ``(N, 3, H, W)`` or ``(H, W, 3)``."""

_PIL_FILTERS = {"nearest": Image.NEAREST, "bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC}
_TORCH_MODES = {"nearest": "nearest-exact", "bilinear": "bilinear", "bicubic": "bicubic"}
# transformers stores the PIL resampling filter as its integer code.
_HF_RESAMPLE = {0: "nearest", 2: "bilinear", 3: "bicubic"}
_HF_RESAMPLE_NAMES = {1: "lanczos", 4: "box", 5: "hamming"}


@dataclass(frozen=True)
class ProcessorDefaults:
    """What a transformers image processor class assumes for keys its ``preprocessor_config.json`` leaves out.

    The defaults here are those of a plain square-resize processor (bilinear to 224x224, no crop, mean and std
    0.5); a family whose processor class says otherwise passes its own. ``default_to_square``: whether a bare
    int ``size`` means a square (True) or the shorter edge (False), transformers' attribute of the same name.
    """

    resample: int = 2
    size: Any = field(default_factory=lambda: {"height": 224, "width": 224})
    do_center_crop: bool = False
    crop_size: Any = 224
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    default_to_square: bool = True


@dataclass(frozen=True)
class ImagePreprocess:
    """Images -> ``(N, 3, H, W)`` float32 batch, resized, centre-cropped and normalised as the checkpoint expects.

    ``resize`` is either an int (resize the shorter edge to it, keeping the aspect ratio: the longer edge becomes
    ``int(resize * long / short)``, as torchvision and transformers both compute it) or an exact ``(H, W)``
    ("squash"). ``crop`` is a centre crop ``(H, W)`` taken after the resize. ``crop_rounding`` says how the
    crop's offset is rounded when the margin is odd: ``"round"`` (torchvision / timm) or ``"floor"``
    (transformers); the two pick crops one pixel apart.
    """

    size: tuple[int, int]
    resize: int | tuple[int, int] | None
    crop: tuple[int, int] | None
    interpolation: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    rescale: float = 1 / 255
    crop_rounding: str = "round"

    def __post_init__(self) -> None:
        if self.interpolation not in _PIL_FILTERS:
            raise InvalidInputError(f"interpolation must be one of {sorted(_PIL_FILTERS)}, got {self.interpolation!r}")
        if self.crop_rounding not in ("round", "floor"):
            raise InvalidInputError(f"crop_rounding must be 'round' or 'floor', got {self.crop_rounding!r}")
        final = self.crop or (self.resize if isinstance(self.resize, tuple) else None)
        if final is not None and tuple(final) != tuple(self.size):
            raise InvalidInputError(f"size {self.size} disagrees with the crop/resize, which give {tuple(final)}")

    # -- construction from checkpoint configs ------------------------------------------------------------------

    @classmethod
    def from_timm_config(cls, pretrained_cfg: dict) -> ImagePreprocess:
        """From timm's ``pretrained_cfg`` (``config.json["pretrained_cfg"]``), as ``timm.data.create_transform``
        builds its eval transform: shorter edge to ``floor(size / crop_pct)``, centre crop ``size``."""
        _, h, w = pretrained_cfg.get("input_size", (3, 224, 224))
        crop_pct = pretrained_cfg.get("crop_pct") or 0.875  # timm's DEFAULT_CROP_PCT
        crop_mode = pretrained_cfg.get("crop_mode") or "center"
        if crop_pct > 1:
            raise UnsupportedError(f"crop_pct {crop_pct} > 1 (padding crops) is not supported")
        scale = (math.floor(h / crop_pct), math.floor(w / crop_pct))
        if crop_mode == "squash":
            resize: int | tuple[int, int] = scale
        elif crop_mode == "center" and scale[0] == scale[1]:
            resize = scale[0]
        else:  # 'border', or 'center' with a non-square input: timm's ResizeKeepRatio, not needed by any entry yet
            raise UnsupportedError(f"timm crop_mode {crop_mode!r} with input size {(h, w)} is not supported")
        interpolation = pretrained_cfg.get("interpolation", "bilinear")
        return cls(size=(h, w), resize=resize, crop=(h, w), interpolation=interpolation,
                   mean=tuple(pretrained_cfg.get("mean", (0.485, 0.456, 0.406))),
                   std=tuple(pretrained_cfg.get("std", (0.229, 0.224, 0.225))), rescale=1 / 255, crop_rounding="round")

    @classmethod
    def from_hf_preprocessor(cls, cfg: dict, defaults: ProcessorDefaults | None = None) -> ImagePreprocess:
        """From a transformers ``preprocessor_config.json`` (an image processor's or feature extractor's config).

        A config leaves out what its processor class takes as given; ``defaults`` says what that is for the
        family's processor class (its class attributes: see :class:`ProcessorDefaults`; the CLIP and SigLIP
        families pass their processors'). Without it, the defaults of a plain square-resize processor apply.
        """
        d = defaults or ProcessorDefaults()
        resample = cfg.get("resample", d.resample)
        if resample not in _HF_RESAMPLE:
            raise UnsupportedError(f"resample {_HF_RESAMPLE_NAMES.get(resample, resample)!r} is not supported; "
                                   f"zoo implements {sorted(_HF_RESAMPLE.values())}")
        resize: int | tuple[int, int] | None = None
        if cfg.get("do_resize", True):
            size = cfg.get("size", d.size)
            if isinstance(size, dict) and set(size) == {"shortest_edge"}:
                resize = int(size["shortest_edge"])
            elif isinstance(size, dict) and {"height", "width"} <= set(size):
                resize = (int(size["height"]), int(size["width"]))
            elif isinstance(size, int):
                resize = (size, size) if d.default_to_square else size
            else:
                raise UnsupportedError(f"preprocessor size {size!r} is not supported (expected an int, "
                                       "{'shortest_edge': n} or {'height': h, 'width': w})")
        crop = None
        if cfg.get("do_center_crop", d.do_center_crop):
            c = cfg.get("crop_size", d.crop_size)
            crop = (c, c) if isinstance(c, int) else (int(c["height"]), int(c["width"]))
        final = crop or (resize if isinstance(resize, tuple) else None)
        if final is None:
            raise UnsupportedError("preprocessor gives no fixed output size (no crop and no exact resize)")
        normalize = cfg.get("do_normalize", True)
        mean = tuple(cfg.get("image_mean", d.mean)) if normalize else (0.0, 0.0, 0.0)
        std = tuple(cfg.get("image_std", d.std)) if normalize else (1.0, 1.0, 1.0)
        rescale = cfg.get("rescale_factor", 1 / 255) if cfg.get("do_rescale", True) else 1.0
        return cls(size=final, resize=resize, crop=crop, interpolation=_HF_RESAMPLE[resample], mean=mean, std=std,
                   rescale=float(rescale), crop_rounding="floor")

    # -- the transform -----------------------------------------------------------------------------------------

    def __call__(self, images: ImageLike) -> Tensor:
        """Images (see :func:`load_images`) -> ``(N, 3, H, W)`` float32, normalised, at :attr:`size`."""
        out = []
        for img in load_images(images):
            if isinstance(img, Tensor) and img.dtype == torch.uint8:
                img = Image.fromarray(img.permute(1, 2, 0).cpu().numpy())  # lossless: take the reference's PIL path
            out.append(self._pil(img) if isinstance(img, Image.Image) else self._tensor(img))
        return torch.stack(out)

    def _pil(self, img: Image.Image) -> Tensor:
        h, w = img.height, img.width
        if self.resize is not None:
            nh, nw = _resized_size((h, w), self.resize)
            if (nh, nw) != (h, w):  # a same-size resize is a copy in PIL and torchvision alike
                img = img.resize((nw, nh), resample=_PIL_FILTERS[self.interpolation])
        x = torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1)
        return self._finish(self._crop(x), uint8=True)

    def _tensor(self, x: Tensor) -> Tensor:
        x = x.float()
        if self.resize is not None:
            size = _resized_size(tuple(x.shape[-2:]), self.resize)
            if size != tuple(x.shape[-2:]):
                mode = _TORCH_MODES[self.interpolation]
                x = F.interpolate(x[None], size=size, mode=mode, antialias=mode != "nearest-exact",
                                  **({} if mode == "nearest-exact" else {"align_corners": False}))[0]
        return self._finish(self._crop(x), uint8=False)

    def _crop(self, x: Tensor) -> Tensor:
        if self.crop is None:
            return x
        (h, w), (ch, cw) = x.shape[-2:], self.crop
        if ch > h or cw > w:
            raise InvalidInputError(f"cannot centre-crop {ch}x{cw} from a {h}x{w} image: the resize leaves it too small")
        offset = (lambda m: int(round(m / 2.0))) if self.crop_rounding == "round" else (lambda m: m // 2)
        top, left = offset(h - ch), offset(w - cw)
        return x[..., top:top + ch, left:left + cw]

    def _finish(self, x: Tensor, *, uint8: bool) -> Tensor:
        if tuple(x.shape[-2:]) != tuple(self.size):
            raise InvalidInputError(f"preprocessing gave {tuple(x.shape[-2:])}, expected {self.size}: "
                                    "set resize/crop so that they end at size")
        # float input is [0, 1], i.e. uint8 / 255: scale it as the reference would have scaled the uint8 pixels
        x = x.float() * (self.rescale if uint8 else 255 * self.rescale)
        mean = torch.tensor(self.mean, dtype=torch.float32, device=x.device).view(3, 1, 1)
        std = torch.tensor(self.std, dtype=torch.float32, device=x.device).view(3, 1, 1)
        return ((x - mean) / std).contiguous()


def _resized_size(hw: tuple[int, int], resize: int | tuple[int, int]) -> tuple[int, int]:
    """Output (H, W) of a resize: exact, or shorter edge -> ``resize`` with the longer edge truncated."""
    if isinstance(resize, tuple):
        return tuple(resize)
    h, w = hw
    short, long = (w, h) if w <= h else (h, w)
    new_long = int(resize * long / short)
    return (new_long, resize) if w <= h else (resize, new_long)


# -- loading and validating inputs ------------------------------------------------------------------------------


def load_images(images: ImageLike) -> list[Image.Image | Tensor]:
    """Normalise any accepted input to a list of RGB PIL images and ``(3, H, W)`` tensors (uint8 or float [0, 1]).

    Accepts a path, a PIL image, a list of either, or a uint8 / float tensor (or numpy array) shaped
    ``(3, H, W)``, ``(N, 3, H, W)`` or ``(H, W, 3)``. Files and PIL images are turned upright by their EXIF
    orientation (``PIL.ImageOps.exif_transpose``, as transformers' ``load_image`` does: a phone photo taken
    upright is seen upright). Greyscale, palette, CMYK, greyscale-with-alpha and RGBA PIL images become RGB as
    timm's and transformers' loaders convert them (``Image.convert("RGB")``; transparency composited onto
    white, as transformers does); 16-bit greyscale is scaled to 8 bits (0..65535 -> 0..255) where
    ``convert`` would clip every value above 255 to white. Raises a ValueError / TypeError naming the problem
    and the fix for anything else.
    """
    if isinstance(images, (str, os.PathLike, Image.Image)):
        return [_one(images)]
    if isinstance(images, (Tensor, np.ndarray)):
        x = _as_tensor(images)
        if x.ndim == 4:
            return [_check_tensor(t, shape=tuple(x.shape)) for t in x]
        return [_one(x)]
    if isinstance(images, Iterable):
        items = list(images)
        if not items:
            raise InvalidInputError("no images given (an empty list)")
        out: list[Image.Image | Tensor] = []
        for item in items:
            if isinstance(item, (Tensor, np.ndarray)) and _as_tensor(item).ndim == 4:
                out.extend(load_images(item))
            else:
                out.append(_one(item))
        return out
    raise ArgumentTypeError(f"cannot read images from {type(images).__name__}: pass a path, a PIL image, a uint8 or float "
                            "tensor (3, H, W) / (N, 3, H, W) / (H, W, 3), or a list of these")


def _one(item: Any) -> Image.Image | Tensor:
    if isinstance(item, (str, os.PathLike)):
        path = Path(item)
        if path.is_dir():
            raise InvalidInputError(f"{path} is a folder, not an image file: pass the image files in it (e.g. "
                                    f"sorted(Path({str(path)!r}).glob('*.jpg'))); the zoo commands take a folder")
        if not path.is_file():
            raise MissingFileError(f"image file not found: {path}")
        with Image.open(path) as img:
            return _to_rgb(img)
    if isinstance(item, Image.Image):
        return _to_rgb(item)
    if isinstance(item, (Tensor, np.ndarray)):
        x = _as_tensor(item)
        if x.ndim != 3:
            raise InvalidInputError(f"an image tensor must be (3, H, W), (H, W, 3) or a batch (N, 3, H, W); got shape "
                                    f"{tuple(x.shape)}" + (" (greyscale? repeat it to 3 channels: x.expand(3, -1, -1))"
                                                    if x.ndim == 2 else ""))
        if x.shape[0] != 3 and x.shape[-1] == 3:
            x = x.permute(2, 0, 1)  # (H, W, 3) -> (3, H, W)
        return _check_tensor(x, shape=tuple(item.shape))
    raise ArgumentTypeError(f"cannot read an image from {type(item).__name__}: pass a path, a PIL image or a tensor")


def _to_rgb(img: Image.Image) -> Image.Image:
    """Upright (EXIF orientation) and RGB, a new image (``img`` is left as it is)."""
    img.load()
    upright = ImageOps.exif_transpose(img)  # a copy when it turns the image, else img itself
    if upright is not None:
        img = upright
    if img.mode == "RGB":
        return img.copy()
    if img.mode.startswith("I;16") or (img.mode == "I" and img.getextrema()[1] > 255):
        # 16-bit greyscale: Image.convert clips at 255, so scale 0..65535 to 0..255 first (round to nearest)
        wide = np.asarray(img, dtype=np.float64)
        img = Image.fromarray(np.clip(np.rint(wide / 257.0), 0, 255).astype(np.uint8))
    if "A" in img.getbands() or "transparency" in img.info:
        rgba = img.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")
    return img.convert("RGB")


def _as_tensor(x: Tensor | np.ndarray) -> Tensor:
    return torch.from_numpy(np.ascontiguousarray(x)) if isinstance(x, np.ndarray) else x


def _check_tensor(x: Tensor, *, shape: tuple[int, ...]) -> Tensor:
    """Validate one (3, H, W) image tensor: 3 channels; uint8, or float in [0, 1]."""
    if x.shape[0] != 3:
        fix = (" (greyscale: repeat to 3 channels with x.expand(3, -1, -1))" if x.shape[0] == 1 else
               " (RGBA: drop alpha with x[:3])" if x.shape[0] == 4 else "")
        raise InvalidInputError(f"image tensors must have 3 channels, as (3, H, W), (N, 3, H, W) or (H, W, 3); got shape "
                                f"{shape}{fix}")
    if x.dtype == torch.uint8:
        return x
    if not x.is_floating_point():
        raise InvalidInputError(f"image tensors must be uint8 (0..255) or float in [0, 1]; got {x.dtype} "
                                "(convert with x.to(torch.uint8) if it holds 0..255 values)")
    lo, hi = float(x.min()), float(x.max())
    if not math.isfinite(lo) or not math.isfinite(hi):
        raise InvalidInputError("image tensor holds NaN or inf values")
    if lo < -1e-3:  # first: negative values mean normalised data, whatever the maximum
        raise InvalidInputError(f"float image tensors must be in [0, 1]; got values down to {lo:.4g} (already normalised? "
                                "pass raw images to preprocess, or call the model on the normalised batch directly)")
    if hi > 1.0 + 1e-3:
        raise InvalidInputError(f"float image tensors must be in [0, 1]; got values up to {hi:.4g} (0..255 floats? divide "
                                "by 255, or pass a uint8 tensor)")
    return x.clamp(0, 1)
