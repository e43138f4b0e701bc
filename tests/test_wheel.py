"""A wheel built from the repo installs into a fresh virtual environment and runs, away from the source tree.

The venv sees the test environment's site-packages for torch and friends (downloading 3 GB again proves
nothing), but zoo itself must come from the wheel: the test checks where it was imported from, and that the wheel
installs no generic top-level names such as ``registry`` or ``plugins``.

"The test environment's" is not the system's when the tests run inside a virtualenv: ``venv
--system-site-packages`` made from a venv links the *base* interpreter's site-packages, which lack the outer
venv's torch. So the new venv gets a ``.pth`` file naming the running interpreter's site-packages folders, as
plain path entries: their own ``.pth`` files (the editable install of zoo among them) are not run, so the only
zoo the new venv can import is the wheel's.
"""
from __future__ import annotations

import shutil
import site
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    pytest.importorskip("build")
    out = tmp_path_factory.mktemp("dist")
    # Build from a copy of the source without any earlier build output: setuptools reuses ./build, and files
    # left there by an older checkout (a module since moved) would ship in the wheel.
    source = tmp_path_factory.mktemp("source") / "zoo"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(".git", "build", "dist", "*.egg-info", "__pycache__",
                                                                ".venv*", ".whl", ".pytest_cache", "checkpoints"))
    # --no-isolation builds with this environment's setuptools, which must meet pyproject's build requirement; a
    # virtualenv's bundled copy may be older (65 in Python 3.11's venv), and is then left to pip's isolated build.
    from importlib.metadata import version

    from packaging.version import Version

    flags = ["--no-isolation"] if Version(version("setuptools")) >= Version("70.1") else []
    subprocess.run([sys.executable, "-m", "build", "--wheel", *flags, "--outdir", str(out), str(source)],
                   check=True, capture_output=True)
    (whl,) = out.glob("zoo-*.whl")
    return whl


def test_wheel_keeps_everything_under_the_zoo_namespace(wheel: Path):
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names if not n.split("/")[0].endswith((".dist-info", ".data"))}
    assert top == {"zoo"}, f"wheel installs top-level names {sorted(top)}"
    assert "zoo/registry/contracts.py" in names and "zoo/plugins/ddpm/__init__.py" in names
    assert any(n.startswith("zoo/plugins/ddpm/weights/ddpm-digits/") and n.endswith(".safetensors") for n in names), \
        "the offline default model's weights must ship in the wheel"
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert "[zoo]" in text and "ddpm = zoo.plugins.ddpm" in text


def test_wheel_installs_and_samples_in_a_fresh_venv(wheel: Path, tmp_path: Path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True)
    py = venv / "bin" / "python"
    inner = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                           check=True, capture_output=True, text=True).stdout.strip()
    outer = [p for p in site.getsitepackages() if Path(p).is_dir()]
    (Path(inner) / "_test_environment.pth").write_text("".join(f"{p}\n" for p in outer))
    subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)], check=True)
    where = subprocess.run([str(py), "-c", "import zoo, zoo.registry, zoo.plugins.ddpm; print(zoo.__file__)"],
                           cwd=tmp_path, check=True, capture_output=True, text=True).stdout.strip()
    assert Path(where).is_relative_to(venv), f"zoo was imported from {where}, not from the wheel"
    png = tmp_path / "digits.png"
    env = {"HF_HUB_OFFLINE": "1", "PATH": f"{venv / 'bin'}:/usr/bin:/bin", "HOME": str(tmp_path)}
    result = subprocess.run([str(venv / "bin" / "zoo"), "sample", "ddpm-digits", "-n", "4", "--steps", "5",
                             "--device", "cpu", "-o", str(png)], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert png.stat().st_size > 0
