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

from typing import Any

from zoo.plugins.autoencoders import REVISIONS, SD3_PAPER, SD3_VAE, kl_component
from zoo.registry import DIFFUSERS_WEIGHTS, MODEL_WEIGHTS, Component, ModelEntry, hookimpl, lazy

#: the builder (``pipeline.py``), imported when a model is created (listing imports no model module).
build = lazy(".pipeline:build", __name__)

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


def transformer_component(config: dict[str, Any] | None, subfolder: str = "transformer") -> Component:
    """The MMDiT of a diffusers SD3 repo (``mmdit.py``): ``transformer/config.json`` +
    ``diffusion_pytorch_model.safetensors`` in diffusers' names (no renames). ``config``: the published
    ``config.json`` (for ``pretrained=False``)."""
    return Component(name="transformer", build=lazy(".mmdit:MMDiT", __name__),
                     read_config=lazy(".mmdit:MMDiTConfig.from_dict", __name__), raw_config=config,
                     subfolder=subfolder, weights=DIFFUSERS_WEIGHTS)


def t5_component(config: dict[str, Any] | None, subfolder: str = "text_encoder_3") -> Component:
    """A transformers ``T5EncoderModel`` folder (``t5.py``): ``config.json`` + ``model.safetensors`` (or its
    sharded index)."""
    return Component(name="text_encoder_3", build=lazy(".t5:T5Encoder", __name__),
                     read_config=lazy(".t5:T5Config.from_dict", __name__), raw_config=config, subfolder=subfolder,
                     weights=MODEL_WEIGHTS, renames=lazy(".t5:RENAMES", __name__), ignore=lazy(".t5:IGNORED", __name__))


def clip_text_component(name: str, config: dict[str, Any] | None) -> Component:
    """``text_encoder/`` or ``text_encoder_2/`` of an SD3 repo (``text.py``): ``config.json`` +
    ``model.safetensors``."""
    return Component(name=name, build=lazy(".text:CLIPTextEncoder", __name__),
                     read_config=lazy(".text:CLIPTextConfig.from_dict", __name__), raw_config=config, subfolder=name,
                     weights=MODEL_WEIGHTS, renames=lazy(".text:CLIP_TEXT_RENAMES", __name__),
                     convert=lazy("zoo.weights:fuse_qkv"), ignore=(r".*position_ids",))


SD3_MEDIUM = ModelEntry(
    name="sd3-medium", family="sd3", interface="pipeline", build=build, repo_id=REPO, revision=REVISIONS[REPO],
    components=(transformer_component(SD3_MEDIUM_TRANSFORMER), kl_component(SD3_VAE, subfolder="vae"),
                clip_text_component("text_encoder", CLIP_L_TEXT), clip_text_component("text_encoder_2", CLIP_G_TEXT),
                t5_component(T5_XXL)),
    files=FILES, license="stabilityai-ai-community", paper=SD3_PAPER,
    optional={"text_encoders": (*TEXT_ENCODERS, "tokenizer", "tokenizer_2", "tokenizer_3"),
              "text_encoder_3": ("text_encoder_3", "tokenizer_3")},
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
