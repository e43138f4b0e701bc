"""zoo.save_pretrained writes the Hub layout a model was loaded from: a DDPM zoo saved loads in diffusers and
samples the same images, loads back in zoo with the same weights, and carries a model card from the registry."""
from __future__ import annotations

import pytest
import torch

import zoo
from zoo.errors import ZooError
from zoo.save import save_pretrained

diffusers = pytest.importorskip("diffusers")


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def changed_digits(one_thread):
    """ddpm-digits with every weight moved a little: what is saved must be these weights, not the shipped ones."""
    pipe = zoo.create("ddpm-digits", device="cpu")
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in pipe.denoiser.unet.parameters():
            p.add_(0.01 * torch.randn(p.shape, generator=gen))
    return pipe


def test_a_saved_ddpm_samples_the_same_images_in_diffusers(changed_digits, tmp_path):
    pipe, folder = changed_digits, tmp_path / "my-digits"
    assert save_pretrained(pipe, folder) == folder
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "config.json",
                                                        "diffusion_pytorch_model.safetensors", "scheduler_config.json"]
    ref = diffusers.DDIMPipeline(unet=diffusers.UNet2DModel.from_pretrained(folder),
                                 scheduler=diffusers.DDIMScheduler.from_pretrained(folder))
    ref.set_progress_bar_config(disable=True)
    n, steps = 4, 10
    theirs = ref(batch_size=n, generator=torch.Generator().manual_seed(11), num_inference_steps=steps,
                 output_type="pt").images
    noise = torch.randn((n, *pipe.sample_shape), generator=torch.Generator().manual_seed(11))  # what DDIMPipeline draws
    ours = pipe.sample(n, steps=steps, sampler="ddim", noise=noise, output="raw", progress=False)
    # DDIMPipeline clamps its output to [0, 1] (ddpm-digits clips no x0 estimate, so raw values may overshoot)
    assert ((ours.double() + 1) / 2).clamp(0, 1).sub(theirs.double()).abs().max().item() <= 1e-4


def test_a_saved_model_loads_back_with_its_weights_and_a_model_card(changed_digits, tmp_path):
    pipe = changed_digits
    folder = save_pretrained(pipe, tmp_path / "my-digits")
    again = zoo.create("ddpm-digits", weights=folder, device="cpu")
    mine, theirs = pipe.denoiser.unet.state_dict(), again.denoiser.unet.state_dict()
    assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)
    assert again.scheduler_config == pipe.scheduler_config
    card = (folder / "README.md").read_text()
    entry = zoo.get_entry("ddpm-digits")
    for text in ("library_name: zoo", entry.license, entry.paper, entry.result, "zoo train ddpm-digits"):
        assert text in card, text


def test_saved_files_follow_the_umask(changed_digits, tmp_path):
    import os

    old = os.umask(0o022)
    try:
        folder = save_pretrained(changed_digits, tmp_path / "my-digits")
    finally:
        os.umask(old)
    assert {p.stat().st_mode & 0o777 for p in folder.iterdir()} == {0o644} and folder.stat().st_mode & 0o777 == 0o755


def test_saving_again_replaces_the_folder_whole(changed_digits, tmp_path):
    folder = tmp_path / "my-digits"
    folder.mkdir()
    (folder / "stale.bin").write_bytes(b"old")
    save_pretrained(changed_digits, folder)
    assert not (folder / "stale.bin").exists() and [p.name for p in tmp_path.iterdir()] == ["my-digits"]


def test_a_model_without_an_entry_name_is_refused(tmp_path):
    with pytest.raises(ZooError, match="pass name="):
        save_pretrained(torch.nn.Linear(2, 2), tmp_path / "x")


def test_a_saved_timm_classifier_loads_in_timm_with_equal_logits(tmp_path):
    import json

    import timm

    from helpers.classifier_repos import timm_repo

    repo, _ = timm_repo(tmp_path, "timm__vit_base_patch16_224.augreg2_in21k_ft_in1k", depth=2)
    clf = zoo.create("vit-b16", weights=repo, device="cpu")
    folder = clf.save_pretrained(tmp_path / "my-vit")
    config = json.loads((folder / "config.json").read_text())
    ref = timm.create_model(config["architecture"], pretrained=True, num_classes=config["num_classes"],
                            pretrained_cfg_overlay={"file": str(folder / "model.safetensors")},
                            **config.get("model_args", {})).eval()
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        assert torch.equal(clf(x), ref(x))
    again = zoo.create("vit-b16", weights=folder, device="cpu")
    assert again.labels == clf.labels and again.preprocessing == clf.preprocessing
    with torch.inference_mode():
        assert torch.equal(again(x), clf(x))


@pytest.mark.parametrize("name, repo, cls, overrides", [
    ("vit-b16-google", "google__vit-base-patch16-224", "ViTForImageClassification", {"num_hidden_layers": 2}),
    ("swin-t-ms", "microsoft__swin-tiny-patch4-window7-224", "SwinForImageClassification", {"depths": [2, 2, 2, 2]}),
])
def test_a_saved_transformers_classifier_loads_in_transformers_with_equal_logits(tmp_path, name, repo, cls, overrides):
    """Loaded from transformers' layout (q/k/v apart, HF names), saved back in it: the component's export (the
    inverted rename table, q/k/v split) writes what transformers reads, and zoo reads its own file back."""
    import transformers

    from helpers.classifier_repos import hf_repo

    path, ref = hf_repo(tmp_path, repo, getattr(transformers, cls), **overrides)
    clf = zoo.create(name, weights=path, device="cpu")
    folder = clf.save_pretrained(tmp_path / "saved")
    assert {"config.json", "preprocessor_config.json", "model.safetensors", "README.md"} <= {p.name for p in folder.iterdir()}
    theirs = getattr(transformers, cls).from_pretrained(folder).eval()
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        assert float((theirs(pixel_values=x).logits - ref.eval()(pixel_values=x).logits).abs().max()) < 1e-5
        assert float((theirs(pixel_values=x).logits - clf(x)).abs().max()) < 1e-4
        again = zoo.create(name, weights=folder, device="cpu")
        assert torch.equal(again(x), clf(x)) and again.preprocessing == clf.preprocessing


def test_push_to_hub_uploads_the_saved_folder(changed_digits, monkeypatch):
    """push_to_hub is save_pretrained + huggingface_hub's create_repo and upload_folder (recorded here: the tests
    have no Hub to write to)."""
    import huggingface_hub

    calls = []

    class RecordingApi:
        def __init__(self, token=None):
            calls.append(("init", token))

        def create_repo(self, repo_id, private=None, exist_ok=False):
            calls.append(("create_repo", repo_id, private, exist_ok))

        def upload_folder(self, repo_id, folder_path, commit_message):
            files = sorted(p.name for p in folder_path.iterdir())
            calls.append(("upload_folder", repo_id, files, commit_message))
            return type("CommitInfo", (), {"commit_url": f"https://huggingface.co/{repo_id}/commit/abc"})()

    monkeypatch.setattr(huggingface_hub, "HfApi", RecordingApi)
    url = zoo.push_to_hub(changed_digits, "me/my-digits", token="t", private=True)
    assert url == "https://huggingface.co/me/my-digits/commit/abc"
    assert calls == [("init", "t"), ("create_repo", "me/my-digits", True, True),
                     ("upload_folder", "me/my-digits", ["README.md", "config.json",
                                                        "diffusion_pytorch_model.safetensors", "scheduler_config.json"],
                      "Upload ddpm-digits with zoo")]
