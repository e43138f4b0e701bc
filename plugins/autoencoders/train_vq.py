"""Training ``vqvae-digits``: a VQ-VAE on scikit-learn's handwritten digits, with an EMA codebook and restarts of
dead codes, the part of VQ-VAEs that no reference library ships.

Data: the 1,797 greyscale 8x8 digits inside scikit-learn (values 0..16), upsampled bilinearly to 16x16 (as
``ddpm-digits`` is trained) and scaled to ``[-1, 1]``. The last :data:`HELD_OUT` digits (20%, a fixed split) are
never trained on; every reported number is measured on them.

Model: an ordinary diffusers ``VQModel`` (:data:`VQ_CONFIG`, one input channel), so the folder :func:`train` writes
is read by the builder that reads CompVis/ldm-celebahq-256's VQ-f4, and by diffusers' ``VQModel.from_pretrained``.
A 16x16 digit becomes a 4x4 grid of 8-dimensional vectors, each snapped to one of 128 codes: 16 codes, 112 bits,
per digit.

Objective (van den Oord et al. 2017, eq. 3), for encoder output ``z``, its nearest code ``e`` and ``sg`` the
stop-gradient::

    L = |x - D(z + sg(e - z))|^2  +  |sg(z) - e|^2  +  beta |z - sg(e)|^2        beta = 0.25
        reconstruction (straight-through)   codebook        commitment

The straight-through estimator ``z_q = z + sg(e - z)`` (:func:`straight_through`) forwards the code ``e`` and
passes the decoder's gradient to the encoder unchanged. The improvements practitioners rely on, both on by default:

* EMA codebook (van den Oord et al. 2017, appendix A.1; Razavi et al. 2019): the codebook term is replaced by an
  exponential moving average of k-means updates, ``N_i <- g N_i + (1 - g) n_i``, ``m_i <- g m_i + (1 - g) sum of
  the z assigned to i``, ``e_i = m_i / N~_i`` with Laplace-smoothed counts ``N~_i = (N_i + eps) / (N + K eps) N``
  (decay ``g`` 0.99, ``eps`` 1e-5): :class:`CodebookTrainer` with ``ema=True``. ``ema=False`` trains the codebook
  by its loss term instead.
* Dead-code restarts (Dhariwal et al. 2020, Jukebox; Zeghidour et al. 2021): a code no position chose during the
  last ``restart_after`` steps is moved onto a random encoder output of the current batch. Without them the
  codebook collapses: from the quantiser's initialisation (taming's ``uniform(-1/K, 1/K)``) a handful of codes
  win every position and the rest are never chosen, so never move (tests/test_vqvae_digits.py shows both).

What is saved is the model itself (the codebook is ``quantize.embedding.weight``); the EMA statistics are training
state and are not written. scikit-learn is needed only here (``pip install zoo[train]``), imported inside
:func:`load_digits_split`.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from zoo.training import output_folder, write_folder_atomically

from .vq import VectorQuantizer, VQConfig, VQModel

IMAGE_SIZE = 16
#: the last 360 of the 1,797 digits (20%): the held-out split, never trained on.
HELD_OUT = 360
BETA = 0.25

#: diffusers' VQModel config: three levels of 16/32/32 channels (16 -> 8 -> 4), one resnet per level (two on the way
#: up), attention in the 4x4 middle, 8-dimensional latents and 128 codes. Chosen for CPU time: 32/64/64 channels
#: cost 2.7x as much per step.
VQ_CONFIG: dict[str, Any] = {
    "in_channels": 1, "out_channels": 1, "sample_size": IMAGE_SIZE,
    "block_out_channels": [16, 32, 32], "layers_per_block": 1, "norm_num_groups": 8, "act_fn": "silu",
    "down_block_types": ["DownEncoderBlock2D"] * 3, "up_block_types": ["UpDecoderBlock2D"] * 3,
    "latent_channels": 8, "num_vq_embeddings": 128, "scaling_factor": 1.0,
}

#: the files :func:`train` writes, and all an existing output folder may hold for it to be replaced.
OUTPUT_FILES = ("config.json", "diffusion_pytorch_model.safetensors")


def load_digits_split(size: int = IMAGE_SIZE) -> tuple[Tensor, Tensor]:
    """scikit-learn's digits as (train ``(1437, 1, size, size)``, held-out ``(360, 1, size, size)``), float32 in
    ``[-1, 1]``: the last :data:`HELD_OUT` digits in scikit-learn's order are held out."""
    from sklearn.datasets import load_digits

    x = torch.tensor(load_digits().images, dtype=torch.float32)[:, None] / 16.0  # (1797, 1, 8, 8) in [0, 1]
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False).clamp(0, 1) * 2 - 1
    return x[:-HELD_OUT], x[-HELD_OUT:]


