"""A third-party zoo plugin: one model (``toy-mlp``, an Encoder), one sampler (``toy-euler``) and one CLI
command (``zoo toy-encode``).

Everything a plugin needs is in this file: a builder, a ModelEntry that points at weights shipped inside the
package (``local_dir``), a sampler made with ``@sampler``, a ``Command``, and the three hooks marked
``@hookimpl``, each handed a ``register`` callback. zoo finds it through the ``zoo`` entry point in
pyproject.toml; zoo's own code never names it.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from zoo.cli import add_model_options, create_from_args
from zoo.loader import load_component
from zoo.registry import Command, Component, Encoder, ModelEntry, check_image_batch, hookimpl, report_step, sampler

WEIGHTS = Path(__file__).parent / "weights" / "toy-mlp"


class ToyMLP(Encoder):
    """8x8 RGB images -> ``dim`` features through a two-layer MLP."""

    def __init__(self, hidden: int = 32, dim: int = 16, image_size: int = 8):
        super().__init__()
        self.image_size = (image_size, image_size)
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(3 * image_size * image_size, hidden), nn.GELU(),
                                 nn.Linear(hidden, dim))
        self.register_buffer("mean", torch.full((1, 3, 1, 1), 0.5))
        self.register_buffer("std", torch.full((1, 3, 1, 1), 0.25))

    def preprocess(self, images: Any) -> Tensor:
        """Float ``(N, 3, H, W)`` in [0, 1] (or uint8) -> normalised ``(N, 3, 8, 8)``, on the model's device and in
        its dtype (the input may be anywhere: it is moved to the buffers' device first)."""
        x = torch.as_tensor(images).to(self.mean.device)
        x = x.float() / 255 if not x.is_floating_point() else x.float()
        x = nn.functional.interpolate(x, size=self.image_size, mode="bilinear", antialias=True, align_corners=False)
        return ((x - self.mean.float()) / self.std.float()).to(self.mean.dtype)

    def encode(self, x: Tensor) -> Tensor:
        """``(N, 3, 8, 8)`` preprocessed -> ``(N, dim)``; like every zoo Encoder, the batch is checked and moved to
        the model's device and dtype first."""
        check_image_batch(x, channels=3, size=self.image_size, what="toy-mlp input (use .preprocess(images))")
        return self.net(x.to(self.mean))

    forward = encode


#: the model's one component: config.json + model.safetensors (or .bin), built and loaded by zoo's loader.
MODEL = Component(name="model", build=lambda config: ToyMLP(**config), config={"hidden": 32, "dim": 16, "image_size": 8})


def build(entry: ModelEntry, files: Path | None, *, device: torch.device, dtype: torch.dtype) -> ToyMLP:
    return load_component(entry.component("model"), files, device=device, dtype=dtype)


@sampler("toy-euler")
def toy_euler(denoise, x: Tensor, sigmas: Tensor, *, signal_scale, callback=None) -> Tensor:
    """Euler's method on the probability-flow ODE dx/dsigma = (x - D(x, sigma)) / sigma.

    ``report_step`` after each step hands the pipeline's callback a StepInfo: that drives progress bars and lets a
    callback stop sampling early (raising StopIteration). Every sampler should call it.
    """
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = denoise(x, sigma)
        x = x + (x - denoised) / sigma * (sigma_next - sigma)
        report_step(callback, i, sigma, x, denoised)
    return x


ENTRY = ModelEntry(
    name="toy-mlp", family="toy", interface="encoder", build=build, local_dir=WEIGHTS, components=(MODEL,),
    license="Apache-2.0", description="A two-layer MLP over 8x8 images: the test suite's third-party plugin.",
)


def _encode_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_options(parser)  # NAME, --weights, --device, --dtype, as zoo's own commands take them
    parser.add_argument("-n", type=int, default=2, help="how many random images to encode")
    parser.add_argument("--seed", type=int, default=0)


def _encode(args: argparse.Namespace) -> int:
    """``zoo toy-encode NAME -n 3``: encode random images, print the features' shape and mean norm."""
    model = create_from_args(args)
    images = torch.rand(args.n, 3, 8, 8, generator=torch.Generator().manual_seed(args.seed))
    with torch.inference_mode():
        features = model.encode(model.preprocess(images))
    print(f"{args.name}: {features.shape[0]} features of size {features.shape[1]}, "
          f"mean norm {float(features.norm(dim=1).mean()):.4f}")
    return 0


@hookimpl
def zoo_models(register) -> None:
    register(ENTRY)


@hookimpl
def zoo_samplers(register) -> None:
    register(toy_euler)


@hookimpl
def zoo_commands(register) -> None:
    register(Command("toy-encode", _encode, "encode random images with a toy model (an example plugin command)",
                     _encode_arguments))


def make_weights(seed: int = 0) -> None:
    """Write the shipped weights (``python -c "import zoo_toy_plugin as t; t.make_weights()"``)."""
    import json

    from safetensors.torch import save_file

    torch.manual_seed(seed)
    config = {"hidden": 32, "dim": 16, "image_size": 8}
    model = ToyMLP(**config)
    WEIGHTS.mkdir(parents=True, exist_ok=True)
    (WEIGHTS / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, WEIGHTS / "model.safetensors",
              metadata={"seed": str(seed)})
