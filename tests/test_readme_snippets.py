"""Every Python snippet in README.md runs as written (issue "The first hour").

Two checks over the README's ```python blocks, read in order as a reader runs them (one namespace, so a block
may use what an earlier block defined):

* every name a block uses is defined by then: by the block, an earlier block, an import, or Python itself. A
  snippet that uses ``images`` it never made fails here, whatever models it needs;
* every block whose models all ship with zoo (entries with packaged weights, such as ``ddpm-digits``) is run, in
  a temporary folder, offline, on one thread. A block that needs Hub weights is skipped, naming the models it
  needs: the Hub is not reachable from the tests, and those families' numerics are covered by their parity tests
  on fixture checkpoints.
"""
from __future__ import annotations

import ast
import builtins
import re
from pathlib import Path

import pytest
import torch

import zoo

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def blocks() -> list[tuple[int, str]]:
    text = README.read_text()
    return [(text[:m.start()].count("\n") + 1, m.group(1)) for m in BLOCK.finditer(text)]


def defined_and_used(source: str) -> tuple[set[str], list[tuple[str, int]]]:
    """Names a block binds (anywhere: assignments, imports, defs, loop targets, walrus, comprehension targets) and
    the names it loads before binding them, in order, with their lines."""
    tree = ast.parse(source)
    bound: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and isinstance(node.ctx, (ast.Store, ast.Del)):
            bound.add(node.id)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            bound.update((a.asname or a.name).split(".")[0] for a in node.names)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            bound.add(node.name)
        elif isinstance(node, ast.arg):
            bound.add(node.arg)
    used = [(n.id, n.lineno) for n in ast.walk(tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)]
    return bound, used


def models_in(source: str) -> list[str]:
    return re.findall(r"zoo\.create\(\s*[\"']([^\"']+)[\"']", source)


def test_readme_has_python_snippets():
    assert len(blocks()) >= 5


def test_every_snippet_uses_only_names_defined_by_then():
    known = set(dir(builtins))
    problems = []
    for line, source in blocks():
        bound, used = defined_and_used(source)
        missing = sorted({name for name, _ in used if name not in known and name not in bound})
        if missing:
            problems.append(f"README.md line {line}: {', '.join(missing)} used but never defined")
        known |= bound
    assert not problems, "\n".join(problems)


def shipped(name: str) -> bool:
    return zoo.get_entry(name).repo_id is None


@pytest.mark.parametrize("line, source", blocks(), ids=[f"line-{line}" for line, _ in blocks()])
def test_offline_snippets_run(line, source, tmp_path, monkeypatch):
    needs = [m for m in models_in(source) if not shipped(m)]
    if needs:
        pytest.skip(f"needs Hub weights ({', '.join(sorted(set(needs)))}); the tests have no network")
    if not models_in(source):
        pytest.skip("loads no model (its names are checked by test_every_snippet_uses_only_names_defined_by_then)")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    zoo.set_progress_bar_config(disable=True)
    namespace: dict = {}
    try:
        for start, earlier in blocks():  # the blocks before this one first: a snippet may build on them
            if start >= line:
                break
            if all(shipped(m) for m in models_in(earlier)) and models_in(earlier):
                exec(compile(earlier, str(README), "exec"), namespace)
        exec(compile(source, f"README.md line {line}", "exec"), namespace)
    finally:
        torch.set_num_threads(threads)
        zoo.set_progress_bar_config()
