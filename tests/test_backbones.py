"""The backbone seam (vaemotion/backbones.py) on tiny models: one recipe, one set of ids, each family's own
processor and template, videos as frames for LLaVA, Whisper on short windows, device maps (CPU, offline)."""

import numpy as np
import pytest
import torch
from conftest import tone, write_video
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import (
    AutoModelForImageTextToText,
    CLIPImageProcessor,
    LlavaProcessor,
    PreTrainedTokenizerFast,
    Qwen2_5_VLProcessor,
    Qwen2VLImageProcessor,
    Qwen2VLVideoProcessor,
    WhisperFeatureExtractor,
    WhisperModel,
)
from transformers.models.whisper.modeling_whisper import WhisperEncoder

from vaemotion import VAEmotionForConditionalGeneration, VAEmotionProcessor
from vaemotion.backbones import BACKBONES, backbone_for
from vaemotion.media import VAEmotionInputError
from vaemotion.modeling_vaemotion import whisper_encode_prefix
from vaemotion.tiny import build_tiny_processor, tiny_llava_config, tiny_qwen2_5_vl_config, tiny_whisper_config

CHATML = (  # a text LLM's template as SmolLM2's: concatenates string contents, its own default system prompt
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "<|im_start|>system\nYou are a small helpful model.<|im_end|>\n{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>",
            "<|video_pad|>", "<image>"]  # fmt: skip


def vlm_tokenizer(chat_template=None):
    """A tokenizer with the VLM's specials but no audio tokens, as a VLM checkpoint ships it."""
    words = "hi look listen what is the mood ? describe".split()
    vocab = {token: index for index, token in enumerate(["<unk>", *SPECIALS, *words])}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.add_special_tokens(SPECIALS)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="<unk>", pad_token="<|endoftext|>", eos_token="<|im_end|>"
    )
    tokenizer.chat_template = chat_template
    return tokenizer


@pytest.fixture(scope="module")
def whisper_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("whisper")
    torch.manual_seed(0)
    WhisperModel(tiny_whisper_config(num_mel_bins=16, window_seconds=2)).save_pretrained(folder)
    WhisperFeatureExtractor(feature_size=16, chunk_length=2).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def qwen_dir(tmp_path_factory):
    """A Qwen2.5-VL checkpoint whose embedding matrix has spare rows (vocab_size > len(tokenizer)), as every real
    Qwen2.5-VL does (151,936 rows for 151,665 tokens)."""
    folder = tmp_path_factory.mktemp("qwen")
    tokenizer = vlm_tokenizer()
    config = tiny_qwen2_5_vl_config(tokenizer)
    config.text_config.vocab_size = len(tokenizer) + 16
    torch.manual_seed(0)
    AutoModelForImageTextToText.from_config(config).save_pretrained(folder)
    pixels = {"min_pixels": 56 * 56, "max_pixels": 112 * 112}
    Qwen2_5_VLProcessor(Qwen2VLImageProcessor(**pixels), tokenizer, Qwen2VLVideoProcessor(**pixels)).save_pretrained(folder)
    return folder, len(tokenizer)


@pytest.fixture(scope="module")
def llava_dir(tmp_path_factory):
    """A LLaVA checkpoint with a text LLM's ChatML template (string contents only) and no spare embedding row."""
    folder = tmp_path_factory.mktemp("llava")
    tokenizer = vlm_tokenizer(CHATML)
    torch.manual_seed(0)
    AutoModelForImageTextToText.from_config(tiny_llava_config(tokenizer)).save_pretrained(folder)
    image_processor = CLIPImageProcessor(size={"shortest_edge": 28}, crop_size={"height": 28, "width": 28})
    LlavaProcessor(image_processor, tokenizer, patch_size=14, vision_feature_select_strategy="default",
                   num_additional_image_tokens=1, chat_template=CHATML).save_pretrained(folder)  # fmt: skip
    return folder, len(tokenizer)


