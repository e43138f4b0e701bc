"""``zoo fid SAMPLES --ref REF [--encoder NAME]``: Fréchet distance (FID with ``inception-fid``) and KID.

SAMPLES and REF may each be:

* a folder written by ``zoo.distributed.sample_to_dir`` (``manifest.json`` and uint8 ``.npz`` shards);
* one ``.npz`` of images (``arr_0``, uint8 ``(N, H, W, C)``: a shard, or the ADM evaluator's batch files);
* an ``.npz`` of statistics (``mu``, ``sigma``: zoo's or pytorch-fid's ``--save-stats`` files);
* a folder of image files (every image directly inside it, sorted by name).

``--save-ref-stats PATH`` writes REF's statistics for the next run. KID needs features on both sides, so it is
reported only when neither side is given as statistics.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np

from zoo import metrics
from zoo.registry.errors import InvalidInputError, MissingFileError


def load_source(path: str) -> tuple[str, Any]:
    """``("stats", (mu, sigma))`` or ``("images", uint8 (N, H, W, C) array or list of image paths)``."""
    from zoo.cli import image_files
    from zoo.distributed import MANIFEST, read_samples

    p = Path(path)
    if p.is_dir():
        if (p / MANIFEST).is_file():
            return "images", read_samples(p)
        return "images", image_files([str(p)])
    if p.suffix == ".npz" and p.is_file():
        with np.load(p) as f:
            if "mu" in f and "sigma" in f:
                return "stats", metrics.load_statistics(p)
            if "arr_0" in f:
                return "images", f["arr_0"]
            raise InvalidInputError(f"{path}: an .npz of neither statistics (mu, sigma) nor images (arr_0); it holds "
                                    f"{sorted(f.files)}")
    raise MissingFileError(f"{path}: not a sample folder, an image folder or an .npz file")


def _positive(text: str) -> int:
    n = int(text)
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, got {n}")
    return n


def arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("samples", metavar="DIR_OR_NPZ", help="generated images: a sample folder, an image folder "
                        "or an .npz (images or mu/sigma statistics)")
    parser.add_argument("--ref", required=True, metavar="DIR_OR_NPZ", help="the reference, in the same forms")
    parser.add_argument("--encoder", default="inception-fid", metavar="NAME",
                        help="the Encoder whose features are compared (default inception-fid: FID proper)")
    parser.add_argument("--weights", help="the encoder's weights folder (inception-fid: the folder holding "
                        "pt_inception-2015-12-05-6726825d.pth)")
    parser.add_argument("--device", help="cpu, cuda, ... (default: cuda when available)")
    parser.add_argument("--batch-size", type=_positive, default=50, metavar="N")
    parser.add_argument("--save-ref-stats", metavar="NPZ", help="write the reference's mu and sigma here")
    parser.add_argument("--kid-subsets", type=_positive, default=100, metavar="S")
    parser.add_argument("--kid-subset-size", type=_positive, default=1000, metavar="M")


def _create_encoder(args: argparse.Namespace) -> Any:
    import zoo

    from . import WEIGHTS_URL

    try:
        return zoo.create(args.encoder, weights=args.weights, device=args.device)
    except MissingFileError as exc:
        if args.encoder != "inception-fid":
            raise
        raise MissingFileError(f"{exc} FID's Inception weights are a GitHub release file, not on the Hub: download "
                               f"{WEIGHTS_URL} (pytorch-fid does so on first use) into that folder, or pass "
                               f"--weights DIR") from None


def run(args: argparse.Namespace) -> None:
    sources = [load_source(args.samples), load_source(args.ref)]  # checked before a model is loaded
    encoder = None
    feats = []
    for kind, value in sources:
        if kind == "stats":
            feats.append(value)
            continue
        if encoder is None:
            encoder = _create_encoder(args)
        feats.append(metrics.encoder_features(encoder, value, batch_size=args.batch_size, progress=True))
    if args.save_ref_stats:
        metrics.save_statistics(args.save_ref_stats, feats[1])
        print(f"reference statistics written to {args.save_ref_stats}")
    n = [len(f) if isinstance(f, np.ndarray) else "stats" for f in feats]
    print(f"frechet distance ({args.encoder}): {metrics.frechet_distance(feats[0], feats[1]):.6g}   "
          f"[samples: {n[0]}, reference: {n[1]}]")
    if all(isinstance(f, np.ndarray) for f in feats):
        mean, std = metrics.kid(feats[0], feats[1], subsets=args.kid_subsets, subset_size=args.kid_subset_size)
        print(f"kid ({args.encoder}): {mean:.6g} +- {std:.3g}")
