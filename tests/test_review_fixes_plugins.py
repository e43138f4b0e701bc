"""Review fixes in the plugins, zoo.classifier and zoo.testing, each pinned by a test that failed before the fix.

1. one input rule for every Encoder (classifier, CLIP, SigLIP): ``preprocess`` returns the model's device and
   dtype; ``encode`` / ``forward`` / ``encode_image`` check the batch and move it there;
2. timm buffers that nothing recomputes are refused (and Swin's recomputed ones are timm's);
3. one ``fuse_qkv`` (zoo.classifier's) for ViT, Swin, CLIP and SigLIP: a missing projection names the key;
4. DDPM scheduler configs zoo cannot sample as diffusers would are refused;
5. ``zoo train ddpm-digits`` replaces its output folder whole;
6. zoo.testing's mixture follows the input's device;
7. the third-party example plugin reports its steps and preprocesses on its own device;
8. the samplers package points at documentation that exists;
9. CLIP without tokenizer files says so, as a zoo error.
"""
from __future__ import annotations

import importlib
import json
import re
import shutil
from pathlib import Path

import pytest
import torch
from torch import nn

import zoo
import zoo.classifier
from zoo.classifier import load_timm_model
from zoo.errors import MissingFileError, WeightsMismatchError, ZooError
from zoo.plugins.clip import clip as clip_arch
from zoo.plugins.clip import siglip as siglip_arch
from zoo.plugins.ddpm import DIGITS_DIR
from zoo.registry import DiscreteVPSchedule
from zoo.testing import GMMDenoiser, _sliced_w2, gmm_pipeline, ring, sliced_wasserstein

from test_plugins import needs_toy  # skips where the third-party example plugin is not installed

ROOT = Path(__file__).resolve().parents[1]

# -- 1. one input rule for every Encoder ---------------------------------------------------------------------------

ENCODERS = ["vit-ti16", "swin-t", "clip-vit-b32", "siglip-b16"]
_BF16: dict[str, nn.Module] = {}


def bf16(name: str) -> nn.Module:
    """A random-weight bfloat16 model on the CPU, built once per test session."""
    if name not in _BF16:
        _BF16[name] = zoo.create(name, pretrained=False, device="cpu", dtype=torch.bfloat16)
    return _BF16[name]


def _finite(t: torch.Tensor) -> bool:
    return bool(torch.isfinite(t.float()).all())


@pytest.mark.parametrize("name", ENCODERS)
def test_float32_batch_runs_on_a_bfloat16_encoder(name):
    """Before: the classifiers handed the float32 batch to timm, which died on a dtype mismatch."""
    model = bf16(name)
    x = torch.randn(2, 3, *model.image_size)  # float32, as a user's own pipeline makes it
    with torch.inference_mode():
        out = model.encode(x)
        assert out.dtype == torch.bfloat16 and out.shape[0] == 2 and _finite(out)
        if isinstance(model, zoo.classifier.ImageClassifier):
            logits = model(x)
            assert logits.shape == (2, model.num_classes) and logits.dtype == torch.bfloat16 and _finite(logits)
            tokens = model.encode(x, features="tokens")
            assert tokens.dtype == torch.bfloat16 and _finite(tokens)
            if model.hierarchical:
                assert all(s.dtype == torch.bfloat16 and _finite(s) for s in model.encode(x, features="stages"))
        else:
            emb = model.encode_image(x.double(), normalize=True)  # any float dtype
            assert emb.dtype == torch.bfloat16 and _finite(emb)


@pytest.mark.parametrize("name", ENCODERS)
def test_preprocess_returns_the_models_dtype_and_device(name):
    """Before: CLIP's and SigLIP's preprocess returned float32 whatever the model's dtype."""
    model = bf16(name)
    x = model.preprocess(torch.rand(2, 3, 40, 50))
    assert x.dtype == torch.bfloat16 and x.device.type == "cpu" and x.shape == (2, 3, *model.image_size)


