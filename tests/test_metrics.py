"""ArtEmoBenchmark metrics against independent references, their edge cases, and the offline ``evaluate`` modules."""

import math
import os
import subprocess
import sys
import warnings

import huggingface_hub
import numpy as np
import pytest
from scipy import stats

from vaemotion.benchmark import METRIC_NAMES, metric_path
from vaemotion.benchmark.functional import (
    accuracy_by,
    concordance_correlation_coefficient,
    f1_scores,
    mer_score,
    pearson,
    quadrant_accuracy,
    rmse,
    valence_arousal_metrics,
)


def textbook_ccc(x, y) -> float:
    """Lin (1989), written out independently with population moments in float64."""
    x, y = [float(v) for v in x], [float(v) for v in y]
    n = len(x)
    mean_x, mean_y = sum(x) / n, sum(y) / n
    var_x = sum((v - mean_x) ** 2 for v in x) / n
    var_y = sum((v - mean_y) ** 2 for v in y) / n
    cov = sum((a - mean_x) * (b - mean_y) for a, b in zip(x, y)) / n
    return 2 * cov / (var_x + var_y + (mean_x - mean_y) ** 2)


@pytest.fixture
def regression_data():
    rng = np.random.default_rng(0)
    ref_v, ref_a = rng.uniform(-1, 1, 200), rng.uniform(-1, 1, 200)
    pred_v = np.clip(0.7 * ref_v + 0.1 + rng.normal(0, 0.2, 200), -1, 1)
    pred_a = np.clip(0.5 * ref_a - 0.05 + rng.normal(0, 0.3, 200), -1, 1)
    return pred_v, pred_a, ref_v, ref_a


@pytest.fixture
def classification_data():
    rng = np.random.default_rng(1)
    references = rng.integers(0, 6, 300)  # labels 6 and 7 never occur
    predictions = np.where(rng.random(300) < 0.6, references, rng.integers(0, 6, 300))
    predictions[predictions == 5] = 4  # label 5 occurs in references but is never predicted
    return predictions, references


# ------------------------------------------------------------------------------------ valence / arousal


def test_regression_metrics_match_independent_references(regression_data):
    pred_v, _, ref_v, _ = regression_data
    assert concordance_correlation_coefficient(pred_v, ref_v) == pytest.approx(textbook_ccc(pred_v, ref_v), abs=1e-12)
    assert pearson(pred_v, ref_v) == pytest.approx(stats.pearsonr(pred_v, ref_v).statistic, abs=1e-12)
    assert rmse(pred_v, ref_v) == pytest.approx(math.sqrt(sum((p - r) ** 2 for p, r in zip(pred_v, ref_v)) / 200))


def test_ccc_penalises_bias_that_pearson_ignores():
    ref = np.array([-0.5, 0.0, 0.5, 0.25])
    assert pearson(ref + 0.3, ref) == pytest.approx(1.0)
    assert concordance_correlation_coefficient(ref + 0.3, ref) == pytest.approx(textbook_ccc(ref + 0.3, ref))
    assert concordance_correlation_coefficient(ref + 0.3, ref) < 0.8


def test_constant_predictions():
    ref = [0.2, -0.4, 0.9]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # neither metric may warn
        assert concordance_correlation_coefficient([0.1, 0.1, 0.1], ref) == 0.0
        assert math.isnan(pearson([0.1, 0.1, 0.1], ref))
        assert math.isnan(pearson(ref, [0.3, 0.3, 0.3]))
        assert concordance_correlation_coefficient([0.3, 0.3, 0.3], [0.3, 0.3, 0.3]) == 1.0
        assert concordance_correlation_coefficient([0.3, 0.3, 0.3], [0.1, 0.1, 0.1]) == 0.0


def test_quadrant_accuracy_counts_zero_as_positive():
    # item 1: both in (+,+) with zeros; item 2: valence sign differs; item 3: (-,-) both; item 4: arousal 0 vs -0.1
    pred_v, pred_a = [0.0, 0.3, -0.2, 0.5], [0.0, 0.4, -0.9, 0.0]
    ref_v, ref_a = [0.6, -0.1, -0.7, 0.5], [0.2, 0.4, -0.1, -0.1]
    assert quadrant_accuracy(pred_v, pred_a, ref_v, ref_a) == 0.5


