"""`vaemotion demo --quick` end to end: the integration test of the whole method (about 4 minutes on 2 cores)."""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoModel, AutoProcessor, pipeline

import vaemotion  # noqa: F401  (registers the Auto classes and the pipeline task)
from vaemotion.benchmark.functional import concordance_correlation_coefficient
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


@pytest.fixture(scope="module")
def pretrained_dir(tmp_path_factory):
    """The quick demo with the real Whisper tiny.en as the frozen audio tower (skips until the parts are fetched)."""
    from real_parts import real_part_path

    whisper = real_part_path("whisper-tiny.en")
    output = tmp_path_factory.mktemp("demo_pretrained")
    assert main(["demo", "--quick", "--no-progress", "--output", str(output), "--audio-encoder", str(whisper)]) == 0
    return output


def read_predictions(demo_dir, run):
    return [json.loads(line) for line in (demo_dir / "predictions" / f"{run}.jsonl").read_text().splitlines()]


def recomputed(demo_dir, run, modality):
    """A run's figures on one modality, recomputed from its predictions.jsonl with the float64 CCC: per clip, the
    content and emotion items' correctness and the heads' VA (read once per clip at the benchmark's fixed emotion
    prompt, and carried on each of its items' lines)."""
    lines = [line for line in read_predictions(demo_dir, run) if line["config"] == modality]
    by_task = {task: sorted((l for l in lines if l["task"] == task), key=lambda l: l["clip_id"])
               for task in ("content", "emotion")}
    figures = {f"{task}_acc": float(np.mean([l["correct"] for l in by_task[task]])) for task in by_task}
    emotion = by_task["emotion"]
    if emotion[0]["valence_pred"] is None:
        return figures
    ccc = [concordance_correlation_coefficient([l[f"{d}_pred"] for l in emotion], [l[f"{d}_ref"] for l in emotion])
           for d in ("valence", "arousal")]
    return {**figures, "va_ccc": float(np.mean(ccc))}


def paired_bootstrap_gain(demo_dir, run, task, resamples=2000):
    """Bootstrap distribution (numpy, clips resampled with replacement) of audio-visual minus visual-only accuracy
    on ``task``, paired by clip."""
    correct = {}
    for modality in ("audio_visual", "visual_only"):
        lines = [l for l in read_predictions(demo_dir, run) if l["config"] == modality and l["task"] == task]
        correct[modality] = np.array([l["correct"] for l in sorted(lines, key=lambda l: l["clip_id"])], float)
    difference = correct["audio_visual"] - correct["visual_only"]
    draws = np.random.default_rng(0).integers(0, len(difference), size=(resamples, len(difference)))
    return difference[draws].mean(axis=1)


def verdicts(results):
    return {target["target"]: target["holds"] for target in results["targets"]}


def test_results_follow_the_documented_schema(results):
    assert set(results["chance"]) == {"content", "emotion"}
    assert set(results["stages"]) == set(STAGES)
    for table in [*results["stages"].values(), *results["ablations"].values()]:
        assert set(table) == set(MODALITIES)
        for row in table.values():
            assert set(row) == {"content_acc", "emotion_acc", "va_ccc", "ci95"}
            assert 0.0 <= row["content_acc"] <= 1.0 and 0.0 <= row["emotion_acc"] <= 1.0
            for metric in ("content_acc", "emotion_acc"):  # every figure carries its 95% interval
                low, high = row["ci95"][metric]
                assert low <= row[metric] <= high and high - low > 0
    # the Supervisor is untrained before Stage 2: its CCC is not defined yet
    assert all(row["va_ccc"] is None for row in results["stages"]["before_stage1"].values())
    assert all(row["va_ccc"] is not None for row in results["stages"]["after_stage2"].values())
    assert results["seconds"] > 0 and results["mode"] == "quick" and results["audio_encoder"] is None


def test_an_ablation_evaluated_on_one_modality_reads_as_not_evaluated_elsewhere(results, tmp_path, capsys):
    """The full run evaluates each ablation only on the modality its verdict reads: the report, the plot and the
    terminal summary show the others as not evaluated."""
    from vaemotion.demo import ablation_modalities, markdown_report, plot_results, print_summary

    assert ablation_modalities("no_enhancer") == ("audio_visual",) and ablation_modalities("no_kd") == ("audio_only",)
    final = results["stages"]["after_stage2"]
    with_ablation = {**results, "ablations": {"no_enhancer": {"audio_visual": final["audio_visual"]}}}
    report = markdown_report(with_ablation, quick=False)
    row = next(line for line in report.splitlines() if line.startswith("| no_enhancer |"))
    cells = [cell.strip() for cell in row.strip("|").split("|")][1:]
    assert cells[:6] == ["-"] * 6 and cells[7].startswith(f"{final['audio_visual']['emotion_acc']:.3f} [")
    plot_results(with_ablation, tmp_path / "plot.png")
    assert Image.open(tmp_path / "plot.png").size[0] > 0
    print_summary(with_ablation)
    assert "| no_enhancer | - | - | - | - | - | - |" in capsys.readouterr().out


