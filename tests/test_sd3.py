"""sd3-medium against diffusers' ``SD3Transformer2DModel`` / ``StableDiffusion3Pipeline`` and transformers'
text encoders, on a narrowed copy of the real repo.

The fixture is stabilityai/stable-diffusion-3-medium-diffusers in its own layout (``transformer/``, ``vae/``,
``text_encoder{,_2,_3}/``, ``tokenizer{,_2,_3}/``, ``scheduler/``), every component written by its reference
library from the real config narrowed (MMDiT: 3 blocks of 4 heads x 16 on a 24x24 position table; VAE: 8 channels
per level, the four levels, 16 latent channels and the real scale and shift; CLIP-L/G: 2 blocks of 24/32 channels
with the real 49,408-token BPE; T5: 2 blocks of width 64 over a SentencePiece model trained here, saved in shards),
random weights. CLIP-G's ``tokenizer_2`` pads with ``!`` (id 0) and CLIP-L's with ``<|endoftext|>``, as the real
tokenizer files say, so that the padding difference shows in the embeddings.

Checked: the transformer forward (float32, 1e-4) at two sizes; every full-size component's dtypes as published
(float16, meta device); the prompt embeddings of ``encode_prompt`` with a negative prompt and without T5 (1e-5);
a 4-step guided sampling run against the diffusers pipeline in float64 (1e-4); the flow grid of the real scheduler
config against ``FlowMatchEulerDiscreteScheduler`` step by step; ``text_encoders=False`` with embeddings given;
``zoo sample``.
"""
from __future__ import annotations

import json
import shutil

import pytest
import torch

import zoo
from checkpoints import CHECKPOINTS
from helpers.clip_repos import (maxdiff, one_thread, train_t5_spm, write_clip_vocab,  # noqa: F401
                                write_t5_tokenizer_json)
from test_autoencoder_kl import perturbed, real_config
from zoo.loader import convert_state_dict
from zoo.plugins.sd3.mmdit import MMDiT, MMDiTConfig

diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")
from diffusers import (AutoencoderKL, FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel,  # noqa: E402
                       StableDiffusion3Pipeline)
from diffusers.utils import logging as diffusers_logging  # noqa: E402

diffusers_logging.set_verbosity_error()
transformers.logging.set_verbosity_error()
pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning")

SD3 = CHECKPOINTS / "stabilityai__stable-diffusion-3-medium-diffusers"
MMDIT_NARROW = {"num_layers": 3, "num_attention_heads": 4, "attention_head_dim": 16, "joint_attention_dim": 64,
                "caption_projection_dim": 64, "pooled_projection_dim": 56, "pos_embed_max_size": 24, "sample_size": 16}
VAE_NARROW = {"block_out_channels": [8, 8, 8, 8], "norm_num_groups": 4, "layers_per_block": 1}
CLIP_NARROW = {"text_encoder": {"hidden_size": 24, "intermediate_size": 48, "num_attention_heads": 2,
                                "num_hidden_layers": 2, "projection_dim": 24},
               "text_encoder_2": {"hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 2,
                                  "num_hidden_layers": 2, "projection_dim": 32}}
T5_NARROW = {"d_model": 64, "d_kv": 16, "d_ff": 96, "num_heads": 4, "num_layers": 2, "vocab_size": 1100}
PROMPTS = ["a photo of a cat on a red sofa", "An astronaut, riding a horse!"]


def perturb_(model: torch.nn.Module, seed: int, scale: float = 0.05) -> torch.nn.Module:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * scale)
    return model.eval()


