"""The diffusion pipeline and create() refuse bad input with a message that names the problem and the fix."""
from __future__ import annotations

import pytest
import torch

import zoo
from zoo.errors import ZooError
from zoo.registry import DiscreteVPSchedule


@pytest.fixture(scope="module")
def pipe():
    return zoo.create("ddpm-digits", device="cpu")


@pytest.mark.parametrize("n", [0, -1, 2.5])
def test_sample_needs_a_positive_batch(pipe, n):
    with pytest.raises(ValueError, match="positive number of samples"):
        pipe.sample(n, steps=2, progress=False)


def test_typos_in_modes_are_refused(pipe):
    with pytest.raises(ValueError, match="output='image'"):
        pipe.sample(1, steps=2, output="image", progress=False)
    with pytest.raises(ValueError, match="input='img'"):
        pipe.invert(torch.rand(1, 1, 16, 16), steps=2, sampler="ddim", input="img", progress=False)


def test_spacing_only_applies_to_the_default_grid(pipe):
    with pytest.raises(ValueError, match="spacing='trailing'"):
        pipe.sample(1, steps=4, schedule="karras", spacing="trailing", progress=False)


@pytest.mark.parametrize("grid", [[5.0, 1.0, 0.0, 0.5], [5.0], [1.0, float("nan"), 0.0], [2.0, 1.0, -1.0]])
def test_a_sigma_grid_must_descend_to_zero_or_above(pipe, grid):
    with pytest.raises(ValueError, match="sigma grid"):
        pipe.sample(1, schedule=torch.tensor(grid), progress=False)


def test_a_valid_tensor_grid_is_used_as_given(pipe):
    images = pipe.sample(2, schedule=torch.tensor([10.0, 1.0, 0.1, 0.0]), sampler="euler", progress=False)
    assert images.shape == (2, 1, 16, 16) and pipe.last_nfe == 3


def test_invert_checks_shape_and_range(pipe):
    with pytest.raises(ValueError, match="1 channels"):
        pipe.invert(torch.rand(1, 3, 16, 16), steps=2, sampler="ddim", progress=False)
    with pytest.raises(ValueError, match=r"must be in \[0, 1\]"):
        pipe.invert(torch.rand(1, 1, 16, 16) * 255, steps=2, sampler="ddim", progress=False)


def test_timestep_spacing_in_a_scheduler_config_is_the_default():
    config = {"beta_schedule": "linear", "num_train_timesteps": 1000}
    leading = DiscreteVPSchedule.from_scheduler_config(config)
    trailing = DiscreteVPSchedule.from_scheduler_config({**config, "timestep_spacing": "trailing"})
    assert torch.equal(trailing.sigmas(10), leading.sigmas(10, "trailing"))
    assert not torch.equal(trailing.sigmas(10), leading.sigmas(10))


def test_trained_betas_keep_set_alpha_to_one():
    betas = torch.linspace(1e-4, 0.02, 1000).tolist()
    schedule = DiscreteVPSchedule.from_scheduler_config({"trained_betas": betas, "set_alpha_to_one": False})
    assert schedule.sigmas(10)[-1] > 0  # lands on abar_0, as DDIMScheduler(set_alpha_to_one=False) does


def test_create_names_unknown_options_and_what_the_family_takes():
    with pytest.raises(TypeError, match="unknown option.*foo"):
        zoo.create("vit-ti16", pretrained=False, device="cpu", foo=1)


def test_create_refuses_weights_with_pretrained_false():
    with pytest.raises(ZooError, match="pretrained=False"):
        zoo.create("ddpm-digits", weights="/nonexistent", pretrained=False)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_cuda_without_a_gpu_is_a_clear_error():
    with pytest.raises(ZooError, match="no CUDA GPU"):
        zoo.create("ddpm-digits", device="cuda")
