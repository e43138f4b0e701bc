"""The sampling API around the samplers: registration, NFE counting, callbacks and early stopping, guidance,
reproducibility, inversion. Closed-form Gaussian-mixture models, so everything is exact and fast."""
from __future__ import annotations

import types

import pytest
import torch

import zoo
from zoo.registry import DuplicateNameError, FlowSchedule, build_registry, hookimpl, sampler
from zoo.testing import gmm_pipeline, ring

GMM = ring(std=0.2, shape=(1, 4, 4))
BUILT_IN = ["ddim", "ddpm", "dpmpp-2m", "euler", "euler-ancestral", "flow-euler", "heun", "ode-rk45"]


def noise(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, *GMM.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


class ForwardSpy:
    """Counts the model's forward passes and records their batch sizes."""

    def __init__(self, pipe):
        self.batches: list[int] = []
        forward = pipe.denoiser.forward

        def spy(x_t, t, **cond):
            self.batches.append(len(x_t))
            return forward(x_t, t, **cond)
        pipe.denoiser.forward = spy


def test_every_sampler_is_registered():
    assert set(BUILT_IN) <= set(zoo.list_samplers())
    for name in BUILT_IN:
        assert zoo.get_sampler(name).describe()  # a one-line description from the docstring


def test_a_third_party_sampler_registers_through_the_hook():
    @sampler("my-euler")
    def my_euler(denoise, x, sigmas, *, signal_scale, callback=None):
        return zoo.get_sampler("euler").fn(denoise, x, sigmas, signal_scale=signal_scale, callback=callback)

    plugin = types.SimpleNamespace(zoo_samplers=hookimpl(lambda: [my_euler]))
    registry = build_registry((plugin,))
    assert registry.samplers["my-euler"] is my_euler and "ddim" in registry.samplers
    pipe = gmm_pipeline("eps", GMM)
    assert torch.equal(pipe.sample(4, steps=5, sampler=my_euler, noise=noise(4), progress=False),
                       pipe.sample(4, steps=5, sampler="euler", noise=noise(4), progress=False))
    clash = types.SimpleNamespace(zoo_samplers=hookimpl(lambda: [sampler("heun")(my_euler.fn)]))
    reg = build_registry((clash,))
    assert "heun" not in reg.samplers and "euler" in reg.samplers  # the clash is local to its name
    with pytest.raises(DuplicateNameError, match="heun"):
        reg.check_clash("sampler", "heun")


@pytest.mark.parametrize("name,steps,expected", [("ddim", 10, 10), ("euler", 10, 10), ("dpmpp-2m", 10, 10),
                                                 ("heun", 10, 19), ("ddpm", 10, 10), ("euler-ancestral", 7, 7)])
def test_nfe_is_counted_the_same_way_for_every_sampler(name, steps, expected):
    pipe = gmm_pipeline("eps", GMM)
    spy = ForwardSpy(pipe)
    pipe.sample(4, steps=steps, sampler=name, progress=False)
    assert pipe.last_nfe == len(spy.batches) == expected


def test_ode_rk45_reports_its_model_evaluations():
    pipe = gmm_pipeline("eps", GMM)
    spy = ForwardSpy(pipe)
    pipe.sample(16, sampler="ode-rk45", rtol=1e-4, progress=False)
    loose = pipe.last_nfe
    assert loose == len(spy.batches) > 10
    pipe.sample(16, sampler="ode-rk45", rtol=1e-7, atol=1e-7, progress=False)
    assert pipe.last_nfe > loose


def test_callback_sees_every_step_and_stopiteration_returns_early():
    pipe = gmm_pipeline("eps", GMM)
    sigmas = pipe.sigmas(10)
    seen = []

    def stop_after_4(info):
        seen.append(info)
        if info.step == 3:
            raise StopIteration

    early = pipe.sample(8, steps=10, sampler="ddim", noise=noise(8), callback=stop_after_4, output="raw",
                        progress=False)
    assert [i.step for i in seen] == [0, 1, 2, 3] and seen[3].sigma == pytest.approx(float(sigmas[3]))
    assert pipe.last_nfe == 4
    # The same 4 steps on a truncated grid: the early result is x at sigmas[4], in the model's space.
    truncated = pipe.sample(8, sampler="ddim", noise=noise(8), schedule=sigmas[:5], output="raw", progress=False)
    assert torch.allclose(early, truncated)
    full = []
    pipe.sample(8, steps=10, sampler="heun", callback=full.append, progress=False)
    assert len(full) == 10 and all(i.denoised.shape == (8, *GMM.shape) for i in full)


def test_an_adaptive_sampler_reports_where_it_stopped():
    pipe = gmm_pipeline("eps", GMM)
    seen = []

    def stop(info):
        seen.append(info)
        if len(seen) == 5:
            raise StopIteration

    pipe.sample(8, sampler="ode-rk45", callback=stop, progress=False)
    sigmas = [i.sigma for i in seen]
    assert all(i.sigma_next is not None and i.sigma_next < i.sigma for i in seen)
    assert sigmas == sorted(sigmas, reverse=True)


@pytest.mark.parametrize("name", ["ddim", "ddpm", "euler-ancestral", "dpmpp-2m"])
def test_same_seed_same_samples_whatever_the_batch_size(name):
    pipe = gmm_pipeline("eps", GMM)
    big = pipe.sample(8, steps=10, sampler=name, generator=torch.Generator().manual_seed(7), progress=False)
    small = pipe.sample(3, steps=10, sampler=name, generator=torch.Generator().manual_seed(7), progress=False)
    other = pipe.sample(3, steps=10, sampler=name, generator=torch.Generator().manual_seed(8), progress=False)
    assert torch.allclose(big[:3], small, atol=1e-6)
    assert not torch.allclose(small, other)


def test_one_noise_tensor_fits_every_sampler():
    """The pipeline scales standard-normal noise to each grid, so every sampler lands near the same samples."""
    for prediction in ("eps", "flow"):
        pipe = gmm_pipeline(prediction, GMM)
        z = noise(64)
        ref = pipe.sample(64, noise=z, sampler="ode-rk45", output="raw", rtol=1e-6, atol=1e-6, progress=False)
        for name in ["ddim", "euler", "heun", "dpmpp-2m", "flow-euler"]:
            out = pipe.sample(64, steps=50, noise=z, sampler=name, schedule="exponential", output="raw",
                              progress=False)
            assert float((out - ref).abs().mean()) < 0.02, (prediction, name)


@pytest.mark.parametrize("prediction", ["eps", "flow"])
def test_classifier_free_guidance_is_one_batched_forward(prediction):
    pipe = gmm_pipeline(prediction, GMM)
    x, sigma = noise(6) * 0.5, torch.tensor(0.4, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 3, 4, 5])
    cond, uncond = {"class_labels": y}, {"class_labels": torch.tensor([-1])}
    d_c = pipe.denoise_fn(cond)(x, sigma)
    d_u = pipe.denoise_fn({"class_labels": -torch.ones(6, dtype=torch.long)})(x, sigma)
    spy = ForwardSpy(pipe)
    guided = pipe.denoise_fn(cond, guidance_scale=3.0, uncond=uncond)(x, sigma)
    assert spy.batches == [12]
    assert torch.allclose(guided, d_u + 3.0 * (d_c - d_u))
    assert torch.allclose(pipe.denoise_fn(cond, guidance_scale=1.0)(x, sigma), d_c)
    with pytest.raises(ValueError, match="uncond"):
        pipe.denoise_fn(cond, guidance_scale=3.0)