def test_every_figure_equals_a_recomputation_from_the_predictions(demo_dir, results):
    for run, table in results["stages"].items():
        for modality in MODALITIES:
            figures = recomputed(demo_dir, run, modality)
            reported = {k: v for k, v in table[modality].items() if k != "ci95"}
            if reported["va_ccc"] is None:  # the heads exist but are untrained before Stage 2: not reported
                reported.pop("va_ccc")
                figures.pop("va_ccc", None)
            assert figures == pytest.approx(reported, abs=1e-12), (run, modality)


def test_quick_mode_meets_its_targets_and_reports_them_honestly(demo_dir, results):
    """Before Stage 1 the sound means nothing to the model and the picture does; Stage 1, with no audio label, makes
    the sound carry at least 0.3 of the picture's margin over chance (from scratch, with the answer head) and leaves
    the picture alone; after Stage 2 sound and picture together reach the picture's VA CCC and are not worse on
    emotion beyond the noise; the report's verdicts agree with a recomputation from the figures."""
    chance = results["chance"]["content"]
    before = results["stages"]["before_stage1"]
    after = results["stages"]["after_stage1"]
    final = results["stages"]["after_stage2"]
    visual_margin = after["visual_only"]["content_acc"] - chance
    assert visual_margin > 0.3  # the stand-in VLM really sees
    assert before["audio_only"]["content_acc"] <= chance + 0.1
    assert after["visual_only"] == before["visual_only"]  # only the audio pathway trains in Stage 1
    goal = chance + 0.3 * visual_margin
    held = verdicts(results)
    assert held["after Stage 1 (with the answer head), audio-only content >= chance + 0.3 x visual margin"] == (
        after["audio_only"]["content_acc"] >= goal)
    assert after["audio_only"]["content_acc"] >= goal, (after["audio_only"]["content_acc"], goal)
    for metric, label in (("emotion_acc", "emotion"), ("va_ccc", "VA CCC")):
        gain = final["audio_visual"][metric] - final["visual_only"][metric]
        assert held[f"after Stage 2, audio-visual {label} >= visual-only"] == (gain >= -1e-12)
    assert final["audio_visual"]["va_ccc"] >= final["visual_only"]["va_ccc"], final
    # emotion: within a few items of the picture either side (see the pretrained test below)
    assert np.percentile(paired_bootstrap_gain(demo_dir, "after_stage2", "emotion"), 97.5) > 0, final


def test_a_pretrained_encoder_hears_by_kd_alone_and_sound_adds_to_sight(pretrained_dir):
    """Issue targets of the quick run with the real Whisper tiny.en, frozen, Stage 1 by KD alone."""
    results = json.loads((pretrained_dir / "results.json").read_text())
    assert results["settings"]["answer_head_weight"] == 0.0 and not results["settings"]["train_audio_encoder"]
    chance = results["chance"]["content"]
    after = results["stages"]["after_stage1"]
    figures = recomputed(pretrained_dir, "after_stage1", "audio_only")
    visual = recomputed(pretrained_dir, "after_stage1", "visual_only")["content_acc"]
    assert figures["content_acc"] == pytest.approx(after["audio_only"]["content_acc"])
    assert figures["content_acc"] >= chance + 0.5 * (visual - chance), (figures, visual)
    final = {modality: recomputed(pretrained_dir, "after_stage2", modality) for modality in MODALITIES}
    assert final["audio_visual"]["va_ccc"] >= final["visual_only"]["va_ccc"], final
    # Audio-visual emotion lands within a few items of the picture's in the quick run, either side (two Stage 2
    # epochs: benchmarks/RESULTS.md, session 5), so a point comparison would be a coin flip: asserted is that it is
    # not worse than the picture beyond the noise (the upper end of the paired 95% interval of AV - V above 0); the
    # report says whether the target held.
    upper = np.percentile(paired_bootstrap_gain(pretrained_dir, "after_stage2", "emotion"), 97.5)
    assert upper > 0, (upper, final)
    held = verdicts(results)
    assert all(holds for name, holds in held.items() if "audio-visual emotion" not in name), results["targets"]


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


def test_the_sight_loss_on_answer_positions_equals_the_loss_on_every_position():
    """instruction_tune runs the LM head only where a labelled token is predicted: same loss and gradients."""
    from vaemotion.demo import answer_positions
    from vaemotion.modeling_vaemotion import VAEmotionForConditionalGeneration
    from vaemotion.tiny import build_tiny_tokenizer, tiny_vaemotion_config

    torch.manual_seed(0)
    model = VAEmotionForConditionalGeneration(tiny_vaemotion_config(build_tiny_tokenizer())).double()
    input_ids = torch.randint(5, 100, (3, 12))
    labels = torch.full_like(input_ids, -100)
    labels[0, 9:], labels[1, 4:7], labels[2, 11:] = input_ids[0, 9:], input_ids[1, 4:7], input_ids[2, 11:]
    losses, grads = [], []
    for keep in (0, answer_positions(labels)):
        model.zero_grad()
        loss = model(input_ids=input_ids, labels=labels, logits_to_keep=keep).lm_loss
        loss.backward()
        losses.append(loss.detach())
        grads.append(model.get_input_embeddings().weight.grad.clone())
    assert answer_positions(labels).tolist() == [3, 4, 5, 8, 9, 10]
    torch.testing.assert_close(losses[1], losses[0])
    torch.testing.assert_close(grads[1], grads[0])
