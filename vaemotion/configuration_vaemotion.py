# Copyright 2026 The VAEmotion Authors. Licensed under the Apache License, Version 2.0.
"""VAEmotion configuration.

Flat module with relative imports only: it is copied into hub checkpoints as remote code.
"""

from huggingface_hub.dataclasses import strict
from transformers import AutoConfig, PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec


# The 8 emotion categories of ArtEmis (Achlioptas et al., 2021), positive first.
ARTEMIS_EMOTIONS = ["amusement", "awe", "contentment", "excitement", "anger", "disgust", "fear", "sadness"]


def num_encoder_frames(num_mel_frames):
    """Frames the Whisper encoder's stride-2 convolution makes of ``num_mel_frames`` mel frames (an int or a tensor):
    ``(L - 1) // 2 + 1``, 50 per second."""
    return (num_mel_frames - 1) // 2 + 1


def num_audio_tokens(num_mel_frames: int, pool_stride: int) -> int:
    """Number of ``<|audio_pad|>`` tokens one audio window of ``num_mel_frames`` valid mel frames becomes.

    The Whisper encoder halves the frame rate with a stride-2 convolution (``(L - 1) // 2 + 1`` frames, 50 per
    second); the projector then average-pools with ``pool_stride`` (25 tokens per second at stride 2). This one
    function is used by both the processor (to write placeholders) and the model (to cut encoder outputs), so the
    two can never disagree.
    """
    if num_mel_frames <= 0:
        raise ValueError(f"an audio window needs at least one mel frame, got {num_mel_frames}")
    return max(num_encoder_frames(num_mel_frames) // pool_stride, 1)


@strict
class VAEmotionConfig(PreTrainedConfig):
    r"""Configuration of [`VAEmotionForConditionalGeneration`]: a vision-language model (`vlm_config`), an audio
    encoder (`audio_config`) with a projector into the LLM, and the EmoAdapter (Emotion Enhancer + Emotion
    Supervisor).

    Args:
        vlm_config (`dict` or `PreTrainedConfig`, *optional*):
            Config of an image-text-to-text model loadable with `AutoModelForImageTextToText`, of a family with a
            backbone adapter (`vaemotion/backbones.py`: Qwen2.5-VL, Qwen2-VL, LLaVA; default Qwen2.5-VL).
        audio_config (`dict` or `PreTrainedConfig`, *optional*):
            Config of the audio encoder (default Whisper; only its encoder is used).
        audio_token_id / audio_bos_token_id / audio_eos_token_id (`int`):
            Ids of `<|audio_pad|>` (the placeholder audio features are scattered into), `<|audio_bos|>`, `<|audio_eos|>`.
        generation_prompt_ids (`list[int]`, *optional*):
            Ids of the tokens the chat template appends to open the assistant's turn (`add_generation_prompt`;
            `<|im_start|>assistant\n` for Qwen). The Emotion Supervisor reads the LLM state at the last of them, the
            last prompt token, however `labels` are given. Set from the chat template by `from_vlm_and_audio_pretrained`
            (`VAEmotionProcessor.generation_prompt_ids` gives the same list); without it, the token before the
            first supervised label or the last attended token.
        audio_pool_stride (`int`, defaults to 2):
            Temporal average pooling after the encoder: 50 Whisper frames per second become 25 tokens per second.
        projector_hidden_size (`int`, *optional*):
            Width of the projector's 2-layer MLP; defaults to the LLM width.
        enhancer_bottleneck_size (`int`, defaults to 64):
            Width `z` of the Emotion Enhancer's residual bottleneck (the features the Supervisor reads).
        enhancer_activation (`str`, defaults to `"gelu"`): activation inside the bottleneck.
        enhancer_clip_context (`bool`, defaults to `True`):
            Whether the Enhancer also adds, to every modality token, a residual from the clip's bottleneck pooled
            over all its modality tokens (the features the auxiliary heads read): the cross-modal part of the
            adapter, through which what the sound says reaches the picture's tokens and back (pooled per sample: a
            sample with several videos pools them all). `False`: position-wise only. A checkpoint saved before this
            option loads with it on and `W_ctx` at zero (the same outputs; transformers reports it as newly
            initialised, and further training trains it).
        use_emotion_enhancer / use_emotion_supervisor (`bool`): ablation switches of the EmoAdapter.
        supervisor_hidden_size (`int`, defaults to 256): hidden width of the Supervisor heads on the LLM state.
        emotion_labels (`list[str]`, *optional*): emotion categories; defaults to the 8 ArtEmis categories.
        lm_loss_weight / emotion_loss_weight / aux_emotion_loss_weight (`float`):
            `loss = lm_loss_weight * CE(labels) + emotion_loss_weight * (va_loss + category_loss)
            + aux_emotion_loss_weight * (emotion loss of the heads on each path's pooled bottleneck)`.
        va_loss_weight / category_loss_weight (`float`): weights of the two parts of the emotion loss.
        freeze_audio_encoder (`bool`, defaults to `True`): whether Stage 1 keeps the audio encoder frozen.
        fast_vision_tower (`bool`, defaults to `False`):
            Qwen2.5-VL vision towers only: attend all windows of one length in one SDPA call and run the patch
            embedding as one matmul (same weights, same outputs; much faster on GPU for batches of videos, see
            benchmarks/RESULTS.md). Opt-in, because it swaps the class of the VLM's own modules; modules whose
            internals differ in the installed transformers keep the stock code.

    Example:

    ```python
    >>> from transformers import Qwen2_5_VLConfig, WhisperConfig
    >>> from vaemotion import VAEmotionConfig

    >>> config = VAEmotionConfig(
    ...     vlm_config=Qwen2_5_VLConfig(text_config={"hidden_size": 64, "num_hidden_layers": 2}).to_dict(),
    ...     audio_config=WhisperConfig(d_model=32, encoder_layers=1, num_mel_bins=16).to_dict(),
    ... )
    >>> config.get_text_config().hidden_size
    64
    >>> config.emotion_labels[:3]
    ['amusement', 'awe', 'contentment']
    ```
    """

    model_type = "vaemotion"
    sub_configs_defaults = {
        "vlm_config": SubConfigSpec(config_class=AutoConfig, model_type="qwen2_5_vl"),
        "audio_config": SubConfigSpec(config_class=AutoConfig, model_type="whisper"),
    }

    vlm_config: dict | PreTrainedConfig | None = None
    audio_config: dict | PreTrainedConfig | None = None
    audio_token_id: int = 151665
    audio_bos_token_id: int = 151666
    audio_eos_token_id: int = 151667
    generation_prompt_ids: list[int] | None = None
    audio_pool_stride: int = 2
    projector_hidden_size: int | None = None
    enhancer_bottleneck_size: int = 64
    enhancer_activation: str = "gelu"
    enhancer_clip_context: bool = True
    use_emotion_enhancer: bool = True
    use_emotion_supervisor: bool = True
    supervisor_hidden_size: int = 256
    emotion_labels: list[str] | None = None
    lm_loss_weight: float = 1.0
    emotion_loss_weight: float = 1.0
    aux_emotion_loss_weight: float = 0.5
    va_loss_weight: float = 1.0
    category_loss_weight: float = 1.0
    freeze_audio_encoder: bool = True
    fast_vision_tower: bool = False
    initializer_range: float = 0.02
    tie_word_embeddings: bool = False

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        if self.emotion_labels is None:
            self.emotion_labels = list(ARTEMIS_EMOTIONS)
        if len(set(self.emotion_labels)) != len(self.emotion_labels) or len(self.emotion_labels) < 2:
            raise ValueError(f"emotion_labels must be at least 2 distinct names, got {self.emotion_labels}")
        if self.audio_pool_stride < 1:
            raise ValueError(f"audio_pool_stride must be >= 1, got {self.audio_pool_stride}")
        if self.generation_prompt_ids is not None and any(i < 0 for i in self.generation_prompt_ids):
            raise ValueError(f"generation_prompt_ids must be token ids (>= 0), got {self.generation_prompt_ids}")
        if self.enhancer_bottleneck_size < 1:
            raise ValueError(f"enhancer_bottleneck_size must be >= 1, got {self.enhancer_bottleneck_size}")

    @property
    def num_emotions(self) -> int:
        return len(self.emotion_labels)

    @property
    def id2emotion(self) -> dict[int, str]:
        return dict(enumerate(self.emotion_labels))

    @property
    def emotion2id(self) -> dict[str, int]:
        return {label: index for index, label in enumerate(self.emotion_labels)}

    def get_text_config(self, decoder=None, encoder=None) -> PreTrainedConfig:
        # The LLM's config sits two levels down (vlm_config.text_config); generation and cache code look here.
        return self.vlm_config.get_text_config(decoder=decoder, encoder=encoder)


__all__ = ["VAEmotionConfig", "ARTEMIS_EMOTIONS", "num_audio_tokens", "num_encoder_frames"]
