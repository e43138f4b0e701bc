"""The first hour with the `zoo` command (issue "The first hour"): each refusal is one line on stderr, no
traceback, the right exit status, in under 2 seconds, leaving no file behind; outputs are written whole with the
user's umask; progress bars and threads are under the user's control.

Each case runs in its own process. Most are forked from the test process after ``import zoo`` (what a
console-script start costs on this machine, several seconds under load, is not what is being tested), and the
forked child rebuilds the registry, so a case's time covers plugin loading, argument parsing and the refusal.
One case runs the installed ``zoo`` script itself: Ctrl-C (SIGINT) in the middle of sampling.

"Under 2 seconds" is checked on the child's CPU time, which other work on a shared CI machine does not inflate,
together with a wall-time ceiling (:data:`WALL`) that any waiting (huggingface_hub's retries with back-off, 25
seconds and more) would break.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest
import torch
from PIL import Image

import zoo
import zoo.api
import zoo.progress
from zoo.cli import build_parser, image_files, main

FAST = 2.0  # CPU seconds: every refusal that needs no model
WALL = 8.0  # wall seconds: no waiting on the network (huggingface_hub's retries take 25 s)


@pytest.fixture(autouse=True)
def one_thread():
    """Sampling in tests on one thread: on a shared 2-core machine torch's default of 2 runs 10-100x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@dataclass
class Result:
    rc: int
    out: str
    err: str
    seconds: float  #: wall time, fork to exit
    cpu: float  #: the child's user + system time

    @property
    def err_lines(self) -> list[str]:
        return [line for line in self.err.splitlines() if line.strip()]


