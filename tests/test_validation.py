"""Every input checked: damaged configs and weight files, bad arguments, non-finite values.

The promise under test: whatever a user or a damaged download hands zoo, the result is a model or a ZooError
(that is also the builtin a Python user would catch), never a raw exception from torch, json or a family's
internals, never a silent acceptance of an invalid value, and never minutes of work before the refusal.

* Damaged configs: every built-in component that has a real config here (tests/checkpoints) is read and built
  on the meta device from configs mutated at seeded-random keys (nested ones included) with wrong types,
  negative, zero, huge and missing values; plus a catalogue of known-bad values that must be refused by name.
* Damaged weight files: a safetensors header relabelled from float to int32, a header that claims to be huge.
* Arguments: a table of bad calls to create, sample and invert, each with the builtin class it must also be.
"""
from __future__ import annotations

import importlib.metadata
import json
import random
import shutil
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import zoo
from zoo.errors import (ArgumentTypeError, ConfigError, CorruptWeightsError, InvalidInputError, NonFiniteError,
                        WeightsMismatchError, ZooError)
from zoo.loader import build_checked, component_dir, read_component_config
from zoo.plugins.ddpm import DIGITS_DIR

from checkpoints import CHECKPOINTS

BUILTIN = {ep.name for ep in importlib.metadata.distribution("zoo").entry_points if ep.group == "zoo"}


def _pairs() -> list[tuple[str, object, Path]]:
    """(entry name, component, folder holding its real config) for every built-in component with one here."""
    out, seen = [], set()
    for name in zoo.list_models():
        entry = zoo.get_entry(name)
        if entry.plugin not in BUILTIN or entry.repo_id is None:
            continue
        for component in entry.components:
            folder = CHECKPOINTS / entry.repo_id.replace("/", "__") / component.subfolder
            key = (str(folder), component.config_file)
            if component.config_file and (folder / component.config_file).is_file() and key not in seen:
                seen.add(key)
                out.append((name, component, folder))
    return out


PAIRS = _pairs()
BAD_VALUES = ["x", -1, 0, None, 2.5, [], {}, 10**7, True, float("nan")]


def _paths(config: dict, prefix: tuple = ()) -> list[tuple]:
    out = []
    for key, value in config.items():
        if key.startswith("_"):
            continue
        out.append(prefix + (key,))
        if isinstance(value, dict):
            out += _paths(value, prefix + (key,))
    return out


def _mutated(config: dict, path: tuple, value) -> dict:
    config = json.loads(json.dumps(config))
    node = config
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return config


def _cases(per_component: int = 3) -> list:
    rng = random.Random(12)
    cases = []
    for name, component, folder in PAIRS:
        config = json.loads((folder / component.config_file).read_text())
        paths = _paths(config)
        for path in rng.sample(paths, min(per_component, len(paths))):
            cases.append(pytest.param(name, component, folder, path, rng.choice(BAD_VALUES),
                                      id=f"{name}:{component.name}:{'.'.join(path)}"))
    return cases


def _load_config(component, folder: Path, config: dict, tmp_path: Path):
    target = tmp_path / "repo"
    where = target / component.subfolder if component.subfolder else target
    where.mkdir(parents=True, exist_ok=True)
    (where / component.config_file).write_text(json.dumps(config, allow_nan=True))
    cfg = read_component_config(component, target)
    return build_checked(component, cfg, str(component_dir(target, component) / component.config_file))


@pytest.mark.parametrize("name, component, folder, path, value", _cases())
def test_a_mutated_config_loads_or_is_one_zoo_error(name, component, folder, path, value, tmp_path):
    config = _mutated(json.loads((folder / component.config_file).read_text()), path, value)
    start = time.perf_counter()
    try:
        _load_config(component, folder, config, tmp_path)
    except ZooError as exc:
        assert str(tmp_path) in str(exc) or component.config_file in str(exc), f"the file is not named: {exc}"
    # generous: a loaded 2-core CI machine builds a full-size model on the meta device in seconds, not minutes
    assert time.perf_counter() - start < 60, "a damaged config must fail fast, not build for minutes"


@pytest.mark.parametrize("raw", [b"\xff\xfe{not json", b'{"in_channels": 3', b"[" * 100_000, b"[1, 2, 3]", b""],
                         ids=["not-utf8", "truncated", "deeply-nested", "a-list", "empty"])
def test_unreadable_json_is_a_config_error_naming_the_file(raw, tmp_path):
    folder = tmp_path / "digits"
    shutil.copytree(DIGITS_DIR, folder)
    (folder / "config.json").write_bytes(raw)
    with pytest.raises(ConfigError, match="config.json"):
        zoo.create("ddpm-digits", weights=folder, device="cpu")


# -- known-bad values: each refused by name, before anything is built ------------------------------------------------

DIGITS_UNET = json.loads((DIGITS_DIR / "config.json").read_text())
DIGITS_SCHEDULER = json.loads((DIGITS_DIR / "scheduler_config.json").read_text())

