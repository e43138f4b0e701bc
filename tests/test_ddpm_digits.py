"""ddpm-digits: the DDPM zoo trains itself and ships, checked the way a person would: do its samples look
like digits? A digit classifier fitted on scikit-learn's digits judges them."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import zoo
from zoo.plugins.ddpm import DIGITS_DIR
from zoo.plugins.ddpm.train_digits import UNET_CONFIG, train
from zoo.plugins.ddpm.unet import UNet2DModel

sklearn = pytest.importorskip("sklearn")  # the train/test extra, not a runtime dependency

CONFIDENCE, MIN_RECOGNISED, MIN_CLASSES = 0.7, 0.8, 8


class DigitJudge:
    """Says which images are recognisable digits: close to some real digit AND confidently classified.

    Both halves matter. A calibrated SVM (scikit-learn's classic digits model, ~98% accurate) is sure of
    its answer for most real digits, but also for a fair share of pure noise (an untrained network's samples get
    confidences above 0.7 about 70% of the time), so an image must also lie as close to its nearest real digit
    as real digits do: within the 99th percentile of the nearest-neighbour distance of 297 held-out digits to
    the other 1,500 (about 30 in 8x8 units of 0..16; noise and an untrained network's samples are at 45-55).

    Measured (DDIM, 50 steps): held-out real digits 99.7% recognised; the shipped ddpm-digits 97-98% over
    several seeds, every class present; an untrained network of the same architecture 0%.
    """

    def __init__(self):
        from sklearn.calibration import CalibratedClassifierCV
        from sklearn.datasets import load_digits
        from sklearn.svm import SVC

        digits = load_digits()
        self.data = torch.tensor(digits.images.reshape(-1, 64), dtype=torch.float32)
        held_out = torch.cdist(self.data[1500:], self.data[:1500]).min(1).values
        self.max_distance = float(np.percentile(held_out.numpy(), 99))
        self.svm = CalibratedClassifierCV(SVC(gamma=0.001), ensemble=False).fit(self.data.numpy(), digits.target)

    def __call__(self, images: torch.Tensor) -> tuple[float, np.ndarray]:
        """Images ``(N, 1, 16, 16)`` in [0, 1] -> (fraction recognised, per-class counts of the recognised)."""
        x8 = F.avg_pool2d(images.float(), 2).reshape(len(images), 64) * 16  # back to 8x8, values 0..16
        near = torch.cdist(x8, self.data).min(1).values.numpy() <= self.max_distance
        proba = self.svm.predict_proba(x8.numpy())
        recognised = near & (proba.max(1) > CONFIDENCE)
        return float(recognised.mean()), np.bincount(proba.argmax(1)[recognised], minlength=10)


@pytest.fixture(scope="module")
def judge() -> DigitJudge:
    return DigitJudge()


def test_shipped_folder():
    files = sorted(p.name for p in DIGITS_DIR.iterdir())
    assert {"config.json", "scheduler_config.json", "diffusion_pytorch_model.safetensors"} <= set(files)
    assert (DIGITS_DIR / "diffusion_pytorch_model.safetensors").stat().st_size <= 5 * 2**20
    assert json.loads((DIGITS_DIR / "config.json").read_text())["sample_size"] == 16


def test_shipped_weights_load_and_sample():
    pipe = zoo.create("ddpm-digits", device="cpu")
    assert (pipe.default_sampler, pipe.default_steps) == ("ddim", 50)
    images = pipe.sample(8, steps=10, generator=torch.Generator().manual_seed(0), progress=False)
    assert images.shape == (8, 1, 16, 16) and images.dtype == torch.float32
    assert 0 <= images.min() and images.max() <= 1


def test_samples_are_digits(judge):
    pipe = zoo.create("ddpm-digits", device="cpu")
    images = pipe.sample(64, generator=torch.Generator().manual_seed(0), progress=False)  # DDIM, 50 steps
    recognised, per_class = judge(images)
    print(f"ddpm-digits: {recognised:.0%} of 64 samples are recognisable digits; per class {per_class.tolist()}")
    assert recognised >= MIN_RECOGNISED
    assert (per_class >= 2).sum() >= MIN_CLASSES, f"too few kinds of digit: {per_class.tolist()}"


def test_judge_rejects_a_broken_model(judge):
    """The same check on an untrained network of the same architecture must fail, or it means nothing."""
    pipe = zoo.create("ddpm-digits", device="cpu")
    torch.manual_seed(0)
    pipe.denoiser.unet.load_state_dict(UNet2DModel(UNET_CONFIG).state_dict())
    recognised, _ = judge(pipe.sample(64, generator=torch.Generator().manual_seed(0), progress=False))
    assert recognised < MIN_RECOGNISED / 4


def test_judge_accepts_real_digits(judge):
    from zoo.plugins.ddpm.train_digits import load_digits_images

    images, _ = load_digits_images()
    recognised, per_class = judge((images[1500:] + 1) / 2)  # the digits the distance threshold was not fitted on
    assert recognised >= MIN_RECOGNISED and (per_class >= 2).sum() == 10


def test_train_writes_a_loadable_folder(tmp_path):
    """A few steps of the real training code: the folder it writes is read by the same builder."""
    out = train(tmp_path / "digits", steps=3, batch_size=8, progress=False)
    assert {p.name for p in out.iterdir()} == {"config.json", "scheduler_config.json",
                                               "diffusion_pytorch_model.safetensors"}
    pipe = zoo.create("ddpm-digits", weights=out, device="cpu")
    assert pipe.sample(2, steps=2, progress=False).shape == (2, 1, 16, 16)


def test_shipped_folder_is_diffusers_format():
    """diffusers reads the shipped folder as its own UNet2DModel and gives the same network output."""
    diffusers = pytest.importorskip("diffusers")
    diffusers.utils.logging.set_verbosity_error()
    ref = diffusers.UNet2DModel.from_pretrained(DIGITS_DIR).eval()
    ours = zoo.create("ddpm-digits", device="cpu").denoiser
    x, t = torch.randn(2, 1, 16, 16), torch.tensor([10, 900])
    with torch.no_grad():
        assert (ours(x, t.float()) - ref(x, t).sample).abs().max() <= 1e-5


def test_pretrained_false_builds_random_weights():
    pipe = zoo.create("ddpm-digits", pretrained=False, device="cpu")
    assert pipe.sample_shape == (1, 16, 16)


def test_grid_of_samples(tmp_path):
    """zoo.image tiles samples into the picture `zoo sample` writes (16x16 tiles enlarged x4 by default)."""
    from PIL import Image

    from zoo.image import make_grid, save_grid

    images = torch.rand(10, 1, 16, 16)
    grid = make_grid(images, nrow=4, scale=1)
    assert grid.mode == "L" and grid.size == (4 * 18 + 2, 3 * 18 + 2)
    tile = np.asarray(grid)[2:18, 20:36] / 255  # row 0, column 1
    assert np.abs(tile - images[1, 0].numpy()).max() <= 1 / 255
    path = save_grid(images, tmp_path / "grid.png")
    assert Image.open(path).size == ((4 * 18 + 2) * 4, (3 * 18 + 2) * 4)
    assert make_grid(torch.rand(2, 3, 32, 32)).mode == "RGB"
    with pytest.raises(ValueError, match="shape"):
        make_grid(torch.rand(2, 16, 16))
