"""The ``zoo`` command: the core commands (list, info, download, sample, train, samplers, plugins) and whatever
the installed plugins add through their ``zoo_commands`` hook (classify, zero-shot, embed, ...).

Each sub-command is a few lines over the Python API. Errors zoo raises on purpose and bad input (a missing file,
an invalid value) are printed as one line (exit status 2); anything else keeps its traceback.

For plugin authors, the pieces the built-in commands share are public here: :func:`add_model_options` and
:func:`create_from_args` (``--weights``, ``--device``, ``--dtype``), :func:`image_files` (IMAGE arguments,
checked before any model is loaded) and :func:`parse_options` (``--option key=value``).
"""
from __future__ import annotations

import argparse
import ast
import inspect
import json
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import torch

import zoo
import zoo.api
from zoo.errors import ZooError
from zoo.registry import Command

# -- helpers for every command, built-in or a plugin's ---------------------------------------------------------


def add_model_options(parser: argparse.ArgumentParser) -> None:
    """``NAME`` and the options every model-loading command takes: ``--weights``, ``--device``, ``--dtype``."""
    parser.add_argument("name", help="model name (see `zoo list`)")
    parser.add_argument("--weights", help="local directory in Hub layout, or another repo id of the same format")
    parser.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: cuda when available)")
    parser.add_argument("--dtype", help="float32 (default), float16, bfloat16")


def create_from_args(args: argparse.Namespace, **kwargs: Any) -> Any:
    """``zoo.create`` with the options :func:`add_model_options` added."""
    return zoo.create(args.name, weights=args.weights, device=args.device, dtype=args.dtype, **kwargs)


def image_files(paths: Sequence[str]) -> list[str]:
    """IMAGE arguments, checked before any model is loaded (a typo should not cost a download)."""
    from PIL import Image, UnidentifiedImageError

    for path in paths:
        if not Path(path).is_file():
            raise FileNotFoundError(f"image file not found: {path}")
        try:
            Image.open(path).close()  # reads the header only
        except UnidentifiedImageError:
            raise ValueError(f"{path} is not an image file PIL can read") from None
    return list(paths)


def parse_options(pairs: Sequence[str]) -> dict[str, Any]:
    """``["eta=0.5", "variance=fixed_large"]`` -> ``{"eta": 0.5, "variance": "fixed_large"}``.

    Values are read as Python literals (numbers, True/False/None, quoted strings), else kept as strings.
    """
    options: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--option {pair!r}: write it as KEY=VALUE, e.g. --option eta=0.5")
        try:
            options[key.strip()] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            options[key.strip()] = value
    return options


def require(model: Any, method: str, name: str) -> Any:
    """``model.method``, or a one-line error saying what kind of model ``name`` is instead."""
    if not callable(getattr(model, method, None)):
        raise ZooError(f"{name!r} cannot {method.replace('_', '-')}: it is a {zoo.get_entry(name).interface} model")
    return getattr(model, method)


# -- the core commands -------------------------------------------------------------------------------------------


def cmd_list(args: argparse.Namespace) -> None:
    names = zoo.list_models(args.pattern, family=args.family, interface=args.interface)
    if args.markdown:
        print(models_table(names))
        return
    width = max((len(n) for n in names), default=0)
    for name in names:
        e = zoo.get_entry(name)
        source = e.repo_id or "shipped with zoo"
        print(f"{name:<{width}}  {e.family:<8} {e.interface:<11} {source}")
    failures = zoo.api.get_registry().failures
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
        options = f"  [options: {', '.join(s.options)}]" if s.options else ""
        print(f"{name:<16} {s.describe()}{options}")


def cmd_plugins(args: argparse.Namespace) -> None:
    reg = zoo.api.get_registry()
    for name in reg.plugins:
        n_models = sum(e.plugin == name for e in reg.models.values())
        samplers = [s for s, owner in reg.sampler_plugins.items() if owner == name]
        commands = [c for c, owner in reg.command_plugins.items() if owner == name]
        extra = (f", samplers: {', '.join(samplers)}" if samplers else "") + \
            (f", commands: {', '.join(commands)}" if commands else "")
        print(f"{name:<20} ok      {n_models} models{extra}")
    for name, why in reg.failures.items():
        print(f"{name:<20} FAILED  {why}")


