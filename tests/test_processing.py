"""VAEmotionProcessor: placeholder counts, audio windows, batching, chat template with media paths, save/load."""

import numpy as np
import pytest
import torch
from conftest import tone
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import (
    AutoProcessor,
    PreTrainedTokenizerFast,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2_5_VLProcessor,
    Qwen2VLImageProcessor,
    Qwen2VLVideoProcessor,
    WhisperFeatureExtractor,
    WhisperModel,
)

from vaemotion.configuration_vaemotion import VAEmotionConfig
from vaemotion.media import VAEmotionInputError, load_video
from vaemotion.processing_vaemotion import VAEmotionProcessor
from vaemotion.tiny import build_tiny_processor, tiny_qwen2_5_vl_config, tiny_whisper_config


AUDIO = "<|audio_bos|><|audio_pad|><|audio_eos|>"
IMAGE = "<|vision_start|><|image_pad|><|vision_end|>"


def expected_tokens(seconds, stride=2):
    """Independent count: Whisper makes 100 mel frames per second, its encoder halves them, the projector pools."""
    mel_frames = round(seconds * 100)
    return max(((mel_frames - 1) // 2 + 1) // stride, 1)


def sound(seconds, sampling_rate=16000):
    return {"array": tone(seconds, sampling_rate), "sampling_rate": sampling_rate}


@pytest.fixture(scope="module")
def processor():
    return build_tiny_processor()


def audio_token_count(processor, input_ids):
    return int((torch.as_tensor(input_ids) == processor.audio_token_id).sum())


@pytest.mark.parametrize("seconds", [0.05, 0.5, 1.0, 1.73, 12.0])
def test_audio_placeholders_follow_valid_frames(processor, seconds):
    inputs = processor(text=f"hi {AUDIO}", audio=sound(seconds), return_tensors="pt")
    assert audio_token_count(processor, inputs["input_ids"]) == expected_tokens(seconds)
    assert inputs["input_features"].shape == (1, 16, 3000)
    assert int(inputs["feature_attention_mask"].sum()) == round(seconds * 100)


def test_bare_arrays_need_and_use_their_sampling_rate(processor):
    eight_khz = tone(1.0, 8000)
    inputs = processor(text=AUDIO, audio=eight_khz, sampling_rate=8000, return_tensors="pt")
    assert audio_token_count(processor, inputs["input_ids"]) == expected_tokens(1.0)  # resampled, still 1 s
    with pytest.raises(VAEmotionInputError, match=r"audio\[0\]: an audio array has no sampling rate"):
        processor(text=AUDIO, audio=eight_khz)


def test_long_audio_is_split_into_windows():
    processor = build_tiny_processor(window_seconds=2, max_audio_windows=3)
    inputs = processor(
        text=[f"a {AUDIO}", f"b {AUDIO}"], audio=[sound(5.0), sound(1.0)], padding=True, return_tensors="pt"
    )
    # sample 0: windows of 2 s, 2 s, 1 s; sample 1: one window of 1 s; in that order
    assert inputs["input_features"].shape == (4, 16, 200)
    assert inputs["feature_attention_mask"].sum(-1).tolist() == [200, 200, 100, 100]
    first = processor.tokenizer.decode(inputs["input_ids"][0])
    assert first.count("<|audio_bos|>") == first.count("<|audio_eos|>") == 3  # one block per window
    counts = [audio_token_count(processor, ids) for ids in inputs["input_ids"]]
    assert counts == [2 * expected_tokens(2.0) + expected_tokens(1.0), expected_tokens(1.0)]
    truncated = processor(text=AUDIO, audio=sound(9.0), return_tensors="pt")  # 5 windows, 3 kept
    assert truncated["input_features"].shape[0] == 3


def test_mixed_batch_with_left_padding(processor):
    image = np.zeros((56, 56, 3), np.uint8)
    texts = [f"listen {AUDIO}", f"look {IMAGE}", "just text"]
    inputs = processor(
        text=texts, images=[image], audio=[sound(0.4)], padding=True, padding_side="left", return_tensors="pt"
    )
    ids, mask, types = inputs["input_ids"], inputs["attention_mask"], inputs["mm_token_type_ids"]
    assert ids.shape == mask.shape == types.shape
    assert mask[:, -1].all() and not mask[2, 0]  # padding on the left, the shortest sample padded
    assert ((types == 1) == (ids == processor.image_token_id)).all()
    assert ((types == 3) == (ids == processor.audio_token_id)).all()
    assert not types[mask == 0].any()
    assert (types == 1).sum(-1).tolist() == [0, 4, 0]  # a 56x56 image: (56/14)^2 patches / 2x2 merge
    assert (types == 3).sum(-1).tolist() == [expected_tokens(0.4), 0, 0]
    assert inputs["pixel_values"].shape[0] == 16 and inputs["input_features"].shape[0] == 1


def test_placeholder_count_mismatches(processor):
    with pytest.raises(VAEmotionInputError, match="audio: the text has 2 <\\|audio_pad\\|> placeholders but 1"):
        processor(text=AUDIO * 2, audio=sound(1.0))
    with pytest.raises(VAEmotionInputError, match="audio: the text has 1 .* but 2"):
        processor(text=AUDIO, audio=[sound(1.0), sound(1.0)])
    with pytest.raises(VAEmotionInputError, match="images: the text has 0 <\\|image_pad\\|> placeholders but 1"):
        processor(text="hi", images=[np.zeros((56, 56, 3), np.uint8)])


def test_video_with_its_soundtrack_through_the_chat_template(processor, av_clip):
    messages = [
        {
            "role": "user",
            "content": [
                {"type": "audio", "path": av_clip},  # a standalone audio first: the whole 2 s track
                {"type": "video", "path": av_clip},
                {"type": "audio"},  # transformers' omni convention: an empty audio part after the video, its sound
                {"type": "text", "text": "what is the mood ?"},
            ],
        }
    ]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True, load_audio_from_video=True)
    assert f"{AUDIO}<|vision_start|><|video_pad|><|vision_end|>{AUDIO}what" in prompt
    inputs = processor.apply_chat_template(
        messages,
        add_generation_prompt=True,
        load_audio_from_video=True,
        tokenize=True,
        return_dict=True,
        return_tensors="pt",
        processor_kwargs={"num_frames": 4},
    )
    # 20 frames at 10 fps; 4 sampled (0.0, 0.5, 1.0, 1.5 s): 2 temporal patches of 2 frames, each 1.0 s long
    assert inputs["video_grid_thw"][0, 0] == 2
    assert inputs["second_per_grid_ts"].tolist() == pytest.approx([1.0])
    # windows in placeholder order: the standalone track (~2 s), then the soundtrack under the frames (2.0 s)
    lengths = inputs["feature_attention_mask"].sum(-1).tolist()
    assert lengths[0] == pytest.approx(200, abs=5) and lengths[1] == 200
    ids = inputs["input_ids"][0]
    vision_end = int((ids == processor.tokenizer.convert_tokens_to_ids("<|vision_end|>")).nonzero()[0, 0])
    assert ids[vision_end + 1] == processor.audio_bos_token_id  # the soundtrack's block follows the video
    assert audio_token_count(processor, ids) == sum(expected_tokens(n / 100) for n in lengths)
    assert ((inputs["mm_token_type_ids"] == 2) == (ids == processor.video_token_id)).all()


def test_use_audio_in_video_is_a_deprecated_alias_that_writes_the_soundtrack_part(processor, av_clip):
    with_part = [{"role": "user", "content": [{"type": "video", "path": av_clip}, {"type": "audio"},
                                              {"type": "text", "text": "hi"}]}]  # fmt: skip
    without = [{"role": "user", "content": [{"type": "video", "path": av_clip}, {"type": "text", "text": "hi"}]}]
    expected = processor.apply_chat_template(with_part, load_audio_from_video=True, tokenize=True, return_dict=True,
                                             return_tensors="pt", num_frames=4)  # fmt: skip
    with pytest.warns(FutureWarning, match="use_audio_in_video is deprecated.*load_audio_from_video"):
        old = processor.apply_chat_template(without, use_audio_in_video=True, tokenize=True, return_dict=True,
                                            return_tensors="pt", num_frames=4)  # fmt: skip
    torch.testing.assert_close(old["input_ids"], expected["input_ids"])
    torch.testing.assert_close(old["input_features"], expected["input_features"])
    with pytest.warns(FutureWarning):
        called = processor(text=f"<|video_pad|>{AUDIO}", videos=[av_clip], use_audio_in_video=True, num_frames=4,
                           return_tensors="pt")  # fmt: skip
    torch.testing.assert_close(called["input_features"], expected["input_features"])
    with pytest.raises(VAEmotionInputError, match="load_audio_from_video and its deprecated name .* disagree"):
        processor(text="hi", use_audio_in_video=True, load_audio_from_video=False)


def test_a_batch_mixes_videos_with_and_without_sound_and_silent_videos_lose_their_slot(
    processor, av_clip, silent_clip, monkeypatch
):
    """Per sample: a video followed by an empty audio part brings its sound, one without does not (its soundtrack
    is not even decoded); a silent video whose sound was asked for loses its slot instead of failing the batch
    (transformers' omni processors fail)."""
    import vaemotion.processing_vaemotion as processing

    def conversation(video, sound):
        parts = [{"type": "video", "path": video}, *([{"type": "audio"}] if sound else []), {"type": "text", "text": "hi"}]
        return [{"role": "user", "content": parts}]

    decoded_with_audio = []
    load_video_as_given = processing.load_video
    monkeypatch.setattr(processing, "load_video",
                        lambda *args, **kwargs: decoded_with_audio.append(kwargs["with_audio"]) or load_video_as_given(*args, **kwargs))  # fmt: skip
    batch = [conversation(av_clip, True), conversation(av_clip, False), conversation(silent_clip, True)]
    inputs = processor.apply_chat_template(batch, load_audio_from_video=True, tokenize=True, return_dict=True,
                                           return_tensors="pt", padding=True, num_frames=4)  # fmt: skip
    assert decoded_with_audio == [True, False, False]
    monkeypatch.undo()
    assert inputs["input_features"].shape[0] == 1  # the first sample's soundtrack only
    audio_rows = (inputs["input_ids"] == processor.audio_token_id).sum(-1).tolist()
    assert audio_rows[0] > 0 and audio_rows[1] == audio_rows[2] == 0
    assert not (inputs["input_ids"][2] == processor.audio_bos_token_id).any()  # the slot left with its delimiters
    alone = processor.apply_chat_template(conversation(av_clip, True), load_audio_from_video=True, tokenize=True,
                                          return_dict=True, return_tensors="pt", num_frames=4)  # fmt: skip
    torch.testing.assert_close(inputs["input_features"], alone["input_features"])
    with pytest.raises(VAEmotionInputError, match="no video is followed by an empty audio part"):
        processor.apply_chat_template(conversation(av_clip, False), load_audio_from_video=True)


def test_the_conversation_says_which_audio_part_is_a_soundtrack(processor, av_clip):
    """A standalone audio after a video that brings no sound stays standalone: the parts, not a rule on the text,
    decide (as transformers' apply_chat_template builds audio_from_video_indices)."""
    second = {"array": np.full(16000, 0.1, np.float32), "sampling_rate": 16000}
    batch = [
        [{"role": "user", "content": [{"type": "video", "path": av_clip}, {"type": "audio"}, {"type": "text", "text": "a"}]}],
        [{"role": "user", "content": [{"type": "video", "path": av_clip}, {"type": "text", "text": "b"},
                                      {"type": "audio", "audio": second}]}],
    ]  # fmt: skip
    inputs = processor.apply_chat_template(batch, load_audio_from_video=True, tokenize=True, return_dict=True,
                                           return_tensors="pt", padding=True, num_frames=4)  # fmt: skip
    assert inputs["feature_attention_mask"].sum(-1).tolist() == [200, 100]  # A's soundtrack, then B's own audio
    clip = load_video(av_clip, num_frames=4, with_audio=False)
    with pytest.raises(VAEmotionInputError, match=r"videos\[0\]: its soundtrack was asked for, but the VideoClip has no"):
        processor(text=f"<|video_pad|>{AUDIO}", videos=[clip], load_audio_from_video=True)


def test_audio_from_video_indices_name_each_slots_source(processor, av_clip):
    """transformers' `audio_from_video_indices`: None takes the next standalone audio, i the soundtrack of video i,
    whatever the order in the text; the same windows as the default rule where both apply."""
    standalone = {"array": np.full(16000, 0.1, np.float32), "sampling_rate": 16000}
    text = [f"{AUDIO}<|video_pad|>{AUDIO}", f"<|video_pad|>{AUDIO}"]
    by_rule = processor(text=text, videos=[av_clip, av_clip], audio=[standalone], load_audio_from_video=True,
                        num_frames=4, return_tensors="pt", padding=True)  # fmt: skip
    named = processor(text=text, videos=[av_clip, av_clip], audio=[standalone], audio_from_video_indices=[None, 0, 1],
                      num_frames=4, return_tensors="pt", padding=True)  # fmt: skip
    torch.testing.assert_close(named["input_features"], by_rule["input_features"])
    swapped = processor(text=[f"{AUDIO}<|video_pad|>{AUDIO}"], videos=[av_clip], audio=[standalone],
                        audio_from_video_indices=[0, None], num_frames=4, return_tensors="pt")  # fmt: skip
    lengths = swapped["feature_attention_mask"].sum(-1).tolist()
    assert lengths == [200, 100]  # the soundtrack (2 s) first, then the 1 s standalone audio
    cases = [
        ([0], "has 1 entries but the text has 3 audio placeholders"),
        ([None, 0, 2], r"must be None or a video index in \[0, 2\), got 2"),
        ([None, 1, 0], "videos\\[1\\] is in sample 1, its slot in sample 0"),
        ([None, None, 1], "has 2 standalone slots .None. but 1 audio inputs"),
        ("0", "must be a list with one entry per audio placeholder"),
    ]
    for indices, message in cases:
        with pytest.raises(VAEmotionInputError, match=message):
            processor(text=text, videos=[av_clip, av_clip], audio=[standalone], audio_from_video_indices=indices,
                      num_frames=4)  # fmt: skip
    with pytest.raises(VAEmotionInputError, match="a video's soundtrack can fill one slot"):
        processor(text=f"<|video_pad|>{AUDIO}{AUDIO}", videos=[av_clip], audio_from_video_indices=[0, 0], num_frames=4)


def test_video_clips_and_frames(processor, av_clip):
    clip = load_video(av_clip, num_frames=4)
    text = f"<|vision_start|><|video_pad|><|vision_end|>{AUDIO}"
    from_clip = processor(text=text, videos=[clip], load_audio_from_video=True, return_tensors="pt")
    from_path = processor(text=text, videos=[av_clip], load_audio_from_video=True, num_frames=4, return_tensors="pt")
    torch.testing.assert_close(from_clip["pixel_values_videos"], from_path["pixel_values_videos"])
    torch.testing.assert_close(from_clip["input_features"], from_path["input_features"])
    with pytest.raises(VAEmotionInputError, match=r"videos\[0\]: its soundtrack was asked for, which needs a path"):
        processor(text=text, videos=[clip.frames], load_audio_from_video=True)
    with pytest.raises(VAEmotionInputError, match="2 follow a video and take its soundtrack"):
        processor(text=f"<|video_pad|>{AUDIO}<|video_pad|>{AUDIO}", videos=[clip, clip], audio=[clip.audio],
                  sampling_rate=16000, load_audio_from_video=True)  # fmt: skip
    frames_only = processor(
        text="<|video_pad|>", videos=[clip.frames[:3]], video_metadata=[clip.metadata], return_tensors="pt"
    )
    assert frames_only["video_grid_thw"][0, 0] == 2  # 3 frames: the last one repeated, as Qwen's processor does


def test_silent_video_with_audio_requested(processor, silent_clip):
    messages = [{"role": "user", "content": [{"type": "video", "path": silent_clip}, {"type": "audio"}]}]
    inputs = processor.apply_chat_template(messages, tokenize=True, return_dict=True, load_audio_from_video=True)
    assert "input_features" not in inputs and "pixel_values_videos" in inputs
    assert processor.audio_bos_token_id not in inputs["input_ids"][0]
    with pytest.raises(VAEmotionInputError, match=f"{silent_clip}: the video has no audio stream"):
        load_video(silent_clip, num_frames=4, with_audio=True)


def test_save_and_load_round_trip(tmp_path, av_clip):
    processor = build_tiny_processor(window_seconds=2, audio_pool_stride=4, max_audio_windows=2)
    messages = [{"role": "user", "content": [{"type": "audio", "path": av_clip}, {"type": "text", "text": "hi"}]}]
    expected = processor.apply_chat_template(messages, tokenize=True, return_dict=True)["input_ids"]
    processor.save_pretrained(tmp_path)
    AutoProcessor.register(VAEmotionConfig, VAEmotionProcessor, exist_ok=True)
    for loaded in (VAEmotionProcessor.from_pretrained(tmp_path), AutoProcessor.from_pretrained(tmp_path)):
        assert type(loaded) is VAEmotionProcessor
        assert (loaded.audio_pool_stride, loaded.max_audio_windows) == (4, 2)
        assert loaded.feature_extractor.n_samples == 2 * 16000
        assert loaded.apply_chat_template(messages, tokenize=True, return_dict=True)["input_ids"] == expected


def tokenizer_without_audio_tokens():
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                "<|image_pad|>", "<|video_pad|>"]  # fmt: skip
    vocab = {token: index for index, token in enumerate(["<unk>", *specials, "hi", "look", "listen"])}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.add_special_tokens(specials)
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="<unk>", pad_token="<|endoftext|>", eos_token="<|im_end|>"
    )