@pytest.mark.parametrize("shape", ["wrong-size", "no-batch-dim"])
@pytest.mark.parametrize("name", ENCODERS)
def test_bad_batch_is_a_value_error_naming_the_expected_shape(name, shape):
    """Before: the message said (N, C, H, W) or "224x224 pixels", never the shape the model wants."""
    model = bf16(name)
    h, w = model.image_size
    x = torch.zeros(1, 3, h + 16, w) if shape == "wrong-size" else torch.zeros(3, h, w)
    methods = [model.encode] + ([model.encode_image] if hasattr(model, "encode_image") else [model.forward])
    for method in methods:
        with pytest.raises(ValueError, match=re.escape(f"(N, 3, {h}, {w})")):
            method(x)
    with pytest.raises(TypeError, match=re.escape(f"(N, 3, {h}, {w})")):
        model.encode(torch.zeros(1, 3, h, w, dtype=torch.uint8))


@pytest.mark.parametrize("name", ["vit-ti16", "clip-vit-b32"])
def test_cpu_batch_is_moved_to_the_models_device(name):
    """A CPU batch on a model elsewhere (meta here; CUDA in practice) runs on the model's device.

    Before: the classifier handed the CPU batch to meta weights and failed."""
    model = zoo.create(name, pretrained=False, device="meta")
    x = torch.randn(2, 3, *model.image_size)
    out = model.encode(x)
    assert out.device.type == "meta" and out.shape[0] == 2
    assert model.preprocess(torch.rand(1, 3, 32, 32)).device.type == "meta"


# -- 2. non-persistent buffers ---------------------------------------------------------------------------------------


