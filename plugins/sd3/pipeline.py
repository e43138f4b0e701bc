"""SD3 as a zoo :class:`~zoo.diffusion.DiffusionPipeline`: the MMDiT as a flow-velocity Denoiser on the flow
schedule of its scheduler config (shift 3.0), the 16-channel VAE in the autoencoder slot and the three text
encoders in the conditioner slot.

Nothing of the sampling is SD3's own: ``flow-euler`` on ``FlowSchedule``'s grid is FlowMatchEulerDiscreteScheduler
step for step (``x += (sigma_next - sigma) * v``, timesteps ``sigma * 1000``), and classifier-free guidance is the
pipeline's ``D = D_u + w (D_c - D_u)``, which for a velocity model is diffusers' ``v_u + w (v_c - v_u)``. What this
file adds is the interface diffusers users know: ``height=``/``width=`` in pixels (any multiple of 16 up to the
position table's 1536), ``guidance_scale=7.0`` by default, ``output="latent"``, and a model-level CPU offload
(:meth:`SD3Pipeline.enable_model_cpu_offload`).
"""
from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import Tensor

from zoo.diffusion import DiffusionPipeline
from zoo.loader import load_component, read_component_config
from zoo.plugins.autoencoders.kl import run_dtype
from zoo.registry import Denoiser, FlowSchedule, ModelEntry
from zoo.registry.errors import ArgumentTypeError, InvalidInputError
from zoo.weights import read_json

from . import TEXT_ENCODERS
from .mmdit import MMDiT
from .t5 import T5Tokenizer
from .text import SD3Conditioner, clip_tokenizer


class SD3Denoiser(Denoiser):
    """The MMDiT predicting the flow velocity ``eps - x0`` at model time ``t = 1000 sigma``."""

    prediction = "flow"

    def __init__(self, transformer: MMDiT, schedule: FlowSchedule) -> None:
        super().__init__()
        self.transformer = transformer
        self.schedule = schedule

    def forward(self, x_t: Tensor, t: Tensor, encoder_hidden_states: Tensor | None = None,
                pooled_projections: Tensor | None = None, **cond: Any) -> Tensor:
        """``x_t (N, 16, h, w)``, ``t (N,)``, text tokens ``(N, L, 4096)``, pooled ``(N, 2048)`` -> velocity."""
        if cond or encoder_hidden_states is None or pooled_projections is None:
            raise ArgumentTypeError(f"SD3 is conditioned on encoder_hidden_states= and pooled_projections= (what its "
                                    f"conditioner makes from prompt=); got {sorted(cond) or 'neither'}")
        dtype = self.model_dtype
        return self.transformer(x_t, t, encoder_hidden_states.to(x_t.device, dtype),
                                pooled_projections.to(x_t.device, dtype))


