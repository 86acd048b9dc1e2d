"""The `audio-visual-emotion` pipeline on a tiny random model: inputs, modality forcing, batching, describe, errors."""

import numpy as np
import pytest
import soundfile
import torch
from conftest import tone
from PIL import Image
from transformers import AutoModelForImageTextToText, pipeline
from transformers.pipelines import PIPELINE_REGISTRY

from vaemotion import AudioVisualEmotionPipeline, VAEmotionForConditionalGeneration, VAEmotionInputError
from vaemotion.pipeline_vaemotion import DEFAULT_PROMPT, collate_model_inputs
from vaemotion.tiny import build_tiny_processor, tiny_vaemotion_config


WINDOW_SECONDS = 2
RESULT_KEYS = {"emotion", "score", "scores", "valence", "arousal"}


@pytest.fixture(scope="module")
def processor():
    return build_tiny_processor(window_seconds=WINDOW_SECONDS)


@pytest.fixture(scope="module")
def model(processor):
    torch.manual_seed(0)
    # A wider init than the default spreads the random model's predictions, so that mixing up samples shows.
    config = tiny_vaemotion_config(processor.tokenizer, window_seconds=WINDOW_SECONDS, initializer_range=0.2)
    return VAEmotionForConditionalGeneration(config).eval()


@pytest.fixture(scope="module")
def classifier(model, processor):
    return pipeline("audio-visual-emotion", model=model, processor=processor, num_frames=4)


@pytest.fixture(scope="module")
def sound():
    return {"array": tone(1.0, 16000), "sampling_rate": 16000}


@pytest.fixture(scope="module")
def picture():
    return Image.fromarray(np.linspace(0, 255, 56 * 56 * 3).reshape(56, 56, 3).astype(np.uint8))


@pytest.fixture(scope="module")
def wav_path(media_dir):
    path = media_dir / "tone.wav"
    soundfile.write(path, tone(1.5, 22050, frequency=220.0), 22050)
    return str(path)


@pytest.fixture(scope="module")
def png_path(media_dir, picture):
    path = media_dir / "picture.png"
    picture.save(path)
    return str(path)


class ModelCalls:
    """Records every model forward (one per prefill) and the media it received."""

    def __init__(self, model, monkeypatch):
        self.inputs = []
        forward = model.forward

        def recording_forward(*args, **kwargs):
            self.inputs.append(kwargs)
            return forward(*args, **kwargs)

        monkeypatch.setattr(model, "forward", recording_forward)

    def media(self, index=-1):
        keys = ("pixel_values", "pixel_values_videos", "input_features")
        return {key for key in keys if self.inputs[index].get(key) is not None}


@pytest.fixture
def calls(model, monkeypatch):
    return ModelCalls(model, monkeypatch)


def check_result(result, labels):
    assert set(result) == RESULT_KEYS
    assert result["emotion"] in labels and list(result["scores"]) == labels
    assert result["score"] == max(result["scores"].values())
    assert sum(result["scores"].values()) == pytest.approx(1.0, abs=1e-5)
    assert -1 <= result["valence"] <= 1 and -1 <= result["arousal"] <= 1


def test_task_is_registered_with_an_auto_class():
    task, info, _ = PIPELINE_REGISTRY.check_task("audio-visual-emotion")
    assert info["impl"] is AudioVisualEmotionPipeline
    assert info["pt"] == (AutoModelForImageTextToText,) and info["type"] == "multimodal"


def test_each_input_kind(classifier, calls, model, av_clip, wav_path, png_path, sound, picture):
    labels = model.config.emotion_labels
    cases = [
        (av_clip, {"pixel_values_videos", "input_features"}),  # frames and soundtrack
        (wav_path, {"input_features"}),
        (sound, {"input_features"}),
        (png_path, {"pixel_values"}),
        (picture, {"pixel_values"}),
        ({"image": picture, "audio": sound, "text": "how does it feel ?"}, {"pixel_values", "input_features"}),
    ]
    for item, media in cases:
        check_result(classifier(item), labels)
        assert calls.media() == media, item
    check_result(classifier(sound["array"], sampling_rate=16000), labels)
    # 1.5 s at 22.05 kHz and the 2 s soundtrack under 4 of 20 frames, resampled to 16 kHz: 100 mel frames a second
    assert [call["feature_attention_mask"].sum().item() for call in calls.inputs[:2]] == [200, 150]


