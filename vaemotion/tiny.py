"""Tiny random models of the real architectures, built offline: for tests, docs examples and the CPU demo.

Every builder here produces the real transformers classes (Qwen2.5-VL, LLaVA, Whisper) at toy sizes, so code that
works on them works on the 7B checkpoints too. Nothing is downloaded.
"""

from __future__ import annotations

from collections.abc import Iterable

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers
from transformers import LlavaConfig, PreTrainedTokenizerFast, Qwen2_5_VLConfig, WhisperConfig

from .backbones import chat_template_of, generation_prompt_ids
from .configuration_vaemotion import VAEmotionConfig

# Qwen2.5-VL's chat and vision specials, plus the three audio tokens VAEmotion adds.
SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
    "<|audio_bos|>",
    "<|audio_pad|>",
    "<|audio_eos|>",
    "<image>",  # LLaVA's image placeholder
]
# Named special tokens, as real VLM tokenizers expose them (`tokenizer.image_token`, `tokenizer.audio_token_id`, ...).
NAMED_SPECIAL_TOKENS = {
    "image_token": "<|image_pad|>",
    "video_token": "<|video_pad|>",
    "vision_bos_token": "<|vision_start|>",
    "vision_eos_token": "<|vision_end|>",
    "audio_token": "<|audio_pad|>",
    "audio_bos_token": "<|audio_bos|>",
    "audio_eos_token": "<|audio_eos|>",
}

BASE_WORDS = (
    "system user assistant you are a an the this that is it of in on to and or with what which how does do "
    "describe scene mood picture image video clip sound audio music hear see show shows feel feels content "
    "emotion answer question option options one word choose from best describes following listen look main "
    "subject happy sad calm angry valence arousal positive negative high low yes no helpful"
).split() + list("abcdefghijklmnopqrstuvwxyz0123456789") + list(".,:;?!'\"()-_/[]{}<>=+*#%&|")


def build_tiny_tokenizer(extra_words: Iterable[str] = ()) -> PreTrainedTokenizerFast:
    """A word-level fast tokenizer with Qwen2.5-VL's special tokens and the audio tokens, built in memory."""
    words = list(dict.fromkeys([*BASE_WORDS, *(w.lower() for w in extra_words)]))
    vocab = {"<unk>": 0}
    for token in [*SPECIAL_TOKENS, *words]:
        vocab.setdefault(token, len(vocab))
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.normalizer = normalizers.Lowercase()  # special tokens are matched before normalization
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces, glues punctuation sensibly
    backend.add_special_tokens(SPECIAL_TOKENS)  # matched whole, before pre-tokenization
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        unk_token="<unk>",
        pad_token="<|endoftext|>",
        eos_token="<|im_end|>",
        extra_special_tokens=dict(NAMED_SPECIAL_TOKENS),
        model_max_length=4096,
    )
    return tokenizer


def _text_special_ids(tokenizer) -> dict:
    return {
        "bos_token_id": tokenizer.convert_tokens_to_ids("<|im_start|>"),
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }


