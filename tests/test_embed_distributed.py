"""`zoo embed --out DIR` (zoo.embedding.embed_to_dir): shards that are the same bytes for world sizes 1 and 2
(two gloo processes through the real CLI, with torchrun's variables) and after an interrupted run is restarted,
embeddings equal to the model's own on the same images, for folders, list files and `zoo sample --out` folders,
and bad input refused before the model loads.

The encoder is the example plugin's ``toy-mlp`` (weights shipped in the package, nothing downloaded); the
images are written here with PIL, in odd sizes, so that the model's preprocess resizes them.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F
from PIL import Image
from safetensors import safe_open

import zoo
from zoo import embedding
from zoo.cli import main
from zoo.distributed import free_port, read_samples, sample_to_dir, torchrun_environment
from zoo.embedding import embed_to_dir, image_sources, read_embeddings
from zoo.registry.errors import InvalidInputError, MissingFileError

N, SHARD, BATCH = 7, 3, 2  # shards of 3 + 3 + 1 images, two batches in a full shard


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """N random RGB images of different sizes (PNG, one JPEG), and a text file the folder listing skips."""
    folder = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    for i in range(N):
        pixels = rng.integers(0, 256, (12 + i, 10 + 2 * i, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"{i:02d}.{'jpg' if i == 4 else 'png'}")
    (folder / "notes.txt").write_text("not an image")
    return folder


@pytest.fixture(scope="module")
def model():
    return zoo.create("toy-mlp", device="cpu")


def uint8_batch(paths) -> list[torch.Tensor]:
    """Each image as the uint8 (1, 3, H, W) batch toy-mlp's preprocess takes (it reads no files)."""
    return [torch.from_numpy(np.array(Image.open(p).convert("RGB"))).permute(2, 0, 1)[None] for p in paths]


def expected(model, paths, normalize=False) -> torch.Tensor:
    """The model's own embeddings of the images, in order: encode(preprocess(image))."""
    with torch.inference_mode():
        out = torch.cat([model.encode(model.preprocess(x)) for x in uint8_batch(paths)])
    return F.normalize(out, dim=-1) if normalize else out


def shard_bytes(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.glob("shard-*.safetensors"))}


def _cli_worker(rank: int, world: int, port: int, jobs: list[tuple[list[str], int]]) -> None:
    """Each job: `zoo embed ARGV` as torchrun runs it (`main` starts the process group from the variables and
    ends it); rank 0 alone prints the summary, with the images every rank embedded."""
    torchrun_environment(rank, world, port)
    torch.set_num_threads(1)
    for argv, total in jobs:
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            assert main(argv) in (0, None), argv
        assert printed.getvalue().startswith(f"wrote {argv[4]}: {total} images in") if rank == 0 else \
            printed.getvalue() == "", (rank, printed.getvalue())


# -- the same bytes for any world size, and after a restart -------------------------------------------------------


