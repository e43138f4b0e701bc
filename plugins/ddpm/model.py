"""From a diffusers-format DDPM folder to a ready :class:`zoo.diffusion.DiffusionPipeline`.

A folder holds ``config.json`` (the U-Net), ``scheduler_config.json`` (betas, prediction type, clipping,
variance) and ``diffusion_pytorch_model.safetensors`` or ``.bin``, either at its root (the google/ddpm-* repos,
zoo's ddpm-digits) or in ``unet/`` and ``scheduler/`` subfolders (what ``DDPMPipeline.save_pretrained`` writes).
The U-Net is one component (``zoo.plugins.ddpm.unet_component``) that ``zoo.loader`` builds and loads like any other.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from zoo.diffusion import DiffusionPipeline
from zoo.loader import load_component
from zoo.registry import Autoencoder, Denoiser, DiscreteVPSchedule, ModelEntry
from zoo.registry.errors import ArgumentTypeError, ConfigError
from zoo.weights import read_json

from .unet import UNet2DModel

#: diffusers' ``prediction_type`` -> zoo's name for the same parameterisation.
PREDICTION_TYPES = {"epsilon": "eps", "v_prediction": "v", "sample": "x0"}


def flatten_conv_attention(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """Very old conversions stored the attention projections as 1x1 convs ``(C, C, 1, 1)``; the network uses
    Linear ``(C, C)``. (A reshape, which a rename table cannot say.)"""
    return {k: v.flatten(1) if ".attentions." in k and k.endswith(".weight") and v.ndim == 4 else v
            for k, v in state_dict.items()}


class DDPMDenoiser(Denoiser):
    """A DDPM U-Net with the schedule it was trained on and what it predicts (``eps`` for google/ddpm-*)."""

    def __init__(self, unet: UNet2DModel, schedule: DiscreteVPSchedule, prediction: str = "eps"):
        super().__init__()
        self.unet = unet
        self.schedule = schedule
        self.prediction = prediction  # type: ignore[assignment]

    def forward(self, x_t: Tensor, t: Tensor, **cond: Any) -> Tensor:
        """``x_t (N, C, H, W)`` at DDPM step ``t (N,)`` -> the U-Net's output ``(N, C, H, W)``."""
        if cond:
            raise ArgumentTypeError(f"DDPM models are unconditional; got conditioning {sorted(cond)}")
        return self.unet(x_t, t)


def prediction_from_config(scheduler_config: dict[str, Any]) -> str:
    """diffusers' ``prediction_type`` (absent means epsilon, as in every pre-0.8 scheduler config) -> zoo's."""
    kind = scheduler_config.get("prediction_type") or "epsilon"
    if kind not in PREDICTION_TYPES:
        raise ConfigError(f"scheduler_config.json: unknown prediction_type {kind!r} "
                         f"(supported: {', '.join(PREDICTION_TYPES)})")
    return PREDICTION_TYPES[kind]


#: the ``beta_schedule`` values zoo computes (``zoo.registry.DiscreteVPSchedule.from_betas``), as diffusers does.
BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")
#: diffusers' ``variance_type`` values zoo's ddpm sampler reproduces (fixed_small_log is fixed_small's std).
VARIANCE_TYPES = ("fixed_small", "fixed_small_log", "fixed_large")


def check_scheduler_config(config: dict[str, Any], source: str = "scheduler_config.json") -> None:
    """Refuse a scheduler config zoo cannot sample as diffusers would, naming the key, its value and what zoo does.

    zoo's schedule and samplers implement diffusers' DDPM/DDIM arithmetic for the beta schedules in
    :data:`BETA_SCHEDULES` (or explicit ``trained_betas``) and the fixed variances in :data:`VARIANCE_TYPES`. A
    config asking for more would load and then sample wrongly, so it fails here instead:

    * ``rescale_betas_zero_snr: true`` (Lin et al. 2023) changes the betas (zero SNR at the last step);
    * ``thresholding: true`` (Imagen's dynamic thresholding) replaces the x0 clipping;
    * ``variance_type`` ``learned`` / ``learned_range``: the U-Net predicts its variance as extra output channels
      (6 for RGB), which zoo's samplers do not read;
    * a ``beta_schedule`` not in :data:`BETA_SCHEDULES` (diffusers' ``sigmoid``, ``exponential``, ...).

    (``timestep_spacing`` is honoured by the schedule itself.)
    """
    def refuse(key: str, why: str) -> None:
        raise ConfigError(f"{source}: {key}={json.dumps(config[key])} is not supported: {why}")

    def number(key: str, low: float, high: float, integer: bool = False) -> None:
        value = config.get(key)
        if value is None:
            return
        kind = int if integer else (int, float)
        if isinstance(value, bool) or not isinstance(value, kind) or not low <= value <= high:
            refuse(key, f"expected {'an integer' if integer else 'a number'} in {low}..{high}")

    number("num_train_timesteps", 1, 100_000, integer=True)
    number("beta_start", 1e-12, 0.999)
    number("beta_end", 1e-12, 0.999)
    number("steps_offset", 0, int(config.get("num_train_timesteps") or 1000) - 1, integer=True)
    number("clip_sample_range", 1e-6, 1e6)
    betas = config.get("trained_betas")
    if betas is not None:
        if not isinstance(betas, list) or not 1 <= len(betas) <= 100_000 or \
                not all(isinstance(b, (int, float)) and not isinstance(b, bool) and 0 < b < 1 for b in betas):
            raise ConfigError(f"{source}: trained_betas must be a list of 1..100000 numbers in (0, 1)")
    for key in ("clip_sample", "set_alpha_to_one", "rescale_betas_zero_snr", "thresholding"):
        if key in config and not isinstance(config[key], bool):
            refuse(key, "expected true or false")
    for key in ("beta_schedule", "variance_type", "prediction_type", "timestep_spacing"):
        if config.get(key) is not None and not isinstance(config[key], str):
            refuse(key, "expected a string")

    if config.get("rescale_betas_zero_snr"):
        refuse("rescale_betas_zero_snr", "zoo computes the betas without the zero-terminal-SNR rescaling "
               "(supported: false)")
    if config.get("thresholding"):
        refuse("thresholding", "zoo clips x0 to [-clip_sample_range, clip_sample_range] (clip_sample) but does not "
               "implement dynamic thresholding (supported: false)")
    variance = config.get("variance_type")
    if variance in ("learned", "learned_range"):
        refuse("variance_type", "the U-Net predicts its variance as extra output channels, which zoo's samplers do "
               f"not read (supported: {', '.join(VARIANCE_TYPES)})")
    if variance is not None and variance not in VARIANCE_TYPES:
        refuse("variance_type", f"supported: {', '.join(VARIANCE_TYPES)}")
    if config.get("trained_betas") is None and config.get("beta_schedule", "linear") not in BETA_SCHEDULES:
        refuse("beta_schedule", f"zoo computes {', '.join(BETA_SCHEDULES)} (or explicit trained_betas)")


