"""The ``zoo`` command: the core commands (list, info, download, sample, embed, train, samplers, plugins) and
whatever the installed plugins add through their ``zoo_commands`` hook (classify, zero-shot, ...).

Each sub-command is a few lines over the Python API. Errors zoo raises on purpose and bad input (a missing file,
an invalid value) are printed as one line (exit status 2); anything else keeps its traceback.

For plugin authors, the pieces the built-in commands share are public here: :func:`add_model_options` and
:func:`create_from_args` (``--weights``, ``--device``, ``--dtype``), :func:`image_files` (IMAGE arguments,
checked before any model is loaded) and :func:`parse_options` (``--option key=value``).
"""
from __future__ import annotations

import argparse
import ast
import functools
import inspect
import json
import re
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import torch

import zoo
import zoo.api
from zoo.errors import ZooError
from zoo.registry import Command, resolve
from zoo.registry.errors import InvalidInputError, MissingFileError

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


def image_files(paths: Sequence[str], *, headers: bool = True) -> list[str]:
    """IMAGE arguments, checked before any model is loaded (a typo should not cost a download).

    A folder stands for the image files directly inside it, sorted by name, as timm's inference script reads a
    folder (files whose extension PIL does not open are skipped; a folder with none is refused). Returns the
    image paths in order, folders expanded: print results against this list, not the raw arguments.
    ``headers=False`` skips opening each file's header (a collection too large to open twice: ``zoo embed
    --out DIR`` names an unreadable file when it reads it).
    """
    from PIL import Image, UnidentifiedImageError

    files: list[str] = []
    for path in paths:
        p = Path(path)
        if p.is_dir():
            readable = {ext for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN}
            inside = sorted(str(f) for f in p.iterdir() if f.is_file() and f.suffix.lower() in readable)
            if not inside:
                raise InvalidInputError(f"{path} is a folder with no image files in it (looked for .png, .jpg, "
                                        f".jpeg, .webp, ... directly inside it)")
            files += inside
        elif not p.exists():
            raise MissingFileError(f"image file not found: {path}")
        elif not p.is_file():
            raise InvalidInputError(f"{path} is not a regular file (an image file, or a folder of them, is expected)")
        else:
            files.append(path)
    for path in files if headers else ():
        try:
            Image.open(path).close()  # reads the header only
        except UnidentifiedImageError:
            raise InvalidInputError(f"{path} is not an image file PIL can read") from None
        except OSError as exc:  # unreadable (permissions), not only unrecognised
            raise InvalidInputError(f"cannot read {path}: {exc.strerror or exc}") from None
    return files


def parse_options(pairs: Sequence[str]) -> dict[str, Any]:
    """``["eta=0.5", "variance=fixed_large"]`` -> ``{"eta": 0.5, "variance": "fixed_large"}``.

    Values are read as Python literals (numbers, True/False/None, quoted strings), else kept as strings.
    """
    options: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise InvalidInputError(f"--option {pair!r}: write it as KEY=VALUE, e.g. --option eta=0.5")
        try:
            options[key.strip()] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            options[key.strip()] = value
    return options


#: import name -> distribution name, where they differ (for "pip install ..." hints).
_DISTRIBUTIONS = {"sklearn": "scikit-learn", "skimage": "scikit-image", "PIL": "pillow", "cv2": "opencv-python",
                  "yaml": "pyyaml"}


