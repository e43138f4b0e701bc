"""DDPM scheduler configs zoo cannot sample as diffusers would are refused, naming the key, the value and what is
supported; those it can sample load.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

import zoo
from zoo.plugins.ddpm import DIGITS_DIR

def _digits_with(tmp_path: Path, **changes) -> Path:
    folder = tmp_path / "digits"
    shutil.copytree(DIGITS_DIR, folder)
    config = json.loads((folder / "scheduler_config.json").read_text())
    (folder / "scheduler_config.json").write_text(json.dumps({**config, **changes}))
    return folder


@pytest.mark.parametrize("key, value, supported", [
    ("rescale_betas_zero_snr", True, "false"),
    ("thresholding", True, "false"),
    ("variance_type", "learned", "fixed_small, fixed_small_log, fixed_large"),
    ("variance_type", "learned_range", "fixed_small, fixed_small_log, fixed_large"),
    ("beta_schedule", "sigmoid", "linear, scaled_linear, squaredcos_cap_v2"),
])
def test_scheduler_config_zoo_cannot_sample_is_refused(tmp_path, key, value, supported):
    """Before: the first four loaded and sampled wrongly; an unknown beta_schedule failed without naming the file."""
    folder = _digits_with(tmp_path, **{key: value})
    with pytest.raises(ValueError) as err:
        zoo.create("ddpm-digits", weights=folder, device="cpu")
    message = str(err.value)
    assert "scheduler_config.json" in message and f"{key}={json.dumps(value)}" in message, message
    assert supported in message, message


@pytest.mark.parametrize("changes", [{"rescale_betas_zero_snr": False, "thresholding": False},
                                     {"variance_type": "fixed_large"}, {"variance_type": "fixed_small_log"},
                                     {"beta_schedule": "squaredcos_cap_v2"},
                                     {"beta_schedule": "sigmoid", "trained_betas": [1e-4] * 1000}])
def test_scheduler_config_zoo_can_sample_loads(tmp_path, changes):
    assert zoo.create("ddpm-digits", weights=_digits_with(tmp_path, **changes), device="cpu") is not None
