"""Counter-based standard-normal noise: sample ``i``'s draws depend on (seed, i, step) alone, made for a whole
batch in one call.

The rule
--------
A run has one 64-bit seed. Draw ``step`` (0 for the starting noise, 1, 2, ... for the noise a stochastic
sampler injects, in the order it asks for it) of sample ``index`` is built from Philox4x32-10 (Salmon et al.,
"Parallel random numbers: as easy as 1, 2, 3", SC 2011; the Random123 reference) with

    key     = (seed mod 2**32, (seed mod 2**64) >> 32)
    counter = (block, step, index mod 2**32, index >> 32)        block = 0, 1, ... ceil(numel / 4) - 1

Each block's four 32-bit words ``(w0, w1, w2, w3)`` give four normals by Box-Muller, cuRAND's transform:
``sqrt(-2 ln u(w0)) * (cos, sin)(2 pi u(w1))`` then the same of ``(w2, w3)``, with ``u(w) = (w + 1/2) / 2**32``
in (0, 1); a sample's tensor is the first ``numel`` of them in row-major order (block k: values 4k .. 4k+3).

Why this layout: for one key Philox is a bijection of the 128-bit counter, so no two (index, step, block) of a
run can ever give the same words, and a sample's noise is a function of its own counters, not of the batch it
is drawn in, the rank that draws it, or how many draws other samples made. The whole batch is one vectorised
evaluation (about 140 elementwise ops whatever the batch size) instead of one generator and one draw per sample.

Precision: the Philox words are computed with int64 tensor ops, exact on every device (a 32x32-bit product is
taken in 16-bit halves, so no partial product reaches 2**49): the words are the same bits on a CPU, a GPU or
any other device. The transform runs in the asked dtype (float32 or float64; others are computed in float32
and cast), so float32 and float64 draws agree to float32 rounding (about 1e-6; at most about 2**-10 absolute
for radii below 1e-3, where float32's ``u`` near 1 is coarse), and devices agree to their math libraries'
last-ulp differences in log, sqrt, cos and sin.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from zoo.registry.errors import InvalidInputError

MASK32 = 0xFFFFFFFF
PHILOX_M = (0xD2511F53, 0xCD9E8D57)   # Random123's PHILOX_M4x32_0, _1: the multipliers of words 0 and 2
PHILOX_W = (0x9E3779B9, 0xBB67AE85)   # its Weyl key increments (golden ratio, sqrt(3) - 1)
ROUNDS = 10
SEED_RULE = ("sample i, draw s (0: the start, then each injected noise in order): Box-Muller of "
             "Philox4x32-10(key=(seed mod 2**32, (seed mod 2**64) >> 32), counter=(block, s, i mod 2**32, i >> 32)) "
             "(zoo.noise)")


def _mulhilo(a: Tensor, m_lo: Tensor, m_hi: Tensor) -> tuple[Tensor, Tensor]:
    """``(hi, lo)`` 32-bit words of the 64-bit products ``a * m`` for 32-bit ``a`` (int64 tensor) and ``m = m_hi *
    2**16 + m_lo``: each partial product stays below 2**49, so int64 holds every step exactly."""
    p_lo = a * m_lo                                            # < 2**48
    p_hi = a * m_hi                                            # < 2**48; a*m = p_lo + p_hi * 2**16
    t = (p_hi & 0xFFFF).bitwise_left_shift_(16).add_(p_lo)     # a*m - (p_hi >> 16) * 2**32, < 2**49
    return p_hi.bitwise_right_shift_(16).add_(t >> 32), t.bitwise_and_(MASK32)


def philox4x32(counter: Tensor, key: tuple[int, int], rounds: int = ROUNDS) -> Tensor:
    """Philox4x32-R of ``counter`` under ``key`` (Random123's ``philox4x32_R``).

    Args:
        counter: ``(4, ...)`` int64 holding 32-bit words (word 0 first), any device.
        key: two 32-bit words.
    Returns:
        ``(4, ...)`` int64, the output words in [0, 2**32).
    """
    if counter.dtype != torch.int64 or counter.ndim < 1 or counter.shape[0] != 4:
        raise InvalidInputError(f"counter must be (4, ...) int64 words, got {counter.dtype} {tuple(counter.shape)}")
    even, odd = _philox_pairs(counter.reshape(4, -1), _philox_constants(key, rounds, counter.device))
    return torch.stack([even[0], odd[0], even[1], odd[1]]).reshape(counter.shape)


def _philox_constants(key: tuple[int, int], rounds: int, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
    """The multipliers' 16-bit halves, both word orders ``(2, 2, 1)``, and the round keys ``(rounds, 2, 1)`` (the
    first is ``key``, then bumped by PHILOX_W; in the order :func:`_philox_pairs` needs), int64 on ``device``.
    Made once per noise source: a tensor made from Python numbers is a host-to-device copy, which would wait
    for the device at every draw."""
    m = torch.tensor([PHILOX_M, PHILOX_M[::-1]], dtype=torch.int64).reshape(2, 2, 1)
    keys = [[(key[0] + r * PHILOX_W[0]) & MASK32, (key[1] + r * PHILOX_W[1]) & MASK32] for r in range(rounds)]
    keys = torch.tensor([k[::-1] if r % 2 == 0 else k for r, k in enumerate(keys)], dtype=torch.int64)
    return (m & 0xFFFF).to(device), (m >> 16).to(device), keys.reshape(rounds, 2, 1).to(device)


def _philox_pairs(counter: Tensor, constants: tuple[Tensor, Tensor, Tensor]) -> tuple[Tensor, Tensor]:
    """Philox of ``(4, K)`` counter words as its output words ``(w0, w2)`` and ``(w1, w3)``, each ``(2, K)``."""
    m_lo, m_hi, keys = constants
    # A round is (c0, c1, c2, c3) <- (hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0), (hi_j, lo_j) = M_j * c_{2j}. The
    # word pairs are kept in alternating order so that it needs no copy: even rounds hold (c0, c2), (c1, c3)
    # and make (c2', c0'), (c3', c1'); odd rounds multiply by (M1, M0) and turn those back.
    even, odd = counter[0::2], counter[1::2]
    for r in range(len(keys)):
        hi, lo = _mulhilo(even, m_lo[r % 2], m_hi[r % 2])
        hi ^= keys[r]
        hi[0] ^= odd[1]
        hi[1] ^= odd[0]
        even, odd = hi, lo
    if len(keys) % 2:
        even, odd = even.flip(0), odd.flip(0)
    return even, odd


def _box_muller(radius_words: Tensor, angle_words: Tensor, out: Tensor) -> None:
    """Words ``(w0, w2)`` and ``(w1, w3)`` of K blocks, each ``(2, K)`` -> ``out``, ``(K, 4)`` standard normals in
    its dtype, ``sqrt(-2 ln u(w0)) * (cos, sin)(2 pi u(w1))`` then the same of ``(w2, w3)``."""
    dtype = out.dtype
    u = radius_words.to(dtype).add_(0.5).mul_(2.0 ** -32)            # (2, K) in (0, 1]: never 0
    radius = u.log_().mul_(-2.0).sqrt_()
    angle = angle_words.to(dtype).add_(0.5).mul_(2 * math.pi * 2.0 ** -32)
    torch.mul(radius.t(), angle.cos().t(), out=out[:, 0::2])
    torch.mul(radius.t(), angle.sin_().t(), out=out[:, 1::2])


def run_key(seed: int) -> tuple[int, int]:
    """The Philox key of a run seed: ``seed mod 2**64`` as two 32-bit words (any Python int is a seed)."""
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise InvalidInputError(f"seed={seed!r}: the run seed is an integer")
    seed %= 2**64
    return seed & MASK32, seed >> 32


def _checked_indices(indices: Tensor | Sequence[int]) -> Tensor:
    index = torch.as_tensor(indices, dtype=torch.int64).reshape(-1)
    if index.numel() == 0:
        raise InvalidInputError("no sample indices: draw noise for at least one sample")
    if int(index.min()) < 0:
        raise InvalidInputError(f"sample indices are >= 0, got {int(index.min())}")
    return index


def _blocks(numel: int) -> int:
    if isinstance(numel, bool) or not isinstance(numel, int) or not 1 <= numel <= 4 * (MASK32 + 1):
        raise InvalidInputError(f"a sample of {numel!r} values cannot be drawn: 1 to 2**34 values per sample")
    return (numel + 3) // 4


def _draw(constants: tuple[Tensor, Tensor, Tensor], index: Tensor, step: int, numel: int,
          dtype: torch.dtype) -> Tensor:
    """``(N, numel)`` normals of draw ``step`` for the samples ``index`` (int64 on the device they are drawn on)
    under a run's Philox constants (:func:`_philox_constants`, on that device)."""
    if not 0 <= step <= MASK32:
        raise InvalidInputError(f"draw {step} is past the last one a run has (2**32 per sample)")
    device, n, blocks = index.device, len(index), _blocks(numel)
    counter = torch.empty(4, n, blocks, dtype=torch.int64, device=device)
    counter[0] = torch.arange(blocks, dtype=torch.int64, device=device)
    counter[1] = step
    counter[2] = (index & MASK32)[:, None]
    counter[3] = (index >> 32)[:, None]
    counter = counter.reshape(4, n * blocks)
    work = dtype if dtype in (torch.float32, torch.float64) else torch.float32
    out = torch.empty(n * blocks, 4, dtype=work, device=device)
    # Elementwise, so chunks change nothing but speed: on a CPU, pieces that stay in cache; elsewhere few launches.
    chunk = 2**16 if device.type == "cpu" else 2**22
    for lo in range(0, n * blocks, chunk):
        _box_muller(*_philox_pairs(counter[:, lo:lo + chunk], constants), out[lo:lo + chunk])
    return out.reshape(n, blocks * 4)[:, :numel].to(dtype)


