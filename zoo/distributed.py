"""Sampling at scale on torch.distributed: the same files for any world size, any batch size, and after a kill.

``sample_to_dir(pipe, n, out_dir, seed=...)`` writes ``n`` samples of a diffusion pipeline as uint8 shards
plus a manifest. Run it in one process, or in each process of a ``torchrun`` job (NCCL on GPUs, gloo on CPUs;
:func:`init_from_env` starts the process group from torchrun's variables), and the files are the same.

The seed rule
-------------
Sample ``i``'s starting noise and every noise a stochastic sampler injects into it, in order, are draws 0, 1,
2, ... of :mod:`zoo.noise` for ``(run seed, i)``: Philox4x32-10 keyed by the run seed, with the sample index and
the draw number in its counter (:data:`SEED_RULE`), the whole batch in one call. It is the pipeline's own rule,
and ``seed=S`` means what it means everywhere in zoo, ``torch.Generator().manual_seed(S)``: the run seed is
``zoo.noise.run_seed(torch.Generator().manual_seed(S))``, so the shards hold ``pipe.sample(n,
generator=torch.Generator().manual_seed(S))`` and ``zoo sample NAME --seed S`` draws the same images. Nothing
else is random, so sample ``i`` is the same whichever rank, batch or restart computes it. (The network's
arithmetic on a batch may still round differently at another batch size or on another device; on one machine
at one batch size the shards are byte-identical, which tests/test_distributed.py checks for world sizes 1 and
2, and tests/test_noise.py checks samples against ``pipe.sample`` at batch sizes 1, 2, 3 and 6.)

The files
---------
* ``shard-00000.npz`` ...: sample indices ``[k*S, (k+1)*S)`` for shard ``k`` (``S = shard_size``; the last
  may be shorter), with two arrays: ``arr_0``, uint8 ``(S, H, W, C)`` images (``round(255 * x)`` of the
  pipeline's [0, 1] output; the layout the ADM/guided-diffusion FID evaluator and DiT's ``sample_ddp.py``
  write), and ``indices``, int64 ``(S,)``. Shard ``k`` goes to rank ``k % world_size``.
* ``manifest.json``: model, repo and pinned revision, sampler, steps, options, dtype, image shape, seed and
  seed rule, zoo version, shard size and the shard list, and ``complete`` (true once every shard exists).

Every file is written under a temporary name and renamed into place (``os.replace`` is atomic), so a killed
run leaves finished shards and never a partial one; a restart with the same settings skips the finished
shards and samples the rest. A restart with other settings (a different seed, sampler, steps...) is refused,
naming the difference.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from zoo.registry import Sampler
from zoo.registry.errors import InvalidInputError

from .noise import SEED_RULE, CounterNoise, run_seed

MANIFEST = "manifest.json"


class _WithNoise(Sampler):
    """A sampler run with a given noise source instead of the pipeline's (same name, options and plans, so the
    pipeline applies the same checkpoint defaults and grids)."""

    def __init__(self, inner: Sampler, noise: CounterNoise):
        self.inner, self.noise = inner, noise
        self.name, self.stochastic, self.options, self.plans = inner.name, inner.stochastic, inner.options, inner.plans
        self.single_step = getattr(inner, "single_step", False)  # every declaration of the inner sampler's
        self.__doc__ = inner.__doc__

    def __call__(self, denoise, x, sigmas, *, signal_scale, noise_sampler=None, callback=None, **options):
        return self.inner(denoise, x, sigmas, signal_scale=signal_scale,
                          noise_sampler=self.noise if noise_sampler is not None else None, callback=callback,
                          **options)

    def check_options(self, options: dict[str, Any]) -> None:
        self.inner.check_options(options)


def rank_and_world() -> tuple[int, int]:
    """``(rank, world_size)`` of the current torch.distributed job; ``(0, 1)`` when none is initialised."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def init_from_env() -> bool:
    """Start the process group from torchrun's variables (``WORLD_SIZE``, ``RANK``, ``MASTER_ADDR``...) when they
    say there is more than one process: NCCL when CUDA is available, else gloo. Returns whether it did; a
    single process (no variables, or ``WORLD_SIZE=1``) needs no process group."""
    import torch.distributed as dist

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return False
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend)
    return True