class _BufferWithoutInit(nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(4, 4)
        self.register_buffer("index", torch.zeros(4, dtype=torch.long), persistent=False)


def test_buffer_that_nothing_recomputes_is_refused():
    """Before: the meta buffer became torch.empty_like and passed the meta check, uninitialised."""
    with torch.device("meta"):
        model = nn.Sequential(_BufferWithoutInit())
    state = {k: torch.zeros(v.shape) for k, v in model.state_dict().items()}
    with pytest.raises(WeightsMismatchError, match=r"0\.index.*init_non_persistent_buffers|init_non_persistent"
                                                   r"_buffers.*0\.index"):
        load_timm_model(model, state, source="toy.safetensors", device=torch.device("cpu"), dtype=torch.float32)


def test_swin_recomputed_buffers_are_timms():
    """Swin's relative position index and shift masks after loading equal those of a model timm built itself
    (a regression guard: this passed before the fix too)."""
    from timm.models.swin_transformer import SwinTransformer, WindowAttention, get_relative_position_index

    args = dict(img_size=64, patch_size=4, embed_dim=16, depths=(2, 2), num_heads=(1, 2), window_size=4,
                num_classes=3)
    torch.manual_seed(0)
    ref = SwinTransformer(**args).eval()
    with torch.device("meta"):
        model = SwinTransformer(**args)
    model = load_timm_model(model, ref.state_dict(), source="ref", device=torch.device("cpu"), dtype=torch.float32)
    ours, theirs = dict(model.named_buffers()), dict(ref.named_buffers())
    assert ours.keys() == theirs.keys() and any(k.endswith("attn_mask") for k in ours)
    for key in ours:
        assert torch.equal(ours[key], theirs[key]), key
    windows = [m for m in model.modules() if isinstance(m, WindowAttention)]
    assert windows and all(torch.equal(m.relative_position_index, get_relative_position_index(4, 4))
                           for m in windows)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(model(x), ref(x), atol=1e-5)


# -- 3. one fuse_qkv -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", [clip_arch, siglip_arch], ids=["clip", "siglip"])
def test_checkpoint_missing_k_proj_is_a_weights_mismatch_naming_the_key(arch):
    """Before: CLIP's own fuse_qkv raised a bare KeyError."""
    layer = "vision_model.encoder.layers.0.self_attn"
    sd = {f"{layer}.{n}_proj.{leaf}": torch.zeros((4, 4) if leaf == "weight" else (4,))
          for n in "qv" for leaf in ("weight", "bias")}
    with pytest.raises(WeightsMismatchError, match=re.escape("visual.blocks.0.attn.k.weight")):
        arch.from_transformers(sd)
    assert arch.fuse_qkv is zoo.classifier.fuse_qkv  # one implementation
    full = {**sd, f"{layer}.k_proj.weight": torch.ones(4, 4), f"{layer}.k_proj.bias": torch.ones(4)}
    fused = arch.from_transformers(full)["visual.blocks.0.attn.qkv.weight"]
    assert fused.shape == (12, 4) and torch.equal(fused[4:8], torch.ones(4, 4))  # rows q | k | v


# -- 4. DDPM scheduler configs ---------------------------------------------------------------------------------------


def _digits_with(tmp_path: Path, **changes) -> Path:
    folder = tmp_path / "digits"
    shutil.copytree(DIGITS_DIR, folder)
    config = json.loads((folder / "scheduler_config.json").read_text())
    (folder / "scheduler_config.json").write_text(json.dumps({**config, **changes}))
    return folder


@pytest.mark.parametrize("key, value, supported", [
    ("rescale_betas_zero_snr", True, "false"),
    ("thresholding", True, "false"),
    ("variance_type", "learned", "fixed_small, fixed_small_log, fixed_large"),
    ("variance_type", "learned_range", "fixed_small, fixed_small_log, fixed_large"),
    ("beta_schedule", "sigmoid", "linear, scaled_linear, squaredcos_cap_v2"),
])
def test_scheduler_config_zoo_cannot_sample_is_refused(tmp_path, key, value, supported):
    """Before: the first four loaded and sampled wrongly; an unknown beta_schedule failed without naming the file."""
    folder = _digits_with(tmp_path, **{key: value})
    with pytest.raises(ValueError) as err:
        zoo.create("ddpm-digits", weights=folder, device="cpu")
    message = str(err.value)
    assert "scheduler_config.json" in message and f"{key}={json.dumps(value)}" in message, message
    assert supported in message, message


@pytest.mark.parametrize("changes", [{"rescale_betas_zero_snr": False, "thresholding": False},
                                     {"variance_type": "fixed_large"}, {"variance_type": "fixed_small_log"},
                                     {"beta_schedule": "squaredcos_cap_v2"},
                                     {"beta_schedule": "sigmoid", "trained_betas": [1e-4] * 1000}])
def test_scheduler_config_zoo_can_sample_loads(tmp_path, changes):
    assert zoo.create("ddpm-digits", weights=_digits_with(tmp_path, **changes), device="cpu") is not None


# -- 5. zoo train ddpm-digits writes atomically ----------------------------------------------------------------------

OUTPUT = {"config.json", "scheduler_config.json", "diffusion_pytorch_model.safetensors"}


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir()}


def test_train_replaces_an_earlier_run_and_leaves_nothing_beside_it(tmp_path):
    pytest.importorskip("sklearn")
    from zoo.plugins.ddpm.train_digits import train

    out = tmp_path / "digits"
    shutil.copytree(DIGITS_DIR, out)  # an earlier run's folder
    (out / "config.json").write_text("{}")  # ... damaged
    assert train(out, steps=2, batch_size=8, progress=False) == out
    assert {p.name for p in out.iterdir()} == OUTPUT
    assert [p.name for p in tmp_path.iterdir()] == ["digits"]  # no temporary or old folder left
    pipe = zoo.create("ddpm-digits", weights=out, device="cpu")
    assert pipe.sample(2, steps=2, progress=False).shape == (2, 1, 16, 16)


