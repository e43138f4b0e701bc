"""The image-text command: ``zoo zero-shot NAME IMAGE... --labels "a cat,a dog"``, for a model with
``zero_shot`` (CLIP, SigLIP). (``zoo embed`` works for any Encoder through the contracts, so it is a core
command: ``zoo.embedding``.)
"""
from __future__ import annotations

import argparse

from zoo.cli import add_model_options, create_from_args, image_files, require
from zoo.registry.errors import InvalidInputError

# -- zero-shot ------------------------------------------------------------------------------------------------------


def zero_shot_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_options(parser)
    parser.add_argument("images", nargs="+", metavar="IMAGE")
    parser.add_argument("--labels", required=True, help='comma-separated, e.g. "a cat,a dog"')


def zero_shot(args: argparse.Namespace) -> None:
    """Per image, the labels by probability, most likely first."""
    images = image_files(args.images)
    labels = [s.strip() for s in args.labels.split(",") if s.strip()]
    if not labels:
        raise InvalidInputError(f'--labels {args.labels!r} holds no label: give them comma-separated, e.g. "a cat,a dog"')
    model = create_from_args(args)
    probs = require(model, "zero_shot", args.name)(images, labels)
    for image, row in zip(images, probs):
        print(image)
        for label, p in sorted(zip(labels, row.tolist()), key=lambda lp: -lp[1]):
            print(f"  {p:7.2%}  {label}")
