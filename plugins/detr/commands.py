"""``zoo detect NAME IMAGE... [--threshold T] [-o boxes.png]``: objects in images, for any Detector.

Prints one line per detection (image, label, score, box in the image's own pixels) and, with ``-o``, draws the
boxes with their labels on the image (several images: ``boxes-0.png``, ``boxes-1.png``, ...).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import zoo
from zoo.cli import add_model_options, create_from_args, image_files
from zoo.errors import ZooError
from zoo.outputs import atomic_path, check_output, image_formats
from zoo.registry import Detections, Detector, INTERFACES

#: box colours, cycled by class id.
COLOURS = ["#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6", "#bfef45", "#fabed4",
           "#469990", "#9a6324", "#800000", "#808000", "#000075"]


def _threshold(text: str) -> float:
    t = float(text)
    if not 0.0 <= t <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1], got {t}")
    return t


def arguments(parser: argparse.ArgumentParser) -> None:
    add_model_options(parser)
    parser.add_argument("images", nargs="+", metavar="IMAGE")
    parser.add_argument("--threshold", type=_threshold, default=0.7, metavar="T",
                        help="keep detections scoring at least T (default 0.7)")
    parser.add_argument("-o", "--out", metavar="FILE.png", help="draw the boxes and labels on the image(s)")


def outputs_for(out: str, count: int) -> list[Path]:
    """``-o boxes.png`` -> that path for one image, ``boxes-0.png, boxes-1.png, ...`` for several."""
    path = check_output(out, image_formats())  # before the model loads: extension, folder, permissions
    if count == 1:
        return [path]
    return [path.with_name(f"{path.stem}-{i}{path.suffix or '.png'}") for i in range(count)]


def draw(image_path: str, dets: Detections, out: Path) -> None:
    """The image with each box outlined and labelled ``name score``."""
    from PIL import Image, ImageDraw

    with Image.open(image_path) as img:
        canvas = img.convert("RGB")
    pen = ImageDraw.Draw(canvas)
    width = max(2, round(max(canvas.size) / 300))
    for box, score, label, name in zip(dets.boxes.tolist(), dets.scores.tolist(), dets.labels.tolist(), dets.names):
        colour = COLOURS[label % len(COLOURS)]
        x0, y0, x1, y1 = box
        pen.rectangle((x0, y0, x1, y1), outline=colour, width=width)
        text = f"{name} {score:.2f}"
        left, top, right, bottom = pen.textbbox((x0, y0), text)
        pen.rectangle((left - 1, top - 1, right + 1, bottom + 1), fill=colour)
        pen.text((x0, y0), text, fill="white")
    with atomic_path(out) as tmp:  # whole or nothing, with the user's umask
        canvas.save(tmp)


def run(args: argparse.Namespace) -> None:
    images = image_files(args.images)
    interface = zoo.get_entry(args.name).interface
    if not any(issubclass(c, Detector) for c in INTERFACES[interface]):
        raise ZooError(f"{args.name!r} cannot detect: it is a {interface} model")
    outs = outputs_for(args.out, len(images)) if args.out else None
    model = create_from_args(args)
    results = model.detect(images, threshold=args.threshold)
    for i, (image, dets) in enumerate(zip(images, results)):
        if not len(dets.scores):
            print(f"{image}: nothing at threshold {args.threshold}")
        for box, score, name in zip(dets.boxes.tolist(), dets.scores.tolist(), dets.names):
            print(f"{image}: {name} {score:.3f} [{', '.join(f'{v:.1f}' for v in box)}]")
        if outs:
            draw(image, dets, outs[i])
            print(f"wrote {outs[i]}")