def missing_dependency(exc: ModuleNotFoundError, what: str) -> str:
    """One line for a module that is not installed: which package provides it and the ``pip install`` that adds
    it, naming zoo's extra when one of zoo's optional-dependency groups (``zoo[train]``) lists the package."""
    from importlib import metadata

    module = (exc.name or str(exc)).split(".")[0]
    dist = _DISTRIBUTIONS.get(module, module.replace("_", "-"))
    extras = []
    try:
        for requirement in metadata.requires("zoo") or ():
            name = re.split(r"[\s<>=!~;\[(]", requirement, maxsplit=1)[0]
            extra = re.search(r"extra\s*==\s*[\"']([^\"']+)", requirement)
            if extra and name.lower().replace("_", "-") == dist.lower():
                extras.append(extra.group(1))
    except metadata.PackageNotFoundError:  # pragma: no cover - zoo run from a source tree, not installed
        pass
    extra = next((e for e in extras if e != "test"), extras[0] if extras else None)
    install = f'pip install "zoo[{extra}]"' if extra else f"pip install {dist}"
    return f"{what} needs {dist} (module {module!r}), which is not installed: {install}"


def require(model: Any, method: str, name: str) -> Any:
    """``model.method``, or a one-line error saying what kind of model ``name`` is instead."""
    if not callable(getattr(model, method, None)):
        raise ZooError(f"{name!r} cannot {method.replace('_', '-')}: it is a {zoo.get_entry(name).interface} model")
    return getattr(model, method)


# -- the core commands -------------------------------------------------------------------------------------------


def cmd_list(args: argparse.Namespace) -> int | None:
    names = zoo.list_models(args.pattern, family=args.family, interface=args.interface)
    if not names:  # as grep and `pip list` filters do: say so, and exit 1
        filters = "".join(f" with {k} {v!r}" for k, v in (("family", args.family), ("interface", args.interface)) if v)
        print(f"zoo: no model matches {args.pattern!r}{filters} (`zoo list` shows all "
              f"{len(zoo.list_models())})", file=sys.stderr)
        return 1
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


def cmd_verify(args: argparse.Namespace) -> int:
    """Re-hash the cached files of NAME (or of every model with a Hub repo): exit 1 if any is damaged."""
    from zoo import hub

    names = [args.name] if args.name else [n for n in zoo.list_models() if zoo.get_entry(n).repo_id]
    damaged = 0
    for name in names:
        entry = zoo.get_entry(name)
        if entry.repo_id is None:
            raise InvalidInputError(f"{name} ships in the package (no Hub files to verify)")
        for file, status in hub.verify(entry):
            if status == "not cached" and not args.name:
                continue
            damaged += status.startswith("damaged")
            print(f"{name:<24} {file:<44} {status}")
    return 1 if damaged else 0


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
        print(f"{name:<20} ok      {n_models} model{'' if n_models == 1 else 's'}{extra}")
    for name, why in reg.failures.items():
        print(f"{name:<20} FAILED  {why}")
    for kind, name in reg.clashes:
        print(f"{'(clash)':<20} CLASH   {reg.clash_message(kind, name)}")


