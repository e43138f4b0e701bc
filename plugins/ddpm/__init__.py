"""The DDPM family: pixel-space denoising diffusion models with diffusers' ``UNet2DModel``.

Ho et al. 2020 ("Denoising Diffusion Probabilistic Models") train a U-Net to predict the noise ``eps`` in
``x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps`` over T = 1000 discrete steps with linear betas. The same
weights sample two ways, and zoo registers each checkpoint under both names:

* ``ddpm-*``: ancestral sampling, 1000 steps by default, drawing from the posterior ``q(x_{t-1} | x_t, x0)``
  with the variance the checkpoint was published with (``fixed_large`` for CIFAR-10, ``fixed_small`` for the
  256x256 models);
* ``ddim-*``: DDIM (Song et al. 2020), the deterministic first-order solver of the probability-flow ODE,
  50 steps by default.

Both clip the x0 estimate to [-1, 1] as the published scheduler configs ask. The network is a readable
re-implementation (``unet.py``) whose parameter names are diffusers', so the Hub files load as they are; the
original uploads predate diffusers 0.14 and use older attention names, converted by a rename table.

``ddpm-digits`` is zoo's own small DDPM, trained on scikit-learn's 8x8 digits upsampled to 16x16 and shipped
in the package, so ``zoo sample ddpm-digits`` works on a machine with no network (``train_digits.py``).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from zoo.registry import DIFFUSERS_WEIGHTS, Component, ModelEntry, hookimpl, lazy

#: what builds an entry and what retrains ddpm-digits: imported when a model is created, not when listed.
build_pipeline = lazy(".model:build_pipeline", __name__)
train_digits = lazy(".train_digits:train", __name__)
#: `zoo bench`'s reference: diffusers' DDIMPipeline on the same U-Net weights (for the DDIM-sampled entries)
diffusers_reference = lazy(".bench:diffusers_reference", __name__)

# The published configs of the google/ddpm-* repos (see their NOTES in tests/checkpoints: cifar10-32 and the 256
# family share everything but channels, depth and the variance), so `pretrained=False` builds the architecture
# offline; tests/test_manifests.py checks them against the repos' own files.
_GOOGLE_UNET = {
    "act_fn": "silu", "attention_head_dim": None, "center_input_sample": False, "downsample_padding": 0,
    "flip_sin_to_cos": False, "freq_shift": 1, "in_channels": 3, "out_channels": 3, "layers_per_block": 2,
    "mid_block_scale_factor": 1, "norm_eps": 1e-6, "norm_num_groups": 32, "time_embedding_type": "positional",
}
CIFAR10_UNET = {**_GOOGLE_UNET, "sample_size": 32, "block_out_channels": [128, 256, 256, 256],
                "down_block_types": ["DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"],
                "up_block_types": ["UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"]}
LSUN256_UNET = {**_GOOGLE_UNET, "sample_size": 256, "block_out_channels": [128, 128, 256, 256, 512, 512],
                "down_block_types": ["DownBlock2D"] * 4 + ["AttnDownBlock2D", "DownBlock2D"],
                "up_block_types": ["UpBlock2D", "AttnUpBlock2D"] + ["UpBlock2D"] * 4}
_GOOGLE_SCHEDULER = {"beta_start": 0.0001, "beta_end": 0.02, "beta_schedule": "linear", "clip_sample": True,
                     "num_train_timesteps": 1000, "trained_betas": None}
PUBLISHED_CONFIGS: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "google/ddpm-cifar10-32": (CIFAR10_UNET, {**_GOOGLE_SCHEDULER, "variance_type": "fixed_large"}),
    **{f"google/ddpm-{name}-256": (LSUN256_UNET, {**_GOOGLE_SCHEDULER, "variance_type": "fixed_small"})
       for name in ("celebahq", "church", "bedroom", "cat")},
}


def unet_component(config: dict[str, Any] | None, subfolder: str = "") -> Component:
    """The U-Net of a diffusers DDPM repo: ``config.json`` + ``diffusion_pytorch_model.*``, legacy attention names
    converted. ``config`` is the published ``config.json`` (for ``pretrained=False``)."""
    return Component(name="unet", build=lazy(".unet:UNet2DModel", __name__),
                     read_config=lazy(".unet:UNet2DConfig.from_dict", __name__), raw_config=config,
                     subfolder=subfolder, weights=DIFFUSERS_WEIGHTS,
                     renames=lazy(".unet:LEGACY_ATTENTION_RENAMES", __name__),
                     convert=lazy(".model:flatten_conv_attention", __name__))


#: The commit each repo is pinned to, as in the other built-in plugins: hashes found in public material that records
#: them (Hub cache snapshot paths in published code); None where no commit could be verified offline: those fetch
#: the repo's main branch with a warning (see zoo.hub.fetch). Replace a None by the commit once verified online.
REVISIONS: dict[str, str | None] = {
    # A mirror of the Hub serves this repo's README at this commit (raw/<commit>/README.md).
    "google/ddpm-cifar10-32": "30eb34ce06e995c15ec349bc188a86d6bd0d5359",
    # Public code downloads it with `hf download google/ddpm-celebahq-256 --revision <this>` (.bin only).
    "google/ddpm-celebahq-256": "cd5c944777ea2668051904ead6cc120739b86c4d",
    "google/ddpm-church-256": None,
    "google/ddpm-bedroom-256": None,
    # Snapshot a user loaded with use_safetensors=True, so it holds the .safetensors file (an older snapshot,
    # a30605ddf01544f8b55415aacdf2d3d3070e7113, also appears in public code).
    "google/ddpm-cat-256": "82ca0d5db4a5ec6ff0e9be8d86852490bc18a3d9",
}

#: besides the U-Net component (its config.json and weights), every DDPM repo holds its scheduler config.
FILES = ("scheduler_config.json",)
DDPM_PAPER = "Ho, Jain & Abbeel 2020, Denoising Diffusion Probabilistic Models, arXiv:2006.11239"
DDIM_PAPER = "Song, Meng & Ermon 2020, Denoising Diffusion Implicit Models, arXiv:2010.02502"
DIGITS_DIR = Path(__file__).parent / "weights" / "ddpm-digits"

# (short name, repo, what it generates, published result with 1000-step ancestral sampling)
_GOOGLE = [
    ("cifar", "google/ddpm-cifar10-32", "32x32 CIFAR-10 images",
     "FID 3.17, IS 9.46 (unconditional CIFAR-10, 1000-step ancestral sampling; Ho et al. 2020, Table 1)"),
    ("celebahq", "google/ddpm-celebahq-256", "256x256 CelebA-HQ faces",
     "no FID published (Ho et al. 2020 show CelebA-HQ 256 samples only)"),
    ("church", "google/ddpm-church-256", "256x256 LSUN church exteriors",
     "FID 7.89 (LSUN Church 256, 1000-step ancestral sampling; Ho et al. 2020)"),
    ("bedroom", "google/ddpm-bedroom-256", "256x256 LSUN bedrooms",
     "FID 6.36 (LSUN Bedroom 256, 1000-step ancestral sampling; Ho et al. 2020; 4.90 for their larger model)"),
    ("cat", "google/ddpm-cat-256", "256x256 LSUN cats",
     "FID 19.75 (LSUN Cat 256, 1000-step ancestral sampling; Ho et al. 2020)"),
]
# DDIM paper (Song et al. 2020, Table 1, eta=0, DDPM-trained CIFAR-10 model, quadratic timestep spacing; zoo and
# diffusers use "leading" spacing, so expect somewhat different numbers).
#: how every DDPM entry inverts images (the probability-flow ODE, adaptive: see DiffusionPipeline.invert).
_SAMPLING = {"invert_sampler": "ode-rk45"}
_DDIM_CIFAR = "FID 13.4 at 10 steps, 6.8 at 20, 4.7 at 50, 4.2 at 100 (CIFAR-10, eta=0; Song et al. 2020, Table 1)"


def _google_entries() -> list[ModelEntry]:
    entries = []
    for short, repo, what, result in _GOOGLE:
        unet, scheduler = PUBLISHED_CONFIGS[repo]
        common = dict(family="ddpm", interface="pipeline", build=build_pipeline, repo_id=repo,
                      revision=REVISIONS[repo], components=(unet_component(unet),), files=FILES, license="apache-2.0")
        entries.append(ModelEntry(
            name=f"ddpm-{short}", paper=DDPM_PAPER, result=result,
            config={"default_sampler": "ddpm", "default_steps": 1000, **_SAMPLING, "scheduler": scheduler},
            description=f"DDPM ({repo}): {what}, 1000-step ancestral sampling as published.", **common))
        entries.append(ModelEntry(
            name=f"ddim-{short}", paper=f"{DDIM_PAPER}; weights: {DDPM_PAPER}",
            result=_DDIM_CIFAR if short == "cifar" else f"DDPM sampling: {result}",
            config={"default_sampler": "ddim", "default_steps": 50, **_SAMPLING, "scheduler": scheduler},
            description=f"DDIM sampling of the DDPM {repo}: {what}, 50 deterministic steps.",
            reference=diffusers_reference, **common))
    return entries


def _shipped(name: str) -> dict:
    return json.loads((DIGITS_DIR / name).read_text())


DIGITS = ModelEntry(
    name="ddpm-digits", family="ddpm", interface="pipeline", build=build_pipeline,
    components=(unet_component(_shipped("config.json")),), files=FILES, local_dir=DIGITS_DIR, train=train_digits,
    reference=diffusers_reference,
    license="BSD-3-Clause (data: scikit-learn digits); weights: Apache-2.0", paper=DDPM_PAPER,
    config={"default_sampler": "ddim", "default_steps": 50, **_SAMPLING, "scheduler": _shipped("scheduler_config.json")},
    result="98% of samples (DDIM, 50 steps) are recognisable digits to a digit classifier, every class present "
           "(held-out real digits: 99.7%; tests/test_ddpm_digits.py)",
    description="A small DDPM trained by zoo on scikit-learn's handwritten digits (16x16 greyscale), shipped in "
                "the package: works offline. Retrain with `zoo train ddpm-digits`.")


@hookimpl
def zoo_models(register) -> None:
    for entry in (*_google_entries(), DIGITS):
        register(entry)