def run_forked(argv: list[str], *, env: dict[str, str | None] | None = None, cwd: Path | None = None,
               prepare: Callable[[], None] | None = None, timeout: float = 60) -> Result:
    """``zoo ARGV`` in a forked child, as the console script runs it (``sys.exit(main())``): its exit status,
    stdout, stderr, and the wall time from fork to exit."""
    folder = Path(os.environ.get("TMPDIR", "/tmp"))
    out_path, err_path = (folder / f"zoo-cli-{os.getpid()}-{time.monotonic_ns()}.{k}" for k in ("out", "err"))
    start = time.perf_counter()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        code = 1
        try:
            out_fd, err_fd = os.open(out_path, os.O_WRONLY | os.O_CREAT, 0o600), os.open(err_path, os.O_WRONLY | os.O_CREAT, 0o600)
            os.dup2(out_fd, 1)
            os.dup2(err_fd, 2)
            sys.stdout, sys.stderr = open(1, "w", closefd=False), open(2, "w", closefd=False)
            for key, value in (env or {}).items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
            if cwd is not None:
                os.chdir(cwd)
            zoo.progress.set_progress_bar_config()
            zoo.api.get_registry.cache_clear()
            if prepare is not None:
                prepare()
            try:
                sys.exit(main(argv))
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        except BaseException:  # noqa: BLE001 - what the console script would print
            traceback.print_exc()
            code = 1
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    deadline = time.monotonic() + timeout
    while True:
        done, status, usage = os.wait4(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            pytest.fail(f"zoo {' '.join(argv)} ran past {timeout} s")
        time.sleep(0.01)
    seconds = time.perf_counter() - start
    out, err = out_path.read_text(), err_path.read_text()
    out_path.unlink()
    err_path.unlink()
    return Result(os.waitstatus_to_exitcode(status), out, err, seconds, usage.ru_utime + usage.ru_stime)


def assert_refused(r: Result, *needles: str, rc: int = 2, fast: bool = True) -> None:
    assert r.rc == rc, (r.rc, r.err)
    assert "Traceback" not in r.err, r.err
    assert len(r.err_lines) == 1, r.err
    for needle in needles:
        assert needle in r.err, (needle, r.err)
    if fast:
        assert r.cpu < FAST and r.seconds < WALL, f"took {r.cpu:.2f} s CPU, {r.seconds:.2f} s wall to refuse: {r.err}"


def listing(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


# -- refusals: one line, exit 2 (or 1), fast, nothing left ----------------------------------------------------------


def test_list_matching_nothing_says_so_and_exits_1():
    r = run_forked(["list", "nothing*"])
    assert_refused(r, "no model matches 'nothing*'", rc=1)
    assert r.out == ""


@pytest.mark.parametrize("output, needle", [("out_dir/", "is a folder"), ("grid.unknown", "extension '.unknown'"),
                                            ("grid", "no extension"), ("a_file/grid.png", "is a file")])
def test_sample_refuses_an_output_it_cannot_write_before_building_the_model(tmp_path, output, needle):
    (tmp_path / "out_dir").mkdir()
    (tmp_path / "a_file").write_text("x")
    before = listing(tmp_path)
    r = run_forked(["sample", "ddpm-digits", "-o", output], cwd=tmp_path)
    assert_refused(r, needle)
    assert listing(tmp_path) == before


@pytest.mark.parametrize("weights", ["./no-such-run", "~/no-such-run", "runs/ddpm/final", "/no/such/dir"])
def test_weights_that_look_like_a_path_are_a_path(tmp_path, weights):
    r = run_forked(["sample", "ddpm-digits", "--weights", weights, "-o", "x.png"], cwd=tmp_path,
                   env={"HF_HUB_OFFLINE": None})
    assert_refused(r, "no such file or folder", repr(weights))
    assert listing(tmp_path) == []


def test_weights_naming_a_file_says_it_is_a_file(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"")
    r = run_forked(["sample", "ddpm-digits", "--weights", "model.safetensors", "-o", "x.png"], cwd=tmp_path)
    assert_refused(r, "is a file, not a folder")


@pytest.mark.parametrize("env, needle", [
    ({"HF_HUB_OFFLINE": "1"}, "offline mode is on"),
    ({"HF_HUB_OFFLINE": None, "HF_ENDPOINT": "http://127.0.0.1:9"}, "could not be reached"),  # refused port
    ({"HF_HUB_OFFLINE": None, "HF_ENDPOINT": "https://hub.invalid"}, "could not be reached"),  # no such host
])
def test_an_uncached_model_offline_fails_at_once_naming_repo_cache_and_fix(tmp_path, env, needle):
    cache = tmp_path / "cache"
    r = run_forked(["sample", "ddim-cifar", "-o", str(tmp_path / "x.png")],
                   env={"HF_HUB_CACHE": str(cache), "HF_HOME": str(tmp_path / "home"), **env})
    assert_refused(r, needle, "google/ddpm-cifar10-32", str(cache), "zoo download ddim-cifar")
    assert not (tmp_path / "x.png").exists()


def test_train_without_scikit_learn_names_the_extra(tmp_path):
    def hide_sklearn() -> None:
        for name in [m for m in sys.modules if m == "sklearn" or m.startswith("sklearn.")]:
            del sys.modules[name]
        sys.modules["sklearn"] = None  # import sklearn -> ModuleNotFoundError, as when it is not installed

    r = run_forked(["train", "ddpm-digits", "-q"], cwd=tmp_path, prepare=hide_sklearn)
    assert_refused(r, "scikit-learn", 'pip install "zoo[train]"')
    assert listing(tmp_path) == []


@pytest.mark.parametrize("out, needle", [("emb.pt", "no pickles"), ("emb.unknown", "extension '.unknown'"),
                                         ("emb/", "is a folder")])
def test_embed_out_extension_picks_the_format_and_refuses_others_first(tmp_path, out, needle):
    r = run_forked(["embed", "clip-vit-b32", "--text", "a cat", "--out", out], cwd=tmp_path)
    assert_refused(r, needle)
    assert listing(tmp_path) == []


def test_a_folder_of_no_images_is_refused_naming_it(tmp_path):
    (tmp_path / "empty").mkdir()
    r = run_forked(["classify", "vit-b16", "empty"], cwd=tmp_path)
    assert_refused(r, "empty is a folder with no image files")


def test_a_folder_of_images_stands_for_its_images_sorted(tmp_path):
    for name in ("b.png", "a.jpg", "c.txt"):
        path = tmp_path / name
        Image.new("RGB", (8, 8)).save(path) if name.endswith(("png", "jpg")) else path.write_text("notes")
    assert image_files([str(tmp_path), str(tmp_path / "b.png")]) == [
        str(tmp_path / "a.jpg"), str(tmp_path / "b.png"), str(tmp_path / "b.png")]


# -- help, progress, threads, files ---------------------------------------------------------------------------------


def test_help_is_plain_text_and_every_command_takes_quiet_and_threads():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    texts = [parser.format_help()]
    for name, sp in sub.choices.items():
        text = sp.format_help()
        texts.append(text)
        assert "-q, --quiet" in text and "--threads N" in text, name
    for text in texts:
        assert "``" not in text and ":func:" not in text and ":class:" not in text, text


def test_threads_sets_torchs_thread_count(capsys):
    before = torch.get_num_threads()
    try:
        assert main(["samplers", "--threads", "1"]) == 0
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_threads_must_be_positive(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["samplers", "--threads", "0"])
    assert exc.value.code == 2 and "positive whole number" in capsys.readouterr().err


def _sample(capsys, tmp_path, *extra: str) -> tuple[Path, str]:
    out = tmp_path / "grid.png"
    assert main(["sample", "ddpm-digits", "-n", "2", "--steps", "4", "--device", "cpu", "--threads", "1", "-o",
                 str(out), *extra]) == 0
    return out, capsys.readouterr().err


@pytest.fixture
def default_progress():
    zoo.set_progress_bar_config()
    yield
    zoo.set_progress_bar_config()


def test_sampling_shows_a_bar_by_default_and_none_when_quiet(tmp_path, capsys, monkeypatch, default_progress):
    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    monkeypatch.delenv("HF_HUB_DISABLE_PROGRESS_BARS", raising=False)
    _, err = _sample(capsys, tmp_path)
    assert "it/s" in err or "s/it" in err
    zoo.set_progress_bar_config()
    _, err = _sample(capsys, tmp_path, "-q")
    assert err == ""


@pytest.mark.parametrize("var", ["TQDM_DISABLE", "HF_HUB_DISABLE_PROGRESS_BARS"])
def test_progress_variables_are_honoured(tmp_path, capsys, monkeypatch, default_progress, var):
    monkeypatch.setenv(var, "1")
    _, err = _sample(capsys, tmp_path)
    assert err == ""


def test_one_switch_silences_every_bar_in_python(capsys, monkeypatch, default_progress):
    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    monkeypatch.delenv("HF_HUB_DISABLE_PROGRESS_BARS", raising=False)
    pipe = zoo.create("ddpm-digits", device="cpu")
    zoo.set_progress_bar_config(disable=True)
    pipe.sample(2, steps=3)
    assert capsys.readouterr().err == ""
    zoo.set_progress_bar_config(disable=False)
    assert zoo.progress.enabled() and not zoo.progress.enabled(False)
    pipe.sample(2, steps=3, progress=False)
    assert capsys.readouterr().err == ""


def test_outputs_follow_the_umask_and_leave_no_temporary_file(tmp_path, capsys, default_progress):
    old = os.umask(0o022)
    try:
        out, _ = _sample(capsys, tmp_path, "-q")
        assert (out.stat().st_mode & 0o777) == 0o644
        os.umask(0o027)
        out.unlink()
        out, _ = _sample(capsys, tmp_path, "-q")
        assert (out.stat().st_mode & 0o777) == 0o640
    finally:
        os.umask(old)
    assert listing(tmp_path) == ["grid.png"]
    assert Image.open(out).size[0] > 0


def test_ctrl_c_mid_sampling_exits_130_with_one_line_and_leaves_no_file(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TQDM_MININTERVAL": "0"}
    env.pop("TQDM_DISABLE", None)
    env.pop("HF_HUB_DISABLE_PROGRESS_BARS", None)
    proc = subprocess.Popen(["zoo", "sample", "ddpm-digits", "-n", "64", "--steps", "1000", "--sampler", "ddpm",
                             "--threads", "1", "--device", "cpu", "-o", "grid.png"], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    err = b""
    deadline = time.monotonic() + 120
    os.set_blocking(proc.stderr.fileno(), False)
    while b"it/s" not in err and b"s/it" not in err:  # the bar has drawn a step: sampling is under way
        assert proc.poll() is None, err.decode()
        assert time.monotonic() < deadline, "sampling never started"
        err += proc.stderr.read() or b""
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    os.set_blocking(proc.stderr.fileno(), True)
    err = (err + proc.communicate(timeout=60)[1]).decode()
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    lines = [line for line in err.replace("\r", "\n").splitlines() if line.strip() and "it/s" not in line
             and "s/it" not in line and "%|" not in line]
    assert lines == ["zoo: interrupted"], err
    assert listing(tmp_path) == []


def test_trained_weights_follow_the_umask(tmp_path, capsys, default_progress):
    """safetensors writes its files 0600; what `zoo train` leaves is what a plain mkdir and open give."""
    pytest.importorskip("sklearn")
    old = os.umask(0o022)
    try:
        assert main(["train", "ddpm-digits", "--steps", "2", "-q", "--threads", "1", "-o", str(tmp_path / "run")]) == 0
    finally:
        os.umask(old)
    modes = {p.name: p.stat().st_mode & 0o777 for p in [tmp_path / "run", *(tmp_path / "run").iterdir()]}
    assert modes == {"run": 0o755, "config.json": 0o644, "scheduler_config.json": 0o644,
                     "diffusion_pytorch_model.safetensors": 0o644}
    assert capsys.readouterr().err == ""  # -q: no training bar
