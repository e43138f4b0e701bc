"""A diffusion pipeline: any Denoiser, any Sampler, images out.

The pipeline owns what is not the sampler's business: drawing the starting noise (per sample, so a seed gives
the same images whatever the batch size), choosing the sigma grid, binding conditioning and guidance into
``D(x, sigma)``, counting model evaluations, progress bars, early stopping, and mapping the result back to
images in [0, 1].

Guidance is an edit of D
------------------------
A sampler sees nothing but ``D(x, sigma)``. In sampling space, ``x = a*x0 + sigma*eps`` (``a = a(sigma)``, see
``zoo.registry.schedules``), Tweedie's formula ties D to the score of the noisy marginal ``p_sigma``:

    a * D(x, sigma) = x + sigma**2 * grad_x log p_sigma(x)      <=>      score(x) = (a*D - x) / sigma**2

so any guidance written on scores is the same edit of D, and every sampler gets it for free:

* classifier-free guidance (Ho & Salimans 2022), ``score_u + w*(score_c - score_u)``: since the weights sum
  to 1, x cancels and ``D = D_u + w*(D_c - D_u)``, with w = ``guidance_scale`` (1: plain conditional; 0:
  unconditional). Both branches run as ONE forward pass on a 2N batch (``cond`` and ``uncond`` stacked).
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
from typing import Any, Callable

import torch
from torch import Tensor, nn

from zoo.registry import DenoiseFn, Denoiser, Sampler, StepInfo, check_image_batch

Callback = Callable[[StepInfo], None]
ClassifierGrad = Callable[[Tensor, Tensor], Tensor]
"""``(x_t, t) -> grad_{x_t} log p(y | x_t)``: x_t ``(N, C, H, W)`` in the model's space with requires_grad set,
t ``(N,)`` the model's time variable; bind the labels y in with a closure."""


class PerSampleNoise:
    """Standard-normal noise drawn from one generator per sample.

    Sample ``i`` of a batch owns a generator seeded by the ``i``-th draw from the user's generator, so its
    starting noise and every ancestral step's noise are the same whether it is sampled alone or in a batch.
    """

    def __init__(self, n: int, shape: tuple[int, ...], *, generator: torch.Generator | None, device: torch.device,
                 dtype: torch.dtype):
        seeds = torch.randint(0, 2**62, (n,), generator=generator, device=generator.device if generator else "cpu")
        self.generators = [torch.Generator(device).manual_seed(int(s)) for s in seeds]
        self.shape, self.device, self.dtype = shape, device, dtype

    def draw(self) -> Tensor:
        return torch.stack([torch.randn(self.shape, generator=g, device=self.device, dtype=self.dtype)
                            for g in self.generators])

    def __call__(self, sigma: Tensor | None = None, sigma_next: Tensor | None = None) -> Tensor:
        return self.draw()


class _EarlyStop(Exception):
    """The user's callback raised StopIteration; carries the step it stopped after."""

    def __init__(self, info: StepInfo):
        self.info = info


def _refuse_noise(sigma: Tensor, sigma_next: Tensor) -> Tensor:
    raise ValueError("this sampler injects fresh noise with these settings and so cannot invert; use a "
                     "deterministic one: 'ode-rk45', 'ddim' (eta=0), 'euler', 'heun' or 'dpmpp-2m'")


