"""DiT (Peebles & Xie 2023): class-conditional diffusion transformers over the SD VAE's latents.

    dit = zoo.create("dit-xl-2-256")           # facebook/DiT-XL-2-256: transformer + sd-vae-ft-ema + DDIM
    images = dit.sample(8, labels=["golden retriever", 207], guidance_scale=4.0, steps=50)   # names or ids
    images = dit.sample(8, labels=207, guidance_scale=1.5, guided_channels=3)   # the paper's CFG protocol
    latents = dit.sample(8, labels=207, output="raw")                         # (8, 4, 32, 32), before decoding

The network is ``model.py``. Around it, the one :class:`~zoo.diffusion.DiffusionPipeline` with both slots filled:
the autoencoder (the repo's ``vae/``, the autoencoders family's KL component) decodes at the end, and a
:class:`~zoo.diffusion.ClassConditioner` turns ``labels=`` (ids, or names and synonyms from the repo's
``id2label``, as DiTPipeline splits them on ", ") into class ids, with the null class 1000 for guidance.

Guidance. diffusers' DiTPipeline guides all four latent channels, and so does zoo by default
(``guidance_scale``, DiTPipeline's default 4.0 is not zoo's: 1.0 unless asked). The published FID (2.27 at
scale 1.5) was measured with facebookresearch/DiT's ``forward_with_cfg``, which guides only the first three:
``guided_channels=3``.

Variance. The network's second half of channels is the learned-variance interpolation of improved DDPM; DDIM
(the default, as DiTPipeline) and every other zoo sampler use the eps half only. The paper's 250-step ancestral
sampling with learned variances is not reproduced: zoo's ddpm sampler draws with a fixed variance.
"""
from __future__ import annotations

from typing import Any

from zoo.plugins.autoencoders import SD_VAE, kl_component
from zoo.registry import DIFFUSERS_WEIGHTS, Component, ModelEntry, hookimpl, lazy

#: the builder (``pipeline.py``), imported when a model is created (listing imports no model module).
build_dit = lazy(".pipeline:build_dit", __name__)

#: The commit each repo is pinned to, as in the other built-in plugins; None where no commit could be verified
#: offline (those fetch the repo's main branch with a warning, see zoo.hub.fetch).
REVISIONS: dict[str, str | None] = {"facebook/DiT-XL-2-256": None, "facebook/DiT-XL-2-512": None}

DIT_PAPER = "Peebles & Xie 2023, Scalable Diffusion Models with Transformers, arXiv:2212.09748"

#: facebook/DiT-XL-2-256's transformer/config.json (diffusers' conversion script); the 512 model differs only in
#: sample_size (64 latents), which changes the position table and nothing stored.
DIT_XL_2 = {"activation_fn": "gelu-approximate", "attention_bias": True, "attention_head_dim": 72,
            "cross_attention_dim": None, "dropout": 0.0, "in_channels": 4, "norm_elementwise_affine": False,
            "norm_num_groups": 32, "norm_type": "ada_norm_zero", "num_attention_heads": 16,
            "num_embeds_ada_norm": 1000, "num_layers": 28, "num_vector_embeds": None, "only_cross_attention": False,
            "out_channels": 8, "patch_size": 2, "sample_size": 32, "upcast_attention": False,
            "use_linear_projection": False}
#: their scheduler/scheduler_config.json: DDIM over DDPM's linear betas, eps, no clipping.
DIT_SCHEDULER = {"beta_end": 0.02, "beta_schedule": "linear", "beta_start": 0.0001, "clip_sample": False,
                 "num_train_timesteps": 1000, "prediction_type": "epsilon", "set_alpha_to_one": True,
                 "steps_offset": 0, "trained_betas": None}
NULL_CLASS = 1000


def transformer_component(config: dict[str, Any]) -> Component:
    """The ``transformer/`` folder of a DiT repo. A stray ``pos_embed.pos_embed`` (the sin-cos table, stored by
    old diffusers versions) is ignored: zoo recomputes it."""
    return Component(name="transformer", build=lazy(".model:DiT", __name__),
                     read_config=lazy(".model:DiTConfig.from_dict", __name__), raw_config=config,
                     subfolder="transformer", weights=DIFFUSERS_WEIGHTS, ignore=("pos_embed.pos_embed",))


def _entry(size: int) -> ModelEntry:
    repo = f"facebook/DiT-XL-2-{size}"
    return ModelEntry(
        name=f"dit-xl-2-{size}", family="dit", interface="pipeline", build=build_dit, repo_id=repo,
        revision=REVISIONS[repo],
        components=(transformer_component({**DIT_XL_2, "sample_size": size // 8}),
                    kl_component(SD_VAE, subfolder="vae")),
        files=("model_index.json", "scheduler/scheduler_config.json"), license="cc-by-nc-4.0", paper=DIT_PAPER,
        config={"default_sampler": "ddim", "default_steps": 50, "invert_sampler": "ode-rk45", "autoencoder": "vae",
                "scheduler": DIT_SCHEDULER},
        result=("FID-50K 2.27, sFID 4.60, IS 278.24 (ImageNet 256, cfg 1.5 on 3 channels, 250 DDPM steps; "
                "Peebles & Xie 2023)" if size == 256 else
                "FID-50K 3.04, IS 240.82 (ImageNet 512, cfg 1.5, 250 DDPM steps; Peebles & Xie 2023)"),
        description=f"DiT-XL/2 ({repo}): a 675M-parameter class-conditional diffusion transformer over the "
                    f"{size // 8}x{size // 8}x4 latents of sd-vae-ft-ema, ImageNet {size}x{size}; labels= takes "
                    f"ids or ImageNet names, 50 DDIM steps by default.")


ENTRIES = (_entry(256), _entry(512))


@hookimpl
def zoo_models(register) -> None:
    for entry in ENTRIES:
        register(entry)