def narrow_transformer(seed: int = 0, **changes) -> SD3Transformer2DModel:
    torch.manual_seed(seed)
    model = SD3Transformer2DModel.from_config(real_config(SD3 / "transformer", **{**MMDIT_NARROW, **changes}))
    return perturb_(model, seed)


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    """The narrowed SD3-medium folder in Hub layout."""
    root = tmp_path_factory.mktemp("sd3-medium")
    narrow_transformer(1).save_pretrained(root / "transformer")
    torch.manual_seed(0)
    perturbed(AutoencoderKL.from_config(real_config(SD3 / "vae", **VAE_NARROW)), seed=2).save_pretrained(root / "vae")
    for i, name in enumerate(("text_encoder", "text_encoder_2")):
        cfg = {k: v for k, v in real_config(SD3 / name, **CLIP_NARROW[name]).items() if k != "torch_dtype"}
        torch.manual_seed(i)
        model = transformers.CLIPTextModelWithProjection(transformers.CLIPTextConfig(**cfg))
        perturb_(model, 3 + i).save_pretrained(root / name)
        tok = write_clip_vocab(root / name.replace("text_encoder", "tokenizer"))
        pad = "<|endoftext|>" if name == "text_encoder" else "!"
        (tok / "special_tokens_map.json").write_text(json.dumps(
            {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "pad_token": pad,
             "unk_token": "<|endoftext|>"}))
        config = json.loads((tok / "tokenizer_config.json").read_text())
        (tok / "tokenizer_config.json").write_text(json.dumps({**config, "pad_token": pad}))
    torch.manual_seed(5)
    t5_config = {k: v for k, v in real_config(SD3 / "text_encoder_3", **T5_NARROW).items() if k != "torch_dtype"}
    t5 = transformers.T5EncoderModel(transformers.T5Config(**t5_config))
    perturb_(t5, 6).save_pretrained(root / "text_encoder_3", max_shard_size="200KB")
    spiece = train_t5_spm(root / "tokenizer_3")
    write_t5_tokenizer_json(spiece, root / "tokenizer_3")
    (root / "tokenizer_3" / "special_tokens_map.json").write_text(json.dumps(
        {"eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>"}))
    (root / "tokenizer_3" / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "T5Tokenizer", "eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>",
         "extra_ids": 100, "model_max_length": 512}))
    (root / "scheduler").mkdir()
    shutil.copy(SD3 / "scheduler" / "scheduler_config.json", root / "scheduler")
    shutil.copy(SD3 / "model_index.json", root)
    return root


@pytest.fixture(scope="module")
def reference(repo):
    pipe = StableDiffusion3Pipeline.from_pretrained(repo).to(torch.float64)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def ours(repo):
    return zoo.create("sd3-medium", weights=repo, device="cpu", dtype=torch.float64)


# -- the transformer ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [(8, 8), (6, 10)])
def test_mmdit_forward_matches_diffusers(size):
    """One forward in float32 within 1e-4: joint attention, the context_pre_only last block, the position table
    cropped to a square and a non-square latent, (scale, shift) norms."""
    ref = narrow_transformer()
    model = MMDiT(MMDiTConfig.from_dict(dict(ref.config))).eval()
    model.load_state_dict(ref.state_dict())
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 16, *size, generator=gen)
    t = torch.tensor([999.0, 3.5])
    c, y = torch.randn(2, 9, 64, generator=gen), torch.randn(2, 56, generator=gen)
    with torch.no_grad():
        expected = ref(hidden_states=x, encoder_hidden_states=c, pooled_projections=y, timestep=t).sample
        assert maxdiff(model(x, t, c, y), expected) < 1e-4
        # sensitive: swapping AdaLayerNormContinuous' halves to (shift, scale) is seen
        w = model.norm_out.linear.weight.data
        model.norm_out.linear.weight.data = torch.cat([w[64:], w[:64]])
        assert maxdiff(model(x, t, c, y), expected) > 1e-3


def test_regional_compile_shares_one_graph_between_the_repeated_blocks():
    """compile_repeated_blocks: the same output, and dynamo captures two graphs for the three blocks (the repeated
    joint block, and the context_pre_only last one). The eager backend checks the plumbing without a C compiler."""
    import torch._dynamo
    from torch._dynamo.utils import counters
    ref = narrow_transformer()
    model = MMDiT(MMDiTConfig.from_dict(dict(ref.config))).eval()
    model.load_state_dict(ref.state_dict())
    x, t, c, y = torch.randn(1, 16, 4, 4), torch.tensor([500.0]), torch.randn(1, 5, 64), torch.randn(1, 56)
    torch._dynamo.reset()
    counters.clear()
    with torch.no_grad():
        expected = model(x, t, c, y)
        assert maxdiff(model.compile_repeated_blocks(backend="eager")(x, t, c, y), expected) == 0
    assert counters["stats"]["unique_graphs"] == 2
    torch._dynamo.reset()


def test_the_position_table_is_diffusers():
    """pretrained=False computes the stored 192x192 sin-cos table as diffusers' PatchEmbed does."""
    from diffusers.models.embeddings import PatchEmbed
    from zoo.plugins.sd3.mmdit import sincos_2d_table
    ref = PatchEmbed(height=128, width=128, patch_size=2, in_channels=16, embed_dim=96, pos_embed_max_size=192)
    assert maxdiff(sincos_2d_table(96, 192, 64), ref.pos_embed) < 1e-6


