"""Shared fixtures: an isolated Hugging Face cache, a local Hub stand-in, and offline mode.

How huggingface_hub is pointed at them: through the environment, read per call. huggingface_hub copies
``HF_ENDPOINT``, ``HF_HUB_CACHE`` and ``HF_HUB_OFFLINE`` into ``huggingface_hub.constants`` when it is imported,
so setting them later would not reach it; ``zoo.hub.settings()`` reads them on every call and passes them to
``hf_hub_download`` as ``endpoint=``, ``cache_dir=`` and ``local_files_only=``. A test therefore only sets
environment variables, exactly as a user would. The one exception is ``constants.HF_HUB_OFFLINE``: when the test
process itself was started offline (``HF_HUB_OFFLINE=1 pytest``), huggingface_hub's HTTP client refuses every
request no matter what zoo passes, so the online fixtures turn that flag off and ``offline`` turns it on.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Iterator

import pytest
from huggingface_hub import constants as hf_constants

import zoo
from hubserver import HubServer
from zoo.registry import build_registry


@pytest.fixture
def hf_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty Hugging Face cache of this test's own (``HF_HOME`` and ``HF_HUB_CACHE``), online mode."""
    home = tmp_path / "hf_home"
    cache = home / "hub"
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HUGGINGFACE_HUB_CACHE", "HF_ENDPOINT"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
    return cache


@pytest.fixture
def hub_server(hf_cache: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[HubServer]:
    """A Hub stand-in on 127.0.0.1 that ``HF_ENDPOINT`` points at, with an isolated cache.

    ``hub_server.add_repo(repo_id, directory_or_files, commit="<40 hex>")`` publishes a repo; see
    ``tests/hubserver.py`` for request logging, faults (``fault``) and ``stop()``.
    """
    server = HubServer()
    monkeypatch.setenv("HF_ENDPOINT", server.endpoint)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def offline(hf_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``HF_HUB_OFFLINE=1`` in effect, for zoo and for huggingface_hub's own client, over an isolated cache.

    (It builds on ``hf_cache`` so that it always applies after it, whatever order a test lists them in. To go
    offline halfway through a test, ``monkeypatch.setenv("HF_HUB_OFFLINE", "1")`` is enough for zoo.)
    """
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)


class ShellPayload:
    """Unpickling this runs ``touch MARKER`` through os.system: what a hostile pickle checkpoint does."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.fixture
def shell_payload(tmp_path: Path) -> tuple[ShellPayload, Path]:
    """An object to pickle into a checkpoint, and the file that appears if anything ever unpickles it."""
    marker = tmp_path / "pwned"
    return ShellPayload(marker), marker


@pytest.fixture
def use_registry(monkeypatch: pytest.MonkeyPatch) -> Callable[..., None]:
    """Let zoo.create / zoo.list_models see a registry built here from plugin objects, by the real
    build_registry (``use_registry(plugin, ...)``; no entry points)."""
    def install(*plugins: object) -> None:
        reg = build_registry(plugins, entry_points=False)
        monkeypatch.setattr(zoo.api, "get_registry", lambda: reg)
    return install


@pytest.fixture
def eager_winograd(monkeypatch: pytest.MonkeyPatch) -> None:
    """Run WinogradConv2d's transforms uncompiled: the same functions, without a compile per layer shape (10-30 s
    of C++ each on a cold cache). The compiled path is tests/test_winograd.py's own subject."""
    import zoo.winograd

    monkeypatch.setattr(zoo.winograd, "_compiled", (zoo.winograd.transform_input, zoo.winograd.transform_output))
