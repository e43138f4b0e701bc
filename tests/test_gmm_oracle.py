"""zoo.testing's Gaussian mixture, the closed-form oracle the sampler tests stand on: it follows the input's device
and its numbers are the posterior mean written out per component.
"""
from __future__ import annotations

import torch

from zoo.testing import GMMDenoiser, _sliced_w2, ring, sliced_wasserstein

def test_gmm_helpers_follow_the_input_device():
    """On the meta device (shapes only; CUDA in practice). Before: CPU means against meta inputs failed."""
    gmm = ring(std=0.2, shape=(1, 4, 4))
    x = torch.randn(5, 1, 4, 4, device="meta")
    t = torch.full((5,), 500.0, device="meta")
    for prediction in ("eps", "v", "x0"):
        out = GMMDenoiser(gmm, prediction).to("meta")(x, t)
        assert out.device.type == "meta" and out.shape == x.shape and out.dtype == x.dtype
    out = GMMDenoiser(gmm, "eps").to("meta")(x, t, class_labels=torch.tensor([0, 1, 2, 3, -1]))
    assert out.device.type == "meta" and out.shape == x.shape
    a = torch.ones(5, dtype=torch.float64, device="meta")
    assert gmm.class_log_posterior(x, a, a, torch.zeros(5, dtype=torch.long)).device.type == "meta"
    w2 = _sliced_w2(torch.randn(64, 1, 4, 4, device="meta"), gmm, 8, 0)
    assert w2.device.type == "meta" and w2.shape == ()


def test_gmm_math_is_unchanged():
    """The device handling changes no number: the denoiser against the posterior mean written out per component,
    and the distance the same for a float32 and a float64 copy of the samples."""
    gmm = ring(std=0.2, shape=(1, 4, 4))
    x, _ = gmm.sample(64, torch.Generator().manual_seed(0))
    x = x + 0.5 * torch.randn(x.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    alpha, sigma = torch.full((64,), 0.9, dtype=torch.float64), torch.full((64,), 0.5, dtype=torch.float64)
    flat, log_r, x0 = x.reshape(64, -1), [], []
    for k in range(len(gmm.means)):
        mu, s2 = gmm.means[k].reshape(-1), gmm.stds[k] ** 2
        var = 0.9**2 * s2 + 0.5**2
        log_r.append(gmm.weights[k].log() - 0.5 * ((flat - 0.9 * mu) ** 2).sum(1) / var
                     - 0.5 * flat.shape[1] * torch.log(2 * torch.pi * var))
        x0.append(mu + 0.9 * s2 / var * (flat - 0.9 * mu))
    r = torch.stack(log_r, 1).softmax(1)
    expected = (r[..., None] * torch.stack(x0, 1)).sum(1).reshape(x.shape)
    assert torch.allclose(gmm.posterior_mean(x, alpha, sigma), expected, atol=1e-12)
    samples, _ = gmm.sample(512, torch.Generator().manual_seed(2))
    assert abs(sliced_wasserstein(samples.float(), gmm) - sliced_wasserstein(samples, gmm)) < 1e-6
    assert sliced_wasserstein(samples, gmm) == float(_sliced_w2(samples, gmm, 64, 0))
