"""zoo.distributed.sample_to_dir on torch.distributed (gloo, 2 processes on the CPU): the shards are the same
bytes for world sizes 1 and 2, for any batch size, and after an interrupted run is restarted."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import zoo
from zoo.distributed import free_port, read_samples, sample_to_dir, shard_name, torchrun_environment
from zoo.noise import SEED_RULE, CounterNoise, run_seed
from zoo.registry.errors import InvalidInputError

N, SHARD, STEPS = 10, 3, 4  # 4 shards: 3 + 3 + 3 + 1


def _worker(rank: int, world: int, port: int, jobs: list[tuple[str, dict, int]]) -> None:
    torch.set_num_threads(1)
    torchrun_environment(rank, world, port)
    dist.init_process_group("gloo")
    try:
        pipe = zoo.create("ddpm-digits", device="cpu")
        for out, kwargs, total in jobs:
            run = sample_to_dir(pipe, N, out, progress=False, **kwargs)
            assert run.total_images == total, (out, run)  # summed over both ranks (a failure fails mp.spawn)
    finally:
        dist.destroy_process_group()


def _shard_bytes(folder) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.glob("shard-*.npz"))}


@pytest.fixture(scope="module")
def pipe():
    torch.set_num_threads(1)
    return zoo.create("ddpm-digits", device="cpu")


def test_world_sizes_batches_and_restarts_give_the_same_bytes(tmp_path, pipe):
    common = dict(seed=3, shard_size=SHARD, steps=STEPS, sampler="ddpm")  # ddpm: noise at every step too
    single = tmp_path / "single"
    run = sample_to_dir(pipe, N, single, batch_size=2, progress=False, **common)
    assert (run.images, run.total_images, run.shards_written, run.shards_skipped) == (N, N, 4, 0)
    # a run "killed" after one shard, with the file it was writing left behind, finished by 2 ranks
    resumed = tmp_path / "resumed"
    sample_to_dir(pipe, N, resumed, batch_size=2, progress=False, stop_after_shards=1, **common)
    assert [p.name for p in resumed.glob("shard-*.npz")] == [shard_name(0)]
    assert json.loads((resumed / "manifest.json").read_text())["complete"] is False
    with pytest.raises(InvalidInputError, match="unfinished run"):
        read_samples(resumed)
    (resumed / f".{shard_name(1)}.999.tmp").write_bytes(b"half a shard")
    before = (resumed / shard_name(0)).stat().st_mtime_ns

    two = tmp_path / "two"
    mp.spawn(_worker, args=(2, free_port(), [(str(two), dict(batch_size=2, **common), N),
                                              (str(resumed), dict(batch_size=2, **common), N - SHARD)]),
             nprocs=2, join=True)
    want = _shard_bytes(single)
    assert len(want) == 4
    assert _shard_bytes(two) == want
    assert _shard_bytes(resumed) == want
    assert (resumed / shard_name(0)).stat().st_mtime_ns == before  # the finished shard was kept, not redone
    assert not list(resumed.glob(".*"))  # the partial file is gone, and never was a shard

    manifest = json.loads((two / "manifest.json").read_text())
    assert manifest["complete"] is True
    assert (manifest["model"], manifest["sampler"], manifest["steps"], manifest["seed"]) == ("ddpm-digits", "ddpm",
                                                                                            STEPS, 3)
    assert [s["file"] for s in manifest["shards"]] == sorted(want)
    assert manifest["zoo_version"] == zoo.__version__ and manifest["seed_rule"] == SEED_RULE

    # another batch size: the same images (per-sample noise; on this CPU, the same bytes too)
    other = tmp_path / "batch5"
    sample_to_dir(pipe, N, other, batch_size=5, progress=False, **common)
    np.testing.assert_array_equal(read_samples(other), read_samples(single))
    images = read_samples(single)
    assert images.dtype == np.uint8 and images.shape == (N, 16, 16, 1)
    with np.load(single / shard_name(3)) as f:
        np.testing.assert_array_equal(f["indices"], [9])


def test_sample_i_is_the_seed_rule_applied_to_i(tmp_path, pipe):
    """Shard contents are what pipe.sample gives sample i alone with its own generator; other seeds differ."""
    out = tmp_path / "run"
    sample_to_dir(pipe, 4, out, seed=11, batch_size=4, shard_size=4, steps=STEPS, sampler="ddim", progress=False)
    images = read_samples(out)
    noise = CounterNoise([2], pipe.sample_shape, seed=run_seed(11), device=torch.device("cpu"), dtype=torch.float32)
    alone = pipe.sample(1, noise=noise.draw(), steps=STEPS, sampler="ddim", progress=False)
    np.testing.assert_array_equal(images[2], (alone[0].clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy())
    # seed=11 is torch.Generator().manual_seed(11), as for pipe.sample (and `zoo sample --seed 11`)
    together = pipe.sample(4, generator=torch.Generator().manual_seed(11), steps=STEPS, sampler="ddim", progress=False)
    np.testing.assert_array_equal(images, (together.clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).numpy())
    starts = [CounterNoise([i], pipe.sample_shape, seed=s).draw() for s, i in ((11, 2), (11, 3), (12, 3))]
    assert not torch.equal(starts[0], starts[1]) and not torch.equal(starts[1], starts[2])
    assert len({images[i].tobytes() for i in range(4)}) == 4
    sample_to_dir(pipe, 4, tmp_path / "seed12", seed=12, batch_size=4, shard_size=4, steps=STEPS, sampler="ddim",
                  progress=False)
    assert (read_samples(tmp_path / "seed12") != images).any()


def test_a_restart_with_other_settings_is_refused(tmp_path, pipe):
    out = tmp_path / "run"
    sample_to_dir(pipe, 4, out, seed=0, batch_size=4, shard_size=2, steps=2, progress=False, stop_after_shards=1)
    with pytest.raises(InvalidInputError, match="seed, steps differ"):
        sample_to_dir(pipe, 4, out, seed=1, batch_size=4, shard_size=2, steps=3, progress=False)
    with pytest.raises(InvalidInputError, match="n must be"):
        sample_to_dir(pipe, 0, out)


def test_per_sample_labels_follow_their_sample_index(tmp_path):
    """A class-conditional pipeline (zoo.testing's exact mixture denoiser): labels= of length n is per sample,
    so sample i is drawn with label i at any batch size, and equals sampling it alone."""
    from zoo.diffusion import ClassConditioner, DiffusionPipeline
    from zoo.testing import GMMDenoiser, ring

    gmm = ring()
    pipe = DiffusionPipeline(GMMDenoiser(gmm), gmm.shape, conditioner=ClassConditioner(8, null_label=-1),
                             default_sampler="ddim", name="gmm-conditional")
    labels = [0, 4, 4, 2, 7, 1]
    runs = {}
    for batch in (2, 4):
        runs[batch] = tmp_path / f"b{batch}"
        sample_to_dir(pipe, 6, runs[batch], seed=5, batch_size=batch, shard_size=3, steps=5, labels=labels,
                      progress=False)
    images = read_samples(runs[2])
    np.testing.assert_array_equal(read_samples(runs[4]), images)
    noise = CounterNoise([3], pipe.sample_shape, seed=run_seed(5), device=torch.device("cpu"), dtype=torch.float64)
    alone = pipe.sample(1, noise=noise.draw(), steps=5, labels=[labels[3]], progress=False)
    np.testing.assert_array_equal(images[3], (alone[0].clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy())
    # the label is what made it: the same noise under another class lands elsewhere
    other = pipe.sample(1, noise=CounterNoise([3], pipe.sample_shape, seed=run_seed(5), device=torch.device("cpu"),
                                              dtype=torch.float64).draw(), steps=5, labels=[6], progress=False)
    assert not torch.equal(other, alone)
    recorded = json.loads((runs[2] / "manifest.json").read_text())["options"]["labels"]
    assert recorded.startswith("per sample (6 values")


def _cli_worker(rank: int, world: int, port: int, out: str) -> None:
    torchrun_environment(rank, world, port)
    torch.set_num_threads(1)
    from zoo.cli import main

    assert main(["sample", "ddpm-digits", "-n", "10", "--steps", "4", "--sampler", "ddpm", "--out", out,
                 "--batch-size", "2", "--shard-size", "3", "-q"]) in (0, None)


def test_the_cli_writes_the_same_shards_under_torchrun_as_alone(tmp_path):
    """`zoo sample --out` through the real CLI: two gloo ranks (torchrun's variables) and one plain process."""
    from zoo.cli import main

    mp.spawn(_cli_worker, args=(2, free_port(), str(tmp_path / "two")), nprocs=2, join=True)
    assert main(["sample", "ddpm-digits", "-n", "10", "--steps", "4", "--sampler", "ddpm", "--out",
                 str(tmp_path / "one"), "--batch-size", "5", "--shard-size", "3", "-q"]) in (0, None)
    shards = sorted(p.name for p in (tmp_path / "one").glob("shard-*.npz"))
    assert shards == sorted(p.name for p in (tmp_path / "two").glob("shard-*.npz")) and len(shards) == 4
    for name in shards:
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes(), name