@pytest.mark.parametrize("family", ["qwen", "llava"])
def test_the_readme_recipe_gives_model_and_processor_the_same_ids(family, qwen_dir, llava_dir, whisper_dir):
    vlm_dir, tokens = qwen_dir if family == "qwen" else llava_dir
    rows_before = AutoModelForImageTextToText.from_pretrained(vlm_dir).get_input_embeddings().weight
    model = VAEmotionForConditionalGeneration.from_vlm_and_audio_pretrained(vlm_dir, whisper_dir)
    processor = VAEmotionProcessor.from_vlm_and_audio_pretrained(vlm_dir, whisper_dir)
    names = ("audio_token_id", "audio_bos_token_id", "audio_eos_token_id")
    ids = [getattr(processor, name) for name in names]
    assert ids == [getattr(model.config, name) for name in names] == [tokens, tokens + 1, tokens + 2]
    rows = model.get_input_embeddings().weight
    if family == "qwen":  # the spare rows took the ids; the matrix is the checkpoint's, untouched
        assert rows.shape == rows_before.shape and torch.equal(rows, rows_before)
        vision = [processor.tokenizer.convert_tokens_to_ids(t) for t in ("<|vision_start|>", "<|vision_end|>")]
        torch.testing.assert_close(model.audio_delimiters.weight, rows[vision])
    else:  # no spare row: grown by exactly the three tokens; delimiters start from the mean trained row
        assert rows.shape[0] == rows_before.shape[0] + 3
        torch.testing.assert_close(model.audio_delimiters.weight, rows_before.mean(0, keepdim=True).expand(2, -1))
    assert processor.vlm_family == model.config.vlm_config.model_type


def test_forward_reads_the_delimiters_from_their_own_rows(qwen_dir, whisper_dir):
    model = VAEmotionForConditionalGeneration.from_vlm_and_audio_pretrained(*[qwen_dir[0], whisper_dir]).eval()
    ids = torch.tensor([[model.config.audio_bos_token_id, 5, model.config.audio_eos_token_id]])
    with torch.no_grad():
        model.audio_delimiters.weight.normal_()
        reference = model.get_input_embeddings()(ids)
        reference[0, 0], reference[0, 2] = model.audio_delimiters.weight
        out = model(input_ids=ids)
        expected = model.vlm(inputs_embeds=reference, input_ids=ids).logits
    torch.testing.assert_close(out.logits, expected)


def test_llava_keeps_its_template_and_sees_a_video_as_frames(llava_dir, whisper_dir, tmp_path):
    processor = VAEmotionProcessor.from_vlm_and_audio_pretrained(llava_dir[0], whisper_dir)
    assert processor.chat_template == CHATML and processor.frame_multiple == 1
    clip = write_video(tmp_path / "clip.mp4", seconds=1.0, fps=8, size=(32, 32), sampling_rate=16000)
    messages = [{"role": "user", "content": [{"type": "video", "path": clip}, {"type": "audio"},
                                             {"type": "text", "text": "what is the mood ?"}]}]  # fmt: skip
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True, load_audio_from_video=True)
    assert prompt.startswith("<|im_start|>system\nYou are a small helpful model.<|im_end|>\n<|im_start|>user\n")
    inputs = processor.apply_chat_template(
        messages, add_generation_prompt=True, load_audio_from_video=True, tokenize=True, return_dict=True,
        return_tensors="pt", processor_kwargs={"num_frames": 3},
    )  # fmt: skip
    ids = inputs["input_ids"][0]
    image_id = processor.image_token_id
    assert inputs["pixel_values"].shape == (3, 3, 28, 28)  # three frames, each a 28 px image
    assert int((ids == image_id).sum()) == 3 * 4  # (28 / 14)^2 patches each, CLS dropped by "default"
    soundtrack_start = int((ids == processor.audio_bos_token_id).nonzero()[0, 0])
    assert int((ids == image_id).nonzero().max()) < soundtrack_start  # the soundtrack's block follows the frames
    model = VAEmotionForConditionalGeneration.from_vlm_and_audio_pretrained(llava_dir[0], whisper_dir).eval()
    with torch.no_grad():
        assert torch.isfinite(model(**inputs).logits).all()


