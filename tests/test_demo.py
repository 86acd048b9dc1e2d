"""`vaemotion demo --quick` end to end: the integration test of the whole method (about 3 minutes on 2 cores)."""

import json

import pytest
import torch
from PIL import Image
from transformers import AutoModel, AutoProcessor, pipeline

import vaemotion  # noqa: F401  (registers the Auto classes and the pipeline task)
from vaemotion.cli import main
from vaemotion.demo import MODALITIES, STAGES


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory):
    output = tmp_path_factory.mktemp("demo")
    assert main(["demo", "--quick", "--no-progress", "--output", str(output)]) == 0
    return output


@pytest.fixture(scope="module")
def results(demo_dir):
    return json.loads((demo_dir / "results.json").read_text())


def test_results_follow_the_documented_schema(results):
    assert set(results["chance"]) == {"content", "emotion"}
    assert set(results["stages"]) == set(STAGES)
    for table in [*results["stages"].values(), *results["ablations"].values()]:
        assert set(table) == set(MODALITIES)
        for row in table.values():
            assert set(row) == {"content_acc", "emotion_acc", "va_ccc"}
            assert 0.0 <= row["content_acc"] <= 1.0 and 0.0 <= row["emotion_acc"] <= 1.0
    # the Supervisor is untrained before Stage 2: its CCC is not defined yet
    assert all(row["va_ccc"] is None for row in results["stages"]["before_stage1"].values())
    assert all(row["va_ccc"] is not None for row in results["stages"]["after_stage2"].values())
    assert results["seconds"] > 0 and results["mode"] == "quick"


def test_quick_mode_meets_its_targets_and_reports_them_honestly(results):
    """Before Stage 1 the sound means nothing to the model and the picture does; Stage 1, with no audio label, makes
    the sound carry at least 0.3 of the picture's margin over chance and leaves the picture alone; the report's
    verdict agrees with a recomputation from the figures."""
    chance = results["chance"]["content"]
    before = results["stages"]["before_stage1"]
    after = results["stages"]["after_stage1"]
    visual_margin = after["visual_only"]["content_acc"] - chance
    assert visual_margin > 0.3  # the stand-in VLM really sees
    assert before["audio_only"]["content_acc"] <= chance + 0.1
    assert after["visual_only"] == before["visual_only"]  # only the audio pathway trains in Stage 1
    verdicts = {target["target"]: target["holds"] for target in results["targets"]}
    goal = chance + 0.3 * visual_margin
    stage1_target = "after Stage 1, audio-only content >= chance + 0.3 x visual margin"
    assert verdicts[stage1_target] == (after["audio_only"]["content_acc"] >= goal)
    assert after["audio_only"]["content_acc"] >= goal, (after["audio_only"]["content_acc"], goal)


def test_report_and_plot_are_written(demo_dir, results):
    report = (demo_dir / "report.md").read_text()
    assert "## Stages" in report and "## Targets" in report
    assert f"{results['stages']['after_stage1']['audio_only']['content_acc']:.3f}" in report
    with Image.open(demo_dir / "benchmark.png") as plot:
        assert plot.size[0] > 500


def test_final_model_loads_with_auto_classes_and_the_pipeline(demo_dir):
    model_dir = demo_dir / "model"
    model = AutoModel.from_pretrained(model_dir)
    processor = AutoProcessor.from_pretrained(model_dir)
    assert type(model).__name__ == "VAEmotionForConditionalGeneration"
    assert type(processor).__name__ == "VAEmotionProcessor"
    classifier = pipeline("audio-visual-emotion", model=str(model_dir))
    clip = next((demo_dir / "data" / "media").glob("*.mp4"))
    prediction = classifier(str(clip))
    assert prediction["emotion"] in model.config.emotion_labels
    assert -1.0 <= prediction["valence"] <= 1.0 and abs(sum(prediction["scores"].values()) - 1.0) < 1e-4


def test_a_pretrained_audio_encoder_is_used_frozen_and_unpadded():
    from real_parts import real_part_path
    from transformers import WhisperModel

    from vaemotion.demo import QUICK, build_tiny_parts

    whisper = real_part_path("whisper-tiny.en")
    model, processor = build_tiny_parts(QUICK, seed=0, audio_encoder=str(whisper))
    reference = WhisperModel.from_pretrained(whisper).get_encoder().state_dict()
    assert all(torch.equal(tensor, reference[name]) for name, tensor in model.audio_tower.state_dict().items())
    assert processor.feature_extractor.feature_size == 80 and not processor.pad_audio_to_window
    assert model.set_trainable("vg_align")["modules"] == ["audio_projector", "audio_delimiters"]  # the encoder stays frozen
