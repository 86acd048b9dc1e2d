"""Bootstrap intervals for benchmark scores, resampling clips.

A benchmark score is a statistic of per-clip values (an accuracy is a mean of 0/1, a CCC a function of predicted
and reference pairs). Its 95% interval is the percentile bootstrap (Efron & Tibshirani 1993, ch. 13): draw the test
clips with replacement ``num_resamples`` times, recompute the statistic on each draw, take the 2.5th and 97.5th
percentiles. A *difference* between two scores on the same clips (audio-visual minus visual-only, a full run minus
an ablation) is bootstrapped **paired**: both scores are recomputed on the same draw, which is what makes a small
but consistent gain distinguishable from noise.

A statistic here is a function of an index array: given indices of shape ``(..., n)`` it returns the statistic of
each row, shape ``(...)``; :func:`mean_statistic` and :func:`mean_ccc_statistic` build the two the benchmark needs,
and statistics combine with ``lambda idx: a(idx) - b(idx)``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

Statistic = Callable[[np.ndarray], np.ndarray]

NUM_RESAMPLES = 2000
CONFIDENCE = 0.95


@dataclass(frozen=True)
class Estimate:
    """A score and its percentile-bootstrap interval."""

    value: float
    low: float
    high: float

    @property
    def interval(self) -> list[float]:
        return [self.low, self.high]

    def above(self, threshold: float) -> bool:
        """Whether the whole interval lies above ``threshold``."""
        return self.low > threshold


def resample_indices(num_items: int, num_resamples: int = NUM_RESAMPLES, seed: int = 0) -> np.ndarray:
    """``(num_resamples, num_items)`` indices drawn with replacement (seeded, so a report is reproducible)."""
    if num_items < 1:
        raise ValueError(f"the bootstrap needs at least one item, got {num_items}")
    if num_resamples < 1:
        raise ValueError(f"num_resamples must be >= 1, got {num_resamples}")
    return np.random.default_rng(seed).integers(0, num_items, size=(num_resamples, num_items))


def bootstrap(statistic: Statistic, num_items: int, *, num_resamples: int = NUM_RESAMPLES,
              confidence: float = CONFIDENCE, seed: int = 0) -> Estimate:
    """The statistic on all ``num_items`` items and its percentile-bootstrap interval at ``confidence``.

    >>> correct = np.array([1, 0, 1, 1, 0, 1, 1, 1, 0, 1], dtype=float)
    >>> estimate = bootstrap(mean_statistic(correct), len(correct))
    >>> estimate.value, 0.3 <= estimate.low < 0.7 < estimate.high <= 1.0
    (0.7, True)
    """
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    value = float(statistic(np.arange(num_items)))
    draws = np.asarray(statistic(resample_indices(num_items, num_resamples, seed)), dtype=np.float64)
    tail = 100 * (1 - confidence) / 2
    low, high = np.percentile(draws, [tail, 100 - tail])
    return Estimate(value, float(low), float(high))


def mean_statistic(values) -> Statistic:
    """The mean of per-item ``values`` (an accuracy, from 0/1 correctness)."""
    values = _finite_1d(values, "values")
    return lambda indices: values[indices].mean(axis=-1)


def batched_ccc(pred: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """Lin's concordance correlation coefficient along the last axis (population moments), with
    ``functional.concordance_correlation_coefficient``'s conventions: 1 for identical constants, else 0 when the
    denominator vanishes."""
    pred_mean, ref_mean = pred.mean(axis=-1, keepdims=True), ref.mean(axis=-1, keepdims=True)
    covariance = np.mean((pred - pred_mean) * (ref - ref_mean), axis=-1)
    denominator = pred.var(axis=-1) + ref.var(axis=-1) + (pred_mean - ref_mean)[..., 0] ** 2
    safe = np.where(denominator > 0, denominator, 1.0)
    return np.where(denominator > 0, 2 * covariance / safe, 1.0)


def mean_ccc_statistic(pred_valence, pred_arousal, ref_valence, ref_arousal) -> Statistic:
    """The mean of the valence and arousal CCCs (the benchmark's ``mean_ccc``) over the chosen items."""
    arrays = [_finite_1d(values, name) for values, name in (
        (pred_valence, "pred_valence"), (pred_arousal, "pred_arousal"),
        (ref_valence, "ref_valence"), (ref_arousal, "ref_arousal"),
    )]  # fmt: skip
    if len({array.size for array in arrays}) != 1:
        raise ValueError(f"valence and arousal arrays differ in length: {[array.size for array in arrays]}")
    pv, pa, rv, ra = arrays
    return lambda indices: (batched_ccc(pv[indices], rv[indices]) + batched_ccc(pa[indices], ra[indices])) / 2


def _finite_1d(values, name: str) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1 or array.size == 0:
        raise ValueError(f"{name} must be a non-empty 1-D array, got shape {array.shape}")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} holds non-finite values: drop unscored items before the bootstrap")
    return array


__all__ = [
    "CONFIDENCE",
    "NUM_RESAMPLES",
    "Estimate",
    "batched_ccc",
    "bootstrap",
    "mean_ccc_statistic",
    "mean_statistic",
    "resample_indices",
]