def test_a_typed_template_keeps_typed_parts(qwen_dir, whisper_dir):
    processor = VAEmotionProcessor.from_vlm_and_audio_pretrained(qwen_dir[0], whisper_dir)
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "audio"}, {"type": "text", "text": "hi"}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    assert "<|vision_start|><|image_pad|><|vision_end|><|audio_bos|><|audio_pad|><|audio_eos|>hi" in prompt
    with pytest.raises(VAEmotionInputError, match="message 0 has a part of type 'smell'"):
        processor.apply_chat_template([{"role": "user", "content": [{"type": "smell"}]}])


def test_an_unknown_family_is_named_with_the_supported_ones():
    with pytest.raises(ValueError, match=r"VLM family 'mllama' has no VAEmotion backbone adapter; supported: \["):
        backbone_for("mllama")
    assert {"qwen2_5_vl", "qwen2_vl", "llava"} <= set(BACKBONES)


def test_whisper_prefix_forward_equals_the_stock_encoder_on_a_full_window():
    torch.manual_seed(0)
    encoder = WhisperEncoder(tiny_whisper_config(num_mel_bins=16, window_seconds=2, layers=2)).eval()
    features = torch.randn(2, 16, 200)
    with torch.no_grad():
        torch.testing.assert_close(whisper_encode_prefix(encoder, features), encoder(features).last_hidden_state)
        short = whisper_encode_prefix(encoder, features[..., :60])
    assert short.shape == (2, 30, 32)  # 60 mel frames -> 30 encoder frames: the prefix of the position table
    with pytest.raises(ValueError, match="input_features: 202 mel frames are more than the encoder's window"):
        whisper_encode_prefix(encoder, torch.randn(1, 16, 202))


def test_short_clips_without_padding_to_the_window():
    padded, short = build_tiny_processor(window_seconds=2), build_tiny_processor(window_seconds=2, pad_audio_to_window=False)
    sounds = [{"array": tone(0.5, 16000), "sampling_rate": 16000}, {"array": tone(0.8, 16000), "sampling_rate": 16000}]
    text = ["<|audio_bos|><|audio_pad|><|audio_eos|>"] * 2
    full = padded(text=text, audio=sounds, return_tensors="pt", padding=True)
    trimmed = short(text=text, audio=sounds, return_tensors="pt", padding=True)
    assert full["input_features"].shape[-1] == 200 and trimmed["input_features"].shape[-1] == 80  # the longest clip
    torch.testing.assert_close(trimmed["feature_attention_mask"].sum(-1), full["feature_attention_mask"].sum(-1))
    torch.testing.assert_close(trimmed["input_ids"], full["input_ids"])  # the same placeholders either way
    from vaemotion.tiny import tiny_vaemotion_config

    torch.manual_seed(0)
    model = VAEmotionForConditionalGeneration(tiny_vaemotion_config(padded.tokenizer, window_seconds=2)).eval()
    with torch.no_grad():
        out = model(**trimmed)
    assert torch.isfinite(out.logits).all()


def test_device_map_auto_loads_and_runs(tmp_path):
    processor = build_tiny_processor(window_seconds=2)
    from vaemotion.tiny import tiny_vaemotion_config

    torch.manual_seed(0)
    model = VAEmotionForConditionalGeneration(tiny_vaemotion_config(processor.tokenizer, window_seconds=2)).eval()
    model.save_pretrained(tmp_path)
    mapped = VAEmotionForConditionalGeneration.from_pretrained(tmp_path, device_map="auto").eval()
    inputs = processor(text="hi <|audio_bos|><|audio_pad|><|audio_eos|>",
                       audio={"array": tone(1.0, 16000), "sampling_rate": 16000}, return_tensors="pt")  # fmt: skip
    inputs["input_features"] = inputs["input_features"].double()  # features in another dtype are moved and cast
    with torch.no_grad():
        expected = model(**{**inputs, "input_features": inputs["input_features"].float()}).logits
        torch.testing.assert_close(mapped(**inputs).logits, expected)
    assert np.isfinite(expected.numpy()).all()


def test_a_model_built_from_a_config_starts_with_the_delimiters_own_rows():
    from vaemotion.tiny import build_tiny_tokenizer, tiny_vaemotion_config

    tokenizer = build_tiny_tokenizer()
    torch.manual_seed(0)
    model = VAEmotionForConditionalGeneration(tiny_vaemotion_config(tokenizer))
    ids = [model.config.audio_bos_token_id, model.config.audio_eos_token_id]
    torch.testing.assert_close(model.audio_delimiters.weight, model.get_input_embeddings().weight[ids])
    text = torch.tensor([[ids[0], 5, 6, ids[1], 7]])  # a text-only path through the plain VLM: the same logits
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(input_ids=text).logits, model.vlm(input_ids=text).logits)


