"""``zoo bench NAME``: how fast a registered model runs, measured the same way for every family.

What is timed follows the model's contract, not its family (the core knows none by name):

=============  =====================================================  =========================
contract       one run                                                model calls per run
=============  =====================================================  =========================
Pipeline       ``sample(batch, steps=, noise=)``                      denoiser calls (``last_nfe``)
Encoder        ``encode(x)`` of a preprocessed batch                  1
TextEncoder    ``encode_text(ids)`` of a batch of token ids           1
Detector       ``forward`` of a preprocessed batch                    1
Flow           ``sample(batch)``                                      1
Autoencoder    ``decode(encode(x))`` of a preprocessed batch          2
=============  =====================================================  =========================

``--end-to-end`` adds the preprocessing of raw images to each run (a detector then runs ``detect``: its
preprocessing, the checkpoint's PIL pipeline on the CPU, the network and the boxes).

For each run the report gives the throughput (items per second), the latency per model call (a pipeline's run
divided by its denoiser calls), the median and interquartile range over the timed repetitions (after warm-up), the
floating-point work of one run counted by :class:`torch.utils.flop_counter.FlopCounterMode` on the real forward
(matmuls, convolutions and attention: what the tensor cores do), the achieved TFLOP/s and its fraction of the
device's peak (:func:`device_peak`: the vendor's dense figure for known GPUs, on a CPU the best GEMM of the kernels
torch offers), and the peak memory (``torch.cuda.max_memory_allocated`` on a GPU; on a CPU how far the process's
resident memory rises during a run: :func:`run_memory`).

Reference libraries come from the plugin: an entry's ``reference`` (see :class:`zoo.registry.ModelEntry`) builds
the library's model on the same weights and returns what to time, so the ratio ``zoo / reference`` is measured in
one process, the runs alternating so that load from other processes hits both alike.

    zoo bench ddim-cifar --random-weights --batch 8 --steps 50 --threads 2
    zoo bench clip-vit-b32 --device cuda --dtype bf16 --batch 1024 --json
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import platform
import resource
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Hashable, Mapping, Sequence, TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor

from zoo.registry import Autoencoder, Detector, Encoder, Flow, Pipeline, TextEncoder
from zoo.registry.errors import InvalidInputError, ZooError
from zoo.registry.lazy import resolve

K = TypeVar("K", bound=Hashable)

# -- what one run is ---------------------------------------------------------------------------------------------


@dataclass
class BenchInputs:
    """What a benchmark runs on, handed to an entry's ``reference`` so the library gets the same work.

    ``x`` is the model input zoo's run consumes: the starting noise ``(batch, C, H, W)`` of a pipeline, the
    preprocessed batch ``(batch, 3, H, W)`` of an encoder or autoencoder, token ids ``(batch, L)`` of a text encoder;
    ``images`` the raw uint8 images ``[(3, H, W), ...]`` a detector's run starts from.
    """

    batch: int
    device: torch.device
    dtype: torch.dtype
    steps: int | None = None
    compile: bool = False
    #: ``torch.compile`` mode with ``compile`` (None: the default mode; ``"reduce-overhead"``: CUDA graphs).
    compile_mode: str | None = None
    x: Tensor | None = None
    images: list[Tensor] | None = None
    #: the dtype the reference runs in (default: ``dtype``), e.g. fp16 for a library without bf16 kernels.
    reference_dtype: torch.dtype | None = None

    @property
    def ref_dtype(self) -> torch.dtype:
        return self.reference_dtype or self.dtype


@dataclass
class Workload:
    """One benchmarked run: ``run()`` does it; ``items`` are the images or samples it yields; ``calls`` the model
    calls it makes (known after a run for adaptive samplers: then a function of the model)."""

    what: str
    run: Callable[[], Any]
    items: int
    unit: str
    calls: Callable[[], int] = lambda: 1


def _size(model: Any, size: tuple[int, int] | None, default: tuple[int, int]) -> tuple[int, int]:
    if size is not None:
        return size
    own = getattr(model, "image_size", None)
    if isinstance(own, int):
        return (own, own)
    return tuple(own) if isinstance(own, (tuple, list)) and len(own) == 2 else default


def workload(model: Any, inputs: BenchInputs, *, size: tuple[int, int] | None = None, text: bool = False,
             end_to_end: bool = False) -> Workload:
    """The run that the model's contract defines (see the module docstring); fills ``inputs.x`` / ``images``.

    ``text=True`` benchmarks the text side of an image-text model; ``size`` the image size for models that do not
    state one (detectors: 800x1200; autoencoders: 256x256); ``end_to_end`` includes the preprocessing of raw images
    (for a detector: ``detect``, whose preprocessing is the checkpoint's PIL pipeline, on the CPU).
    """
    import inspect

    n, gen = inputs.batch, torch.Generator().manual_seed(0)
    if isinstance(model, Pipeline):
        shape = getattr(model, "sample_shape", None)
        params = inspect.signature(model.sample).parameters
        options: dict[str, Any] = {}
        if "progress" in params:
            options["progress"] = False
        if inputs.steps is not None:
            if "steps" not in params:
                raise InvalidInputError(f"{type(model).__name__}.sample takes no steps=; drop --steps")
            options["steps"] = inputs.steps
        if shape is not None and "noise" in params:
            inputs.x = torch.randn((n, *shape), generator=gen).to(inputs.device)
            options["noise"] = inputs.x
        elif "generator" in params:
            options["generator"] = gen
        steps = inputs.steps if inputs.steps is not None else getattr(model, "default_steps", None)
        calls = lambda: getattr(model, "last_nfe", 0) or steps or 1  # noqa: E731
        return Workload("sample", lambda: model.sample(n, **options), n, "samples/s", calls)
    if isinstance(model, Flow):
        return Workload("sample", lambda: model.sample(n, generator=torch.Generator().manual_seed(0)), n, "samples/s")
    if isinstance(model, TextEncoder) and (text or not isinstance(model, Encoder)):
        inputs.x = _token_ids(model, n, gen)
        return Workload("encode_text", lambda: model.encode_text(inputs.x), n, "texts/s")
    if not isinstance(model, (Encoder, Detector, Autoencoder)):
        raise InvalidInputError(f"zoo bench times Pipeline, Encoder, TextEncoder, Detector, Flow and Autoencoder "
                                f"models; {type(model).__name__} implements none of them")
    default = (800, 1200) if isinstance(model, Detector) else (256, 256) if isinstance(model, Autoencoder) else None
    h, w = _size(model, size, default or (224, 224))
    if isinstance(model, Detector):
        inputs.images = [(torch.rand(3, h, w, generator=gen) * 255).to(torch.uint8) for _ in range(n)]
        if end_to_end:
            return Workload("detect", lambda: model.detect(inputs.images), n, "images/s")
        batch = model.preprocess(inputs.images)
        inputs.x = batch.pixels
        return Workload("forward", lambda: model(batch.pixels, batch.mask), n, "images/s")
    raw = torch.rand(n, 3, h, w, generator=gen)  # RGB in: preprocess makes the model's channels and size
    inputs.x = model.preprocess(raw)
    if isinstance(model, Autoencoder):
        if end_to_end:
            return Workload("preprocess+encode+decode", lambda: model.decode(model.encode(model.preprocess(raw))), n,
                            "images/s", lambda: 2)
        return Workload("encode+decode", lambda: model.decode(model.encode(inputs.x)), n, "images/s", lambda: 2)
    if end_to_end:
        return Workload("preprocess+encode", lambda: model.encode(model.preprocess(raw)), n, "images/s")
    return Workload("encode", lambda: model.encode(inputs.x), n, "images/s")


def _token_ids(model: TextEncoder, n: int, gen: torch.Generator) -> Tensor:
    """``(n, context_length)`` ids: the model's tokenizer on a caption when it has one (random weights have none),
    else random ids below the vocabulary size."""
    try:
        return model.token_ids(["a photo of a cat sitting on a wooden table"] * n)
    except (ZooError, AttributeError, TypeError):  # no tokenizer without files: random ids time the same
        vocab = model.vocab_size or 1000
        return torch.randint(1, vocab, (n, model.context_length), generator=gen).to(model.device)


# -- measuring ---------------------------------------------------------------------------------------------------


def count_flops(fn: Callable[[], Any]) -> int:
    """Floating-point operations of one call of ``fn``, counted on the real forward by ``FlopCounterMode`` (a
    multiply-add counts 2). Compiled code runs eagerly here (``set_stance("force_eager")``): the same math, and no
    compilation under the counting mode."""
    from torch.utils.flop_counter import FlopCounterMode

    # Nothing is compiled unless dynamo was imported (importing it only to say so costs seconds).
    eager = torch.compiler.set_stance("force_eager") if "torch._dynamo" in sys.modules else contextlib.nullcontext()
    counter = FlopCounterMode(display=False, custom_mapping=_extra_formulas())
    # Totals only: FlopCounterMode's per-module tracker hooks autograd on module inputs that require grad, which
    # fails for a parameter handed to a submodule under inference mode (DETR's queries).
    counter.mod_tracker = _GlobalOnly()
    with eager, counter:
        fn()
    return int(counter.get_total_flops())


class _GlobalOnly(contextlib.nullcontext):
    """A stand-in for FlopCounterMode's module tracker that files every count under "Global"."""

    parents = {"Global"}


def _extra_formulas() -> dict[Any, Callable[..., int]]:
    """Attention kernels FlopCounterMode has no formula for, which would otherwise count as nothing: the CPU flash
    kernel SDPA dispatches to (FlopCounterMode's own SDPA formula: two matmuls over the keys, causal masking not
    subtracted), and ``nn.MultiheadAttention``'s fused inference path (its projections too)."""
    from torch.utils.flop_counter import sdpa_flop_count

    def sdpa(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
        return sdpa_flop_count(query_shape, key_shape, value_shape)

    def native_mha(query_shape, key_shape, value_shape, embed_dim, num_heads, *args, out_shape=None, **kwargs) -> int:
        # nn.MultiheadAttention's inference fast path: q, k, v projections, attention, output projection in one op
        *batch, lq, e = query_shape
        b, lk = math.prod(batch), key_shape[-2]
        return 2 * b * lq * e * e + 2 * b * lk * e * 2 * e + 4 * b * lq * lk * e + 2 * b * lq * e * e

    names = ("_scaled_dot_product_flash_attention_for_cpu", "_scaled_dot_product_fused_attention_overrideable")
    formulas = {getattr(torch.ops.aten, name): sdpa for name in names if hasattr(torch.ops.aten, name)}
    return {**formulas, torch.ops.aten._native_multi_head_attention: native_mha}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _proc_status_kib(field: str) -> int | None:
    """A ``kB`` field of ``/proc/self/status`` (Linux), in KiB; None elsewhere."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(f"{field}:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _release_free_heap() -> None:
    """Hand memory that was freed back to the OS (glibc's ``malloc_trim``), so that a run's RSS growth is its own
    and not hidden by a heap an earlier run (another library's) left behind."""
    from .fast import glibc

    libc = glibc()
    if libc is not None:
        libc.malloc_trim(0)


def _reset_rss_peak() -> bool:
    """Reset the kernel's RSS high-water mark (``VmHWM``) of this process (Linux >= 4.0); False where it cannot."""
    try:
        with open("/proc/self/clear_refs", "w") as clear:
            clear.write("5")
        return True
    except OSError:
        return False


def run_memory(fn: Callable[[], Any], device: torch.device) -> tuple[int, str]:
    """Run ``fn`` once; return its peak memory and what the figure is.

    CUDA: ``torch.cuda.max_memory_allocated`` over the run (weights included). CPU: how far the process's resident
    memory rose above what it held before the run: on Linux the RSS high-water mark, reset before the run, minus
    the RSS before it (freed heap returned to the OS first, so that what an earlier run left does not hide this
    run's growth); elsewhere the growth of ``getrusage``'s lifetime high-water mark (0 when the run stays under
    an earlier peak, e.g. that of loading the weights).
    """
    if device.type == "cuda":
        _sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        _sync(device)
        return torch.cuda.max_memory_allocated(device), "torch.cuda.max_memory_allocated (weights included)"
    _release_free_heap()
    before = _proc_status_kib("VmRSS")
    if before is not None and _reset_rss_peak():
        fn()
        peak = _proc_status_kib("VmHWM")
        kind = "peak RSS growth over the run (freed heap trimmed and VmHWM reset before it)"
        return max(peak - before, 0) * 1024, kind
    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    fn()
    grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    return grown * scale, "RSS high-water delta (getrusage: growth beyond the process's earlier peak)"


def timed(fn: Callable[[], Any], device: torch.device) -> float:
    _sync(device)
    start = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - start


def alternating_medians(fns: Mapping[K, Callable[[], Any]], device: torch.device, repeats: int) -> dict[K, float]:
    """Median seconds per call of each of ``fns``, timed in turn within each of ``repeats`` rounds, so that a shared
    machine's noise falls on all of them alike (the benchmarks' side-by-side tables). No warm-up: call each first."""
    times: dict[K, list[float]] = {key: [] for key in fns}
    for _ in range(repeats):
        for key, fn in fns.items():
            times[key].append(timed(fn, device))
    return {key: median_iqr(t)[0] for key, t in times.items()}


def median_iqr(times: Sequence[float]) -> tuple[float, float]:
    """Median and interquartile range (inclusive quartiles; 0 for a single time)."""
    if len(times) < 2:
        return float(times[0]), 0.0
    q1, _, q3 = statistics.quantiles(times, n=4, method="inclusive")
    return statistics.median(times), q3 - q1


# -- the device's peak -------------------------------------------------------------------------------------------

#: Dense (no sparsity) peak TFLOP/s by GPU, from the vendors' data sheets: tensor-core bf16/fp16, plain fp32 (no
#: TF32). Matched by substring of ``torch.cuda.get_device_name``, first match wins (so "H100 PCIe" before "H100").
GPU_PEAKS: tuple[tuple[str, str, dict[str, float]], ...] = (
    ("b200", "B200", {"bf16": 2250, "fp16": 2250, "fp32": 80}),
    ("h200", "H200 SXM", {"bf16": 989, "fp16": 989, "fp32": 67}),
    ("h100 pcie", "H100 PCIe", {"bf16": 756, "fp16": 756, "fp32": 51}),
    ("h100 nvl", "H100 NVL", {"bf16": 835, "fp16": 835, "fp32": 60}),
    ("h100", "H100 SXM", {"bf16": 989, "fp16": 989, "fp32": 67}),
    ("h800", "H800 SXM", {"bf16": 989, "fp16": 989, "fp32": 67}),
    ("a100", "A100", {"bf16": 312, "fp16": 312, "fp32": 19.5}),
    ("l40s", "L40S", {"bf16": 362, "fp16": 362, "fp32": 91.6}),
    ("l40", "L40", {"bf16": 181, "fp16": 181, "fp32": 90.5}),
    ("l4", "L4", {"bf16": 121, "fp16": 121, "fp32": 30.3}),
    ("a10g", "A10G", {"bf16": 70, "fp16": 70, "fp32": 31.2}),
    ("a10", "A10", {"bf16": 125, "fp16": 125, "fp32": 31.2}),
    ("rtx 4090", "RTX 4090", {"bf16": 165, "fp16": 165, "fp32": 82.6}),
    ("rtx 3090", "RTX 3090", {"bf16": 71, "fp16": 71, "fp32": 35.6}),
    ("v100", "V100", {"fp16": 125, "fp32": 15.7}),
    ("t4", "T4", {"fp16": 65, "fp32": 8.1}),
)
_DTYPE_KEYS = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32"}


def gemm_kernels(device: torch.device, dtype: torch.dtype) -> dict[str, Callable[[Tensor, Tensor], Tensor]]:
    """The matmul kernels this torch offers for ``dtype`` on ``device``, by name, each ``(x, weight) -> x @
    weight^T`` as a linear layer runs it: ``F.linear`` (MKL's GEMM for float32 on a CPU, cuBLAS on a GPU) and, for
    float32 on a CPU with oneDNN, oneDNN's matmul on the weight packed once (:func:`zoo.onednn.packed_linear`, what
    ``onednn=True`` runs). On the project's AMD EPYC the second is twice the first, so a peak taken from MKL
    alone put oneDNN-bound models at 195% of it."""
    kernels: dict[str, Callable[[Tensor, Tensor], Tensor]] = {"F.linear": F.linear}
    if device.type == "cpu" and dtype == torch.float32:
        from . import onednn

        if onednn.available():
            kernels["oneDNN packed"] = lambda x, weight: onednn.packed_linear(x, weight, None)
    return kernels


def gemm_probe(device: torch.device, dtype: torch.dtype, n: int = 2048, seconds: float = 1.0) -> float:
    """The best TFLOP/s of an ``n x n`` matmul in ``dtype`` over about ``seconds`` per kernel
    (:func:`gemm_kernels`): what this device reaches on the kernel that bounds every model here, with the threads
    torch uses now."""
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    best = math.inf
    for kernel in gemm_kernels(device, dtype).values():
        kernel(a, b)  # warm-up (and oneDNN's pack)
        spent = 0.0
        while spent < seconds:
            t = timed(lambda: kernel(a, b), device)
            best, spent = min(best, t), spent + t
    return 2 * n**3 / best / 1e12


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({platform.processor() or platform.machine()})"


def device_peak(device: torch.device, dtype: torch.dtype) -> tuple[float | None, str]:
    """``(peak TFLOP/s, where it comes from)``: the data-sheet figure for a known GPU, a GEMM probe on a CPU (and on
    an unknown GPU), None when neither applies (float64 on a GPU)."""
    key = _DTYPE_KEYS.get(dtype)
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device).lower()
        for pattern, label, peaks in GPU_PEAKS:
            if pattern in name and key in peaks:
                return float(peaks[key]), f"data sheet: {label} dense {key}"
    try:
        kernels = ", ".join(gemm_kernels(device, dtype))
        return gemm_probe(device, dtype), f"measured: best {dtype_name(dtype)} 2048x2048 GEMM on this device ({kernels})"
    except RuntimeError as exc:  # a dtype the device has no matmul for
        return None, f"unknown ({exc})"


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


# -- running a benchmark -----------------------------------------------------------------------------------------


@dataclass
class Result:
    """One library's figures for the same work."""

    library: str
    median_s: float
    iqr_s: float
    throughput: float
    unit: str
    calls: int
    latency_ms: float
    flops: int
    tflops: float
    peak_fraction: float | None
    memory_bytes: int
    memory_kind: str
    times_s: list[float] = field(default_factory=list)


def references(entry: Any, model: Any, inputs: BenchInputs) -> tuple[dict[str, Callable[[], Any]], dict[str, str]]:
    """The entry's reference runs ``{label: run}``, and ``{reference: why it is missing}`` for those that could not
    be built (the library is not installed). An entry's ``reference`` is a function or a tuple of them, each
    returning a callable or a ``{label: callable}`` dict."""
    found, missing = {}, {}
    given = getattr(entry, "reference", None)
    for ref in given if isinstance(given, (tuple, list)) else ((given,) if given is not None else ()):
        label = getattr(ref, "target", getattr(ref, "__name__", "reference"))
        try:
            runs = resolve(ref)(model, inputs)
        except ModuleNotFoundError as exc:
            missing[str(label)] = f"{exc.name or exc} is not installed"
            continue
        found.update(runs if isinstance(runs, dict) else {str(label): runs})
    return found, missing


def bench(name: str, *, weights: str | None = None, pretrained: bool = True, device: str | None = None,
          dtype: str | torch.dtype | None = None, batch: int = 8, steps: int | None = None,
          compile: bool | str = False, repeats: int | None = None, warmup: int = 1, reference: bool = True,
          reference_dtype: str | torch.dtype | None = None, size: tuple[int, int] | None = None,
          text: bool = False, end_to_end: bool = False, winograd: bool = False, onednn: bool = False,
          min_seconds: float = 10.0) -> dict[str, Any]:
    """Benchmark a registered model (and its reference libraries); returns the report ``zoo bench --json`` prints.

    ``repeats=None`` times as many runs as fit in about ``min_seconds`` per library, at least 5 and at most 50.
    ``compile``: True or a ``torch.compile`` mode (``"reduce-overhead"``: CUDA graphs), applied as
    ``zoo.create(compile=)`` does (:func:`zoo.fast.compile_regions`), after FLOPs are counted on the eager model.
    ``winograd``: zoo's model runs its convolutions as Winograd (``zoo.create(winograd=True)``); its FLOPs are still
    those of the direct convolutions (counted before the switch), the usual way to report a fast algorithm.
    ``onednn``: zoo's ``nn.Linear`` layers run oneDNN's matmul (``zoo.create(onednn=True)``); FLOPs are counted
    before the switch as well (the flop counter does not know oneDNN's op).
    """
    import zoo
    from zoo.api import _dtype

    from .fast import compile_option, compile_regions, freed_memory_retained

    if batch < 1 or (steps is not None and steps < 1) or (repeats is not None and repeats < 1) or warmup < 0:
        raise InvalidInputError("--batch, --steps and --repeats must be 1 or more, --warmup 0 or more")
    mode = compile_option(compile) if compile is not False else None  # a bad mode: refused before the model loads
    if winograd:
        from .winograd import refuse_with_compile

        refuse_with_compile(compile, "--winograd with --compile")
    entry = zoo.get_entry(name)
    model = zoo.create(name, weights=weights, pretrained=pretrained, device=device, dtype=dtype)
    inputs = BenchInputs(batch=batch, device=model.device, dtype=model.dtype, steps=steps,
                         compile=compile is not False, compile_mode=mode, reference_dtype=_dtype(reference_dtype))
    work = workload(model, inputs, size=size, text=text, end_to_end=end_to_end)
    runs: dict[str, Callable[[], Any]] = {"zoo": work.run}
    missing: dict[str, str] = {}
    with torch.inference_mode():
        if reference:
            found, missing = references(entry, model, inputs)
            runs.update(found)
        if inputs.compile:
            compile_regions(model, mode=mode)
        dev = inputs.device
        peak, peak_source = device_peak(dev, inputs.dtype)
        flops = {label: count_flops(fn) for label, fn in runs.items()}
        calls = work.calls()
        if winograd:
            from .winograd import winograd as use_winograd

            use_winograd(model, required="--winograd")
            work.run()  # its first run compiles the transforms: not the memory a run takes
        if onednn:
            from . import onednn as onednn_paths

            onednn_paths.onednn_linear(model, required="--onednn")
            work.run()  # its first run packs the weights (a second copy the model holds): not a run's memory
        memory = {label: run_memory(fn, dev) for label, fn in runs.items()}  # the 2nd run: caches are warm
        for _ in range(warmup + (1 if inputs.compile else 0)):  # compiled code: one more, the first call compiles
            for fn in runs.values():
                fn()
        times: dict[str, list[float]] = {label: [] for label in runs}
        if repeats is None:
            round_s = sum(timed(fn, dev) for fn in runs.values()) / len(runs)
            repeats = max(5, min(50, math.ceil(min_seconds / max(round_s, 1e-6))))
        for _ in range(repeats):  # alternate the libraries, so that load from other processes hits them alike
            for label, fn in runs.items():
                times[label].append(timed(fn, dev))
        if peak is not None and peak_source.startswith("measured"):  # probed again: the best of both counts
            peak, peak_source = max(peak, gemm_probe(dev, inputs.dtype)), f"{peak_source}, before and after the runs"
    results = []
    for label in runs:
        med, iqr = median_iqr(times[label])
        tflops = flops[label] / med / 1e12
        results.append(Result(  # a reference does the same work: the same number of model calls
            library=label, median_s=med, iqr_s=iqr, throughput=work.items / med, unit=work.unit, calls=calls,
            latency_ms=med / calls * 1e3, flops=flops[label], tflops=tflops,
            peak_fraction=tflops / peak if peak else None, memory_bytes=memory[label][0],
            memory_kind=memory[label][1], times_s=times[label]))
    zoo_s = results[0].median_s
    return {
        "model": name, "interface": entry.interface, "work": work.what,
        "settings": {"device": str(inputs.device), "device_name": device_name(inputs.device),
                     "dtype": dtype_name(inputs.dtype), "reference_dtype": dtype_name(inputs.ref_dtype),
                     "batch": batch, "steps": steps if steps is not None else getattr(model, "default_steps", None),
                     "compile": inputs.compile, "compile_mode": inputs.compile_mode, "end_to_end": end_to_end,
                     "winograd": winograd, "onednn": onednn, "freed_memory_retained": freed_memory_retained(),
                     "threads": torch.get_num_threads(), "torch": torch.__version__, "zoo": zoo.__version__,
                     "weights": weights or ("pretrained" if pretrained else "random"), "warmup": warmup,
                     "repeats": repeats,
                     "image_size": list(inputs.x.shape[-2:]) if inputs.x is not None and inputs.x.ndim == 4 else None},
        "peak_tflops": peak, "peak_source": peak_source,
        "results": [asdict(r) for r in results],
        "ratios": {r.library: r.median_s / zoo_s for r in results[1:]},
        "references_missing": missing,
    }


# -- printing ----------------------------------------------------------------------------------------------------


def _bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n}"


def format_report(report: dict[str, Any]) -> str:
    """The human-readable report: settings, then one column per library."""
    s = report["settings"]
    steps = f", {s['steps']} steps" if report["interface"] == "pipeline" and s["steps"] else ""
    compiled = f"compile={s['compile_mode'] or 'default'}" if s["compile"] else "eager"
    compiled += ", Winograd convolutions" if s.get("winograd") else ""
    compiled += ", oneDNN linear layers" if s.get("onednn") else ""
    compiled += ", freed memory retained" if s.get("freed_memory_retained") else ""
    lines = [f"zoo bench {report['model']}: {report['work']}, batch {s['batch']}{steps}, {s['weights']} weights",
             f"device {s['device_name']}, torch {s['torch']}, {s['threads']} threads, {s['dtype']}, {compiled}, "
             f"median of {s['repeats']} runs after {s['warmup']} warm-up",
             f"peak {report['peak_tflops'] or 0:.3g} TFLOP/s ({report['peak_source']})"]
    rows = [("", [r["library"] for r in report["results"]])]
    res = report["results"]
    rows += [
        (f"throughput ({res[0]['unit']})", [f"{r['throughput']:.4g}" for r in res]),
        ("run, median (IQR) s", [f"{r['median_s']:.4g} ({r['iqr_s']:.2g})" for r in res]),
        ("latency per model call", [f"{r['latency_ms']:.4g} ms x {r['calls']}" for r in res]),
        ("GFLOP per run", [f"{r['flops'] / 1e9:.4g}" for r in res]),
        ("achieved TFLOP/s (of peak)", [f"{r['tflops']:.3g} ({100 * r['peak_fraction']:.1f}%)"
                                        if r["peak_fraction"] is not None else f"{r['tflops']:.3g}" for r in res]),
        ("peak memory", [_bytes(r["memory_bytes"]) for r in res]),
        ("zoo / this (speed)", ["1"] + [f"{report['ratios'][r['library']]:.3f}x" for r in res[1:]]),
    ]
    width = max(len(label) for label, _ in rows)
    cols = [max(len(row[1][i]) for row in rows) for i in range(len(res))]
    for label, cells in rows:
        lines.append(f"{label:<{width}}  " + "  ".join(f"{c:>{w}}" for c, w in zip(cells, cols)))
    lines.append(f"memory: {res[0]['memory_kind']}")
    for ref, why in report["references_missing"].items():
        lines.append(f"reference {ref}: not run ({why})")
    return "\n".join(lines)


# -- the command -------------------------------------------------------------------------------------------------


def _size_arg(text: str) -> tuple[int, int]:
    try:
        h, _, w = text.lower().partition("x")
        size = (int(h), int(w or h))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give HxW (e.g. 800x1200) or one number for a square") from None
    if min(size) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: sizes are positive")
    return size


def arguments(parser: argparse.ArgumentParser) -> None:
    from zoo.cli import add_model_options, positive_int

    add_model_options(parser)
    parser.add_argument("--batch", type=positive_int, default=8, help="images or samples per run (default 8)")
    parser.add_argument("--steps", type=positive_int, help="sampler steps of a pipeline (default: the model's)")
    parser.add_argument("--compile", nargs="?", const="default", metavar="MODE",
                        help="regional torch.compile (zoo.create(compile=True)); MODE: e.g. reduce-overhead "
                             "(CUDA graphs)")
    parser.add_argument("--repeats", type=positive_int, help="timed runs (default: ~10 s worth, 5 to 50)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs first (default 1; +1 with --compile)")
    parser.add_argument("--random-weights", action="store_true",
                        help="random weights of the same architecture (pretrained=False: no download)")
    parser.add_argument("--no-reference", action="store_true", help="time zoo alone")
    parser.add_argument("--reference-dtype", help="the reference library's dtype (default: --dtype)")
    parser.add_argument("--size", type=_size_arg, metavar="HxW", help="image size, for models that state none "
                        "(detectors: 800x1200, autoencoders: 256)")
    parser.add_argument("--text", action="store_true", help="image-text models: time the text side (encode_text)")
    parser.add_argument("--end-to-end", action="store_true",
                        help="include preprocessing raw images (detectors: time detect, boxes included)")
    parser.add_argument("--winograd", action="store_true",
                        help="zoo's 3x3 convolutions as Winograd F(4x4, 3x3) (zoo.create(winograd=True))")
    parser.add_argument("--onednn", action="store_true",
                        help="zoo's nn.Linear layers through oneDNN's packed matmul (zoo.create(onednn=True))")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")


def run(args: argparse.Namespace) -> None:
    if args.random_weights and args.weights:
        raise InvalidInputError("--random-weights and --weights exclude each other")
    report = bench(args.name, weights=args.weights, pretrained=not args.random_weights, device=args.device,
                   dtype=args.dtype, batch=args.batch, steps=args.steps,
                   compile=args.compile or False, repeats=args.repeats, warmup=args.warmup,
                   reference=not args.no_reference, reference_dtype=args.reference_dtype, size=args.size,
                   text=args.text, end_to_end=args.end_to_end, winograd=args.winograd,
                   onednn=args.onednn)
    print(json.dumps(report, indent=2) if args.json else format_report(report))
