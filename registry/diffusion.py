"""The diffusion seam: a Denoiser states what it predicts and its schedule, a Sampler is a short function over
``D(x, sigma)``, and a Conditioner turns what a user says into the denoiser's conditioning.

Samplers see nothing but ``D``, the sigma grid and the sampling space's signal scale ``a(sigma)`` (see
``registry.schedules``), so every sampler drives every denoiser: eps, v, x0 and flow-velocity models alike.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Callable, Literal, Protocol

import torch
from torch import Tensor, nn

from .schedules import NoiseSchedule
from .tensors import per_sample
from .errors import ArgumentTypeError, InvalidInputError

Prediction = Literal["eps", "v", "x0", "flow"]
PREDICTIONS: tuple[str, ...] = ("eps", "v", "x0", "flow")


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
            t: ``(N,)`` the model's time variable (``schedule.sigma_to_t``), in :attr:`time_dtype`.
            **cond: conditioning (class labels, text embeddings, ...), each with leading dimension N.
        Returns:
            ``(N, C, H, W)``, the quantity named by ``prediction``.
        """

    def denoise(self, x: Tensor, sigma: Tensor, *, t: Tensor | None = None, **cond: Any) -> Tensor:
        """``D(x, sigma)``: the model's estimate of x0 for a sampling-space point ``x`` at noise level sigma.

        Args:
            x: ``(N, C, H, W)`` in sampling space (``x = a(sigma)*x0 + sigma*eps``, see ``registry.schedules``).
            sigma: ``(N,)`` or a scalar tensor, > 0.
            t: the model time to feed instead of ``schedule.sigma_to_t(sigma)`` (``(N,)`` or scalar): a
                :class:`SamplingPlan` that reproduces another library's timesteps sets it.
        Returns:
            ``(N, C, H, W)`` estimate of x0, in x's dtype.
        """
        sigma = torch.as_tensor(sigma, device=x.device, dtype=torch.float64).expand(x.shape[0])
        c_in = self.schedule.input_scale(sigma)
        alpha_t = per_sample(c_in * self.schedule.signal_scale(sigma), x)  # model-space coefficients
        sigma_t = per_sample(c_in * sigma, x)
        x_t = x.to(torch.float64) * per_sample(c_in, x)
        t = self.schedule.sigma_to_t(sigma) if t is None else torch.as_tensor(t, device=x.device).expand(x.shape[0])
        out = self(x_t.to(self.model_dtype), t.to(self.time_dtype), **cond).to(torch.float64)
        if self.prediction == "eps":
            x0 = (x_t - sigma_t * out) / alpha_t
        elif self.prediction == "x0":
            x0 = out
        elif self.prediction == "v":
            x0 = (alpha_t * x_t - sigma_t * out) / (alpha_t**2 + sigma_t**2)
        elif self.prediction == "flow":
            x0 = x_t - sigma_t * out
        else:
            raise InvalidInputError(f"{type(self).__name__}.prediction must be one of {PREDICTIONS}, got {self.prediction!r}")
        return x0.to(x.dtype)

    @property
    def model_dtype(self) -> torch.dtype:
        p = next(self.parameters(), None)
        return p.dtype if p is not None else torch.float32

    @property
    def time_dtype(self) -> torch.dtype:
        """The dtype ``t`` reaches :meth:`forward` in: float64 for a float64 model (a continuous-time model then
        sees sigma unrounded), float32 otherwise (what diffusers feeds its UNets). Override where a model wants
        another."""
        return torch.float64 if self.model_dtype == torch.float64 else torch.float32


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


def report_step(callback: Callable[[StepInfo], None] | None, step: int, sigma: Tensor | float, x: Tensor,
                denoised: Tensor, sigma_next: float | None = None) -> None:
    """Hand the pipeline's callback a :class:`StepInfo` (progress bars, previews, early stopping).

    Every sampler calls it after every step; a callback may raise to end sampling there.
    """
    if callback is not None:
        callback(StepInfo(step, float(sigma), x, denoised, sigma_next))


def ode_slope(x: Tensor, denoised: Tensor, sigma: Tensor) -> Tensor:
    """``dx/dsigma = (x - D) / sigma``: the probability-flow ODE in both of zoo's sampling spaces (Karras et al.
    2022, eq. 3 with s(t) = 1; in the flow space it is rectified flow's velocity ``eps - x0``)."""
    return (x - denoised) / sigma


def implied_noise(x: Tensor, denoised: Tensor, sigma: Tensor, a: Tensor) -> Tensor:
    """The noise a denoised estimate implies: ``eps`` in ``x = a*x0 + sigma*eps`` (a = signal_scale(sigma))."""
    return (x - a * denoised) / sigma


class NoiseSampler(Protocol):
    def __call__(self, sigma: Tensor, sigma_next: Tensor) -> Tensor:
        """Fresh standard-normal noise shaped like the sample, for a stochastic step from sigma to sigma_next."""