def straight_through(z: Tensor, e: Tensor) -> Tensor:
    """``z_q = z + sg(e - z)``: equal to the codes ``e`` forward, the identity ``dz_q/dz = I`` backward."""
    return z + (e - z).detach()


class CodebookTrainer:
    """Trains a :class:`~.vq.VectorQuantizer`'s codebook beside the autoencoder: EMA k-means updates (``ema``)
    and restarts of dead codes (``restart_after``), both optional so their effect can be measured.

    Args:
        quantizer: the model's quantiser; its ``embedding.weight (K, D)`` is updated in place (with ``ema`` it
            takes no gradient).
        ema: update the codebook by moving averages (decay ``decay``, Laplace smoothing ``eps``) instead of by
            the codebook loss term.
        restart_after: a code unused for this many steps is restarted (None: never).
        generator: picks the encoder outputs restarted codes move to.
    """

    def __init__(self, quantizer: VectorQuantizer, *, ema: bool = True, decay: float = 0.99, eps: float = 1e-5,
                 restart_after: int | None = 20, generator: torch.Generator | None = None):
        self.weight = quantizer.embedding.weight
        self.ema, self.decay, self.eps, self.restart_after, self.generator = ema, decay, eps, restart_after, generator
        k = quantizer.num_embeddings
        self.weight.requires_grad_(not ema)
        #: N_i, the moving average of how many positions chose code i per step, and m_i, of their sum.
        self.cluster_size = torch.ones(k)
        self.embed_sum = self.weight.detach().clone()
        #: the last step each code was chosen at (restarts count as a use).
        self.last_used = torch.zeros(k, dtype=torch.int64)
        self.restarts = 0

    @torch.no_grad()
    def update(self, z: Tensor, codes: Tensor, step: int) -> int:
        """After an optimiser step: the EMA update (with ``ema``), then the restarts. ``z (N, D, h, w)`` are the
        encoder outputs the ``codes (N, h, w)`` were chosen for. Returns how many codes were restarted."""
        flat = z.detach().permute(0, 2, 3, 1).reshape(-1, z.shape[1]).float()  # (M, D)
        idx = codes.reshape(-1)
        k = len(self.cluster_size)
        counts = torch.bincount(idx, minlength=k).float()  # n_i
        self.last_used[counts > 0] = step
        if self.ema:
            sums = torch.zeros_like(self.embed_sum).index_add_(0, idx, flat)  # sum of the z assigned to each code
            self.cluster_size.mul_(self.decay).add_(counts, alpha=1 - self.decay)
            self.embed_sum.mul_(self.decay).add_(sums, alpha=1 - self.decay)
            n = self.cluster_size.sum()
            smoothed = (self.cluster_size + self.eps) / (n + k * self.eps) * n  # Laplace: no division by ~0
            self.weight.copy_(self.embed_sum / smoothed[:, None])
        if self.restart_after is None:
            return 0
        dead = (step - self.last_used >= self.restart_after).nonzero().flatten()
        if len(dead):
            pick = torch.randint(0, len(flat), (len(dead),), generator=self.generator)
            self.weight[dead] = flat[pick]
            self.embed_sum[dead] = flat[pick]  # with N_i = 1: e_i = m_i / N_i is the new vector
            self.cluster_size[dead] = 1.0
            self.last_used[dead] = step
            self.restarts += len(dead)
        return len(dead)


@dataclass
class StepLosses:
    total: Tensor
    reconstruction: Tensor
    codebook: Tensor
    commitment: Tensor