def test_full_size_components_keep_the_published_float16():
    """At full size on the meta device, every component built in float16 holds every published tensor in the
    file's own dtype (float16): fp16 weights load as published, none silently kept in float32."""
    entry = zoo.get_entry("sd3-medium")
    for component in entry.components:
        folder = SD3 / component.subfolder
        manifest = json.loads((folder / "manifest.json").read_text())
        config = component.read_config(json.loads((folder / "config.json").read_text()))
        with torch.device("meta"):
            module = component.build(config).to(torch.float16)
        own = module.state_dict()
        published = {k: torch.empty(v[:-1], dtype=torch.float16 if v[-1] in ("float16", "F16") else torch.float32,
                                    device="meta") for k, v in manifest["keys"].items()}
        converted = convert_state_dict(component, published)
        assert all(v.dtype == torch.float16 for v in converted.values()), component.name
        assert {k: v.dtype for k, v in own.items()} == {k: v.dtype for k, v in converted.items()}, component.name


# -- prompt embeddings --------------------------------------------------------------------------------------------


def test_prompt_embeddings_match_encode_prompt(ours, reference):
    """CLIP-L and -G penultimate states zero-padded to the joint width, then T5's 256 tokens; pooled L | G; the
    negative prompt's the same way; within 1e-5 (float64 here, so far tighter in practice)."""
    with torch.no_grad():
        ref = reference.encode_prompt(PROMPTS, None, None, negative_prompt=["", "blurry"], device="cpu")
        cond, uncond = ours.conditioner(2, prompt=PROMPTS, negative_prompt=["", "blurry"])
    assert cond["encoder_hidden_states"].shape == (2, 77 + 256, 64)
    assert maxdiff(cond["encoder_hidden_states"], ref[0]) < 1e-5
    assert maxdiff(uncond["encoder_hidden_states"], ref[1]) < 1e-5
    assert maxdiff(cond["pooled_projections"], ref[2]) < 1e-5
    assert maxdiff(uncond["pooled_projections"], ref[3]) < 1e-5
    # the channels past CLIP-L | CLIP-G (24 + 32) are the zero padding
    assert cond["encoder_hidden_states"][:, :77, 56:].abs().max() == 0


def test_prompt_embeddings_without_t5_match(repo, reference):
    """text_encoder_3=False: zeros in T5's place, as diffusers with text_encoder_3=None."""
    ours = zoo.create("sd3-medium", weights=repo, device="cpu", dtype=torch.float64, text_encoder_3=False)
    ref = StableDiffusion3Pipeline(**{**reference.components, "text_encoder_3": None, "tokenizer_3": None})
    with torch.no_grad():
        expected = ref.encode_prompt(PROMPTS[0], None, None, device="cpu", max_sequence_length=32)
        cond, uncond = ours.conditioner(1, prompt=PROMPTS[0], max_sequence_length=32)
    assert maxdiff(cond["encoder_hidden_states"], expected[0]) < 1e-5
    assert maxdiff(uncond["encoder_hidden_states"], expected[1]) < 1e-5
    assert maxdiff(cond["pooled_projections"], expected[2]) < 1e-5
    assert cond["encoder_hidden_states"][:, 77:].abs().max() == 0


