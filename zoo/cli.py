"""The ``zoo`` command: list, info, download, sample, train, classify, embed, zero-shot, samplers, plugins.

Each sub-command is a few lines over the Python API; errors zoo raises on purpose and bad input (a missing file,
an invalid value) are printed as one line (exit status 2), anything else keeps its traceback.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F

import zoo
from zoo.errors import ZooError


def _device_dtype(args: argparse.Namespace) -> dict:
    return {"device": args.device, "dtype": args.dtype}


def cmd_list(args: argparse.Namespace) -> None:
    names = zoo.list_models(args.pattern, family=args.family, interface=args.interface)
    if args.markdown:
        print(models_table(names))
        return
    width = max((len(n) for n in names), default=0)
    for name in names:
        e = zoo.get_entry(name)
        source = e.repo_id or "shipped with zoo"
        print(f"{name:<{width}}  {e.family:<8} {e.interface:<10} {source}")
    failures = zoo.get_registry().failures
    for plugin, why in failures.items():
        print(f"warning: plugin {plugin!r} failed to load: {why}", file=sys.stderr)


def models_table(names: Sequence[str]) -> str:
    """The README's model table, generated from the registry."""
    rows = ["| name | family | interface | weights | published result |", "|---|---|---|---|---|"]
    for name in names:
        e = zoo.get_entry(name)
        source = f"[{e.repo_id}](https://huggingface.co/{e.repo_id})" if e.repo_id else "shipped (trained by zoo)"
        rows.append(f"| `{name}` | {e.family} | {e.interface} | {source} | {e.result or '-'} |")
    return "\n".join(rows)


def cmd_info(args: argparse.Namespace) -> None:
    print(json.dumps(zoo.info(args.name), indent=2, default=str))


def cmd_download(args: argparse.Namespace) -> None:
    from zoo import hub

    print(hub.download(args.name, args.weights))


def cmd_samplers(args: argparse.Namespace) -> None:
    for name in zoo.list_samplers():
        s = zoo.get_sampler(name)
        print(f"{name:<16} {s.describe()}")


def cmd_plugins(args: argparse.Namespace) -> None:
    reg = zoo.get_registry()
    for name in reg.plugins:
        n_models = sum(e.plugin == name for e in reg.models.values())
        print(f"{name:<20} ok      {n_models} models")
    for name, why in reg.failures.items():
        print(f"{name:<20} FAILED  {why}")


def cmd_sample(args: argparse.Namespace) -> None:
    from zoo.image import save_grid

    pipe = zoo.create(args.name, weights=args.weights, **_device_dtype(args))
    generator = torch.Generator().manual_seed(args.seed)
    options = {"eta": args.eta} if args.eta is not None else {}
    start = time.perf_counter()
    images = pipe.sample(args.n, steps=args.steps, sampler=args.sampler, generator=generator,
                         schedule=args.schedule, spacing=args.spacing, **options)
    seconds = time.perf_counter() - start
    save_grid(images, args.output)
    print(f"wrote {args.output}: {args.n} samples from {args.name} in {seconds:.1f} s")


def cmd_train(args: argparse.Namespace) -> None:
    entry = zoo.get_entry(args.name)
    if entry.train is None:
        raise ZooError(f"{args.name!r} is not trained by zoo (its weights come from {entry.repo_id}); "
                       f"`zoo train` works for: {', '.join(n for n, e in zoo.get_registry().models.items() if e.train)}")
    # Never the packaged folder by default: a trial run must not replace the shipped, tested weights.
    out = Path(args.output or args.name)
    options = {"steps": args.steps} if args.steps else {}
    path = entry.train(out, seed=args.seed, **options)
    print(f"wrote {path}; sample from it with `zoo sample {args.name} --weights {path}`"
          + (f", or copy it over {entry.local_dir} to ship it" if entry.local_dir else ""))


def _needs(model, method: str, name: str):
    if not hasattr(model, method):
        raise ZooError(f"{name!r} cannot {method.replace('_', '-')}: it is a {zoo.get_entry(name).interface} model")
    return getattr(model, method)


def _image_files(paths: Sequence[str]) -> list[str]:
    """The IMAGE arguments, checked before any model is loaded (a typo should not cost a download)."""
    from PIL import Image, UnidentifiedImageError

    for path in paths:
        if not Path(path).is_file():
            raise FileNotFoundError(f"image file not found: {path}")
        try:
            Image.open(path).close()  # reads the header only
        except UnidentifiedImageError:
            raise ValueError(f"{path} is not an image file PIL can read") from None
    return list(paths)


def cmd_classify(args: argparse.Namespace) -> None:
    images = _image_files(args.images)
    model = zoo.create(args.name, weights=args.weights, **_device_dtype(args))
    results = _needs(model, "classify", args.name)(images, top_k=args.top_k)
    for image, top in zip(args.images, results):
        print(image)
        for label, p in top:
            print(f"  {p:7.2%}  {label}")


def cmd_zero_shot(args: argparse.Namespace) -> None:
    images = _image_files(args.images)
    labels = [s.strip() for s in args.labels.split(",") if s.strip()]
    if not labels:
        raise ValueError(f'--labels {args.labels!r} holds no label: give them comma-separated, e.g. "a cat,a dog"')
    model = zoo.create(args.name, weights=args.weights, **_device_dtype(args))
    probs = _needs(model, "zero_shot", args.name)(images, labels)
    for image, row in zip(args.images, probs):
        print(image)
        for label, p in sorted(zip(labels, row.tolist()), key=lambda lp: -lp[1]):
            print(f"  {p:7.2%}  {label}")


