"""vqvae-digits: the VQ-VAE zoo trains itself (plugins/autoencoders/train_vq.py) and ships.

Training is checked where it goes wrong in practice, each check shown to fail on the fault it is for:

* the straight-through estimator (forward the code, pass the gradient to the encoder unchanged): checked directly,
  and by a short training run whose held-out reconstruction must beat a bound that a run with a broken estimator
  (the decoder's gradient never reaching the encoder) misses;
* the codebook: the same short run must use most codes with a high perplexity, which a run without dead-code
  restarts misses (from taming's uniform(-1/K, 1/K) initialisation a handful of codes take every position).

The short runs train a narrower network (8/16/16 channels, 64 codes) for 100 steps: 5-15 s each on one thread. Measured
(100 steps, batch 32, seed 0): the reconstruction loss falls to 0.2 of its first value, held-out PSNR 17.1 dB, all
64 codes used, perplexity 55; broken estimator: the loss stalls at 0.4 of its first value, 13.4 dB; no restarts:
17.0 dB, but 8 codes used, perplexity 6.

The shipped weights are checked against the numbers the entry (and the README) state, against diffusers'
``VQModel`` reading the same folder, and on a real photo.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import skimage.data
import torch
from PIL import Image

import zoo
import zoo.plugins.autoencoders.train_vq as train_vq
from zoo.cli import main
from zoo.errors import ZooError
from zoo.plugins.autoencoders import VQ_DIGITS_DIR, VQ_DIGITS_HELD_OUT
from zoo.plugins.autoencoders.common import psnr
from zoo.plugins.autoencoders.train_vq import (OUTPUT_FILES, VQ_CONFIG, CodebookTrainer, evaluate, fit,
                                               load_digits_split, straight_through, vq_losses)
from zoo.plugins.autoencoders.vq import VQConfig, VQModel

from test_autoencoder_kl import one_thread  # noqa: F401  (autouse: single-threaded torch)

pytest.importorskip("sklearn")  # the train/test extra, not a runtime dependency

TINY = {**VQ_CONFIG, "block_out_channels": [8, 16, 16], "norm_num_groups": 4, "num_vq_embeddings": 64}
STEPS, BATCH = 100, 32
#: the short run's bounds: held-out PSNR (dB), fraction of the 64 codes used, perplexity.
MIN_PSNR, MIN_FRACTION, MIN_PERPLEXITY = 15.5, 0.9, 32.0


@pytest.fixture(scope="module")
def split() -> tuple[torch.Tensor, torch.Tensor]:
    return load_digits_split()


def short_run(split, **options) -> dict:
    model, log = fit(steps=STEPS, batch_size=BATCH, config=TINY, data=split[0], progress=False, **options)
    return {"log": log, **evaluate(model, split[1])}


def check_learns(run: dict) -> None:
    """The reconstruction loss falls to under 0.3 of its first value, and the held-out digits come back."""
    log = run["log"]
    assert log[-1]["reconstruction"] < 0.3 * log[0]["reconstruction"], [e["reconstruction"] for e in log]
    assert run["psnr"] >= MIN_PSNR, run


def check_codebook_used(run: dict) -> None:
    """Most codes are used on held-out digits, with a perplexity of at least half the codebook."""
    assert run["fraction"] >= MIN_FRACTION and run["perplexity"] >= MIN_PERPLEXITY, run


@pytest.fixture(scope="module")
def good_run(split) -> dict:
    return short_run(split)


def test_training_learns_and_uses_the_codebook(good_run):
    print({k: v for k, v in good_run.items() if k != "log"})
    check_learns(good_run)
    check_codebook_used(good_run)


def test_a_broken_straight_through_estimator_fails_the_training_check(split, monkeypatch):
    """``z_q = sg(e)``: the codes still go forward, but the decoder's gradient never reaches the encoder, which
    then learns only from the commitment term."""
    monkeypatch.setattr(train_vq, "straight_through", lambda z, e: e.detach())
    run = short_run(split)
    print({k: v for k, v in run.items() if k != "log"})
    with pytest.raises(AssertionError):
        check_learns(run)


def test_without_restarts_the_codebook_collapses_and_the_check_says_so(split):
    run = short_run(split, restart_after=None)
    print({k: v for k, v in run.items() if k != "log"})
    assert run["psnr"] > 0.8 * MIN_PSNR  # it still trains: only the codebook check is expected to fail
    with pytest.raises(AssertionError):
        check_codebook_used(run)


def estimator_is_straight_through(estimator) -> bool:
    """Forward: the codes ``e``. Backward: the gradient w.r.t. ``z_q`` reaches ``z`` unchanged, and none reaches
    ``e`` (the codebook learns from its own term or by EMA, not from the decoder)."""
    gen = torch.Generator().manual_seed(0)
    z = torch.randn(2, 8, 4, 4, generator=gen, requires_grad=True)
    e = torch.randn(2, 8, 4, 4, generator=gen, requires_grad=True)
    upstream = torch.randn(2, 8, 4, 4, generator=gen)
    z_q = estimator(z, e)
    if not torch.allclose(z_q, e, atol=1e-6) or not z_q.requires_grad:
        return False
    grad_z, grad_e = torch.autograd.grad(z_q, (z, e), upstream, allow_unused=True)
    return grad_z is not None and torch.allclose(grad_z, upstream) and (grad_e is None or not grad_e.any())


def test_straight_through_estimator():
    assert estimator_is_straight_through(straight_through)
    assert estimator_is_straight_through(lambda z, e: z + e.detach() - z.detach())  # the same, written otherwise
    for broken in (lambda z, e: e, lambda z, e: e.detach(), lambda z, e: (z + (e - z)).detach(),
                   lambda z, e: z + (e - z), lambda z, e: z):
        assert not estimator_is_straight_through(broken)


def test_ema_update_moves_each_code_to_the_mean_of_its_positions():
    """With decay 0 an EMA step is one k-means step: each used code becomes the mean of the encoder outputs it
    took (Laplace smoothing changes that by ~eps); unused codes stay finite."""
    model = VQModel(VQConfig.from_dict(TINY))
    trainer = CodebookTrainer(model.quantize, ema=True, decay=0.0, restart_after=None)
    assert not model.quantize.embedding.weight.requires_grad  # the codebook takes no gradient under EMA
    z = torch.randn(4, 8, 4, 4, generator=torch.Generator().manual_seed(1))
    codes = torch.randint(0, 5, (4, 4, 4), generator=torch.Generator().manual_seed(2))
    trainer.update(z, codes, step=0)
    flat, idx = z.permute(0, 2, 3, 1).reshape(-1, 8), codes.reshape(-1)
    weight = model.quantize.embedding.weight
    for i in range(5):
        torch.testing.assert_close(weight[i], flat[idx == i].mean(0), rtol=1e-4, atol=1e-5)
    assert torch.isfinite(weight).all()


def test_dead_codes_restart_on_encoder_outputs():
    model = VQModel(VQConfig.from_dict(TINY))
    trainer = CodebookTrainer(model.quantize, ema=True, restart_after=3, generator=torch.Generator().manual_seed(0))
    z = torch.randn(2, 8, 4, 4, generator=torch.Generator().manual_seed(1))
    codes = torch.zeros(2, 4, 4, dtype=torch.int64)  # every position takes code 0
    assert [trainer.update(z, codes, step) for step in range(4)] == [0, 0, 0, 63]  # unused for 3 steps: restarted
    flat = z.permute(0, 2, 3, 1).reshape(-1, 8)
    restarted = model.quantize.embedding.weight[1:]
    assert all((flat == row).all(1).any() for row in restarted)  # each is one of the batch's encoder outputs


def test_without_ema_the_codebook_term_trains_the_codebook(split):
    torch.manual_seed(0)
    model = VQModel(VQConfig.from_dict(TINY))
    CodebookTrainer(model.quantize, ema=False)
    losses, _, _ = vq_losses(model, split[0][:8], ema=False)
    losses.total.backward()
    assert model.quantize.embedding.weight.grad.abs().sum() > 0
    torch.testing.assert_close(losses.total, losses.reconstruction + losses.codebook + losses.commitment)
    ema_losses, _, _ = vq_losses(model, split[0][:8], ema=True)
    torch.testing.assert_close(ema_losses.total, ema_losses.reconstruction + ema_losses.commitment)


# ---------------------------------------------------------------------------------------------------------------
# The shipped weights
# ---------------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def shipped() -> VQModel:
    return zoo.create("vqvae-digits", device="cpu")


def test_shipped_folder():
    assert sorted(p.name for p in VQ_DIGITS_DIR.iterdir()) == sorted(OUTPUT_FILES)
    assert (VQ_DIGITS_DIR / "diffusion_pytorch_model.safetensors").stat().st_size <= 5 * 2**20
    assert json.loads((VQ_DIGITS_DIR / "config.json").read_text()) == VQConfig.from_dict(VQ_CONFIG).to_dict()


def test_shipped_weights_reach_the_stated_held_out_numbers(shipped, split):
    """The numbers the entry and the README state are what the shipped weights give on the held-out digits."""
    scores = evaluate(shipped, split[1])
    print(scores)
    assert scores["used"] == VQ_DIGITS_HELD_OUT["used"]
    assert scores["psnr"] == pytest.approx(VQ_DIGITS_HELD_OUT["psnr"], abs=0.01)
    assert scores["perplexity"] == pytest.approx(VQ_DIGITS_HELD_OUT["perplexity"], abs=0.1)
    assert scores["psnr"] > 22 and scores["fraction"] > 0.9  # and they are good: well above the 100-step run's
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    assert f"{VQ_DIGITS_HELD_OUT['psnr']:.1f} dB" in readme and f"perplexity {VQ_DIGITS_HELD_OUT['perplexity']:.1f}" \
        in readme, "README's VQ-VAE on digits section does not state the shipped numbers"


def test_diffusers_reads_the_shipped_folder_as_the_same_network(shipped, split):
    diffusers = pytest.importorskip("diffusers")
    ref = diffusers.VQModel.from_pretrained(VQ_DIGITS_DIR).eval()
    x = split[1][:16]
    with torch.no_grad():
        h_ref = ref.encode(x).latents
        h = shipped.encode(x)
        torch.testing.assert_close(h, h_ref, rtol=0, atol=1e-4)
        _, _, (_, _, indices) = ref.quantize(h_ref)
        assert torch.equal(shipped.quantize(h).reshape(-1), indices)
        torch.testing.assert_close(shipped.decode_pixels(h), ref.decode(h_ref).sample, rtol=0, atol=1e-4)


#: a real photo through the shipped model, at 16x16 (the digits' size) and at 64x64: PSNR (dB) at least this.
#: Measured: 11.4 and 12.2 dB (an untrained model of the same architecture: 10.4 and 9.7).
PHOTO_MIN_PSNR = {16: 10.9, 64: 11.7}


@pytest.mark.parametrize("size", sorted(PHOTO_MIN_PSNR))
def test_a_real_photo_through_the_shipped_model(shipped, size):
    """scikit-image's astronaut enters as the digits did: its luma (ITU-R BT.601, PIL's "L"), resized by
    ``preprocess``. The model knows only digits, light strokes on black, so a photo comes back
    as a rough stroke rendering: the stated PSNR is low, but above an untrained model's, and reached every time."""
    photo = Image.fromarray(skimage.data.astronaut())
    x = shipped.preprocess(photo, size=size)
    assert x.shape == (1, 1, size, size)
    grey = np.asarray(photo.resize((size, size), Image.Resampling.LANCZOS).convert("L"), dtype=np.float32) / 255
    assert np.abs((x[0, 0].numpy() + 1) / 2 - grey).max() < 1.5 / 255  # the luma, as PIL computes it (rounded)
    with torch.no_grad():
        value = float(psnr((x + 1) / 2, shipped.decode(shipped.encode(x))))
        torch.manual_seed(0)
        untrained = VQModel(VQConfig.from_dict(VQ_CONFIG)).eval()
        baseline = float(psnr((x + 1) / 2, untrained.decode(untrained.encode(x))))
    print(f"astronaut at {size}x{size}: PSNR {value:.2f} dB (untrained: {baseline:.2f} dB)")
    assert value >= PHOTO_MIN_PSNR[size] and value > baseline + 0.5


