"""A diffusion pipeline: any Denoiser, any Sampler, images out.

The pipeline owns what is not the sampler's business: drawing the starting noise (per sample, so a seed gives
the same images whatever the batch size), choosing the sigma grid, binding conditioning into ``D(x, sigma)``,
progress bars, and mapping the result back to images in [0, 1].
"""
from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor, nn

from zoo.registry import Denoiser, Sampler, StepInfo

Callback = Callable[[StepInfo], None]


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


class DiffusionPipeline(nn.Module):
    """Unconditional or conditional image generation from a :class:`Denoiser`.

    Args:
        denoiser: the network, with its prediction type and schedule.
        sample_shape: ``(C, H, W)`` of one generated sample in the denoiser's space.
        sampler_defaults: per-sampler options taken from the checkpoint's scheduler config
            (``{"ddim": {"clip_denoised": 1.0}, "ddpm": {"variance": "fixed_large", ...}}``).
        default_sampler, default_steps: what ``sample`` uses when not told.
    """

    def __init__(self, denoiser: Denoiser, sample_shape: tuple[int, int, int], *,
                 sampler_defaults: dict[str, dict[str, Any]] | None = None, default_sampler: str = "ddim",
                 default_steps: int = 50, name: str = ""):
        super().__init__()
        self.denoiser = denoiser
        self.sample_shape = tuple(sample_shape)
        self.sampler_defaults = sampler_defaults or {}
        self.default_sampler, self.default_steps, self.name = default_sampler, default_steps, name

    @property
    def schedule(self):
        return self.denoiser.schedule

    @property
    def device(self) -> torch.device:
        return next(self.denoiser.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return self.denoiser.model_dtype

    def sigmas(self, steps: int, schedule: str | Tensor | None = None, spacing: str | None = None) -> Tensor:
        """The sigma grid: the schedule's own (``spacing`` for DDPM grids), ``"karras"``, or a tensor you pass."""
        if isinstance(schedule, Tensor):
            return schedule.to(torch.float64)
        if schedule in (None, "default"):
            return self.schedule.sigmas(steps, spacing) if spacing else self.schedule.sigmas(steps)
        if schedule == "karras":
            return self.schedule.karras(steps)
        raise ValueError(f"unknown schedule {schedule!r}: use 'default', 'karras' or a tensor of sigmas")

    def _resolve_sampler(self, sampler: str | Sampler | None, options: dict[str, Any]) -> tuple[Sampler, dict]:
        from zoo.api import get_sampler

        sampler = sampler or self.default_sampler
        impl = get_sampler(sampler) if isinstance(sampler, str) else sampler
        return impl, {**self.sampler_defaults.get(impl.name, {}), **options}

    def _state_dtype(self) -> torch.dtype:
        # The sampler's state stays in float32 for half-precision models; float64 models sample in float64.
        return torch.float64 if self.dtype == torch.float64 else torch.float32

    def denoise_fn(self, cond: dict[str, Any]):
        """``D(x, sigma)`` with conditioning bound in, as samplers want it."""
        def D(x: Tensor, sigma: Tensor) -> Tensor:
            return self.denoiser.denoise(x, sigma, **cond)
        return D

    @torch.inference_mode()
    def sample(self, n: int, *, steps: int | None = None, sampler: str | Sampler | None = None,
               noise: Tensor | None = None, generator: torch.Generator | None = None,
               schedule: str | Tensor | None = None, spacing: str | None = None,
               callback: Callback | None = None, progress: bool = True, output: str = "images",
               cond: dict[str, Any] | None = None, **options: Any) -> Tensor:
        """Generate ``n`` samples.

        Args:
            n: batch size.
            steps: number of sampler steps (model evaluations per step depend on the sampler).
            sampler: a name from ``zoo.list_samplers()`` or a Sampler instance (default: the entry's).
            noise: ``(n, C, H, W)`` standard-normal starting noise; drawn per sample from ``generator`` if None.
            schedule / spacing: the sigma grid (see :meth:`sigmas`).
            callback: called with a StepInfo after each step.
            output: ``"images"`` for float ``(n, C, H, W)`` in [0, 1]; ``"raw"`` for the model-space tensor.
            **options: sampler options (``eta=`` for DDIM, ``rtol=`` for ode-rk45, ...).
        Returns:
            ``(n, C, H, W)`` float32 on the pipeline's device.
        """
        impl, options = self._resolve_sampler(sampler, options)
        steps = steps or self.default_steps
        sigmas = self.sigmas(steps, schedule, spacing).to(self.device)
        state_dtype = self._state_dtype()
        noise_source = PerSampleNoise(n, self.sample_shape, generator=generator, device=self.device, dtype=state_dtype)
        if noise is None:
            noise = noise_source.draw()
        elif tuple(noise.shape) != (n, *self.sample_shape):
            raise ValueError(f"noise must have shape {(n, *self.sample_shape)}, got {tuple(noise.shape)}")
        x = noise.to(self.device, state_dtype) * self.schedule.prior_scale()
        x = self._run(impl, x, sigmas, cond or {}, noise_source, callback, progress, options)
        x = x * self.schedule.input_scale(sigmas[-1]).to(x.dtype)  # back to the model's space
        return x.float() if output == "raw" else ((x.float() + 1) / 2).clamp(0, 1)

    def _run(self, impl: Sampler, x: Tensor, sigmas: Tensor, cond: dict, noise_sampler, callback, progress: bool,
             options: dict) -> Tensor:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(sigmas) - 1, desc=f"{self.name or 'sampling'} [{impl.name}]", disable=not progress,
                   leave=False)

        def on_step(info: StepInfo) -> None:
            bar.update(1)
            if callback is not None:
                callback(info)

        try:
            return impl(self.denoise_fn(cond), x, sigmas, signal_scale=self.schedule.signal_scale,
                        noise_sampler=noise_sampler if impl.stochastic else None, callback=on_step, **options)
        finally:
            bar.close()

    @torch.inference_mode()
    def invert(self, images: Tensor, *, steps: int | None = None, sampler: str | Sampler = "ode-rk45",
               progress: bool = True, cond: dict[str, Any] | None = None, **options: Any) -> Tensor:
        """Run the probability-flow ODE backwards: images in [0, 1] -> the standard-normal noise that makes them.

        ``sample(n, noise=invert(images), sampler=...)`` with the same deterministic sampler reproduces them.
        """
        impl, options = self._resolve_sampler(sampler, options)
        if impl.stochastic:
            raise ValueError(f"sampler {impl.name!r} is stochastic and cannot invert; use 'ode-rk45' or 'ddim'")
        steps = steps or self.default_steps
        sigmas = self.sigmas(steps).to(self.device)
        start = max(float(sigmas[-1]), self.schedule.sigma_min)
        sigmas = torch.cat([torch.tensor([start], dtype=torch.float64, device=self.device),
                            sigmas[:-1].flip(0)])
        x = images.to(self.device, self._state_dtype()) * 2 - 1
        x = x / self.schedule.input_scale(sigmas[0]).to(x.dtype)  # model space -> sampling space
        x = self._run(impl, x, sigmas, cond or {}, None, None, progress, options)
        return x / self.schedule.prior_scale()
