"""Embedding images with any Encoder: one file, or a large collection as resumable shards on torch.distributed.

``zoo embed NAME IMAGE... --out FILE.safetensors`` (or ``.npz``, ``.npy``) embeds a few images and/or texts into
one file. ``zoo embed NAME SOURCE... --out DIR/`` embeds a collection, in one process or in each process of a
``torchrun`` job, with :func:`embed_to_dir`:

    torchrun --nproc_per_node=4 -m zoo embed clip-vit-b32 photos/ --out emb/ --workers 8

Sources
-------
An image file; a folder (the images directly inside it, sorted by name, as :func:`zoo.cli.image_files` reads
one); a list file (``.txt``: one image path a line, relative to the list's own folder; blank lines and ``#``
comments skipped); or a ``zoo sample --out`` folder (its ``.npz`` shards in index order; sample ``i`` of folder
``samples`` is recorded as ``samples#i``). They are listed, and list entries checked to exist, before the model
loads; images are opened only when read.

The work
--------
Images ``[k*S, (k+1)*S)`` make shard ``k`` (``S = shard_size``), and shard ``k`` goes to rank ``k % world_size``,
the split rule of :func:`zoo.distributed.sample_to_dir`. DataLoader workers (``workers``) decode each image (PIL,
upright by its EXIF orientation, RGB: :func:`zoo.preprocess.load_images`) and run the model's own ``preprocess``
on it as a uint8 ``(1, 3, H, W)`` batch, the one input every Encoder's ``preprocess`` takes; the main process
runs ``encode_image`` (image-text models) or ``encode`` (any other Encoder) on batches of ``batch_size`` that
never cross a shard, so a shard's numbers do not depend on the world size or on which shards were done before.

The files
---------
* ``shard-00000.safetensors`` ...: ``embeddings`` float32 ``(S, D)``, ``indices`` int64 ``(S,)`` (the images'
  positions in the source list) and, in the header's metadata, ``paths``: a JSON list of the images' paths.
  (One metadata key: safetensors writes several in a random order, and the shards must be the same bytes.)
* ``manifest.json``: ``kind: "embeddings"``, model, repo and pinned revision, ``--weights``, which method made
  the embeddings, the preprocessing, dtype, normalisation, the inputs (count and sha256 of the path list), zoo
  version, shard size, the shard list and ``complete``.

As in ``zoo sample --out``, every file is written under a temporary name and renamed into place, so a killed
run leaves finished shards and never a partial one; a restart with the same settings skips the finished
shards, and one with other settings is refused, naming the difference. :func:`read_embeddings` reads a
finished folder back.
"""
from __future__ import annotations

import argparse
import copy
import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from zoo.cli import create_from_args, image_files
from zoo.errors import ZooError
from zoo.registry import INTERFACES, Encoder, TextEncoder
from zoo.registry.errors import InvalidInputError, MissingFileError

from .distributed import (MANIFEST, SampleRun, atomic_write, describe_model, finish_run, init_from_env, open_run,
                          rank_and_world, shard_name)

SHARD_SUFFIX = ".safetensors"
#: files read as lists of image paths
LIST_SUFFIXES = (".txt",)
DECODE = "PIL, EXIF orientation applied, RGB (zoo.preprocess.load_images), as a uint8 (1, 3, H, W) batch"


# -- sources ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Source:
    """One image to embed: the file ``path``, or row ``row`` of the ``zoo sample`` shard file ``path``; ``name``
    is what the output records."""

    name: str
    path: str
    row: int | None = None


def image_sources(paths: Sequence[str | os.PathLike], *, headers: bool = True) -> list[Source]:
    """SOURCE arguments (see the module docstring) -> the images, in order, checked before any model loads.

    ``headers=False``: image files are checked to exist, not opened (a collection too large to open twice).
    Raises a MissingFileError or InvalidInputError naming the argument (and the list line) at fault.
    """
    sources: list[Source] = []
    for arg in paths:
        p = Path(arg)
        if p.is_dir() and (p / MANIFEST).is_file():
            sources += _sample_folder(p)
        elif p.is_file() and p.suffix.lower() in LIST_SUFFIXES:
            sources += _listed(p, headers=headers)
        else:
            sources += [Source(f, f) for f in image_files([os.fspath(arg)], headers=headers)]
    if not sources:
        raise InvalidInputError("no images given: name image files, folders of them, list files (.txt) or "
                                "`zoo sample --out` folders")
    return sources


