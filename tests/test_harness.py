"""ArtEmoBenchmark harness and baseline adapters on tiny random models, offline.

A tiny benchmark is written on the fly (two 1 s H.264+AAC clips and one png + wav clip, two items each); tiny
random VAEmotion, Qwen2.5-Omni thinker, Qwen2-Audio and Qwen2.5-VL models share one word-level tokenizer.
"""

import json
from pathlib import Path

import av
import datasets
import numpy as np
import pytest
import soundfile
import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from transformers import (
    Qwen2_5_VLForConditionalGeneration,
    Qwen2_5_VLProcessor,
    Qwen2_5OmniConfig,
    Qwen2_5OmniProcessor,
    Qwen2_5OmniThinkerConfig,
    Qwen2_5OmniThinkerForConditionalGeneration,
    Qwen2AudioConfig,
    Qwen2AudioForConditionalGeneration,
    Qwen2AudioProcessor,
    Qwen2VLImageProcessor,
    Qwen2VLVideoProcessor,
    WhisperFeatureExtractor,
)

from vaemotion import VAEmotionForConditionalGeneration
from vaemotion.benchmark import load_artemo
from vaemotion.benchmark.baselines import (
    Qwen2_5_VLAdapter,
    Qwen2_5OmniAdapter,
    Qwen2AudioAdapter,
    VAEmotionAdapter,
    adapter_for,
    load_adapter,
)
from vaemotion.benchmark.functional import f1_scores, valence_arousal_metrics
from vaemotion.benchmark.harness import (
    EMOTION_PROMPT,
    EMOTION_QUESTIONS,
    _clip_decoder,
    evaluate_adapter,
    evaluate_model,
    item_prompt,
    markdown_table,
    score_options,
)
from vaemotion.cli import main
from vaemotion.configuration_vaemotion import ARTEMIS_EMOTIONS
from vaemotion.processing_vaemotion import DEFAULT_CHAT_TEMPLATE

# A stand-in for Qwen2-Audio's and Qwen2.5-Omni's hub templates, which write audio parts themselves (VAEmotion's
# processor writes audio into the VLM's template as text; these baselines' processors do not).
AUDIO_CHAT_TEMPLATE = DEFAULT_CHAT_TEMPLATE.replace(
    "{% elif part['type'] == 'text' %}",
    "{% elif part['type'] == 'audio' or 'audio' in part %}<|audio_bos|><|audio_pad|><|audio_eos|>"
    "{% elif part['type'] == 'text' %}",
)
from vaemotion.tiny import build_tiny_processor, build_tiny_tokenizer, tiny_qwen2_5_vl_config, tiny_vaemotion_config
from vaemotion.training.data import append_response, response_positions

SAMPLE_RATE = 16000
CONTENTS = ("waves", "rain", "fire", "birds")
WORDS = (*CONTENTS, *ARTEMIS_EMOTIONS, "neutral", "excited", "options", "evoke", "energy", "mood")
PIXEL_BOUNDS = {"min_pixels": 56 * 56, "max_pixels": 112 * 112}
# 2 s audio windows instead of Whisper's 30 s: the same code paths, 15x less encoder work
WINDOW_SECONDS = 2


