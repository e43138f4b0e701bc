"""Real photos run through every Swin entry (see ``test_vit_photos.py``), including the four stage maps."""
from __future__ import annotations

import pytest

import zoo
from test_vit_photos import run_photos


@pytest.mark.parametrize("name", zoo.list_models(family="swin"))
def test_photos_through_swin(name):
    run_photos(name)