def test_valence_arousal_metrics_collects_everything(regression_data):
    pred_v, pred_a, ref_v, ref_a = regression_data
    metrics = valence_arousal_metrics(pred_v, pred_a, ref_v, ref_a)
    assert set(metrics) == {
        "valence_ccc", "valence_pearson", "valence_rmse", "arousal_ccc", "arousal_pearson", "arousal_rmse",
        "mean_ccc", "quadrant_accuracy",
    }
    assert metrics["arousal_ccc"] == pytest.approx(textbook_ccc(pred_a, ref_a), abs=1e-12)
    assert metrics["arousal_pearson"] == pytest.approx(stats.pearsonr(pred_a, ref_a).statistic, abs=1e-12)
    assert metrics["mean_ccc"] == pytest.approx((metrics["valence_ccc"] + metrics["arousal_ccc"]) / 2)
    same_quadrant = [(pv >= 0) == (rv >= 0) and (pa >= 0) == (ra >= 0) for pv, pa, rv, ra in zip(*regression_data)]
    assert metrics["quadrant_accuracy"] == pytest.approx(sum(same_quadrant) / len(same_quadrant))


@pytest.mark.parametrize(
    "pred, ref, message",
    [
        ([], [], "pred is empty"),
        ([0.1, float("nan")], [0.1, 0.2], r"pred\[1\] is nan"),
        ([0.1, 0.2], [0.1, float("inf")], r"ref\[1\] is inf"),
        ([0.1, 0.2], [0.1, 0.2, 0.3], "differ in length: 2 vs 3"),
        ([[0.1, 0.2]], [[0.1, 0.2]], "one-dimensional"),
    ],
)
def test_regression_input_errors(pred, ref, message):
    for metric in (concordance_correlation_coefficient, pearson, rmse):
        with pytest.raises(ValueError, match=message):
            metric(pred, ref)


def test_valence_arousal_errors_name_the_dimension():
    with pytest.raises(ValueError, match=r"ref_arousal\[0\] is nan"):
        valence_arousal_metrics([0.1, 0.2], [0.1, 0.2], [0.1, 0.2], [float("nan"), 0.2])


# ------------------------------------------------------------------------------------------------------ F1


def test_f1_matches_sklearn(classification_data):
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    predictions, references = classification_data
    present = sorted(set(predictions) | set(references))
    scores = f1_scores(predictions, references, num_labels=8)
    for average in ("macro", "weighted"):
        expected = sklearn_metrics.f1_score(references, predictions, average=average, labels=present, zero_division=0)
        assert scores[f"{average}_f1"] == pytest.approx(expected, abs=1e-12)
    per_class = sklearn_metrics.f1_score(references, predictions, average=None, labels=present, zero_division=0)
    assert scores["per_class_f1"] == pytest.approx(dict(zip(present, per_class)), abs=1e-12)
    assert scores["accuracy"] == pytest.approx(sklearn_metrics.accuracy_score(references, predictions))


def test_recalls_and_mer_score_match_sklearn(classification_data):
    """UAR is scikit-learn's balanced accuracy (mean recall over the reference classes), WAR its support-weighted
    recall; the MER score is WAF - 0.25 x valence MSE with scikit-learn's weighted F1 and squared error."""
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    predictions, references = classification_data  # label 5 is never predicted: its recall 0 counts in UAR
    scores = f1_scores(predictions, references, num_labels=8)
    assert scores["uar"] == pytest.approx(sklearn_metrics.balanced_accuracy_score(references, predictions), abs=1e-12)
    in_references = sorted(set(references))
    war = sklearn_metrics.recall_score(references, predictions, average="weighted", labels=in_references)
    assert scores["war"] == pytest.approx(war, abs=1e-12)
    rng = np.random.default_rng(3)
    ref_valence = rng.uniform(-1, 1, predictions.size)
    pred_valence = np.clip(ref_valence + rng.normal(0, 0.3, predictions.size), -1, 1)
    present = sorted(set(predictions) | set(references))
    waf = sklearn_metrics.f1_score(references, predictions, average="weighted", labels=present, zero_division=0)
    expected = waf - 0.25 * sklearn_metrics.mean_squared_error(ref_valence, pred_valence)
    assert mer_score(scores["weighted_f1"], pred_valence, ref_valence) == pytest.approx(expected, abs=1e-12)
    with pytest.raises(ValueError, match=r"weighted_f1 must be a number in \[0, 1\]"):
        mer_score(1.5, pred_valence, ref_valence)