def test_modality_forces_the_path(classifier, calls, av_clip, silent_clip, sound, picture):
    classifier(av_clip, modality="visual_only")
    assert calls.media() == {"pixel_values_videos"}
    classifier(av_clip, modality="audio_only")
    assert calls.media() == {"input_features"}
    assert calls.inputs[-1]["feature_attention_mask"].sum() == pytest.approx(200, abs=5)  # the whole track
    classifier({"image": picture, "audio": sound}, modality="visual_only")
    assert calls.media() == {"pixel_values"}
    classifier(silent_clip)  # by default: what the input has, here frames only
    assert calls.media() == {"pixel_values_videos"}
    classifier(
        {"video": av_clip, "audio": sound}, modality="audio_visual"
    )  # the separate audio replaces the soundtrack
    assert calls.media() == {"pixel_values_videos", "input_features"}
    assert calls.inputs[-1]["feature_attention_mask"].shape[0] == 1
    assert calls.inputs[-1]["feature_attention_mask"].sum() == 100
    with pytest.raises(VAEmotionInputError, match=f"^{silent_clip}: the video has no audio stream"):
        classifier(silent_clip, modality="audio_visual")
    with pytest.raises(VAEmotionInputError, match="modality='audio_only' needs audio or a video with sound"):
        classifier(picture, modality="audio_only")
    with pytest.raises(VAEmotionInputError, match="modality='visual_only' needs a video or an image"):
        classifier(sound, modality="visual_only")
    with pytest.raises(VAEmotionInputError, match="modality='audio_visual' needs a video with sound, or a video or"):
        classifier(picture, modality="audio_visual")
    with pytest.raises(VAEmotionInputError, match="modality: must be one of"):
        classifier(sound, modality="audio")


def test_batches_are_single_model_calls_with_the_same_results(classifier, calls, av_clip, silent_clip, sound, picture):
    items = [av_clip, sound, picture, {"image": picture, "audio": sound, "text": "is it calm ?"}, silent_clip]
    one_by_one = classifier(items)
    assert len(calls.inputs) == 5
    batched = classifier(items, batch_size=2)
    assert len(calls.inputs) == 5 + 3  # batches of 2, 2 and 1
    first_batch = calls.inputs[5]
    assert first_batch["input_ids"].shape[0] == 2 and first_batch["attention_mask"][:, -1].all()  # left padding
    assert calls.media(5) == {"pixel_values_videos", "input_features"}
    for single, from_batch in zip(one_by_one, batched, strict=True):
        assert from_batch["emotion"] == single["emotion"]
        for key in ("valence", "arousal"):
            assert from_batch[key] == pytest.approx(single[key], abs=1e-5)
        assert list(from_batch["scores"].values()) == pytest.approx(list(single["scores"].values()), abs=1e-5)
    # The items really differ, so a mix-up inside a batch could not go unnoticed.
    valences = [result["valence"] for result in one_by_one]
    assert min(abs(a - b) for i, a in enumerate(valences) for b in valences[i + 1 :]) > 1e-4


def test_collate_pads_sequences_left_and_concatenates_media():
    audio = {
        "input_ids": torch.tensor([[7, 8, 9]]),
        "attention_mask": torch.ones(1, 3, dtype=torch.long),
        "mm_token_type_ids": torch.tensor([[0, 3, 0]]),
        "input_features": torch.ones(2, 16, 200),  # two audio windows
    }
    image = {
        "input_ids": torch.tensor([[5]]),
        "attention_mask": torch.ones(1, 1, dtype=torch.long),
        "mm_token_type_ids": torch.tensor([[1]]),
        "pixel_values": torch.zeros(16, 1176),
        "image_grid_thw": torch.tensor([[1, 4, 4]]),
    }
    batch = collate_model_inputs([image, audio], pad_token_id=1)
    assert batch["input_ids"].tolist() == [[1, 1, 5], [7, 8, 9]]
    assert batch["attention_mask"].tolist() == [[0, 0, 1], [1, 1, 1]]
    assert batch["mm_token_type_ids"].tolist() == [[0, 0, 1], [0, 3, 0]]
    assert batch["input_features"].shape == (2, 16, 200) and batch["pixel_values"].shape == (16, 1176)


def test_describe_generates_with_the_given_parameters(classifier, model, av_clip, sound, monkeypatch):
    generate_kwargs = []
    generate = model.generate

    def recording_generate(**kwargs):
        generate_kwargs.append(kwargs)
        return generate(**kwargs)

    monkeypatch.setattr(model, "generate", recording_generate)
    result = classifier(av_clip, describe=True, max_new_tokens=3)
    assert set(result) == RESULT_KEYS | {"description"} and isinstance(result["description"], str)
    assert generate_kwargs[-1]["max_new_tokens"] == 3
    singles = [classifier(item, describe=True, max_new_tokens=3) for item in (av_clip, sound)]
    batched = classifier([av_clip, sound], batch_size=2, describe=True, max_new_tokens=3)
    assert [result["description"] for result in batched] == [result["description"] for result in singles]
    assert "description" not in classifier(sound)


