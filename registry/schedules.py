"""Noise schedules: where a noisy sample sits between data and noise.

Every diffusion-like model sees ``x_t = alpha_t * x0 + sigma_t * eps``. Samplers do not work in the
model's own variables but in a *sampling space* in which the probability-flow ODE is always

    dx/dsigma = (x - D(x, sigma)) / sigma,                     (EDM, Karras et al. 2022, eq. 3)

with ``D`` the denoiser (the model's estimate of x0). Two spaces cover every model zoo serves:

* variance-preserving models (DDPM, DDIM, LDM, DiT) are sampled in the variance-exploding space of EDM:
  ``x = x_t / alpha_t``, ``sigma = sigma_t / alpha_t``, so ``x = x0 + sigma * eps`` and the signal scale
  ``a(sigma)`` is 1;
* rectified flow (SD3) is sampled in its own space: ``x = (1 - sigma) * x0 + sigma * eps`` with
  ``sigma = t`` in [0, 1], so ``a(sigma) = 1 - sigma``. The ODE above holds there too, since
  ``(x - x0) / t = eps - x0`` is exactly the flow velocity.

A schedule therefore answers four questions: the sigma range, the signal scale ``a(sigma)`` in sampling
space, how to turn a sampling-space point into the model's input (``input_scale`` and ``sigma_to_t``), and
which sigmas a sampler should visit (``sigmas``).
"""
from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import Literal

import numpy as np
import torch
from torch import Tensor
from .errors import InvalidInputError

Spacing = Literal["leading", "trailing", "linspace"]