def test_the_tokenizers_pad_as_their_files_say(ours, reference):
    l, g = ours.conditioner.clip_l.tokenize("a cat"), ours.conditioner.clip_g.tokenize("a cat")
    assert l[0, -1] == 49407 and g[0, -1] == 0
    texts = ["a cat", "wow!! a dog?!", "<|endoftext|> and <|startoftext|>", "x" * 400]
    for tok, mine in ((reference.tokenizer, ours.conditioner.clip_l), (reference.tokenizer_2, ours.conditioner.clip_g)):
        expected = tok(texts, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
        assert torch.equal(mine.tokenize(texts), expected)
    assert (g[0] == 0).sum() == 77 - 4 and (ours.conditioner.clip_g.tokenize("wow!")[0, :4] == 0).sum() == 1


# -- sampling -----------------------------------------------------------------------------------------------------


def test_guided_sampling_matches_the_diffusers_pipeline(ours, reference):
    """4 flow-Euler steps with guidance 4.5 from the same latents, float64: latents within 1e-4, and images."""
    noise = torch.randn(2, 16, 4, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    kwargs = dict(negative_prompt="", guidance_scale=4.5, height=32, width=48)
    expected = reference(PROMPTS, num_inference_steps=4, latents=noise.clone(), output_type="latent", **kwargs).images
    latents = ours.sample(2, prompt=PROMPTS, steps=4, noise=noise, output="latent", progress=False, **kwargs)
    assert latents.shape == (2, 16, 4, 6)
    assert maxdiff(latents, expected) < 1e-4
    assert ours.last_nfe == 4  # one batched forward per step for both branches
    images = ours.sample(2, prompt=PROMPTS, steps=4, noise=noise, progress=False, **kwargs)
    ref_images = reference(PROMPTS, num_inference_steps=4, latents=noise.clone(), output_type="pt", **kwargs).images
    assert images.shape == (2, 3, 32, 48) and maxdiff(images, ref_images) < 1e-4


def test_flow_grid_is_the_scheduler_step_by_step(ours):
    """The real scheduler config (shift 3.0): zoo's grid and timesteps are FlowMatchEulerDiscreteScheduler's, and
    every flow-euler step is the scheduler's step on the same model output."""
    config = json.loads((SD3 / "scheduler" / "scheduler_config.json").read_text())
    scheduler = FlowMatchEulerDiscreteScheduler.from_config(config)
    for steps in (4, 28):
        scheduler.set_timesteps(steps)
        sigmas = ours.sigmas(steps)
        assert maxdiff(sigmas.float(), scheduler.sigmas) < 1e-6
        assert maxdiff(ours.schedule.sigma_to_t(sigmas[:-1]).float(), scheduler.timesteps) < 1e-3
    cond, _ = ours.conditioner(1, prompt="a cat")
    states: list[torch.Tensor] = []
    noise = torch.randn(1, 16, 4, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    ours.sample(1, prompt="a cat", steps=4, guidance_scale=1.0, noise=noise, output="latent", progress=False,
                callback=lambda info: states.append(info.x.clone()))
    scheduler.set_timesteps(4)
    x = noise
    for i, t in enumerate(scheduler.timesteps):
        with torch.no_grad():
            v = ours.denoiser.transformer(x, t.expand(1), cond["encoder_hidden_states"], cond["pooled_projections"])
        x = scheduler.step(v, t, x).prev_sample
        assert maxdiff(states[i], x) < 1e-5, i


def test_text_encoders_false_needs_no_text_encoder_files(repo, tmp_path):
    """The transformer, VAE and scheduler alone are a complete folder for text_encoders=False (and the Hub fetch
    asks for nothing more: ``ModelEntry.files_for``), while the full pipeline still refuses that folder."""
    import shutil

    bare = tmp_path / "bare"
    for part in ("transformer", "vae", "scheduler"):
        shutil.copytree(repo / part, bare / part)
    entry = zoo.get_entry("sd3-medium")
    kept = {(s if isinstance(s, str) else s[0]).split("/")[0] for s in entry.files_for({"text_encoders": False})}
    assert kept == {"transformer", "vae", "scheduler"}
    assert len(entry.files_for({"text_encoder_3": False})) == len(entry.all_files) - 3  # config, weights, spiece
    model = zoo.create("sd3-medium", weights=bare, device="cpu", dtype=torch.float64, text_encoders=False)
    assert model.conditioner.clip_l is None
    with pytest.raises(FileNotFoundError, match="text_encoder"):
        zoo.create("sd3-medium", weights=bare, device="cpu", dtype=torch.float64)


def test_embeddings_without_text_encoders(repo, ours):
    """text_encoders=False: the transformer and VAE alone, given the embeddings the full pipeline makes."""
    bare = zoo.create("sd3-medium", weights=repo, device="cpu", dtype=torch.float64, text_encoders=False)
    assert bare.conditioner.clip_l is None and bare.conditioner.t5 is None
    cond, uncond = ours.conditioner(1, prompt=PROMPTS[0])
    noise = torch.randn(1, 16, 4, 4, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    common = dict(steps=2, noise=noise, output="latent", progress=False)
    expected = ours.sample(1, prompt=PROMPTS[0], **common)
    got = bare.sample(1, prompt_embeds=cond["encoder_hidden_states"], pooled_prompt_embeds=cond["pooled_projections"],
                      negative_prompt_embeds=uncond["encoder_hidden_states"],
                      negative_pooled_prompt_embeds=uncond["pooled_projections"], **common)
    assert maxdiff(got, expected) < 1e-12
    with pytest.raises(ValueError, match="text_encoders=False"):
        bare.sample(1, prompt="a cat", **common)
    with pytest.raises(ValueError, match="uncond"):  # guidance without negative embeddings
        bare.sample(1, prompt_embeds=cond["encoder_hidden_states"], pooled_prompt_embeds=cond["pooled_projections"],
                    **common)
    with pytest.raises(ValueError, match="multiples of 16"):
        ours.sample(1, prompt="a cat", height=40, width=32, steps=1, progress=False)


def test_zoo_sample_cli(repo, tmp_path, capsys):
    from zoo.cli import main
    out = tmp_path / "sd3.png"
    assert main(["sample", "sd3-medium", "--weights", str(repo), "--device", "cpu", "-n", "1", "--steps", "2",
                 "--prompt", "a photo of a cat", "--negative-prompt", "blurry", "--guidance-scale", "5",
                 "--option", "height=32", "--option", "width=48", "-o", str(out)]) == 0
    assert "1 samples from sd3-medium" in capsys.readouterr().out
    assert out.is_file()


def test_model_cpu_offload_gives_the_same_images(ours):
    """With offload each component moves to the offload device only while it runs (here the CPU itself, so the
    check is of the orchestration: the same images, every component back on the CPU afterwards)."""
    noise = torch.randn(1, 16, 4, 4, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    common = dict(prompt="a cat", steps=2, noise=noise, progress=False)
    expected = ours.sample(1, **common)
    try:
        ours.enable_model_cpu_offload("cpu")
        # the latents pass between the stages as float32 (what sample(output="latent") returns): exact for
        # float16/32 models, within float32 rounding for this float64 one
        assert maxdiff(ours.sample(1, **common), expected) < 1e-6
        assert maxdiff(ours.sample(1, output="latent", **common), ours.sample(1, output="raw", **common)) == 0
    finally:
        ours.disable_model_cpu_offload()
    assert all(p.device.type == "cpu" for p in ours.parameters())


def test_float16_as_published(repo, ours):
    """dtype=float16: the transformer and text encoders in float16, the VAE upcast to float32 (its config's
    force_upcast, as diffusers does); latents close to the float64 run's."""
    half = zoo.create("sd3-medium", weights=repo, device="cpu", dtype=torch.float16)
    assert half.dtype == torch.float16 and half.conditioner.t5.dtype == torch.float16
    assert half.autoencoder.dtype == torch.float32
    noise = torch.randn(1, 16, 4, 4, generator=torch.Generator().manual_seed(4))
    common = dict(prompt="a cat", steps=2, noise=noise, output="latent", progress=False)
    latents = half.sample(1, **common)
    assert latents.dtype == torch.float32 and latents.isfinite().all()
    assert maxdiff(latents, ours.sample(1, **{**common, "noise": noise.double()})) < 0.05


def test_invert_then_sample_round_trip(ours):
    """invert at the images' own size (not the checkpoint's 1024): flow-euler back and forth gets the latents
    back to the method's order."""
    latents = ours.sample(1, prompt="a cat", steps=8, output="latent", guidance_scale=1.0, progress=False,
                          generator=torch.Generator().manual_seed(5), height=32, width=32)
    noise = ours.invert(latents, input="raw", prompt="a cat", steps=8, progress=False)
    again = ours.sample(1, prompt="a cat", steps=8, noise=noise, output="latent", guidance_scale=1.0, progress=False)
    assert noise.shape == (1, 16, 4, 4)
    assert maxdiff(again, latents) < 0.05 * float(latents.abs().max())


def test_drop_t5_after_encoding(ours):
    """Encode with T5, drop it, sample from the kept embeddings; later prompts get zeros in T5's place."""
    from zoo.plugins.sd3.text import SD3Conditioner
    base = ours.conditioner
    conditioner = SD3Conditioner(base.clip_l, base.clip_g, base.t5, joint_dim=64, pooled_dim=56)
    kept, _ = conditioner(1, prompt="a cat")
    conditioner.drop_t5()
    after, _ = conditioner(1, prompt="a cat")
    assert conditioner.t5 is None and base.t5 is not None
    assert maxdiff(after["encoder_hidden_states"][:, :77], kept["encoder_hidden_states"][:, :77]) == 0
    assert after["encoder_hidden_states"][:, 77:].abs().max() == 0 < kept["encoder_hidden_states"][:, 77:].abs().max()