@pytest.mark.parametrize("prediction", ["eps", "v", "flow"])
def test_classifier_guidance_with_the_exact_classifier_is_conditioning(prediction):
    """score(x) + grad log p(y | x) = score(x | y) (Bayes): guiding the unconditional model with the exact
    noisy classifier gives exactly the conditional denoiser, in any parameterisation and sampling space."""
    pipe = gmm_pipeline(prediction, GMM)
    y = torch.tensor([0, 3, 5, 7])
    x0, _ = GMM.sample(4, torch.Generator().manual_seed(1))
    for s in [0.05, 0.5, 2.0] if prediction != "flow" else [0.05, 0.5, 0.9]:
        sigma = torch.tensor(s, dtype=torch.float64)
        x = pipe.schedule.signal_scale(sigma) * x0 + sigma * noise(4)
        guided = pipe.denoise_fn(classifier_grad=pipe.denoiser.classifier_grad(y))(x, sigma)
        conditional = pipe.denoise_fn({"class_labels": y})(x, sigma)
        unconditional = pipe.denoise_fn()(x, sigma)
        assert torch.allclose(guided, conditional, rtol=1e-5, atol=1e-6), s
        assert not torch.allclose(unconditional, conditional, atol=1e-3)


def test_invert_refuses_samplers_that_inject_noise():
    pipe = gmm_pipeline("eps", GMM)
    x0, _ = GMM.sample(4, torch.Generator().manual_seed(0))
    for name in ["ddpm", "euler-ancestral"]:
        with pytest.raises(ValueError, match="cannot invert"):
            pipe.invert(x0, sampler=name, input="raw", steps=10, progress=False)
    with pytest.raises(ValueError, match="cannot invert"):
        pipe.invert(x0, sampler="ddim", eta=1.0, input="raw", steps=10, progress=False)


