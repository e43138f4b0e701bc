"""Latent diffusion (Rombach et al. 2022): a DDPM U-Net that denoises an autoencoder's latents.

    pipe = zoo.create("ldm-celebahq")          # CompVis/ldm-celebahq-256: U-Net + VQ-f4 first stage + DDIM
    images = pipe.sample(4, steps=50)          # (4, 3, 256, 256) in [0, 1]; any zoo sampler
    latents = pipe.sample(4, output="raw")     # (4, 3, 64, 64): what the U-Net denoised, before decoding
    noise = pipe.invert(images)                # encoded by the VQ-VAE first, then the ODE run backwards

Nothing here is new machinery. The U-Net is the DDPM family's (a diffusers ``UNet2DModel``, read by
``zoo.plugins.ddpm``'s component), the first stage the autoencoders' ``VQModel``, and the one
:class:`~zoo.diffusion.DiffusionPipeline` runs in the latent space because the entry names its ``autoencoder``
component: noise is drawn in the U-Net's ``(3, 64, 64)``, and the final latents are decoded (quantised first, as
LDM decodes them). DiT and SD3 use the same seam with a KL VAE.

Latent scale. LDM's VQ-regularised space is used unscaled ("the VQ-regularized space has a variance close to 1,
such that it does not have to be rescaled", LDM appendix): the VQ model's ``scale`` is 1. diffusers' LDMPipeline
divides the final latents by ``vqvae.config.scaling_factor`` since 0.22 (PR #5213), and this repo's
``vqvae/config.json`` (written by diffusers 0.1.2) has no such key, so today's diffusers uses VQModel's default
0.18215 and decodes latents 5.5x too large (its issue #6725: "weird images"). zoo follows the paper and the
original pipeline; the parity tests pin diffusers' ``scaling_factor`` to 1 to compare the rest.
"""
from __future__ import annotations

from zoo.plugins.autoencoders import LDM_PAPER, LDM_VQ_F4, REVISIONS, vq_component
from zoo.plugins.ddpm import build_pipeline, unet_component
from zoo.registry import ModelEntry, hookimpl

REPO = "CompVis/ldm-celebahq-256"

#: CompVis/ldm-celebahq-256's unet/config.json (LDM-4 on CelebA-HQ: 274M parameters, 224-896 channels).
LDM_CELEBAHQ_UNET = {
    "act_fn": "silu", "attention_head_dim": 32, "block_out_channels": [224, 448, 672, 896],
    "center_input_sample": False, "down_block_types": ["DownBlock2D"] + ["AttnDownBlock2D"] * 3,
    "downsample_padding": 1, "flip_sin_to_cos": True, "freq_shift": 0, "in_channels": 3, "layers_per_block": 2,
    "mid_block_scale_factor": 1, "norm_eps": 1e-05, "norm_num_groups": 32, "out_channels": 3, "sample_size": 64,
    "time_embedding_type": "positional", "up_block_types": ["AttnUpBlock2D"] * 3 + ["UpBlock2D"],
}
#: its scheduler/scheduler_config.json: DDIM over scaled-linear betas, no x0 clipping (latents are not in [-1, 1]).
LDM_CELEBAHQ_SCHEDULER = {"beta_end": 0.0195, "beta_schedule": "scaled_linear", "beta_start": 0.0015,
                          "clip_sample": False, "num_train_timesteps": 1000, "trained_betas": None}

LDM_CELEBAHQ = ModelEntry(
    name="ldm-celebahq", family="ldm", interface="pipeline", build=build_pipeline, repo_id=REPO,
    revision=REVISIONS[REPO],
    components=(unet_component(LDM_CELEBAHQ_UNET, subfolder="unet"), vq_component(LDM_VQ_F4, subfolder="vqvae")),
    files=("scheduler/scheduler_config.json",), license="apache-2.0", paper=LDM_PAPER,
    config={"default_sampler": "ddim", "default_steps": 50, "invert_sampler": "ode-rk45", "autoencoder": "vqvae",
            "scheduler": LDM_CELEBAHQ_SCHEDULER},
    result="FID 5.11, precision 0.72, recall 0.49 (CelebA-HQ 256, 500 DDIM steps, eta 0; Rombach et al. 2022, "
           "Table 1)",
    description="Latent diffusion on CelebA-HQ 256x256 faces (CompVis/ldm-celebahq-256): a 274M-parameter U-Net "
                "denoising the 64x64x3 latents of a VQ-f4 autoencoder, 50 DDIM steps by default.")


@hookimpl
def zoo_models(register) -> None:
    register(LDM_CELEBAHQ)