def test_world_sizes_and_a_restart_give_the_same_bytes(photos, model, tmp_path, capsys):
    args = ["--shard-size", str(SHARD), "--batch-size", str(BATCH), "--workers", "0", "-q"]
    one, two, resumed = tmp_path / "one", tmp_path / "two", tmp_path / "resumed"
    assert main(["embed", "toy-mlp", str(photos), "--out", f"{one}/", *args]) in (0, None)
    assert f"wrote {one}/: {N} images in" in capsys.readouterr().out
    # a run "killed" after one shard (with the file it was writing left behind), finished by 2 ranks
    run = embed_to_dir(model, [photos], resumed, shard_size=SHARD, batch_size=BATCH, name="toy-mlp",
                       progress=False, stop_after_shards=1)
    assert (run.images, run.shards_written) == (SHARD, 1)
    assert sorted(shard_bytes(resumed)) == ["shard-00000.safetensors"]
    assert json.loads((resumed / "manifest.json").read_text())["complete"] is False
    with pytest.raises(InvalidInputError, match="unfinished run"):
        read_embeddings(resumed)
    (resumed / ".shard-00001.safetensors.999.tmp").write_bytes(b"half a shard")
    kept = (resumed / "shard-00000.safetensors").stat().st_mtime_ns

    jobs = [(["embed", "toy-mlp", str(photos), "--out", str(d), *args], total) for d, total in ((two, N),
                                                                                               (resumed, N - SHARD))]
    mp.spawn(_cli_worker, args=(2, free_port(), jobs), nprocs=2, join=True)
    want = shard_bytes(one)
    assert len(want) == 3
    assert shard_bytes(two) == want
    assert shard_bytes(resumed) == want
    assert (resumed / "shard-00000.safetensors").stat().st_mtime_ns == kept  # kept, not redone
    assert not list(resumed.glob(".*"))  # the partial file is gone, and never was a shard
    manifests = [json.loads((d / "manifest.json").read_text()) for d in (one, two, resumed)]
    assert manifests[0] == manifests[1] == manifests[2]
    manifest = manifests[0]
    assert manifest["complete"] is True and manifest["kind"] == "embeddings"
    assert (manifest["model"], manifest["method"], manifest["dtype"], manifest["normalize"]) == (
        "toy-mlp", "encode", "float32", False)
    assert manifest["inputs"]["count"] == N and manifest["zoo_version"] == zoo.__version__
    assert manifest["preprocessing"]["image_size"] == [8, 8]
    assert [s["file"] for s in manifest["shards"]] == sorted(want)
    with safe_open(str(two / "shard-00002.safetensors"), "pt") as f:
        assert f.get_tensor("indices").tolist() == [6]
        assert json.loads(f.metadata()["paths"]) == [str(photos / "06.png")]


# -- the embeddings are the model's ------------------------------------------------------------------------------


def test_the_embeddings_are_the_models_own_in_order_with_any_number_of_workers(photos, model, tmp_path):
    paths = sorted(str(p) for p in photos.glob("*.[pj][np]g"))
    runs = {}
    for workers in (0, 2):
        runs[workers] = tmp_path / f"w{workers}"
        embed_to_dir(model, photos, runs[workers], shard_size=SHARD, batch_size=BATCH, workers=workers,
                     progress=False)
    assert shard_bytes(runs[2]) == shard_bytes(runs[0])
    recorded, embeddings = read_embeddings(runs[0])
    assert recorded == paths and len(paths) == N
    assert embeddings.dtype == torch.float32 and embeddings.shape == (N, 16)
    torch.testing.assert_close(embeddings, expected(model, paths), rtol=0, atol=1e-6)
    assert len({tuple(e.tolist()) for e in embeddings}) == N  # different images, different embeddings
    # one shard alone reads too
    shard_paths, shard = read_embeddings(runs[0] / "shard-00001.safetensors")
    assert shard_paths == paths[3:6] and torch.equal(shard, embeddings[3:6])

    normalized = tmp_path / "normalized"
    embed_to_dir(model, photos, normalized, shard_size=SHARD, batch_size=BATCH, normalize=True, progress=False)
    unit = read_embeddings(normalized)[1]
    torch.testing.assert_close(unit, expected(model, paths, normalize=True), rtol=0, atol=1e-6)
    torch.testing.assert_close(unit.norm(dim=-1), torch.ones(N))


class NeedsItsWeights(zoo.registry.Encoder):
    """An Encoder whose preprocess reads a sub-module (so a weightless copy cannot run it): the workers then only
    decode, and the main process preprocesses."""

    image_size = (8, 8)

    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Linear(3 * 64, 4)

    def preprocess(self, images):
        x = torch.as_tensor(images).float() / 255
        x = F.interpolate(x, size=self.image_size, mode="bilinear", antialias=True, align_corners=False)
        return (x * 2 - 1).to(self.proj.weight)

    def encode(self, x):
        return self.proj(self.model_input(x).flatten(1))