def cmd_embed(args: argparse.Namespace) -> None:
    from safetensors.torch import save_file

    if not args.images and not args.text:
        raise ZooError("zoo embed needs at least one IMAGE or --text T")
    images = _image_files(args.images)
    folder = Path(args.out).resolve().parent
    if not folder.is_dir():
        raise FileNotFoundError(f"--out {args.out}: folder {folder} does not exist")
    model = zoo.create(args.name, weights=args.weights, **_device_dtype(args))
    out: dict[str, torch.Tensor] = {}
    with torch.inference_mode():
        if images:
            if hasattr(model, "encode_image"):
                out["image_embeds"] = model.encode_image(model.preprocess(images), normalize=args.normalize)
            else:  # an image classifier: its pooled features
                features = _needs(model, "encode", args.name)(model.preprocess(images))
                out["image_features"] = F.normalize(features, dim=-1) if args.normalize else features
        if args.text:
            out["text_embeds"] = _needs(model, "encode_text", args.name)(args.text, normalize=args.normalize)
    metadata = {"model": args.name, "images": json.dumps(images), "texts": json.dumps(args.text),
                "normalized": json.dumps(args.normalize)}
    save_file({k: v.detach().float().cpu().contiguous() for k, v in out.items()}, args.out, metadata=metadata)
    print(f"wrote {args.out}: " + ", ".join(f"{k} {tuple(v.shape)}" for k, v in out.items()))


class _IntermixedParser(argparse.ArgumentParser):
    """A sub-command's parser whose positionals may sit between options, as in
    ``zoo embed NAME --weights DIR cat.png --text T``: argparse's plain parse ends the IMAGE list at the first
    option and refuses what follows ("unrecognized arguments: cat.png")."""

    _intermixing = False

    def parse_known_args(self, args=None, namespace=None):
        if self._intermixing:  # parse_known_intermixed_args calls back here (Python < 3.13)
            return super().parse_known_args(args, namespace)
        self._intermixing = True
        try:
            return self.parse_known_intermixed_args(args, namespace)
        finally:
            self._intermixing = False


def _positive(text: str) -> int:
    n = int(text)
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, got {n}")
    return n


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="zoo", description=__doc__.splitlines()[0])
    p.add_argument("--version", action="version", version=f"zoo {zoo.__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_IntermixedParser)

    def model_cmd(name: str, fn, help: str) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help, description=help)
        sp.add_argument("name", help="model name (see `zoo list`)")
        sp.set_defaults(fn=fn)
        return sp

    def runtime(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--weights", help="local directory in Hub layout, or another repo id of the same format")
        sp.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: cuda when available)")
        sp.add_argument("--dtype", help="float32 (default), float16, bfloat16")

    sp = sub.add_parser("list", help="list registered models")
    sp.add_argument("pattern", nargs="?", default="*", help="wildcard, e.g. 'ddim-*' or 'clip*'")
    sp.add_argument("--family"), sp.add_argument("--interface")
    sp.add_argument("--markdown", action="store_true", help="print the README's model table")
    sp.set_defaults(fn=cmd_list)

    model_cmd("info", cmd_info, "everything the registry knows about a model")
    sp = model_cmd("download", cmd_download, "fetch a model's files into the Hugging Face cache")
    sp.add_argument("--weights", help="another repo id of the same format")
    sub.add_parser("samplers", help="list samplers").set_defaults(fn=cmd_samplers)
    sub.add_parser("plugins", help="list plugins and any that failed to load").set_defaults(fn=cmd_plugins)

    sp = model_cmd("sample", cmd_sample, "generate images and save them as a grid")
    sp.add_argument("-n", type=int, default=16, help="number of samples (default 16)")
    sp.add_argument("--steps", type=int, help="sampler steps (default: the model's)")
    sp.add_argument("--sampler", help="see `zoo samplers` (default: the model's)")
    sp.add_argument("--schedule", help="sigma grid: 'default' (the checkpoint's), 'karras' or 'exponential'")
    sp.add_argument("--spacing", help="timesteps of the default DDPM grid: leading, trailing or linspace")
    sp.add_argument("--eta", type=float, help="DDIM eta")
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("-o", "--output", default="samples.png")
    runtime(sp)

    sp = model_cmd("train", cmd_train, "retrain a model zoo trains itself (e.g. ddpm-digits)")
    sp.add_argument("-o", "--output", help="output folder (default: ./NAME; the packaged weights are never replaced)")
    sp.add_argument("--steps", type=int, help="training steps (default: the recipe's)")
    sp.add_argument("--seed", type=int, default=0)

    sp = model_cmd("classify", cmd_classify, "top-k classes of images")
    sp.add_argument("images", nargs="+", metavar="IMAGE")
    sp.add_argument("--top-k", type=_positive, default=5, metavar="K", help="classes per image (default 5)")
    runtime(sp)

    sp = model_cmd("zero-shot", cmd_zero_shot, "zero-shot classification against text labels")
    sp.add_argument("images", nargs="+", metavar="IMAGE")
    sp.add_argument("--labels", required=True, help='comma-separated, e.g. "a cat,a dog"')
    runtime(sp)

    sp = model_cmd("embed", cmd_embed, "embed images and/or texts into a .safetensors file")
    sp.add_argument("images", nargs="*", metavar="IMAGE")
    sp.add_argument("--text", action="append", default=[], metavar="T", help="a text to embed (repeatable)")
    sp.add_argument("--out", required=True, help="FILE.safetensors")
    sp.add_argument("--normalize", action="store_true", help="L2-normalise the embeddings")
    runtime(sp)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.fn(args)
    except (ZooError, FileNotFoundError, ValueError) as exc:
        print(f"zoo: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
