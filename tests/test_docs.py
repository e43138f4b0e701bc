"""Documentation references in the code point at files that exist.
"""
from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

def test_plugins_point_at_documentation_that_exists():
    """Before: plugins/samplers/__init__.py sent readers to docs/samplers-contributing.md, which is gone."""
    for source in (ROOT / "plugins").rglob("*.py"):
        for ref in re.findall(r"\b((?:docs/)?[\w.-]+\.md)\b", source.read_text()):
            assert (ROOT / ref).is_file(), f"{source.relative_to(ROOT)} refers to {ref}, which does not exist"
    assert "CONTRIBUTING.md" in (ROOT / "plugins" / "samplers" / "__init__.py").read_text()
    assert "\n## Adding a sampler\n" in (ROOT / "CONTRIBUTING.md").read_text()
