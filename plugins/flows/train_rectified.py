"""Training ``rectified-flow-digits`` (1-rectified flow) and ``rectified-flow-digits-2`` (reflow).

Data: the 1,500 training digits of ``train_digits.load_digits_split`` (the 297 held-out ones are never seen), at
8x8, as pixels in [-1, 1] (``2 v / 16 - 1``; no dequantization: these models are judged by their samples).

* 1-RF: ``x_t = (1 - t) x0 + t eps`` with x0 a training digit, eps ~ N(0, I) independent, t ~ U[0, 1]; the network
  regresses the velocity ``eps - x0`` (MSE). Adam, warm-up and cosine decay, EMA of the weights (0.999) saved.
* 2-RF (reflow, Liu et al. 2022, section 2.2): ``pairs`` noise draws ``eps`` are pushed through the 1-RF ODE by
  the pipeline's Heun sampler (``pair_steps`` steps) to ``x0_hat``; the network, initialised from 1-RF, is
  trained on the same loss with the coupled pairs ``(x0_hat, eps)`` in place of independent ones. The teacher is
  the shipped ``rectified-flow-digits`` unless ``teacher=`` names another folder.
"""
from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from zoo.training import ema_update, refuse_shipped

from .rectified_flow import VelocityConfig, VelocityUNet
from .train_digits import check_output_dir, cosine_lr, load_digits_split, save_model


def _fit(name: str, model: VelocityUNet, batches, *, steps: int, lr: float, ema_decay: float, gen: torch.Generator,
         progress: bool) -> tuple[VelocityUNet, float]:
    """The rectified-flow regression; ``batches(step) -> (x0, eps)``. Returns the EMA network and seconds."""
    from tqdm.auto import tqdm

    model.train()
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = cosine_lr(opt, steps, max(1, steps // 20))
    start = time.perf_counter()
    bar = tqdm(range(steps), desc=f"training {name}", disable=not progress)
    running = None
    for step in bar:
        x0, eps = batches()
        t = torch.rand(len(x0), generator=gen)
        tt = t.reshape(-1, 1, 1, 1)
        x_t = (1 - tt) * x0 + tt * eps
        loss = F.mse_loss(model(x_t, t * 1000), eps - x0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        ema_update(ema, model, step, ema_decay)
        running = loss.item() if running is None else 0.98 * running + 0.02 * loss.item()
        if step % 25 == 0:
            bar.set_postfix(loss=f"{running:.4f}")
    bar.close()
    return ema, time.perf_counter() - start


def train_rectified_flow(out_dir: str | Path, *, shipped: Path, steps: int = 1000, batch_size: int = 64,
                         lr: float = 2e-3, ema_decay: float = 0.999, seed: int = 0, threads: int | None = 1,
                         progress: bool = True, name: str = "rectified-flow-digits") -> Path:
    """Train 1-rectified flow on the training digits; write ``config.json`` + ``model.safetensors`` (EMA) to
    ``out_dir`` atomically (never the packaged ``shipped`` folder)."""
    out = Path(out_dir)
    refuse_shipped(out, shipped)
    check_output_dir(out)
    if threads is not None:
        torch.set_num_threads(threads)
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    train, _, _, _ = load_digits_split()
    data = train * 2 - 1
    model = VelocityUNet(VelocityConfig())

    def batches() -> tuple[Tensor, Tensor]:
        x0 = data[torch.randint(0, len(data), (batch_size,), generator=gen)]
        return x0, torch.randn(x0.shape, generator=gen)

    ema, seconds = _fit(name, model, batches, steps=steps, lr=lr, ema_decay=ema_decay, gen=gen, progress=progress)
    save_model(out, ema, ema.config.to_dict(), {"trained_by": f"zoo train {name}", "steps": str(steps),
               "batch_size": str(batch_size), "seed": str(seed), "seconds": f"{seconds:.0f}",
               "threads": str(torch.get_num_threads())})
    return Path(out_dir)


@torch.inference_mode()
def reflow_pairs(teacher: Any, pairs: int, *, steps: int, seed: int, batch: int = 1000) -> tuple[Tensor, Tensor]:
    """``(x0_hat, eps)``, each ``(pairs, C, H, W)``: noise pushed through the teacher pipeline's ODE (Heun)."""
    g = torch.Generator().manual_seed(seed + 1)
    eps = torch.randn(pairs, *teacher.sample_shape, generator=g)
    outs = [teacher.sample(len(e), sampler="heun", steps=steps, noise=e, output="raw", progress=False)
            for e in eps.split(batch)]
    return torch.cat(outs).float(), eps


def train_reflow(out_dir: str | Path, *, shipped: Path, teacher: str | Path | None = None, steps: int = 600,
                 pairs: int = 3000, pair_steps: int = 8, batch_size: int = 64, lr: float = 1e-3,
                 ema_decay: float = 0.999, seed: int = 0, threads: int | None = 1, progress: bool = True,
                 name: str = "rectified-flow-digits-2") -> Path:
    """Reflow: train 2-rectified flow on (ODE_1(eps), eps) pairs of the 1-RF ``teacher`` (default: the shipped
    rectified-flow-digits), starting from its weights; write the folder atomically."""
    import zoo

    out = Path(out_dir)
    refuse_shipped(out, shipped)
    check_output_dir(out)
    if threads is not None:
        torch.set_num_threads(threads)
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    pipe = zoo.create("rectified-flow-digits", weights=teacher, device="cpu")
    start = time.perf_counter()
    x0_hat, eps = reflow_pairs(pipe, pairs, steps=pair_steps, seed=seed)
    pair_seconds = time.perf_counter() - start
    model = copy.deepcopy(pipe.denoiser.net).float()

    def batches() -> tuple[Tensor, Tensor]:
        i = torch.randint(0, pairs, (batch_size,), generator=gen)
        return x0_hat[i], eps[i]

    ema, seconds = _fit(name, model, batches, steps=steps, lr=lr, ema_decay=ema_decay, gen=gen, progress=progress)
    save_model(out, ema, ema.config.to_dict(), {
        "trained_by": f"zoo train {name}", "steps": str(steps), "batch_size": str(batch_size), "seed": str(seed),
        "pairs": str(pairs), "pair_steps": str(pair_steps), "pair_seconds": f"{pair_seconds:.0f}",
        "seconds": f"{seconds:.0f}", "threads": str(torch.get_num_threads()),
        "teacher": str(teacher) if teacher else "rectified-flow-digits (shipped)"})
    return Path(out_dir)