def free_port() -> int:
    """A free TCP port on 127.0.0.1, for the rendezvous of a local process group."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun_environment(rank: int, world: int, port: int) -> None:
    """Set the variables torchrun gives process ``rank`` of a ``world``-process job on this machine (what
    :func:`init_from_env`, ``torch.distributed.init_process_group`` and ``zoo ... --out`` read): for tests and
    benchmarks that spawn the processes themselves (``torch.multiprocessing.spawn``)."""
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` whole or not at all: a temporary name beside it, fsync, then ``os.replace``."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def to_uint8(images: Tensor) -> np.ndarray:
    """``(N, C, H, W)`` floats in [0, 1] -> uint8 ``(N, H, W, C)``, ``round(255 * x)``."""
    return (images.float().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def shard_name(k: int, suffix: str = ".npz") -> str:
    """The file of shard ``k``: ``shard-00007.npz`` (``zoo embed`` writes ``.safetensors`` shards)."""
    return f"shard-{k:05d}{suffix}"


@dataclass
class SampleRun:
    """What :func:`sample_to_dir` did: ``images`` sampled now by this rank (not counting skipped shards),
    ``shards_written``, ``shards_skipped``, ``seconds``, the manifest's path, and ``total_images``, the images
    all ranks sampled now (summed over the process group at the end of a full run; this rank's otherwise)."""

    images: int
    shards_written: int
    shards_skipped: int
    seconds: float
    manifest: Path
    total_images: int = 0

    @property
    def images_per_second(self) -> float:
        """The whole job's rate: ``total_images / seconds``."""
        return self.total_images / self.seconds if self.seconds > 0 else 0.0

    def summary(self) -> str:
        return (f"{self.total_images} images in {self.seconds:.1f} s ({self.images_per_second:.1f} images/s); "
                f"{self.shards_skipped} finished shard(s) kept on this rank; manifest: {self.manifest}")


def describe_model(pipe: Any, name: str | None) -> dict[str, Any]:
    """What a manifest records of the model: its name, Hub repo and pinned revision (None for a model built by
    hand), and the zoo version."""
    from . import __version__
    from .api import get_entry

    model = name or getattr(pipe, "name", "") or type(pipe).__name__
    repo_id = revision = None
    try:
        entry = get_entry(model)
        repo_id, revision = entry.repo_id, entry.revision
    except Exception:  # a pipeline built by hand: no registry entry to pin
        pass
    return {"model": model, "repo_id": repo_id, "revision": revision, "zoo_version": __version__}


def sample_to_dir(pipe_or_name: Any, n: int, out_dir: str | os.PathLike, *, seed: int = 0, batch_size: int = 64,
                  shard_size: int = 1000, steps: int | None = None, sampler: str | None = None,
                  device: str | torch.device | None = None, dtype: torch.dtype | str | None = None,
                  progress: bool = True, stop_after_shards: int | None = None, **options: Any) -> SampleRun:
    """Sample ``n`` images into ``out_dir`` as uint8 ``.npz`` shards and a manifest (see the module docstring).

    Args:
        pipe_or_name: a diffusion pipeline (``zoo.create("ddpm-digits")``) or a registry name, created here on
            ``device`` in ``dtype``.
        n: the number of samples; indices ``0 .. n-1``.
        out_dir: where shards and ``manifest.json`` go; an unfinished run there is resumed.
        seed: the run's seed (sample ``i``'s noise depends on ``seed`` and ``i`` alone).
        batch_size: samples per forward pass on each rank (does not change which noise a sample gets).
        shard_size: samples per shard file (the unit of resumption).
        steps, sampler, **options: as in ``pipe.sample`` (None: the model's defaults); recorded in the manifest.
            A conditioning input (``labels=``, ``prompt=``: the pipeline conditioner's inputs) given as a
            sequence of ``n`` values is per sample: sample ``i`` gets value ``i`` (class-conditional FID runs
            draw their labels up front, e.g. ``labels=torch.randint(1000, (n,), generator=g)``).
        progress: one bar on rank 0 for the whole job (its own count times the world size), with images/s.
        stop_after_shards: stop this rank after writing that many shards (to test resumption; None: all).
    Returns:
        a :class:`SampleRun` for this rank. Under torch.distributed every rank must call it with the same
        arguments; the manifest is final once all ranks return.
    """
    from .progress import progress_bar

    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise InvalidInputError(f"n must be a positive number of samples, got {n!r}")
    for what, value in (("batch_size", batch_size), ("shard_size", shard_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InvalidInputError(f"{what}={value!r}: a positive integer")
    if isinstance(pipe_or_name, str):
        from .api import create

        name, pipe = pipe_or_name, create(pipe_or_name, device=device, dtype=dtype)
    else:
        name, pipe = None, pipe_or_name
    shape = getattr(pipe, "sample_shape", None)
    if shape is None or not hasattr(pipe, "_resolve_sampler"):
        raise InvalidInputError(f"sample_to_dir needs a diffusion pipeline (one with sample_shape and noise=), got "
                                f"{type(pipe).__name__}")
    rank, world = rank_and_world()
    out = Path(out_dir)
    impl = pipe._resolve_sampler(sampler, pipe.default_sampler)
    steps = pipe._steps(steps)
    shards = [(k, k * shard_size, min((k + 1) * shard_size, n)) for k in range((n + shard_size - 1) // shard_size)]
    inputs = tuple(getattr(getattr(pipe, "conditioner", None), "inputs", ()))
    per_sample = {k: v for k, v in options.items() if k in inputs and not isinstance(v, str) and n > 1
                  and hasattr(v, "__len__") and len(v) == n}
    run = {**describe_model(pipe, name), "sampler": impl.name, "steps": steps,
           "options": {k: _recorded(v, k in per_sample) for k, v in sorted(options.items())},
           "dtype": str(pipe.dtype).removeprefix("torch."), "image_shape": list(shape), "n": n, "seed": seed,
           "seed_rule": SEED_RULE, "format": "npz: arr_0 uint8 (N, H, W, C) = round(255 * image), indices int64 (N,)",
           "shard_size": shard_size}
    listing = [{"file": shard_name(k), "start": a, "stop": b} for k, a, b in shards]
    manifest_path = open_run(out, run, listing)

    mine = [s for s in shards if s[0] % world == rank]
    todo = [s for s in mine if not (out / shard_name(s[0])).is_file()]
    done_before = sum(b - a for k, a, b in shards if (out / shard_name(k)).is_file())
    bar = progress_bar(total=n, initial=min(done_before, n), desc=f"sampling {run['model']} [{impl.name}]",
                       unit="img", progress=progress and rank == 0)
    state_dtype = pipe._state_dtype()
    start, images, written = time.perf_counter(), 0, 0
    try:
        key = run_seed(seed)  # what generator=torch.Generator().manual_seed(seed) stands for
        for k, lo, hi in todo:
            parts = []
            for b0 in range(lo, hi, batch_size):
                idx = list(range(b0, min(b0 + batch_size, hi)))
                noise = CounterNoise(idx, shape, seed=key, device=pipe.device, dtype=state_dtype)
                batch_options = {**options, **{k: v[idx[0]:idx[-1] + 1] for k, v in per_sample.items()}}
                x = pipe.sample(len(idx), steps=steps, sampler=_WithNoise(impl, noise), noise=noise.draw(),
                                progress=False, **batch_options)
                parts.append(to_uint8(x))
                bar.update(min(len(idx) * world, n - bar.n))
            buffer = io.BytesIO()
            np.savez(buffer, arr_0=np.concatenate(parts), indices=np.arange(lo, hi, dtype=np.int64))
            atomic_write(out / shard_name(k), buffer.getvalue())
            images, written = images + hi - lo, written + 1
            if stop_after_shards is not None and written >= stop_after_shards:
                break
    finally:
        bar.close()
    total = finish_run(images, stopped=stop_after_shards is not None, manifest=manifest_path, run=run, listing=listing)
    return SampleRun(images, written, len(mine) - len(todo), time.perf_counter() - start, manifest_path, total)


def finish_run(images: int, *, stopped: bool, manifest: Path, run: dict[str, Any], listing: Any) -> int:
    """End a rank's part of a sharded run: the images of all ranks (this rank's alone when it ``stopped`` early,
    for a test of resumption), and, on rank 0 once every rank is done, the final manifest."""
    if stopped:
        return images
    total = sum_over_ranks(images)  # also the barrier before the manifest says complete
    if rank_and_world()[0] == 0:
        write_manifest(manifest, run, listing)
    return total


def _recorded(value: Any, per_sample: bool) -> Any:
    """An option as the manifest records it: plain values as they are; per-sample values by their digest."""
    if per_sample:
        values = [v.item() if hasattr(v, "item") else v for v in value]
        return f"per sample ({len(values)} values, sha256 {hashlib.sha256(repr(values).encode()).hexdigest()[:16]})"
    return value if isinstance(value, (int, float, str, bool, type(None))) else repr(value)


def sum_over_ranks(value: int) -> int:
    """``value`` summed over the process group (``value`` itself without one); every rank must call it."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return value
    t = torch.tensor([value], dtype=torch.int64, device="cuda" if dist.get_backend() == "nccl" else "cpu")
    dist.all_reduce(t)
    return int(t.item())


def open_run(out: Path, run: dict[str, Any], listing: list[dict[str, Any]]) -> Path:
    """Start, or resume, a sharded run in ``out`` (``zoo sample --out``, ``zoo embed --out DIR``); every rank
    calls it. Rank 0 creates the folder, refuses a manifest there with other settings (naming those that
    differ; ``zoo_version`` may), deletes what a killed run was writing (``.*.tmp``: never a shard) and writes
    the manifest; its verdict reaches every rank, so a refusal stops them all instead of leaving them waiting.

    Args:
        run: the settings the manifest records (compared key by key with an existing manifest's).
        listing: the shard list, ``{"file": ..., "start": ..., "stop": ...}`` per shard, in order.
    Returns:
        the manifest's path.
    """
    rank, _ = rank_and_world()
    path, problem = out / MANIFEST, None
    if rank == 0:
        try:
            old = json.loads(path.read_text()) if path.is_file() else {}
            differ = sorted(k for k in run if k != "zoo_version" and old and old.get(k) != run[k])
            if differ:
                problem = (f"{str(out)!r} holds a run with other settings ({', '.join(differ)} differ: "
                           f"{ {k: old.get(k) for k in differ} } vs { {k: run[k] for k in differ} }); "
                           f"use another --out, or delete the folder to start over")
            else:
                out.mkdir(parents=True, exist_ok=True)
                for stale in out.glob(".*.tmp"):
                    stale.unlink()
                write_manifest(path, run, listing)
        except (OSError, ValueError) as exc:  # a folder that cannot be written, a damaged manifest
            problem = f"cannot start a run in {str(out)!r}: {exc}"
    problem = _from_rank_zero(problem)  # also the barrier: no rank looks for the manifest before it exists
    if problem is not None:
        raise InvalidInputError(problem)
    if rank != 0 and not path.is_file():
        raise InvalidInputError(f"rank {rank} cannot see {str(path)!r}: every rank must share out_dir")
    return path


def _from_rank_zero(value: Any) -> Any:
    """Rank 0's ``value`` on every rank (``value`` itself without a process group)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def write_manifest(path: Path, run: dict[str, Any], listing: list[dict[str, Any]]) -> None:
    """``run`` + the shard ``listing`` + ``complete`` (whether every listed shard exists beside ``path``),
    written atomically."""
    complete = all((path.parent / s["file"]).is_file() for s in listing)
    atomic_write(path, (json.dumps({**run, "complete": complete, "shards": listing}, indent=1) + "\n").encode())


def read_samples(path: str | os.PathLike) -> np.ndarray:
    """All images of a finished sample folder (or one shard), uint8 ``(N, H, W, C)`` in index order."""
    path = Path(path)
    if path.is_file():
        with np.load(path) as f:
            return f["arr_0"]
    manifest = json.loads((path / MANIFEST).read_text())
    if not manifest.get("complete"):
        missing = [s["file"] for s in manifest["shards"] if not (path / s["file"]).is_file()]
        raise InvalidInputError(f"{str(path)!r} is an unfinished run ({len(missing)} of {len(manifest['shards'])} "
                                f"shards missing, e.g. {missing[0]}): run the same sampling command again to finish it")
    arrays = []
    for s in manifest["shards"]:
        with np.load(path / s["file"]) as f:
            arrays.append(f["arr_0"])
    return np.concatenate(arrays)