def _check_mode(what: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{what}={value!r}: use {' or '.join(map(repr, allowed))}")


def _checked_grid(sigmas: Tensor) -> Tensor:
    """A user's sigma grid: 1-D, at least two values, strictly descending, finite, ending at >= 0."""
    sigmas = torch.as_tensor(sigmas).to(torch.float64)
    if sigmas.ndim != 1 or len(sigmas) < 2:
        raise ValueError(f"a sigma grid must be a 1-D tensor of at least 2 values, got shape {tuple(sigmas.shape)}")
    if not bool(torch.isfinite(sigmas).all()) or sigmas[-1] < 0 or not bool((sigmas[1:] < sigmas[:-1]).all()):
        raise ValueError(f"a sigma grid must be finite, strictly descending and end at 0 or above, got "
                         f"{sigmas.tolist()}")
    return sigmas


def _col(v: Tensor) -> Tensor:
    return v.reshape(-1, 1, 1, 1)


def _stack_branches(cond: dict[str, Any], uncond: dict[str, Any]) -> dict[str, Any]:
    """Conditional and unconditional inputs as one 2N batch: tensors concatenated (cond first) along dim 0."""
    if set(cond) != set(uncond):
        raise ValueError(f"cond and uncond must name the same inputs, got {sorted(cond)} and {sorted(uncond)}")
    both = {}
    for key, c in cond.items():
        u = uncond[key]
        if isinstance(c, Tensor):
            u = torch.as_tensor(u, device=c.device, dtype=c.dtype)
            both[key] = torch.cat([c, u.expand(c.shape[0], *u.shape[1:]) if u.shape[0] == 1 else u])
        elif c == u:
            both[key] = c
        else:
            raise ValueError(f"cond[{key!r}] differs between the branches but is not a tensor to batch")
    return both


class DiffusionPipeline(nn.Module):
    """Unconditional or conditional image generation from a :class:`Denoiser`.

    Args:
        denoiser: the network, with its prediction type and schedule.
        sample_shape: ``(C, H, W)`` of one generated sample in the denoiser's space.
        sampler_defaults: per-sampler options taken from the checkpoint's scheduler config
            (``{"ddim": {"clip_denoised": 1.0}, "ddpm": {"variance": "fixed_large", ...}}``).
        default_sampler, default_steps: what ``sample`` uses when not told.

    After every ``sample``/``invert``, ``last_nfe`` holds the number of model evaluations it made.
    """

    def __init__(self, denoiser: Denoiser, sample_shape: tuple[int, int, int], *,
                 sampler_defaults: dict[str, dict[str, Any]] | None = None, default_sampler: str = "ddim",
                 default_steps: int = 50, name: str = ""):
        super().__init__()
        self.denoiser = denoiser
        self.sample_shape = tuple(sample_shape)
        self.sampler_defaults = sampler_defaults or {}
        self.default_sampler, self.default_steps, self.name = default_sampler, default_steps, name
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
                raise ValueError(f"shift= is the flow-matching timestep shift; this model's schedule is "
                                 f"{type(sched).__name__}, not a flow schedule")
            sched = sched.with_shift(shift)
        if spacing is not None and schedule not in (None, "default"):
            raise ValueError(f"spacing={spacing!r} chooses among the default grid's timesteps; it has no meaning "
                             f"with schedule={schedule if isinstance(schedule, str) else 'a tensor'!r}")
        if isinstance(schedule, Tensor):
            return _checked_grid(schedule)
        if schedule in (None, "default"):
            return sched.sigmas(steps, spacing)
        if schedule in ("karras", "exponential"):
            return getattr(sched, schedule)(steps)
        raise ValueError(f"unknown schedule {schedule!r}: use 'default', 'karras', 'exponential' or a tensor of sigmas")

    def _resolve_sampler(self, sampler: str | Sampler | None, options: dict[str, Any]) -> tuple[Sampler, dict]:
        from zoo.api import get_sampler

        sampler = sampler or self.default_sampler
        impl = get_sampler(sampler) if isinstance(sampler, str) else sampler
        return impl, {**self.sampler_defaults.get(impl.name, {}), **options}

    def _state_dtype(self) -> torch.dtype:
        # The sampler's state stays in float32 for half-precision models; float64 models sample in float64.
        return torch.float64 if self.dtype == torch.float64 else torch.float32

    def denoise_fn(self, cond: dict[str, Any] | None = None, *, guidance_scale: float = 1.0,
                   uncond: dict[str, Any] | None = None, classifier_grad: ClassifierGrad | None = None,
                   classifier_scale: float = 1.0) -> DenoiseFn:
        """``D(x, sigma)`` with conditioning and guidance bound in, as samplers want it (see the module docstring).

        Args:
            cond: the model's conditioning inputs (``class_labels=``, ``encoder_hidden_states=``...), leading dim N.
            guidance_scale: classifier-free guidance weight w; needs ``uncond``.
            uncond: the unconditional branch's inputs, same keys (leading dim N or 1).
            classifier_grad: ``(x_t, t) -> grad_{x_t} log p(y | x_t)`` in the model's space, for classifier guidance.
            classifier_scale: its weight.
        """
        cond, denoiser, schedule = cond or {}, self.denoiser, self.schedule
        if guidance_scale != 1.0:
            if uncond is None:
                raise ValueError("guidance_scale != 1 needs uncond=, the inputs of the unconditional branch "
                                 "(the null class label, the empty prompt's embeddings, ...)")
            both = _stack_branches(cond, uncond)

            def D(x: Tensor, sigma: Tensor) -> Tensor:
                sigma = torch.as_tensor(sigma, dtype=torch.float64, device=x.device).expand(x.shape[0])
                d_cond, d_uncond = denoiser.denoise(torch.cat([x, x]), sigma.repeat(2), **both).chunk(2)
                return d_uncond + guidance_scale * (d_cond - d_uncond)
        else:
            def D(x: Tensor, sigma: Tensor) -> Tensor:
                return denoiser.denoise(x, sigma, **cond)
        if classifier_grad is None:
            return D

        def D_classifier(x: Tensor, sigma: Tensor) -> Tensor:
            sigma = torch.as_tensor(sigma, dtype=torch.float64, device=x.device).expand(x.shape[0])
            c, a = schedule.input_scale(sigma), schedule.signal_scale(sigma)
            # sample() runs under inference_mode; the classifier needs autograd, on a tensor made outside it.
            with torch.inference_mode(False), torch.enable_grad():
                x_t = (x * _col(c).to(x.dtype)).to(denoiser.model_dtype).requires_grad_()
                grad = classifier_grad(x_t, schedule.sigma_to_t(sigma).to(torch.float32)).detach()
            # D += lam * sigma^2 / a * c * grad_{x_t}; at a = 0 (flow's sigma = 1) x carries no signal to guide.
            weight = torch.where(a > 0, sigma**2 * c / a.clamp_min(1e-12), torch.zeros_like(a))
            return D(x, sigma) + (classifier_scale * _col(weight) * grad.to(torch.float64)).to(x.dtype)
        return D_classifier

    @torch.inference_mode()
    def sample(self, n: int, *, steps: int | None = None, sampler: str | Sampler | None = None,
               noise: Tensor | None = None, generator: torch.Generator | None = None,
               schedule: str | Tensor | None = None, spacing: str | None = None, shift: float | None = None,
               callback: Callback | None = None, progress: bool = True, output: str = "images",
               cond: dict[str, Any] | None = None, guidance_scale: float = 1.0, uncond: dict[str, Any] | None = None,
               classifier_grad: ClassifierGrad | None = None, classifier_scale: float = 1.0,
               **options: Any) -> Tensor:
        """Generate ``n`` samples.

        Args:
            n: batch size.
            steps: number of sampler steps (model evaluations per step depend on the sampler; ``last_nfe``
                reports them afterwards; ode-rk45 takes as many as its tolerances need).
            sampler: a name from ``zoo.list_samplers()`` or a Sampler instance (default: the entry's).
            noise: ``(n, C, H, W)`` standard-normal starting noise, the same for every sampler (the pipeline
                scales it to the grid's first sigma); drawn per sample from ``generator`` if None.
            generator: seeds the starting noise and every stochastic step's noise, per sample.
            schedule / spacing / shift: the sigma grid (see :meth:`sigmas`).
            callback: called with a :class:`StepInfo` after each step; raising StopIteration ends sampling there
                and returns that step's x (still noisy unless at sigma 0), mapped to the model's space.
            output: ``"images"`` for float ``(n, C, H, W)`` in [0, 1]; ``"raw"`` for the model-space tensor.
            cond, guidance_scale, uncond, classifier_grad, classifier_scale: conditioning and guidance, see
                :meth:`denoise_fn`.
            **options: sampler options (``eta=`` for DDIM, ``rtol=`` for ode-rk45, ...).
        Returns:
            ``(n, C, H, W)`` float32 on the pipeline's device.
        """
        if not isinstance(n, int) or n < 1:
            raise ValueError(f"n must be a positive number of samples, got {n!r}")
        _check_mode("output", output, ("images", "raw"))
        impl, options = self._resolve_sampler(sampler, options)
        sigmas = self.sigmas(steps or self.default_steps, schedule, spacing, shift).to(self.device)
        state_dtype = self._state_dtype()
        noise_source = PerSampleNoise(n, self.sample_shape, generator=generator, device=self.device, dtype=state_dtype)
        if noise is None:
            noise = noise_source.draw()
        elif tuple(noise.shape) != (n, *self.sample_shape):
            raise ValueError(f"noise must have shape {(n, *self.sample_shape)}, got {tuple(noise.shape)}")
        x = noise.to(self.device, state_dtype) * self.schedule.prior_scale(sigmas[0])
        D = self._counted(self.denoise_fn(cond, guidance_scale=guidance_scale, uncond=uncond,
                                          classifier_grad=classifier_grad, classifier_scale=classifier_scale))
        self.last_nfe = 0
        x, sigma_end = self._run(impl, D, x, sigmas, noise_source if impl.stochastic else None, callback, progress,
                                 options)
        x = x * self.schedule.input_scale(torch.tensor(sigma_end, dtype=torch.float64)).to(x)  # to model space
        return x.float() if output == "raw" else ((x.float() + 1) / 2).clamp(0, 1)

    def _counted(self, denoise: DenoiseFn) -> DenoiseFn:
        """D that adds one to ``last_nfe`` per call: one counter for every sampler, so NFEs compare."""
        def D(x: Tensor, sigma: Tensor) -> Tensor:
            self.last_nfe += 1
            return denoise(x, sigma)
        return D

    def _run(self, impl: Sampler, denoise: DenoiseFn, x: Tensor, sigmas: Tensor, noise_sampler, callback,
             progress: bool, options: dict) -> tuple[Tensor, float]:
        """Run a sampler with a progress bar and early stopping; returns the final x and the sigma it sits at."""
        from tqdm.auto import tqdm

        bar = tqdm(total=len(sigmas) - 1, desc=f"{self.name or 'sampling'} [{impl.name}]", disable=not progress,
                   leave=False)

        def on_step(info: StepInfo) -> None:
            if info.step >= bar.total:  # adaptive samplers choose their own number of steps
                bar.total = info.step + 1
            bar.update(1)
            if callback is not None:
                try:
                    callback(info)
                except StopIteration:
                    raise _EarlyStop(info) from None

        try:
            x = impl(denoise, x, sigmas, signal_scale=self.schedule.signal_scale,
                     noise_sampler=noise_sampler, callback=on_step, **options)
            return x, float(sigmas[-1])
        except _EarlyStop as stop:
            info = stop.info
            return info.x, info.sigma_next if info.sigma_next is not None else float(sigmas[info.step + 1])
        finally:
            bar.close()

    @torch.inference_mode()
    def invert(self, images: Tensor, *, steps: int | None = None, sampler: str | Sampler = "ode-rk45",
               schedule: str | Tensor | None = None, spacing: str | None = None, shift: float | None = None,
               progress: bool = True, input: str = "images", cond: dict[str, Any] | None = None,
               guidance_scale: float = 1.0, uncond: dict[str, Any] | None = None,
               classifier_grad: ClassifierGrad | None = None, classifier_scale: float = 1.0,
               **options: Any) -> Tensor:
        """Run the probability-flow ODE backwards: images -> the standard-normal noise that makes them.

        ``pipe.sample(n, noise=pipe.invert(x, sampler=S), sampler=S)`` with the same deterministic sampler, grid
        and conditioning gives x back: within the ODE tolerance for ``ode-rk45``, to the method's order for the
        fixed-grid ones (DDIM inversion). The grid is the one ``sample`` would walk, backwards. Its last step,
        from the last positive sigma to 0, is ``x = D(x, sigma)`` for every sampler; invert undoes it exactly by
        solving ``D(x, sigma) = image`` with the fixed-point iteration ``x <- x + a*(image - D(x, sigma))``,
        which converges in a few evaluations because near sigma = 0, D is close to ``x / a``.

        Args:
            images: ``(N, C, H, W)`` in [0, 1] (``input="images"``) or model-space (``input="raw"``, as
                ``sample(output="raw")`` returns).
            Others as in :meth:`sample`.
        Returns:
            ``(N, C, H, W)`` standard-normal-scaled noise in the state dtype (float32, float64 for float64 models).
        """
        _check_mode("input", input, ("images", "raw"))
        check_image_batch(images, channels=self.sample_shape[0], size=self.sample_shape[1:], what="images")
        if input == "images" and (images.min() < 0 or images.max() > 1):
            raise ValueError(f"images must be in [0, 1] (got [{float(images.min()):.3g}, {float(images.max()):.3g}]); "
                             f"divide uint8 pixels by 255, or pass input='raw' for model-space tensors in [-1, 1]")
        impl, options = self._resolve_sampler(sampler, options)
        sigmas = self.sigmas(steps or self.default_steps, schedule, spacing, shift).to(self.device)
        x0 = images.to(self.device, self._state_dtype())
        x0 = x0 * 2 - 1 if input == "images" else x0
        D = self._counted(self.denoise_fn(cond, guidance_scale=guidance_scale, uncond=uncond,
                                          classifier_grad=classifier_grad, classifier_scale=classifier_scale))
        self.last_nfe = 0
        if sigmas[-1] == 0:
            x = self._undo_final_step(D, x0, sigmas[-2])
            path = sigmas[:-1].flip(0)
        else:  # the grid ends at a positive sigma (DDIM's set_alpha_to_one=False): x0 is x_t there
            x = x0 / self.schedule.input_scale(sigmas[-1]).to(x0)
            path = sigmas.flip(0)
        x, _ = self._run(impl, D, x, path, _refuse_noise if impl.stochastic else None, None, progress, options)
        return x / self.schedule.prior_scale(sigmas[0])

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
