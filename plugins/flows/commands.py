"""``zoo likelihood NAME IMAGE...``: exact bits/dim of images under a normalizing flow (any ``zoo.registry.Flow``)."""
from __future__ import annotations

import argparse

import torch

from zoo.cli import add_model_options, create_from_args, image_files, positive_int, require
from zoo.errors import ZooError
from zoo.registry import Flow



def arguments(parser: argparse.ArgumentParser) -> None:
    add_model_options(parser)
    parser.add_argument("images", nargs="+", metavar="IMAGE")
    parser.add_argument("--draws", type=positive_int, default=8,
                        help="dequantization noise draws averaged per image (default 8; models that dequantize)")
    parser.add_argument("--seed", type=int, default=0, help="seeds the dequantization noise")


def bits_per_dim(model: Flow, images: list[str], draws: int = 8, seed: int = 0) -> torch.Tensor:
    """``(N,)`` bits/dim of image files: the model's ``preprocess``, then its ``dequantize`` averaged over
    ``draws`` seeded noise draws where it has one (else the density at the pixels as they are)."""
    x = require(model, "preprocess", model.name or "the model")(images)
    score = require(model, "bits_per_dim", model.name or "the model")
    with torch.inference_mode():
        if not callable(getattr(model, "dequantize", None)):
            return score(x).float().cpu()
        g = torch.Generator().manual_seed(seed)
        return torch.stack([score(model.dequantize(x, g)) for _ in range(draws)]).mean(0).float().cpu()


def run(args: argparse.Namespace) -> None:
    images = image_files(args.images)
    model = create_from_args(args)
    if not isinstance(model, Flow):
        raise ZooError(f"{args.name!r} has no exact likelihood: `zoo likelihood` takes a normalizing flow "
                       f"(`zoo list --interface flow`)")
    bpd = bits_per_dim(model, images, args.draws, args.seed)
    for path, value in zip(images, bpd.tolist()):
        print(f"{value:8.4f} bits/dim  {path}")
    if len(images) > 1:
        print(f"{float(bpd.mean()):8.4f} bits/dim  mean of {len(images)} images")