def _listed(listing: Path, *, headers: bool) -> list[Source]:
    """The images a list file names, one a line (relative paths from the list's folder)."""
    names = []
    for number, line in enumerate(listing.read_text().splitlines(), start=1):
        entry = line.strip()
        if not entry or entry.startswith("#"):
            continue
        path = str(listing.parent / entry) if not os.path.isabs(entry) else entry
        if os.path.isdir(path):
            raise InvalidInputError(f"{listing} line {number}: {entry} is a folder; a list names image files "
                                    f"(pass the folder itself as a SOURCE instead)")
        if not os.path.isfile(path):
            raise MissingFileError(f"{listing} line {number}: image file not found: {path}")
        names.append(path)
    if not names:
        raise InvalidInputError(f"{listing} lists no image (one path a line is expected)")
    if headers:
        image_files(names)
    return [Source(n, n) for n in names]


def _sample_folder(folder: Path) -> list[Source]:
    """The samples of a finished ``zoo sample --out`` folder, in index order."""
    manifest = json.loads((folder / MANIFEST).read_text())
    if manifest.get("kind") == "embeddings":
        raise InvalidInputError(f"{folder} holds embeddings (a `zoo embed --out` folder), not images; read it with "
                                f"zoo.embedding.read_embeddings")
    shards = manifest.get("shards", [])
    if not shards or not all(str(s.get("file", "")).endswith(".npz") for s in shards):
        raise InvalidInputError(f"{folder / MANIFEST} is not a `zoo sample --out` manifest (no .npz shard list)")
    missing = [s["file"] for s in shards if not (folder / s["file"]).is_file()]
    if missing or not manifest.get("complete"):
        raise InvalidInputError(f"{folder} is an unfinished sampling run ({len(missing)} of {len(shards)} shards "
                                f"missing): run the same `zoo sample` command again to finish it")
    return [Source(f"{folder}#{i}", str(folder / s["file"]), i - s["start"])
            for s in shards for i in range(s["start"], s["stop"])]


# -- reading and preprocessing, in the DataLoader workers ---------------------------------------------------------


def decode(source: Source) -> Tensor:
    """One source -> uint8 ``(1, 3, H, W)``: upright RGB for a file, the sample for a shard row (greyscale
    samples repeated to RGB, as PIL's ``convert("RGB")`` does). An unreadable file is an InvalidInputError
    naming it."""
    from PIL import Image

    from .preprocess import load_images

    try:
        if source.row is None:
            image = load_images(source.path)[0]
        else:
            with np.load(source.path) as shard:
                pixels = shard["arr_0"][source.row]
            image = load_images(Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels))[0]
    except (OSError, SyntaxError, Image.DecompressionBombError, ZooError) as exc:  # PIL's kinds of bad file
        raise InvalidInputError(f"cannot read {source.name}: {exc}") from None
    return torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1)[None]


class _Unreadable(str):
    """What a worker hands back for an image it could not read (an exception raised in a worker reaches the
    main process wrapped in a traceback; this reaches it as one line)."""


class SourceImages(torch.utils.data.Dataset):
    """``sources[i]`` -> its preprocessed image ``(C, H, W)`` on the CPU (``preprocess``: a function of a uint8
    ``(1, 3, H, W)`` batch, run in the worker), or the decoded uint8 ``(3, H, W)`` image when ``preprocess`` is
    None (then the main process preprocesses)."""

    def __init__(self, sources: Sequence[Source], preprocess: Any | None):
        self.sources, self.preprocess = list(sources), preprocess

    def __len__(self) -> int:
        return len(self.sources)

    def __getitem__(self, i: int) -> Tensor | _Unreadable:
        try:
            image = decode(self.sources[i])
        except InvalidInputError as exc:
            return _Unreadable(str(exc))
        try:
            return self.preprocess(image)[0] if self.preprocess is not None else image[0]
        except ZooError as exc:  # an image the preprocessing refuses (too small to crop, ...)
            return _Unreadable(f"{self.sources[i].name}: {exc}")