def cmd_sample(args: argparse.Namespace) -> None:
    from zoo.image import save_grid

    options = parse_options(args.option)
    if args.eta is not None:
        options["eta"] = args.eta
    if args.sampler is not None:  # a typo in an option should not cost a model load
        try:
            zoo.get_sampler(args.sampler).check_options(options)
        except TypeError as exc:
            raise ValueError(str(exc)) from None
    # Only what the user set reaches sample(): a pipeline fills in its defaults, and a generator that is not a
    # diffusion pipeline (a normalizing flow: sample(n, generator=, temperature=)) is not handed diffusion options.
    chosen = {"steps": args.steps, "sampler": args.sampler, "schedule": args.schedule, "spacing": args.spacing,
              "compat": args.compat}
    options = {**{k: v for k, v in chosen.items() if v is not None}, **options}
    conditioning = {k: v for k, v in (("labels", _labels(args.labels)), ("prompt", args.prompt),
                                      ("negative_prompt", args.negative_prompt)) if v is not None}
    if args.guidance_scale is not None:
        options["guidance_scale"] = args.guidance_scale
    labels = conditioning.get("labels") or ()
    n = args.n if args.n is not None else (len(labels) if len(labels) > 1 else 16)
    pipe = create_from_args(args)
    sample = require(pipe, "sample", args.name)
    takes = tuple(getattr(getattr(pipe, "conditioner", None), "inputs", ()))
    unused = sorted(set(conditioning) - set(takes))
    if unused:
        flags = ", ".join("--" + k.replace("_", "-") for k in unused)
        raise ValueError(f"{args.name} takes no {flags}" + (f" (its conditioning: {', '.join(takes)})" if takes else
                                                            " (it is unconditional)"))
    options.update(conditioning)
    generator = torch.Generator().manual_seed(args.seed)
    start = time.perf_counter()
    try:  # an option this kind of model does not take: one line naming those it does, not a traceback
        inspect.signature(sample).bind(n, generator=generator, **options)
    except TypeError:
        takes = [p for p in inspect.signature(sample).parameters if p not in ("n", "generator")]
        raise ValueError(f"{args.name}.sample takes {', '.join(takes) or 'no options'}; got "
                         f"{', '.join(sorted(options))}") from None
    images = sample(n, generator=generator, **options)
    seconds = time.perf_counter() - start
    save_grid(images, args.output)
    print(f"wrote {args.output}: {n} samples from {args.name} in {seconds:.1f} s")


def cmd_train(args: argparse.Namespace) -> None:
    entry = zoo.get_entry(args.name)
    if entry.train is None:
        raise ZooError(f"{args.name!r} is not trained by zoo (its weights come from {entry.repo_id}); "
                       f"`zoo train` works for: {', '.join(n for n, e in zoo.api.get_registry().models.items() if e.train)}")
    # Never the packaged folder by default: a trial run must not replace the shipped, tested weights.
    out = Path(args.output or args.name)
    options = {"steps": args.steps} if args.steps else {}
    path = entry.train(out, seed=args.seed, **options)
    print(f"wrote {path}; sample from it with `zoo sample {args.name} --weights {path}`"
          + (f", or copy it over {entry.local_dir} to ship it" if entry.local_dir else ""))


