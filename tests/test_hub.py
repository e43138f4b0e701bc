"""Hub I/O for real: zoo.create and zoo.hub against a local Hub stand-in over HTTP, with an isolated cache.

Nothing is mocked: huggingface_hub makes its real requests to ``tests/hubserver.py`` on 127.0.0.1 (see
``conftest.py`` for how it is pointed there), writes the real cache layout, and the model is built by a real
builder that loads the files through ``zoo.weights``.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import types
from pathlib import Path
from typing import Callable

import pytest
import torch
from safetensors.torch import save as save_safetensors
from torch import nn

import zoo
import zoo.api
from hubserver import HubServer, git_blob_sha1
from zoo import hub
from zoo.errors import (CorruptWeightsError, DownloadError, MissingFileError, OfflineError, UnsafeWeightsError,
                        ZooError)
from zoo.registry import Encoder, ModelEntry, build_registry, hookimpl
from zoo.weights import load_into, load_state_dict, read_json

REPO = "zoo-test/tiny"
COMMIT = hashlib.sha1(b"tiny, first commit").hexdigest()
COMMIT_2 = hashlib.sha1(b"tiny, second commit").hexdigest()
WEIGHTS = ("model.safetensors", "pytorch_model.bin")
MiB = 1 << 20


class Tiny(Encoder):
    """A linear map of (N, d_in) vectors: the smallest Encoder with weights to download."""

    image_size = (1, 1)

    def __init__(self, d_in: int = 4, d_out: int = 3):
        super().__init__()
        self.proj = nn.Linear(d_in, d_out)

    def preprocess(self, x) -> torch.Tensor:
        return torch.as_tensor(x, device=self.device, dtype=self.dtype)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


BUILT: list[Path] = []  # every directory a build received: a test can check that a bad file never got there


def build_tiny(entry: ModelEntry, files: Path | None, *, device: torch.device, dtype: torch.dtype) -> Tiny:
    config = read_json(files / "config.json") if files is not None else {}
    model = Tiny(config.get("d_in", 4), config.get("d_out", 3))
    if files is not None:
        BUILT.append(files)
        weights = hub.pick(files, entry.files[1])
        load_into(model, load_state_dict(weights), source=str(weights))
    return model.to(device=device, dtype=dtype)


def tiny_entry(name: str = "tiny-hub", revision: str | None = COMMIT, **kwargs) -> ModelEntry:
    return ModelEntry(name=name, family="tiny", interface="encoder", build=build_tiny, repo_id=REPO,
                      revision=revision, files=("config.json", WEIGHTS), **kwargs)


def state(seed: int, d_in: int = 4, d_out: int = 3) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return {k: v.detach().clone() for k, v in Tiny(d_in, d_out).state_dict().items()}


def repo_files(seed: int = 0, *, d_in: int = 4, d_out: int = 3, safetensors: bool = True, bin: bool = False,
               bin_seed: int | None = None) -> dict[str, bytes]:
    files = {"config.json": json.dumps({"d_in": d_in, "d_out": d_out}).encode()}
    if safetensors:
        files["model.safetensors"] = save_safetensors(state(seed, d_in, d_out))
    if bin:
        buf = io.BytesIO()
        torch.save(state(seed if bin_seed is None else bin_seed, d_in, d_out), buf)
        files["pytorch_model.bin"] = buf.getvalue()
    return files


def same_weights(model: nn.Module, expected: dict[str, torch.Tensor]) -> bool:
    return all(torch.equal(v, expected[k]) for k, v in model.state_dict().items())


def repo_dir(cache: Path, repo_id: str = REPO) -> Path:
    return cache / f"models--{repo_id.replace('/', '--')}"


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def registry_with(monkeypatch: pytest.MonkeyPatch) -> Callable[..., None]:
    """Make zoo.create see the given entries: a real registry, built by build_registry from a plugin object."""
    def install(*entries: ModelEntry) -> None:
        plugin = types.ModuleType("test_hub_plugin")
        plugin.zoo_models = hookimpl(lambda: list(entries))
        reg = build_registry((plugin,), entry_points=False)
        monkeypatch.setattr(zoo.api, "get_registry", lambda: reg)
    BUILT.clear()
    return install


# -- downloading and the cache ---------------------------------------------------------------------------------

def test_first_create_downloads_and_a_cached_second_create_makes_no_request(hub_server: HubServer, hf_cache: Path,
                                                                             registry_with):
    files = repo_files(seed=0)
    hub_server.add_repo(REPO, files, commit=COMMIT)
    registry_with(tiny_entry())

    model = zoo.create("tiny-hub", device="cpu")
    assert same_weights(model, state(0))
    seen = {(r.method, r.origin, r.filename) for r in hub_server.requests}
    assert seen == {("HEAD", "hub", "config.json"), ("GET", "hub", "config.json"),
                    ("HEAD", "hub", "model.safetensors"), ("GET", "cdn", "model.safetensors")}
    # the cache holds each file once, named by its hash: sha256 for LFS weights, git's sha1 for small files
    blobs = {p.name for p in (repo_dir(hf_cache) / "blobs").iterdir()}
    assert sha256(files["model.safetensors"]) in blobs and len(blobs) == 2
    assert (repo_dir(hf_cache) / "snapshots" / COMMIT / "model.safetensors").is_symlink()

    hub_server.clear()
    again = zoo.create("tiny-hub", device="cpu")
    assert same_weights(again, state(0))
    assert hub.fetch(tiny_entry()) == repo_dir(hf_cache) / "snapshots" / COMMIT
    assert hub_server.requests == [], "a pinned, cached model must not touch the network"


def test_pinned_revision_is_what_is_requested_and_served(hub_server: HubServer, registry_with):
    hub_server.add_repo(REPO, repo_files(seed=0), commit=COMMIT)
    hub_server.add_repo(REPO, repo_files(seed=1), commit=COMMIT_2)  # main moves on; the entry stays pinned
    registry_with(tiny_entry(revision=COMMIT))

    model = zoo.create("tiny-hub", device="cpu")
    assert same_weights(model, state(0)) and not same_weights(model, state(1))
    hub_requests = [r for r in hub_server.requests if r.origin == "hub"]
    assert hub_requests and all(f"/resolve/{COMMIT}/" in r.path for r in hub_requests)


def test_an_entry_without_a_verified_commit_fetches_main_and_says_so(hub_server: HubServer, registry_with):
    hub_server.add_repo(REPO, repo_files(seed=0), commit=COMMIT)
    hub_server.add_repo(REPO, repo_files(seed=1), commit=COMMIT_2)  # main is the latest commit
    registry_with(tiny_entry(revision=None))

    with pytest.warns(hub.UnpinnedRevisionWarning, match="no verified commit of zoo-test/tiny"):
        model = zoo.create("tiny-hub", device="cpu")
    assert same_weights(model, state(1))
    # once main resolved to a commit, every later file of the same fetch comes from that commit
    assert any(f"/resolve/{COMMIT_2}/" in r.path for r in hub_server.requests if r.origin == "hub")


def test_a_branch_name_is_not_accepted_as_a_pin():
    with pytest.raises(ValueError, match="40-hex commit hash"):
        tiny_entry(revision="main")


def test_interrupted_transfer_resumes_with_a_range_request_and_is_never_visible_partial(
        hub_server: HubServer, hf_cache: Path, registry_with):
    # huggingface_hub writes in 10 MiB chunks and resumes from the last whole chunk it wrote, so the file must be
    # larger than that for a Range request to be worth sending: 1024 x 3072 floats, 12.6 MB.
    files = repo_files(seed=0, d_in=1024, d_out=3072)
    etag = sha256(files["model.safetensors"])
    hub_server.add_repo(REPO, files, commit=COMMIT)
    registry_with(tiny_entry())
    blobs = repo_dir(hf_cache) / "blobs"
    pointer = repo_dir(hf_cache) / "snapshots" / COMMIT / "model.safetensors"
    # While the client is mid-download (the server has sent 11 MiB and is about to drop the connection), look
    # at the cache: only a temporary *.incomplete file may hold the bytes.
    cut = hub_server.fault("model.safetensors", "cut", after=11 * MiB,
                           on_trigger=lambda: (sorted(os.listdir(blobs)), pointer.exists()))

    model = zoo.create("tiny-hub", device="cpu")

    assert cut.fired
    names, pointer_existed = cut.observed
    assert etag not in names and not pointer_existed
    assert any(n.startswith(etag) and n.endswith(".incomplete") for n in names), names
    gets = hub_server.gets("model.safetensors")
    assert len(gets) == 2 and gets[0].range is None
    assert gets[1].range_start is not None and 0 < gets[1].range_start <= 11 * MiB, gets[1]
    assert same_weights(model, state(0, 1024, 3072))
    assert sorted(os.listdir(blobs)) == sorted([etag, git_blob_sha1(files["config.json"])])


def test_a_download_that_fails_keeps_nothing_and_the_next_call_downloads_again(
        hub_server: HubServer, hf_cache: Path, registry_with):
    files = repo_files(seed=0)
    hub_server.add_repo(REPO, files, commit=COMMIT)
    registry_with(tiny_entry())
    hub_server.fault("model.safetensors", "cut", after=100)  # connection dropped: huggingface_hub retries once...
    hub_server.fault("model.safetensors", "status", status=503)  # ...and the retry fails for good

    with pytest.raises(DownloadError, match="tiny-hub") as err:
        zoo.create("tiny-hub", device="cpu")
    assert "run the same call again" in str(err.value)
    blobs = repo_dir(hf_cache) / "blobs"
    assert not [n for n in os.listdir(blobs) if n.endswith(".incomplete")], "a partial file was left behind"
    assert sha256(files["model.safetensors"]) not in os.listdir(blobs)
    assert not (repo_dir(hf_cache) / "snapshots" / COMMIT / "model.safetensors").exists()
    assert not BUILT

    hub_server.clear()
    model = zoo.create("tiny-hub", device="cpu")
    assert same_weights(model, state(0))
    # huggingface_hub 2.x does not resume across calls (the failed call deleted its temporary file): a full GET
    (get,) = hub_server.gets("model.safetensors")
    assert get.range is None


@pytest.mark.parametrize("filename", ["model.safetensors", "config.json"])
def test_corrupted_download_never_reaches_the_model_and_is_removed(hub_server: HubServer, hf_cache: Path,
                                                                   registry_with, filename: str):
    files = repo_files(seed=0)
    hub_server.add_repo(REPO, files, commit=COMMIT)
    registry_with(tiny_entry())
    hub_server.fault(filename, "corrupt")  # right size, wrong bytes: only a hash check can tell

    with pytest.raises(CorruptWeightsError, match="does not match the hash"):
        zoo.create("tiny-hub", device="cpu")
    assert not BUILT, "the builder was handed a corrupted file"
    snapshot = repo_dir(hf_cache) / "snapshots" / COMMIT
    assert not os.path.lexists(snapshot / filename)
    blobs = os.listdir(repo_dir(hf_cache) / "blobs")
    good = sha256(files[filename]) if filename.endswith(".safetensors") else None
    assert good is None or good not in blobs

    hub_server.clear()
    model = zoo.create("tiny-hub", device="cpu")  # a retry downloads the file again, intact this time
    assert same_weights(model, state(0))
    assert len(hub_server.gets(filename)) == 1


def test_truncated_download_is_refused(hub_server: HubServer, hf_cache: Path, registry_with):
    files = repo_files(seed=0)
    hub_server.add_repo(REPO, files, commit=COMMIT)
    registry_with(tiny_entry())
    hub_server.fault("model.safetensors", "truncate", after=64)  # a short body with a matching Content-Length

    with pytest.raises(CorruptWeightsError, match="truncated"):
        zoo.create("tiny-hub", device="cpu")
    assert not BUILT
    assert os.listdir(repo_dir(hf_cache) / "blobs") == [git_blob_sha1(files["config.json"])]

    model = zoo.create("tiny-hub", device="cpu")
    assert same_weights(model, state(0))


def test_file_damaged_in_the_cache_is_detected_deleted_and_downloaded_again(hub_server: HubServer, hf_cache: Path,
                                                                            registry_with):
    files = repo_files(seed=0)
    hub_server.add_repo(REPO, files, commit=COMMIT)
    registry_with(tiny_entry())
    zoo.create("tiny-hub", device="cpu")
    etag = sha256(files["model.safetensors"])
    blob = repo_dir(hf_cache) / "blobs" / etag
    assert (repo_dir(hf_cache) / ".zoo-verified" / etag).is_file()  # hashed once, not on every create

    blob.write_bytes(files["model.safetensors"][:-10])  # e.g. a disk that filled up while copying the cache
    BUILT.clear()
    with pytest.raises(CorruptWeightsError, match="deleted"):
        zoo.create("tiny-hub", device="cpu")
    assert not BUILT and not blob.exists()

    hub_server.clear()
    assert same_weights(zoo.create("tiny-hub", device="cpu"), state(0))
    assert len(hub_server.gets("model.safetensors")) == 1


def test_a_blob_altered_in_place_with_its_stamp_intact_is_caught_by_verify(hub_server: HubServer, hf_cache: Path,
                                                                            registry_with, capsys):
    """The stamp (size, mtime, inode) is what load trusts, as the README says; `zoo verify` re-hashes."""
    from zoo.cli import main

    files = repo_files(seed=0)
    hub_server.add_repo(REPO, files, commit=COMMIT)
    registry_with(tiny_entry())
    zoo.create("tiny-hub", device="cpu")
    blob = repo_dir(hf_cache) / "blobs" / sha256(files["model.safetensors"])
    before = blob.stat()
    data = bytearray(blob.read_bytes())
    data[-1] ^= 0xFF  # one flipped bit in the last weight, same size
    with open(blob, "r+b") as f:  # in place: the inode stays
        f.write(data)
    os.utime(blob, ns=(before.st_atime_ns, before.st_mtime_ns))  # and the mtime is put back
    assert blob.stat().st_ino == before.st_ino
    zoo.create("tiny-hub", device="cpu")  # the stamp still matches: not re-hashed on load (documented)

    assert main(["verify", "tiny-hub"]) == 1
    out = capsys.readouterr().out
    assert "model.safetensors" in out and "damaged" in out and "config.json" in out and " ok" in out
    assert not blob.exists()  # deleted, so the next create downloads it again
    hub_server.clear()
    assert same_weights(zoo.create("tiny-hub", device="cpu"), state(0))
    assert main(["verify", "tiny-hub"]) == 0


# -- offline -----------------------------------------------------------------------------------------------------

def test_offline_with_nothing_cached_names_the_model_and_the_way_out(hub_server: HubServer, offline,
                                                                     registry_with):
    hub_server.add_repo(REPO, repo_files(seed=0), commit=COMMIT)
    registry_with(tiny_entry())
    with pytest.raises(OfflineError) as err:
        zoo.create("tiny-hub", device="cpu")
    message = str(err.value)
    assert "'tiny-hub'" in message and "zoo download tiny-hub" in message and "HF_HUB_OFFLINE" in message
    assert hub_server.requests == []


def test_offline_with_a_cache_works_without_a_request(hub_server: HubServer, registry_with,
                                                      monkeypatch: pytest.MonkeyPatch):
    hub_server.add_repo(REPO, repo_files(seed=0), commit=COMMIT)
    registry_with(tiny_entry(), tiny_entry("tiny-main", revision=None))
    zoo.create("tiny-hub", device="cpu")
    zoo.create("tiny-main", device="cpu")  # a branch, not a commit: offline it resolves through refs/main
    hub_server.clear()

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # read by zoo at call time: no restart needed
    assert same_weights(zoo.create("tiny-hub", device="cpu"), state(0))
    assert same_weights(zoo.create("tiny-main", device="cpu"), state(0))
    assert hub_server.requests == []


def test_hub_gone_with_a_cache_still_works(hub_server: HubServer, registry_with):
    hub_server.add_repo(REPO, repo_files(seed=0), commit=COMMIT)
    registry_with(tiny_entry("tiny-main", revision=None))
    zoo.create("tiny-main", device="cpu")
    hub_server.stop()  # connections are refused from now on
    assert same_weights(zoo.create("tiny-main", device="cpu"), state(0))


# -- formats -----------------------------------------------------------------------------------------------------

def test_safetensors_is_preferred_when_the_repo_has_both(hub_server: HubServer, registry_with):
    hub_server.add_repo(REPO, repo_files(seed=0, bin=True, bin_seed=1), commit=COMMIT)
    registry_with(tiny_entry())
    model = zoo.create("tiny-hub", device="cpu")
    assert same_weights(model, state(0))
    assert not [r for r in hub_server.requests if r.filename == "pytorch_model.bin"], "the .bin was not needed"


def test_bin_only_repo_loads_through_weights_only_torch_load(hub_server: HubServer, registry_with):
    hub_server.add_repo(REPO, repo_files(seed=2, safetensors=False, bin=True), commit=COMMIT)
    registry_with(tiny_entry())
    assert same_weights(zoo.create("tiny-hub", device="cpu"), state(2))


class PlainObject:
    """Not code, but not a tensor either: weights-only loading must still refuse to build it."""


@pytest.mark.parametrize("payload", ["os.system", "object"])
def test_bin_holding_pickled_code_or_objects_is_refused(hub_server: HubServer, registry_with, shell_payload,
                                                        payload: str):
    code, marker = shell_payload
    evil = code if payload == "os.system" else PlainObject()
    buf = io.BytesIO()
    torch.save({**state(0), "proj.extra": evil}, buf)
    hub_server.add_repo(REPO, {"config.json": b'{"d_in": 4, "d_out": 3}', "pytorch_model.bin": buf.getvalue()},
                        commit=COMMIT)
    registry_with(tiny_entry())
    with pytest.raises(UnsafeWeightsError, match="refused to load .*pytorch_model.bin") as err:
        zoo.create("tiny-hub", device="cpu")
    assert "weights_only=True" in str(err.value)
    assert not marker.exists(), "the checkpoint's code ran"


# -- where the files come from -------------------------------------------------------------------------------------

def test_missing_file_lists_every_name_it_looked_for(hub_server: HubServer, registry_with):
    hub_server.add_repo(REPO, {"config.json": b"{}"}, commit=COMMIT)
    registry_with(tiny_entry())
    with pytest.raises(MissingFileError) as err:
        zoo.create("tiny-hub", device="cpu")
    assert "model.safetensors" in str(err.value) and "pytorch_model.bin" in str(err.value)
    assert "tiny-hub" in str(err.value)


def test_unknown_repo_or_revision_is_a_missing_file_error(hub_server: HubServer, registry_with):
    hub_server.add_repo(REPO, repo_files(seed=0), commit=COMMIT)
    registry_with(tiny_entry(revision=COMMIT_2), tiny_entry("tiny-elsewhere", revision=None))
    with pytest.raises(MissingFileError, match="no such revision"):
        zoo.create("tiny-hub", device="cpu")
    for weights in ("zoo-test/does-not-exist", "/no/such/directory"):  # a typo'd path is not a repo id either
        with pytest.raises(MissingFileError, match="neither an existing local directory nor a repo"):
            zoo.create("tiny-elsewhere", weights=weights, device="cpu")


def test_gated_repo_says_how_to_get_access(hub_server: HubServer, registry_with):
    hub_server.add_repo(REPO, repo_files(seed=0), commit=COMMIT, gated=True)
    registry_with(tiny_entry())
    with pytest.raises(MissingFileError, match="is gated.*HF_TOKEN"):
        zoo.create("tiny-hub", device="cpu")


def test_weights_from_a_local_directory_need_no_hub(hub_server: HubServer, registry_with, tmp_path: Path):
    registry_with(tiny_entry())
    local = tmp_path / "my-weights"
    local.mkdir()
    for name, data in repo_files(seed=3).items():
        (local / name).write_bytes(data)
    assert same_weights(zoo.create("tiny-hub", weights=local, device="cpu"), state(3))
    assert hub_server.requests == []

    (local / "model.safetensors").unlink()
    with pytest.raises(MissingFileError, match="model.safetensors, pytorch_model.bin"):
        zoo.create("tiny-hub", weights=str(local), device="cpu")


def test_weights_from_another_repo_come_from_one_commit_of_it(hub_server: HubServer, registry_with, tmp_path: Path):
    source = tmp_path / "finetuned"
    source.mkdir()
    for name, data in repo_files(seed=4).items():
        (source / name).write_bytes(data)
    other = hub_server.add_repo("someone/tiny-finetuned", source)  # published from a directory
    hub_server.add_repo(REPO, repo_files(seed=0), commit=COMMIT)
    registry_with(tiny_entry())

    model = zoo.create("tiny-hub", weights="someone/tiny-finetuned", device="cpu")
    assert same_weights(model, state(4))
    hub_requests = [r for r in hub_server.requests if r.origin == "hub"]
    assert {r.repo_id for r in hub_requests} == {"someone/tiny-finetuned"}
    # the first file resolves the default branch; the others are pinned to the commit it resolved to
    assert hub_requests[0].revision == "main" and {r.revision for r in hub_requests[2:]} == {other}


def test_download_fetches_every_file_and_returns_the_snapshot(hub_server: HubServer, hf_cache: Path,
                                                              registry_with):
    hub_server.add_repo(REPO, repo_files(seed=0, bin=True), commit=COMMIT)
    registry_with(tiny_entry())
    root = hub.download("tiny-hub")
    assert root == repo_dir(hf_cache) / "snapshots" / COMMIT
    assert sorted(p.name for p in root.iterdir()) == ["config.json", "model.safetensors"]
    hub_server.clear()
    assert hub.download(zoo.get_entry("tiny-hub")) == root and hub_server.requests == []


def test_settings_follow_the_environment_at_call_time(hf_cache: Path, monkeypatch: pytest.MonkeyPatch):
    cfg = hub.settings()
    assert cfg.cache_dir == hf_cache and not cfg.offline
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9/")
    monkeypatch.delenv("HF_HUB_CACHE")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg = hub.settings()
    assert cfg.endpoint == "http://127.0.0.1:9" and cfg.cache_dir == hf_cache and cfg.offline  # $HF_HOME/hub


def test_every_hub_error_is_a_zoo_error():
    for cls in (OfflineError, MissingFileError, DownloadError, CorruptWeightsError, UnsafeWeightsError):
        assert issubclass(cls, ZooError)
