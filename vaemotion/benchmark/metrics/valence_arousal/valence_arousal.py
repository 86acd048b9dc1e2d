"""Valence/arousal regression metrics for ArtEmoBenchmark: an ``evaluate`` wrapper of
``vaemotion.benchmark.functional.valence_arousal_metrics``."""

import datasets
import evaluate
import numpy as np

from vaemotion.benchmark.functional import valence_arousal_metrics

_DESCRIPTION = """
Concordance correlation coefficient (Lin), Pearson correlation and RMSE for valence and for arousal, their mean
CCC, and the share of items whose predicted (valence, arousal) falls in the reference's quadrant (by sign, 0
counted as positive). Pearson is NaN when either side is constant; CCC stays defined (0).
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `[valence, arousal]` pairs): predicted values in [-1, 1].
    references (`list` of `[valence, arousal]` pairs): reference values (drop unlabelled items first).
Returns:
    `valence_ccc`, `valence_pearson`, `valence_rmse`, `arousal_ccc`, `arousal_pearson`, `arousal_rmse`,
    `mean_ccc`, `quadrant_accuracy` (floats).
Examples:
    >>> va = evaluate.load(vaemotion.benchmark.metric_path("valence_arousal"))  # doctest: +SKIP
    >>> pairs = [[0.5, 0.1], [-0.5, 0.3]]  # [valence, arousal] per item
    >>> va.compute(predictions=pairs, references=pairs)["mean_ccc"]  # doctest: +SKIP
    1.0
"""


def _pairs(values) -> np.ndarray:
    return np.asarray(values, dtype=np.float64).reshape(-1, 2)


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class ValenceArousal(evaluate.Metric):
    def _info(self):
        pair = datasets.List(datasets.Value("float64"), length=2)
        return evaluate.MetricInfo(
            module_type="metric",
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": pair, "references": pair}),
        )

    def _compute(self, predictions, references):
        predictions, references = _pairs(predictions), _pairs(references)
        return valence_arousal_metrics(predictions[:, 0], predictions[:, 1], references[:, 0], references[:, 1])
