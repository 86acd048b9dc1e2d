"""Multiple-choice accuracy for ArtEmoBenchmark, overall and per task and modality: an ``evaluate`` wrapper of
``vaemotion.benchmark.functional.accuracy_by``."""

import datasets
import evaluate
import numpy as np

from vaemotion.benchmark.functional import accuracy_by

_DESCRIPTION = """
Accuracy of the chosen option (e.g. the option with the highest log-likelihood) against the item's answer,
overall, per task (`content`, `emotion`), per modality (`audio_only`, `visual_only`, `audio_visual`) and per
(modality, task) cell.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `int`): chosen option index per item.
    references (`list` of `int`): the item's `answer`.
    task (`list` of `str`): the item's `task`.
    modality (`list` of `str`): the config the item was asked in.
Returns:
    `accuracy` (float), `count` (int), `by_task`, `by_modality` (dicts of floats) and `by_modality_task`
    (modality -> task -> float).
Examples:
    >>> acc = evaluate.load(vaemotion.benchmark.metric_path("artemo_accuracy"))  # doctest: +SKIP
    >>> acc.compute(predictions=[1, 0], references=[1, 2], task=["content", "emotion"],
    ...             modality=["audio_only", "audio_only"])["by_task"]  # doctest: +SKIP
    {'content': 1.0, 'emotion': 0.0}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class ArtEmoAccuracy(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            module_type="metric",
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "predictions": datasets.Value("int64"),
                    "references": datasets.Value("int64"),
                    "task": datasets.Value("string"),
                    "modality": datasets.Value("string"),
                }
            ),
        )

    def _compute(self, predictions, references, task, modality):
        correct = np.asarray(predictions) == np.asarray(references)
        return accuracy_by(task, modality, correct)