def sampler_defaults(scheduler_config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """What the checkpoint's scheduler config says about sampling, as options of zoo's ddim/ddpm samplers.

    diffusers' DDPM and DDIM schedulers clip the x0 estimate to ``[-clip_sample_range, clip_sample_range]``
    when ``clip_sample`` (default true); DDPM's ``variance_type`` picks the posterior variance.
    """
    clip = float(scheduler_config.get("clip_sample_range", 1.0)) if scheduler_config.get("clip_sample", True) else None
    variance = scheduler_config.get("variance_type") or "fixed_small"
    # fixed_small_log is fixed_small computed through a log: the same standard deviation.
    variance = "fixed_small" if variance == "fixed_small_log" else variance
    return {"ddim": {"clip_denoised": clip}, "ddpm": {"variance": variance, "clip_denoised": clip}}


def scheduler_config(entry: ModelEntry, files: Path | None) -> dict[str, Any]:
    """The checkpoint's ``scheduler_config.json`` (at the root, or in ``scheduler/``), checked; without files the
    entry's packaged copy (``entry.config["scheduler"]``)."""
    if files is None:
        config, source = dict(entry.config["scheduler"]), f"{entry.name}'s packaged scheduler config"
    else:
        path = Path(files) / "scheduler_config.json"
        path = path if path.is_file() or not (Path(files) / "scheduler" / path.name).is_file() else \
            Path(files) / "scheduler" / path.name
        config, source = read_json(path), str(path)
    check_scheduler_config(config, source)
    return config


def first_stage(entry: ModelEntry, files: Path | None, *, device: torch.device | str,
                dtype: torch.dtype) -> Autoencoder | None:
    """The latent model's autoencoder: the component that ``entry.config["autoencoder"]`` names (any component
    whose module is a :class:`~zoo.registry.Autoencoder`), loaded like the U-Net; None for a pixel-space model.

    The U-Net then denoises that autoencoder's latents: the pipeline draws its noise in ``(in_channels,
    sample_size, sample_size)`` of the U-Net's config and decodes the result at the end (LDM, Rombach et al. 2022).
    """
    name = entry.config.get("autoencoder")
    if name is None:
        return None
    autoencoder = load_component(entry.component(name), files, device=device, dtype=dtype)
    if not isinstance(autoencoder, Autoencoder):
        raise ArgumentTypeError(f"{entry.name}: component {name!r} builds a {type(autoencoder).__name__}, not an Autoencoder")
    autoencoder.name = f"{entry.name} {name}"
    return autoencoder


def build_pipeline(entry: ModelEntry, files: Path | None, *, device: torch.device | str = "cpu",
                   dtype: torch.dtype = torch.float32) -> DiffusionPipeline:
    """The registry's builder for every DDPM entry: files in Hub layout -> a DiffusionPipeline.

    ``files=None`` (``zoo.create(..., pretrained=False)``) builds the architecture with random weights from
    the published configs the entry carries.
    """
    sched_cfg = scheduler_config(entry, files)  # checked before any weight is read
    unet = load_component(entry.component("unet"), files, device=device, dtype=dtype)
    denoiser = DDPMDenoiser(unet, DiscreteVPSchedule.from_scheduler_config(sched_cfg),
                            prediction_from_config(sched_cfg))
    cfg = unet.config
    return DiffusionPipeline(
        denoiser, (cfg.in_channels, *cfg.image_size), autoencoder=first_stage(entry, files, device=device, dtype=dtype),
        sampler_defaults=sampler_defaults(sched_cfg),
        scheduler_config=sched_cfg, default_sampler=entry.config.get("default_sampler"),
        default_steps=entry.config.get("default_steps", 50), invert_sampler=entry.config.get("invert_sampler"),
        name=entry.name)