def normal(seed: int, indices: Tensor | Sequence[int], step: int, numel: int, *,
           device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> Tensor:
    """Draw ``step`` of the samples ``indices`` in the run ``seed``: ``(N, numel)`` standard normals.

    Row ``j`` depends on ``(seed, indices[j], step)`` alone (see the module docstring); one call for the batch.
    """
    if isinstance(step, bool) or not isinstance(step, int):
        raise InvalidInputError(f"step={step!r}: the draw's number, an integer >= 0")
    index = _checked_indices(indices).to(device)
    return _draw(_philox_constants(run_key(seed), ROUNDS, index.device), index, step, numel, dtype)


def run_seed(generator: torch.Generator | int | None) -> int:
    """The run seed a pipeline's ``generator=`` stands for: one draw from it (from torch's global generator when
    None, so ``torch.manual_seed`` reproduces a run), in [0, 2**63). An int ``S`` stands for
    ``torch.Generator().manual_seed(S)``: what ``seed=S`` means in ``zoo sample`` and ``sample_to_dir``."""
    if isinstance(generator, int) and not isinstance(generator, bool):
        generator = torch.Generator().manual_seed(generator)
    device = generator.device if generator is not None else "cpu"
    return int(torch.randint(0, 2**63 - 1, (), generator=generator, device=device, dtype=torch.int64))


class CounterNoise:
    """The noise of the samples ``indices`` of a run seeded ``seed``: each call draws the next step for all of
    them at once, ``(N, *shape)`` in ``dtype`` on ``device``.

    Call 0 is the starting noise, call ``s`` the ``s``-th noise a stochastic sampler injects; it is a
    ``noise_sampler(sigma, sigma_next)`` as samplers take it. Sample ``indices[j]``'s noise is the same in any
    batch, on any rank, in any order (see the module docstring). ``step`` is the next call's draw number.
    """

    def __init__(self, indices: Tensor | Sequence[int], shape: tuple[int, ...], *, seed: int,
                 device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32):
        self.seed, self.key = seed, run_key(seed)
        self.shape, self.device, self.dtype = tuple(shape), torch.device(device), dtype
        self.numel = math.prod(self.shape)
        _blocks(self.numel)
        self.indices = _checked_indices(indices).to(self.device)
        self._constants = _philox_constants(self.key, ROUNDS, self.device)
        self.step = 0

    def draw(self) -> Tensor:
        """The next step's noise, ``(N, *shape)``."""
        z = _draw(self._constants, self.indices, self.step, self.numel, self.dtype)
        self.step += 1
        return z.reshape(len(self.indices), *self.shape)

    def __call__(self, sigma: Tensor | None = None, sigma_next: Tensor | None = None) -> Tensor:
        return self.draw()