# ---------------------------------------------------------------------------------------------------------------
# The command line
# ---------------------------------------------------------------------------------------------------------------

def test_zoo_train_writes_a_folder_zoo_and_diffusers_read(tmp_path, capsys):
    out = tmp_path / "mine"
    assert main(["train", "vqvae-digits", "-o", str(out), "--steps", "3"]) == 0
    assert sorted(p.name for p in out.iterdir()) == sorted(OUTPUT_FILES)
    assert [p.name for p in tmp_path.iterdir()] == ["mine"]  # no temporary folder left
    model = zoo.create("vqvae-digits", weights=out, device="cpu")
    assert model.reconstruct(torch.rand(1, 3, 16, 16)).shape == (1, 1, 16, 16)
    assert "held-out digits" in capsys.readouterr().out


def test_zoo_train_refuses_a_folder_holding_other_files_before_training(tmp_path, monkeypatch):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    monkeypatch.setattr(train_vq, "load_digits_split", lambda: pytest.fail("training started"))
    with pytest.raises(ZooError, match="notes.txt"):
        train_vq.train(out, steps=2, progress=False)
    assert [p.name for p in out.iterdir()] == ["notes.txt"]


def test_zoo_reconstruct_a_photo(tmp_path, capsys):
    photo = tmp_path / "astronaut.png"
    Image.fromarray(skimage.data.astronaut()).resize((64, 64)).save(photo)
    grid = tmp_path / "recon.png"
    assert main(["reconstruct", "vqvae-digits", str(photo), "-o", str(grid)]) == 0
    out = capsys.readouterr().out
    assert re.search(r"PSNR \d+\.\d+ dB", out) and Image.open(grid).mode == "L"