def test_train_that_fails_while_writing_leaves_the_old_folder_as_it_was(tmp_path, monkeypatch):
    """Before: the new weights were already in the folder beside the old configs (a mixed folder)."""
    pytest.importorskip("sklearn")
    train_digits = importlib.import_module("zoo.plugins.ddpm.train_digits")  # the package exports train as train_digits

    out = tmp_path / "digits"
    shutil.copytree(DIGITS_DIR, out)
    before = _snapshot(out)

    class DiskFull:
        @staticmethod
        def dumps(*args, **kwargs):
            raise OSError(28, "No space left on device")

    monkeypatch.setattr(train_digits, "json", DiskFull)  # fails after the weights file is written
    with pytest.raises(OSError, match="No space left"):
        train_digits.train(out, steps=2, batch_size=8, progress=False)
    assert _snapshot(out) == before
    assert [p.name for p in tmp_path.iterdir()] == ["digits"]


def test_train_refuses_a_folder_holding_other_files_before_training(tmp_path, monkeypatch):
    """The folder is replaced as a whole, so one holding anything else is refused, and before any training."""
    train_digits = importlib.import_module("zoo.plugins.ddpm.train_digits")  # the package exports train as train_digits

    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    monkeypatch.setattr(train_digits, "load_digits_images", lambda: pytest.fail("training started"))
    with pytest.raises(ZooError, match="notes.txt"):
        train_digits.train(out, steps=2, batch_size=8, progress=False)
    assert _snapshot(out) == {"notes.txt": b"keep me"}


def test_training_schedule_is_diffusers():
    """train uses zoo's own DiscreteVPSchedule (float32 as diffusers computes it): the numbers are diffusers'."""
    diffusers = pytest.importorskip("diffusers")
    from zoo.plugins.ddpm.train_digits import SCHEDULER_CONFIG

    ours = DiscreteVPSchedule.from_scheduler_config(SCHEDULER_CONFIG).alphas_cumprod.to(torch.float32)
    config = {k: v for k, v in SCHEDULER_CONFIG.items() if not k.startswith("_")}
    assert torch.equal(ours, diffusers.DDPMScheduler(**config).alphas_cumprod)


# -- 6. zoo.testing follows the input's device -----------------------------------------------------------------------


def test_gmm_helpers_follow_the_input_device():
    """On the meta device (shapes only; CUDA in practice). Before: CPU means against meta inputs failed."""
    gmm = ring(std=0.2, shape=(1, 4, 4))
    x = torch.randn(5, 1, 4, 4, device="meta")
    t = torch.full((5,), 500.0, device="meta")
    for prediction in ("eps", "v", "x0"):
        out = GMMDenoiser(gmm, prediction).to("meta")(x, t)
        assert out.device.type == "meta" and out.shape == x.shape and out.dtype == x.dtype
    out = GMMDenoiser(gmm, "eps").to("meta")(x, t, class_labels=torch.tensor([0, 1, 2, 3, -1]))
    assert out.device.type == "meta" and out.shape == x.shape
    a = torch.ones(5, dtype=torch.float64, device="meta")
    assert gmm.class_log_posterior(x, a, a, torch.zeros(5, dtype=torch.long)).device.type == "meta"
    w2 = _sliced_w2(torch.randn(64, 1, 4, 4, device="meta"), gmm, 8, 0)
    assert w2.device.type == "meta" and w2.shape == ()


