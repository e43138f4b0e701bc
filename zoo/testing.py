"""Truth without weights: a Gaussian mixture whose optimal denoiser is closed form, for testing samplers.

For data ``x0 ~ sum_k pi_k N(mu_k, s_k**2 I)`` and a noisy point ``x_t = alpha*x0 + sigma_t*eps``, each component
stays Gaussian, ``x_t | k ~ N(alpha*mu_k, (alpha**2 s_k**2 + sigma_t**2) I)``, so the posterior over components
``r_k(x_t)`` is a softmax of those log densities and

    E[x0 | x_t] = sum_k r_k(x_t) * (mu_k + alpha*s_k**2 / (alpha**2 s_k**2 + sigma_t**2) * (x_t - alpha*mu_k)),

the exact minimiser of the denoising loss. :class:`GMMDenoiser` wraps it as a zoo Denoiser predicting eps, v, x0 or
flow velocity on any schedule, so a sampler that is right must reproduce the mixture as its steps grow;
:func:`sliced_wasserstein` measures how far its samples are from it, against the mixture's exact quantiles.

Components carry class labels, so conditional sampling, classifier-free guidance and classifier guidance have
exact answers too: ``log p(y | x_t)`` is a log-sum-exp over the components of class y.

    >>> gmm = ring()                                         # 8 modes on a circle, (N, 2, 1, 1) "images"
    >>> pipe = DiffusionPipeline(GMMDenoiser(gmm, "eps"), gmm.shape)
    >>> x = pipe.sample(4096, steps=20, sampler="dpmpp-2m", output="raw")
    >>> sliced_wasserstein(x, gmm)
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from zoo.registry import Denoiser, DiscreteVPSchedule, FlowSchedule, NoiseSchedule, Prediction

from .diffusion import ClassifierGrad, DiffusionPipeline


class GaussianMixture:
    """Isotropic Gaussian mixture over ``(C, H, W)`` tensors, float64.

    Its parameters live on the CPU; the methods that take a tensor compute on that tensor's device (in float64,
    so a device without float64 cannot run them), as :class:`GMMDenoiser` and :func:`sliced_wasserstein` do.

    Args:
        means: ``(K, C, H, W)`` component means.
        stds: ``(K,)`` component standard deviations.
        weights: ``(K,)`` mixture weights (normalised here); uniform if None.
        labels: ``(K,)`` int class of each component; ``arange(K)`` if None.
    """

    def __init__(self, means: Tensor, stds: Tensor, weights: Tensor | None = None, labels: Tensor | None = None):
        self.means = means.to(torch.float64)
        self.shape = tuple(means.shape[1:])
        k = len(means)
        self.stds = torch.as_tensor(stds, dtype=torch.float64).expand(k).clone()
        weights = torch.ones(k) if weights is None else torch.as_tensor(weights)
        self.weights = weights.to(torch.float64) / weights.sum()
        self.labels = torch.arange(k) if labels is None else torch.as_tensor(labels)
        self._quantiles: dict[tuple, tuple[Tensor, Tensor]] = {}
        self._placed: dict[torch.device, tuple[Tensor, Tensor, Tensor, Tensor]] = {}

    def _on(self, device: torch.device | str) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``(means, stds, weights, labels)`` on ``device`` (copied once per device, then cached)."""
        device = torch.device(device)
        if device not in self._placed:
            self._placed[device] = tuple(t.to(device) for t in (self.means, self.stds, self.weights, self.labels))
        return self._placed[device]

    @property
    def dim(self) -> int:
        return math.prod(self.shape)

    def sample(self, n: int, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """``n`` draws ``(n, C, H, W)`` float64 and their class labels ``(n,)``."""
        k = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        eps = torch.randn((n, *self.shape), generator=generator, dtype=torch.float64)
        return self.means[k] + self.stds[k].reshape(-1, *[1] * len(self.shape)) * eps, self.labels[k]

    def _component_log_density(self, x_t: Tensor, alpha: Tensor, sigma_t: Tensor) -> tuple[Tensor, Tensor]:
        """``log pi_k + log N(x_t; alpha mu_k, v_k I)`` ``(N, K)`` and the variances ``v_k`` ``(N, K)``."""
        means, stds, weights, _ = self._on(x_t.device)
        x = x_t.reshape(len(x_t), 1, -1).to(torch.float64)
        alpha, sigma_t = alpha.to(x.device).reshape(-1, 1), sigma_t.to(x.device).reshape(-1, 1)
        var = alpha**2 * stds**2 + sigma_t**2  # (N, K)
        sq = ((x - alpha[..., None] * means.reshape(1, len(means), -1)) ** 2).sum(-1)
        return weights.log() - 0.5 * sq / var - 0.5 * self.dim * (2 * math.pi * var).log(), var

    def _mask(self, logp: Tensor, classes: Tensor | None) -> Tensor:
        """Restrict to the components of each sample's class; class -1 (the null label) keeps them all."""
        if classes is None:
            return logp
        labels = self._on(logp.device)[3]
        classes = classes.reshape(-1, 1).to(logp.device)
        keep = (labels.reshape(1, -1) == classes) | (classes < 0)
        return logp.masked_fill(~keep, -math.inf)

    def posterior_mean(self, x_t: Tensor, alpha: Tensor, sigma_t: Tensor, classes: Tensor | None = None) -> Tensor:
        """``E[x0 | x_t]`` ``(N, C, H, W)`` float64, optionally given each sample's class."""
        logp, var = self._component_log_density(x_t, alpha, sigma_t)
        r = self._mask(logp, classes).softmax(dim=1)  # (N, K)
        means, stds, _, _ = self._on(x_t.device)
        x = x_t.reshape(len(x_t), 1, -1).to(torch.float64)
        alpha = alpha.to(x.device)
        a = alpha.reshape(-1, 1, 1)
        gain = (alpha.reshape(-1, 1) * stds**2 / var)[..., None]  # (N, K, 1)
        means = means.reshape(1, len(means), -1)
        x0 = (r[..., None] * (means + gain * (x - a * means))).sum(1)
        return x0.reshape(x_t.shape)

    def class_log_posterior(self, x_t: Tensor, alpha: Tensor, sigma_t: Tensor, y: Tensor) -> Tensor:
        """``log p(y | x_t)`` ``(N,)``: differentiable in x_t, for classifier guidance."""
        logp, _ = self._component_log_density(x_t, alpha, sigma_t)
        return self._mask(logp, y).logsumexp(1) - logp.logsumexp(1)

    def projected_quantiles(self, n: int, projections: int, seed: int) -> tuple[Tensor, Tensor]:
        """Unit directions ``(P, D)`` and the mixture's exact quantiles along them at ``(i + 0.5) / n``, ``(P, n)``
        (computed once on the CPU, float64; cached)."""
        key = (n, projections, seed)
        if key not in self._quantiles:
            g = torch.Generator().manual_seed(seed)
            dirs = torch.randn(projections, self.dim, generator=g, dtype=torch.float64)
            dirs = dirs / dirs.norm(dim=1, keepdim=True)
            m = dirs @ self.means.reshape(len(self.means), -1).T  # (P, K): 1-D mixture means; stds unchanged
            probs = (torch.arange(n, dtype=torch.float64) + 0.5) / n
            lo = (m.min(1).values - 12 * self.stds.max()).reshape(-1, 1).expand(-1, n).clone()
            hi = (m.max(1).values + 12 * self.stds.max()).reshape(-1, 1).expand(-1, n).clone()
            for _ in range(64):  # bisection on the mixture's CDF
                mid = (lo + hi) / 2
                cdf = (self.weights * torch.special.ndtr((mid[..., None] - m[:, None, :]) / self.stds)).sum(-1)
                below = cdf < probs
                lo, hi = torch.where(below, mid, lo), torch.where(below, hi, mid)
            self._quantiles[key] = dirs, (lo + hi) / 2
        return self._quantiles[key]


def ring(k: int = 8, radius: float = 0.75, std: float = 0.1, shape: tuple[int, ...] = (2, 1, 1)) -> GaussianMixture:
    """``k`` equal modes on a circle in the first two coordinates of a ``shape`` sample, labels 0..k-1.

    The default, radius 0.75 and std 0.1 in 2-D, keeps data in about [-1, 1] like images, with modes narrow
    enough that a sampler which blurs or overshoots shows in the distance.
    """
    angles = torch.arange(k, dtype=torch.float64) * 2 * math.pi / k
    means = torch.zeros(k, math.prod(shape), dtype=torch.float64)
    means[:, 0], means[:, 1] = radius * angles.cos(), radius * angles.sin()
    return GaussianMixture(means.reshape(k, *shape), torch.full((k,), std))


def sliced_wasserstein(x: Tensor, gmm: GaussianMixture, projections: int = 64, seed: int = 0) -> float:
    """Sliced 2-Wasserstein distance between the samples ``x`` ``(N, C, H, W)`` and the mixture itself.

    Along each of ``projections`` random directions, the 1-D W2 between the sorted projected samples and the
    mixture's exact quantiles; the root mean square over directions. Exact quantiles leave only the samples'
    own finite-N noise: about 0.01 for 4096 draws of :func:`ring` (directions fixed by ``seed``).
    Computed on ``x``'s device, in float64, whatever ``x``'s dtype.
    """
    return float(_sliced_w2(x, gmm, projections, seed))


def _sliced_w2(x: Tensor, gmm: GaussianMixture, projections: int, seed: int) -> Tensor:
    """:func:`sliced_wasserstein` as a 0-dim float64 tensor on ``x``'s device."""
    dirs, quantiles = (t.to(x.device) for t in gmm.projected_quantiles(len(x), projections, seed))
    proj = (x.reshape(len(x), -1).to(torch.float64) @ dirs.T).T.sort(dim=1).values
    return ((proj - quantiles) ** 2).mean().sqrt()


def vp_schedule() -> DiscreteVPSchedule:
    """DDPM's linear schedule (T = 1000), as google/ddpm-cifar10-32 was trained on."""
    return DiscreteVPSchedule.from_betas(1e-4, 0.02, 1000, "linear")


class GMMDenoiser(Denoiser):
    """The mixture's exact denoiser behind any prediction type and schedule, float64.

    ``forward(x_t, t, class_labels=None)`` answers in the model's own terms: it recovers sigma from t, the
    model-space coefficients ``alpha_t = c*a(sigma)``, ``sigma_t = c*sigma``, computes ``E[x0 | x_t]`` and returns it
    as eps, v, x0 or flow velocity. ``class_labels`` ``(N,)`` conditions on a class; -1 is the null label.
    """

    def __init__(self, gmm: GaussianMixture, prediction: Prediction = "eps", schedule: NoiseSchedule | None = None):
        super().__init__()
        self.gmm, self.prediction = gmm, prediction
        self.schedule = schedule or (FlowSchedule() if prediction == "flow" else vp_schedule())
        # A float64 parameter makes the pipeline sample in float64 (and gives it a device).
        self.anchor = nn.Parameter(torch.zeros((), dtype=torch.float64), requires_grad=False)

    def coefficients(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """``(alpha_t, sigma_t)`` ``(N,)`` of the model's input at time t."""
        sigma = self.schedule.t_to_sigma(t.to(torch.float64))
        c = self.schedule.input_scale(sigma)
        return c * self.schedule.signal_scale(sigma), c * sigma

    def forward(self, x_t: Tensor, t: Tensor, class_labels: Tensor | None = None) -> Tensor:
        alpha, sigma_t = self.coefficients(t.expand(len(x_t)))
        x0 = self.gmm.posterior_mean(x_t, alpha, sigma_t, class_labels)
        a, s = alpha.reshape(-1, 1, 1, 1), sigma_t.reshape(-1, 1, 1, 1)
        eps = (x_t.to(torch.float64) - a * x0) / s
        out = {"eps": eps, "x0": x0, "v": a * eps - s * x0, "flow": eps - x0}[self.prediction]
        return out.to(x_t.dtype)

    def classifier_grad(self, y: Tensor) -> ClassifierGrad:
        """``(x_t, t) -> grad_{x_t} log p(y | x_t)``: the exact noisy classifier, for classifier guidance."""
        def grad(x_t: Tensor, t: Tensor) -> Tensor:
            alpha, sigma_t = self.coefficients(t.expand(len(x_t)))
            logp = self.gmm.class_log_posterior(x_t, alpha, sigma_t, y.to(x_t.device)).sum()
            return torch.autograd.grad(logp, x_t)[0]
        return grad


def gmm_pipeline(prediction: Prediction = "eps", gmm: GaussianMixture | None = None,
                 schedule: NoiseSchedule | None = None) -> DiffusionPipeline:
    """A ready pipeline over :func:`ring` (or ``gmm``): eps/v/x0 on DDPM's schedule, flow on rectified flow."""
    gmm = gmm or ring()
    return DiffusionPipeline(GMMDenoiser(gmm, prediction, schedule), gmm.shape, name=f"gmm-{prediction}")


def sampler_distance(pipe: DiffusionPipeline, gmm: GaussianMixture, noise: Tensor, sampler: str,
                     seed: int = 0, **sample_kwargs) -> tuple[int, float]:
    """Sample from ``noise`` (and ``seed`` for stochastic steps); returns (model evaluations, SW distance to gmm)."""
    x = pipe.sample(len(noise), sampler=sampler, noise=noise, generator=torch.Generator().manual_seed(seed),
                    output="raw", progress=False, **sample_kwargs)
    return pipe.last_nfe, sliced_wasserstein(x, gmm)