@pytest.fixture(scope="module")
def pretrained_parts(tmp_path_factory):
    vlm_dir, audio_dir = tmp_path_factory.mktemp("vlm"), tmp_path_factory.mktemp("whisper")
    tokenizer = tokenizer_without_audio_tokens()
    Qwen2_5_VLForConditionalGeneration(tiny_qwen2_5_vl_config(tokenizer)).save_pretrained(vlm_dir)
    pixel_bounds = {"min_pixels": 56 * 56, "max_pixels": 112 * 112}
    Qwen2_5_VLProcessor(
        Qwen2VLImageProcessor(**pixel_bounds), tokenizer, Qwen2VLVideoProcessor(**pixel_bounds)
    ).save_pretrained(vlm_dir)
    WhisperModel(tiny_whisper_config(num_mel_bins=16, window_seconds=2)).save_pretrained(audio_dir)
    WhisperFeatureExtractor(feature_size=16, chunk_length=2).save_pretrained(audio_dir)
    return vlm_dir, audio_dir, tokenizer


def test_from_vlm_and_audio_pretrained(pretrained_parts):
    vlm_dir, audio_dir, original = pretrained_parts
    processor = VAEmotionProcessor.from_vlm_and_audio_pretrained(vlm_dir, audio_dir, max_audio_windows=2)
    new_ids = [processor.audio_bos_token_id, processor.audio_token_id, processor.audio_eos_token_id]
    assert len(set(new_ids)) == 3 and min(new_ids) >= len(original)  # added after the VLM's vocabulary
    assert processor.tokenizer.audio_token == "<|audio_pad|>"
    assert processor.tokenizer.tokenize("<|audio_bos|> hi") == ["<|audio_bos|>", "hi"]  # whole special tokens
    assert processor.image_token_id == original.convert_tokens_to_ids("<|image_pad|>")
    assert processor.image_processor.size["longest_edge"] == 112 * 112
    assert processor.feature_extractor.feature_size == 16 and processor.feature_extractor.n_samples == 2 * 16000
    inputs = processor(text=f"listen {AUDIO}", audio=sound(3.0), return_tensors="pt")
    assert inputs["input_features"].shape == (2, 16, 200)  # two windows of the 2 s encoder
    assert audio_token_count(processor, inputs["input_ids"]) == expected_tokens(2.0) + expected_tokens(1.0)