REFUSED = [
    ("config.json", {"layers_per_block": 10_000}, "layers_per_block=10000"),
    ("config.json", {"norm_eps": -1e-5}, "norm_eps"),
    ("config.json", {"sample_size": 15}, "sample_size"),
    ("config.json", {"block_out_channels": [30, 60, 60]}, "norm_num_groups"),
    ("config.json", {"in_channels": "3"}, "in_channels='3'"),
    ("config.json", {"block_out_channels": [10**9, 10**9, 10**9]}, "block_out_channels"),
    ("config.json", {"down_block_types": ["CrossAttnDownBlock2D"] * 3}, "down_block_types"),
    ("scheduler_config.json", {"beta_end": 1.5}, "beta_end"),
    ("scheduler_config.json", {"beta_start": -0.1}, "beta_start"),
    ("scheduler_config.json", {"num_train_timesteps": 10**8}, "num_train_timesteps"),
    ("scheduler_config.json", {"steps_offset": 5000}, "steps_offset"),
    ("scheduler_config.json", {"trained_betas": [2.0] * 10}, "trained_betas"),
    ("scheduler_config.json", {"clip_sample": "yes"}, "clip_sample"),
    ("scheduler_config.json", {"prediction_type": "score"}, "prediction_type"),
]


@pytest.mark.parametrize("file, change, named", REFUSED, ids=[f"{f}:{next(iter(c))}" for f, c, _ in REFUSED])
def test_known_bad_values_are_refused_by_name(file, change, named, tmp_path):
    folder = tmp_path / "digits"
    shutil.copytree(DIGITS_DIR, folder)
    base = DIGITS_UNET if file == "config.json" else DIGITS_SCHEDULER
    (folder / file).write_text(json.dumps({**base, **change}))
    start = time.perf_counter()
    with pytest.raises(ConfigError, match=named.replace("[", r"\[")) as err:
        zoo.create("ddpm-digits", weights=folder, device="cpu")
    assert isinstance(err.value, ValueError)
    assert time.perf_counter() - start < 5


@pytest.mark.parametrize("name, component, change, named", [
    ("dit-xl-2-256", "vae", {"scaling_factor": 0}, "scaling_factor"),  # the repo of sd-vae-ft-ema's config here
    ("dit-xl-2-256", "vae", {"layers_per_block": 10_000}, "layers_per_block"),
    ("dit-xl-2-256", "transformer", {"num_layers": 10_000}, "num_layers"),
    ("dit-xl-2-256", "transformer", {"norm_type": "layer_norm"}, "norm_type"),
    ("clip-vit-b32", "model", {"text_config": {"num_hidden_layers": 10**6}}, "layers"),
])
def test_family_configs_state_their_bounds(name, component, change, named, tmp_path):
    entry = zoo.get_entry(name)
    comp = entry.component(component)
    folder = CHECKPOINTS / entry.repo_id.replace("/", "__") / comp.subfolder
    config = {**json.loads((folder / comp.config_file).read_text()), **change}
    start = time.perf_counter()
    with pytest.raises(ConfigError, match=named):
        _load_config(comp, folder, config, tmp_path)
    assert time.perf_counter() - start < 5


# -- weight files --------------------------------------------------------------------------------------------------

def _safetensors_header(path: Path) -> tuple[dict, bytes]:
    raw = path.read_bytes()
    size = struct.unpack("<Q", raw[:8])[0]
    return json.loads(raw[8:8 + size]), raw[8 + size:]


def _write_safetensors(path: Path, header: dict, body: bytes) -> None:
    text = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(text)) + text + body)


def test_a_float_tensor_relabelled_int32_is_refused(tmp_path):
    folder = tmp_path / "digits"
    shutil.copytree(DIGITS_DIR, folder)
    weights = folder / "diffusion_pytorch_model.safetensors"
    header, body = _safetensors_header(weights)
    key = next(k for k, v in header.items() if k != "__metadata__" and v["dtype"] == "F32")
    header[key]["dtype"] = "I32"  # same byte size: the file stays well formed, its values become ~1e9 integers
    _write_safetensors(weights, header, body)
    with pytest.raises(WeightsMismatchError, match=f"{key}: checkpoint has torch.int32"):
        zoo.create("ddpm-digits", weights=folder, device="cpu")


def test_a_header_claiming_a_huge_size_is_refused_at_once(tmp_path):
    folder = tmp_path / "digits"
    shutil.copytree(DIGITS_DIR, folder)
    weights = folder / "diffusion_pytorch_model.safetensors"
    raw = weights.read_bytes()
    weights.write_bytes(struct.pack("<Q", 10**12) + raw[8:])
    start = time.perf_counter()
    with pytest.raises(CorruptWeightsError, match="header claims"):
        zoo.create("ddpm-digits", weights=folder, device="cpu")
    assert time.perf_counter() - start < 5


# -- arguments -----------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def digits():
    return zoo.create("ddpm-digits", device="cpu")