def cmd_sample(args: argparse.Namespace) -> None:
    from zoo.image import check_image_output, save_grid

    if args.out is None:
        check_image_output(args.output)  # -o out_dir/ or -o x.unknown: refused now, not after minutes of sampling
    options = parse_options(args.option)
    if args.eta is not None:
        options["eta"] = args.eta
    if args.sampler is not None:  # a typo in an option should not cost a model load
        try:
            zoo.get_sampler(args.sampler).check_options(options)
        except TypeError as exc:
            raise InvalidInputError(str(exc)) from None
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
    started = False
    if args.out is not None:
        from zoo import distributed

        started = distributed.init_from_env()  # torchrun's variables -> gloo on CPUs, NCCL on GPUs
    pipe = create_from_args(args)
    sample = require(pipe, "sample", args.name)
    takes = tuple(getattr(getattr(pipe, "conditioner", None), "inputs", ()))
    unused = sorted(set(conditioning) - set(takes))
    if unused:
        flags = ", ".join("--" + k.replace("_", "-") for k in unused)
        raise InvalidInputError(f"{args.name} takes no {flags}" + (f" (its conditioning: {', '.join(takes)})" if takes else
                                                            " (it is unconditional)"))
    options.update(conditioning)
    if args.out is not None:  # shards + manifest, the same files for any world size and batch size, resumable
        steps, sampler = options.pop("steps", None), options.pop("sampler", None)
        try:
            run = distributed.sample_to_dir(pipe, n, args.out, seed=args.seed, batch_size=args.batch_size,
                                            shard_size=args.shard_size, steps=steps, sampler=sampler,
                                            **options)
            if distributed.rank_and_world()[0] == 0:
                print(f"wrote {args.out}: {run.summary()}")
        finally:
            if started:
                torch.distributed.destroy_process_group()
        return
    generator = torch.Generator().manual_seed(args.seed)
    start = time.perf_counter()
    try:  # an option this kind of model does not take: one line naming those it does, not a traceback
        inspect.signature(sample).bind(n, generator=generator, **options)
    except TypeError:
        takes = [p for p in inspect.signature(sample).parameters if p not in ("n", "generator")]
        raise InvalidInputError(f"{args.name}.sample takes {', '.join(takes) or 'no options'}; got "
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
    if "progress" in inspect.signature(resolve(entry.train)).parameters:
        from zoo.progress import enabled

        options["progress"] = enabled(True)  # -q, TQDM_DISABLE, zoo.set_progress_bar_config
    began = time.time()
    try:
        path = entry.train(out, seed=args.seed, **options)
    except ModuleNotFoundError as exc:  # a training-only dependency (the data set's package, ...)
        raise ZooError(missing_dependency(exc, f"`zoo train {args.name}`")) from None
    if Path(path).is_dir():  # a new folder the run wrote whole: the user's umask, not safetensors' 0600
        from zoo.outputs import follow_umask

        follow_umask(path, since=began)
    print(f"wrote {path}; load it with `--weights {path}` (`zoo.create({args.name!r}, weights=...)` in Python)"
          + (f", or copy it over {entry.local_dir} to ship it" if entry.local_dir else ""))


def _sample_arguments(sp: argparse.ArgumentParser) -> None:
    add_model_options(sp)
    sp.add_argument("--out", metavar="DIR", help="write the samples as uint8 .npz shards and a manifest.json into DIR "
                    "(resumable; the same files for any torchrun world size and batch size) instead of a grid")
    sp.add_argument("--batch-size", type=positive_int, default=64, help="with --out: samples per forward pass")
    sp.add_argument("--shard-size", type=positive_int, default=1000, help="with --out: samples per shard file")
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


def positive_int(text: str) -> int:
    """An argparse ``type=`` for counts: an integer of 1 or more."""
    n = int(text)
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, got {n}")
    return n


def _labels(text: str | None) -> list[int | str] | None:
    """``--labels 207,otter`` -> ``[207, "otter"]``: ids as ints, names as they are (the model resolves them)."""
    if text is None:
        return None
    items = [item.strip() for item in text.split(",") if item.strip()]
    if not items:
        raise InvalidInputError("--labels is empty: give class ids or names, comma-separated (e.g. --labels 207,360)")
    return [int(item) if item.lstrip("-").isdigit() else item for item in items]


def _train_arguments(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("name", help="model name (see `zoo list`)")
    sp.add_argument("-o", "--output", help="output folder (default: ./NAME; the packaged weights are never replaced)")
    sp.add_argument("--steps", type=int, help="training steps (default: the recipe's)")
    sp.add_argument("--seed", type=int, default=0)


def _embed_arguments(sp: argparse.ArgumentParser) -> None:
    add_model_options(sp)
    sp.add_argument("images", nargs="*", metavar="IMAGE", help="image files, folders of them, list files (.txt, one "
                    "path a line, relative to the list's folder) or `zoo sample --out` folders")
    sp.add_argument("--text", action="append", default=[], metavar="T", help="a text to embed (repeatable; one file)")
    sp.add_argument("--out", required=True, metavar="FILE|DIR", help="FILE.safetensors, FILE.npz or FILE.npy (one "
                    "array; the extension picks the format), or a folder (DIR/, or a name without extension): "
                    "safetensors shards + manifest.json, resumable, the same files for any torchrun world size")
    sp.add_argument("--normalize", action="store_true", help="L2-normalise the embeddings")
    sp.add_argument("--batch-size", type=positive_int, default=64,
                    help="with --out DIR: images per forward pass (default 64)")
    sp.add_argument("--shard-size", type=positive_int, default=10000,
                    help="with --out DIR: images per shard file (default 10000)")
    sp.add_argument("--workers", type=int, default=4, metavar="N", help="with --out DIR: DataLoader processes per "
                    "rank that decode and preprocess images (default 4; 0: in-process)")


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
    Command("embed", zoo.registry.lazy("zoo.embedding:embed_command"),
            "embed images (and texts) with any encoder: one file, or shards at scale", _embed_arguments),
    Command("train", cmd_train, "retrain a model zoo trains itself (e.g. ddpm-digits)", _train_arguments),
    Command("bench", zoo.registry.lazy("zoo.bench:run"), "time a model (and its reference library) on this device",
            zoo.registry.lazy("zoo.bench:arguments")),
    Command("verify", cmd_verify, "re-hash a model's cached Hub files (all models: no NAME)",
            lambda sp: sp.add_argument("name", nargs="?", help="model name (default: every cached model)")),
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
        _add_run_options(sp)
        sp.set_defaults(fn=_configured(command.run))
        _plain_help(sp)
    _plain_help(p)
    return p


def _threads(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive whole number of threads")
    return n


def _add_run_options(sp: argparse.ArgumentParser) -> None:
    """``-q/--quiet`` and ``--threads N`` on every command (unless the command defines them itself)."""
    taken = sp._option_string_actions
    if "-q" not in taken and "--quiet" not in taken:
        sp.add_argument("-q", "--quiet", action="store_true",
                        help="no progress bars (as TQDM_DISABLE=1 or HF_HUB_DISABLE_PROGRESS_BARS=1)")
    if "--threads" not in taken:
        sp.add_argument("--threads", type=_threads, metavar="N",
                        help="CPU threads for torch (torch.set_num_threads; default: OMP_NUM_THREADS, else all cores)")


def _configured(run: Any) -> Any:
    """``run`` after applying the options :func:`_add_run_options` adds."""
    @functools.wraps(run)
    def configured(args: argparse.Namespace) -> Any:
        if getattr(args, "threads", None) is not None:
            torch.set_num_threads(args.threads)
        if getattr(args, "quiet", False):
            zoo.set_progress_bar_config(disable=True)
        return run(args)
    return configured


_REST = [(re.compile(r"``([^`]+)``"), r"'\1'"), (re.compile(r":[a-z]+:`~?([^`]+)`"), r"\1")]


def _plain(text: str | None) -> str | None:
    """Help text as plain text: reST's ``literal`` and :role:`target` markup (from docstrings) without markup."""
    if not text:
        return text
    for pattern, repl in _REST:
        text = pattern.sub(repl, text)
    return text


def _plain_help(parser: argparse.ArgumentParser) -> None:
    parser.description = _plain(parser.description)
    parser.epilog = _plain(parser.epilog)
    for action in parser._actions:
        action.help = _plain(action.help) if isinstance(action.help, str) else action.help
        for choice in getattr(action, "_choices_actions", ()):  # sub-command one-liners in `zoo --help`
            choice.help = _plain(choice.help)


def main(argv: Sequence[str] | None = None) -> int:
    # this process is the run: keep freed tensors' memory for the next ones (no page faults; see zoo.fast)
    from zoo.fast import retain_freed_memory

    retain_freed_memory()
    args = build_parser().parse_args(argv)
    try:
        status = args.fn(args)
    except ZooError as exc:  # a mistake zoo named: one line. Anything else is a bug: its traceback shows.
        print(f"zoo: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("zoo: interrupted", file=sys.stderr)
        return 130
    return int(status or 0)


if __name__ == "__main__":
    sys.exit(main())