def test_f1_on_a_hand_computed_confusion_matrix():
    # refs:  0 0 0 1 1 2 2 2 ; preds: 0 0 1 1 1 1 0 1  (label 2 never predicted; labels 3..7 absent)
    references = [0, 0, 0, 1, 1, 2, 2, 2]
    predictions = [0, 0, 1, 1, 1, 1, 0, 1]
    # class 0: TP 2, predicted 3, support 3 -> F1 = 4/6;  class 1: TP 2, predicted 5, support 2 -> F1 = 4/7
    # class 2: TP 0 -> F1 0
    f1 = {0: 4 / 6, 1: 4 / 7, 2: 0.0}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        scores = f1_scores(predictions, references, num_labels=8)
    assert scores["per_class_f1"] == pytest.approx(f1)
    assert scores["support"] == {0: 3, 1: 2, 2: 3}
    assert scores["macro_f1"] == pytest.approx((4 / 6 + 4 / 7 + 0.0) / 3)
    assert scores["weighted_f1"] == pytest.approx((3 * 4 / 6 + 2 * 4 / 7 + 3 * 0.0) / 8)
    assert scores["accuracy"] == pytest.approx(4 / 8)


def test_f1_class_only_predicted_counts_with_zero():
    scores = f1_scores([0, 3], [0, 0], num_labels=4)
    assert scores["per_class_f1"] == {0: pytest.approx(2 / 3), 3: 0.0}
    assert scores["macro_f1"] == pytest.approx(1 / 3)
    assert scores["weighted_f1"] == pytest.approx(2 / 3)  # class 3 has no support, so no weight


@pytest.mark.parametrize(
    "predictions, references, message",
    [
        ([], [], "predictions is empty"),
        ([0, 8], [0, 1], r"predictions\[1\] = 8 is not a class index in \[0, 8\)"),
        ([0, 1], [0, -1], r"references\[1\] = -1 .*emotion -1"),
        ([0, 1.5], [0, 1], "integer class indices"),
        ([0, float("nan")], [0, 1], r"predictions\[1\] is nan"),
        (["a", "b"], [0, 1], "integer class indices"),
        ([0, 1], [0, 1, 1], "differ in length"),
    ],
)
def test_f1_input_errors(predictions, references, message):
    with pytest.raises(ValueError, match=message):
        f1_scores(predictions, references, num_labels=8)


# ------------------------------------------------------------------------------------------------ accuracy


def test_accuracy_by_task_and_modality():
    task = ["content", "emotion", "emotion", "content", "emotion", "content"]
    modality = ["audio_only", "audio_only", "visual_only", "visual_only", "audio_visual", "audio_visual"]
    correct = [True, False, True, True, False, True]
    result = accuracy_by(task, modality, correct)
    assert result["accuracy"] == pytest.approx(4 / 6)
    assert result["count"] == 6
    assert result["by_task"] == {"content": 1.0, "emotion": pytest.approx(1 / 3)}
    assert result["by_modality"] == {"audio_only": 0.5, "audio_visual": 0.5, "visual_only": 1.0}
    assert result["by_modality_task"]["audio_only"] == {"content": 1.0, "emotion": 0.0}


@pytest.mark.parametrize(
    "task, modality, correct, message",
    [
        ([], [], [], "correct is empty"),
        (["content"], ["audio_only"], [0.5], "booleans"),
        (["content"], ["audio_only", "visual_only"], [True], "differ in length"),
        ([None], ["audio_only"], [True], "task must hold one string per item"),
    ],
)
def test_accuracy_by_input_errors(task, modality, correct, message):
    with pytest.raises(ValueError, match=message):
        accuracy_by(task, modality, correct)