# ------------------------------------------------------------------------------------------------ benchmark
def write_mp4(path: Path, shade: int, frequency: float) -> None:
    """1 s, 64x64, 8 fps H.264 video with a mono AAC tone."""
    with av.open(str(path), "w") as container:
        video = container.add_stream("libx264", rate=8)
        video.width = video.height = 64
        video.pix_fmt = "yuv420p"
        audio = container.add_stream("aac", rate=SAMPLE_RATE, layout="mono")
        for index in range(8):
            pixels = np.full((64, 64, 3), (shade + 20 * index) % 256, np.uint8)
            container.mux(video.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")))
        container.mux(video.encode())
        tone = (0.2 * np.sin(2 * np.pi * frequency * np.arange(SAMPLE_RATE) / SAMPLE_RATE)).astype(np.float32)
        for start in range(0, SAMPLE_RATE, 1024):
            frame = av.AudioFrame.from_ndarray(tone[None, start : start + 1024], format="fltp", layout="mono")
            frame.sample_rate, frame.pts = SAMPLE_RATE, start
            container.mux(audio.encode(frame))
        container.mux(audio.encode())


def benchmark_items() -> list[dict]:
    """Three clips x (content item, emotion item); clip c2's emotion item carries no labels at all."""
    clips = [  # clip id, media, content, valence, arousal, emotion
        ("c0", {"video": "media/c0.mp4"}, "waves", 0.6, -0.4, "contentment"),
        ("c1", {"video": "media/c1.mp4"}, "fire", -0.5, 0.7, "fear"),
        ("c2", {"image": "media/c2.png", "audio": "media/c2.wav"}, "birds", 0.2, 0.5, "amusement"),
    ]
    items = []
    for clip_id, media, content, valence, arousal, emotion in clips:
        shared = {"clip_id": clip_id, "split": "test", **media}
        labels = {"valence": valence, "arousal": arousal, "emotion": emotion, "content": content}
        items.append(
            {"id": f"{clip_id}-content", **shared, "task": "content", "question": "what is the main subject ?",
             "options": list(CONTENTS), "answer": CONTENTS.index(content), **labels}
        )  # fmt: skip
        items.append(
            {"id": f"{clip_id}-emotion", **shared, "task": "emotion", "question": "which emotion does it show ?",
             "options": [emotion, "anger", "awe"], "answer": 0, **(labels if clip_id != "c2" else {"content": content})}
        )  # fmt: skip
    return items


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("artemo")
    (root / "media").mkdir()
    write_mp4(root / "media" / "c0.mp4", shade=20, frequency=330.0)
    write_mp4(root / "media" / "c1.mp4", shade=140, frequency=550.0)
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(
        root / "media" / "c2.png"
    )
    soundfile.write(
        root / "media" / "c2.wav",
        (0.1 * np.random.default_rng(1).standard_normal(SAMPLE_RATE)).astype(np.float32),
        SAMPLE_RATE,
    )
    (root / "metadata.jsonl").write_text("".join(json.dumps(item) + "\n" for item in benchmark_items()))
    return root


@pytest.fixture(autouse=True)
def offline_datasets_cache(tmp_path_factory, monkeypatch):
    cache = tmp_path_factory.getbasetemp() / "hf_datasets_cache"
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", cache)


# ------------------------------------------------------------------------------------------------ tiny models
@pytest.fixture(scope="module")
def tokenizer():
    return build_tiny_tokenizer(WORDS)


def token_id(tokenizer, token: str) -> int:
    return tokenizer.convert_tokens_to_ids(token)


def tiny_text_config(tokenizer) -> dict:
    return {
        "vocab_size": len(tokenizer),
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 4096,
        "pad_token_id": tokenizer.pad_token_id,
        "eos_token_id": tokenizer.eos_token_id,
    }


def tiny_audio_encoder_config(**extra) -> dict:
    return {
        "num_mel_bins": 16,
        "encoder_layers": 1,
        "encoder_attention_heads": 2,
        "encoder_ffn_dim": 64,
        "d_model": 32,
        **extra,
    }


def tiny_feature_extractor() -> WhisperFeatureExtractor:
    return WhisperFeatureExtractor(feature_size=16, chunk_length=WINDOW_SECONDS)


def build_vaemotion(tokenizer):
    torch.manual_seed(0)
    model = VAEmotionForConditionalGeneration(tiny_vaemotion_config(tokenizer, window_seconds=WINDOW_SECONDS)).eval()
    return model, build_tiny_processor(tokenizer, window_seconds=WINDOW_SECONDS)


def build_qwen2_5_vl(tokenizer):
    torch.manual_seed(0)
    model = Qwen2_5_VLForConditionalGeneration(tiny_qwen2_5_vl_config(tokenizer)).eval()
    processor = Qwen2_5_VLProcessor(
        image_processor=Qwen2VLImageProcessor(**PIXEL_BOUNDS),
        tokenizer=tokenizer,
        video_processor=Qwen2VLVideoProcessor(**PIXEL_BOUNDS, cap_pixels_per_frame=True),
        chat_template=DEFAULT_CHAT_TEMPLATE,
    )
    return model, processor


def build_qwen2_audio(tokenizer):
    torch.manual_seed(0)
    config = Qwen2AudioConfig(
        audio_config=tiny_audio_encoder_config(max_source_positions=WINDOW_SECONDS * 50),
        text_config={"model_type": "qwen2", **tiny_text_config(tokenizer)},
        audio_token_id=token_id(tokenizer, "<|audio_pad|>"),
    )
    processor = Qwen2AudioProcessor(
        feature_extractor=tiny_feature_extractor(), tokenizer=tokenizer, chat_template=AUDIO_CHAT_TEMPLATE
    )
    return Qwen2AudioForConditionalGeneration(config).eval(), processor


def build_qwen2_5_omni_thinker(tokenizer):
    torch.manual_seed(0)
    vision = tiny_qwen2_5_vl_config(tokenizer).vision_config.to_dict()
    vision_keys = ("depth", "hidden_size", "intermediate_size", "num_heads", "out_hidden_size", "patch_size",
                   "spatial_merge_size", "temporal_patch_size", "window_size", "fullatt_block_indexes")  # fmt: skip
    mrope = {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [4, 2, 2]}
    config = Qwen2_5OmniThinkerConfig(
        audio_config=tiny_audio_encoder_config(output_dim=64, n_window=50),
        vision_config={key: vision[key] for key in vision_keys},
        text_config={**tiny_text_config(tokenizer), "rope_parameters": mrope},
        audio_token_index=token_id(tokenizer, "<|audio_pad|>"),
        image_token_index=token_id(tokenizer, "<|image_pad|>"),
        video_token_index=token_id(tokenizer, "<|video_pad|>"),
        audio_start_token_id=token_id(tokenizer, "<|audio_bos|>"),
        audio_end_token_id=token_id(tokenizer, "<|audio_eos|>"),
        vision_start_token_id=token_id(tokenizer, "<|vision_start|>"),  # real thinker configs carry it too
    )
    processor = Qwen2_5OmniProcessor(
        image_processor=Qwen2VLImageProcessor(**PIXEL_BOUNDS),
        video_processor=Qwen2VLVideoProcessor(**PIXEL_BOUNDS),
        feature_extractor=tiny_feature_extractor(),
        tokenizer=tokenizer,
        chat_template=AUDIO_CHAT_TEMPLATE,
    )
    return Qwen2_5OmniThinkerForConditionalGeneration(config).eval(), processor


BUILDERS = {
    "vaemotion": (build_vaemotion, VAEmotionAdapter),
    "qwen2_5_omni_thinker": (build_qwen2_5_omni_thinker, Qwen2_5OmniAdapter),
    "qwen2_audio": (build_qwen2_audio, Qwen2AudioAdapter),
    "qwen2_5_vl": (build_qwen2_5_vl, Qwen2_5_VLAdapter),
}


@pytest.fixture(scope="module")
def saved_models(tmp_path_factory, tokenizer) -> dict[str, Path]:
    """Each tiny model with its processor, saved to its own folder (the harness loads them by path)."""
    folders = {}
    for name, (build, _) in BUILDERS.items():
        model, processor = build(tokenizer)
        folders[name] = tmp_path_factory.mktemp(name)
        model.save_pretrained(folders[name])
        processor.save_pretrained(folders[name])
    return folders


# ------------------------------------------------------------------------------------------------ scoring
def decoded_clips(data_dir, config_name, num_frames=2):
    rows = load_artemo(config_name, data_dir)
    decode = _clip_decoder(rows, config_name, num_frames, frame_multiple=2)
    return list(rows), [decode(index) for index in range(len(rows))]


def naive_option_logprob(model, encoded: dict, option_ids: list[int]) -> float:
    """Reference: one full forward of prompt + option, no cache, no padding, the model's own positions."""
    full = append_response(encoded, option_ids)
    inputs = {key: value for key, value in full.items() if key not in ("labels", "response_length")}
    with torch.no_grad():
        logprobs = model(**inputs).logits.float().log_softmax(-1)
    positions, _ = response_positions(full, [len(option_ids)])
    return float(logprobs[0, positions[0], torch.tensor(option_ids)].sum())


@pytest.mark.parametrize(
    "name, config_name",
    [
        ("vaemotion", "audio_visual"),
        ("vaemotion", "audio_only"),
        ("vaemotion", "visual_only"),
        ("qwen2_5_omni_thinker", "audio_visual"),
        ("qwen2_audio", "audio_only"),
        ("qwen2_5_vl", "visual_only"),
    ],
)
def test_cached_option_scoring_equals_full_forward_per_option(data_dir, tokenizer, name, config_name):
    build, adapter_class = BUILDERS[name]
    model, processor = build(tokenizer)
    adapter = adapter_for(model, processor)
    assert isinstance(adapter, adapter_class)
    rows, clips = decoded_clips(data_dir, config_name)
    picked = [0, 3, 4]  # a video clip's content item, another video's emotion item, the image clip: unequal lengths
    encodings = [
        adapter.encode(clips[index], config_name, item_prompt(rows[index]["question"], rows[index]["options"]))
        for index in picked
    ]
    options = [rows[index]["options"] for index in picked]
    scores = score_options(adapter, encodings, options)

    for encoded, item_options, result in zip(encodings, options, scores):
        expected = [naive_option_logprob(model, encoded, adapter.option_ids(option)) for option in item_options]
        np.testing.assert_allclose(result.sums, expected, rtol=1e-4, atol=1e-4)
        assert result.num_tokens == [len(adapter.option_ids(option)) for option in item_options]
        assert result.predicted == int(np.argmax(expected))
        if name == "vaemotion":  # the emotion read in the batched prefill is predict_emotion's on the lone prompt
            alone = model.predict_emotion(**encoded)
            assert result.emotion["valence"] == pytest.approx(alone.valence.item(), abs=1e-5)
            order = [alone.labels.index(label) for label in ARTEMIS_EMOTIONS]
            np.testing.assert_allclose(
                result.emotion["probabilities"], alone.probabilities[0, order].numpy(), atol=1e-5
            )
        else:
            assert result.emotion is None


# ------------------------------------------------------------------------------------------------ end to end
def recompute_metrics(lines: list[dict]) -> dict:
    """Metrics straight from predictions.jsonl lines, without the harness's aggregation code."""

    def accuracy(task, key):
        flags = [line[key] for line in lines if line["task"] == task]
        return float(np.mean(flags)) if flags else None

    by_clip = {}
    for line in lines:
        by_clip.setdefault(line["clip_id"], []).append(line)
    prediction_keys = ("valence_pred", "arousal_pred", "emotion_pred", "emotion_probabilities")
    for clip_lines in by_clip.values():  # one emotion prediction per clip, on each of its items
        assert all([line[key] for key in prediction_keys] == [clip_lines[0][key] for key in prediction_keys]
                   for line in clip_lines)  # fmt: skip

    def first_per_clip(has_label):  # each clip once, with the labels of its first labelled item
        return [next(line for line in clip_lines if has_label(line)) for clip_lines in by_clip.values()
                if any(has_label(line) for line in clip_lines)]  # fmt: skip

    va = first_per_clip(lambda line: line["valence_ref"] is not None and line["arousal_ref"] is not None)
    labelled = first_per_clip(lambda line: line["emotion_ref"] is not None)
    expected = {
        "content_acc": accuracy("content", "correct"),
        "emotion_acc": accuracy("emotion", "correct"),
        "content_acc_norm": accuracy("content", "correct_norm"),
        "emotion_acc_norm": accuracy("emotion", "correct_norm"),
        **valence_arousal_metrics(
            [line["valence_pred"] for line in va],
            [line["arousal_pred"] for line in va],
            [line["valence_ref"] for line in va],
            [line["arousal_ref"] for line in va],
        ),
    }
    category = f1_scores(
        [ARTEMIS_EMOTIONS.index(line["emotion_pred"]) for line in labelled],
        [ARTEMIS_EMOTIONS.index(line["emotion_ref"]) for line in labelled],
        num_labels=8,
    )
    expected.update(
        category_acc=category["accuracy"],
        category_macro_f1=category["macro_f1"],
        category_weighted_f1=category["weighted_f1"],
    )
    for line in lines:  # predictions agree with their own option scores
        assert line["predicted"] == int(np.argmax(line["option_logprobs"]))
        means = np.asarray(line["option_logprobs"]) / np.asarray(line["option_num_tokens"])
        assert line["predicted_norm"] == int(np.argmax(means))
        assert line["correct"] == (line["predicted"] == line["answer"])
    return expected


def test_eval_cli_on_saved_vaemotion_writes_consistent_report(data_dir, saved_models, tmp_path, capsys):
    out = tmp_path / "report"
    argv = [
        "eval",
        "--model",
        str(saved_models["vaemotion"]),
        "--data-dir",
        str(data_dir),
        "--output",
        str(out),
        "--batch-size",
        "4",
        "--num-frames",
        "2",
        "--no-progress",
        "--device",
        "cpu",
    ]
    assert main(argv) == 0
    assert "| chance | audio_only |" in capsys.readouterr().out
    for name in ("results.json", "results.md", "results.png", "predictions.jsonl"):
        assert (out / name).stat().st_size > 0
    (result,) = json.loads((out / "results.json").read_text())["models"]
    assert result["emotion_source"] == "heads" and result["model_type"] == "vaemotion"
    lines = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert len(lines) == 3 * 6 and {line["config"] for line in lines} == {"audio_only", "visual_only", "audio_visual"}

    for config_name, metrics in result["configs"].items():
        config_lines = [line for line in lines if line["config"] == config_name]
        assert [line["id"] for line in config_lines] == [item["id"] for item in benchmark_items()]  # same items
        for key, value in recompute_metrics(config_lines).items():
            assert metrics[key] == pytest.approx(value, nan_ok=True), (config_name, key)
        assert metrics["counts"] == {"items": 6, "content": 3, "emotion": 3, "va_clips": 3, "category_clips": 3}
        assert metrics["chance"]["content_acc"] == pytest.approx(1 / 4)
        assert metrics["chance"]["emotion_acc"] == pytest.approx(1 / 3)
    model_rows = [
        row for row in (out / "results.md").read_text().splitlines() if row.startswith(f"| {result['model']} |")
    ]
    assert len(model_rows) == 3 and not any("n/a" in row for row in model_rows)  # every config scored


@pytest.mark.parametrize("config_name", ["audio_only", "audio_visual"])
def test_each_clips_emotion_is_read_once_from_the_fixed_emotion_prompt(data_dir, tokenizer, config_name):
    """Per clip, not per item: the heads' reading on the clip's items is predict_emotion on the lone fixed emotion
    prompt with the clip's media (a second code path), whatever the item's own question."""
    model, processor = build_vaemotion(tokenizer)
    results = evaluate_model(model, processor, data_dir, configs=[config_name], batch_size=3, num_frames=2,
                             progress=False)  # fmt: skip
    adapter = adapter_for(model, processor)
    rows, clips = decoded_clips(data_dir, config_name)
    for line, row, clip in zip(results["predictions"], rows, clips):
        alone = model.predict_emotion(**adapter.encode(clip, config_name, EMOTION_PROMPT))
        assert line["valence_pred"] == pytest.approx(alone.valence.item(), abs=1e-5), line["id"]
        assert line["arousal_pred"] == pytest.approx(alone.arousal.item(), abs=1e-5), line["id"]
    assert "clip" in EMOTION_PROMPT and all(label in EMOTION_PROMPT for label in ARTEMIS_EMOTIONS)
    items_only = evaluate_model(model, processor, data_dir, configs=[config_name], batch_size=3, num_frames=2,
                                progress=False, emotions=False)  # fmt: skip
    for line, with_emotions in zip(items_only["predictions"], results["predictions"]):
        assert line["valence_pred"] is None and line["emotion_probabilities"] is None
        assert line["option_logprobs"] == pytest.approx(with_emotions["option_logprobs"], abs=1e-5)
    metrics = items_only["configs"][config_name]
    assert metrics["valence_ccc"] is None and metrics["category_macro_f1"] is None and metrics["content_acc"] is not None


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--device", "tpu"], "--device: 'tpu' is not a torch device"),
        (["--output", "{file}"], "--output: .*report.txt exists and is not a folder"),
        (["--data-dir", "{empty}"], "--data-dir: no metadata.jsonl in"),
    ],
)
def test_eval_cli_refuses_bad_flags_before_loading_anything(data_dir, tmp_path, flags, message):
    (tmp_path / "report.txt").write_text("")
    (tmp_path / "empty").mkdir()
    flags = [flag.format(file=tmp_path / "report.txt", empty=tmp_path / "empty") for flag in flags]
    with pytest.raises(SystemExit, match=message):
        main(["eval", "--model", str(tmp_path / "never_loaded"), "--data-dir", str(data_dir), *flags])


