"""``zoo classify NAME IMAGE...``: the top-k classes of images, for any model implementing the Classifier contract."""
from __future__ import annotations

import argparse

from zoo.cli import add_model_options, create_from_args, image_files, positive_int, require



def arguments(parser: argparse.ArgumentParser) -> None:
    add_model_options(parser)
    parser.add_argument("images", nargs="+", metavar="IMAGE")
    parser.add_argument("--top-k", type=positive_int, default=5, metavar="K", help="classes per image (default 5)")


def run(args: argparse.Namespace) -> None:
    images = image_files(args.images)
    model = create_from_args(args)
    results = require(model, "classify", args.name)(images, top_k=args.top_k)
    for image, top in zip(images, results):  # folders expanded
        print(image)
        for label, p in top:
            print(f"  {p:7.2%}  {label}")
