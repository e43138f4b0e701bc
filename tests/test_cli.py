"""The `zoo` command end to end, in-process (zoo.cli.main) and as the installed console script."""
from __future__ import annotations

import dataclasses
import json
import subprocess
from pathlib import Path

import pytest
from PIL import Image

import zoo
from zoo.cli import main


def test_list_filters_by_wildcard(capsys):
    assert main(["list", "ddim-*"]) == 0
    names = [line.split()[0] for line in capsys.readouterr().out.splitlines()]
    assert names and all(n.startswith("ddim-") for n in names)
    assert "ddim-cifar" in names


def test_list_models_api_matches_issue_example():
    names = zoo.list_models("dd*")
    for expected in ("ddim-cifar", "ddim-celebahq", "ddim-church", "ddim-bedroom", "ddim-cat", "ddpm-cifar",
                     "ddpm-digits"):
        assert expected in names
    assert names == sorted(names)


def test_info_prints_pinned_revision_and_provenance(capsys):
    assert main(["info", "ddim-cifar"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["repo_id"] == "google/ddpm-cifar10-32"
    assert len(info["revision"]) == 40 and int(info["revision"], 16) >= 0
    for field in ("license", "paper", "result", "files"):
        assert info[field], field


def test_unknown_model_is_one_clear_line_with_suggestions(capsys):
    assert main(["info", "ddim-cifr"]) == 2
    err = capsys.readouterr().err
    assert "unknown model 'ddim-cifr'" in err and "'ddim-cifar'" in err and "Traceback" not in err


def test_train_refuses_hub_models(capsys):
    assert main(["train", "ddim-cifar"]) == 2
    assert "ddpm-digits" in capsys.readouterr().err


def test_sample_offline_default_writes_a_grid(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = tmp_path / "grid.png"
    assert main(["sample", "ddpm-digits", "-n", "6", "--steps", "5", "--device", "cpu", "-o", str(out)]) == 0
    image = Image.open(out)
    assert image.width > 0 and image.height > 0


def test_console_script_is_installed():
    result = subprocess.run(["zoo", "--version"], capture_output=True, text=True)
    assert result.returncode == 0 and zoo.__version__ in result.stdout


def test_markdown_table_lists_every_model(capsys):
    assert main(["list", "--markdown"]) == 0
    table = capsys.readouterr().out
    for name in zoo.list_models():
        assert f"`{name}`" in table


@pytest.mark.parametrize("dtype", ["float16", "bf16"])
def test_create_accepts_dtype_names(dtype):
    pipe = zoo.create("ddpm-digits", device="cpu", dtype=dtype)
    assert str(pipe.dtype).endswith(("float16", "bfloat16"))
    images = pipe.sample(2, steps=3, progress=False, generator=__import__("torch").Generator().manual_seed(0))
    assert images.shape[0] == 2 and images.isfinite().all()


def test_create_rejects_unknown_dtype():
    with pytest.raises(ValueError, match="unknown dtype"):
        zoo.create("ddpm-digits", device="cpu", dtype="int7")


def test_train_never_overwrites_the_packaged_weights_by_default(tmp_path, monkeypatch, capsys):
    entry = zoo.get_entry("ddpm-digits")
    written_to = []

    def record(out, seed=0, **options):  # stands in for the recipe: only where it would write matters here
        written_to.append(Path(out))
        return Path(out)

    monkeypatch.setitem(zoo.get_registry().models, "ddpm-digits", dataclasses.replace(entry, train=record))
    monkeypatch.chdir(tmp_path)
    assert main(["train", "ddpm-digits", "--steps", "1"]) == 0
    assert written_to[0].resolve() == (tmp_path / "ddpm-digits").resolve()
    assert written_to[0].resolve() != Path(entry.local_dir).resolve()
    assert "--weights" in capsys.readouterr().out


def test_sampler_options_are_key_value_pairs_checked_before_the_model_loads(tmp_path, capsys):
    out = tmp_path / "eta.png"
    assert main(["sample", "ddpm-digits", "-n", "2", "--steps", "3", "--sampler", "ddim", "--option", "eta=0.5",
                 "--device", "cpu", "-o", str(out)]) == 0 and out.is_file()
    assert main(["sample", "ddpm-digits", "--sampler", "ddim", "--option", "rtol=1e-3", "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert "takes no option 'rtol'" in err and "eta" in err
    assert main(["sample", "ddpm-digits", "--option", "eta", "-o", str(out)]) == 2
    assert "KEY=VALUE" in capsys.readouterr().err


def test_samplers_list_their_options(capsys):
    assert main(["samplers"]) == 0
    line = next(l for l in capsys.readouterr().out.splitlines() if l.startswith("ode-rk45"))
    assert "options: rtol, atol" in line
