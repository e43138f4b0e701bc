"""``zoo bench``'s reference for the DDPM family: diffusers on the same U-Net weights.

zoo's U-Net keeps diffusers' parameter names (``unet.py``), so its state dict loads into diffusers' ``UNet2DModel``
as it is; the reference samples with ``DDIMPipeline`` (eta 0, the checkpoint's scheduler config) for the same
number of steps and batch, so both make the same number of U-Net calls.
"""
from __future__ import annotations

from typing import Any, Callable

import torch


def diffusers_unet(unet: torch.nn.Module, *, device: torch.device, dtype: torch.dtype) -> Any:
    """diffusers' ``UNet2DModel`` with ``unet``'s config and weights."""
    from diffusers import UNet2DModel

    twin = UNet2DModel.from_config(unet.config.to_dict())
    twin.load_state_dict(unet.state_dict())
    twin.to(device)
    return (twin if dtype == torch.float32 else twin.to(dtype)).eval()  # diffusers warns about any dtype cast


def diffusers_reference(pipe: Any, inputs: Any) -> dict[str, Callable[[], Any]]:
    """``{"diffusers DDIMPipeline": run}``: DDIM sampling of ``inputs.batch`` images in ``inputs.steps`` steps (the
    pipeline's default when None) with diffusers, on ``pipe``'s U-Net weights."""
    from diffusers import DDIMPipeline, DDIMScheduler

    unet = diffusers_unet(pipe.denoiser.unet, device=inputs.device, dtype=inputs.ref_dtype)
    scheduler = DDIMScheduler.from_config(pipe.scheduler_config)
    reference = DDIMPipeline(unet, scheduler)
    reference.set_progress_bar_config(disable=True)
    steps = inputs.steps or pipe.default_steps

    def run() -> Any:
        return reference(batch_size=inputs.batch, num_inference_steps=steps, eta=0.0, output_type="pt",
                         generator=torch.Generator(inputs.device).manual_seed(0)).images

    return {"diffusers DDIMPipeline": run}