def test_feature_extractor_must_fit_the_encoder(pretrained_parts, tmp_path):
    vlm_dir, _, _ = pretrained_parts
    WhisperModel(tiny_whisper_config(num_mel_bins=16, window_seconds=2)).save_pretrained(tmp_path)
    built = VAEmotionProcessor.from_vlm_and_audio_pretrained(vlm_dir, tmp_path)  # no extractor saved: built
    assert built.feature_extractor.feature_size == 16 and built.feature_extractor.chunk_length == 2
    WhisperFeatureExtractor(feature_size=80, chunk_length=2).save_pretrained(tmp_path)
    with pytest.raises(VAEmotionInputError, match="audio_path: the feature extractor gives 80 mel bins"):
        VAEmotionProcessor.from_vlm_and_audio_pretrained(vlm_dir, tmp_path)


def test_tokenizer_without_audio_tokens_is_refused():
    processor = build_tiny_processor()
    with pytest.raises(VAEmotionInputError, match="tokenizer: has no <\\|audio_pad\\|> token"):
        VAEmotionProcessor(
            processor.image_processor, tokenizer_without_audio_tokens(), processor.video_processor,
            processor.feature_extractor,
        )  # fmt: skip


IMAGE_TEXT = "<|vision_start|><|image_pad|><|vision_end|>What is the mood?"


