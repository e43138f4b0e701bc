"""Training the digits flows: ``nice-digits``, ``realnvp-digits``, ``glow-digits`` (``zoo train NAME``).

Data: scikit-learn's 1,797 handwritten digits at their own 8x8 resolution, 17 levels (``v / 16`` as images in
[0, 1]), split by position: the first 1,500 train, the last 297 (:data:`HELD_OUT`) are held out and never seen
in training; held-out bits/dim are measured on them. Each batch is dequantized afresh with uniform noise
(``ImageFlow.dequantize``: ``x = (v + u - 1/2) / 16``), and the loss is the negative log-likelihood in bits/dim
(``bits_per_dim`` with 17 bins of width 1/16), which bounds the discrete likelihood of the digits from above.

Optimiser: Adam with a linear warm-up and a cosine decay to 0, gradient norm clipped at 50; Glow's actnorm
layers are initialised on a first batch of 512 dequantized training images (data-dependent initialisation).

scikit-learn is needed only for the data (``pip install zoo[train]``), so it is imported inside the functions.
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path

import torch
from torch import Tensor

from zoo import training
from zoo.training import refuse_shipped

from .base import ImageFlow, num_parameters

#: digits at positions >= TRAIN are held out (297 images).
TRAIN = 1500
HELD_OUT = slice(TRAIN, None)
#: the files a training run writes, and all an existing output folder may hold for it to be replaced.
OUTPUT_FILES = ("config.json", "model.safetensors")


def load_digits_split() -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(train (1500, 1, 8, 8), train labels, held-out (297, 1, 8, 8), held-out labels)``: images in [0, 1] on
    the 17-level grid ``v / 16``, float32."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32)[:, None] / 16.0
    y = torch.tensor(digits.target)
    return x[:TRAIN], y[:TRAIN], x[HELD_OUT], y[HELD_OUT]


def check_output_dir(out: Path) -> None:
    """Refuse a target that is not a folder or holds files training does not write (it is replaced whole)."""
    training.check_output_dir(out, OUTPUT_FILES)


def save_model(out: Path, model: torch.nn.Module, config: dict, metadata: dict[str, str]) -> None:
    """``config.json`` + ``model.safetensors``, written atomically."""
    from safetensors.torch import save_file

    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}

    def write(folder: Path) -> None:
        save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt", **metadata})
        (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n")

    training.write_folder_atomically(out, write, OUTPUT_FILES)


def cosine_lr(opt: torch.optim.Optimizer, steps: int, warmup: int) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(
        opt, lambda i: min(1.0, (i + 1) / max(warmup, 1)) * 0.5 * (1 + math.cos(math.pi * min(i, steps) / steps)))


@torch.no_grad()
def held_out_bits_per_dim(model: ImageFlow, images: Tensor, draws: int = 8, seed: int = 0) -> float:
    """Mean bits/dim of ``images`` (on the 17-level grid), each averaged over ``draws`` seeded dequantizations."""
    was = model.training
    model.eval()
    bpd = float(model.image_bits_per_dim(images, draws=draws, seed=seed).mean())
    model.train(was)
    return bpd


def train_flow(name: str, model: ImageFlow, out_dir: str | Path, *, shipped: Path, steps: int, batch_size: int = 128,
               lr: float = 1e-3, seed: int = 0, threads: int | None = 1, eval_draws: int = 8,
               progress: bool = True) -> Path:
    """Train ``model`` (built by the caller after seeding) by maximum likelihood on the digits; write its folder.

    Args:
        name: the entry's name, for the progress bar and the file's metadata.
        out_dir: the folder to write (config.json + model.safetensors), replaced whole at the end; never the
            packaged ``shipped`` folder.
        steps, batch_size, lr: Adam, 5% linear warm-up, cosine decay.
        seed: seeds batches and dequantization noise (the caller seeds the initialisation with it too).
        threads: ``torch.set_num_threads`` for the run (1: what the README's times were measured with).
        eval_draws: dequantization draws per held-out image for the bits/dim recorded in the file's metadata.
    Returns:
        ``out_dir`` as a Path; the metadata of model.safetensors records steps, seed, seconds and held-out bits/dim.
    """
    from tqdm.auto import tqdm

    out = training.output_folder(out_dir, OUTPUT_FILES)  # the link's target, checked before training
    refuse_shipped(out, shipped)
    if threads is not None:
        torch.set_num_threads(threads)
    gen = torch.Generator().manual_seed(seed)
    train, _, held, _ = load_digits_split()

    model.train()
    first = train[torch.randperm(len(train), generator=gen)[:512]]
    model(model.dequantize(first, gen))  # data-dependent initialisation (actnorm), a no-op for other layers
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = cosine_lr(opt, steps, max(1, steps // 20))
    start = time.perf_counter()
    bar = tqdm(range(steps), desc=f"training {name}", disable=not progress)
    running = None
    for step in bar:
        x = model.dequantize(train[torch.randint(0, len(train), (batch_size,), generator=gen)], gen)
        loss = model.bits_per_dim(x).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 50.0)
        opt.step()
        sched.step()
        running = loss.item() if running is None else 0.98 * running + 0.02 * loss.item()
        if step % 25 == 0:
            bar.set_postfix(bpd=f"{running:.3f}")
    bar.close()
    seconds = time.perf_counter() - start
    model.eval()
    bpd = held_out_bits_per_dim(model, held, draws=eval_draws)
    metadata = {"trained_by": f"zoo train {name}", "steps": str(steps), "batch_size": str(batch_size),
                "seed": str(seed), "seconds": f"{seconds:.0f}", "threads": str(torch.get_num_threads()),
                "held_out_bits_per_dim": f"{bpd:.4f}", "parameters": str(num_parameters(model))}
    if progress:
        print(f"{name}: held-out {bpd:.3f} bits/dim after {steps} steps ({seconds:.0f} s)")
    save_model(out, model, model.config.to_dict(), metadata)
    return Path(out_dir)
