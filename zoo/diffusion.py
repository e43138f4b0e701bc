"""A diffusion pipeline: any Denoiser, any Sampler, an optional autoencoder and conditioner, images out.

The pipeline owns what is not the sampler's business: drawing the noise (per sample, :mod:`zoo.noise`, so a seed
gives the same images whatever the batch size), choosing the sigma grid, binding conditioning and guidance into
``D(x, sigma)``, counting model evaluations, progress bars, early stopping, and mapping the result back to
images in [0, 1].

Two slots make the same pipeline serve pixel, latent and conditional models:

* ``autoencoder`` (a ``zoo.registry.Autoencoder``): the space the denoiser works in. ``sample`` decodes its
  result at the end (DiT's last step), ``invert`` encodes the images at the start. The default,
  :class:`PixelSpace`, is the identity between images in [0, 1] and the denoiser's [-1, 1] pixels.
* ``conditioner`` (a ``zoo.registry.Conditioner``): what the user says (``labels=``, ``prompt=``...) ->
  the denoiser's ``cond`` and ``uncond`` for classifier-free guidance.

Nothing here names a sampler: the default sampler (and the one ``invert`` uses) come from the model's entry,
and which samplers can invert is what the registry's samplers declare (``Sampler.stochastic``).

Guidance is an edit of D
------------------------
A sampler sees nothing but ``D(x, sigma)``. In sampling space, ``x = a*x0 + sigma*eps`` (``a = a(sigma)``, see
``zoo.registry.schedules``), Tweedie's formula ties D to the score of the noisy marginal ``p_sigma``:

    a * D(x, sigma) = x + sigma**2 * grad_x log p_sigma(x)      <=>      score(x) = (a*D - x) / sigma**2

so any guidance written on scores is the same edit of D, and every sampler gets it for free:

* classifier-free guidance (Ho & Salimans 2022), ``score_u + w*(score_c - score_u)``: since the weights sum
  to 1, x cancels and ``D = D_u + w*(D_c - D_u)``, with w = ``guidance_scale`` (1: plain conditional; 0:
  unconditional). Both branches run as ONE forward pass on a 2N batch (``cond`` and ``uncond`` stacked).
  ``guided_channels=k`` guides only the first k channels and keeps the conditional D on the rest: D is
  channel-wise affine in the network's output, so this is the same edit as DiT's original ``forward_with_cfg``
  on eps (its paper's FID protocol guides 3 of 4 latent channels).
* classifier guidance (Dhariwal & Nichol 2021), ``score + lam * grad_x log p(y | x)``: ``D += lam * sigma**2 /
  a * grad_x log p(y | x)``, lam = ``classifier_scale``. Noisy classifiers are trained on the model's own input
  ``x_t = c*x`` (c = ``schedule.input_scale(sigma)``) and time t, so ``classifier_grad(x_t, t)`` returns
  ``grad_{x_t} log p(y | x_t)`` and the chain rule gives ``grad_x = c * grad_{x_t}``. For an eps model this is
  exactly guided diffusion's ``eps - sqrt(1 - abar) * grad``.

Model evaluations
-----------------
``pipe.last_nfe`` is the number of calls of D made by the latest ``sample``/``invert``: every sampler is counted
by the same wrapper, so the numbers compare across samplers. A guided call counts once (one batched forward).
"""
from __future__ import annotations

import itertools
import math
import os
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor

from zoo.registry import (Autoencoder, Conditioner, DenoiseFn, Denoiser, Pipeline, Sampler, SamplingPlan, StepInfo,
                          check_image_batch, per_sample)
from zoo.registry.errors import ArgumentTypeError, InvalidInputError, NonFiniteError

from .noise import CounterNoise, run_seed

Callback = Callable[[StepInfo], None]
ClassifierGrad = Callable[[Tensor, Tensor], Tensor]
"""``(x_t, t) -> grad_{x_t} log p(y | x_t)``: x_t ``(N, C, H, W)`` in the model's space with requires_grad set,
t ``(N,)`` the model's time variable; bind the labels y in with a closure."""


class PixelSpace(Autoencoder):
    """The identity autoencoder of pixel-space models: images in [0, 1] <-> the denoiser's ``[-1, 1]`` pixels.

    What a :class:`DiffusionPipeline` uses when it is given no autoencoder (DDPM, DDIM).
    """

    downscale = 1

    def __init__(self, sample_shape: tuple[int, int, int]):
        super().__init__()
        self.sample_shape = tuple(sample_shape)
        self.latent_channels = self.sample_shape[0]

    def preprocess(self, images: Tensor) -> Tensor:
        """Float ``(N, C, H, W)`` images in [0, 1] -> ``(N, C, H, W)`` in [-1, 1]."""
        check_image_batch(images, channels=self.sample_shape[0], size=self.sample_shape[1:], what="images")
        if images.min() < 0 or images.max() > 1:
            raise InvalidInputError(f"images must be in [0, 1] (got [{float(images.min()):.3g}, {float(images.max()):.3g}]); "
                                    f"divide uint8 pixels by 255, or pass input='raw' for model-space tensors in [-1, 1]")
        return images * 2 - 1

    def encode(self, x: Tensor) -> Tensor:
        return x

    def decode(self, z: Tensor) -> Tensor:
        return ((z.float() + 1) / 2).clamp(0, 1)


