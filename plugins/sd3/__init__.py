"""Stable Diffusion 3 (Esser et al. 2024): an MMDiT on rectified flow, in the latent space of a 16-channel VAE,
conditioned on two CLIP text towers and T5-XXL.

    sd3 = zoo.create("sd3-medium", dtype=torch.float16)       # stabilityai/stable-diffusion-3-medium-diffusers
    images = sd3.sample(2, prompt="a photo of a cat on a red sofa", negative_prompt="", guidance_scale=7.0,
                        steps=28, height=1024, width=1024, generator=torch.Generator().manual_seed(0))
    sd3 = zoo.create("sd3-medium", text_encoder_3=False)     # without T5-XXL: zeros in its place, as diffusers
    sd3 = zoo.create("sd3-medium", text_encoders=False)      # transformer and VAE alone
    sd3.sample(1, prompt_embeds=e, pooled_prompt_embeds=p, negative_prompt_embeds=ne,
               negative_pooled_prompt_embeds=np_)             # bring your own embeddings
    latents = sd3.sample(1, prompt="...", output="latent")    # (1, 16, 128, 128), before decoding

Files: ``mmdit.py`` (the transformer), ``t5.py`` (the T5 encoder and its tokenizer), ``text.py`` (the CLIP text
towers, served by the CLIP family's text tower, and the prompt embedding as a Conditioner), ``pipeline.py`` (the
Denoiser and the pipeline). The VAE is the autoencoders family's (``sd3-vae``'s component).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from zoo.loader import load_component, read_component_config
from zoo.plugins.autoencoders import REVISIONS, SD3_PAPER, SD3_VAE
from zoo.plugins.autoencoders.kl import kl_component, run_dtype
from zoo.registry import FlowSchedule, ModelEntry, hookimpl
from zoo.registry.errors import InvalidInputError
from zoo.weights import read_json

from .mmdit import MMDiT, MMDiTConfig, transformer_component
from .pipeline import SD3Denoiser, SD3Pipeline
from .t5 import T5Config, T5Encoder, T5Tokenizer, t5_component
from .text import CLIPTextConfig, CLIPTextEncoder, SD3Conditioner, clip_text_component, clip_tokenizer

__all__ = ["CLIPTextConfig", "CLIPTextEncoder", "ENTRIES", "MMDiT", "MMDiTConfig", "SD3Conditioner", "SD3Denoiser",
           "SD3Pipeline", "T5Config", "T5Encoder", "T5Tokenizer", "build"]

REPO = "stabilityai/stable-diffusion-3-medium-diffusers"

# The published configs of the repo's components (tests/checkpoints/stabilityai__stable-diffusion-3-medium-diffusers;
# tests/test_manifests.py checks them against the files), packaged so that pretrained=False builds offline.
SD3_MEDIUM_TRANSFORMER = {"attention_head_dim": 64, "caption_projection_dim": 1536, "in_channels": 16,
                          "joint_attention_dim": 4096, "num_attention_heads": 24, "num_layers": 24, "out_channels": 16,
                          "patch_size": 2, "pooled_projection_dim": 2048, "pos_embed_max_size": 192,
                          "sample_size": 128}
_CLIP_TEXT = {"hidden_act": "quick_gelu", "hidden_size": 768, "intermediate_size": 3072, "layer_norm_eps": 1e-05,
              "max_position_embeddings": 77, "num_attention_heads": 12, "num_hidden_layers": 12, "projection_dim": 768,
              "vocab_size": 49408}
CLIP_L_TEXT = _CLIP_TEXT
CLIP_G_TEXT = {**_CLIP_TEXT, "hidden_act": "gelu", "hidden_size": 1280, "intermediate_size": 5120,
               "num_attention_heads": 20, "num_hidden_layers": 32, "projection_dim": 1280}
T5_XXL = {"d_ff": 10240, "d_kv": 64, "d_model": 4096, "dense_act_fn": "gelu_new", "feed_forward_proj": "gated-gelu",
          "layer_norm_epsilon": 1e-06, "num_heads": 64, "num_layers": 24, "relative_attention_max_distance": 128,
          "relative_attention_num_buckets": 32, "vocab_size": 32128}
SD3_SCHEDULER = {"num_train_timesteps": 1000, "shift": 3.0}

#: the tokenizers' files (CLIP's BPE twice, T5's SentencePiece model) and the scheduler config.
FILES = ("scheduler/scheduler_config.json",
         "tokenizer/vocab.json", "tokenizer/merges.txt", "tokenizer/special_tokens_map.json",
         "tokenizer_2/vocab.json", "tokenizer_2/merges.txt", "tokenizer_2/special_tokens_map.json",
         "tokenizer_3/spiece.model")
TEXT_ENCODERS = ("text_encoder", "text_encoder_2", "text_encoder_3")


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


SD3_MEDIUM = ModelEntry(
    name="sd3-medium", family="sd3", interface="pipeline", build=build, repo_id=REPO, revision=REVISIONS[REPO],
    components=(transformer_component(SD3_MEDIUM_TRANSFORMER), kl_component(SD3_VAE, subfolder="vae"),
                clip_text_component("text_encoder", CLIP_L_TEXT), clip_text_component("text_encoder_2", CLIP_G_TEXT),
                t5_component(T5_XXL)),
    files=FILES, license="stabilityai-ai-community", paper=SD3_PAPER,
    config={"default_sampler": "flow-euler", "default_steps": 28, "invert_sampler": "flow-euler",
            "scheduler": SD3_SCHEDULER},
    description="Stable Diffusion 3 Medium (stabilityai/stable-diffusion-3-medium-diffusers): a 2B-parameter MMDiT "
                "on rectified flow (shift 3.0) over the 16-channel VAE's latents, prompted through CLIP-L, "
                "OpenCLIP bigG and T5-XXL; 28 flow-Euler steps with guidance 7.0 by default. The repo is gated on "
                "the Hub: accept its license there and log in (HF_TOKEN) before the first download.")

ENTRIES = (SD3_MEDIUM,)


@hookimpl
def zoo_models(register) -> None:
    for entry in ENTRIES:
        register(entry)
