"""The four contracts every zoo model family implements: Encoder, Denoiser, Sampler and Detector.

Each states its tensor contract (shapes, dtypes, value ranges) so that code written against the contract, a
sampler or a zero-shot routine, works with every family without knowing which one it holds.

Conventions used throughout:

* images enter models as float tensors ``(N, C, H, W)``, normalised as the checkpoint expects (see each
  entry's ``preprocessing``); images leave generators as float ``(N, C, H, W)`` in ``[0, 1]``;
* every tensor a model returns is on the model's device, in the model's dtype unless stated.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Callable, Literal, Protocol

import torch
from torch import Tensor, nn

from .schedules import NoiseSchedule

Prediction = Literal["eps", "v", "x0", "flow"]
PREDICTIONS: tuple[str, ...] = ("eps", "v", "x0", "flow")


def check_image_batch(x: Tensor, *, channels: int | None = None, size: tuple[int, int] | None = None,
                      what: str = "input", fix: str = "") -> None:
    """Raise a ValueError naming the problem when ``x`` is not a float ``(N, C, H, W)`` batch of the right size.

    ``fix`` is appended to every message (e.g. what the caller's ``preprocess`` returns).
    """
    tail = f"; {fix}" if fix else ""
    if not isinstance(x, Tensor):
        raise TypeError(f"{what} must be a torch.Tensor of shape (N, C, H, W), got {type(x).__name__}{tail}")
    if x.ndim != 4:
        hint = " (add a batch dimension with x[None])" if x.ndim == 3 else ""
        raise ValueError(f"{what} must have shape (N, C, H, W), got {tuple(x.shape)}{hint}{tail}")
    if not x.is_floating_point():
        raise TypeError(f"{what} must be a floating-point tensor, got {x.dtype} (convert with x.float() / 255){tail}")
    if channels is not None and x.shape[1] != channels:
        raise ValueError(f"{what} must have {channels} channels, got {x.shape[1]} (shape {tuple(x.shape)}){tail}")
    if size is not None and tuple(x.shape[-2:]) != tuple(size):
        raise ValueError(f"{what} must be {size[0]}x{size[1]} pixels, got {x.shape[-2]}x{x.shape[-1]}{tail}")


class Denoiser(nn.Module, ABC):
    """A network trained to undo Gaussian noise, with what it predicts and the schedule it was trained on.

    Subclasses set ``prediction`` and ``schedule`` and implement :meth:`forward` in the model's own terms.
    Samplers never call ``forward``: they call :meth:`denoise`, EDM's ``D(x, sigma)``, which turns any
    parameterisation into the same thing, an estimate of clean data, in the schedule's sampling space.

    ``prediction`` says what ``forward`` returns for a model input ``x_t = alpha_t*x0 + sigma_t*eps``:

    * ``"eps"``: the noise ``eps`` (DDPM);
    * ``"v"``: ``alpha_t*eps - sigma_t*x0`` (Salimans & Ho 2022);
    * ``"x0"``: the clean sample itself;
    * ``"flow"``: the velocity ``eps - x0`` of rectified flow (requires a flow schedule).
    """

    prediction: Prediction
    schedule: NoiseSchedule

    @abstractmethod
    def forward(self, x_t: Tensor, t: Tensor, **cond: Any) -> Tensor:
        """The raw network output.

        Args:
            x_t: ``(N, C, H, W)`` noisy input in the model's own scaling, the model's dtype.
            t: ``(N,)`` the model's time variable (``schedule.sigma_to_t``), float.
            **cond: conditioning (class labels, text embeddings, ...), each with leading dimension N.
        Returns:
            ``(N, C, H, W)``, the quantity named by ``prediction``.
        """

    def denoise(self, x: Tensor, sigma: Tensor, **cond: Any) -> Tensor:
        """``D(x, sigma)``: the model's estimate of x0 for a sampling-space point ``x`` at noise level sigma.

        Args:
            x: ``(N, C, H, W)`` in sampling space (``x = a(sigma)*x0 + sigma*eps``, see ``registry.schedules``).
            sigma: ``(N,)`` or a scalar tensor, > 0.
        Returns:
            ``(N, C, H, W)`` estimate of x0, in x's dtype.
        """
        sigma = torch.as_tensor(sigma, device=x.device, dtype=torch.float64).expand(x.shape[0])
        c_in = self.schedule.input_scale(sigma)
        alpha_t = c_in * self.schedule.signal_scale(sigma)  # model-space coefficients of x0 and eps
        sigma_t = c_in * sigma
        dtype = self.model_dtype
        x_t = x.to(torch.float64) * _col(c_in)
        out = self(x_t.to(dtype), self.schedule.sigma_to_t(sigma).to(torch.float32), **cond).to(torch.float64)
        if self.prediction == "eps":
            x0 = (x_t - _col(sigma_t) * out) / _col(alpha_t)
        elif self.prediction == "x0":
            x0 = out
        elif self.prediction == "v":
            x0 = (_col(alpha_t) * x_t - _col(sigma_t) * out) / _col(alpha_t**2 + sigma_t**2)
        elif self.prediction == "flow":
            x0 = x_t - _col(sigma_t) * out
        else:
            raise ValueError(f"{type(self).__name__}.prediction must be one of {PREDICTIONS}, got {self.prediction!r}")
        return x0.to(x.dtype)

    @property
    def model_dtype(self) -> torch.dtype:
        p = next(self.parameters(), None)
        return p.dtype if p is not None else torch.float32


def _col(v: Tensor) -> Tensor:
    """(N,) -> (N, 1, 1, 1), to broadcast a per-sample scalar over an image batch."""
    return v.reshape(-1, 1, 1, 1)


DenoiseFn = Callable[[Tensor, Tensor], Tensor]
"""``D(x, sigma) -> x0`` over sampling space: what a sampler calls. Conditioning and guidance are bound in."""


@dataclass
class StepInfo:
    """What a sampler reports to a ``callback`` after each step.

    ``step``: 0-based step index; ``sigma``: the noise level the step started from; ``x``: the sample after the
    step, at ``sigma_next``; ``denoised``: the step's estimate of x0 (``D`` at the step's start on a fixed grid;
    at its end for ``ode-rk45``, whose last stage is evaluated there). Samplers on a fixed grid may leave
    ``sigma_next`` as None, meaning ``sigmas[step + 1]``; adaptive ones set it, since their steps are their own.
    """

    step: int
    sigma: float
    x: Tensor
    denoised: Tensor
    sigma_next: float | None = None


class NoiseSampler(Protocol):
    def __call__(self, sigma: Tensor, sigma_next: Tensor) -> Tensor:
        """Fresh standard-normal noise shaped like the sample, for a stochastic step from sigma to sigma_next."""


class Sampler(ABC):
    """A numerical method that takes a sample from ``sigmas[0]`` down to ``sigmas[-1]`` through ``D``.

    Samplers are schedule-agnostic: they see only ``D(x, sigma)``, the sigma grid, and the signal scale
    ``a(sigma)`` of the sampling space (1 for VE, ``1 - sigma`` for flow; only stochastic and multistep
    methods need it). ``x`` starts as ``noise * schedule.prior_scale(sigmas[0])``.

    Sigmas may also ascend (``DiffusionPipeline.invert``): deterministic methods then run the same ODE
    backwards. A stochastic method reached with ``noise_sampler=None`` through :class:`FunctionSampler` gets
    ``torch.randn_like`` noise; ``invert`` instead passes a noise sampler that refuses, so a sampler that would
    inject noise (DDPM, Euler ancestral, DDIM with eta > 0) cannot be used to invert.
    """

    #: the name users pass as ``sampler=`` (lowercase, dashes).
    name: str
    #: True when the method injects fresh noise (ancestral); those take a ``noise_sampler``.
    stochastic: bool = False

    @abstractmethod
    def __call__(self, denoise: DenoiseFn, x: Tensor, sigmas: Tensor, *,
                 signal_scale: Callable[[Tensor], Tensor],
                 noise_sampler: NoiseSampler | None = None,
                 callback: Callable[[StepInfo], None] | None = None,
                 **options: Any) -> Tensor:
        """Run the method.

        Args:
            denoise: ``D(x, sigma)``; x ``(N, C, H, W)``, sigma a 0-dim float64 tensor.
            x: ``(N, C, H, W)`` starting point at ``sigmas[0]``, float32 or float64.
            sigmas: ``(steps + 1,)`` float64, descending; the last entry is usually 0.
            signal_scale: ``a(sigma)`` of the sampling space.
            noise_sampler: fresh N(0, I) noise for stochastic steps.
            callback: called after every step with a :class:`StepInfo`; may raise any exception to end sampling
                (``DiffusionPipeline`` turns the user's StopIteration into an early return).
        Returns:
            ``(N, C, H, W)``: the sample at ``sigmas[-1]``, in sampling space.
        """

    def describe(self) -> str:
        return (self.__doc__ or self.name).strip().splitlines()[0]


class Encoder(nn.Module, ABC):
    """Maps inputs (images, or text for multimodal models) to feature vectors.

    Images: float ``(N, 3, H, W)`` produced by :meth:`preprocess` (normalised with the checkpoint's mean and
    std, at ``image_size``). ``encode`` returns pooled features ``(N, D)``; families that can also return
    token features ``(N, L, D)`` or per-stage maps ``[(N, C_i, H_i, W_i), ...]`` do so on request.
    """

    #: (H, W) the encoder expects after preprocessing.
    image_size: tuple[int, int]

    @abstractmethod
    def preprocess(self, images: Any) -> Tensor:
        """PIL images, paths, uint8 ``(N, 3, H, W)`` / ``(H, W, 3)`` or float ``[0, 1]`` tensors -> model input."""

    @abstractmethod
    def encode(self, x: Tensor) -> Tensor:
        """``(N, 3, H, W)`` preprocessed images -> ``(N, D)`` pooled features, the model's dtype."""


@dataclass
class Detections:
    """Detections for one image, in absolute pixel coordinates of the image as given.

    boxes: ``(K, 4)`` float ``(x_min, y_min, x_max, y_max)``; scores: ``(K,)`` in [0, 1];
    labels: ``(K,)`` int64 class ids; names: the K label strings.
    """

    boxes: Tensor
    scores: Tensor
    labels: Tensor
    names: list[str]


class Detector(nn.Module, ABC):
    """Finds objects: images in, a :class:`Detections` per image out.

    The raw :meth:`forward` takes preprocessed ``(N, 3, H, W)`` float images (with an optional ``(N, H, W)``
    bool padding mask) and returns class logits ``(N, Q, classes + 1)`` and boxes ``(N, Q, 4)``
    as normalised ``(cx, cy, w, h)`` in [0, 1].
    """

    #: class id -> name, from the checkpoint's own config.
    id2label: dict[int, str]

    @abstractmethod
    def preprocess(self, images: Any) -> tuple[Tensor, Tensor]:
        """Images -> (pixel batch ``(N, 3, H, W)``, padding mask ``(N, H, W)`` bool, True on padding)."""

    @abstractmethod
    def detect(self, images: Any, threshold: float = 0.5) -> list[Detections]:
        """Preprocess, run, and post-process to boxes in the input images' pixel coordinates."""


class FunctionSampler(Sampler):
    """A Sampler made from a plain function (see :func:`sampler`)."""

    def __init__(self, fn: Callable[..., Tensor], name: str, stochastic: bool, options: tuple[str, ...]):
        self.fn, self.name, self.stochastic, self.options = fn, name, stochastic, options
        self.__doc__ = fn.__doc__

    def __call__(self, denoise, x, sigmas, *, signal_scale, noise_sampler=None, callback=None, **options):
        unknown = sorted(set(options) - set(self.options))
        if unknown:
            raise TypeError(f"sampler {self.name!r} takes no option {', '.join(map(repr, unknown))}; "
                            f"its options are {', '.join(self.options) or 'none'}")
        if self.stochastic and noise_sampler is None:
            noise_sampler = lambda sigma, sigma_next: torch.randn_like(x)  # noqa: E731
        kwargs = {"noise_sampler": noise_sampler} if self.stochastic else {}
        return self.fn(denoise, x, sigmas, signal_scale=signal_scale, callback=callback, **kwargs, **options)

    def __repr__(self) -> str:
        return f"<sampler {self.name!r}>"


def sampler(name: str, *, stochastic: bool = False, options: tuple[str, ...] = ()):
    """Decorator: turn ``fn(denoise, x, sigmas, *, signal_scale, callback, [noise_sampler], **options)`` into a Sampler.

    ``options`` names the keyword arguments users may pass through ``pipe.sample(..., **options)``.
    """
    def wrap(fn: Callable[..., Tensor]) -> FunctionSampler:
        return FunctionSampler(fn, name, stochastic, options)
    return wrap
