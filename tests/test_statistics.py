"""Bootstrap intervals (vaemotion.benchmark.statistics) against scipy.stats.bootstrap and a float64 CCC."""

import numpy as np
import pytest
from scipy import stats

from vaemotion.benchmark.functional import concordance_correlation_coefficient
from vaemotion.benchmark.statistics import (
    batched_ccc,
    bootstrap,
    mean_ccc_statistic,
    mean_statistic,
    resample_indices,
)

RESAMPLES = 20000  # Monte Carlo error of a 2.5% percentile at n = 200: about 0.003 on an accuracy


def scipy_interval(data, statistic, paired=False):
    result = stats.bootstrap(data, statistic, n_resamples=RESAMPLES, method="percentile", paired=paired,
                             vectorized=False, random_state=np.random.default_rng(1))
    return result.confidence_interval.low, result.confidence_interval.high


def test_batched_ccc_equals_the_float64_formula_row_by_row():
    rng = np.random.default_rng(0)
    pred, ref = rng.normal(size=(6, 40)), rng.normal(size=(6, 40))
    pred[1] = 0.3  # a constant prediction
    pred[2], ref[2] = 0.5, 0.5  # identical constants
    pred[3] = ref[3] * 2 + 0.1
    expected = [concordance_correlation_coefficient(p, r) for p, r in zip(pred, ref)]
    np.testing.assert_allclose(batched_ccc(pred, ref), expected, rtol=1e-12, atol=1e-12)


def test_accuracy_interval_matches_scipy():
    correct = (np.random.default_rng(2).random(200) < 0.7).astype(float)
    estimate = bootstrap(mean_statistic(correct), correct.size, num_resamples=RESAMPLES)
    low, high = scipy_interval((correct,), np.mean)
    assert estimate.value == correct.mean()
    assert estimate.low == pytest.approx(low, abs=0.01) and estimate.high == pytest.approx(high, abs=0.01)


def test_paired_difference_interval_matches_scipy_and_is_narrower_than_unpaired():
    rng = np.random.default_rng(3)
    first = (rng.random(200) < 0.8).astype(float)
    second = np.where(rng.random(200) < 0.9, first, 1 - first)  # agrees with the first on 90% of the items
    a, b = mean_statistic(first), mean_statistic(second)
    estimate = bootstrap(lambda idx: a(idx) - b(idx), first.size, num_resamples=RESAMPLES)
    low, high = scipy_interval((first, second), lambda x, y: np.mean(x) - np.mean(y), paired=True)
    assert estimate.low == pytest.approx(low, abs=0.01) and estimate.high == pytest.approx(high, abs=0.01)
    unpaired = scipy_interval((first, second), lambda x, y: np.mean(x) - np.mean(y))
    assert estimate.high - estimate.low < 0.7 * (unpaired[1] - unpaired[0])


def test_mean_ccc_interval_matches_scipy_on_the_float64_formula():
    rng = np.random.default_rng(4)
    ref_v, ref_a = rng.uniform(-1, 1, 150), rng.uniform(-1, 1, 150)
    pred_v, pred_a = 0.8 * ref_v + rng.normal(0, 0.3, 150), 0.5 * ref_a + rng.normal(0, 0.4, 150)
    estimate = bootstrap(mean_ccc_statistic(pred_v, pred_a, ref_v, ref_a), 150, num_resamples=5000)

    def reference(pv, pa, rv, ra):
        return (concordance_correlation_coefficient(pv, rv) + concordance_correlation_coefficient(pa, ra)) / 2

    assert estimate.value == pytest.approx(reference(pred_v, pred_a, ref_v, ref_a), abs=1e-12)
    result = stats.bootstrap((pred_v, pred_a, ref_v, ref_a), reference, n_resamples=5000, method="percentile",
                             paired=True, vectorized=False, random_state=np.random.default_rng(5))
    assert estimate.low == pytest.approx(result.confidence_interval.low, abs=0.02)
    assert estimate.high == pytest.approx(result.confidence_interval.high, abs=0.02)


def test_the_interval_covers_the_true_rate_about_95_percent_of_the_time():
    rng = np.random.default_rng(6)
    covered = 0
    for trial in range(300):
        correct = (rng.random(200) < 0.7).astype(float)
        estimate = bootstrap(mean_statistic(correct), 200, num_resamples=1000, seed=trial)
        covered += estimate.low <= 0.7 <= estimate.high
    assert 0.90 <= covered / 300 <= 0.99, covered  # binomial spread of 300 trials about 0.013


def test_bad_inputs_get_named_errors():
    with pytest.raises(ValueError, match="at least one item"):
        resample_indices(0)
    with pytest.raises(ValueError, match="non-finite"):
        mean_statistic([1.0, float("nan")])
    with pytest.raises(ValueError, match="differ in length"):
        mean_ccc_statistic([0.1, 0.2], [0.1, 0.2], [0.1], [0.1, 0.2])
    with pytest.raises(ValueError, match="confidence"):
        bootstrap(mean_statistic([1.0, 0.0]), 2, confidence=95)
