"""``zoo reconstruct NAME IMAGE... -o recon.png``: images beside their reconstructions, for any autoencoder.

Works with every model implementing the Autoencoder contract (this plugin's and third parties'): each image is
preprocessed, encoded, decoded and written in a grid, one row per image (input left, reconstruction right), and
its PSNR printed. The images are checked before the model loads (a typo should not cost a download).
"""
from __future__ import annotations

import argparse
import inspect
import time

import torch

import zoo
from zoo.cli import add_model_options, create_from_args, image_files
from zoo.errors import ZooError
from zoo.image import check_image_output, save_grid



def _size(text: str) -> int | tuple[int, int]:
    """``256`` or ``256x384`` (height x width)."""
    try:
        parts = [int(p) for p in text.lower().split("x")]
    except ValueError:
        parts = []
    if len(parts) not in (1, 2) or min(parts) < 1:
        raise argparse.ArgumentTypeError(f"expected N or HxW (e.g. 256 or 256x384), got {text!r}")
    return parts[0] if len(parts) == 1 else (parts[0], parts[1])


def arguments(parser: argparse.ArgumentParser) -> None:
    add_model_options(parser)
    parser.add_argument("images", nargs="+", metavar="IMAGE")
    parser.add_argument("-o", "--output", default="recon.png", help="grid to write (default recon.png)")
    parser.add_argument("--size", type=_size, help="resize every image to N or HxW pixels (default: the first "
                                                   "image's size, rounded down to the latent grid)")
    parser.add_argument("--sample", action="store_true", help="decode a posterior draw instead of its mean (KL)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the --sample draw (default 0)")
    parser.add_argument("--tile", action="store_true", help="encode and decode in tiles (bounded memory)")


def _options(model, method: str, wanted: dict, name: str) -> dict:
    """The options ``model.method`` accepts, or a one-line error naming the one it does not."""
    params = inspect.signature(getattr(model, method)).parameters
    for option in wanted:
        if option not in params:
            flag = "--sample" if option in ("sample", "generator") else f"--{option}"
            raise ZooError(f"{name!r} does not support {flag} ({type(model).__name__}.{method} takes no {option}=)")
    return wanted


def run(args: argparse.Namespace) -> None:
    images = image_files(args.images)
    interface = zoo.get_entry(args.name).interface
    if interface != "autoencoder":
        raise ZooError(f"{args.name!r} cannot reconstruct: it is a {interface} model (see `zoo list --interface "
                       f"autoencoder`)")
    check_image_output(args.output)  # before the model loads: a bad -o must not cost an encode and a decode
    model = create_from_args(args)
    encode_opts: dict = {}
    if args.sample:
        encode_opts.update(sample=True, generator=torch.Generator().manual_seed(args.seed))
    if args.tile:
        encode_opts["tile"] = True
    encode_opts = _options(model, "encode", encode_opts, args.name)
    decode_opts = _options(model, "decode", {"tile": True} if args.tile else {}, args.name)

    start = time.perf_counter()
    with torch.inference_mode():
        x = model.preprocess(images, size=args.size) if args.size else model.preprocess(images)
        recon = model.decode(model.encode(x, **encode_opts), **decode_opts).float().cpu()
    seconds = time.perf_counter() - start
    inputs = ((x.float().cpu() + 1) / 2).clamp(0, 1)

    pairs = torch.stack([inputs, recon], dim=1).flatten(0, 1)  # in0, rec0, in1, rec1, ...
    save_grid(pairs, args.output, nrow=2, scale=1)
    from .common import psnr

    for path, value in zip(images, psnr(inputs, recon).tolist()):
        print(f"{path}: PSNR {value:.2f} dB")
    print(f"wrote {args.output}: {len(images)} image(s) at {x.shape[-2]}x{x.shape[-1]} through {args.name} "
          f"in {seconds:.1f} s (input left, reconstruction right)")
