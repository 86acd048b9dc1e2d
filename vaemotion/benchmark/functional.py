"""ArtEmoBenchmark metrics as plain numpy functions.

The ``evaluate`` modules under ``vaemotion/benchmark/metrics`` are thin wrappers around these, so the numbers are
the same whichever way they are computed. Every function validates its inputs and raises ``ValueError`` on empty,
mismatched or NaN inputs: a metric computed over silently dropped items would be a different metric.

Conventions (chosen once, here):

- Statistics use population moments (divide by N), as in Lin's (1989) concordance correlation coefficient.
- ``pearson`` returns ``nan`` when either input is constant: the correlation is undefined, and a visible ``nan``
  in a results table is more honest than a 0 that reads as "measured, no correlation". No warning is emitted.
- ``concordance_correlation_coefficient`` stays defined for constant inputs: 0 when only one side is constant or
  both are constant at different values, 1 when both are the same constant (perfect agreement).
- Quadrants are taken by sign with 0 counted as positive (``x >= 0`` is "high").
- F1 averages over the labels present in the references or the predictions; a label absent from both is left
  out of the macro average, a present label that is never predicted (or never correct) scores 0, with no warning.
  This matches scikit-learn's ``f1_score(..., labels=present, zero_division=0)``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = [
    "accuracy_by",
    "concordance_correlation_coefficient",
    "f1_scores",
    "mer_score",
    "pearson",
    "quadrant_accuracy",
    "rmse",
    "valence_arousal_metrics",
]


def _as_1d(values, name: str, dtype=np.float64) -> np.ndarray:
    array = np.asarray(values, dtype=dtype)
    if array.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {array.shape}")
    if array.size == 0:
        raise ValueError(f"{name} is empty: a metric needs at least one item")
    if array.dtype.kind == "f" and not np.all(np.isfinite(array)):
        bad = int(np.flatnonzero(~np.isfinite(array))[0])
        raise ValueError(
            f"{name}[{bad}] is {array[bad]}: drop unlabelled or failed items before scoring instead of passing NaN"
        )
    return array


def _paired(pred, ref, pred_name: str = "pred", ref_name: str = "ref", dtype=np.float64):
    pred, ref = _as_1d(pred, pred_name, dtype), _as_1d(ref, ref_name, dtype)
    if pred.shape != ref.shape:
        raise ValueError(f"{pred_name} and {ref_name} differ in length: {pred.size} vs {ref.size}")
    return pred, ref


def _centred(values: np.ndarray) -> np.ndarray:
    # a constant input's mean can be an ulp off its value; its deviations are exactly 0
    if np.all(values == values[0]):
        return np.zeros_like(values)
    return values - values.mean()


def concordance_correlation_coefficient(pred, ref) -> float:
    """Lin's concordance correlation coefficient ``2 cov / (var_p + var_r + (mean_p - mean_r)^2)``.

    Unlike Pearson it penalises bias and scale, so a prediction must match the reference values, not just follow
    them. A constant prediction scores 0 (unless the reference is the same constant, which scores 1).

    >>> concordance_correlation_coefficient([0.1, 0.5, -0.3], [0.1, 0.5, -0.3])
    1.0
    >>> round(concordance_correlation_coefficient([0.2, 0.6, -0.2], [0.1, 0.5, -0.3]), 4)
    0.9552
    >>> concordance_correlation_coefficient([0.1, 0.1, 0.1], [0.1, 0.5, -0.3])
    0.0
    """
    pred, ref = _paired(pred, ref)
    centred_p, centred_r = _centred(pred), _centred(ref)
    covariance = np.mean(centred_p * centred_r)
    denominator = np.mean(centred_p**2) + np.mean(centred_r**2) + (pred.mean() - ref.mean()) ** 2
    if denominator == 0.0:  # both constant and equal: identical sequences agree perfectly
        return 1.0
    return float(2.0 * covariance / denominator)


def pearson(pred, ref) -> float:
    """Pearson correlation; ``nan`` (without a warning) when either input is constant.

    >>> pearson([1.0, 2.0, 3.0], [2.0, 4.0, 6.5]) > 0.99
    True
    >>> pearson([0.1, 0.1, 0.1], [2.0, 4.0, 6.0])
    nan
    """
    pred, ref = _paired(pred, ref)
    centred_p, centred_r = _centred(pred), _centred(ref)
    norm = np.sqrt(np.sum(centred_p**2) * np.sum(centred_r**2))
    if norm == 0.0:
        return float("nan")
    # rounding can push |r| a hair above 1 for perfectly correlated inputs
    return float(np.clip(np.sum(centred_p * centred_r) / norm, -1.0, 1.0))


def rmse(pred, ref) -> float:
    """Root mean squared error.

    >>> rmse([0.0, 0.5], [0.0, -0.5])
    0.7071067811865476
    """
    pred, ref = _paired(pred, ref)
    return float(np.sqrt(np.mean((pred - ref) ** 2)))


def quadrant_accuracy(pred_valence, pred_arousal, ref_valence, ref_arousal) -> float:
    """Share of items whose predicted (valence, arousal) lies in the reference's quadrant.

    Quadrants are taken by sign, and 0 counts as positive (``x >= 0``), so (0, 0) is in the
    high-valence/high-arousal quadrant.

    >>> quadrant_accuracy([0.3, -0.2, 0.0], [0.5, 0.4, -0.1], [0.9, 0.1, 0.2], [0.1, 0.2, -0.6])
    0.6666666666666666
    """
    pred_valence, ref_valence = _paired(pred_valence, ref_valence, "pred_valence", "ref_valence")
    pred_arousal, ref_arousal = _paired(pred_arousal, ref_arousal, "pred_arousal", "ref_arousal")
    if pred_valence.shape != pred_arousal.shape:
        raise ValueError(f"valence and arousal differ in length: {pred_valence.size} vs {pred_arousal.size}")
    same_valence_sign = (pred_valence >= 0) == (ref_valence >= 0)
    same_arousal_sign = (pred_arousal >= 0) == (ref_arousal >= 0)
    return float(np.mean(same_valence_sign & same_arousal_sign))


def valence_arousal_metrics(pred_valence, pred_arousal, ref_valence, ref_arousal) -> dict[str, float]:
    """CCC, Pearson and RMSE for each dimension, their mean CCC, and the quadrant accuracy.

    Keys: ``valence_ccc``, ``valence_pearson``, ``valence_rmse``, the same three for ``arousal``, ``mean_ccc`` and
    ``quadrant_accuracy``.

    >>> m = valence_arousal_metrics([0.5, -0.5, 0.2], [0.1, 0.3, -0.4], [0.5, -0.5, 0.2], [0.1, 0.3, -0.4])
    >>> m["valence_ccc"], m["arousal_rmse"], m["quadrant_accuracy"]
    (1.0, 0.0, 1.0)
    """
    metrics = {}
    for dimension, pred, ref in (("valence", pred_valence, ref_valence), ("arousal", pred_arousal, ref_arousal)):
        pred, ref = _paired(pred, ref, f"pred_{dimension}", f"ref_{dimension}")
        metrics[f"{dimension}_ccc"] = concordance_correlation_coefficient(pred, ref)
        metrics[f"{dimension}_pearson"] = pearson(pred, ref)
        metrics[f"{dimension}_rmse"] = rmse(pred, ref)
    metrics["mean_ccc"] = (metrics["valence_ccc"] + metrics["arousal_ccc"]) / 2.0
    metrics["quadrant_accuracy"] = quadrant_accuracy(pred_valence, pred_arousal, ref_valence, ref_arousal)
    return metrics


def _labels(values, name: str, num_labels: int) -> np.ndarray:
    array = np.asarray(values)
    if array.dtype.kind == "f":
        array = _as_1d(array, name)  # rejects empty and NaN before the integrality check
        if not np.all(array == np.round(array)):
            raise ValueError(f"{name} must be integer class indices, got non-integral floats")
    elif array.dtype.kind not in "iu":
        raise ValueError(f"{name} must be integer class indices, got dtype {array.dtype}")
    array = _as_1d(array, name, dtype=np.int64)
    outside = (array < 0) | (array >= num_labels)
    if outside.any():
        bad = int(np.flatnonzero(outside)[0])
        raise ValueError(
            f"{name}[{bad}] = {array[bad]} is not a class index in [0, {num_labels}); "
            "drop items without a label (emotion -1) before scoring"
        )
    return array


def f1_scores(predictions, references, num_labels: int) -> dict:
    """Accuracy, macro and support-weighted F1, per-class F1, and the recalls emotion papers report.

    Only labels present in the references or the predictions are scored; a present label that is never
    predicted gets F1 0 (no NaN, no warning). ``per_class_f1`` and ``support`` map each present label index to its
    value (absent labels are left out rather than reported as NaN). ``uar`` (unweighted average recall) is the mean
    recall over the labels in the references (scikit-learn's ``balanced_accuracy_score``); ``war`` (weighted average
    recall, support-weighted) equals the accuracy for single-label classification and is reported under the name
    speech-emotion papers use. ``weighted_f1`` is their WAF.

    >>> s = f1_scores([0, 0, 1, 1], [0, 1, 1, 1], num_labels=8)
    >>> s["accuracy"], round(s["macro_f1"], 4), round(s["weighted_f1"], 4), s["per_class_f1"]
    (0.75, 0.7333, 0.7667, {0: 0.6666666666666666, 1: 0.8})
    >>> round(s["uar"], 4), s["war"]
    (0.8333, 0.75)
    """
    if num_labels < 1:
        raise ValueError(f"num_labels must be >= 1, got {num_labels}")
    predictions = _labels(predictions, "predictions", num_labels)
    references = _labels(references, "references", num_labels)
    if predictions.shape != references.shape:
        raise ValueError(f"predictions and references differ in length: {predictions.size} vs {references.size}")
    present = np.union1d(predictions, references)
    true_positive = np.array([np.sum((predictions == c) & (references == c)) for c in present], dtype=np.float64)
    predicted = np.array([np.sum(predictions == c) for c in present], dtype=np.float64)
    support = np.array([np.sum(references == c) for c in present], dtype=np.float64)
    # F1 = 2TP / (predicted + actual); the denominator is > 0 for every present label, so no 0/0 arises
    per_class = 2.0 * true_positive / (predicted + support)
    in_references = support > 0
    accuracy = float(np.mean(predictions == references))
    return {
        "accuracy": accuracy,
        "macro_f1": float(per_class.mean()),
        "weighted_f1": float(np.sum(per_class * support) / support.sum()),
        "uar": float(np.mean(true_positive[in_references] / support[in_references])),
        "war": accuracy,
        "per_class_f1": {int(c): float(f) for c, f in zip(present, per_class)},
        "support": {int(c): int(n) for c, n in zip(present, support)},
    }


def mer_score(weighted_f1: float, pred_valence, ref_valence) -> float:
    """The MER challenges' combined score of discrete and dimensional emotion: ``WAF - 0.25 * MSE(valence)``, with
    WAF the support-weighted F1 of the categories (:func:`f1_scores`' ``weighted_f1``) and MSE over valence in the
    benchmark's [-1, 1] scale (MER scores valence on [-5, 5]: there the same predictions give a 25x larger MSE).

    >>> mer_score(0.8, [0.5, -0.5], [0.5, 0.5])
    0.675
    """
    if not (isinstance(weighted_f1, (int, float)) and 0.0 <= weighted_f1 <= 1.0):
        raise ValueError(f"weighted_f1 must be a number in [0, 1], got {weighted_f1!r}")
    pred, ref = _paired(pred_valence, ref_valence, "pred_valence", "ref_valence")
    return float(weighted_f1 - 0.25 * np.mean((pred - ref) ** 2))


def _strings(values, name: str) -> np.ndarray:
    array = _as_1d(np.asarray(list(values), dtype=object), name, dtype=object)
    if not all(isinstance(value, str) for value in array):
        raise ValueError(f"{name} must hold one string per item")
    return array


def accuracy_by(task: Sequence[str], modality: Sequence[str], correct) -> dict:
    """Accuracy overall, per task, per modality, and per (modality, task) cell.

    Returns ``{"accuracy": float, "count": int, "by_task": {task: acc}, "by_modality": {modality: acc},
    "by_modality_task": {modality: {task: acc}}}``; groups appear in sorted order.

    >>> r = accuracy_by(["content", "emotion", "emotion"], ["audio_only"] * 3, [True, False, True])
    >>> r["accuracy"], r["by_task"], r["by_modality_task"]["audio_only"]["emotion"]
    (0.6666666666666666, {'content': 1.0, 'emotion': 0.5}, 0.5)
    """
    correct = np.asarray(correct)
    if correct.size and (correct.dtype.kind not in "bui" or not np.isin(correct, (0, 1)).all()):
        raise ValueError("correct must hold booleans (or 0/1), one per item")
    correct = _as_1d(correct, "correct", dtype=bool)
    task, modality = _strings(task, "task"), _strings(modality, "modality")
    if not task.size == modality.size == correct.size:
        raise ValueError(f"task, modality and correct differ in length: {task.size}, {modality.size}, {correct.size}")

    def mean_over(mask: np.ndarray) -> float:
        return float(correct[mask].mean())

    return {
        "accuracy": float(correct.mean()),
        "count": int(correct.size),
        "by_task": {str(t): mean_over(task == t) for t in sorted(set(task))},
        "by_modality": {str(m): mean_over(modality == m) for m in sorted(set(modality))},
        "by_modality_task": {
            str(m): {str(t): mean_over((modality == m) & (task == t)) for t in sorted(set(task[modality == m]))}
            for m in sorted(set(modality))
        },
    }