def tiny_qwen2_5_vl_config(tokenizer, hidden_size: int = 64, num_layers: int = 2, vision_depth: int = 2):
    """Qwen2.5-VL at toy size, with token ids taken from ``tokenizer``."""
    heads = 4
    head_dim = hidden_size // heads
    half = head_dim // 2  # mrope splits the rotary half-dimension into temporal/height/width sections
    mrope_section = [half - 2 * (half // 3), half // 3, half // 3]
    return Qwen2_5_VLConfig(
        text_config={
            "vocab_size": len(tokenizer),
            "hidden_size": hidden_size,
            "intermediate_size": hidden_size * 2,
            "num_hidden_layers": num_layers,
            "num_attention_heads": heads,
            "num_key_value_heads": 2,
            "max_position_embeddings": 4096,
            "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": mrope_section},
            "tie_word_embeddings": False,
            **_text_special_ids(tokenizer),
        },
        vision_config={
            "depth": vision_depth,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_heads": 2,
            "out_hidden_size": hidden_size,
            "patch_size": 14,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            "window_size": 56,
            "fullatt_block_indexes": [vision_depth - 1],
        },
        image_token_id=tokenizer.convert_tokens_to_ids("<|image_pad|>"),
        video_token_id=tokenizer.convert_tokens_to_ids("<|video_pad|>"),
        vision_start_token_id=tokenizer.convert_tokens_to_ids("<|vision_start|>"),
        vision_end_token_id=tokenizer.convert_tokens_to_ids("<|vision_end|>"),
        tie_word_embeddings=False,
    )


def tiny_llava_config(tokenizer, hidden_size: int = 64, num_layers: int = 2, image_size: int = 28):
    """LLaVA (CLIP vision tower + Llama) at toy size: a family whose text model takes only ``inputs_embeds``."""
    return LlavaConfig(
        vision_config={
            "model_type": "clip_vision_model",
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "image_size": image_size,
            "patch_size": 14,
            "projection_dim": 32,
        },
        text_config={
            "model_type": "llama",
            "vocab_size": len(tokenizer),
            "hidden_size": hidden_size,
            "intermediate_size": hidden_size * 2,
            "num_hidden_layers": num_layers,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "max_position_embeddings": 4096,
            "tie_word_embeddings": False,
            **_text_special_ids(tokenizer),
        },
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        vision_feature_layer=-1,
        vision_feature_select_strategy="default",
        tie_word_embeddings=False,
    )


def tiny_whisper_config(num_mel_bins: int = 16, d_model: int = 32, window_seconds: int = 30, layers: int = 1):
    """Whisper (encoder used) at toy size. ``window_seconds`` sets the encoder's input window (30 s in real Whisper)."""
    return WhisperConfig(
        num_mel_bins=num_mel_bins,
        d_model=d_model,
        encoder_layers=layers,
        decoder_layers=1,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=d_model * 2,
        decoder_ffn_dim=d_model * 2,
        max_source_positions=window_seconds * 50,  # 100 mel frames per second, halved by the encoder's stride
        max_target_positions=32,
        vocab_size=64,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        decoder_start_token_id=1,
        begin_suppress_tokens=None,
        suppress_tokens=None,
    )


def tiny_vaemotion_config(tokenizer=None, family: str = "qwen2_5_vl", window_seconds: int = 30, **kwargs):
    """A complete tiny [`VAEmotionConfig`]; ``family`` is ``"qwen2_5_vl"`` or ``"llava"``."""
    tokenizer = tokenizer if tokenizer is not None else build_tiny_tokenizer()
    vlm_builders = {"qwen2_5_vl": tiny_qwen2_5_vl_config, "llava": tiny_llava_config}
    if family not in vlm_builders:
        raise ValueError(f"family must be one of {sorted(vlm_builders)}, got {family!r}")
    defaults = {
        "enhancer_bottleneck_size": 16,
        "supervisor_hidden_size": 32,
        "projector_hidden_size": 64,
        "generation_prompt_ids": generation_prompt_ids(tokenizer, chat_template_of(tokenizer)),
    }
    return VAEmotionConfig(
        vlm_config=vlm_builders[family](tokenizer),
        audio_config=tiny_whisper_config(window_seconds=window_seconds),
        audio_token_id=tokenizer.convert_tokens_to_ids("<|audio_pad|>"),
        audio_bos_token_id=tokenizer.convert_tokens_to_ids("<|audio_bos|>"),
        audio_eos_token_id=tokenizer.convert_tokens_to_ids("<|audio_eos|>"),
        **{**defaults, **kwargs},
    )


def build_tiny_processor(tokenizer=None, window_seconds: int = 30, num_mel_bins: int = 16, **kwargs):
    """A [`VAEmotionProcessor`] matching [`tiny_vaemotion_config`] and [`tiny_whisper_config`].

    Images and video frames are resized to between 56x56 and 112x112 pixels (a 56x56 image gives 4 tokens, a 56x56
    video gives 4 tokens per pair of frames); the audio window is ``window_seconds`` long with ``num_mel_bins`` mels.
    ``kwargs`` go to the processor (``audio_pool_stride``, ``max_audio_windows``, ``chat_template``).
    """
    from transformers import Qwen2VLImageProcessor, Qwen2VLVideoProcessor, WhisperFeatureExtractor

    from .processing_vaemotion import VAEmotionProcessor

    pixel_bounds = {"min_pixels": 56 * 56, "max_pixels": 112 * 112}
    return VAEmotionProcessor(
        image_processor=Qwen2VLImageProcessor(**pixel_bounds),
        tokenizer=tokenizer if tokenizer is not None else build_tiny_tokenizer(),
        video_processor=Qwen2VLVideoProcessor(**pixel_bounds, cap_pixels_per_frame=True),
        feature_extractor=WhisperFeatureExtractor(feature_size=num_mel_bins, chunk_length=window_seconds),
        **kwargs,
    )