@pytest.mark.parametrize("name", ["qwen2_5_omni_thinker", "qwen2_audio", "qwen2_5_vl"])
def test_baseline_adapter_by_path_scores_its_modalities_and_marks_the_rest(data_dir, saved_models, name):
    adapter = load_adapter(saved_models[name])
    assert isinstance(adapter, BUILDERS[name][1]) and adapter.emotion_source == "label_words"
    results = evaluate_adapter(adapter, data_dir, batch_size=3, num_frames=2, progress=False)
    for config_name, metrics in results["configs"].items():
        if not adapter.supports(config_name):
            assert metrics["supported"] is False and "does not take" in metrics["reason"]
            continue
        assert metrics["counts"]["items"] == 6 and 0.0 <= metrics["content_acc"] <= 1.0
        lines = [line for line in results["predictions"] if line["config"] == config_name]
        for line in lines:  # every clip has a labelled item, so every clip got the word questions
            assert line["emotion_pred"] in ARTEMIS_EMOTIONS
            assert -1.0 <= line["valence_pred"] <= 1.0 and -1.0 <= line["arousal_pred"] <= 1.0
            assert sum(line["emotion_probabilities"].values()) == pytest.approx(1.0)
        # a clip's word-question emotion is shared by its items
        by_clip = {}
        for line in lines:
            assert by_clip.setdefault(line["clip_id"], line["emotion_probabilities"]) == line["emotion_probabilities"]
    supported = sorted(config for config in results["configs"] if adapter.supports(config))
    table = markdown_table(results)
    assert table.count("n/a |") >= 3 - len(supported)
    assert len(EMOTION_QUESTIONS["category"][1]) == 8


