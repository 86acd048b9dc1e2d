"""Emotion-category F1 for ArtEmoBenchmark: an ``evaluate`` wrapper of ``vaemotion.benchmark.functional.f1_scores``."""

import datasets
import evaluate

from vaemotion.benchmark.functional import f1_scores
from vaemotion.configuration_vaemotion import ARTEMIS_EMOTIONS

_DESCRIPTION = """
Accuracy, macro F1 and support-weighted F1 over emotion categories (by default the 8 ArtEmis categories), plus
per-class F1 and support. Labels absent from both predictions and references are left out of the averages; a
present label that is never predicted scores 0 (scikit-learn's `labels=present, zero_division=0`).
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `int`): predicted class indices.
    references (`list` of `int`): reference class indices (drop unlabelled items, emotion -1, first).
    num_labels (`int`, defaults to 8): number of classes, indices `0..num_labels-1`.
Returns:
    `accuracy`, `macro_f1`, `weighted_f1` (floats), `per_class_f1` and `support` (dicts keyed by present label).
Examples:
    >>> f1 = evaluate.load(vaemotion.benchmark.metric_path("emotion_f1"))  # doctest: +SKIP
    >>> f1.compute(predictions=[0, 0, 1, 1], references=[0, 1, 1, 1])["accuracy"]  # doctest: +SKIP
    0.75
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class EmotionF1(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            module_type="metric",
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}
            ),
        )

    def _compute(self, predictions, references, num_labels=len(ARTEMIS_EMOTIONS)):
        return f1_scores(predictions, references, num_labels)
