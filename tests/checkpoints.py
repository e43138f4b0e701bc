"""Where the real Hub repos' configs and key manifests live: ``shared/checkpoints`` beside the repo (as CI
lays it out), or wherever ``ZOO_CHECKPOINTS`` points."""
from __future__ import annotations

import os
from pathlib import Path

CHECKPOINTS = Path(os.environ.get("ZOO_CHECKPOINTS") or Path(__file__).resolve().parents[2] / "shared" / "checkpoints")