def test_evaluate_model_in_process_with_limit_and_config_subset(data_dir, tokenizer):
    model, processor = build_vaemotion(tokenizer)
    results = evaluate_model(
        model,
        processor,
        data_dir,
        configs=["audio_only"],
        limit=2,
        batch_size=1,
        num_frames=2,
        progress=False,
        name="tiny",
    )
    assert list(results["configs"]) == ["audio_only"] and results["model"] == "tiny"
    assert [line["id"] for line in results["predictions"]] == ["c0-content", "c0-emotion"]
    with pytest.raises(ValueError, match="unknown configs"):
        evaluate_model(model, processor, data_dir, configs=["smell_only"])


def test_full_omni_checkpoint_loads_only_its_thinker(tokenizer, tmp_path):
    """Hub Qwen2.5-Omni checkpoints hold thinker, talker and token2wav: the adapter keeps the thinker's weights."""
    thinker, processor = build_qwen2_5_omni_thinker(tokenizer)
    thinker.save_pretrained(tmp_path / "thinker")
    full = tmp_path / "omni"
    Qwen2_5OmniConfig(thinker_config=thinker.config.to_dict()).save_pretrained(full)
    weights = {f"thinker.{key}": value for key, value in load_file(tmp_path / "thinker" / "model.safetensors").items()}
    save_file(
        {**weights, "talker.codec_head.weight": torch.zeros(2, 2)},
        full / "model.safetensors",
        metadata={"format": "pt"},
    )
    processor.save_pretrained(full)

    adapter = load_adapter(full)
    assert isinstance(adapter, Qwen2_5OmniAdapter) and isinstance(
        adapter.model, Qwen2_5OmniThinkerForConditionalGeneration
    )
    input_ids = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        torch.testing.assert_close(adapter.model(input_ids=input_ids).logits, thinker(input_ids=input_ids).logits)


def test_vaemotion_without_supervisor_reads_emotion_from_label_words(data_dir, tokenizer):
    """The "no Supervisor" ablation has no emotion heads: it is scored like the baselines, never with NaN heads."""
    torch.manual_seed(0)
    config = tiny_vaemotion_config(tokenizer, window_seconds=WINDOW_SECONDS, use_emotion_supervisor=False)
    model = VAEmotionForConditionalGeneration(config).eval()
    processor = build_tiny_processor(tokenizer, window_seconds=WINDOW_SECONDS)
    results = evaluate_model(
        model, processor, data_dir, configs=["audio_visual"], batch_size=2, num_frames=2, progress=False
    )
    assert results["emotion_source"] == "label_words"
    metrics = results["configs"]["audio_visual"]
    assert 0.0 <= metrics["category_acc"] <= 1.0 and np.isfinite(metrics["valence_rmse"])