@pytest.mark.parametrize("name", ["ddim", "dpmpp-2m", "heun"])
def test_fixed_grid_inversion_round_trips_approximately(name):
    pipe = gmm_pipeline("eps", GMM)
    x0, _ = GMM.sample(64, torch.Generator().manual_seed(0))
    z = pipe.invert(x0, sampler=name, steps=100, schedule="exponential", input="raw", progress=False)
    back = pipe.sample(64, noise=z, sampler=name, steps=100, schedule="exponential", output="raw", progress=False)
    assert float((back - x0).abs().mean()) < 0.02


@pytest.mark.parametrize("name", ["ddim", "euler", "heun"])
def test_single_step_samplers_are_undone_exactly(name):
    """invert undoes a single-step sampler step by step (accelerated fixed-point iteration): at 20 steps the round
    trip is within 1e-4 (measured 2e-6; the one-pass inversion above needs 100 steps for 2e-2 on average), and the
    recovered noise is the noise that made x."""
    pipe = gmm_pipeline("eps", GMM)
    noise = torch.randn(64, *pipe.sample_shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    x = pipe.sample(64, noise=noise, sampler=name, steps=20, output="raw", progress=False)
    z = pipe.invert(x, sampler=name, steps=20, input="raw", progress=False)
    back = pipe.sample(64, noise=z, sampler=name, steps=20, output="raw", progress=False)
    assert float((back - x).abs().max()) < 1e-4
    assert float((z - noise).abs().max()) < 1e-3


def test_flow_shift_is_a_grid_option():
    pipe = gmm_pipeline("flow", GMM)
    assert torch.equal(pipe.sigmas(10, shift=3.0), FlowSchedule(shift=3.0).sigmas(10))
    assert not torch.equal(pipe.sigmas(10, shift=3.0), pipe.sigmas(10))
    with pytest.raises(ValueError, match="flow"):
        gmm_pipeline("eps", GMM).sigmas(10, shift=3.0)


def test_unknown_options_and_samplers_are_named():
    pipe = gmm_pipeline("eps", GMM)
    with pytest.raises(TypeError, match="rtol"):
        pipe.sample(2, sampler="ddim", rtol=1e-3, progress=False)
    with pytest.raises(zoo.UnknownModelError):
        pipe.sample(2, sampler="dpm++2m", progress=False)