def _sample_arguments(sp: argparse.ArgumentParser) -> None:
    add_model_options(sp)
    sp.add_argument("-n", type=int, help="number of samples (default: one per label when --labels gives several, else 16)")
    sp.add_argument("--labels", help="class labels of a class-conditional model, comma-separated ids or names, "
                                     "e.g. 207,360 or 'golden retriever,otter': one per sample, or one for all")
    sp.add_argument("--prompt", help="the text prompt of a text-conditional model")
    sp.add_argument("--negative-prompt", help="what guidance steers away from (text-conditional models)")
    sp.add_argument("--guidance-scale", type=float, help="classifier-free guidance weight (default: the model's)")
    sp.add_argument("--steps", type=int, help="sampler steps (default: the model's)")
    sp.add_argument("--sampler", help="see `zoo samplers` (default: the model's)")
    sp.add_argument("--schedule", help="sigma grid: 'default' (the checkpoint's), 'karras' or 'exponential'")
    sp.add_argument("--spacing", help="timesteps of the default DDPM grid: leading, trailing or linspace")
    sp.add_argument("--compat", choices=["diffusers"],
                    help="walk the grid diffusers' scheduler of the same name would (its timesteps and quirks)")
    sp.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                    help="a sampler option (repeatable), e.g. --option eta=0.5; `zoo samplers` lists them")
    sp.add_argument("--eta", type=float, help="DDIM eta (the same as --option eta=...)")
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("-o", "--output", default="samples.png")


def _labels(text: str | None) -> list[int | str] | None:
    """``--labels 207,otter`` -> ``[207, "otter"]``: ids as ints, names as they are (the model resolves them)."""
    if text is None:
        return None
    items = [item.strip() for item in text.split(",") if item.strip()]
    if not items:
        raise ValueError("--labels is empty: give class ids or names, comma-separated (e.g. --labels 207,360)")
    return [int(item) if item.lstrip("-").isdigit() else item for item in items]


def _train_arguments(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("name", help="model name (see `zoo list`)")
    sp.add_argument("-o", "--output", help="output folder (default: ./NAME; the packaged weights are never replaced)")
    sp.add_argument("--steps", type=int, help="training steps (default: the recipe's)")
    sp.add_argument("--seed", type=int, default=0)


def _list_arguments(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("pattern", nargs="?", default="*", help="wildcard, e.g. 'ddim-*' or 'clip*'")
    sp.add_argument("--family")
    sp.add_argument("--interface")
    sp.add_argument("--markdown", action="store_true", help="print the README's model table")


def _name_argument(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("name", help="model name (see `zoo list`)")


def _download_arguments(sp: argparse.ArgumentParser) -> None:
    _name_argument(sp)
    sp.add_argument("--weights", help="another repo id of the same format")


CORE_COMMANDS = (
    Command("list", cmd_list, "list registered models", _list_arguments),
    Command("info", cmd_info, "everything the registry knows about a model", _name_argument),
    Command("download", cmd_download, "fetch a model's files into the Hugging Face cache", _download_arguments),
    Command("samplers", cmd_samplers, "list samplers and their options"),
    Command("plugins", cmd_plugins, "list plugins, what they add, and any that failed to load"),
    Command("sample", cmd_sample, "generate images and save them as a grid", _sample_arguments),
    Command("train", cmd_train, "retrain a model zoo trains itself (e.g. ddpm-digits)", _train_arguments),
)


# -- the parser --------------------------------------------------------------------------------------------------


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


def commands() -> list[Command]:
    """The core commands, then every plugin's (a plugin command may not take a core command's name)."""
    core = {c.name for c in CORE_COMMANDS}
    reg = zoo.api.get_registry()
    out = list(CORE_COMMANDS)
    for name, command in sorted(reg.commands.items()):
        if name in core:
            print(f"warning: plugin {reg.command_plugins[name]!r} registers the command {name!r}, which is zoo's "
                  f"own; ignored", file=sys.stderr)
            continue
        out.append(command)
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="zoo", description="One registry and one API over model families: the core "
                                "commands below, and those the installed plugins add (see `zoo plugins`).")
    p.add_argument("--version", action="version", version=f"zoo {zoo.__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_IntermixedParser)
    for command in commands():
        sp = sub.add_parser(command.name, help=command.help, description=command.help)
        if command.arguments is not None:
            command.arguments(sp)
        sp.set_defaults(fn=command.run)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        status = args.fn(args)
    except (ZooError, FileNotFoundError, ValueError) as exc:
        print(f"zoo: error: {exc}", file=sys.stderr)
        return 2
    return int(status or 0)


if __name__ == "__main__":
    sys.exit(main())
