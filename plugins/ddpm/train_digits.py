"""Training ``ddpm-digits``: a small DDPM on scikit-learn's handwritten digits, zoo's offline default model.

The data set is the 1,797 greyscale 8x8 digits that ship inside scikit-learn (values 0..16), upsampled
bilinearly to 16x16 and scaled to [-1, 1]. The model is an ordinary diffusers-format DDPM: a small
``UNet2DModel`` predicting eps under the 1000-step linear beta schedule of Ho et al. 2020, so the folder
``train`` writes is read by the very builder that reads the google/ddpm-* checkpoints.

Training is the DDPM objective (Ho et al. 2020, Algorithm 1): draw t uniformly, noise the image,
regress the noise with MSE. What gets saved is an exponential moving average of the weights (decay 0.999),
as DDPMs are usually sampled (Ho et al. 2020 average with 0.9999 over far longer runs).

scikit-learn is needed only here (``pip install zoo[train]``), so it is imported inside :func:`train`.
"""
from __future__ import annotations

import copy
import json
import math
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from zoo.training import ema_update, output_folder, write_folder_atomically
from zoo.registry import DiscreteVPSchedule

from .unet import UNet2DConfig, UNet2DModel

IMAGE_SIZE = 16

#: Three resolutions (16, 8, 4) of 16/32/64 channels, one resnet per level (two on the way up), attention at 8x8
#: and in the middle: 0.65 M parameters (2.6 MB in float32). Chosen for CPU time: 32/64/64 channels cost 2.3x
#: as much per step, and 32/64/96 with two resnets per level about 5x, for a data set this small.
UNET_CONFIG: dict[str, Any] = {
    "sample_size": IMAGE_SIZE, "in_channels": 1, "out_channels": 1,
    "block_out_channels": [16, 32, 64], "layers_per_block": 1, "norm_num_groups": 8, "norm_eps": 1e-6,
    "down_block_types": ["DownBlock2D", "AttnDownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "AttnUpBlock2D", "UpBlock2D"],
    "attention_head_dim": None, "flip_sin_to_cos": True, "freq_shift": 0, "downsample_padding": 1,
    "act_fn": "silu", "center_input_sample": False, "mid_block_scale_factor": 1, "time_embedding_type": "positional",
}

#: diffusers' DDPMScheduler format: the linear schedule of Ho et al. 2020, eps prediction, x0 clipped to [-1, 1].
#: No x0 clipping: the samples are as good without it (64 DDIM-50 samples, two seeds: 98% and 100% recognised
#: with clipping, 100% and 100% without), and a clipped step cannot be undone, which would keep
#: ``sample(noise=invert(x))`` from returning x with the defaults.
SCHEDULER_CONFIG: dict[str, Any] = {
    "_class_name": "DDPMScheduler", "num_train_timesteps": 1000, "beta_schedule": "linear",
    "beta_start": 0.0001, "beta_end": 0.02, "trained_betas": None, "prediction_type": "epsilon",
    "clip_sample": False, "clip_sample_range": 1.0, "variance_type": "fixed_small",
}


def load_digits_images(size: int = IMAGE_SIZE) -> tuple[Tensor, Tensor]:
    """scikit-learn's digits as ``(1797, 1, size, size)`` float32 in [-1, 1], and their labels ``(1797,)``."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32)[:, None] / 16.0  # (N, 1, 8, 8) in [0, 1]
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False).clamp(0, 1)
    return x * 2 - 1, torch.tensor(digits.target)


#: the files :func:`train` writes, and all an existing output folder may hold for it to be replaced.
OUTPUT_FILES = ("config.json", "scheduler_config.json", "diffusion_pytorch_model.safetensors")


def train(out_dir: str | Path, *, steps: int = 4000, batch_size: int = 64, lr: float = 2e-3,
          ema_decay: float = 0.999, seed: int = 0, threads: int | None = None, progress: bool = True) -> Path:
    """Train the digits DDPM and write a Hub-layout folder: config.json, scheduler_config.json and
    diffusion_pytorch_model.safetensors (the EMA weights).

    Args:
        out_dir: folder to write. The files go to a temporary sibling folder that then replaces ``out_dir``
            whole, so an interrupted run never leaves a mix of old and new files. An existing ``out_dir`` may
            hold only the files a run writes (:data:`OUTPUT_FILES`); anything else is refused before training.
        steps: optimiser steps. The default (4,000 of batch 64) runs at about 7 steps/s on one core of an idle
            2-core CPU, so about 10 minutes; the shipped weights took 19 minutes on one thread of a 2-core
            machine busy with other work.
        batch_size, lr: AdamW with a cosine decay to 0 after a 200-step warm-up.
        ema_decay: decay of the weight average that is saved.
        seed: seeds the initialisation, batches, timesteps and noise: same seed, same weights (same machine).
        threads: ``torch.set_num_threads`` for the run; None leaves PyTorch's default (all cores).
        progress: show a progress bar with the running loss.
    Returns:
        ``out_dir`` as a Path.
    """
    from safetensors.torch import save_file
    from tqdm.auto import tqdm

    out = output_folder(out_dir, OUTPUT_FILES)
    if threads is not None:
        torch.set_num_threads(threads)
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)  # the initialisation

    data, _ = load_digits_images()
    # abar_t in float32 as diffusers computes it: the schedule the saved scheduler config is read back as
    abar = DiscreteVPSchedule.from_scheduler_config(SCHEDULER_CONFIG).alphas_cumprod.to(torch.float32)
    model = UNet2DModel(UNet2DConfig.from_dict(UNET_CONFIG)).train()
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    warmup = min(200, steps // 10)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda i: min(1.0, (i + 1) / max(warmup, 1)) * 0.5 * (1 + math.cos(math.pi * i / steps)))

    start = time.perf_counter()
    bar = tqdm(range(steps), desc="training ddpm-digits", disable=not progress)
    running = None
    for step in bar:
        x0 = data[torch.randint(0, len(data), (batch_size,), generator=gen)]
        t = torch.randint(0, len(abar), (batch_size,), generator=gen)
        eps = torch.randn(x0.shape, generator=gen)
        a = abar[t].reshape(-1, 1, 1, 1)
        x_t = a.sqrt() * x0 + (1 - a).sqrt() * eps
        loss = F.mse_loss(model(x_t, t), eps)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        ema_update(ema, model, step, ema_decay)
        running = loss.item() if running is None else 0.98 * running + 0.02 * loss.item()
        if step % 50 == 0:
            bar.set_postfix(loss=f"{running:.4f}")
    bar.close()
    seconds = time.perf_counter() - start

    state = {k: v.contiguous() for k, v in ema.state_dict().items()}

    def write(folder: Path) -> None:
        save_file(state, str(folder / "diffusion_pytorch_model.safetensors"),
                  metadata={"format": "pt", "trained_by": "zoo train ddpm-digits", "steps": str(steps),
                            "seed": str(seed), "seconds": f"{seconds:.0f}", "threads": str(torch.get_num_threads())})
        (folder / "config.json").write_text(json.dumps(UNet2DConfig.from_dict(UNET_CONFIG).to_dict(), indent=2) + "\n")
        (folder / "scheduler_config.json").write_text(json.dumps(SCHEDULER_CONFIG, indent=2) + "\n")

    write_folder_atomically(out, write, OUTPUT_FILES)
    return Path(out_dir)
