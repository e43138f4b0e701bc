"""The README's model table is generated from the registry and must not drift from it."""
from __future__ import annotations

import importlib.metadata
import re
from pathlib import Path

import zoo
from zoo.cli import models_table

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCK = re.compile(r"(<!-- models-table.*?-->\n)(.*?)(<!-- /models-table -->)", re.S)


# Only zoo's own plugins: CI also installs the example third-party plugin, which must not change the README.
BUILTIN = {ep.name for ep in importlib.metadata.distribution("zoo").entry_points if ep.group == "zoo"}


def current_table() -> str:
    return models_table([n for n in zoo.list_models() if zoo.get_entry(n).plugin in BUILTIN]) + "\n"


def test_readme_model_table_is_current():
    match = BLOCK.search(README.read_text())
    assert match, "README.md lost its models-table markers"
    assert match.group(2) == current_table(), (
        "README model table is stale: run `python tests/test_readme.py` to regenerate it")


if __name__ == "__main__":  # regenerate
    text = README.read_text()
    README.write_text(BLOCK.sub(lambda m: m.group(1) + current_table() + m.group(3), text))
    print("README.md model table regenerated")
