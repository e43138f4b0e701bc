"""A digit judge for generated digits (tests, benchmarks): are samples recognisable digits, and of which classes?

A sample counts as a recognisable digit when it is both close to some real digit and confidently classified
(the rule of tests/test_ddpm_digits.py, at the data's own 8x8 resolution):

* near: its distance to the nearest of the 1,500 training digits is within the 99th percentile of the same
  distance for the 297 held-out digits (in 8x8 units of 0..16);
* confident: a calibrated SVM (scikit-learn's classic digits classifier, fitted on the 1,500 training digits)
  gives its top class a probability above ``confidence``.

A classifier alone is fooled by noise (it is confident about much of it); the distance alone says nothing about
the class. Images may be 8x8 or 16x16 (ddpm-digits; averaged down to 8x8 first). scikit-learn is needed.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .train_digits import load_digits_split


@dataclass
class Verdict:
    """``recognised``: fraction of the samples judged digits; ``per_class``: counts of the recognised per class
    (10,); ``confidence``: mean top-class probability of the recognised."""

    recognised: float
    per_class: np.ndarray
    confidence: float

    @property
    def classes(self) -> int:
        return int((self.per_class > 0).sum())

    @property
    def balanced(self) -> float:
        """Recognised digits counted at most N/10 per class, over N: 1 for recognisable samples spread evenly over
        the ten classes, 0.1 for a model that repeats one digit however well (a one-step 1-RF draws the data's
        mean-like digit for every noise). The 297 held-out real digits score 0.95 (98% recognised)."""
        n = self.per_class.sum() / self.recognised if self.recognised > 0 else 0
        return float(np.minimum(self.per_class, n / 10).sum() / n) if n else 0.0


class DigitJudge:
    def __init__(self, confidence: float = 0.7):
        from sklearn.calibration import CalibratedClassifierCV
        from sklearn.svm import SVC

        train, labels, held, _ = load_digits_split()
        self.data = train.reshape(len(train), 64) * 16
        nearest = torch.cdist(held.reshape(len(held), 64) * 16, self.data).min(1).values
        self.max_distance = float(np.percentile(nearest.numpy(), 99))
        self.confidence = confidence
        self.svm = CalibratedClassifierCV(SVC(gamma=0.001), ensemble=False).fit(self.data.numpy(), labels.numpy())

    def __call__(self, images: Tensor) -> Verdict:
        """Images ``(N, 1, 8, 8)`` or ``(N, 1, 16, 16)`` in [0, 1] -> :class:`Verdict`."""
        x = images.detach().float().cpu()
        if x.shape[-1] != 8:
            x = F.adaptive_avg_pool2d(x, 8)
        x8 = x.reshape(len(x), 64) * 16
        near = torch.cdist(x8, self.data).min(1).values.numpy() <= self.max_distance
        proba = self.svm.predict_proba(x8.numpy())
        ok = near & (proba.max(1) > self.confidence)
        per_class = np.bincount(proba.argmax(1)[ok], minlength=10)
        return Verdict(float(ok.mean()), per_class, float(proba.max(1)[ok].mean()) if ok.any() else 0.0)