def vq_losses(model: VQModel, x: Tensor, *, ema: bool = True) -> tuple[StepLosses, Tensor, Tensor]:
    """One forward pass of the VQ-VAE objective on a batch ``x (N, 1, 16, 16)`` in ``[-1, 1]``.

    Returns the losses (reconstruction MSE in ``[-1, 1]`` units; the codebook term, without gradient and left out
    of ``total`` when the codebook is trained by EMA; ``beta`` times the commitment term), the encoder outputs
    ``z`` and their codes.
    """
    z = model.encode(x)  # (N, D, 4, 4)
    codes = model.quantize(z)  # (N, 4, 4), no gradient
    e = model.quantize.lookup(codes)  # (N, D, 4, 4), the codebook's gradient flows through here (ema=False)
    recon = model.decode_pixels(straight_through(z, e), quantize=False)
    reconstruction = F.mse_loss(recon, x)
    codebook = F.mse_loss(e, z.detach())
    commitment = BETA * F.mse_loss(z, e.detach())
    total = reconstruction + commitment + (0 if ema else codebook)
    return StepLosses(total, reconstruction, codebook.detach() if ema else codebook, commitment), z, codes


@torch.no_grad()
def evaluate(model: VQModel, x: Tensor, batch_size: int = 512) -> dict[str, float]:
    """Reconstruction error and codebook usage on ``x (N, 1, H, W)`` in ``[-1, 1]``: ``mse`` (pixels in
    ``[0, 1]``, reconstructions clamped as :meth:`VQModel.decode` returns them), ``psnr`` (dB, of the mean MSE),
    and the codebook's ``perplexity`` and ``fraction`` of codes used over all positions."""
    was_training = model.training
    model.eval()
    errors, codes = [], []
    for chunk in x.split(batch_size):
        h = model.encode(chunk)
        codes.append(model.quantize(h))
        target = (chunk + 1) / 2
        errors.append((model.decode(h).float() - target).pow(2).flatten(1).mean(1))
    model.train(was_training)
    mse = float(torch.cat(errors).mean())
    usage = model.codebook_usage(torch.cat(codes))
    return {"mse": mse, "psnr": 10 * math.log10(1 / mse), "perplexity": usage.perplexity, "fraction": usage.fraction,
            "used": usage.used}


