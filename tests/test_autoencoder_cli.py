"""``zoo reconstruct``, the autoencoders plugin's command, end to end in-process (``zoo.cli.main``) on real photos.

The models are small diffusers fixtures with the real configs' layout (narrow blocks, random weights, Hub layout),
passed with ``--weights DIR``; the grid the command writes is compared with the Python API on the same files.
Input errors are one line on stderr with exit status 2, and come before any model is loaded.
"""
from __future__ import annotations

import numpy as np
import pytest
import skimage.data
import torch
from PIL import Image

import zoo
from zoo.cli import main

from test_autoencoder_kl import NARROW, SD_VAE, one_thread, perturbed, real_config  # noqa: F401
from test_autoencoder_vq import NARROW as VQ_NARROW
from test_autoencoder_vq import VQ

diffusers = pytest.importorskip("diffusers")


def run(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> tuple[str, str]:
    """A cat (PNG, 64x48) and an astronaut (JPEG, 64x64): different sizes, brought to the first one's."""
    folder = tmp_path_factory.mktemp("photos")
    cat, astronaut = folder / "cat.png", folder / "astronaut.jpg"
    Image.fromarray(skimage.data.chelsea()).resize((64, 48)).save(cat)
    Image.fromarray(skimage.data.astronaut()).resize((64, 64)).save(astronaut, quality=95)
    return str(cat), str(astronaut)


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("weights")
    torch.manual_seed(0)
    perturbed(diffusers.AutoencoderKL.from_config(real_config(SD_VAE, **NARROW)), seed=1).save_pretrained(root / "kl")
    vq = perturbed(diffusers.VQModel.from_config(real_config(VQ, **VQ_NARROW)), seed=2)
    vq.save_pretrained(root / "vq" / "vqvae")
    return {"sd-vae-ft-ema": str(root / "kl"), "vqvae-celebahq": str(root / "vq")}


def grid_tiles(path: str, n: int, h: int, w: int, padding: int = 2) -> list[tuple[np.ndarray, np.ndarray]]:
    """The (input, reconstruction) pixel pairs of a grid written with nrow=2, scale=1."""
    grid = np.asarray(Image.open(path).convert("RGB"))
    assert grid.shape == (n * (h + padding) + padding, 2 * (w + padding) + padding, 3)
    tiles = []
    for i in range(n):
        top = padding + i * (h + padding)
        left, right = padding, padding + w + padding
        tiles.append((grid[top:top + h, left:left + w], grid[top:top + h, right:right + w]))
    return tiles


@pytest.mark.parametrize("name", ["sd-vae-ft-ema", "vqvae-celebahq"])
def test_reconstruct_writes_inputs_beside_reconstructions(name, weights, photos, tmp_path, capsys):
    out = tmp_path / "recon.png"
    code, stdout, err = run(capsys, "reconstruct", name, *photos, "--weights", weights[name], "--device", "cpu",
                            "-o", out)
    assert code == 0, err
    assert stdout.count("PSNR") == 2 and f"wrote {out}" in stdout and "48x64" in stdout
    model = zoo.create(name, weights=weights[name], device="cpu")
    with torch.inference_mode():
        x = model.preprocess(list(photos))  # the astronaut is resized to the cat's 48x64
        recon = model.decode(model.encode(x))
    for (shown_in, shown_out), xi, ri in zip(grid_tiles(str(out), 2, 48, 64), x, recon):
        expected_in = ((xi + 1) / 2).clamp(0, 1).mul(255).round().permute(1, 2, 0).numpy()
        expected_out = ri.mul(255).round().permute(1, 2, 0).numpy()
        assert np.abs(shown_in.astype(float) - expected_in).max() <= 1
        assert np.abs(shown_out.astype(float) - expected_out).max() <= 1


def test_reconstruct_options_size_tile_sample(weights, photos, tmp_path, capsys):
    out = tmp_path / "r.png"
    code, stdout, err = run(capsys, "reconstruct", "sd-vae-ft-ema", photos[1], "--weights", weights["sd-vae-ft-ema"],
                            "--size", "64x32", "--tile", "--sample", "--seed", "3", "-o", out)
    assert code == 0, err
    assert Image.open(out).size == (2 * (32 + 2) + 2, 64 + 4)


@pytest.mark.parametrize("argv, message", [
    (["sd-vae-ft-ema", "missing.png"], "image file not found: missing.png"),
    (["ddpm-cifar", "IMAGE"], "'ddpm-cifar' cannot reconstruct: it is a pipeline model"),
])
def test_bad_input_is_one_line_before_any_model_loads(argv, message, photos, capsys, monkeypatch, tmp_path):
    def no_load(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(zoo, "create", no_load)
    argv = [photos[0] if a == "IMAGE" else a for a in argv]
    code, _, err = run(capsys, "reconstruct", *argv, "--weights", tmp_path, "-o", tmp_path / "x.png")
    assert code == 2 and message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_a_malformed_size_is_a_usage_error(photos, capsys):
    with pytest.raises(SystemExit):
        main(["reconstruct", "sd-vae-ft-ema", photos[0], "--size", "0x64"])
    assert "expected N or HxW" in capsys.readouterr().err


def test_a_size_off_the_latent_grid_is_one_line(weights, photos, tmp_path, capsys):
    code, _, err = run(capsys, "reconstruct", "sd-vae-ft-ema", photos[0], "--weights", weights["sd-vae-ft-ema"],
                       "--size", "60", "-o", tmp_path / "x.png")
    assert code == 2 and "must be a positive multiple of 8" in err and "Traceback" not in err


def test_options_a_model_lacks_are_refused(weights, photos, tmp_path, capsys):
    code, _, err = run(capsys, "reconstruct", "vqvae-celebahq", photos[0], "--weights", weights["vqvae-celebahq"],
                       "--sample", "-o", tmp_path / "x.png")
    assert code == 2 and "'vqvae-celebahq' does not support --sample" in err
