"""zoo.noise: counter-based per-sample noise. Philox4x32-10 against Random123's known answers and a pure-Python
Philox, the documented rule against an independent computation, batch-size invariance (of the draws and of a
real pipeline's samples), float32 against float64, and statistics: standard normal, independent across
samples, steps, seeds and neighbouring elements."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import zoo
from zoo.distributed import read_samples, sample_to_dir, to_uint8
from zoo.noise import CounterNoise, normal, philox4x32, run_seed
from zoo.registry.errors import InvalidInputError

M32 = 0xFFFFFFFF


def philox_reference(counter: tuple[int, ...], key: tuple[int, int], rounds: int = 10) -> list[int]:
    """Random123's philox4x32_R in plain Python integers (exact, no splitting)."""
    c, k = list(counter), list(key)
    for _ in range(rounds):
        p0, p1 = 0xD2511F53 * c[0], 0xCD9E8D57 * c[2]
        c = [(p1 >> 32) ^ c[1] ^ k[0], p1 & M32, (p0 >> 32) ^ c[3] ^ k[1], p0 & M32]
        k = [(k[0] + 0x9E3779B9) & M32, (k[1] + 0xBB67AE85) & M32]
    return c


def normals_reference(seed: int, index: int, step: int, numel: int) -> list[float]:
    """The module docstring's rule, computed in Python floats from the Python Philox."""
    seed %= 2**64
    key = (seed & M32, seed >> 32)
    out = []
    for block in range((numel + 3) // 4):
        w = philox_reference((block, step, index & M32, index >> 32), key)
        for r_word, a_word in ((w[0], w[1]), (w[2], w[3])):
            r = math.sqrt(-2 * math.log((r_word + 0.5) / 2**32))
            angle = 2 * math.pi * (a_word + 0.5) / 2**32
            out += [r * math.cos(angle), r * math.sin(angle)]
    return out[:numel]


# Random123's kat_vectors for philox4x32_10: counter, key, output
KNOWN_ANSWERS = [((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
                 ((M32,) * 4, (M32, M32), (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
                 ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
                  (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1))]


@pytest.mark.parametrize("counter,key,want", KNOWN_ANSWERS)
def test_philox_gives_random123s_known_answers(counter, key, want):
    assert tuple(philox_reference(counter, key)) == want
    got = philox4x32(torch.tensor(counter, dtype=torch.int64).reshape(4, 1), key)
    assert tuple(got.reshape(-1).tolist()) == want


def test_philox_matches_the_python_reference_on_random_words_and_round_counts():
    g = torch.Generator().manual_seed(0)
    counters = torch.randint(0, 2**32, (4, 50), generator=g, dtype=torch.int64)
    for rounds in (1, 2, 7, 10):
        for key in ((0, 0), (M32, 1), (0x12345678, 0x9ABCDEF0)):
            got = philox4x32(counters, key, rounds).t().tolist()
            assert got == [philox_reference(tuple(c), key, rounds) for c in counters.t().tolist()]
    with pytest.raises(InvalidInputError, match="int64"):
        philox4x32(counters.to(torch.int32), (0, 0))


@pytest.mark.parametrize("seed,index,step", [(0, 0, 0), (7, 3, 2), (2**64 - 1, 2**40 + 5, 2**32 - 1),
                                             (-1, 1, 1)])
def test_the_draws_follow_the_documented_rule(seed, index, step):
    numel = 10  # not a multiple of 4: the last block is cut
    got = normal(seed, [index], step, numel, dtype=torch.float64)
    np.testing.assert_allclose(got[0].numpy(), normals_reference(seed, index, step, numel), rtol=1e-12, atol=1e-12)


def test_a_samples_noise_is_the_same_in_any_batch():
    shape = (3, 5, 7)  # 105 values: 27 blocks, the last cut
    for dtype in (torch.float32, torch.float64):
        whole = CounterNoise(range(6), shape, seed=42, dtype=dtype)
        want = [whole() for _ in range(4)]
        assert want[0].shape == (6, *shape) and want[0].dtype == dtype
        for batch in (1, 2, 3, 6):
            parts = [CounterNoise(range(lo, min(lo + batch, 6)), shape, seed=42, dtype=dtype)
                     for lo in range(0, 6, batch)]
            for step in range(4):
                assert torch.equal(torch.cat([p() for p in parts]), want[step]), (dtype, batch, step)
        # any order, any company: sample 4 drawn with others far away in index space
        mixed = CounterNoise([4, 2**40, 1], shape, seed=42, dtype=dtype)
        for step in range(4):
            z = mixed()
            assert torch.equal(z[0], want[step][4]) and torch.equal(z[2], want[step][1])


def test_float32_and_float64_draws_agree_to_float32_rounding():
    z64 = normal(5, range(32), 3, 4096, dtype=torch.float64)
    z32 = normal(5, range(32), 3, 4096, dtype=torch.float32)
    radius = z64.reshape(-1, 2).norm(dim=1).repeat_interleave(2).reshape(z64.shape)
    # float32 rounds u to 2**-24 near 1, so -ln u is off by up to ~2**-24 and r = sqrt(-2 ln u) by that over r (at
    # most sqrt(2 * 2**-22) once r is that small); the angle, up to 2 pi, is off by ~2**-22 radians, times r.
    tol = torch.clamp(2.0**-22 / radius, max=2.0**-10) + 2.0**-19 * (1 + radius)
    assert bool(((z32.double() - z64).abs() <= tol).all())
    assert float((z32.double() - z64).abs().max()) > 0  # they are computed in their own dtypes
    half = CounterNoise([0, 1], (64,), seed=5, dtype=torch.float16)()
    assert half.dtype == torch.float16
    torch.testing.assert_close(half, normal(5, [0, 1], 0, 64).half())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_draws_the_cpus_words_and_normals():
    counters = torch.randint(0, 2**32, (4, 4096), dtype=torch.int64)
    assert torch.equal(philox4x32(counters.cuda(), (3, 9)).cpu(), philox4x32(counters, (3, 9)))
    for dtype in (torch.float32, torch.float64):
        cuda = CounterNoise(range(16), (3, 32, 32), seed=1, device="cuda", dtype=dtype)
        cpu = CounterNoise(range(16), (3, 32, 32), seed=1, dtype=dtype)
        for _ in range(2):
            torch.testing.assert_close(cuda().cpu(), cpu(), rtol=1e-5 if dtype == torch.float32 else 1e-12,
                                       atol=1e-5 if dtype == torch.float32 else 1e-12)


@pytest.fixture(scope="module")
def draws():
    """(samples, steps, values) float64: 64 samples x 4 steps x 2048 values (524288 draws)."""
    noise = CounterNoise(range(64), (2048,), seed=123, dtype=torch.float64)
    return torch.stack([noise() for _ in range(4)], dim=1).numpy()


def test_the_draws_are_standard_normal(draws):
    from scipy import stats

    z = draws.reshape(-1)
    n = len(z)
    assert stats.kstest(z, "norm").pvalue > 1e-3
    assert abs(z.mean()) < 5 / math.sqrt(n)
    assert abs(z.var() - 1) < 5 * math.sqrt(2 / n)  # var of the sample variance of N(0,1): 2/n
    assert abs(stats.kurtosis(z)) < 5 * math.sqrt(24 / n) and abs(stats.skew(z)) < 5 * math.sqrt(6 / n)
    # the tails: the fraction beyond 3 sigma, against its binomial spread
    p = 2 * stats.norm.sf(3)
    assert abs((np.abs(z) > 3).mean() - p) < 5 * math.sqrt(p * (1 - p) / n)


def _max_abs_correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Largest |Pearson r| between rows a[k] and b[k] (each a vector of values)."""
    a = (a - a.mean(1, keepdims=True)) / a.std(1, keepdims=True)
    b = (b - b.mean(1, keepdims=True)) / b.std(1, keepdims=True)
    return float(np.abs((a * b).mean(1)).max())


def test_samples_steps_and_neighbouring_values_are_uncorrelated(draws):
    samples, steps, d = draws.shape
    bound = 5 / math.sqrt(d)  # |r| of independent rows: sd 1/sqrt(d)
    flat = draws.reshape(samples * steps, d)
    # every pair of (sample, step) rows
    z = (flat - flat.mean(1, keepdims=True)) / flat.std(1, keepdims=True)
    r = z @ z.T / d
    np.fill_diagonal(r, 0)
    assert np.abs(r).max() < 5.5 / math.sqrt(d)  # 32640 pairs: a 5.5 sigma max is still a safe margin
    assert _max_abs_correlation(draws[:-1, 0], draws[1:, 0]) < bound   # sample i vs i + 1
    assert _max_abs_correlation(draws[:, 0], draws[:, 1]) < bound      # step s vs s + 1
    # neighbours inside a sample: lag 1 is the cos/sin pair of one radius (independent, not just uncorrelated,
    # so their squares are uncorrelated too), lag 2 the other pair of the block, lag 4 the next block
    values = draws.reshape(-1, d)
    n = values.size
    for lag in (1, 2, 3, 4, 8):
        a, b = values[:, :-lag].reshape(-1), values[:, lag:].reshape(-1)
        assert abs(np.corrcoef(a, b)[0, 1]) < 5 / math.sqrt(n), lag
        assert abs(np.corrcoef(a**2, b**2)[0, 1]) < 5 / math.sqrt(n), lag


def test_seeds_and_far_indices_give_unrelated_streams():
    d = 8192
    bound = 5 / math.sqrt(d)
    base = normal(0, [0], 0, d, dtype=torch.float64)[0].numpy()
    for seed, index, step in ((1, 0, 0), (2**32, 0, 0), (0, 2**32, 0), (0, 0, 2**31)):
        other = normal(seed, [index], step, d, dtype=torch.float64)[0].numpy()
        assert abs(np.corrcoef(base, other)[0, 1]) < bound, (seed, index, step)


def test_every_seed_index_and_step_has_its_own_stream():
    seeds, indices, steps = (0, 1, 2**32, 2**63), (0, 1, 2, 2**32, 2**32 + 1), (0, 1, 2)
    heads = {}
    for seed in seeds:
        for step in steps:
            rows = normal(seed, list(indices), step, 8, dtype=torch.float64)
            for index, row in zip(indices, rows):
                heads[row.numpy().tobytes()] = (seed, index, step)
    assert len(heads) == len(seeds) * len(indices) * len(steps)
    # one key: Philox is a bijection of the counter, so 2**16 distinct counters give 2**16 distinct blocks
    block = torch.arange(2**16)
    counters = torch.stack([block % 256, block // 256, torch.zeros_like(block), torch.ones_like(block)])
    words = philox4x32(counters, (7, 7)).t()
    assert len(torch.unique(words, dim=0)) == 2**16


def test_bad_seeds_indices_and_steps_are_refused():
    with pytest.raises(InvalidInputError, match="seed"):
        CounterNoise([0], (4,), seed=1.5)
    with pytest.raises(InvalidInputError, match="seed"):
        CounterNoise([0], (4,), seed=True)
    with pytest.raises(InvalidInputError, match="indices are >= 0"):
        CounterNoise([3, -1], (4,), seed=0)
    with pytest.raises(InvalidInputError, match="at least one sample"):
        CounterNoise([], (4,), seed=0)
    with pytest.raises(InvalidInputError, match="step"):
        normal(0, [0], 1.0, 4)
    with pytest.raises(InvalidInputError, match="past the last"):
        normal(0, [0], 2**32, 4)
    # seeds are taken mod 2**64, so any Python int seeds a run
    assert torch.equal(normal(-1, [0], 0, 4), normal(2**64 - 1, [0], 0, 4))


def test_run_seed_is_one_draw_from_the_generator():
    g = torch.Generator().manual_seed(3)
    assert run_seed(g) == int(torch.randint(0, 2**63 - 1, (), generator=torch.Generator().manual_seed(3)))
    torch.manual_seed(9)
    first = run_seed(None)
    torch.manual_seed(9)
    assert run_seed(None) == first


@pytest.fixture(scope="module")
def pipe():
    torch.set_num_threads(1)
    return zoo.create("ddpm-digits", device="cpu")


@pytest.mark.parametrize("sampler", ["ddpm", "euler-ancestral"])
def test_a_pipelines_samples_are_the_same_at_any_batch_size(tmp_path, pipe, sampler):
    """pipe.sample(6, generator=torch.Generator().manual_seed(7)) row i == sample i of sample_to_dir(seed=7) at
    batch sizes 1, 2, 3, 6: starting noise and every injected noise follow the sample, not the batch."""
    steps = 3
    images = pipe.sample(6, generator=torch.Generator().manual_seed(7), sampler=sampler, steps=steps, progress=False)
    seed = 7
    want = to_uint8(images)
    for batch in (1, 2, 3, 6):
        out = tmp_path / f"b{batch}"
        sample_to_dir(pipe, 6, out, seed=seed, batch_size=batch, shard_size=6, steps=steps, sampler=sampler,
                      progress=False)
        got = read_samples(out)
        # the network may round differently at another batch size: allow one level, on few pixels
        diff = np.abs(got.astype(int) - want.astype(int))
        assert diff.max() <= 1 and (diff > 0).mean() < 0.01, (batch, diff.max(), (diff > 0).mean())
    other = pipe.sample(6, generator=torch.Generator().manual_seed(8), sampler=sampler, steps=steps, progress=False)
    assert (to_uint8(other) != want).any()


def test_given_starting_noise_leaves_the_injected_noise_as_it_was(pipe):
    """noise= replaces draw 0 only: with draw 0 given by hand, a stochastic sampler's result is unchanged."""
    kwargs = dict(sampler="ddpm", steps=3, output="raw", progress=False)
    drawn = pipe.sample(3, generator=torch.Generator().manual_seed(1), **kwargs)
    start = CounterNoise(range(3), pipe.sample_shape, seed=run_seed(torch.Generator().manual_seed(1))).draw()
    given = pipe.sample(3, noise=start, generator=torch.Generator().manual_seed(1), **kwargs)
    torch.testing.assert_close(given, drawn, rtol=0, atol=1e-6)
    # and the injected noise matters: another generator with the same start lands elsewhere
    moved = pipe.sample(3, noise=start, generator=torch.Generator().manual_seed(2), **kwargs)
    assert (moved - drawn).abs().max() > 1e-3