def karras_sigmas(n: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> Tensor:
    """The EDM step grid: ``n`` sigmas from sigma_max to sigma_min, uniform in ``sigma**(1/rho)`` (float64)."""
    ramp = torch.linspace(0, 1, n, dtype=torch.float64)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return (hi + ramp * (lo - hi)) ** rho


class NoiseSchedule(ABC):
    """The map between a model's time variable and sampling-space sigma (see the module docstring).

    All sigma tensors a schedule returns are float64, descending, and end with the final sigma (0 when the
    sampler should land on clean data).
    """

    #: ``"ve"`` (x = x0 + sigma*eps) or ``"flow"`` (x = (1-sigma)*x0 + sigma*eps).
    space: Literal["ve", "flow"]

    @property
    @abstractmethod
    def sigma_min(self) -> float: ...

    @property
    @abstractmethod
    def sigma_max(self) -> float: ...

    def signal_scale(self, sigma: Tensor) -> Tensor:
        """``a(sigma)``: the weight of x0 in a sampling-space point (1 in VE space, 1 - sigma for flow)."""
        return torch.ones_like(sigma) if self.space == "ve" else 1 - sigma

    def prior_scale(self, sigma: float | Tensor) -> float:
        """What standard-normal noise is multiplied by to start sampling at ``sigma`` (the grid's first sigma).

        EDM/VE: ``sigma`` (k-diffusion); flow: 1 (pure noise, as diffusers starts). Variance-preserving
        schedules override this with ``sqrt(1 + sigma**2)``: unit noise in the model's own space.
        """
        return float(sigma) if self.space == "ve" else 1.0

    @abstractmethod
    def input_scale(self, sigma: Tensor) -> Tensor:
        """``c(sigma)`` such that the model's input is ``c * x`` (VP models: ``1 / sqrt(1 + sigma**2)``)."""

    @abstractmethod
    def sigma_to_t(self, sigma: Tensor) -> Tensor:
        """The model's own time variable (a DDPM step index, flow time * 1000, ...) for a sigma."""

    @abstractmethod
    def t_to_sigma(self, t: Tensor) -> Tensor:
        """Inverse of :meth:`sigma_to_t`."""

    @abstractmethod
    def sigmas(self, steps: int, spacing: str | None = None) -> Tensor:
        """The sigmas a ``steps``-step sampler visits by default: ``steps + 1`` values, float64."""

    def karras(self, steps: int, rho: float = 7.0) -> Tensor:
        """Karras et al.'s grid over this schedule's range, with a final 0."""
        return torch.cat([karras_sigmas(steps, self.sigma_min, self.sigma_max, rho), torch.zeros(1, dtype=torch.float64)])

    def exponential(self, steps: int) -> Tensor:
        """``steps`` sigmas uniform in log sigma over this schedule's range, with a final 0.

        For VP models that is uniform in log-SNR, the grid DPM-Solver (Lu et al. 2022) recommends for
        low-resolution data; k-diffusion's ``get_sigmas_exponential``, diffusers' ``use_exponential_sigmas``.
        """
        log_sigmas = torch.linspace(math.log(self.sigma_max), math.log(self.sigma_min), steps, dtype=torch.float64)
        return torch.cat([log_sigmas.exp(), torch.zeros(1, dtype=torch.float64)])


class DiscreteVPSchedule(NoiseSchedule):
    """DDPM's schedule: ``T`` discrete steps with cumulative products ``alphas_cumprod`` (Ho et al. 2020).

    Sampling-space sigma of step ``t`` is ``sqrt((1 - abar_t) / abar_t)``. Sigmas between grid points map to
    fractional ``t`` by interpolation in log-sigma (as k-diffusion does); sigmas on the grid map to the exact
    integer, so a sampler that walks the DDPM grid feeds the model the very timesteps diffusers would.

    Grids (tests/test_sampler_parity.py checks them against diffusers): ``sigmas(steps, spacing)`` is
    DDIMScheduler's and DDPMScheduler's grid for all three spacings, and EulerDiscrete's, EulerAncestral's and
    Heun's for ``leading`` and ``trailing`` (DPM-Solver's too for ``trailing``); ``karras`` and ``exponential``
    are EulerDiscrete's and Heun's ``use_karras_sigmas`` / ``use_exponential_sigmas``. Not reproduced:
    the Euler family's ``linspace`` (fractional timesteps whose sigmas are interpolated linearly in sigma,
    while its own Karras path interpolates in log sigma), DPM-Solver's ``leading``/``linspace`` (N + 1 points
    spaced, t = 0 dropped) and its Karras/exponential grids (integer timesteps fed with unrounded sigmas).
    """

    space = "ve"

    def __init__(self, alphas_cumprod: Tensor, *, steps_offset: int = 0, final_alpha_cumprod: float | None = 1.0,
                 default_spacing: str = "leading"):
        self.alphas_cumprod = alphas_cumprod.to(torch.float64)
        self.num_train_timesteps = len(alphas_cumprod)
        self.steps_offset = steps_offset
        # DDIM's `set_alpha_to_one`: where the last step lands. 1.0 gives sigma 0 (clean data); None lands on
        # abar_0 instead, as DDIMScheduler(set_alpha_to_one=False) does.
        self.final_alpha_cumprod = final_alpha_cumprod
        if default_spacing not in ("leading", "trailing", "linspace"):
            raise InvalidInputError(f"unknown timestep spacing {default_spacing!r}: use 'leading', 'trailing' or 'linspace'")
        self.default_spacing = default_spacing
        self.grid = ((1 - self.alphas_cumprod) / self.alphas_cumprod).sqrt()  # ascending in t
        self.log_grid = self.grid.log()

    @classmethod
    def from_betas(cls, beta_start: float = 1e-4, beta_end: float = 0.02, num_train_timesteps: int = 1000,
                   beta_schedule: str = "linear", **kwargs) -> "DiscreteVPSchedule":
        """The beta schedules diffusers' DDPM/DDIM schedulers know, computed as they compute them (float32)."""
        if beta_schedule == "linear":
            betas = torch.linspace(beta_start, beta_end, num_train_timesteps, dtype=torch.float32)
        elif beta_schedule == "scaled_linear":  # latent diffusion
            betas = torch.linspace(beta_start**0.5, beta_end**0.5, num_train_timesteps, dtype=torch.float32) ** 2
        elif beta_schedule == "squaredcos_cap_v2":  # Nichol & Dhariwal 2021
            f = lambda t: math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
            betas = torch.tensor([min(1 - f((i + 1) / num_train_timesteps) / f(i / num_train_timesteps), 0.999)
                                  for i in range(num_train_timesteps)], dtype=torch.float32)
        else:
            raise InvalidInputError(f"unknown beta_schedule {beta_schedule!r}: use 'linear', 'scaled_linear' or 'squaredcos_cap_v2'")
        return cls(torch.cumprod(1.0 - betas, dim=0), **kwargs)

    @classmethod
    def from_scheduler_config(cls, config: dict) -> "DiscreteVPSchedule":
        """Build from a diffusers ``scheduler_config.json`` (DDPMScheduler, DDIMScheduler, PNDM, ...).

        ``timestep_spacing``, when the config has one, becomes the default spacing of :meth:`sigmas`.
        """
        options = dict(steps_offset=config.get("steps_offset", 0),
                       final_alpha_cumprod=1.0 if config.get("set_alpha_to_one", True) else None,
                       default_spacing=config.get("timestep_spacing") or "leading")
        if config.get("trained_betas") is not None:
            betas = torch.tensor(config["trained_betas"], dtype=torch.float32)
            return cls(torch.cumprod(1.0 - betas, dim=0), **options)
        return cls.from_betas(config.get("beta_start", 1e-4), config.get("beta_end", 0.02),
                              config.get("num_train_timesteps", 1000), config.get("beta_schedule", "linear"),
                              **options)

    @property
    def sigma_min(self) -> float:
        return float(self.grid[0])

    @property
    def sigma_max(self) -> float:
        return float(self.grid[-1])

    def prior_scale(self, sigma: float | Tensor) -> float:
        # x_T ~ N(0, I) in model space, as DDPM/DDIM start; in sampling space that is sqrt(1 + sigma^2) * noise.
        return math.sqrt(1 + float(sigma) ** 2)

    def input_scale(self, sigma: Tensor) -> Tensor:
        return (sigma**2 + 1).rsqrt()

    def sigma_to_t(self, sigma: Tensor) -> Tensor:
        if sigma.numel() > 1:  # a batch usually shares one sigma: search the grid once per distinct value
            unique, index = sigma.unique(return_inverse=True)
            if unique.numel() < sigma.numel():
                return self.sigma_to_t(unique)[index]
        log_sigma = sigma.to(torch.float64).clamp_min(self.sigma_min).log()
        grid = self.log_grid.to(log_sigma.device)
        dists = log_sigma.reshape(-1, 1) - grid
        nearest = dists.abs().argmin(dim=1)
        low = (dists >= 0).cumsum(dim=1).argmax(dim=1).clamp(max=self.num_train_timesteps - 2)
        lo, hi = grid[low], grid[low + 1]
        frac = ((lo - log_sigma.reshape(-1)) / (lo - hi)).clamp(0, 1)
        t = (low + frac).to(torch.float64)
        on_grid = dists.abs().gather(1, nearest[:, None])[:, 0] < 1e-9
        return torch.where(on_grid, nearest.to(torch.float64), t).reshape(sigma.shape)

    def t_to_sigma(self, t: Tensor) -> Tensor:
        t = t.to(torch.float64)
        low, high = t.floor().long(), t.ceil().long()
        w = t - low
        grid = self.log_grid.to(t.device)
        return ((1 - w) * grid[low] + w * grid[high]).exp()

    def timesteps(self, steps: int, spacing: str | None = None) -> Tensor:
        """The integer DDPM steps a ``steps``-step sampler visits, descending.

        diffusers' three spacings (Lin et al. 2023, table 2), computed with numpy exactly as DDIMScheduler and
        DDPMScheduler compute them: float rounding decides some grids (``linspace`` at 27 steps, ``trailing``
        at 48), so torch's own ``arange``/``linspace`` would not do.
        """
        T = self.num_train_timesteps
        if not 1 <= steps <= T:
            raise InvalidInputError(f"steps must be between 1 and the {T} training steps of this schedule, got {steps}")
        spacing = spacing or self.default_spacing
        if spacing == "leading":  # DDIM paper / diffusers default
            ts = np.arange(0, steps)[::-1] * (T // steps) + self.steps_offset
        elif spacing == "trailing":  # "Common diffusion noise schedules are flawed" (Lin et al. 2023)
            ts = np.round(np.arange(T, 0, -T / steps)).astype(np.int64) - 1
        elif spacing == "linspace":
            ts = np.linspace(0, T - 1, steps).round()[::-1].astype(np.int64)
        else:
            raise InvalidInputError(f"unknown spacing {spacing!r}: use 'leading', 'trailing' or 'linspace'")
        return torch.from_numpy(ts.copy())

    def final_sigma(self) -> float:
        return 0.0 if self.final_alpha_cumprod is not None else self.sigma_min

    def sigmas(self, steps: int, spacing: str | None = None) -> Tensor:
        ts = self.timesteps(steps, spacing)
        return torch.cat([self.grid[ts], torch.tensor([self.final_sigma()], dtype=torch.float64)])


class FlowSchedule(NoiseSchedule):
    """Rectified flow (Liu et al. 2022; SD3, Esser et al. 2024): ``x_t = (1 - t) x0 + t eps``, t in [0, 1].

    The model's time variable is ``t * num_train_timesteps`` (SD3 feeds 0..1000). ``shift`` is SD3's
    resolution-dependent timestep shift ``t' = shift * t / (1 + (shift - 1) * t)``, applied to the grid only.
    In odds it is a plain rescaling, ``t' / (1 - t') = shift * t / (1 - t)``: the noise-to-signal ratio of every
    grid point is multiplied by ``shift``, so shifts compose by multiplication.

    The grid is FlowMatchEulerDiscreteScheduler's: ``steps`` points linear in t from 1 down to
    ``shift(1 / T)`` (diffusers' ``sigma_min``, which is already shifted once), shifted, then a final 0.
    """

    space = "flow"

    def __init__(self, num_train_timesteps: int = 1000, shift: float = 1.0):
        self.num_train_timesteps = num_train_timesteps
        self.shift = shift

    @classmethod
    def from_scheduler_config(cls, config: dict) -> "FlowSchedule":
        return cls(config.get("num_train_timesteps", 1000), config.get("shift", 1.0))

    def with_shift(self, shift: float) -> "FlowSchedule":
        """The same schedule with another grid shift (the model's time variable does not depend on it)."""
        return type(self)(self.num_train_timesteps, shift)

    @property
    def sigma_min(self) -> float:
        """The lowest positive sigma of the default grid: ``1 / T`` shifted twice, as diffusers' grid ends."""
        return float(self.shifted(self.shifted(torch.tensor(1.0 / self.num_train_timesteps, dtype=torch.float64))))

    @property
    def sigma_max(self) -> float:
        return 1.0

    def input_scale(self, sigma: Tensor) -> Tensor:
        return torch.ones_like(sigma)

    def sigma_to_t(self, sigma: Tensor) -> Tensor:
        return sigma * self.num_train_timesteps

    def t_to_sigma(self, t: Tensor) -> Tensor:
        return t / self.num_train_timesteps

    def shifted(self, t: Tensor) -> Tensor:
        return self.shift * t / (1 + (self.shift - 1) * t)

    def sigmas(self, steps: int, spacing: str | None = None) -> Tensor:
        lowest = float(self.shifted(torch.tensor(1.0 / self.num_train_timesteps, dtype=torch.float64)))
        t = torch.from_numpy(np.linspace(1.0, lowest, steps))  # numpy's linspace, as diffusers computes it
        return torch.cat([self.shifted(t), torch.zeros(1, dtype=torch.float64)])

    # karras(): the base class's, over [sigma_min, 1] of the shifted grid, which is what
    # FlowMatchEulerDiscreteScheduler(use_karras_sigmas=True) does (Karras spacing of the already shifted range).


class EDMSchedule(NoiseSchedule):
    """A continuous variance-exploding schedule (EDM, score-SDE VE): the model takes ``x0 + sigma*eps`` as is.

    Used for models trained directly on EDM's parameterisation and by the closed-form test denoisers.
    ``input_scale`` is 1: any EDM preconditioning (c_in, c_skip, c_out) belongs to the model's ``forward``.
    """

    space = "ve"

    def __init__(self, sigma_min: float = 0.002, sigma_max: float = 80.0):
        self._sigma_min, self._sigma_max = sigma_min, sigma_max

    @property
    def sigma_min(self) -> float:
        return self._sigma_min

    @property
    def sigma_max(self) -> float:
        return self._sigma_max

    def input_scale(self, sigma: Tensor) -> Tensor:
        return torch.ones_like(sigma)

    def sigma_to_t(self, sigma: Tensor) -> Tensor:
        return sigma

    def t_to_sigma(self, t: Tensor) -> Tensor:
        return t

    def sigmas(self, steps: int, spacing: str | None = None) -> Tensor:
        return self.karras(steps)