def test_gmm_math_is_unchanged():
    """The device handling changes no number: the denoiser against the posterior mean written out per component,
    and the distance the same for a float32 and a float64 copy of the samples."""
    gmm = ring(std=0.2, shape=(1, 4, 4))
    x, _ = gmm.sample(64, torch.Generator().manual_seed(0))
    x = x + 0.5 * torch.randn(x.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    alpha, sigma = torch.full((64,), 0.9, dtype=torch.float64), torch.full((64,), 0.5, dtype=torch.float64)
    flat, log_r, x0 = x.reshape(64, -1), [], []
    for k in range(len(gmm.means)):
        mu, s2 = gmm.means[k].reshape(-1), gmm.stds[k] ** 2
        var = 0.9**2 * s2 + 0.5**2
        log_r.append(gmm.weights[k].log() - 0.5 * ((flat - 0.9 * mu) ** 2).sum(1) / var
                     - 0.5 * flat.shape[1] * torch.log(2 * torch.pi * var))
        x0.append(mu + 0.9 * s2 / var * (flat - 0.9 * mu))
    r = torch.stack(log_r, 1).softmax(1)
    expected = (r[..., None] * torch.stack(x0, 1)).sum(1).reshape(x.shape)
    assert torch.allclose(gmm.posterior_mean(x, alpha, sigma), expected, atol=1e-12)
    samples, _ = gmm.sample(512, torch.Generator().manual_seed(2))
    assert abs(sliced_wasserstein(samples.float(), gmm) - sliced_wasserstein(samples, gmm)) < 1e-6
    assert sliced_wasserstein(samples, gmm) == float(_sliced_w2(samples, gmm, 64, 0))


# -- 7. the third-party example plugin -------------------------------------------------------------------------------


@needs_toy
def test_toy_sampler_reports_every_step_and_stops_early():
    """Before: toy-euler never called report(), so callbacks, progress bars and early stopping saw nothing."""
    zoo.reload()
    pipe = gmm_pipeline("eps")
    seen = []
    pipe.sample(16, steps=5, sampler="toy-euler", callback=lambda info: seen.append(info.step), progress=False)
    assert seen == [0, 1, 2, 3, 4]

    def stop_after_two(info):
        if info.step == 1:
            raise StopIteration
    pipe.sample(16, steps=5, sampler="toy-euler", callback=stop_after_two, progress=False)
    assert pipe.last_nfe == 2


@needs_toy
def test_toy_preprocess_follows_the_models_device():
    """Before: a CPU input met the model's buffers on another device (meta here; CUDA in practice)."""
    model = zoo.create("toy-mlp", device="meta")
    x = model.preprocess(torch.rand(2, 3, 32, 32))
    assert x.device.type == "meta" and x.shape == (2, 3, 8, 8)
    cpu = zoo.create("toy-mlp", device="cpu", dtype=torch.bfloat16)
    features = cpu.encode(torch.rand(2, 3, 8, 8))  # float32 batch on a bfloat16 model
    assert features.dtype == torch.bfloat16 and features.shape == (2, 16)


# -- 8. documentation references -------------------------------------------------------------------------------------


def test_plugins_point_at_documentation_that_exists():
    """Before: plugins/samplers/__init__.py sent readers to docs/samplers-contributing.md, which is gone."""
    for source in (ROOT / "plugins").rglob("*.py"):
        for ref in re.findall(r"\b((?:docs/)?[\w.-]+\.md)\b", source.read_text()):
            assert (ROOT / ref).is_file(), f"{source.relative_to(ROOT)} refers to {ref}, which does not exist"
    assert "CONTRIBUTING.md" in (ROOT / "plugins" / "samplers" / "__init__.py").read_text()
    assert "\n## Adding a sampler\n" in (ROOT / "CONTRIBUTING.md").read_text()


# -- 9. CLIP without tokenizer files ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["clip-vit-b32", "siglip-b16"])
def test_text_without_tokenizer_files_is_a_missing_file_error(name):
    """Before: a RuntimeError saying "pass token ids", not why there was no tokenizer or how to get one."""
    model = bf16(name)
    for call in (lambda: model.encode_text(["a cat"]), lambda: model.zero_shot(torch.rand(1, 3, 32, 32), ["cat"])):
        with pytest.raises(MissingFileError) as err:
            call()
        message = str(err.value)
        assert "pretrained=False" in message and f"zoo.create({name!r})" in message and "weights=" in message
    ids = torch.tensor([[1, 2, 3]])
    assert model.encode_text(ids).shape[0] == 1  # token ids still work