def _collate(items: list[Tensor | _Unreadable]) -> Tensor | list[Tensor] | _Unreadable:
    bad = next((x for x in items if isinstance(x, _Unreadable)), None)
    if bad is not None:
        return bad
    return torch.stack(items) if all(x.shape == items[0].shape for x in items) else items


def _weightless_copy(model: Any) -> Any:
    """A shallow copy of ``model`` without parameters or sub-modules, its own buffers on the CPU: its ``device``
    is the CPU, so its ``preprocess`` (the model's own method, which ends by moving the batch to the model's
    device) returns CPU tensors. That is what the workers run: a worker must not touch an accelerator (CUDA
    cannot start in a forked process, and a context per worker would waste its memory), and need not hold the
    weights. :func:`_worker_preprocess` checks it against ``model.preprocess`` before it is used."""
    twin = copy.copy(model)
    twin._parameters, twin._modules = {}, {}
    twin._buffers = {k: v.cpu() for k, v in model._buffers.items() if v is not None}
    return twin


def _worker_preprocess(model: Any, first: Tensor) -> Any | None:
    """The weightless copy's ``preprocess`` if it gives what ``model.preprocess`` gives on the first image, in the
    model's dtype (exactly on the CPU; to a few units of rounding on an accelerator, where the model's own may
    compute on the device); else None (a ``preprocess`` that needs the weights: the main process preprocesses,
    and the workers only decode)."""
    want = model.preprocess(first)
    twin = _weightless_copy(model)
    try:
        got = twin.preprocess(first)
    except Exception:  # noqa: BLE001 - whatever a family's preprocess needs from the model that the copy lacks
        return None
    if not isinstance(got, Tensor) or got.device.type != "cpu" or got.shape != want.shape:
        return None
    got, want = got.to(want.dtype), want.cpu()
    if model.device.type == "cpu":
        return twin.preprocess if torch.equal(got, want) else None
    tolerance = max(1e-4, 4 * torch.finfo(want.dtype).eps) if want.is_floating_point() else 0
    return twin.preprocess if torch.allclose(got, want, rtol=tolerance, atol=tolerance) else None


# -- embedding a collection into shards ----------------------------------------------------------------------------


@dataclass
class EmbedRun(SampleRun):
    """What :func:`embed_to_dir` did: ``images`` embedded now by this rank (not counting skipped shards),
    ``shards_written``, ``shards_skipped``, ``seconds``, the manifest's path, and ``total_images``, the images all
    ranks embedded now (summed over the process group at the end of a full run; this rank's otherwise)."""


def _embedder(model: Any, normalize: bool) -> tuple[str, Any]:
    """The contract method that embeds a preprocessed batch: ``encode_image`` (image-text models, normalised by
    the model) or ``encode`` (any Encoder: its pooled features)."""
    if callable(getattr(model, "encode_image", None)):
        return "encode_image", lambda x: model.encode_image(x, normalize=normalize)
    if callable(getattr(model, "encode", None)) and callable(getattr(model, "preprocess", None)):
        return "encode", lambda x: F.normalize(model.encode(x), dim=-1) if normalize else model.encode(x)
    raise InvalidInputError(f"{type(model).__name__} is not an image encoder (it has no preprocess and encode): "
                            f"embedding needs a zoo Encoder")


def _preprocessing(model: Any) -> dict[str, Any]:
    """What the manifest records of the preprocessing: the decoding, the model's ``preprocess`` method, its output
    size and any :class:`zoo.preprocess.ImagePreprocess` the model holds (resize, crop, mean and std)."""
    from .preprocess import ImagePreprocess

    transforms = [repr(v) for v in vars(model).values() if isinstance(v, ImagePreprocess)]
    size = getattr(model, "image_size", None)
    return {"decode": DECODE, "method": f"{type(model).__module__}.{type(model).__qualname__}.preprocess",
            "image_size": list(size) if size is not None else None, "transforms": transforms}


