"""Normalizing flows with exact likelihoods (NICE, RealNVP, Glow) and rectified flow with reflow, all trained by
zoo on scikit-learn's digits and shipped in the package, so they work offline.

* ``nice-digits``, ``realnvp-digits``, ``glow-digits``: ``zoo.registry.Flow``s (``interface="flow"``) over 8x8
  dequantized digits: ``encode -> (z, logdet)``, ``decode``, ``log_prob``, ``bits_per_dim``, ``sample``. The
  layers, each with its log-determinant beside its forward, are in ``layers.py``; one file per architecture.
* ``rectified-flow-digits`` (1-rectified flow) and ``rectified-flow-digits-2`` (its reflow): velocity networks
  served by ``zoo.diffusion.DiffusionPipeline`` as Denoisers with ``prediction="flow"`` on a ``FlowSchedule``,
  so every registered sampler drives them (``rectified_flow.py``).

``zoo train NAME`` retrains any of them; ``zoo likelihood NAME IMAGE...`` prints bits/dim (``commands.py``).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

from zoo.registry import Command, Component, ModelEntry, hookimpl, lazy

LIKELIHOOD = Command("likelihood", lazy(".commands:run", __name__), "exact bits/dim of images under a normalizing flow",
                      lazy(".commands:arguments", __name__))
#: the builders, imported when a model is created (listing imports no model module).
build_flow = lazy(".base:build_flow", __name__)
build_pipeline = lazy(".rectified_flow:build_pipeline", __name__)

WEIGHTS = Path(__file__).parent / "weights"
LICENSE = "BSD-3-Clause (data: scikit-learn digits); weights: Apache-2.0"
NICE_PAPER = "Dinh, Krueger & Bengio 2014, NICE: Non-linear Independent Components Estimation, arXiv:1410.8516"
REALNVP_PAPER = "Dinh, Sohl-Dickstein & Bengio 2016, Density estimation using Real NVP, arXiv:1605.08803"
GLOW_PAPER = "Kingma & Dhariwal 2018, Glow: Generative Flow with Invertible 1x1 Convolutions, arXiv:1807.03039"
RF_PAPER = "Liu, Gong & Liu 2022, Flow Straight and Fast: Learning to Generate and Transfer Data with Rectified Flow, " \
           "arXiv:2209.03003"

#: name -> (the model class as "module:Class" (its config class is "module:ClassConfig"), the shipped recipe's
#: training options, paper)
FLOWS: dict[str, tuple[str, dict[str, Any], str]] = {
    "nice-digits": (".nice:NICE", {"steps": 2000, "batch_size": 128, "lr": 1e-3}, NICE_PAPER),
    "realnvp-digits": (".realnvp:RealNVP", {"steps": 2500, "batch_size": 128, "lr": 1e-3}, REALNVP_PAPER),
    "glow-digits": (".glow:Glow", {"steps": 2000, "batch_size": 128, "lr": 1e-3}, GLOW_PAPER),
}


def shipped_metadata(name: str) -> dict[str, str]:
    """The training record in a shipped model.safetensors (steps, seed, seconds, held-out bits/dim, ...)."""
    from safetensors import safe_open

    path = WEIGHTS / name / "model.safetensors"
    if not path.is_file():
        return {}
    with safe_open(str(path), "pt") as f:
        return dict(f.metadata() or {})


def _shipped_config(name: str) -> dict[str, Any]:
    """The shipped model's config.json ({}: the config class's defaults)."""
    path = WEIGHTS / name / "config.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def _trainer(name: str) -> Callable[..., Path]:
    target, recipe, _ = FLOWS[name]

    def train(out_dir: str | Path, *, seed: int = 0, **options: Any) -> Path:
        import torch

        from .train_digits import train_flow

        cls, config_cls = lazy(target, __name__).resolve(), lazy(f"{target}Config", __name__).resolve()
        torch.manual_seed(seed)  # the initialisation
        model = cls(config_cls())
        model.name = name
        return train_flow(name, model, out_dir, shipped=WEIGHTS / name, seed=seed, **{**recipe, **options})

    train.__doc__ = f"Retrain {name} (see zoo.plugins.flows.train_digits.train_flow for the options)."
    return train


def _result(name: str) -> str:
    meta = shipped_metadata(name)
    if "held_out_bits_per_dim" not in meta:
        return ""
    return (f"{float(meta['held_out_bits_per_dim']):.2f} bits/dim on 297 held-out digits (8x8, 17 levels, uniform "
            f"dequantization; uniform model: 4.09)")


def _flow_entries() -> list[ModelEntry]:
    entries = []
    for name, (target, _, paper) in FLOWS.items():
        component = Component(name="model", build=lazy(target, __name__),
                              read_config=lazy(f"{target}Config.from_dict", __name__), raw_config=_shipped_config(name),
                              weights=("model.safetensors",))
        entries.append(ModelEntry(
            name=name, family="flow", interface="flow", build=build_flow, components=(component,),
            local_dir=WEIGHTS / name, train=_trainer(name), license=LICENSE, paper=paper, result=_result(name),
            description=f"{target.rpartition(':')[2]} trained by zoo on scikit-learn's digits (8x8, exact "
                        f"log-likelihood), shipped in the package. Retrain with `zoo train {name}`."))
    return entries


def _train_rf(out_dir: str | Path, *, seed: int = 0, **options: Any) -> Path:
    """Retrain rectified-flow-digits (see zoo.plugins.flows.train_rectified.train_rectified_flow)."""
    from .train_rectified import train_rectified_flow

    return train_rectified_flow(out_dir, shipped=WEIGHTS / "rectified-flow-digits", seed=seed, **options)


def _train_reflow(out_dir: str | Path, *, seed: int = 0, **options: Any) -> Path:
    """Retrain rectified-flow-digits-2 by reflow of the shipped rectified-flow-digits (see train_reflow)."""
    from .train_rectified import train_reflow

    return train_reflow(out_dir, shipped=WEIGHTS / "rectified-flow-digits-2", seed=seed, **options)


#: what the rectified-flow entries' pipelines use when not told (the flow schedule of SD3, unshifted).
RF_SAMPLING = {"default_sampler": "euler", "invert_sampler": "euler", "num_train_timesteps": 1000, "shift": 1.0}
RF_RESULTS = {
    "rectified-flow-digits": "99% of samples (Euler, 20 steps) recognised as digits, all ten classes; straightness "
                             "0.144; one Euler step gives one mean-like digit for every noise "
                             "(tests/test_rectified_flow.py)",
    "rectified-flow-digits-2": "95% of one-step Euler samples recognised as digits, all ten classes (class-balanced "
                               "0.86; 1-RF: 0.10); straightness 0.0065, 22x straighter than 1-RF "
                               "(tests/test_rectified_flow.py)",
}


def _rf_entries() -> list[ModelEntry]:
    velocity = Component(name="velocity", build=lazy(".rectified_flow:VelocityUNet", __name__),
                         read_config=lazy(".rectified_flow:VelocityConfig.from_dict", __name__), raw_config={},
                         weights=("model.safetensors",))
    common = dict(family="rectified-flow", interface="pipeline", build=build_pipeline, components=(velocity,),
                  license=LICENSE)
    return [
        ModelEntry(name="rectified-flow-digits", local_dir=WEIGHTS / "rectified-flow-digits", train=_train_rf,
                   config={**RF_SAMPLING, "default_steps": 20}, paper=RF_PAPER,
                   result=RF_RESULTS["rectified-flow-digits"],
                   description="1-rectified flow trained by zoo on scikit-learn's digits (8x8), a Denoiser with "
                               "prediction='flow': every zoo sampler drives it. Retrain with "
                               "`zoo train rectified-flow-digits`.", **common),
        ModelEntry(name="rectified-flow-digits-2", local_dir=WEIGHTS / "rectified-flow-digits-2", train=_train_reflow,
                   config={**RF_SAMPLING, "default_steps": 1}, paper=RF_PAPER,
                   result=RF_RESULTS["rectified-flow-digits-2"],
                   description="2-rectified flow: rectified-flow-digits reflowed on its own (noise, sample) pairs; "
                               "straighter paths, usable in one to a few Euler steps.", **common),
    ]


@hookimpl
def zoo_models(register) -> None:
    for entry in (*_flow_entries(), *_rf_entries()):
        register(entry)


@hookimpl
def zoo_commands(register) -> None:
    register(LIKELIHOOD)
