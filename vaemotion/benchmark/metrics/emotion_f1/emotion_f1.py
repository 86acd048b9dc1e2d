"""Emotion-category F1 for ArtEmoBenchmark: an ``evaluate`` wrapper of ``vaemotion.benchmark.functional.f1_scores``."""

import datasets
import evaluate

from vaemotion.benchmark.functional import f1_scores, mer_score
from vaemotion.configuration_vaemotion import ARTEMIS_EMOTIONS

_DESCRIPTION = """
Accuracy, macro F1 and support-weighted F1 (WAF) over emotion categories (by default the 8 ArtEmis categories; 9
with ArtEmis' "something else"), unweighted and weighted average recall (UAR, WAR), plus per-class F1 and support.
Labels absent from both predictions and references are left out of the F1 averages; a present label that is never
predicted scores 0 (scikit-learn's `labels=present, zero_division=0`). With valence predictions and references,
also the MER challenges' combined score, WAF - 0.25 x valence MSE.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `int`): predicted class indices.
    references (`list` of `int`): reference class indices (drop unlabelled items, emotion -1, first).
    num_labels (`int`, defaults to 8): number of classes, indices `0..num_labels-1`.
    valence_predictions / valence_references (`list` of `float`, *optional*): valence in [-1, 1] of the same items,
        for `mer_score`.
Returns:
    `accuracy`, `macro_f1`, `weighted_f1`, `uar`, `war` (floats), `per_class_f1` and `support` (dicts keyed by
    present label), and `mer_score` when valence is given.
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

    def _compute(self, predictions, references, num_labels=len(ARTEMIS_EMOTIONS), valence_predictions=None,
                 valence_references=None):  # fmt: skip
        scores = f1_scores(predictions, references, num_labels)
        if (valence_predictions is None) != (valence_references is None):
            raise ValueError("mer_score needs both valence_predictions and valence_references")
        if valence_predictions is not None:
            if len(valence_predictions) != len(predictions):
                raise ValueError(f"valence_predictions has {len(valence_predictions)} items, predictions "
                                 f"{len(predictions)}: give the valence of the same items")
            scores["mer_score"] = mer_score(scores["weighted_f1"], valence_predictions, valence_references)
        return scores