class _EarlyStop(Exception):
    """The user's callback raised StopIteration; carries the step it stopped after."""

    def __init__(self, info: StepInfo):
        self.info = info


def _check_finite(x: Tensor, what: str) -> None:
    if not isinstance(x, Tensor):
        raise ArgumentTypeError(f"{what} must be a tensor, got {type(x).__name__}")
    if not (x.is_floating_point() or x.dtype == torch.uint8):
        raise InvalidInputError(f"{what} must be a float tensor, got {x.dtype}")
    if x.numel() == 0:
        raise InvalidInputError(f"{what} is empty (shape {tuple(x.shape)})")
    if x.is_floating_point() and not bool(torch.isfinite(x).all()):
        raise InvalidInputError(f"{what} holds NaN or Inf ({int((~torch.isfinite(x)).sum())} of {x.numel()} values)")


def _check_mode(what: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise InvalidInputError(f"{what}={value!r}: use {' or '.join(map(repr, allowed))}")


def _checked_grid(sigmas: Tensor) -> Tensor:
    """A user's sigma grid: 1-D, at least two values, strictly descending, finite, ending at >= 0."""
    sigmas = torch.as_tensor(sigmas).to(torch.float64)
    if sigmas.ndim != 1 or len(sigmas) < 2:
        raise InvalidInputError(f"a sigma grid must be a 1-D tensor of at least 2 values, got shape {tuple(sigmas.shape)}")
    if not bool(torch.isfinite(sigmas).all()) or sigmas[-1] < 0 or not bool((sigmas[1:] < sigmas[:-1]).all()):
        raise InvalidInputError(f"a sigma grid must be finite, strictly descending and end at 0 or above, got "
                                f"{sigmas.tolist()}")
    return sigmas


def _stack_branches(cond: dict[str, Any], uncond: dict[str, Any]) -> dict[str, Any]:
    """Conditional and unconditional inputs as one 2N batch: tensors concatenated (cond first) along dim 0."""
    if set(cond) != set(uncond):
        raise InvalidInputError(f"cond and uncond must name the same inputs, got {sorted(cond)} and {sorted(uncond)}")
    both = {}
    for key, c in cond.items():
        u = uncond[key]
        if isinstance(c, Tensor):
            u = torch.as_tensor(u, device=c.device, dtype=c.dtype)
            both[key] = torch.cat([c, u.expand(c.shape[0], *u.shape[1:]) if u.shape[0] == 1 else u])
        elif c == u:
            both[key] = c
        else:
            raise InvalidInputError(f"cond[{key!r}] differs between the branches but is not a tensor to batch")
    return both


def _deterministic_samplers() -> str:
    from zoo.api import get_registry

    names = sorted(n for n, s in get_registry().samplers.items() if not s.stochastic)
    return ", ".join(map(repr, names)) or "none is installed"


def _exactly_invertible(impl: Sampler, options: dict[str, Any]) -> bool:
    """Whether ``invert`` can undo ``impl``'s steps one by one: a single-step method that injects no noise and
    clips no x0 estimate (a clipped step maps many states to one, so its inverse is not unique: the fixed-point
    iteration then drifts to far-off states)."""
    return impl.single_step and not options.get("eta") and options.get("clip_denoised") is None


def _refuse_noise(sigma: Tensor, sigma_next: Tensor) -> Tensor:
    raise InvalidInputError(f"this sampler injects fresh noise with these settings and so cannot invert; use a "
                            f"deterministic one ({_deterministic_samplers()}), or settings that inject none (eta=0)")


class DiffusionPipeline(Pipeline):
    """Unconditional or conditional image generation from a :class:`Denoiser`, in pixel or latent space.

    Args:
        denoiser: the network, with its prediction type and schedule.
        sample_shape: ``(C, H, W)`` of one sample in the denoiser's space (latents for a latent model).
        autoencoder: the first stage: ``decode`` maps the final sample to images, ``encode`` images to the
            denoiser's space for :meth:`invert` (default :class:`PixelSpace`, the identity on [-1, 1] pixels).
        conditioner: turns ``sample``'s keyword arguments named in ``conditioner.inputs`` into ``cond`` and
            ``uncond``.
        sampler_defaults: per-sampler options taken from the checkpoint's scheduler config
            (``{"ddim": {"clip_denoised": 1.0}, "ddpm": {"variance": "fixed_large", ...}}``).
        scheduler_config: the checkpoint's scheduler config as published (what ``compat=`` plans read).
        default_sampler, default_steps: what ``sample`` and ``invert`` use when not told (the entry's choice; with
            none, ``sampler=`` is required).
        invert_sampler: what ``invert`` uses when the default sampler cannot be undone step by step (it is
            stochastic, multistep or adaptive): an ODE solver (see :attr:`invert_sampler`).

    After every ``sample``/``invert``, ``last_nfe`` holds the number of model evaluations it made.
    """

    def __init__(self, denoiser: Denoiser, sample_shape: tuple[int, int, int], *,
                 autoencoder: Autoencoder | None = None, conditioner: Conditioner | None = None,
                 sampler_defaults: dict[str, dict[str, Any]] | None = None,
                 scheduler_config: dict[str, Any] | None = None, default_sampler: str | None = None,
                 default_steps: int = 50, invert_sampler: str | None = None, name: str = ""):
        super().__init__()
        self.denoiser = denoiser
        self.sample_shape = tuple(sample_shape)
        self.autoencoder = autoencoder if autoencoder is not None else PixelSpace(self.sample_shape)
        self.conditioner = conditioner
        self.sampler_defaults = sampler_defaults or {}
        self.scheduler_config = dict(scheduler_config or {})
        self.default_sampler, self.default_steps = default_sampler, default_steps
        self.invert_fallback = invert_sampler
        self.name = name
        #: calls of D (model evaluations) made by the latest sample() or invert().
        self.last_nfe = 0

    @property
    def schedule(self):
        return self.denoiser.schedule

    @property
    def device(self) -> torch.device:
        tensor = next(itertools.chain(self.denoiser.parameters(), self.denoiser.buffers()), None)
        return tensor.device if tensor is not None else torch.device("cpu")

    @property
    def dtype(self) -> torch.dtype:
        return self.denoiser.model_dtype

    def sigmas(self, steps: int, schedule: str | Tensor | None = None, spacing: str | None = None,
               shift: float | None = None) -> Tensor:
        """The sigma grid, ``(steps + 1,)`` float64 descending.

        ``schedule``: None/"default" for the schedule's own grid (``spacing`` = leading | trailing | linspace for
        DDPM grids), ``"karras"`` for Karras et al.'s, ``"exponential"`` for uniform in log sigma (log-SNR, what
        DPM-Solver recommends for small images), or a tensor of sigmas. ``shift``: SD3's timestep shift for
        flow schedules, replacing the checkpoint's.
        """
        sched = self.schedule
        if shift is not None:
            if not hasattr(sched, "with_shift"):
                raise InvalidInputError(f"shift= is the flow-matching timestep shift; this model's schedule is "
                                        f"{type(sched).__name__}, not a flow schedule")
            sched = sched.with_shift(shift)
        if spacing is not None and schedule not in (None, "default"):
            raise InvalidInputError(f"spacing={spacing!r} chooses among the default grid's timesteps; it has no meaning "
                                    f"with schedule={schedule if isinstance(schedule, str) else 'a tensor'!r}")
        if isinstance(schedule, Tensor):
            return _checked_grid(schedule)
        if schedule in (None, "default"):
            return sched.sigmas(steps, spacing)
        if schedule in ("karras", "exponential"):
            return getattr(sched, schedule)(steps)
        raise InvalidInputError(f"unknown schedule {schedule!r}: use 'default', 'karras', 'exponential' or a tensor of sigmas")

    def save_pretrained(self, folder: str | os.PathLike) -> Path:
        """Write the pipeline in its entry's Hub layout with a model card (:func:`zoo.save_pretrained`): diffusers
        and zoo load the folder back."""
        from zoo.save import save_pretrained

        return save_pretrained(self, folder, name=self.name or None)

    def push_to_hub(self, repo_id: str, **kwargs: Any) -> str:
        """:meth:`save_pretrained` then upload (:func:`zoo.push_to_hub`); returns the commit URL."""
        from zoo.save import push_to_hub

        return push_to_hub(self, repo_id, name=self.name or None, **kwargs)

    def plan(self, impl: Sampler, steps: int, schedule: str | Tensor | None = None, spacing: str | None = None,
             shift: float | None = None, compat: str | None = None) -> SamplingPlan:
        """How ``impl`` walks this model: zoo's grid (:meth:`sigmas`), or with ``compat="diffusers"`` the
        sampler's reproduction of that library's scheduler on this model's scheduler config."""
        if compat is None:
            return SamplingPlan([self.sigmas(steps, schedule, spacing, shift)])
        if schedule not in (None, "default") or shift is not None:
            raise InvalidInputError(f"compat={compat!r} reproduces a scheduler's own timesteps for a spacing; "
                                    f"schedule= and shift= have no meaning with it")
        if compat not in impl.plans:
            from zoo.api import get_registry

            have = sorted(n for n, s in get_registry().samplers.items() if compat in s.plans)
            raise InvalidInputError(f"sampler {impl.name!r} has no compat={compat!r} plan; samplers that reproduce "
                                    f"{compat}: {', '.join(have) or 'none'}")
        return impl.plans[compat](self.schedule, steps, spacing, self.scheduler_config)

    @property
    def invert_sampler(self) -> str | None:
        """What :meth:`invert` uses when not told: the default sampler when it can be undone step by step (a
        deterministic single-step method such as DDIM: then ``sample(noise=invert(x))`` returns x with both
        defaults), else the entry's inversion sampler (an ODE solver: pass it to ``sample`` as well)."""
        from zoo.errors import UnknownModelError

        if self.default_sampler is not None:
            try:
                impl = self._resolve_sampler(self.default_sampler, None)
            except UnknownModelError:
                impl = None
            if impl is not None and _exactly_invertible(impl, self.sampler_defaults.get(impl.name, {})):
                return self.default_sampler
        return self.invert_fallback or self.default_sampler

    def _resolve_sampler(self, sampler: str | Sampler | None, default: str | None) -> Sampler:
        from zoo.api import get_sampler

        if sampler is None:
            sampler = default
        elif not isinstance(sampler, (str, Sampler)) or sampler == "":
            raise InvalidInputError(f"sampler={sampler!r}: give a name from zoo.list_samplers() or a Sampler "
                                    f"(None: the model's default, {default!r})")
        if sampler is None:
            raise InvalidInputError(f"{self.name or 'this pipeline'} has no default sampler: pass sampler= (see "
                                    f"zoo.list_samplers())")
        return get_sampler(sampler) if isinstance(sampler, str) else sampler

    def _state_dtype(self) -> torch.dtype:
        # The sampler's state stays in float32 for half-precision models; float64 models sample in float64.
        return torch.float64 if self.dtype == torch.float64 else torch.float32

    def _conditioning(self, n: int, cond: dict[str, Any] | None, uncond: dict[str, Any] | None,
                      options: dict[str, Any]) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
        """``cond``/``uncond`` as given, else from the conditioner's inputs (taken out of ``options``)."""
        if self.conditioner is None:
            return cond, uncond
        inputs = {k: options.pop(k) for k in self.conditioner.inputs if k in options}
        if cond is not None:
            if inputs:
                raise InvalidInputError(f"pass either cond= or {', '.join(f'{k}=' for k in inputs)}, not both")
            return cond, uncond
        c, u = self.conditioner(n, **inputs)
        on_device = lambda d: d if d is None else {  # noqa: E731
            k: v.to(self.device) if isinstance(v, Tensor) else v for k, v in d.items()}
        return on_device(c), uncond if uncond is not None else on_device(u)

    def denoise_fn(self, cond: dict[str, Any] | None = None, *, guidance_scale: float = 1.0,
                   uncond: dict[str, Any] | None = None, classifier_grad: ClassifierGrad | None = None,
                   classifier_scale: float = 1.0, guided_channels: int | None = None,
                   timesteps: dict[float, Tensor] | None = None) -> DenoiseFn:
        """``D(x, sigma)`` with conditioning and guidance bound in, as samplers want it (see the module docstring).

        Args:
            cond: the model's conditioning inputs (``class_labels=``, ``encoder_hidden_states=``...), leading dim N.
            guidance_scale: classifier-free guidance weight w; needs ``uncond``.
            uncond: the unconditional branch's inputs, same keys (leading dim N or 1).
            classifier_grad: ``(x_t, t) -> grad_{x_t} log p(y | x_t)`` in the model's space, for classifier guidance.
            classifier_scale: its weight.
            guided_channels: guide only the first k channels (None: all), see the module docstring.
            timesteps: the model time to feed at each sigma of the grid (a :class:`SamplingPlan`'s), by value.
        """
        cond, denoiser, schedule = cond or {}, self.denoiser, self.schedule
        channels = self.sample_shape[0]
        if isinstance(guidance_scale, bool) or not isinstance(guidance_scale, (int, float)) or \
                not math.isfinite(guidance_scale):
            raise InvalidInputError(f"guidance_scale must be a finite number (1: no guidance), got {guidance_scale!r}")
        if guided_channels is not None and (isinstance(guided_channels, bool) or not isinstance(guided_channels, int)
                                            or not 1 <= guided_channels <= channels):
            raise InvalidInputError(f"guided_channels must be a number of channels in 1..{channels} (None: all), "
                                    f"got {guided_channels!r}")

        def model_time(sigma: Tensor) -> Tensor:
            if timesteps is not None and float(sigma.reshape(-1)[0]) in timesteps:
                return timesteps[float(sigma.reshape(-1)[0])]
            return schedule.sigma_to_t(sigma)

        if guidance_scale != 1.0:
            if uncond is None:
                raise InvalidInputError("guidance_scale != 1 needs uncond=, the inputs of the unconditional branch "
                                        "(the null class label, the empty prompt's embeddings, ...)")
            both = _stack_branches(cond, uncond)

            def D(x: Tensor, sigma: Tensor) -> Tensor:
                sigma = torch.as_tensor(sigma, dtype=torch.float64, device=x.device)
                t = model_time(sigma)
                d_cond, d_uncond = denoiser.denoise(torch.cat([x, x]), sigma.expand(x.shape[0]).repeat(2),
                                                    t=t if t.ndim == 0 else t.repeat(2), **both).chunk(2)
                guided = d_uncond + guidance_scale * (d_cond - d_uncond)
                if guided_channels is None:
                    return guided
                return torch.cat([guided[:, :guided_channels], d_cond[:, guided_channels:]], dim=1)
        else:
            def D(x: Tensor, sigma: Tensor) -> Tensor:
                sigma = torch.as_tensor(sigma, dtype=torch.float64, device=x.device)
                return denoiser.denoise(x, sigma, t=model_time(sigma), **cond)
        if classifier_grad is None:
            return D

        def D_classifier(x: Tensor, sigma: Tensor) -> Tensor:
            sigma = torch.as_tensor(sigma, dtype=torch.float64, device=x.device).expand(x.shape[0])
            c, a = schedule.input_scale(sigma), schedule.signal_scale(sigma)
            # sample() runs under inference_mode; the classifier needs autograd, on a tensor made outside it.
            with torch.inference_mode(False), torch.enable_grad():
                x_t = (x * per_sample(c, x).to(x.dtype)).to(denoiser.model_dtype).requires_grad_()
                grad = classifier_grad(x_t, model_time(sigma).to(denoiser.time_dtype)).detach()
            # D += lam * sigma^2 / a * c * grad_{x_t}; at a = 0 (flow's sigma = 1) x carries no signal to guide.
            weight = torch.where(a > 0, sigma**2 * c / a.clamp_min(1e-12), torch.zeros_like(a))
            return D(x, sigma) + (classifier_scale * per_sample(weight, x) * grad.to(torch.float64)).to(x.dtype)
        return D_classifier

    @torch.inference_mode()
    def sample(self, n: int, *, steps: int | None = None, sampler: str | Sampler | None = None,
               noise: Tensor | None = None, generator: torch.Generator | None = None,
               schedule: str | Tensor | None = None, spacing: str | None = None, shift: float | None = None,
               compat: str | None = None, callback: Callback | None = None, progress: bool = True,
               output: str = "images", cond: dict[str, Any] | None = None, guidance_scale: float = 1.0,
               uncond: dict[str, Any] | None = None, classifier_grad: ClassifierGrad | None = None,
               classifier_scale: float = 1.0, guided_channels: int | None = None, **options: Any) -> Tensor:
        """Generate ``n`` samples.

        Args:
            n: batch size.
            steps: number of sampler steps (model evaluations per step depend on the sampler; ``last_nfe``
                reports them afterwards; ode-rk45 takes as many as its tolerances need).
            sampler: a name from ``zoo.list_samplers()`` or a Sampler instance (default: the entry's).
            noise: ``(n, C, H, W)`` standard-normal starting noise in the denoiser's space, the same for every
                sampler (the pipeline scales it to the grid's first sigma); drawn per sample from ``generator``
                if None.
            generator: seeds the starting noise and every stochastic step's noise, per sample: one draw from it
                is the run seed ``s = zoo.noise.run_seed(generator)``, and sample i's noise is :mod:`zoo.noise`'s
                draws for (s, i), the same at any batch size; with ``torch.Generator().manual_seed(S)`` it is what
                ``zoo.distributed.sample_to_dir(seed=S)`` gives sample i.
            schedule / spacing / shift: the sigma grid (see :meth:`sigmas`).
            compat: ``"diffusers"`` walks the grid diffusers' scheduler of the same name walks for ``spacing``
                (its timesteps, starting noise scale and quirks), so that ``sampler=S, spacing=P, steps=N,
                compat="diffusers"`` gives what diffusers' scheduler S with ``timestep_spacing=P`` gives from
                the same unit noise. None (default) is zoo's own grid (see :meth:`plan`).
            callback: called with a :class:`StepInfo` after each step; raising StopIteration ends sampling there
                and returns that step's x (still noisy unless at sigma 0), mapped to the model's space.
            output: ``"images"`` for float ``(n, C, H, W)`` in [0, 1] (decoded by the autoencoder); ``"raw"``
                for the denoiser-space tensor (latents, for a latent model).
            cond, guidance_scale, uncond, classifier_grad, classifier_scale, guided_channels: conditioning and
                guidance, see :meth:`denoise_fn`; a pipeline with a conditioner makes cond and uncond from its inputs.
            **options: the conditioner's inputs (``labels=``, ``prompt=``...), then sampler options (``eta=``
                for DDIM, ``rtol=`` for ode-rk45, ...).
        Returns:
            ``(n, C, H, W)`` float32 on the pipeline's device.
        """
        if not isinstance(n, int) or n < 1:
            raise InvalidInputError(f"n must be a positive number of samples, got {n!r}")
        _check_mode("output", output, ("images", "raw"))
        cond, uncond = self._conditioning(n, cond, uncond, options)
        impl = self._resolve_sampler(sampler, self.default_sampler)
        plan = self.plan(impl, self._steps(steps), schedule, spacing, shift, compat)
        # the checkpoint's defaults, then what the plan needs to reproduce its library, then the user's own
        options = {**self.sampler_defaults.get(impl.name, {}), **plan.options, **options}
        segments = [s.to(self.device) for s in plan.segments]
        state_dtype = self._state_dtype()
        noise_source = CounterNoise(torch.arange(n), self.sample_shape, seed=run_seed(generator), device=self.device,
                                    dtype=state_dtype)
        if noise is None:
            noise = noise_source.draw()
        elif tuple(noise.shape) != (n, *self.sample_shape):
            raise InvalidInputError(f"noise must have shape {(n, *self.sample_shape)}, got {tuple(noise.shape)}")
        else:
            _check_finite(noise, "noise")
            noise_source.step = 1  # the given noise stands for draw 0: a sampler's injected noise is what it would be
        start = plan.start_scale if plan.start_scale is not None else self.schedule.prior_scale(segments[0][0])
        x = noise.to(self.device, state_dtype) * start
        self.last_nfe = 0
        x, sigma_end = self._run(impl, x, segments, plan.timesteps, noise_source if impl.stochastic else None,
                                 callback, progress, options, dict(cond=cond, guidance_scale=guidance_scale,
                                 uncond=uncond, classifier_grad=classifier_grad, classifier_scale=classifier_scale,
                                                             guided_channels=guided_channels))
        x = x * self.schedule.input_scale(torch.tensor(sigma_end, dtype=torch.float64)).to(x)  # to model space
        self._check_output(x, f"the denoiser ({type(self.denoiser).__name__}) under sampler {impl.name!r}")
        if output == "raw":
            return x.float()
        images = self.autoencoder.decode(x).float()
        self._check_output(images, f"the autoencoder's decode ({type(self.autoencoder).__name__})")
        return images

    def _steps(self, steps: int | None) -> int:
        if steps is None:
            return self.default_steps
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise InvalidInputError(f"steps={steps!r}: a positive number of sampler steps (None: the model's "
                                    f"default, {self.default_steps})")
        return steps

    def _check_output(self, x: Tensor, component: str) -> None:
        """One host sync at the end of a call, never inside forward: name the component that made NaN or Inf."""
        if not bool(torch.isfinite(x).all()):
            bad = int((~torch.isfinite(x)).sum())
            raise NonFiniteError(f"{self.name or 'this pipeline'}: {component} produced non-finite values ({bad} of "
                                 f"{x.numel()}); the weights may be damaged, or the dtype too narrow (try "
                                 f"dtype=torch.float32)")

    def _counted(self, denoise: DenoiseFn) -> DenoiseFn:
        """D that adds one to ``last_nfe`` per call: one counter for every sampler, so NFEs compare."""
        def D(x: Tensor, sigma: Tensor) -> Tensor:
            self.last_nfe += 1
            return denoise(x, sigma)
        return D

    def _run(self, impl: Sampler, x: Tensor, segments: list[Tensor], timesteps: list[Tensor] | None,
             noise_sampler, callback, progress: bool, options: dict, guidance: dict) -> tuple[Tensor, float]:
        """Run a sampler over a plan's segments with one progress bar and early stopping; returns the final x
        and the sigma it sits at. Between segments x is carried in the model's own space."""
        from .progress import progress_bar  # honours zoo.set_progress_bar_config, TQDM_DISABLE, zoo -q

        bar = progress_bar(total=sum(len(s) - 1 for s in segments), desc=f"{self.name or 'sampling'} [{impl.name}]",
                           progress=progress, leave=False)
        offset = 0

        def on_step(info: StepInfo) -> None:
            info.step += offset
            if info.step >= bar.total:  # adaptive samplers choose their own number of steps
                bar.total = info.step + 1
            bar.update(1)
            if callback is not None:
                try:
                    callback(info)
                except StopIteration:
                    raise _EarlyStop(info) from None

        try:
            for k, sigmas in enumerate(segments):
                times = None if timesteps is None else {float(s): t for s, t in zip(sigmas.cpu(), timesteps[k])}
                D = self._counted(self.denoise_fn(**guidance, timesteps=times))
                x = impl(D, x, sigmas, signal_scale=self.schedule.signal_scale, noise_sampler=noise_sampler,
                         callback=on_step, **options)
                offset += len(sigmas) - 1
                if k + 1 < len(segments):  # keep x_t = c(sigma) * x, re-read at the next segment's first sigma
                    x = x * (self.schedule.input_scale(sigmas[-1]) / self.schedule.input_scale(segments[k + 1][0])).to(x)
            return x, float(segments[-1][-1])
        except _EarlyStop as stop:
            info = stop.info
            if info.sigma_next is not None:
                return info.x, info.sigma_next
            local = info.step - offset  # the step's index inside the segment that stopped
            return info.x, float(segments[min(k, len(segments) - 1)][local + 1])
        finally:
            bar.close()

    @torch.inference_mode()
    def invert(self, images: Tensor, *, steps: int | None = None, sampler: str | Sampler | None = None,
               schedule: str | Tensor | None = None, spacing: str | None = None, shift: float | None = None,
               progress: bool = True, input: str = "images", cond: dict[str, Any] | None = None,
               guidance_scale: float = 1.0, uncond: dict[str, Any] | None = None,
               classifier_grad: ClassifierGrad | None = None, classifier_scale: float = 1.0,
               guided_channels: int | None = None, **options: Any) -> Tensor:
        """Run sampling backwards: images -> the standard-normal noise from which ``sample`` makes them again.

        ``pipe.sample(n, noise=pipe.invert(x))`` returns x: both calls default to the same sampler, steps and grid
        (the grid ``sample`` walks, run backwards). How closely depends on the sampler:

        * a deterministic single-step method (DDIM at eta 0, Euler, Heun, flow-Euler; ``Sampler.single_step``)
          without x0 clipping is undone step by step, exactly: each step's backward ODE estimate is refined by
          an accelerated fixed-point iteration until the forward step lands on its input (:meth:`_undo_steps`),
          so the round trip is limited by the model's float arithmetic, not the method's order. Measured on
          ``ddpm-digits`` (8 of its own samples at the defaults, DDIM 50 steps, float32): max abs error 1.0e-3 on
          [0, 1] pixels, 367 model evaluations for the inversion (tests/test_first_hour_api.py holds it under
          5e-3); on the Gaussian-mixture oracle in float64, 2e-6 at 20 steps (tests/test_sampler_pipeline.py).
        * other samplers (``ode-rk45``, ``dpmpp-2m``, or DDIM with the x0 clipping of the google DDPM configs)
          run backwards in one pass: the round trip is then as good as the method, e.g. 0.026 on the same
          digits for ``ode-rk45`` both ways (rtol = atol = 1e-4), 0.47 for DDIM-50 with clipping. Where the
          default sampler is one of these (stochastic, clipped), invert uses the entry's inversion sampler
          (:attr:`invert_sampler`, an ODE solver): pass it to ``sample`` as well.

        The last step, from the last positive sigma to 0, is ``x = D(x, sigma)`` for every sampler; invert undoes
        it by solving ``D(x, sigma) = image`` with the fixed-point iteration ``x <- x + a*(image - D(x, sigma))``.

        Args:
            images: ``(N, C, H, W)`` images in [0, 1] (``input="images"``; encoded by the autoencoder first) or
                denoiser-space tensors (``input="raw"``, as ``sample(output="raw")`` returns).
            sampler: default: :attr:`invert_sampler` (the default sampler when it can be undone exactly).
            Others as in :meth:`sample`.
        Returns:
            ``(N, C, H, W)`` standard-normal-scaled noise in the state dtype (float32, float64 for float64 models).
        """
        _check_mode("input", input, ("images", "raw"))
        if isinstance(images, Tensor):
            _check_finite(images, "images")
        if input == "images":
            x0 = self.autoencoder.encode(self.autoencoder.preprocess(images))
            self._check_output(x0, f"the autoencoder's encode ({type(self.autoencoder).__name__})")
            if tuple(x0.shape[1:]) != self.sample_shape:
                c, h, w = self.sample_shape
                scale = self.autoencoder.downscale
                raise InvalidInputError(f"{self.name or 'this pipeline'} denoises {c}x{h}x{w} latents, which "
                                        f"{h * scale}x{w * scale} images encode to; these images encode to "
                                        f"{'x'.join(map(str, x0.shape[1:]))}: resize them to {h * scale}x{w * scale}")
        else:
            check_image_batch(images, channels=self.sample_shape[0], size=self.sample_shape[1:], what="images")
            x0 = images
        cond, uncond = self._conditioning(len(x0), cond, uncond, options)
        impl = self._resolve_sampler(sampler, self.invert_sampler or self.default_sampler)
        options = {**self.sampler_defaults.get(impl.name, {}), **options}
        sigmas = self.sigmas(self._steps(steps), schedule, spacing, shift).to(self.device)
        x0 = x0.to(self.device, self._state_dtype())
        guidance = dict(cond=cond, guidance_scale=guidance_scale, uncond=uncond, classifier_grad=classifier_grad,
                        classifier_scale=classifier_scale, guided_channels=guided_channels)
        D = self._counted(self.denoise_fn(**guidance))
        self.last_nfe = 0
        if sigmas[-1] == 0:
            x = self._undo_final_step(D, x0, sigmas[-2])
            path = sigmas[:-1].flip(0)
        else:  # the grid ends at a positive sigma (DDIM's set_alpha_to_one=False): x0 is x_t there
            x = x0 / self.schedule.input_scale(sigmas[-1]).to(x0)
            path = sigmas.flip(0)
        if _exactly_invertible(impl, options):
            x = self._undo_steps(impl, D, x, path, options, progress)
        else:
            x, _ = self._run(impl, x, [path], None, _refuse_noise if impl.stochastic else None, None, progress,
                             options, guidance)
        self._check_output(x, f"the denoiser ({type(self.denoiser).__name__}) inverting under {impl.name!r}")
        return x / self.schedule.prior_scale(sigmas[0])

    def _undo_steps(self, impl: Sampler, denoise: DenoiseFn, x: Tensor, path: Tensor, options: dict[str, Any],
                    progress: bool, max_iters: int = 16, memory: int = 3) -> Tensor:
        """Undo a single-step sampler's steps one by one, from ``path[0]`` up to ``path[-1]`` (ascending).

        Each step ``F: y (at hi) -> x (at lo)`` is solved for y: the step run backwards gives the first y, then
        the fixed point of ``G(y) = y + (x - F(y))`` is found with Anderson acceleration (each sample mixes its
        last ``memory`` iterates by least squares on their residuals; Walker & Ni 2011). The plain iteration
        contracts by ``1 - F'`` and F' can be as small as ``lo / hi`` near the data, where it would crawl. The
        forward run then retraces the inverse to float rounding rather than to the method's order; an iteration
        that stops improving keeps its best y.
        """
        from .progress import progress_bar

        noise = _refuse_noise if impl.stochastic else None
        step = lambda y, grid: impl(denoise, y, grid, signal_scale=self.schedule.signal_scale,  # noqa: E731
                                    noise_sampler=noise, **options)
        tol = 1e-6 * (1 + float(x.abs().max()))
        n = len(x)
        with progress_bar(total=len(path) - 1, desc=f"{self.name or 'pipeline'} [invert {impl.name}]",
                          progress=progress, leave=False) as bar:
            for lo, hi in zip(path[:-1], path[1:]):
                y = step(x, torch.stack([lo, hi]))
                best, best_error, stalled, iterates, residuals = y, math.inf, 0, [], []
                for _ in range(max_iters):
                    residual = x - step(y, torch.stack([hi, lo]))
                    error = float(residual.abs().max())
                    stalled = stalled + 1 if error >= best_error else 0
                    if stalled > 2:  # no longer converging (float rounding): keep the best
                        break
                    if not stalled:
                        best, best_error = y, error
                    if error <= tol:
                        break
                    iterates = [*iterates, y.reshape(n, -1)][-memory - 1:]
                    residuals = [*residuals, residual.reshape(n, -1)][-memory - 1:]
                    mapped = y + residual
                    if len(residuals) > 1:  # Anderson: the combination of recent steps that cancels the residual
                        dR = torch.stack([b - a for a, b in zip(residuals, residuals[1:])], -1)  # (N, P, m)
                        dY = torch.stack([b - a for a, b in zip(iterates, iterates[1:])], -1)
                        gamma = torch.linalg.lstsq(dR, residuals[-1].unsqueeze(-1)).solution  # (N, m, 1)
                        mapped = mapped - ((dY + dR) @ gamma).reshape(x.shape)
                    y = mapped
                x = best
                bar.update(1)
        return x

    def _undo_final_step(self, denoise: DenoiseFn, x0: Tensor, sigma: Tensor, max_iters: int = 8) -> Tensor:
        """The x at ``sigma`` whose denoising step ``x -> D(x, sigma)`` lands on ``x0`` (fixed-point iteration)."""
        a = self.schedule.signal_scale(sigma).to(x0)
        x = a * x0
        tol = 1e-5 * (1 + float(x0.abs().max()))
        for _ in range(max_iters):
            residual = x0 - denoise(x, sigma)
            x = x + a * residual
            if float(residual.abs().max()) <= tol:
                break
        return x


class ClassConditioner(Conditioner):
    """Class labels -> ``class_labels`` for a class-conditional denoiser, with the null class as ``uncond``.

    ``labels`` may be ids or names (looked up in ``id2label``, case-insensitively); one label is repeated for
    the whole batch. The unconditional branch gets ``null_label`` (DiT's 1000, -1 for zoo.testing's mixture).
    """

    inputs = ("labels",)

    def __init__(self, num_classes: int, null_label: int, id2label: dict[int, str] | None = None):
        super().__init__()
        self.num_classes, self.null_label = num_classes, null_label
        self.label2id = {name.strip().lower(): i for i, names in (id2label or {}).items()
                         for name in str(names).split(",")}

    def forward(self, n: int, labels: Any = None) -> tuple[dict[str, Any], dict[str, Any]]:
        if labels is None:
            raise InvalidInputError(f"this model is class-conditional: pass labels= (ids 0..{self.num_classes - 1} or names)")
        items = list(labels) if isinstance(labels, (list, tuple, Tensor)) else [labels]
        if len(items) == 1:
            items = items * n
        if len(items) != n:
            raise InvalidInputError(f"labels= gives {len(items)} labels for {n} samples: give one, or one per sample")
        ids = [self._id(item) for item in items]
        return ({"class_labels": torch.tensor(ids)}, {"class_labels": torch.full((n,), self.null_label)})

    def _id(self, label: Any) -> int:
        if isinstance(label, str):
            key = label.strip().lower()
            if key not in self.label2id:
                import difflib

                close = difflib.get_close_matches(key, list(self.label2id), n=3)
                hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
                raise InvalidInputError(f"unknown class name {label!r}: use an id 0..{self.num_classes - 1} or a name "
                                        f"of this model's id2label.{hint}")
            return self.label2id[key]
        label = int(label)
        if not 0 <= label < self.num_classes:
            raise InvalidInputError(f"class label {label} is outside 0..{self.num_classes - 1}")
        return label
