"""Classifier repos for the tests, in the real Hub layouts, written by the reference libraries themselves.

Each is the real repo's config (from ``tests/checkpoints``) with random weights, every parameter moved off its
initial value (LayerNorm scales off 1, biases and relative position tables off 0) so that a wrong mapping cannot
hide behind a neutral value. Returns ``(folder, reference model)``.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import timm
import torch
import transformers
from safetensors.torch import save_file

from checkpoints import CHECKPOINTS


def real_repo(name: str) -> Path:
    return CHECKPOINTS / name


def perturb(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Move every parameter off its initial value (relative position tables by a lot: they start near 0)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            scale = 0.5 if "relative_position_bias_table" in name else 0.05
            p.add_(torch.randn(p.shape, generator=g, dtype=p.dtype) * scale)
    return model.eval()


def timm_repo(tmp: Path, repo: str, **model_args) -> tuple[Path, torch.nn.Module]:
    """A timm repo: random weights of the real config's architecture (with model_args) + the real config.json."""
    config = json.loads((real_repo(repo) / "config.json").read_text())
    if model_args:
        config["model_args"] = model_args  # how timm >= 1.0 exports a non-default architecture
    ref = perturb(timm.create_model(config["architecture"], pretrained=False, **model_args))
    out = tmp / repo
    out.mkdir(parents=True)
    save_file(ref.state_dict(), str(out / "model.safetensors"))
    (out / "config.json").write_text(json.dumps(config))
    return out, ref


def hf_repo(tmp: Path, repo: str, cls: type, **overrides) -> tuple[Path, torch.nn.Module]:
    """A transformers repo: ``cls(real config with overrides)`` saved by save_pretrained + the real preprocessor."""
    config = transformers.AutoConfig.from_pretrained(real_repo(repo), **overrides)
    ref = perturb(cls(config))
    out = tmp / repo
    ref.save_pretrained(out)
    shutil.copy(real_repo(repo) / "preprocessor_config.json", out)
    return out, ref