def embed_to_dir(model_or_name: Any, sources: Sequence[str | os.PathLike | Source] | str | os.PathLike,
                 out_dir: str | os.PathLike, *, batch_size: int = 64, shard_size: int = 10000, workers: int = 0,
                 normalize: bool = False, name: str | None = None, weights: str | None = None,
                 device: str | torch.device | None = None, dtype: torch.dtype | str | None = None,
                 progress: bool = True, stop_after_shards: int | None = None) -> EmbedRun:
    """Embed a collection of images into ``out_dir`` as safetensors shards and a manifest (module docstring).

    Args:
        model_or_name: an Encoder (``zoo.create("clip-vit-b32")``) or a registry name, created here with
            ``weights``, ``device`` and ``dtype``.
        sources: image files, folders, list files, ``zoo sample --out`` folders (see :func:`image_sources`), or
            the :class:`Source` list it returns.
        out_dir: where shards and ``manifest.json`` go; an unfinished run there is resumed.
        batch_size: images per forward pass on each rank (batches never cross a shard).
        shard_size: images per shard file (the unit of resumption and of the split over ranks).
        workers: DataLoader processes per rank that decode and preprocess (0: in this process).
        normalize: L2-normalise the embeddings.
        name, weights: the registry name and ``--weights`` the manifest records (for a model passed built).
        progress: one bar on rank 0 for the whole job (its own count times the world size), with images/s.
        stop_after_shards: stop this rank after writing that many shards (to test resumption; None: all).
    Returns:
        an :class:`EmbedRun` for this rank. Under torch.distributed every rank must call it with the same
        arguments; the manifest is final once all ranks return.
    """
    from safetensors.torch import save

    from .progress import progress_bar

    for what, value, least in (("batch_size", batch_size, 1), ("shard_size", shard_size, 1), ("workers", workers, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise InvalidInputError(f"{what}={value!r}: an integer, {least} or more")
    sources = [sources] if isinstance(sources, (str, os.PathLike)) else list(sources)
    if not sources or not all(isinstance(s, Source) for s in sources):
        sources = image_sources(sources, headers=False)
    if isinstance(model_or_name, str):
        from .api import create

        name, model = model_or_name, create(model_or_name, weights=weights, device=device, dtype=dtype)
    else:
        model = model_or_name
    method, embed = _embedder(model, normalize)
    rank, world = rank_and_world()
    out, n = Path(out_dir), len(sources)
    names = [s.name for s in sources]
    shards = [(k, k * shard_size, min((k + 1) * shard_size, n)) for k in range((n + shard_size - 1) // shard_size)]
    run = {"kind": "embeddings", **describe_model(model, name), "weights": weights, "method": method,
           "preprocessing": _preprocessing(model), "dtype": str(model.dtype).removeprefix("torch."),
           "normalize": bool(normalize),
           "inputs": {"count": n, "sha256": hashlib.sha256("\n".join(names).encode()).hexdigest()},
           "format": "safetensors: embeddings float32 (N, D), indices int64 (N,), metadata paths: JSON list",
           "shard_size": shard_size}
    listing = [{"file": shard_name(k, SHARD_SUFFIX), "start": a, "stop": b} for k, a, b in shards]
    manifest_path = open_run(out, run, listing)

    mine = [s for s in shards if s[0] % world == rank]
    todo = [s for s in mine if not (out / shard_name(s[0], SHARD_SUFFIX)).is_file()]
    done_before = sum(b - a for k, a, b in shards if (out / shard_name(k, SHARD_SUFFIX)).is_file())
    local = [sources[i] for _, lo, hi in todo for i in range(lo, hi)]  # this rank's images, shard by shard
    batches, offset = [], 0
    for _, lo, hi in todo:
        batches += [list(range(offset + b0 - lo, offset + min(b0 + batch_size, hi) - lo))
                    for b0 in range(lo, hi, batch_size)]
        offset += hi - lo
    preprocess = _worker_preprocess(model, decode(local[0])) if local else None
    loader = torch.utils.data.DataLoader(SourceImages(local, preprocess), batch_sampler=batches,
                                         num_workers=workers if local else 0, collate_fn=_collate,
                                         pin_memory=model.device.type == "cuda")
    bar = progress_bar(total=n, initial=min(done_before, n), desc=f"embedding with {run['model']}", unit="img",
                       progress=progress and rank == 0)
    start, images, written = time.perf_counter(), 0, 0
    batch_iter = iter(loader)
    try:
        for k, lo, hi in todo:
            parts = []
            for _ in range(lo, hi, batch_size):
                batch = next(batch_iter)
                if isinstance(batch, _Unreadable):
                    raise InvalidInputError(str(batch))
                if preprocess is None:  # the model's preprocess needs the model: run it here, image by image
                    batch = torch.cat([model.preprocess(x[None]) for x in batch])
                with torch.inference_mode():
                    features = embed(batch.to(device=model.device, dtype=model.dtype, non_blocking=True))
                if features.ndim != 2:
                    raise InvalidInputError(f"{run['model']}.{method} gave shape {tuple(features.shape)}; embeddings "
                                            f"are (N, D)")
                parts.append(features.float().cpu())
                bar.update(min(len(features) * world, n - bar.n))
            tensors = {"embeddings": torch.cat(parts).contiguous(), "indices": torch.arange(lo, hi, dtype=torch.int64)}
            atomic_write(out / shard_name(k, SHARD_SUFFIX), save(tensors, metadata={"paths": json.dumps(names[lo:hi])}))
            images, written = images + hi - lo, written + 1
            if stop_after_shards is not None and written >= stop_after_shards:
                break
    finally:
        del batch_iter  # stops the workers now, also after an error or a stop
        bar.close()
    total = finish_run(images, stopped=stop_after_shards is not None, manifest=manifest_path, run=run, listing=listing)
    return EmbedRun(images, written, len(mine) - len(todo), time.perf_counter() - start, manifest_path, total)


def read_embeddings(path: str | os.PathLike) -> tuple[list[str], Tensor]:
    """A finished ``zoo embed --out DIR`` folder (or one shard) -> (the images' paths, float32 ``(N, D)``), in
    the order of the sources."""
    from safetensors import safe_open

    def shard(file: Path) -> tuple[list[str], Tensor]:
        with safe_open(str(file), "pt") as f:
            return json.loads(f.metadata()["paths"]), f.get_tensor("embeddings")

    path = Path(path)
    if path.is_file():
        return shard(path)
    if not (path / MANIFEST).is_file():
        raise MissingFileError(f"{path} holds no {MANIFEST}: not a `zoo embed --out` folder")
    manifest = json.loads((path / MANIFEST).read_text())
    if manifest.get("kind") != "embeddings":
        raise InvalidInputError(f"{path} is not a `zoo embed --out` folder (its manifest is not of embeddings)")
    missing = [s["file"] for s in manifest["shards"] if not (path / s["file"]).is_file()]
    if missing or not manifest.get("complete"):
        raise InvalidInputError(f"{str(path)!r} is an unfinished run ({len(missing)} of {len(manifest['shards'])} "
                                f"shards missing): run the same embed command again to finish it")
    parts = [shard(path / s["file"]) for s in manifest["shards"]]
    return [p for paths, _ in parts for p in paths], torch.cat([e for _, e in parts])


# -- the command ---------------------------------------------------------------------------------------------------


def _needs(name: str, contract: type, what: str) -> None:
    """Refuse, before loading it, a model whose entry does not implement ``contract`` (``zoo.create`` would
    check the same after loading)."""
    import zoo

    interface = zoo.get_entry(name).interface
    if not any(issubclass(c, contract) for c in INTERFACES[interface]):
        raise ZooError(f"{name!r} cannot {what}: it is a {interface} model")


def wants_folder(out: str) -> bool:
    """Whether ``--out`` names a folder of shards: it ends with a separator, is a folder, or has no extension."""
    return out.endswith(("/", os.sep)) or Path(out).is_dir() or not Path(out).suffix


def _check_folder(out: str) -> Path:
    """Refuse, before the model loads, a ``--out DIR`` that cannot be a folder or cannot be written."""
    p = Path(out).expanduser()
    existing = p
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise InvalidInputError(f"--out {out}: {existing} is a file, so the folder {p} cannot be created")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise InvalidInputError(f"--out {out}: cannot write in {existing} (permission denied)")
    return p


def embed_command(args: argparse.Namespace) -> None:
    """``zoo embed``: with ``--out FILE``, ``image_embeds`` (image-text models) or ``image_features`` (other
    encoders) ``(N, D)`` and ``text_embeds`` ``(M, E)``, float32, with the model name, inputs and normalisation as
    metadata; with ``--out DIR``, :func:`embed_to_dir` (under torchrun, in every process)."""
    if wants_folder(args.out):
        return _embed_to_folder(args)
    from .outputs import TENSOR_FORMATS, check_output, save_tensors

    if not args.images and not args.text:
        raise ZooError("zoo embed needs at least one IMAGE or --text T")
    if Path(args.out).suffix.lower() in (".pt", ".pth", ".pkl", ".pickle"):
        raise InvalidInputError(f"--out {args.out}: zoo writes no pickles (loading one runs code); use .safetensors, "
                                f".npz or .npy")
    check_output(args.out, TENSOR_FORMATS, flag="--out", make_parents=False)  # before the model is loaded
    if args.out.lower().endswith(".npy") and args.images and args.text:
        raise InvalidInputError(f"--out {args.out}: a .npy file holds one array, and images and texts make two; "
                                f"use .npz or .safetensors")
    sources = image_sources(args.images) if args.images else []
    if sources:
        _needs(args.name, Encoder, "encode")
    if args.text:
        _needs(args.name, TextEncoder, "encode-text")
    model = create_from_args(args)
    images = [s.path if s.row is None else decode(s) for s in sources]  # files as paths, samples decoded
    out: dict[str, Tensor] = {}
    with torch.inference_mode():
        if images:
            method, embed = _embedder(model, args.normalize)
            out["image_embeds" if method == "encode_image" else "image_features"] = embed(model.preprocess(images))
        if args.text:
            out["text_embeds"] = model.encode_text(args.text, normalize=args.normalize)
    metadata = {"model": args.name, "images": json.dumps([s.name for s in sources]), "texts": json.dumps(args.text),
                "normalized": json.dumps(args.normalize)}
    save_tensors(out, args.out, metadata=metadata)
    print(f"wrote {args.out}: " + ", ".join(f"{k} {tuple(v.shape)}" for k, v in out.items()))


def _embed_to_folder(args: argparse.Namespace) -> None:
    if args.text:
        raise InvalidInputError(f"--out {args.out}: is a folder, which holds image embeddings in shards; --text writes "
                                f"one file: name it, e.g. --out {args.out.rstrip('/' + os.sep) or 'embeddings'}"
                                f".safetensors")
    if not args.images:
        raise ZooError("zoo embed --out DIR needs images: files, folders, list files (.txt) or `zoo sample --out` "
                       "folders")
    if args.workers < 0:
        raise InvalidInputError(f"--workers {args.workers}: a number of processes, 0 or more")
    out = _check_folder(args.out)
    sources = image_sources(args.images, headers=False)
    _needs(args.name, Encoder, "encode")
    started = init_from_env()  # torchrun's variables -> gloo on CPUs, NCCL on GPUs
    try:
        model = create_from_args(args)
        run = embed_to_dir(model, sources, out, batch_size=args.batch_size, shard_size=args.shard_size,
                           workers=args.workers, normalize=args.normalize, name=args.name, weights=args.weights)
        if rank_and_world()[0] == 0:
            print(f"wrote {args.out}: {run.summary()}")
    finally:
        if started:
            torch.distributed.destroy_process_group()
