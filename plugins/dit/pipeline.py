"""A DiT repo's files -> a class-conditional :class:`zoo.diffusion.DiffusionPipeline` over the VAE's latents.

The transformer (``model.py``) predicts eps and a learned variance; the denoiser keeps eps. Sampling, guidance
and the decode at the end are the pipeline's, as for every latent model (``zoo.plugins.ddpm.model.first_stage``).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from zoo.diffusion import ClassConditioner, DiffusionPipeline
from zoo.loader import load_component
from zoo.plugins.ddpm.model import first_stage, sampler_defaults, scheduler_config
from zoo.registry import Denoiser, DiscreteVPSchedule, ModelEntry
from zoo.registry.errors import ArgumentTypeError, InvalidInputError
from zoo.weights import read_json

from .model import DiT


class DiTDenoiser(Denoiser):
    """A DiT with its DDPM schedule: ``forward(x_t, t, class_labels=...)`` -> eps ``(N, C, H, W)`` (the learned
    variance half of the output dropped)."""

    prediction = "eps"

    def __init__(self, transformer: DiT, schedule: DiscreteVPSchedule):
        super().__init__()
        self.transformer = transformer
        self.schedule = schedule

    def forward(self, x_t: Tensor, t: Tensor, class_labels: Tensor | None = None, **cond: Any) -> Tensor:
        if cond:
            raise ArgumentTypeError(f"DiT takes class_labels only; got conditioning {sorted(cond)}")
        if class_labels is None:
            raise InvalidInputError("DiT is class-conditional: pass labels= to sample (ids 0..999 or ImageNet names)")
        out = self.transformer(x_t, t, class_labels)
        return out[:, :x_t.shape[1]]


def _id2label(entry: ModelEntry, files: Path | None) -> dict[int, str]:
    """The repo's ``model_index.json`` ``id2label`` (DiTPipeline's), else the packaged ImageNet names."""
    index = Path(files) / "model_index.json" if files is not None else None
    if index is not None and index.is_file() and "id2label" in read_json(index):
        return {int(k): v for k, v in read_json(index)["id2label"].items()}
    from timm.data import ImageNetInfo  # the same 1000 strings as the real model_index.json

    return dict(enumerate(ImageNetInfo("imagenet-1k").label_descriptions()))


def build_dit(entry: ModelEntry, files: Path | None, *, device: torch.device | str = "cpu",
              dtype: torch.dtype = torch.float32) -> DiffusionPipeline:
    """The registry's builder for DiT entries: files in the repo's layout (None: random weights) -> a pipeline
    over the VAE's latents, class-conditional."""
    sched_cfg = scheduler_config(entry, files)
    transformer = load_component(entry.component("transformer"), files, device=device, dtype=dtype)
    cfg = transformer.config
    denoiser = DiTDenoiser(transformer, DiscreteVPSchedule.from_scheduler_config(sched_cfg))
    conditioner = ClassConditioner(cfg.num_embeds_ada_norm, null_label=cfg.num_embeds_ada_norm,
                                   id2label=_id2label(entry, files))
    return DiffusionPipeline(
        denoiser, (cfg.in_channels, cfg.sample_size, cfg.sample_size),
        autoencoder=first_stage(entry, files, device=device, dtype=dtype), conditioner=conditioner,
        sampler_defaults=sampler_defaults(sched_cfg), scheduler_config=sched_cfg,
        default_sampler=entry.config.get("default_sampler"), default_steps=entry.config.get("default_steps", 50),
        invert_sampler=entry.config.get("invert_sampler"), name=entry.name)