def test_prompt_default_kwarg_and_dict_text(classifier, processor, sound):
    def asks(item, question, **kwargs):
        ids = classifier.preprocess(item, **kwargs)["input_ids"][0].tolist()
        question_ids = processor.tokenizer(question, add_special_tokens=False)["input_ids"]
        return any(ids[i : i + len(question_ids)] == question_ids for i in range(len(ids)))

    assert asks(sound, DEFAULT_PROMPT)
    assert asks(sound, "is it sad ?", prompt="is it sad ?") and not asks(sound, DEFAULT_PROMPT, prompt="is it sad ?")
    assert asks({"audio": sound, "text": "is it happy ?"}, "is it happy ?", prompt="is it sad ?")


def test_bad_inputs_name_the_failing_item(classifier, av_clip, silent_clip, sound, tmp_path):
    with pytest.raises(VAEmotionInputError, match=rf"^inputs\[2\]: {silent_clip}: the video has no audio stream"):
        classifier([av_clip, av_clip, silent_clip], modality="audio_visual", batch_size=2)
    with pytest.raises(VAEmotionInputError, match=r"^inputs\[1\]: an audio array needs its sampling rate"):
        classifier([sound, sound["array"]])
    missing = str(tmp_path / "missing.mp4")
    with pytest.raises(VAEmotionInputError, match=rf"^inputs\[0\]: {missing}: file not found"):
        classifier([missing])
    with pytest.raises(VAEmotionInputError, match=r"^inputs\[1\]: .*notes.txt: cannot tell from the extension"):
        classifier([sound, str(tmp_path / "notes.txt")])
    with pytest.raises(VAEmotionInputError, match=r"^inputs\[0\]: a dict input takes the keys"):
        classifier([{"clip": av_clip}])
    with pytest.raises(VAEmotionInputError, match=r"^inputs\[0\]: unsupported input of type int"):
        classifier([3])
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    with pytest.raises(VAEmotionInputError, match=rf"^{broken}: cannot be read as an image"):
        classifier(str(broken))
    with pytest.raises(TypeError, match="unexpected arguments"):
        classifier(sound, max_new_token=3)


def test_pipeline_from_a_saved_folder(model, processor, tmp_path, sound):
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    loaded = pipeline("audio-visual-emotion", model=str(tmp_path))
    assert isinstance(loaded, AudioVisualEmotionPipeline)
    assert loaded(sound)["scores"] == pytest.approx(
        pipeline("audio-visual-emotion", model=model, processor=processor)(sound)["scores"]
    )


def test_a_calls_frame_sampling_replaces_the_pipelines(classifier, av_clip):
    """The pipeline was built with num_frames=4: a call asking for fps instead gets fps, not 'pass one of them'."""
    by_fps = classifier(av_clip, modality="audio_visual", fps=2)  # 2 s at 10 fps: the same 4 frames
    assert by_fps["scores"] == pytest.approx(classifier(av_clip, modality="audio_visual")["scores"])
    with pytest.raises(VAEmotionInputError, match="num_frames and fps: pass one of them"):
        classifier(av_clip, num_frames=2, fps=2)


@pytest.mark.parametrize(
    "arguments, message",
    [
        ({"num_frames": "4"}, "num_frames: must be a whole number, got '4'"),
        ({"fps": float("nan")}, "fps: must be a finite number"),
        ({"describe": "no"}, "describe: must be True or False"),
        ({"generate_kwargs": ["greedy"]}, "generate_kwargs: must be a dict"),
    ],
)
def test_bad_call_arguments_are_named(classifier, av_clip, arguments, message):
    with pytest.raises(VAEmotionInputError, match=message):
        classifier(av_clip, **arguments)


def test_array_pictures_are_checked_and_grey_ones_taken(classifier, picture, sound):
    grey = np.asarray(picture.convert("L"))
    as_rgb = classifier({"image": np.asarray(picture.convert("L").convert("RGB")), "audio": sound})["scores"]
    assert classifier({"image": grey, "audio": sound})["scores"] == pytest.approx(as_rgb)  # (H, W) grey: made RGB
    with pytest.raises(VAEmotionInputError, match=r"image: the picture has no pixels \(shape \(0, 0, 3\)\)"):
        classifier({"image": np.zeros((0, 0, 3), np.uint8), "audio": sound})
    with pytest.raises(VAEmotionInputError, match=r"image: an array picture must be .* got shape \(2, 56, 56, 3\)"):
        classifier({"image": np.zeros((2, 56, 56, 3), np.uint8), "audio": sound})
    with pytest.raises(VAEmotionInputError, match="text: the question must be a string, got int"):
        classifier({"audio": sound, "text": 5})
