"""Autoencoders: the first stages of latent diffusion, KL-regularised (``kl.py``) and vector-quantised (``vq.py``).

    vae = zoo.create("sd-vae-ft-ema")                  # stabilityai/sd-vae-ft-ema, DiT's VAE
    z = vae.encode(vae.preprocess(images))             # (N, 4, H/8, W/8), scaled as the denoiser expects
    x = vae.decode(z)                                  # images in [0, 1]
    post = vae.posterior(x_in)                         # DiagonalGaussian: mean, logvar, std, sample(generator)
    z = vae.encode(x_in, sample=True, generator=g)     # a reproducible draw instead of the mean
    x = vae.decode(z, tile=True)                       # tiled: bounded memory for large images

    vq = zoo.create("vqvae-celebahq")                  # CompVis/ldm-celebahq-256's VQ-f4 first stage
    h = vq.encode(x_in)                                # (N, 3, H/4, W/4), not quantised: what LDM denoises
    codes = vq.quantize(h)                             # (N, H/4, W/4) int64 into the 8192-entry codebook
    x = vq.decode(h)                                   # quantises, then decodes, as LDMPipeline does

    vq = zoo.create("vqvae-digits")                    # zoo's own VQ-VAE on 16x16 digits, shipped: works offline

Both networks share one encoder/decoder implementation (``blocks.py``) whose parameter names are diffusers', so
the Hub files load as they are, the legacy attention names of pre-0.14 uploads converted by a rename table.
``zoo reconstruct NAME IMAGE...`` (``commands.py``) writes inputs beside their reconstructions for any
autoencoder. ``vqvae-digits`` is trained by zoo (``train_vq.py``: the VQ-VAE objective, an EMA codebook, restarts of
dead codes) and retrained by ``zoo train vqvae-digits``.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from zoo.registry import DIFFUSERS_WEIGHTS, Command, Component, ModelEntry, hookimpl, lazy

#: the builders and the recipe, imported when a model is created (listing imports no model module).
build_kl = lazy(".kl:build_kl", __name__)
build_vq = lazy(".vq:build_vq", __name__)
train_vq = lazy(".train_vq:train", __name__)
RECONSTRUCT = Command("reconstruct", lazy(".commands:run", __name__),
                      "encode and decode images with an autoencoder; write input beside output",
                      lazy(".commands:arguments", __name__))


def kl_component(config: dict[str, Any], subfolder: str = "") -> Component:
    """The KL VAE of a diffusers repo: ``config.json`` + ``diffusion_pytorch_model.*`` in ``subfolder``, legacy
    attention names and 1x1-conv-shaped projections converted. ``config``: the published ``config.json``."""
    return Component(name="vae", build=lazy(".kl:AutoencoderKL", __name__),
                     read_config=lazy(".kl:KLConfig.from_dict", __name__), raw_config=config, subfolder=subfolder,
                     weights=DIFFUSERS_WEIGHTS, renames=lazy(".blocks:LEGACY_ATTENTION_RENAMES", __name__),
                     convert=lazy(".blocks:flatten_conv_attention", __name__))


def vq_component(config: dict[str, Any], subfolder: str = "vqvae") -> Component:
    """The VQ-VAE of a diffusers repo (``vqvae/`` in LDM pipelines), legacy attention names converted."""
    return Component(name="vqvae", build=lazy(".vq:VQModel", __name__),
                     read_config=lazy(".vq:VQConfig.from_dict", __name__), raw_config=config, subfolder=subfolder,
                     weights=DIFFUSERS_WEIGHTS, renames=lazy(".blocks:LEGACY_ATTENTION_RENAMES", __name__),
                     convert=lazy(".blocks:flatten_conv_attention", __name__))

#: The commit each repo is pinned to, as in the other built-in plugins: hashes found in public material that records
#: them (Hub cache snapshot paths in published code); None where no commit could be verified offline: those fetch
#: the repo's main branch with a warning (see zoo.hub.fetch). Replace a None by the commit once verified online.
REVISIONS: dict[str, str | None] = {
    # Snapshot paths in several public projects, one listing .../snapshots/<this>/diffusion_pytorch_model.safetensors.
    "stabilityai/sd-vae-ft-ema": "f04b2c4b98319346dad8c65879f680b1997b204a",
    # The same listing, and many other public configs, load this snapshot (safetensors present).
    "stabilityai/sd-vae-ft-mse": "31f26fdeee1355a5c34592e401dd41e45d25a493",
    # The snapshot most public code loads, its vae/ subfolder included (another, b1148b40..., also appears).
    "stabilityai/stable-diffusion-3-medium-diffusers": "ea42f8cef0f178587cf766dc8129abd379c90671",
    # No public record of a commit found (public scripts download from main).
    "CompVis/ldm-celebahq-256": None,
}

LDM_PAPER = "Rombach et al. 2022, High-Resolution Image Synthesis with Latent Diffusion Models, arXiv:2112.10752"
SD3_PAPER = ("Esser et al. 2024, Scaling Rectified Flow Transformers for High-Resolution Image Synthesis, "
             "arXiv:2403.03206")

_DOWN, _UP = "DownEncoderBlock2D", "UpDecoderBlock2D"
#: The published config.json of both stabilityai/sd-vae-ft-* repos (the SD 1.x VAE, kl-f8), and of SD3's vae/:
#: packaged so pretrained=False builds the architecture offline; tests check them against the repos' own files.
SD_VAE = {"act_fn": "silu", "block_out_channels": [128, 256, 512, 512], "down_block_types": [_DOWN] * 4,
          "in_channels": 3, "latent_channels": 4, "layers_per_block": 2, "norm_num_groups": 32, "out_channels": 3,
          "sample_size": 256, "scaling_factor": 0.18215, "up_block_types": [_UP] * 4}
SD3_VAE = {**SD_VAE, "latent_channels": 16, "sample_size": 1024, "scaling_factor": 1.5305, "shift_factor": 0.0609,
           "force_upcast": True, "latents_mean": None, "latents_std": None, "use_quant_conv": False,
           "use_post_quant_conv": False}
#: CompVis/ldm-celebahq-256's vqvae/config.json (LDM's VQ-f4: embed_dim 3, 8192 codes).
LDM_VQ_F4 = {"act_fn": "silu", "block_out_channels": [128, 256, 512], "down_block_types": [_DOWN] * 3,
             "in_channels": 3, "latent_channels": 3, "layers_per_block": 2, "num_vq_embeddings": 8192,
             "out_channels": 3, "sample_size": 256, "up_block_types": [_UP] * 3}

VQVAE_PAPER = ("van den Oord, Vinyals & Kavukcuoglu 2017, Neural Discrete Representation Learning, arXiv:1711.00937; "
               "EMA codebook: Razavi et al. 2019, arXiv:1906.00446; code restarts: Dhariwal et al. 2020, "
               "arXiv:2005.00341")
#: zoo's own VQ-VAE (train_vq.py), shipped in the package: config.json and diffusion_pytorch_model.safetensors.
VQ_DIGITS_DIR = Path(__file__).parent / "weights" / "vqvae-digits"
#: the shipped weights on the 360 held-out digits (train_vq.evaluate); tests/test_vqvae_digits.py checks them.
VQ_DIGITS_HELD_OUT = {"mse": 0.001211, "psnr": 29.167, "perplexity": 118.41, "used": 128}
VQ_DIGITS_RESULT = (f"held-out digits: MSE {VQ_DIGITS_HELD_OUT['mse']:.4f} (PSNR {VQ_DIGITS_HELD_OUT['psnr']:.1f} dB), "
                    f"codebook perplexity {VQ_DIGITS_HELD_OUT['perplexity']:.1f}, {VQ_DIGITS_HELD_OUT['used']} of 128 "
                    f"codes used (tests/test_vqvae_digits.py)")

_SD_VAE_CARD = "COCO 2017 val, 256x256, 5000 images (stabilityai/sd-vae-ft-* model card)"

ENTRIES = (
    ModelEntry(
        name="sd-vae-ft-ema", family="kl-vae", interface="autoencoder", build=build_kl,
        repo_id="stabilityai/sd-vae-ft-ema", revision=REVISIONS["stabilityai/sd-vae-ft-ema"],
        components=(kl_component(SD_VAE),), license="mit", paper=LDM_PAPER,
        result=f"rFID 4.42, PSNR 23.8 ({_SD_VAE_CARD})",
        description="Stable Diffusion 1.x's KL-f8 VAE with its decoder fine-tuned (EMA weights), the VAE of DiT: "
                    "4 latent channels at 1/8 resolution, latents scaled by 0.18215."),
    ModelEntry(
        name="sd-vae-ft-mse", family="kl-vae", interface="autoencoder", build=build_kl,
        repo_id="stabilityai/sd-vae-ft-mse", revision=REVISIONS["stabilityai/sd-vae-ft-mse"],
        components=(kl_component(SD_VAE),), license="mit", paper=LDM_PAPER,
        result=f"rFID 4.70, PSNR 24.5 ({_SD_VAE_CARD})",
        description="sd-vae-ft-ema fine-tuned further with more MSE weight (smoother outputs): the same KL-f8 "
                    "architecture, 4 latent channels, latents scaled by 0.18215."),
    ModelEntry(
        name="sd3-vae", family="kl-vae", interface="autoencoder", build=build_kl,
        repo_id="stabilityai/stable-diffusion-3-medium-diffusers",
        revision=REVISIONS["stabilityai/stable-diffusion-3-medium-diffusers"],
        components=(kl_component(SD3_VAE, subfolder="vae"),), license="stabilityai-ai-community", paper=SD3_PAPER,
        description="Stable Diffusion 3 Medium's VAE (the vae/ folder of its diffusers repo): 16 latent channels at "
                    "1/8 resolution, latents (z - 0.0609) * 1.5305. The repo is gated on the Hub: accept its "
                    "license there and log in (HF_TOKEN) before the first download."),
    ModelEntry(
        name="vqvae-celebahq", family="vq-vae", interface="autoencoder", build=build_vq,
        repo_id="CompVis/ldm-celebahq-256", revision=REVISIONS["CompVis/ldm-celebahq-256"],
        components=(vq_component(LDM_VQ_F4),), license="apache-2.0", paper=LDM_PAPER,
        result="the VQ-f4 (8192 codes) first stage: rFID ~0.58, PSNR ~27.4 on ImageNet val (Rombach et al. 2022, "
               "autoencoder table; approximate)",
        description="The VQ-f4 first stage of LDM's CelebA-HQ 256 model (the vqvae/ folder of "
                    "CompVis/ldm-celebahq-256): 3-dimensional latents at 1/4 resolution, 8192 codes; encode gives "
                    "the unquantised latents the LDM U-Net denoises, decode quantises them."),
    ModelEntry(
        name="vqvae-digits", family="vq-vae", interface="autoencoder", build=build_vq,
        components=(vq_component(json.loads((VQ_DIGITS_DIR / "config.json").read_text()), subfolder=""),),
        local_dir=VQ_DIGITS_DIR, train=train_vq, paper=VQVAE_PAPER, result=VQ_DIGITS_RESULT,
        license="BSD-3-Clause (data: scikit-learn digits); weights: Apache-2.0",
        description="A small VQ-VAE trained by zoo on scikit-learn's handwritten digits (16x16 greyscale; photos "
                    "enter as their luma), shipped in the package: a 4x4 grid of 128 codes per digit, EMA codebook "
                    "and dead-code restarts. Retrain with `zoo train vqvae-digits`."),
)


@hookimpl
def zoo_models(register) -> None:
    for entry in ENTRIES:
        register(entry)


@hookimpl
def zoo_commands(register) -> None:
    register(RECONSTRUCT)
