"""Where the real Hub repos' configs and key manifests live for the tests: ``tests/checkpoints/`` in the repo.

Each folder ``<org>__<repo>/`` holds a real repo's own JSON files (configs, preprocessing, tokenizer configs) under
their real names and subfolders, ``manifest.json`` (every tensor of its weight file: name, shape, dtype) and
``NOTES.md``. They are copies of the project's shared checkpoint notes, kept in the repo so that a fresh clone
tests on its own; ``tests/test_manifests.py`` checks that the copy has not drifted when the shared folder is
there (``ZOO_SHARED_CHECKPOINTS``, or ``shared/checkpoints`` beside the repo).
"""
from __future__ import annotations

import os
from pathlib import Path

CHECKPOINTS = Path(__file__).resolve().parent / "checkpoints"
#: the shared source of the copy, when this checkout sits beside it (CI does; a user's clone does not).
SHARED = Path(os.environ.get("ZOO_SHARED_CHECKPOINTS") or Path(__file__).resolve().parents[2] / "shared" / "checkpoints")