def test_image_paths_get_the_package_errors_and_checks(processor, tmp_path):
    """Paths handed to the processor are opened by vaemotion.media.load_image, not by transformers/PIL directly."""
    from PIL import Image
    from test_media import bomb_png

    with pytest.raises(VAEmotionInputError, match="missing.png: file not found"):
        processor(images=[str(tmp_path / "missing.png")], text=IMAGE_TEXT)
    (tmp_path / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with pytest.raises(VAEmotionInputError, match="corrupt.png: cannot be read as an image"):
        processor(images=[str(tmp_path / "corrupt.png")], text=IMAGE_TEXT)
    with pytest.raises(VAEmotionInputError, match="bomb.png: the picture is 12000 x 12000"):
        processor(images=[str(bomb_png(tmp_path / "bomb.png"))], text=IMAGE_TEXT)
    picture = tmp_path / "picture.png"
    Image.new("RGB", (64, 64), (200, 100, 0)).save(picture)
    with pytest.raises(VAEmotionInputError, match="max_pixels=1000"):
        processor(images=[str(picture)], text=IMAGE_TEXT, max_image_pixels=1000)
    # a 16-bit grey picture reads as the same picture in 8 bits, not as white
    grey16, grey8 = tmp_path / "grey16.png", tmp_path / "grey8.png"
    Image.fromarray(np.full((64, 64), 128 * 257, np.uint16)).save(grey16)
    Image.fromarray(np.full((64, 64), 128, np.uint8)).convert("RGB").save(grey8)
    from_16, from_8 = (processor(images=[str(path)], text=IMAGE_TEXT)["pixel_values"] for path in (grey16, grey8))
    torch.testing.assert_close(from_16, from_8)


def test_a_picture_the_vlm_refuses_is_named(processor, tmp_path):
    """Qwen2-VL's image processor refuses an aspect ratio above 200 in its own words; the error names the file."""
    from PIL import Image

    fine, thin = tmp_path / "fine.png", tmp_path / "thin.png"
    Image.new("RGB", (64, 64)).save(fine)
    Image.new("RGB", (6000, 28)).save(thin)
    with pytest.raises(VAEmotionInputError, match=r"thin.png: the qwen2_5_vl image processor cannot take .*aspect ratio"):
        processor(images=[str(fine), str(thin)], text=[IMAGE_TEXT, IMAGE_TEXT])