def test_a_preprocess_that_needs_the_model_runs_in_the_main_process(photos, tmp_path):
    torch.manual_seed(0)
    model = NeedsItsWeights()
    assert embedding._worker_preprocess(model, uint8_batch([photos / "00.png"])[0]) is None
    assert embedding._worker_preprocess(zoo.create("toy-mlp"), uint8_batch([photos / "00.png"])[0]) is not None
    for workers in (0, 2):
        embed_to_dir(model, photos, tmp_path / f"w{workers}", shard_size=SHARD, workers=workers, progress=False)
    assert shard_bytes(tmp_path / "w2") == shard_bytes(tmp_path / "w0")
    paths, embeddings = read_embeddings(tmp_path / "w0")
    torch.testing.assert_close(embeddings, expected(model, paths), rtol=0, atol=1e-6)


def test_clip_embeds_upright_photos_with_its_own_preprocessing(tmp_path):
    """An image-text model (a 2-block clip-vit-b32 fixture repo): its encode_image on its own preprocessing (resize,
    crop, normalise: a zoo ImagePreprocess, run in the workers), photos turned upright by their EXIF orientation."""
    checkpoints = pytest.importorskip("helpers.clip_repos", reason="the CLIP fixture repos need open_clip")
    if not checkpoints.CHECKPOINTS.is_dir():
        pytest.skip(f"{checkpoints.CHECKPOINTS} not found")
    import skimage.data

    weights, _ = checkpoints.hf_clip_repo(tmp_path / "clip")
    model = zoo.create("clip-vit-b32", weights=weights, device="cpu")
    folder = tmp_path / "photos"
    folder.mkdir()
    Image.fromarray(skimage.data.chelsea()).save(folder / "a-cat.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: stored rotated, shown upright
    Image.fromarray(skimage.data.coffee()).save(folder / "b-coffee.jpg", exif=exif, quality=90)
    paths = [str(folder / "a-cat.png"), str(folder / "b-coffee.jpg")]
    out = tmp_path / "emb"
    embed_to_dir(model, folder, out, name="clip-vit-b32", workers=1, normalize=True, progress=False)
    recorded, embeddings = read_embeddings(out)
    assert recorded == paths
    with torch.inference_mode():
        want = model.encode_image(model.preprocess(paths), normalize=True)
    torch.testing.assert_close(embeddings, want, rtol=1e-5, atol=1e-5)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["method"] == "encode_image" and manifest["revision"] == zoo.get_entry("clip-vit-b32").revision
    assert "ImagePreprocess(size=(224, 224)" in manifest["preprocessing"]["transforms"][0]


# -- sources: folders, list files, `zoo sample --out` folders ------------------------------------------------------


def test_a_list_file_names_images_relative_to_itself(photos, model, tmp_path):
    listing = tmp_path / "lists" / "some.txt"
    listing.parent.mkdir()
    rel = os.path.relpath(photos, listing.parent)
    listing.write_text(f"# a comment\n{rel}/03.png\n\n{photos / '00.png'}\n  {rel}/04.jpg  \n")
    sources = image_sources([listing])
    want = [str(listing.parent / rel / "03.png"), str(photos / "00.png"), str(listing.parent / rel / "04.jpg")]
    assert [s.name for s in sources] == want
    out = tmp_path / "out"
    embed_to_dir(model, [listing], out, shard_size=2, progress=False)
    paths, embeddings = read_embeddings(out)
    assert paths == want
    torch.testing.assert_close(embeddings, expected(model, want), rtol=0, atol=1e-6)


def test_a_sample_folder_is_embedded_sample_by_sample(model, tmp_path):
    pipe = zoo.create("ddpm-digits", device="cpu")
    samples = tmp_path / "samples"
    sample_to_dir(pipe, 5, samples, seed=0, batch_size=5, shard_size=2, steps=2, progress=False)
    out = tmp_path / "emb"
    embed_to_dir(model, samples, out, shard_size=3, progress=False)
    paths, embeddings = read_embeddings(out)
    assert paths == [f"{samples}#{i}" for i in range(5)]
    grey = torch.from_numpy(read_samples(samples)).permute(0, 3, 1, 2)  # (5, 1, 16, 16) uint8
    with torch.inference_mode():
        want = model.encode(model.preprocess(grey.expand(-1, 3, -1, -1)))  # greyscale seen as RGB
    torch.testing.assert_close(embeddings, want, rtol=0, atol=1e-6)
    with pytest.raises(InvalidInputError, match="holds embeddings"):
        image_sources([out])


# -- restarts with other settings, bad input ---------------------------------------------------------------------


def test_a_restart_with_other_settings_is_refused_naming_them(photos, model, tmp_path):
    out = tmp_path / "run"
    embed_to_dir(model, photos, out, shard_size=SHARD, progress=False, stop_after_shards=1)
    with pytest.raises(InvalidInputError, match="normalize differ"):
        embed_to_dir(model, photos, out, shard_size=SHARD, normalize=True, progress=False)
    with pytest.raises(InvalidInputError, match="inputs, shard_size differ"):
        embed_to_dir(model, [photos / "00.png"], out, shard_size=2, progress=False)
    embed_to_dir(model, photos, out, shard_size=SHARD, batch_size=3, progress=False)  # the same settings: resumed
    assert len(read_embeddings(out)[0]) == N


def test_an_unreadable_image_is_named_and_finished_shards_are_kept(photos, model, tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    for p in sorted(photos.glob("0*")):
        (folder / p.name).write_bytes(p.read_bytes())
    (folder / "05.png").write_bytes(b"not a png")
    out = tmp_path / "out"
    with pytest.raises(InvalidInputError, match=r"cannot read .*05\.png"):
        embed_to_dir(model, folder, out, shard_size=SHARD, workers=2, progress=False)
    assert sorted(shard_bytes(out)) == ["shard-00000.safetensors"]


def _refused(capsys, argv, *needles) -> None:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert code == 2, err
    assert err.startswith("zoo: error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in err, (needle, err)


@pytest.fixture
def no_model(monkeypatch):
    """Loading a model fails the test: what is refused must be refused before."""
    def load(args, **kwargs):
        raise AssertionError(f"the model was loaded for {args}")
    monkeypatch.setattr(embedding, "create_from_args", load)


def test_bad_input_is_refused_before_the_model_loads(photos, tmp_path, capsys, no_model):
    (tmp_path / "empty").mkdir()
    listing = tmp_path / "list.txt"
    listing.write_text(f"{photos / '00.png'}\nmissing.png\n")
    (tmp_path / "blank.txt").write_text("\n# nothing\n")
    (tmp_path / "file").write_text("")
    out = tmp_path / "out"
    _refused(capsys, ["embed", "toy-mlp", tmp_path / "empty", "--out", out], "empty is a folder with no image files")
    _refused(capsys, ["embed", "toy-mlp", listing, "--out", out], "list.txt line 2", "not found",
             str(tmp_path / "missing.png"))
    _refused(capsys, ["embed", "toy-mlp", tmp_path / "blank.txt", "--out", out], "lists no image")
    _refused(capsys, ["embed", "toy-mlp", photos / "nope.png", "--out", out], "image file not found")
    _refused(capsys, ["embed", "toy-mlp", photos, "--out", tmp_path / "emb.unknown"], "extension '.unknown'")
    _refused(capsys, ["embed", "toy-mlp", photos, "--out", tmp_path / "emb.pt"], "no pickles")
    _refused(capsys, ["embed", "toy-mlp", photos, "--out", f"{tmp_path / 'file'}/sub/"], "is a file")
    _refused(capsys, ["embed", "toy-mlp", "--text", "a cat", "--out", f"{out}/"], "is a folder")
    _refused(capsys, ["embed", "toy-mlp", photos, "--out", out, "--workers", "-1"], "--workers -1")
    _refused(capsys, ["embed", "ddpm-digits", photos, "--out", out], "'ddpm-digits' cannot encode")
    assert not out.exists() and not (tmp_path / "emb.unknown").exists()
    with pytest.raises(MissingFileError, match="not a `zoo embed --out` folder"):
        read_embeddings(tmp_path / "empty")
    with pytest.raises(InvalidInputError, match="shard_size=0"):
        embed_to_dir(zoo.create("toy-mlp"), photos, out, shard_size=0)