@dataclass
class SamplingPlan:
    """How a sampler walks a model's schedule to reproduce another library's scheduler step for step.

    zoo's own grids (``NoiseSchedule.sigmas``) are the default; a plan replaces them where the other library
    means something else by the same words (``pipe.sample(..., compat="diffusers")``).

    * ``segments``: descending sigma grids walked in order, usually one. Between two segments the sample is
      carried over unchanged *in the model's own space* (``x_t`` kept, re-read at the next segment's first
      sigma): what a scheduler does when its step lands on one timestep and its next step starts from another
      (diffusers' DDIM with ``linspace`` spacing steps to ``t - T // N``, not to the next grid timestep).
    * ``timesteps``: per segment, the model time fed at each of its sigmas (fractional timesteps, say), or None
      for ``schedule.sigma_to_t``.
    * ``start_scale``: what the standard-normal noise is multiplied by at the first sigma (None:
      ``schedule.prior_scale``).
    * ``options``: sampler options the plan sets (a user's own options win).
    """

    segments: list[Tensor]
    timesteps: list[Tensor] | None = None
    start_scale: float | None = None
    options: dict[str, Any] = field(default_factory=dict)


PlanFn = Callable[[NoiseSchedule, int, "str | None", dict[str, Any]], SamplingPlan]
"""``(schedule, steps, spacing, scheduler_config) -> SamplingPlan``: a sampler's reproduction of another library."""


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
    #: True when the method can inject fresh noise (ancestral); those take a ``noise_sampler``.
    stochastic: bool = False
    #: the keyword options users may pass through ``pipe.sample(..., **options)``.
    options: tuple[str, ...] = ()
    #: how the method reproduces other libraries' schedulers: ``{"diffusers": plan_fn}`` (see :class:`SamplingPlan`).
    plans: dict[str, PlanFn] = {}
    #: True when each step is a function of that step's x and sigmas alone (no history as in multistep methods,
    #: no step-size control as in adaptive ones): ``DiffusionPipeline.invert`` then undoes the steps one by one,
    #: exactly (each solved by fixed-point iteration), so that sampling from the inverted noise returns the input.
    single_step: bool = False

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

    def check_options(self, options: dict[str, Any]) -> None:
        """Raise a TypeError naming any option the method does not take, with the list of those it does."""
        unknown = sorted(set(options) - set(self.options))
        if unknown:
            raise ArgumentTypeError(f"sampler {self.name!r} takes no option {', '.join(map(repr, unknown))}; "
                                    f"its options are {', '.join(self.options) or 'none'}")


class FunctionSampler(Sampler):
    """A Sampler made from a plain function (see :func:`sampler`)."""

    def __init__(self, fn: Callable[..., Tensor], name: str, stochastic: bool, options: tuple[str, ...],
                 plans: dict[str, PlanFn] | None = None, single_step: bool = False):
        self.fn, self.name, self.stochastic, self.options = fn, name, stochastic, tuple(options)
        self.single_step = single_step
        self.plans = dict(plans or {})
        self.__doc__ = fn.__doc__

    def __call__(self, denoise, x, sigmas, *, signal_scale, noise_sampler=None, callback=None, **options):
        self.check_options(options)
        if self.stochastic and noise_sampler is None:
            noise_sampler = lambda sigma, sigma_next: torch.randn_like(x)  # noqa: E731
        kwargs = {"noise_sampler": noise_sampler} if self.stochastic else {}
        return self.fn(denoise, x, sigmas, signal_scale=signal_scale, callback=callback, **kwargs, **options)

    def __repr__(self) -> str:
        return f"<sampler {self.name!r}>"


def sampler(name: str, *, stochastic: bool = False, options: tuple[str, ...] = (),
            plans: dict[str, PlanFn] | None = None, single_step: bool = False):
    """Decorator: turn ``fn(denoise, x, sigmas, *, signal_scale, callback, [noise_sampler], **options)`` into a Sampler.

    ``options`` names the keyword arguments users may pass through ``pipe.sample(..., **options)``; ``plans``
    maps a ``compat=`` name to the function that reproduces that library's scheduler (:class:`SamplingPlan`).
    """
    def wrap(fn: Callable[..., Tensor]) -> FunctionSampler:
        return FunctionSampler(fn, name, stochastic, options, plans, single_step)
    return wrap


class Conditioner(nn.Module, ABC):
    """Turns what a user says (class labels, prompts) into a denoiser's conditioning, for both guidance branches.

    A pipeline holding a conditioner takes the keyword arguments named in :attr:`inputs` in ``sample`` and
    ``invert`` (``labels=``, ``prompt=``, ``negative_prompt=``...) and hands them to it; what it returns is
    passed to ``Denoiser.forward`` as ``**cond`` (and ``**uncond`` for the unconditional branch of
    classifier-free guidance). It is a module so that its encoders move with the pipeline.
    """

    #: the keyword arguments of ``sample`` it reads.
    inputs: tuple[str, ...]

    @abstractmethod
    def forward(self, n: int, **inputs: Any) -> tuple[dict[str, Any], dict[str, Any] | None]:
        """``n`` samples' worth of conditioning: ``(cond, uncond)``.

        Each dict maps the denoiser's conditioning arguments to tensors with leading dimension ``n`` (or 1, to
        broadcast); ``uncond`` is None when the model has no unconditional branch.
        """
