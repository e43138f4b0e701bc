"""The image-text commands: ``zoo zero-shot NAME IMAGE... --labels "a cat,a dog"`` and
``zoo embed NAME [IMAGE...] [--text T]... --out FILE.safetensors`` (or ``.npz``, or ``.npy`` for one kind).

``zero-shot`` needs a model with ``zero_shot`` (CLIP, SigLIP). ``embed`` works for any model through the
contracts: images through the Encoder contract (``encode_image`` when the model has one, else ``encode``), texts
through the TextEncoder contract; what a model's entry does not implement is refused before it is loaded.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import torch.nn.functional as F

import zoo
from zoo.cli import add_model_options, create_from_args, image_files, require
from zoo.errors import ZooError
from zoo.registry import INTERFACES, Command, Encoder, TextEncoder
from zoo.registry.errors import InvalidInputError

# -- zero-shot ------------------------------------------------------------------------------------------------------


def _zero_shot_arguments(parser: argparse.ArgumentParser) -> None:
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


# -- embed ----------------------------------------------------------------------------------------------------------


def _embed_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_options(parser)
    parser.add_argument("images", nargs="*", metavar="IMAGE")
    parser.add_argument("--text", action="append", default=[], metavar="T", help="a text to embed (repeatable)")
    parser.add_argument("--out", required=True, metavar="FILE",
                        help="FILE.safetensors, FILE.npz or FILE.npy (one array); the extension picks the format")
    parser.add_argument("--normalize", action="store_true", help="L2-normalise the embeddings")


def _needs(name: str, contract: type, what: str) -> None:
    """Refuse, before loading it, a model whose entry does not implement ``contract`` (``zoo.create`` would
    check the same after loading)."""
    interface = zoo.get_entry(name).interface
    if not any(issubclass(c, contract) for c in INTERFACES[interface]):
        raise ZooError(f"{name!r} cannot {what}: it is a {interface} model")


def embed(args: argparse.Namespace) -> None:
    """Write ``image_embeds`` (image-text models) or ``image_features`` (other encoders), ``(N, D)``, and
    ``text_embeds`` ``(M, E)``, float32, with the model name, inputs and normalisation as metadata."""
    from zoo.outputs import TENSOR_FORMATS, check_output, save_tensors

    if not args.images and not args.text:
        raise ZooError("zoo embed needs at least one IMAGE or --text T")
    if Path(args.out).suffix.lower() in (".pt", ".pth", ".pkl", ".pickle"):
        raise InvalidInputError(f"--out {args.out}: zoo writes no pickles (loading one runs code); use .safetensors, "
                                f".npz or .npy")
    check_output(args.out, TENSOR_FORMATS, flag="--out", make_parents=False)  # before the model is loaded
    if args.out.lower().endswith(".npy") and args.images and args.text:
        raise InvalidInputError(f"--out {args.out}: a .npy file holds one array, and images and texts make two; "
                                f"use .npz or .safetensors")
    images = image_files(args.images)
    if images:
        _needs(args.name, Encoder, "encode")
    if args.text:
        _needs(args.name, TextEncoder, "encode-text")
    model = create_from_args(args)
    out: dict[str, torch.Tensor] = {}
    with torch.inference_mode():
        if images and hasattr(model, "encode_image"):
            out["image_embeds"] = model.encode_image(model.preprocess(images), normalize=args.normalize)
        elif images:  # an image classifier or another encoder: its pooled features
            features = model.encode(model.preprocess(images))
            out["image_features"] = F.normalize(features, dim=-1) if args.normalize else features
        if args.text:
            out["text_embeds"] = model.encode_text(args.text, normalize=args.normalize)
    metadata = {"model": args.name, "images": json.dumps(images), "texts": json.dumps(args.text),
                "normalized": json.dumps(args.normalize)}
    save_tensors(out, args.out, metadata=metadata)
    print(f"wrote {args.out}: " + ", ".join(f"{k} {tuple(v.shape)}" for k, v in out.items()))


COMMANDS = (
    Command("zero-shot", zero_shot, "zero-shot classification against text labels", _zero_shot_arguments),
    Command("embed", embed, "embed images and/or texts into a .safetensors file", _embed_arguments),
)