class SD3Pipeline(DiffusionPipeline):
    """A :class:`DiffusionPipeline` whose sample size is chosen per call in pixels, as diffusers' SD3 takes it.

    ``sample(n, prompt=..., negative_prompt="", guidance_scale=7.0, steps=28, height=1024, width=1024,
    generator=..., noise=None, output="images" | "latent")``; every other argument is the DiffusionPipeline's
    (any sampler, ``shift=``, ``callback=``...). ``noise`` is the ``(n, 16, height / 8, width / 8)`` starting
    noise (diffusers' ``latents=``); given, it also sets the size.
    """

    #: pixels per latent pixel times the transformer's patch size: heights and widths are multiples of this.
    multiple = 16

    @contextmanager
    def _size(self, shape: tuple[int, int, int]) -> Iterator[None]:
        saved, self.sample_shape = self.sample_shape, shape
        try:
            yield
        finally:
            self.sample_shape = saved

    def latent_shape(self, height: int | None, width: int | None, noise: Tensor | None) -> tuple[int, int, int]:
        """``(16, height / 8, width / 8)`` for a size in pixels (default: the checkpoint's, 1024x1024)."""
        channels, h, w = self.sample_shape
        down = self.autoencoder.downscale
        if noise is not None and height is None and width is None:
            return tuple(noise.shape[1:])  # type: ignore[return-value]
        height, width = height or h * down, width or w * down
        if height % self.multiple or width % self.multiple or height <= 0 or width <= 0:
            raise InvalidInputError(f"height and width must be positive multiples of {self.multiple} pixels (the VAE's "
                                    f"{down}x times the transformer's 2x2 patches), got {height}x{width}")
        return (channels, height // down, width // down)

    # -- memory: each component on the accelerator only while it runs -----------------------------------------

    def enable_model_cpu_offload(self, device: str | torch.device = "cuda") -> SD3Pipeline:
        """Keep every component on the CPU and move each to ``device`` only while it runs (the text encoders one
        after another, then the transformer for the whole sampling loop, then the VAE): diffusers'
        ``enable_model_cpu_offload``. The peak is the largest component plus its activations (T5-XXL in float16,
        9.5 GB, then the 4.2 GB transformer), so SD3-medium fits a 16 GB GPU. Returns the pipeline."""
        self.to("cpu")
        self.offload_device = torch.device(device)
        if self.conditioner is not None:
            self.conditioner.offload_device = self.offload_device
        return self

    def disable_model_cpu_offload(self) -> SD3Pipeline:
        self.offload_device = None
        if self.conditioner is not None:
            self.conditioner.offload_device = None
        return self

    offload_device: torch.device | None = None

    @torch.inference_mode()
    def sample(self, n: int, *, height: int | None = None, width: int | None = None, guidance_scale: float = 7.0,
               noise: Tensor | None = None, output: str = "images", **options: Any) -> Tensor:
        """``n`` images ``(n, 3, height, width)`` in [0, 1] (``output="latent"``: the denoised latents)."""
        shape = self.latent_shape(height, width, noise)
        raw = "raw" if output == "latent" else output
        with self._size(shape):
            if self.offload_device is None:
                return super().sample(n, guidance_scale=guidance_scale, noise=noise, output=raw, **options)
            if self.conditioner is not None and options.get("cond") is None:
                inputs = {k: options.pop(k) for k in self.conditioner.inputs if k in options}
                options["cond"], uncond = self.conditioner(n, **inputs)  # encoders offloaded one by one
                options.setdefault("uncond", uncond)
            with _on(self.denoiser, self.offload_device):
                latents = super().sample(n, guidance_scale=guidance_scale, noise=noise, output="raw", **options)
            if raw == "raw":
                return latents
            with _on(self.autoencoder, self.offload_device):
                return self.autoencoder.decode(latents.to(self.offload_device)).float()

    @torch.inference_mode()
    def invert(self, images: Tensor, **options: Any) -> Tensor:
        """As :meth:`DiffusionPipeline.invert`, at the size of the images given (multiples of 16 pixels)."""
        if options.get("input", "images") == "raw":
            shape = tuple(images.shape[1:])
        else:
            shape = self.latent_shape(*images.shape[-2:], None)
        with self._size(shape):  # type: ignore[arg-type]
            return super().invert(images, **options)


@contextmanager
def _on(module: torch.nn.Module, device: torch.device) -> Iterator[None]:
    """``module`` on ``device`` for the duration, then back on the CPU (memory released)."""
    module.to(device)
    try:
        yield
    finally:
        module.to("cpu")
        if device.type == "cuda":
            torch.cuda.empty_cache()


# -- the registry's builder ------------------------------------------------------------------------------------


def scheduler_config(entry: ModelEntry, files: Path | None) -> dict[str, Any]:
    """``scheduler/scheduler_config.json`` (FlowMatchEulerDiscreteScheduler), or the packaged copy without files."""
    if files is None:
        return dict(entry.config["scheduler"])
    config = read_json(Path(files) / "scheduler" / "scheduler_config.json")
    odd = {k: config[k] for k in ("use_dynamic_shifting", "use_karras_sigmas", "use_exponential_sigmas",
                                  "use_beta_sigmas", "invert_sigmas", "stochastic_sampling") if config.get(k)}
    if config.get("_class_name", "FlowMatchEulerDiscreteScheduler") != "FlowMatchEulerDiscreteScheduler" or odd:
        raise InvalidInputError(f"{files}/scheduler/scheduler_config.json: zoo's flow schedule reproduces "
                                f"FlowMatchEulerDiscreteScheduler with a fixed shift; this config asks for "
                                f"{odd or config.get('_class_name')}")
    return config


def build(entry: ModelEntry, files: Path | None, *, device: torch.device | str = "cpu",
          dtype: torch.dtype = torch.float32, text_encoders: bool = True, text_encoder_3: bool = True,
          max_sequence_length: int = 256) -> SD3Pipeline:
    """The registry's builder: the repo's folder (None: random weights) -> an :class:`SD3Pipeline`.

    ``text_encoders=False`` loads the transformer and VAE alone (prompts then come as ``prompt_embeds=``...);
    ``text_encoder_3=False`` leaves T5-XXL out (zeros in its place, as diffusers' ``text_encoder_3=None``).
    ``max_sequence_length``: T5 tokens per prompt (diffusers' default 256).
    """
    sched = scheduler_config(entry, files)
    transformer = load_component(entry.component("transformer"), files, device=device, dtype=dtype)
    vae_part = entry.component("vae")
    vae_config = read_component_config(vae_part, files)
    vae = load_component(vae_part, files, device=device, dtype=run_dtype(dtype, vae_config.force_upcast),
                         config=vae_config)
    vae.name = f"{entry.name} vae"
    encoders: dict[str, Any] = {}
    for name in TEXT_ENCODERS[: 3 if text_encoder_3 else 2] if text_encoders else ():
        encoder = load_component(entry.component(name), files, device=device, dtype=dtype)
        encoder.name = f"{entry.name} {name}"
        if files is not None:
            folder = Path(files) / name.replace("text_encoder", "tokenizer")
            encoder.tokenizer = T5Tokenizer.from_files(folder) if name == "text_encoder_3" else clip_tokenizer(folder)
        encoders[name] = encoder
    cfg = transformer.config
    conditioner = SD3Conditioner(encoders.get("text_encoder"), encoders.get("text_encoder_2"),
                                 encoders.get("text_encoder_3"), joint_dim=cfg.joint_attention_dim,
                                 pooled_dim=cfg.pooled_projection_dim, max_sequence_length=max_sequence_length)
    denoiser = SD3Denoiser(transformer, FlowSchedule.from_scheduler_config(sched))
    return SD3Pipeline(denoiser, (cfg.in_channels, cfg.sample_size, cfg.sample_size), autoencoder=vae,
                       conditioner=conditioner, scheduler_config=sched, default_sampler=entry.config["default_sampler"],
                       default_steps=entry.config["default_steps"], invert_sampler=entry.config["invert_sampler"],
                       name=entry.name)
