"""``zoo train ddpm-digits`` replaces its output folder whole, refuses a folder holding other files, and trains on
diffusers' own schedule.
"""
from __future__ import annotations

import importlib
import shutil
from pathlib import Path

import pytest
import torch

import zoo
from zoo.errors import ZooError
from zoo.plugins.ddpm import DIGITS_DIR
from zoo.registry import DiscreteVPSchedule

OUTPUT = {"config.json", "scheduler_config.json", "diffusion_pytorch_model.safetensors"}


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir()}


def test_train_replaces_an_earlier_run_and_leaves_nothing_beside_it(tmp_path):
    pytest.importorskip("sklearn")
    from zoo.plugins.ddpm.train_digits import train

    out = tmp_path / "digits"
    shutil.copytree(DIGITS_DIR, out)  # an earlier run's folder
    (out / "config.json").write_text("{}")  # ... damaged
    assert train(out, steps=2, batch_size=8, progress=False) == out
    assert {p.name for p in out.iterdir()} == OUTPUT
    assert [p.name for p in tmp_path.iterdir()] == ["digits"]  # no temporary or old folder left
    pipe = zoo.create("ddpm-digits", weights=out, device="cpu")
    assert pipe.sample(2, steps=2, progress=False).shape == (2, 1, 16, 16)


def test_train_that_fails_while_writing_leaves_the_old_folder_as_it_was(tmp_path, monkeypatch):
    """Before: the new weights were already in the folder beside the old configs (a mixed folder)."""
    pytest.importorskip("sklearn")
    train_digits = importlib.import_module("zoo.plugins.ddpm.train_digits")  # the package exports train as train_digits

    out = tmp_path / "digits"
    shutil.copytree(DIGITS_DIR, out)
    before = _snapshot(out)

    class DiskFull:
        @staticmethod
        def dumps(*args, **kwargs):
            raise OSError(28, "No space left on device")

    monkeypatch.setattr(train_digits, "json", DiskFull)  # fails after the weights file is written
    with pytest.raises(OSError, match="No space left"):
        train_digits.train(out, steps=2, batch_size=8, progress=False)
    assert _snapshot(out) == before
    assert [p.name for p in tmp_path.iterdir()] == ["digits"]


def test_train_refuses_a_folder_holding_other_files_before_training(tmp_path, monkeypatch):
    """The folder is replaced as a whole, so one holding anything else is refused, and before any training."""
    train_digits = importlib.import_module("zoo.plugins.ddpm.train_digits")  # the package exports train as train_digits

    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    monkeypatch.setattr(train_digits, "load_digits_images", lambda: pytest.fail("training started"))
    with pytest.raises(ZooError, match="notes.txt"):
        train_digits.train(out, steps=2, batch_size=8, progress=False)
    assert _snapshot(out) == {"notes.txt": b"keep me"}


def test_training_schedule_is_diffusers():
    """train uses zoo's own DiscreteVPSchedule (float32 as diffusers computes it): the numbers are diffusers'."""
    diffusers = pytest.importorskip("diffusers")
    from zoo.plugins.ddpm.train_digits import SCHEDULER_CONFIG

    ours = DiscreteVPSchedule.from_scheduler_config(SCHEDULER_CONFIG).alphas_cumprod.to(torch.float32)
    config = {k: v for k, v in SCHEDULER_CONFIG.items() if not k.startswith("_")}
    assert torch.equal(ours, diffusers.DDPMScheduler(**config).alphas_cumprod)
