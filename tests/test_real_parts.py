"""The real pretrained parts of scripts/fetch_real_parts.py against facts that nobody on this project wrote.

Each test skips (with the command to run) when its part has not been fetched. The expected numbers are those of the
published checkpoints: Qwen2 / Qwen2.5 token ids, SmolLM2-135M-Instruct's and Whisper's hub configs, DINOv2 ViT-S/14,
and openai-whisper's own mel filter bank.
"""

import shutil
import subprocess

import numpy as np
import pytest
import torch

from real_parts import real_part_path


@pytest.fixture(scope="module")
def qwen_tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(real_part_path("qwen2.5-tokenizer"))


def test_qwen_tokenizer_ids_are_qwen2_5s(qwen_tokenizer):
    assert qwen_tokenizer("Hello, world!")["input_ids"] == [9707, 11, 1879, 0]
    expected = {"<|endoftext|>": 151643, "<|im_start|>": 151644, "<|im_end|>": 151645, "<|vision_start|>": 151652,
                "<|vision_end|>": 151653, "<|image_pad|>": 151655, "<|video_pad|>": 151656}
    assert {token: qwen_tokenizer.convert_tokens_to_ids(token) for token in expected} == expected
    # 151,643 BPE ranks + Qwen2.5's 22 specials (151,665) + Qwen3's <tool_response>, </tool_response>, <think>, </think>
    assert len(qwen_tokenizer) == 151669
    assert qwen_tokenizer.convert_ids_to_tokens([151665, 151668]) == ["<tool_response>", "</think>"]


def test_qwen_tokenizer_chat_template_is_chatml(qwen_tokenizer):
    prompt = qwen_tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False,
                                                add_generation_prompt=True)
    assert prompt == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"  # Qwen3's: no default system prompt


@pytest.fixture(scope="module")
def smollm2():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = real_part_path("smollm2-135m-instruct")
    return AutoTokenizer.from_pretrained(path), AutoModelForCausalLM.from_pretrained(path).eval()


def test_smollm2_config_is_the_published_one(smollm2):
    tokenizer, model = smollm2
    config = model.config
    assert type(model).__name__ == "LlamaForCausalLM" and model.dtype == torch.float32
    assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads, config.num_key_value_heads) == (
        576, 30, 9, 3)
    assert (config.vocab_size, config.max_position_embeddings, config.tie_word_embeddings) == (49152, 8192, True)
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    assert 134_000_000 < sum(p.numel() for p in model.parameters()) < 135_000_000
    assert tokenizer.convert_tokens_to_ids(["<|endoftext|>", "<|im_start|>", "<|im_end|>"]) == [0, 1, 2]
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False,
                                           add_generation_prompt=True)
    assert prompt.startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")
    assert prompt.endswith("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")


def test_smollm2_greedy_continuation_is_sensible(smollm2):
    tokenizer, model = smollm2
    inputs = tokenizer("The capital of France is", return_tensors="pt")
    with torch.no_grad():
        output = model.generate(**inputs, max_new_tokens=3, do_sample=False)
    assert tokenizer.decode(output[0, inputs["input_ids"].shape[1] :]).strip().startswith("Paris")


WHISPER = {  # hub config facts: d_model, layers, heads, vocab, <|startoftranscript|>, <|notimestamps|>
    "whisper-tiny.en": (384, 4, 6, 51864, 50257, 50362),
    "whisper-base": (512, 6, 8, 51865, 50258, 50363),
}


