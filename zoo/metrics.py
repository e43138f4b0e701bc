"""Metrics that judge generators: Fréchet distance (FID on Inception features) and KID, on any features.

Both compare two sets of features, ``(N, D)`` and ``(M, D)`` (numpy arrays or tensors, any float dtype): the
features of generated images and of real ones, from any Encoder (``inception-fid`` for FID proper, see
``zoo.plugins.metrics``). All arithmetic is float64 numpy, as in pytorch-fid.

Fréchet distance (Heusel et al. 2017, "GANs Trained by a Two Time-Scale Update Rule...")
----------------------------------------------------------------------------------------
Each set is summarised by a Gaussian ``N(mu, Sigma)`` (:func:`statistics`: the mean and the unbiased
covariance, ``np.cov(rowvar=False)``), and the distance between the two Gaussians is

    d^2 = ||mu_1 - mu_2||^2 + Tr(Sigma_1 + Sigma_2 - 2 (Sigma_1 Sigma_2)^{1/2})

with ``scipy.linalg.sqrtm`` for the matrix square root and pytorch-fid's two safeguards: when the product is
near singular (sqrtm returns non-finite values) ``eps * I`` is added to both covariances, and the small
imaginary part numerical error leaves in the square root is dropped, unless its diagonal exceeds 1e-3 (then
the covariances are not covariances and the result would be meaningless: an error).

Reference statistics are stored as ``.npz`` files with the arrays ``mu`` and ``sigma``, the layout
pytorch-fid's ``--save-stats`` writes and reads (:func:`save_statistics`, :func:`load_statistics`).

KID (Bińkowski et al. 2018, "Demystifying MMD GANs")
----------------------------------------------------
The squared maximum mean discrepancy with the cubic polynomial kernel ``k(x, y) = (x.y / D + 1)^3``, estimated
without bias on random subsets of ``m`` features from each set:

    MMD^2_u = sum_{i != j} k(x_i, x_j) / (m (m-1))  +  sum_{i != j} k(y_i, y_j) / (m (m-1))
              - 2 sum_{i, j} k(x_i, y_j) / m^2

:func:`kid` returns its mean and (population) standard deviation over the subsets, as torchmetrics and
torch-fidelity do. Being unbiased, it needs no large sample (FID is biased upward for small N).
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from zoo.registry.errors import InvalidInputError, MissingFileError

Features = Any
"""``(N, D)`` features: a numpy array, a torch tensor, or anything ``np.asarray`` reads."""
Stats = tuple[np.ndarray, np.ndarray]
"""``(mu, sigma)``: the ``(D,)`` mean and ``(D, D)`` covariance of a feature set."""

__all__ = ["frechet_distance", "statistics", "save_statistics", "load_statistics", "kid", "mmd2_polynomial",
           "encoder_features"]


def _as_features(feats: Features, what: str) -> np.ndarray:
    """Features -> float64 ``(N, D)`` numpy, checked (tensors are moved to the CPU and detached)."""
    if hasattr(feats, "detach"):  # a torch tensor, without importing torch here
        feats = feats.detach().to("cpu").double().numpy()
    arr = np.asarray(feats, dtype=np.float64)
    if arr.ndim != 2:
        raise InvalidInputError(f"{what} must be (N, D) features, got shape {arr.shape}; flatten each sample's "
                                f"features to one row")
    if len(arr) < 2:
        raise InvalidInputError(f"{what} holds {len(arr)} feature row(s); statistics need at least 2")
    if not np.isfinite(arr).all():
        raise InvalidInputError(f"{what} holds NaN or Inf ({int((~np.isfinite(arr)).sum())} of {arr.size} values)")
    return arr


def statistics(feats: Features) -> Stats:
    """``(N, D)`` features -> ``(mu, sigma)``: the mean ``(D,)`` and the unbiased covariance ``(D, D)``, float64.

    The same as pytorch-fid's ``np.mean(act, axis=0), np.cov(act, rowvar=False)``.
    """
    arr = _as_features(feats, "features")
    return arr.mean(axis=0), np.cov(arr, rowvar=False)


def _as_stats(x: Features | Stats, what: str) -> Stats:
    if isinstance(x, tuple) and len(x) == 2:
        mu, sigma = (np.atleast_1d(np.asarray(x[0], dtype=np.float64)),
                     np.atleast_2d(np.asarray(x[1], dtype=np.float64)))
        if mu.ndim != 1 or sigma.shape != (len(mu), len(mu)):
            raise InvalidInputError(f"{what} as (mu, sigma) needs mu (D,) and sigma (D, D), got {mu.shape} and "
                                    f"{sigma.shape}")
        return mu, sigma
    if isinstance(x, (str, os.PathLike)):
        return load_statistics(x)
    return statistics(_as_features(x, what))


def frechet_distance(a: Features | Stats | str | os.PathLike, b: Features | Stats | str | os.PathLike, *,
                     eps: float = 1e-6) -> float:
    """The Fréchet distance between two feature sets (see the module docstring).

    Args:
        a, b: ``(N, D)`` and ``(M, D)`` features, or ``(mu, sigma)`` pairs (:func:`statistics`), or paths of
            ``.npz`` statistics files (:func:`load_statistics`); mixed freely.
        eps: added to both covariances' diagonals when their product is near singular (pytorch-fid's 1e-6).
    Returns:
        d^2 as a Python float (FID when the features are ``inception-fid``'s pool3 features).
    """
    mu1, sigma1 = _as_stats(a, "a")
    mu2, sigma2 = _as_stats(b, "b")
    if mu1.shape != mu2.shape:
        raise InvalidInputError(f"the two feature sets have different dimensions ({len(mu1)} and {len(mu2)}): "
                                f"compute both with the same encoder")
    from scipy import linalg  # here, not at import: listing models must not pay for scipy

    diff = mu1 - mu2
    with warnings.catch_warnings():  # singular products are handled below, as pytorch-fid's disp=False does
        warnings.simplefilter("ignore", linalg.LinAlgWarning)
        covmean = linalg.sqrtm(sigma1.dot(sigma2))
    if not np.isfinite(covmean).all():
        warnings.warn(f"frechet_distance: the product of the covariances is singular; adding {eps} to their "
                      f"diagonals (more samples than feature dimensions avoids this)", RuntimeWarning, stacklevel=2)
        offset = np.eye(sigma1.shape[0]) * eps
        covmean = linalg.sqrtm((sigma1 + offset).dot(sigma2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise InvalidInputError(f"frechet_distance: the square root of the covariance product has an imaginary "
                                    f"part of {np.max(np.abs(covmean.imag)):.3g}; the covariances are not positive "
                                    f"semi-definite (damaged statistics?)")
        covmean = covmean.real
    return float(diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


def save_statistics(path: str | os.PathLike, stats_or_features: Features | Stats) -> Path:
    """Write ``(mu, sigma)`` (or the statistics of ``(N, D)`` features) to ``path`` as pytorch-fid's ``.npz``.

    The file is written to a temporary name and renamed, so a killed run never leaves a partial file.
    """
    mu, sigma = _as_stats(stats_or_features, "features")
    path = Path(path)
    if path.suffix != ".npz":
        raise InvalidInputError(f"reference statistics are .npz files (mu, sigma); got {str(path)!r}")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.npz")
    np.savez_compressed(tmp, mu=mu, sigma=sigma)
    os.replace(tmp, path)
    return path


def load_statistics(path: str | os.PathLike) -> Stats:
    """``(mu, sigma)`` from an ``.npz`` with the arrays ``mu`` and ``sigma`` (as pytorch-fid writes them)."""
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"no statistics file {str(path)!r}; write one with zoo.metrics.save_statistics")
    with np.load(path) as f:
        if "mu" not in f or "sigma" not in f:
            raise InvalidInputError(f"{str(path)!r} holds {sorted(f.files)}, not the statistics arrays 'mu' and "
                                    f"'sigma' (is it a sample shard? pass its features, or its folder to zoo fid)")
        return _as_stats((f["mu"], f["sigma"]), str(path))


def mmd2_polynomial(x: Features, y: Features, *, degree: int = 3, coef: float = 1.0) -> float:
    """Unbiased MMD^2 between ``(m, D)`` and ``(n, D)`` features with the kernel ``(x.y / D + coef)^degree``.

    The diagonals of the within-set kernel matrices are left out (what makes it unbiased); with ``m == n`` it
    is torchmetrics' ``poly_mmd``.
    """
    x, y = _as_features(x, "x"), _as_features(y, "y")
    if x.shape[1] != y.shape[1]:
        raise InvalidInputError(f"the two feature sets have different dimensions ({x.shape[1]} and {y.shape[1]})")
    d, m, n = x.shape[1], len(x), len(y)
    k_xx = (x @ x.T / d + coef) ** degree
    k_yy = (y @ y.T / d + coef) ** degree
    k_xy = (x @ y.T / d + coef) ** degree
    return float((k_xx.sum() - np.trace(k_xx)) / (m * (m - 1)) + (k_yy.sum() - np.trace(k_yy)) / (n * (n - 1))
                 - 2 * k_xy.mean())


def kid(a: Features, b: Features, *, subsets: int = 100, subset_size: int = 1000, seed: int = 0,
        degree: int = 3, coef: float = 1.0) -> tuple[float, float]:
    """Kernel inception distance: the mean and standard deviation of :func:`mmd2_polynomial` over subsets.

    Each of ``subsets`` rounds draws ``subset_size`` rows of ``a`` and of ``b`` without replacement (from a
    ``numpy.random.default_rng(seed)``, so a seed gives the same number); a set smaller than ``subset_size``
    makes the subset size the smaller set's size, as torchmetrics requires it not to exceed either.
    Returns ``(mean, std)``, the std over subsets with ``ddof=0`` (torchmetrics' and torch-fidelity's).
    """
    a, b = _as_features(a, "a"), _as_features(b, "b")
    if isinstance(subsets, bool) or not isinstance(subsets, int) or subsets < 1:
        raise InvalidInputError(f"subsets={subsets!r}: a positive number of subsets")
    if isinstance(subset_size, bool) or not isinstance(subset_size, int) or subset_size < 2:
        raise InvalidInputError(f"subset_size={subset_size!r}: at least 2 features per subset")
    m = min(subset_size, len(a), len(b))
    rng = np.random.default_rng(seed)
    values = np.array([mmd2_polynomial(a[rng.choice(len(a), m, replace=False)],
                                       b[rng.choice(len(b), m, replace=False)], degree=degree, coef=coef)
                       for _ in range(subsets)])
    return float(values.mean()), float(values.std())


def encoder_features(encoder: Any, images: Any, *, batch_size: int = 50, progress: bool = False) -> np.ndarray:
    """The pooled features of any :class:`zoo.registry.Encoder` for a set of images, float64 ``(N, D)``.

    ``images``: uint8 ``(N, H, W, C)`` arrays (the sample shards' layout), ``(N, C, H, W)`` tensors (uint8, or
    float in [0, 1]), or a list of image paths / PIL images, decoded here to RGB uint8 (one ``(N, 3, H, W)``
    batch when they share a size, else a list of PIL images for the encoder to resize); greyscale (C = 1) is
    repeated to RGB, as pytorch-fid's loader converts files. Runs ``encoder.encode(encoder.preprocess(batch))`` under
    ``torch.inference_mode`` in batches of ``batch_size`` (pytorch-fid's default, 50).
    """
    import torch

    from .progress import progress_bar

    if isinstance(images, np.ndarray):
        if images.ndim != 4 or images.shape[-1] not in (1, 3):
            raise InvalidInputError(f"an image array must be (N, H, W, C) with C = 1 or 3, got {images.shape}")
        images = torch.from_numpy(images).permute(0, 3, 1, 2)
    n = len(images)
    if n == 0:
        raise InvalidInputError("no images to encode")
    out = []
    with torch.inference_mode(), progress_bar(total=n, desc=f"features [{getattr(encoder, 'name', '')}]",
                                              unit="img", progress=progress, leave=False) as bar:
        for start in range(0, n, batch_size):
            batch = images[start:start + batch_size]
            if isinstance(batch, (list, tuple)):  # files are decoded one batch at a time
                batch = _decoded(batch)
            if isinstance(batch, torch.Tensor) and batch.ndim == 4 and batch.shape[1] == 1:
                batch = batch.expand(-1, 3, -1, -1)
            feats = encoder.encode(encoder.preprocess(batch))
            out.append(feats.reshape(len(feats), -1).double().cpu().numpy())
            bar.update(len(feats))
    return np.concatenate(out)


def _decoded(items: list | tuple) -> Any:
    """Paths / PIL images -> uint8 ``(N, 3, H, W)`` (one size) or the list of RGB PIL images (mixed sizes)."""
    import torch
    from PIL import Image

    from .preprocess import load_images

    loaded = load_images(list(items))
    if not all(isinstance(img, Image.Image) for img in loaded) or len({img.size for img in loaded}) != 1:
        return loaded
    return torch.from_numpy(np.stack([np.asarray(img, dtype=np.uint8) for img in loaded])).permute(0, 3, 1, 2)
