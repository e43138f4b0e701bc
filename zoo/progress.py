"""Progress bars: on by default, off for the whole process with one switch, as in diffusers and tqdm.

A bar shows when the call asked for one (``progress=True``, every long call's default) and nothing turned bars
off. Three things turn them off, whichever comes first:

* ``zoo.set_progress_bar_config(disable=True)`` (diffusers' ``pipe.set_progress_bar_config`` is the model; here
  it is one switch for the process, since zoo's pipelines are not the only long calls), or ``zoo -q``;
* ``TQDM_DISABLE=1``, tqdm's own variable (tqdm reads it only for bars whose caller left ``disable`` unset, so
  zoo reads it here, when each bar starts);
* ``HF_HUB_DISABLE_PROGRESS_BARS=1``, huggingface_hub's variable, which also silences its download bars.

Download bars stay huggingface_hub's own; :func:`set_progress_bar_config` turns them off and on with zoo's.
"""
from __future__ import annotations

import os
from typing import Any

_TRUE = {"1", "on", "yes", "true"}
_config: dict[str, Any] = {"disable": None}


def set_progress_bar_config(disable: bool | None = None, **tqdm_kwargs: Any) -> None:
    """Turn zoo's progress bars off (``disable=True``) or on again (``False``) for this process.

    ``disable=None`` goes back to the default: bars on unless ``TQDM_DISABLE`` or
    ``HF_HUB_DISABLE_PROGRESS_BARS`` says otherwise. Other keyword arguments (``leave=``, ``ncols=``, ``file=``,
    ...) are passed to every tqdm bar zoo draws. huggingface_hub's download bars follow ``disable``.
    """
    _config.clear()
    _config.update(tqdm_kwargs, disable=disable)
    try:
        from huggingface_hub.utils import disable_progress_bars, enable_progress_bars
    except ImportError:  # pragma: no cover - very old huggingface_hub
        return
    if disable:
        disable_progress_bars()
    elif disable is False and not _env_disabled():
        enable_progress_bars()


def get_progress_bar_config() -> dict[str, Any]:
    """What :func:`set_progress_bar_config` last set (``{"disable": None}`` by default)."""
    return dict(_config)


def _env_disabled() -> bool:
    return any(os.environ.get(var, "").strip().lower() in _TRUE
               for var in ("TQDM_DISABLE", "HF_HUB_DISABLE_PROGRESS_BARS"))


def enabled(progress: bool | None = True) -> bool:
    """Whether a call that asked for ``progress`` draws a bar now: the switch, then the variables, then the call."""
    if _config.get("disable") is True or progress is False:
        return False
    if _config.get("disable") is False:
        return progress is not False
    return not _env_disabled()


def progress_bar(*args: Any, progress: bool | None = True, **kwargs: Any):
    """A ``tqdm.auto.tqdm`` bar that follows :func:`enabled` and the configured tqdm options."""
    from tqdm.auto import tqdm

    options = {k: v for k, v in _config.items() if k != "disable"}
    options.update(kwargs)
    return tqdm(*args, disable=not enabled(progress), **options)