CREATE = [
    ({"device": "gpu0"}, InvalidInputError, ValueError),
    ({"device": 3.5}, ArgumentTypeError, TypeError),
    ({"dtype": torch.int32}, InvalidInputError, ValueError),
    ({"dtype": torch.complex64}, InvalidInputError, ValueError),
    ({"dtype": torch.float8_e4m3fn}, InvalidInputError, ValueError),
    ({"dtype": "float7"}, InvalidInputError, ValueError),
    ({"dtype": 32}, ArgumentTypeError, TypeError),
    ({"pretrained": "no"}, ArgumentTypeError, TypeError),
    ({"weights": 12}, ArgumentTypeError, TypeError),
    ({"flavour": "spicy"}, ArgumentTypeError, TypeError),
]


@pytest.mark.parametrize("kwargs, cls, builtin", CREATE, ids=[next(iter(k)) + f"={next(iter(k.values()))!r}"[:20]
                                                               for k, _, _ in CREATE])
def test_create_refuses_bad_arguments(kwargs, cls, builtin):
    with pytest.raises(cls) as err:
        zoo.create("ddpm-digits", **kwargs)
    assert isinstance(err.value, ZooError) and isinstance(err.value, builtin)


def test_create_names_close_models_for_a_typo():
    with pytest.raises(KeyError, match="ddpm-digits"):
        zoo.create("ddpm-digit")


NAN_NOISE = torch.full((1, 1, 16, 16), float("nan"))
SAMPLE = [
    ({"steps": 0}, "steps=0"),
    ({"steps": -3}, "steps=-3"),
    ({"steps": 2.5}, "steps=2.5"),
    ({"steps": True}, "steps=True"),
    ({"sampler": ""}, "sampler=''"),
    ({"sampler": "ddim", "eta": -1.0}, "eta=-1.0"),
    ({"sampler": "ode-rk45", "rtol": -1e-3}, "rtol"),
    ({"noise": NAN_NOISE}, "NaN or Inf"),
    ({"noise": torch.ones(1, 1, 16, 16, dtype=torch.int64)}, "float tensor"),
    ({"guidance_scale": float("nan")}, "guidance_scale"),
    ({"output": "latent"}, "output"),
]


@pytest.mark.parametrize("kwargs, named", SAMPLE, ids=[n for _, n in SAMPLE])
def test_sample_refuses_bad_arguments(digits, kwargs, named):
    with pytest.raises(ZooError, match=named.replace("(", r"\(")) as err:
        digits.sample(1, progress=False, **{"steps": 2, **kwargs})
    assert isinstance(err.value, (ValueError, TypeError))


@pytest.mark.parametrize("n", [0, -1, 2.0, "4"])
def test_sample_refuses_a_bad_count(digits, n):
    with pytest.raises(ZooError):
        digits.sample(n, steps=1, progress=False)


@pytest.mark.parametrize("images, named", [(torch.full((1, 1, 16, 16), float("inf")), "NaN or Inf"),
                                           (torch.rand(0, 1, 16, 16), "empty")])
def test_invert_refuses_bad_images(digits, images, named):
    with pytest.raises(InvalidInputError, match=named):
        digits.invert(images, steps=2, sampler="ddim", progress=False)


def test_non_finite_output_names_the_component(tmp_path):
    pipe = zoo.create("ddpm-digits", device="cpu")
    with torch.no_grad():
        pipe.denoiser.unet.conv_out.bias.fill_(float("nan"))
    with pytest.raises(NonFiniteError, match="the denoiser"):
        pipe.sample(1, steps=2, progress=False)


def test_the_cli_prints_one_line_and_exits_2_for_every_zoo_error(tmp_path):
    out = subprocess.run([sys.executable, "-m", "zoo.cli", "sample", "ddpm-digits", "--steps", "0", "-o",
                          str(tmp_path / "x.png")], capture_output=True, text=True, timeout=120)
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("zoo: error:") and "steps=0" in lines[0], out.stderr
    assert not (tmp_path / "x.png").exists()


# -- text and image-text arguments ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    pytest.importorskip("transformers")
    from helpers.clip_repos import hf_clip_repo

    folder, _ = hf_clip_repo(tmp_path_factory.mktemp("clip-args"), layers=1)
    return zoo.create("clip-vit-b32", weights=folder, device="cpu")


@pytest.mark.parametrize("call, named", [
    (lambda m: m.zero_shot(torch.rand(1, 3, 224, 224), ["cat", "dog"], templates=["a {} and a {}"]), "exactly one"),
    (lambda m: m.zero_shot(torch.rand(1, 3, 224, 224), ["cat", "dog"], templates=["a {0} photo"]), "exactly one"),
    (lambda m: m.zero_shot(torch.rand(1, 3, 224, 224), ["cat", ""]), "non-empty"),
    (lambda m: m.zero_shot(torch.rand(1, 3, 224, 224), []), "non-empty list"),
    (lambda m: m.encode_text(torch.full((1, 77), 10**6, dtype=torch.int64)), "token ids must be in 0..49407"),
    (lambda m: m.encode_text(torch.full((1, 77), -1, dtype=torch.int64)), "token ids must be in"),
    (lambda m: m.encode_text([]), "N >= 1"),
], ids=["two-slots", "named-slot", "empty-label", "no-labels", "id-too-big", "id-negative", "no-text"])
def test_text_arguments_are_checked(clip, call, named):
    with pytest.raises(InvalidInputError, match=named):
        call(clip)