def fit(*, steps: int = 2500, batch_size: int = 64, lr: float = 2e-3, seed: int = 0, ema: bool = True,
        restart_after: int | None = 20, config: dict[str, Any] | None = None, data: Tensor | None = None,
        progress: bool = True, log_every: int = 0) -> tuple[VQModel, list[dict[str, float]]]:
    """Train a VQ-VAE in memory and return it (in eval mode) with a log of the training losses.

    Args:
        steps, batch_size, lr: Adam with a cosine decay to 0 after a warm-up of ``min(100, steps // 10)`` steps.
        seed: seeds the initialisation, the batches and the restarts: same seed, same weights (same machine).
        ema, restart_after: the codebook's training (:class:`CodebookTrainer`).
        config: the VQModel config (default :data:`VQ_CONFIG`); data: training images (default the training
            split of :func:`load_digits_split`).
        log_every: every this many steps, the log gets ``{"step", "loss", "reconstruction", "perplexity",
            "restarts"}`` averaged since the previous entry (0: every ``steps // 10`` steps).
    """
    from tqdm.auto import tqdm

    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)  # the initialisation
    if data is None:
        data, _ = load_digits_split()
    model = VQModel(VQConfig.from_dict(config or VQ_CONFIG)).train()
    codebook = CodebookTrainer(model.quantize, ema=ema, restart_after=restart_after, generator=gen)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    warmup = min(100, steps // 10)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda i: min(1.0, (i + 1) / max(warmup, 1)) * 0.5 * (1 + math.cos(math.pi * i / steps)))

    log_every = log_every or max(1, steps // 10)
    log: list[dict[str, float]] = []
    window: dict[str, float] = {"loss": 0.0, "reconstruction": 0.0, "perplexity": 0.0, "restarts": 0.0}
    bar = tqdm(range(steps), desc="training vqvae-digits", disable=not progress)
    for step in bar:
        x = data[torch.randint(0, len(data), (batch_size,), generator=gen)]
        losses, z, codes = vq_losses(model, x, ema=ema)
        opt.zero_grad(set_to_none=True)
        losses.total.backward()
        opt.step()
        sched.step()
        window["restarts"] += codebook.update(z, codes, step)
        window["loss"] += losses.total.item()
        window["reconstruction"] += losses.reconstruction.item()
        window["perplexity"] += model.codebook_usage(codes).perplexity
        if (step + 1) % log_every == 0 or step + 1 == steps:
            n = (step % log_every) + 1
            log.append({"step": step + 1, **{k: v / n for k, v in window.items()}})
            window = dict.fromkeys(window, 0.0)
            bar.set_postfix(loss=f"{log[-1]['loss']:.4f}", perplexity=f"{log[-1]['perplexity']:.0f}")
    bar.close()
    model.quantize.embedding.weight.requires_grad_(True)
    return model.eval(), log


def train(out_dir: str | Path, *, steps: int = 2500, batch_size: int = 64, lr: float = 2e-3, seed: int = 0,
          threads: int | None = None, progress: bool = True) -> Path:
    """Train ``vqvae-digits`` (:func:`fit`) and write a Hub-layout folder: ``config.json`` and
    ``diffusion_pytorch_model.safetensors``, which ``zoo.create("vqvae-digits", weights=out_dir)`` and diffusers'
    ``VQModel.from_pretrained(out_dir)`` read.

    Args:
        out_dir: folder to write. The files go to a temporary sibling folder that then replaces ``out_dir``
            whole, so an interrupted run never leaves a mix of old and new files. An existing ``out_dir`` may
            hold only the files a run writes (:data:`OUTPUT_FILES`); anything else is refused before training.
        steps, batch_size, lr, seed: as :func:`fit`; the defaults made the shipped weights.
        threads: ``torch.set_num_threads`` for the run; None leaves PyTorch's default (all cores).
        progress: show a progress bar with the running loss and perplexity.
    Returns:
        ``out_dir`` as a Path.
    """
    from safetensors.torch import save_file

    out = output_folder(out_dir, OUTPUT_FILES)
    if threads is not None:
        torch.set_num_threads(threads)
    train_x, held_out = load_digits_split()
    start = time.perf_counter()
    model, _ = fit(steps=steps, batch_size=batch_size, lr=lr, seed=seed, data=train_x, progress=progress)
    seconds = time.perf_counter() - start
    scores = evaluate(model, held_out)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    metadata = {"format": "pt", "trained_by": "zoo train vqvae-digits", "steps": str(steps), "seed": str(seed),
                "seconds": f"{seconds:.0f}", "threads": str(torch.get_num_threads()),
                **{f"held_out_{k}": f"{v:.6g}" for k, v in scores.items()}}

    def write(folder: Path) -> None:
        save_file(state, str(folder / "diffusion_pytorch_model.safetensors"), metadata=metadata)
        (folder / "config.json").write_text(json.dumps(model.config.to_dict(), indent=2) + "\n")

    write_folder_atomically(out, write, OUTPUT_FILES)
    if progress:
        print(f"held-out digits: MSE {scores['mse']:.5f} (PSNR {scores['psnr']:.2f} dB), codebook perplexity "
              f"{scores['perplexity']:.1f}, {scores['used']} of {model.num_codes} codes used; {seconds:.0f} s")
    return Path(out_dir)


def save_comparison(model: VQModel, images: Tensor, path: str | Path, per_row: int = 8) -> Path:
    """Write ``images (N, 1, H, W)`` in ``[-1, 1]`` beside their reconstructions: rows alternate inputs and
    reconstructions, ``per_row`` digits each (the README's picture)."""
    from zoo.image import save_grid

    with torch.no_grad():
        recon = model.decode(model.encode(images)).float()
    inputs = (images + 1) / 2
    rows = [t for i in range(0, len(images), per_row) for t in (inputs[i:i + per_row], recon[i:i + per_row])]
    return save_grid(torch.cat(rows), path, nrow=per_row, scale=4)