# ------------------------------------------------------------------------------------- evaluate modules


def test_metric_path():
    for name in METRIC_NAMES:
        path = metric_path(name)
        assert path.endswith(f"metrics/{name}")
        assert os.path.isfile(os.path.join(path, f"{name}.py")) and os.path.isfile(os.path.join(path, "README.md"))
    with pytest.raises(ValueError, match="unknown ArtEmoBenchmark metric 'f1'; known metrics: artemo_accuracy"):
        metric_path("f1")


def test_importing_the_package_does_not_import_evaluate():
    code = "import sys, vaemotion.benchmark; print('evaluate' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout == "False\n"


@pytest.fixture(scope="module")
def load_offline(tmp_path_factory):
    """``evaluate.load`` with the Hub off and every cache in a temporary folder.

    One modules cache for the whole module: evaluate imports the copied scripts as a package from the first
    cache folder it sees, so a second folder later in the same process would not be importable.
    """
    evaluate = pytest.importorskip("evaluate")
    root = tmp_path_factory.mktemp("evaluate")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_HUB_OFFLINE", "1")
        patch.setenv("HF_MODULES_CACHE", str(root / "modules"))
        # the env var only reaches libraries imported later, so also flip the flags already read at import
        patch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
        patch.setattr(evaluate.config, "HF_EVALUATE_OFFLINE", True)
        patch.setattr(evaluate.config, "HF_MODULES_CACHE", root / "modules")
        yield lambda name: evaluate.load(metric_path(name), cache_dir=str(root / "metrics_cache"))


def test_emotion_f1_module_equals_function(load_offline, classification_data):
    predictions, references = classification_data
    module = load_offline("emotion_f1")
    module.add_batch(predictions=predictions[:100].tolist(), references=references[:100].tolist())
    module.add_batch(predictions=predictions[100:].tolist(), references=references[100:].tolist())
    assert module.compute() == f1_scores(predictions, references, num_labels=8)
    assert load_offline("emotion_f1").compute(predictions=[0, 1], references=[0, 2], num_labels=3) == f1_scores(
        [0, 1], [0, 2], num_labels=3
    )


def test_emotion_f1_module_gives_the_mer_score_with_valence(load_offline):
    module = load_offline("emotion_f1")
    result = module.compute(predictions=[0, 1, 1], references=[0, 1, 2], valence_predictions=[0.5, 0.0, -0.5],
                            valence_references=[0.5, 0.5, -0.5])  # fmt: skip
    expected = f1_scores([0, 1, 1], [0, 1, 2], num_labels=8)["weighted_f1"] - 0.25 * (0.5**2 / 3)
    assert result["mer_score"] == pytest.approx(expected)
    with pytest.raises(ValueError, match="needs both valence_predictions and valence_references"):
        load_offline("emotion_f1").compute(predictions=[0], references=[0], valence_predictions=[0.1])


def test_valence_arousal_module_equals_function(load_offline, regression_data):
    pred_v, pred_a, ref_v, ref_a = regression_data
    result = load_offline("valence_arousal").compute(
        predictions=np.stack([pred_v, pred_a], axis=1).tolist(), references=np.stack([ref_v, ref_a], axis=1).tolist()
    )
    assert result == valence_arousal_metrics(pred_v, pred_a, ref_v, ref_a)


def test_artemo_accuracy_module_equals_function(load_offline):
    predictions, references = [1, 0, 2, 1, 0, 1], [1, 1, 2, 1, 0, 0]
    task = ["content", "emotion", "emotion", "content", "emotion", "content"]
    modality = ["audio_only", "audio_only", "visual_only", "visual_only", "audio_visual", "audio_visual"]
    result = load_offline("artemo_accuracy").compute(
        predictions=predictions, references=references, task=task, modality=modality
    )
    assert result == accuracy_by(task, modality, np.equal(predictions, references))
    assert result["by_modality_task"]["audio_visual"] == {"content": 0.0, "emotion": 1.0}