def solid(value, size=28):
    return np.full((size, size, 3), value, np.uint8)


def test_llava_keeps_images_and_frames_in_text_order_across_a_batch(llava_dir, whisper_dir, tmp_path):
    processor = VAEmotionProcessor.from_vlm_and_audio_pretrained(llava_dir[0], whisper_dir)
    frames = np.stack([solid(100), solid(150)])  # a two-frame video between two images, then a sample with one image
    image = {"type": "image"}
    conversations = [
        [{"role": "user", "content": [image, {"type": "video"}, image, {"type": "text", "text": "hi"}]}],
        [{"role": "user", "content": [image, {"type": "text", "text": "look"}]}],
    ]
    texts = processor.apply_chat_template(conversations, add_generation_prompt=True)
    inputs = processor(text=texts, images=[solid(0), solid(250), solid(50)], videos=[frames], padding=True,
                       return_tensors="pt")  # fmt: skip
    means = inputs["pixel_values"].mean(dim=(1, 2, 3))
    assert means.shape == (5,) and means.argsort().tolist() == [0, 4, 1, 2, 3]  # 0, 100, 150, 250 | 50
    assert (inputs["input_ids"] == processor.image_token_id).sum(-1).tolist() == [4 * 4, 4]
    processor.save_pretrained(tmp_path)
    loaded = VAEmotionProcessor.from_pretrained(tmp_path)
    assert (loaded.vlm_family, loaded.vlm_processor_settings) == ("llava", processor.vlm_processor_settings)
    assert loaded.vlm_processor_settings["patch_size"] == 14 and loaded.chat_template == CHATML
    again = loaded(text=texts, images=[solid(0), solid(250), solid(50)], videos=[frames], padding=True,
                   return_tensors="pt")  # fmt: skip
    torch.testing.assert_close(again["input_ids"], inputs["input_ids"])


def test_top_level_processing_kwargs_reach_the_processor():
    processor = build_tiny_processor(window_seconds=2)
    conversations = [
        [{"role": "user", "content": [{"type": "text", "text": "hi"}]}],
        [{"role": "user", "content": [{"type": "audio", "audio": {"array": tone(1.0, 16000), "sampling_rate": 16000}},
                                      {"type": "text", "text": "what is the mood ?"}]}],
    ]  # fmt: skip
    batch = processor.apply_chat_template(conversations, tokenize=True, return_dict=True, return_tensors="pt",
                                          padding=True, padding_side="left")  # fmt: skip
    assert batch["input_ids"].shape == batch["attention_mask"].shape and not batch["attention_mask"][0, 0]
    as_lists = processor.apply_chat_template(conversations[1], tokenize=True, return_dict=True)
    nested = processor.apply_chat_template(conversations[1], tokenize=True, return_dict=True,
                                           processor_kwargs={"return_tensors": "pt"})  # fmt: skip
    assert isinstance(as_lists["input_ids"], list) and nested["input_ids"][0].tolist() == as_lists["input_ids"][0]


def test_model_references_that_cannot_load_are_named(tmp_path):
    from vaemotion.backbones import check_model_reference

    (tmp_path / "empty").mkdir()
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text("{}")
    check_model_reference(tmp_path / "model", "model_name_or_path")
    check_model_reference("Qwen/Qwen2.5-VL-7B-Instruct", "model_name_or_path")  # a hub id: its loader decides
    with pytest.raises(ValueError, match=r"model_name_or_path: .*/missing/model: no such model folder"):
        check_model_reference(str(tmp_path / "missing" / "model"), "model_name_or_path")
    with pytest.raises(ValueError, match="vlm_name_or_path: ./stage1: no such model folder"):
        check_model_reference("./stage1", "vlm_name_or_path")
    with pytest.raises(ValueError, match=r"model: .*empty is a folder without config.json"):
        check_model_reference(tmp_path / "empty", "model")