@pytest.mark.parametrize("name", sorted(WHISPER))
def test_whisper_encoder_shapes(name):
    from transformers import WhisperForConditionalGeneration, WhisperProcessor

    path = real_part_path(name)
    d_model, layers, heads, vocab, start, no_timestamps = WHISPER[name]
    model = WhisperForConditionalGeneration.from_pretrained(path).eval()
    processor = WhisperProcessor.from_pretrained(path)
    config = model.config
    assert (config.d_model, config.encoder_layers, config.decoder_layers, config.encoder_attention_heads) == (
        d_model, layers, layers, heads)
    assert (config.vocab_size, config.num_mel_bins, config.max_source_positions, config.max_target_positions) == (
        vocab, 80, 1500, 448)
    tokenizer = processor.tokenizer
    assert tokenizer.convert_tokens_to_ids(["<|startoftranscript|>", "<|notimestamps|>"]) == [start, no_timestamps]
    assert len(tokenizer) == vocab
    features = processor(np.zeros(16000, np.float32), sampling_rate=16000, return_tensors="pt").input_features
    assert features.shape == (1, 80, 3000)  # padded to 30 s
    with torch.no_grad():
        hidden = model.model.encoder(features).last_hidden_state
    assert hidden.shape == (1, 1500, d_model) and bool(hidden.isfinite().all())


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not on PATH")
def test_whisper_tiny_en_transcribes_speech():
    from transformers import WhisperForConditionalGeneration, WhisperProcessor

    path = real_part_path("whisper-tiny.en")
    model = WhisperForConditionalGeneration.from_pretrained(path).eval()
    processor = WhisperProcessor.from_pretrained(path)
    wav = subprocess.run(["espeak-ng", "-v", "en-us", "--stdout", "Thank you very much for your help."],
                         capture_output=True, check=True).stdout
    rate = int.from_bytes(wav[24:28], "little")
    speech = np.frombuffer(wav[44 : 44 + (len(wav) - 44) // 2 * 2], np.int16).astype(np.float32) / 32768
    speech = np.interp(np.arange(int(len(speech) * 16000 / rate)) / 16000, np.arange(len(speech)) / rate, speech)
    features = processor(speech.astype(np.float32), sampling_rate=16000, return_tensors="pt").input_features
    with torch.no_grad():
        ids = model.generate(features)
    assert processor.batch_decode(ids, skip_special_tokens=True)[0].strip() == "Thank you very much for your help."


def _two_images():
    try:
        import skimage.data

        return skimage.data.astronaut(), skimage.data.coffee()
    except ImportError:  # generated stand-ins: a colour ramp and a black-and-white texture
        y, x = np.mgrid[0:300, 0:400]
        ramp = np.stack([x / 400 * 255, y / 300 * 255, np.full_like(x, 128.0)], -1).astype(np.uint8)
        texture = ((np.sin(x / 9) * np.cos(y / 7) > 0) * 255).astype(np.uint8)[..., None].repeat(3, -1)
        return ramp, texture


def test_dinov2_config_and_features():
    from transformers import AutoImageProcessor, Dinov2Model

    path = real_part_path("dinov2-small")
    model, processor = Dinov2Model.from_pretrained(path).eval(), AutoImageProcessor.from_pretrained(path)
    config = model.config
    assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads, config.patch_size) == (
        384, 12, 6, 14)
    assert 22_000_000 < sum(p.numel() for p in model.parameters()) < 22_200_000

    def features(image):
        pixels = processor(images=image, return_tensors="pt").pixel_values
        assert pixels.shape == (1, 3, 224, 224)
        with torch.no_grad():
            output = model(pixel_values=pixels)
        assert output.last_hidden_state.shape == (1, 1 + 16 * 16, 384)
        return output.pooler_output[0]

    first, second = _two_images()
    cosine = lambda a, b: torch.nn.functional.cosine_similarity(a, b, dim=0).item()  # noqa: E731
    a, b = features(first), features(second)
    assert torch.equal(a, features(first))
    assert cosine(a, b) < 0.9  # different images, different CLS features
    assert cosine(a, features(np.ascontiguousarray(first[:, ::-1]))) > 0.95  # DINOv2 is trained flip-invariant


def test_whisper_large_v3_front_end_is_mel_128():
    from transformers import WhisperFeatureExtractor

    path = real_part_path("whisper-large-v3-frontend")
    extractor = WhisperFeatureExtractor.from_pretrained(path)
    filters = np.load(path / "mel_filters.npz")
    assert extractor.feature_size == 128 and extractor.mel_filters.shape == (201, 128)
    np.testing.assert_allclose(extractor.mel_filters.T, filters["mel_128"], atol=1e-6)
    np.testing.assert_allclose(WhisperFeatureExtractor(feature_size=80).mel_filters.T, filters["mel_80"], atol=1e-6)
    features = extractor(np.zeros(16000, np.float32), sampling_rate=16000, return_tensors="np").input_features
    assert features.shape == (1, 128, 3000)
