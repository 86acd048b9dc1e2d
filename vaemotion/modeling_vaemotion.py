# Copyright 2026 The VAEmotion Authors. Licensed under the Apache License, Version 2.0.
"""VAEmotion: a vision-language model with a new audio pathway and an emotion adapter.

Flat module with relative imports only: it is copied into hub checkpoints as remote code.

The model is a composition, not a fork: ``vlm`` is an image-text-to-text model of a family with a backbone adapter
(``backbones.py``: Qwen2.5-VL, Qwen2-VL, LLaVA), ``audio_tower`` is a Whisper encoder, ``audio_projector`` maps pooled
audio frames to the LLM width, and the EmoAdapter adds a shared residual ``emotion_enhancer`` on every modality
token plus ``emotion_supervisor`` heads for valence, arousal and emotion categories. Every modality's features are
scattered into its placeholder tokens here, so the enhancer sees audio and visual tokens alike and the VLM only ever
receives ``inputs_embeds`` (plus the ids and grids its position code needs).
"""

import hashlib
import inspect
from dataclasses import dataclass
from functools import cached_property

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoModel, AutoModelForImageTextToText, GenerationMixin, PreTrainedModel
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.cache_utils import Cache
from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import (
    Qwen2_5_VisionPatchEmbed,
    Qwen2_5_VLVisionAttention,
    apply_rotary_pos_emb_vision,
)
from transformers.models.whisper.modeling_whisper import WhisperEncoder
from transformers.utils import can_return_tuple, logging

from .backbones import (
    AUDIO_TOKEN_TYPE,
    VLMBackbone,
    audio_token_ids,
    backbone_for,
    chat_template_of,
    generation_prompt_ids,
    load_vlm_tokenizer,
)
from .configuration_vaemotion import VAEmotionConfig, num_audio_tokens
from .transformers_compat import CACHE_NAME, CausalLMOutputBase, cache_argument, slice_logits_to_keep


logger = logging.get_logger(__name__)

# Which stage trains which top-level modules (DESIGN.md sections 3 and 4).
STAGE_TRAINABLE_MODULES = {
    "vg_align": ("audio_projector", "audio_delimiters"),
    "emo_adapter": ("emotion_enhancer", "emotion_supervisor"),
}


@dataclass
class VAEmotionOutput(CausalLMOutputBase):
    r"""
    Output of [`VAEmotionForConditionalGeneration`]: the language-model outputs plus the EmoAdapter's predictions and
    every loss part (each `None` when its inputs were not given).

    Args:
        valence / arousal (`torch.FloatTensor` of shape `(batch_size,)`):
            Supervisor predictions in [-1, 1] from the LLM hidden state at the last prompt token.
        emotion_logits (`torch.FloatTensor` of shape `(batch_size, num_emotions)`):
            Supervisor category logits from the same hidden state.
        aux_valence / aux_arousal / aux_emotion_logits:
            The same predictions from each sample's pooled Enhancer bottleneck over its modality tokens (audio, visual
            or both: the sample's path); NaN rows for samples without modality tokens.
        lm_loss, va_loss, category_loss, aux_emotion_loss (`torch.FloatTensor` scalars): the loss parts.
    """

    valence: torch.FloatTensor | None = None
    arousal: torch.FloatTensor | None = None
    emotion_logits: torch.FloatTensor | None = None
    aux_valence: torch.FloatTensor | None = None
    aux_arousal: torch.FloatTensor | None = None
    aux_emotion_logits: torch.FloatTensor | None = None
    lm_loss: torch.FloatTensor | None = None
    va_loss: torch.FloatTensor | None = None
    category_loss: torch.FloatTensor | None = None
    aux_emotion_loss: torch.FloatTensor | None = None
    last_hidden_state: torch.FloatTensor | None = None


@dataclass
class EmotionPrediction:
    """Structured emotion answer of [`VAEmotionForConditionalGeneration.predict_emotion`] for a batch."""

    valence: torch.Tensor
    arousal: torch.Tensor
    probabilities: torch.Tensor
    labels: list[str]

    def top_labels(self) -> list[str]:
        return [self.labels[i] for i in self.probabilities.argmax(-1).tolist()]

    def to_list(self) -> list[dict]:
        """One dict per sample: top label, its probability, every label's probability, valence and arousal."""
        rows = []
        for v, a, probs in zip(self.valence.tolist(), self.arousal.tolist(), self.probabilities.tolist()):
            best = max(range(len(probs)), key=probs.__getitem__)
            rows.append(
                {
                    "emotion": self.labels[best],
                    "score": probs[best],
                    "scores": dict(zip(self.labels, probs)),
                    "valence": v,
                    "arousal": a,
                }
            )
        return rows


class VAEmotionAudioProjector(nn.Module):
    """Temporal average pooling (``audio_pool_stride``) then a 2-layer MLP from the audio width to the LLM width."""

    def __init__(self, config: VAEmotionConfig):
        super().__init__()
        audio_width = config.audio_config.d_model
        text_width = config.get_text_config().hidden_size
        hidden = config.projector_hidden_size or text_width
        self.pool_stride = config.audio_pool_stride
        self.linear_1 = nn.Linear(audio_width, hidden)
        self.act = nn.GELU()
        self.linear_2 = nn.Linear(hidden, text_width)

    def forward(self, encoder_states: torch.Tensor) -> torch.Tensor:
        # (windows, frames, width) -> (windows, frames // stride, width); the tail shorter than a stride is dropped.
        pooled = F.avg_pool1d(encoder_states.transpose(1, 2), self.pool_stride, self.pool_stride).transpose(1, 2)
        return self.linear_2(self.act(self.linear_1(pooled)))


class VAEmotionAudioDelimiters(nn.Module):
    """The embeddings of `<|audio_bos|>` and `<|audio_eos|>`, kept apart from the VLM's (frozen) embedding matrix so
    Stage 1 can train these two rows alone. They start from the VLM's own vision delimiters (or the mean of its
    trained rows) in [`~VAEmotionForConditionalGeneration.from_vlm_and_audio_pretrained`]."""

    def __init__(self, config: VAEmotionConfig):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(2, config.get_text_config().hidden_size))

    def forward(self, input_ids: torch.Tensor, inputs_embeds: torch.Tensor, bos_id: int, eos_id: int) -> torch.Tensor:
        weight = self.weight.to(inputs_embeds.device, inputs_embeds.dtype)  # device_map may place it elsewhere
        input_ids = input_ids.to(inputs_embeds.device)
        for row, token_id in enumerate((bos_id, eos_id)):  # no host sync: a select on every position
            inputs_embeds = torch.where((input_ids == token_id)[..., None], weight[row], inputs_embeds)
        return inputs_embeds


class FrozenAudioStateMemo:
    """Encoder states of a frozen, deterministic audio tower, kept per distinct audio window.

    Such a tower gives the same states for the same window at every epoch, so Stage 1 with a pretrained encoder can
    encode each clip once instead of at every step (the memo is keyed by the window's exact feature bytes, shape and
    dtype, so any change of input is a miss, never a stale hit). It lives in host memory for the run; it is not
    saved with the model.
    """

    def __init__(self):
        self._states: dict[bytes, torch.Tensor] = {}
        self.misses = 0

    def __len__(self) -> int:
        return len(self._states)

    @staticmethod
    def _key(window: torch.Tensor) -> bytes:
        window = window.detach().contiguous()
        digest = hashlib.blake2b(window.cpu().numpy().tobytes(), digest_size=16)
        digest.update(repr((tuple(window.shape), str(window.dtype))).encode())
        return digest.digest()

    def __call__(self, input_features: torch.Tensor, encode) -> torch.Tensor:
        keys = [self._key(window) for window in input_features]
        first = {key: index for index, key in reversed(list(enumerate(keys)))}  # a repeated window is encoded once
        missing = sorted(index for key, index in first.items() if key not in self._states)
        if missing:
            encoded = encode(input_features[missing]).detach()
            for index, states in zip(missing, encoded):
                self._states[keys[index]] = states.clone()
            self.misses += len(missing)
        return torch.stack([self._states[key] for key in keys]).to(input_features.device)


class ZeroInitLinear(nn.Linear):
    """A linear layer that starts at zero, so the residual branch it ends starts as the identity."""


class VAEmotionEmotionEnhancer(nn.Module):
    """EmoAdapter part 1: a shared residual bottleneck on every modality token, position-wise and cross-modal.

    ``z_i = W_down(LN(h_i))``; ``h_i' = h_i + W_up(act(z_i)) + W_ctx(act(c))``, where ``c`` is the mean of ``z`` over
    all modality tokens of the clip (sound and picture together; the features the Supervisor's auxiliary heads
    read). ``W_up`` and ``W_ctx`` start at zero, so an untrained Enhancer is the identity. The clip term carries what
    one modality says to the other's tokens (a still picture's tokens get the sound's arousal), so the LLM need not
    learn that fusion from its attention alone; ``config.enhancer_clip_context=False`` leaves it out.
    """

    def __init__(self, config: VAEmotionConfig):
        super().__init__()
        width = config.get_text_config().hidden_size
        self.norm = nn.LayerNorm(width)
        self.down = nn.Linear(width, config.enhancer_bottleneck_size)
        self.act = ACT2FN[config.enhancer_activation]
        self.up = ZeroInitLinear(config.enhancer_bottleneck_size, width)
        self.context_up = None
        if config.enhancer_clip_context:
            # built without drawing from the global RNG, so a seed initialises every other module as it did before
            # this option existed (nn.Linear draws its start even though _init_weights zeroes it)
            with torch.random.fork_rng(devices=[]):
                self.context_up = ZeroInitLinear(config.enhancer_bottleneck_size, width)

    def bottleneck(self, hidden: torch.Tensor) -> torch.Tensor:
        """``z`` of each token (rows of ``hidden``)."""
        return self.down(self.norm(hidden))

    def forward(self, hidden: torch.Tensor, bottleneck: torch.Tensor, clip_context: torch.Tensor) -> torch.Tensor:
        """``hidden`` with its residuals; ``bottleneck`` is its ``z`` and ``clip_context`` each row's clip mean of ``z``."""
        residual = self.up(self.act(bottleneck))
        if self.context_up is not None:
            residual = residual + self.context_up(self.act(clip_context))
        return hidden + residual


class VAEmotionEmotionHead(nn.Module):
    """Valence and arousal in [-1, 1] (tanh) and emotion-category logits from one feature vector."""

    def __init__(self, in_features: int, hidden: int, num_emotions: int):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(in_features, hidden), nn.GELU())
        self.valence_arousal = nn.Linear(hidden, 2)
        self.category = nn.Linear(hidden, num_emotions)

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = self.mlp(features)
        return torch.tanh(self.valence_arousal(hidden)), self.category(hidden)


class VAEmotionEmotionSupervisor(nn.Module):
    """EmoAdapter part 2: emotion heads on the LLM state (used at inference) and on the Enhancer bottleneck (auxiliary)."""

    def __init__(self, config: VAEmotionConfig):
        super().__init__()
        width = config.get_text_config().hidden_size
        self.llm_head = VAEmotionEmotionHead(width, config.supervisor_hidden_size, config.num_emotions)
        self.bottleneck_head = VAEmotionEmotionHead(
            config.enhancer_bottleneck_size, config.supervisor_hidden_size, config.num_emotions
        )


class VAEmotionWindowedVisionAttention(Qwen2_5_VLVisionAttention):
    """Qwen2.5-VL's vision attention with all windows of one length attended in one batched SDPA call.

    The stock SDPA path runs one attention call per window (hundreds per layer for a batch of videos), so the vision
    tower is bound by Python and kernel launches. Windows are independent, so grouping those of equal length gives
    the same result with one call per distinct length. Same parameters, same outputs; other attention
    implementations (eager, flash varlen) keep the stock code.
    """

    def forward(self, hidden_states, cu_seqlens, position_embeddings=None, max_seqlen=None, **kwargs):
        if self.config._attn_implementation != "sdpa":
            return super().forward(hidden_states, cu_seqlens, position_embeddings, max_seqlen, **kwargs)
        seq_length = hidden_states.shape[0]
        query, key, value = self.qkv(hidden_states).reshape(seq_length, 3, self.num_heads, -1).unbind(1)
        query, key = apply_rotary_pos_emb_vision(query, key, *position_embeddings)
        output = torch.empty_like(query)
        for length, index in window_groups(cu_seqlens):

            def windows(states, length=length, index=index):  # (tokens, heads, dim) -> (windows, heads, length, dim)
                return states[index].view(-1, length, self.num_heads, self.head_dim).transpose(1, 2)

            attended = F.scaled_dot_product_attention(windows(query), windows(key), windows(value), scale=self.scaling)
            output[index] = attended.transpose(1, 2).reshape(-1, self.num_heads, self.head_dim)
        return self.proj(output.reshape(seq_length, -1))


def window_groups(cu_seqlens: torch.Tensor) -> tuple[tuple[int, torch.Tensor], ...]:
    """``(length, token index of every window of that length, in order)`` for each distinct window length.

    Finding the lengths reads them back from the device (a host sync). The vision tower hands the same
    ``cu_seqlens`` tensor to every layer of a kind (windowed or full attention), so the groups are kept on that tensor
    and computed once per forward instead of once per layer.
    """
    cached = getattr(cu_seqlens, "_vaemotion_window_groups", None)
    if cached is not None and cached[0] == cu_seqlens._version:  # the version guards against in-place edits
        return cached[1]
    groups = _compute_window_groups(cu_seqlens)
    cu_seqlens._vaemotion_window_groups = (cu_seqlens._version, groups)
    return groups


def _compute_window_groups(cu_seqlens: torch.Tensor) -> tuple[tuple[int, torch.Tensor], ...]:
    starts, lengths = cu_seqlens[:-1], cu_seqlens[1:] - cu_seqlens[:-1]
    return tuple(
        (length, (starts[lengths == length][:, None] + torch.arange(length, device=starts.device)).reshape(-1))
        for length in lengths.unique().tolist()
    )


class VAEmotionLinearPatchEmbed(Qwen2_5_VisionPatchEmbed):
    """Qwen2.5-VL's patch embedding as the matmul it is.

    Its ``Conv3d`` has ``stride == kernel_size``: every output sees one whole patch, so the convolution is a linear
    map of the flattened patch (channels, time, height, width: the order the processor flattens and the weight
    holds). cuDNN runs this degenerate convolution far slower than the GEMM on several GPU and dtype combinations
    (transformers issue 45750; transformers offers the same change as a load-time fusion). Same weight, same output.
    """

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        weight = self.proj.weight
        patches = hidden_states.reshape(-1, weight[0].numel()).to(weight.dtype)
        return F.linear(patches, weight.reshape(weight.shape[0], -1), self.proj.bias)


def use_fast_vision_tower(vlm: PreTrainedModel) -> int:
    """Give a Qwen2.5-VL vision tower the batched window attention and the matmul patch embedding, in place
    (parameters and checkpoint keys are unchanged), where the stock modules have the internals these rely on (this
    transformers release's attention takes ``cu_seqlens`` and ``position_embeddings`` and keeps ``qkv``, ``proj``,
    ``num_heads``, ``head_dim`` and ``scaling``; the patch embedding is a Conv3d with stride == kernel). Any other
    module keeps the stock code. Returns the number of modules switched.

    Opt-in (``config.fast_vision_tower``): it changes the class of another model's modules.
    """
    visual = getattr(getattr(vlm, "model", None), "visual", None)
    switched = 0
    for module in visual.modules() if visual is not None else ():
        if type(module) is Qwen2_5_VLVisionAttention and _attention_fits_batched_windows(module):
            module.__class__ = VAEmotionWindowedVisionAttention
        elif type(module) is Qwen2_5_VisionPatchEmbed and _patch_embed_is_a_matmul(module):
            module.__class__ = VAEmotionLinearPatchEmbed
        else:
            continue
        switched += 1
    return switched


def _attention_fits_batched_windows(module: nn.Module) -> bool:
    takes = inspect.signature(Qwen2_5_VLVisionAttention.forward).parameters
    keeps = ("qkv", "proj", "num_heads", "head_dim", "scaling", "config")
    return {"cu_seqlens", "position_embeddings"} <= set(takes) and all(hasattr(module, name) for name in keeps)


def _patch_embed_is_a_matmul(module: nn.Module) -> bool:
    conv = getattr(module, "proj", None)
    return isinstance(conv, nn.Conv3d) and conv.stride == conv.kernel_size and conv.padding == (0, 0, 0)


class VAEmotionPreTrainedModel(PreTrainedModel):
    config: VAEmotionConfig
    config_class = VAEmotionConfig
    base_model_prefix = ""
    main_input_name = "input_ids"
    input_modalities = ("image", "video", "audio", "text")
    supports_gradient_checkpointing = True
    _no_split_modules = ["VAEmotionEmotionEnhancer"]
    _skip_keys_device_placement = [CACHE_NAME]
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    _supports_attention_backend = True

    def _init_weights(self, module):
        if isinstance(module, ZeroInitLinear):
            init.zeros_(module.weight)
            init.zeros_(module.bias)
        elif isinstance(module, VAEmotionAudioDelimiters):
            # the delimiters' own embedding rows (the VLM's embeddings are initialised first: they come first), so a
            # model built from a config computes what a plain embedding lookup would; from_vlm_and_audio_pretrained
            # then starts them from the vision delimiters (init_audio_delimiters)
            embeddings = self.get_input_embeddings().weight
            ids = [self.config.audio_bos_token_id, self.config.audio_eos_token_id]
            if max(ids) < embeddings.shape[0]:
                init.copy_(module.weight, embeddings[ids])
            else:
                init.zeros_(module.weight)
        else:
            super()._init_weights(module)


class VAEmotionForConditionalGeneration(VAEmotionPreTrainedModel, GenerationMixin):
    r"""
    VAEmotionLLM: a vision-language model that hears (audio pathway, Stage 1 VG-Align) and understands emotion across
    sight and sound (EmoAdapter, Stage 2).

    Example (a tiny random model; real use: [`~VAEmotionForConditionalGeneration.from_vlm_and_audio_pretrained`]):

    ```python
    >>> import torch
    >>> from vaemotion import VAEmotionForConditionalGeneration
    >>> from vaemotion.tiny import build_tiny_tokenizer, tiny_vaemotion_config

    >>> tokenizer = build_tiny_tokenizer()
    >>> model = VAEmotionForConditionalGeneration(tiny_vaemotion_config(tokenizer)).eval()
    >>> n_audio = model.num_audio_tokens(torch.tensor([200]))[0].item()  # 2 s of audio: 25 tokens at stride 2
    >>> text = "<|im_start|>user <|audio_bos|>" + "<|audio_pad|>" * n_audio + "<|audio_eos|> describe the mood"
    >>> inputs = tokenizer(text, return_tensors="pt")
    >>> features = torch.randn(1, 16, 3000)  # one 30 s Whisper window of log-mels, 2 s of it valid
    >>> feature_mask = torch.zeros(1, 3000, dtype=torch.long)
    >>> feature_mask[:, :200] = 1
    >>> out = model(**inputs, input_features=features, feature_attention_mask=feature_mask)
    >>> out.logits.shape[-1] == len(tokenizer), out.valence.shape, out.emotion_logits.shape
    (True, torch.Size([1]), torch.Size([1, 8]))
    ```
    """

    accepts_loss_kwargs = False  # the LM and emotion losses are per-micro-batch means; the Trainer scales them

    def __init__(self, config: VAEmotionConfig, vlm: PreTrainedModel | None = None, audio_tower=None):
        super().__init__(config)
        backbone_for(config.vlm_config.model_type)  # a family without an adapter is refused here, not at the forward
        self.vlm = vlm if vlm is not None else AutoModelForImageTextToText.from_config(config.vlm_config)
        self.audio_tower = audio_tower if audio_tower is not None else WhisperEncoder._from_config(config.audio_config)
        # One config object per part, so edits through either path (e.g. resizing the vocabulary) stay in sync.
        self.vlm.config = config.vlm_config
        self.audio_tower.config = config.audio_config
        self.audio_projector = VAEmotionAudioProjector(config)
        self.audio_delimiters = VAEmotionAudioDelimiters(config)
        self.emotion_enhancer = VAEmotionEmotionEnhancer(config) if config.use_emotion_enhancer else None
        self.emotion_supervisor = VAEmotionEmotionSupervisor(config) if config.use_emotion_supervisor else None
        self.audio_state_memo: FrozenAudioStateMemo | None = None
        if config.fast_vision_tower:
            use_fast_vision_tower(self.vlm)
        self.post_init()

    def initialize_weights(self):
        super().initialize_weights()
        # For custom-code models transformers treats a module without direct parameters as initialised and never calls
        # `_init_weights` on it (`PreTrainedModel._initialize_weights`), which skips module-level inits of our parts:
        # WhisperEncoder's sinusoidal `embed_positions` then kept a random normal table whenever it was not loaded
        # (e.g. `from_pretrained` of a checkpoint lacking it). Weights that were loaded are flagged and left alone.
        if isinstance(self.audio_tower, WhisperEncoder):
            self.audio_tower._init_weights(self.audio_tower)

    # ------------------------------------------------------------------------------------------------ construction
    @classmethod
    def from_vlm_and_audio_pretrained(
        cls,
        vlm_pretrained_model_name_or_path: str,
        audio_pretrained_model_name_or_path: str,
        *,
        attn_implementation: str | None = "sdpa",
        dtype: torch.dtype | str | None = None,
        tokenizer=None,
        **config_kwargs,
    ) -> "VAEmotionForConditionalGeneration":
        r"""
        Build a VAEmotion model from a separately pretrained VLM and audio encoder (as
        `VisionEncoderDecoderModel.from_encoder_decoder_pretrained` does). Their weights are kept as loaded; the
        projector and the EmoAdapter are new. The audio special token ids come from ``tokenizer`` when given (a
        tokenizer with `<|audio_pad|>`, `<|audio_bos|>`, `<|audio_eos|>`, e.g. ``VAEmotionProcessor.tokenizer``), else
        from the VLM checkpoint's own tokenizer with the audio tokens added exactly as
        [`VAEmotionProcessor.from_vlm_and_audio_pretrained`] adds them, so the two calls with the same paths agree.
        The ids take spare embedding rows when the matrix has them; it grows only when it has none. The audio
        delimiters start from the VLM's vision delimiters ([`~VAEmotionForConditionalGeneration.init_audio_delimiters`]).

        Example (tiny checkpoints saved on the spot):

        ```python
        >>> import tempfile
        >>> from transformers import AutoModelForImageTextToText, WhisperModel
        >>> from vaemotion import VAEmotionForConditionalGeneration
        >>> from vaemotion.tiny import build_tiny_tokenizer, tiny_qwen2_5_vl_config, tiny_whisper_config

        >>> tokenizer = build_tiny_tokenizer()
        >>> vlm_dir, audio_dir = tempfile.mkdtemp(), tempfile.mkdtemp()
        >>> AutoModelForImageTextToText.from_config(tiny_qwen2_5_vl_config(tokenizer)).save_pretrained(vlm_dir)
        >>> WhisperModel(tiny_whisper_config()).save_pretrained(audio_dir)
        >>> model = VAEmotionForConditionalGeneration.from_vlm_and_audio_pretrained(vlm_dir, audio_dir, tokenizer=tokenizer)
        >>> model.config.audio_token_id == tokenizer.audio_token_id
        True
        ```
        """
        load_kwargs = {"attn_implementation": attn_implementation}
        if dtype is not None:
            load_kwargs["dtype"] = dtype
        vlm = AutoModelForImageTextToText.from_pretrained(vlm_pretrained_model_name_or_path, **load_kwargs)
        audio_model = AutoModel.from_pretrained(audio_pretrained_model_name_or_path, **load_kwargs)
        audio_tower = audio_model.get_encoder() if audio_model.config.is_encoder_decoder else audio_model

        if tokenizer is None:
            tokenizer = _checkpoint_tokenizer(vlm_pretrained_model_name_or_path, vlm.config)
        if tokenizer is not None:
            token_ids = audio_token_ids(tokenizer)
            config_kwargs.setdefault(
                "generation_prompt_ids",
                generation_prompt_ids(tokenizer, _checkpoint_chat_template(vlm_pretrained_model_name_or_path, tokenizer)),
            )
        else:  # a VLM saved without its tokenizer: the ids after its embedding matrix (say so: a processor differs)
            vocab_size = vlm.config.get_text_config().vocab_size
            token_ids = {f"{name}_id": vocab_size + offset for offset, name in enumerate(("audio_token", "audio_bos_token", "audio_eos_token"))}
            logger.warning(
                f"{vlm_pretrained_model_name_or_path} has no tokenizer: the audio tokens get ids {sorted(token_ids.values())}; "
                "pass tokenizer=processor.tokenizer so model and processor agree"
            )
        config = cls.config_class(
            vlm_config=vlm.config, audio_config=audio_tower.config, **token_ids, **config_kwargs
        )
        model = cls(config, vlm=vlm, audio_tower=audio_tower)
        # Spare embedding rows (Qwen2.5-VL has 151,936 rows for 151,665 tokens) take the new ids: grow only past them.
        needed_vocab = max(token_ids.values()) + 1
        if needed_vocab > config.get_text_config().vocab_size:
            model.resize_token_embeddings(needed_vocab)
        model.init_audio_delimiters()
        # Building a config from loaded parts resets their attention implementation (hf-stack.md 1.6/1): restore it.
        if attn_implementation is not None:
            model.set_attn_implementation(attn_implementation)
        if vlm.generation_config is not None:
            model.generation_config = vlm.generation_config
        if dtype is not None:
            model.to(dtype)  # the new heads are created in float32
        return model

    @torch.no_grad()
    def init_audio_delimiters(self):
        """Start `<|audio_bos|>` / `<|audio_eos|>` from the VLM's vision delimiters (Qwen's `<|vision_start|>` /
        `<|vision_end|>`), or, for a family without any, from the mean of the rows below the audio tokens (the
        tokenizer's own, trained tokens). The VLM's embedding matrix is left as loaded: with `input_ids`, the forward
        reads these two rows from `audio_delimiters`."""
        embeddings = self.get_input_embeddings().weight
        delimiter_ids = self.backbone.vision_delimiter_ids(self.config.vlm_config)
        if delimiter_ids is not None:
            start = embeddings[list(delimiter_ids)].float()
        else:
            trained_rows = min(self.config.audio_token_id, self.config.audio_bos_token_id, self.config.audio_eos_token_id)
            start = embeddings[:trained_rows].float().mean(0, keepdim=True).expand(2, -1)
        self.audio_delimiters.weight.copy_(start.to(self.audio_delimiters.weight))

    # ------------------------------------------------------------------------------------------------ delegation
    def get_input_embeddings(self):
        return self.vlm.get_input_embeddings()

    def set_input_embeddings(self, value):
        self.vlm.set_input_embeddings(value)

    def get_output_embeddings(self):
        return self.vlm.get_output_embeddings()

    def set_output_embeddings(self, value):
        self.vlm.set_output_embeddings(value)

    def get_audio_tower(self):
        return self.audio_tower

    @property
    def language_backbone(self) -> PreTrainedModel:
        """The VLM without its LM head (e.g. `Qwen2_5_VLModel`, `LlavaModel`)."""
        return self.vlm.base_model

    @cached_property
    def _backbone_forward_parameters(self) -> frozenset[str]:
        return frozenset(inspect.signature(self.language_backbone.forward).parameters)

    @property
    def backbone(self) -> VLMBackbone:
        """What differs in this VLM family (vaemotion/backbones.py)."""
        return backbone_for(self.config.vlm_config.model_type)

    @property
    def _uses_mrope(self) -> bool:
        return self.backbone.uses_mrope

    # ------------------------------------------------------------------------------------------------ training setup
    def set_trainable(
        self,
        stage: str,
        *,
        train_projector: bool | None = None,
        train_audio_encoder: bool | None = None,
        train_audio_delimiters: bool = True,
    ):
        """Freeze everything but the trainable set of ``stage`` (``"vg_align"`` or ``"emo_adapter"``).

        Stage 1 trains the audio projector and the audio delimiters' two embeddings (unless
        ``train_audio_delimiters=False``), and the audio encoder when ``config.freeze_audio_encoder`` is False or
        ``train_audio_encoder=True``; Stage 2 trains the Emotion Enhancer and Supervisor (plus the projector with
        ``train_projector=True``). LoRA adapters on the LLM, when attached with peft, keep their own flags.
        Returns ``{"trainable": n, "total": n, "modules": [...]}``.
        """
        if stage not in STAGE_TRAINABLE_MODULES:
            raise ValueError(f"stage must be one of {sorted(STAGE_TRAINABLE_MODULES)}, got {stage!r}")
        modules = list(STAGE_TRAINABLE_MODULES[stage])
        if not train_audio_delimiters and "audio_delimiters" in modules:
            modules.remove("audio_delimiters")
        if train_audio_encoder is None:
            train_audio_encoder = stage == "vg_align" and not self.config.freeze_audio_encoder
        if train_audio_encoder:
            modules.append("audio_tower")
        if train_projector and "audio_projector" not in modules:
            modules.append("audio_projector")
        modules = [name for name in modules if getattr(self, name) is not None]
        for name, parameter in self.named_parameters():
            if "lora_" in name:
                continue
            parameter.requires_grad_(name.split(".", 1)[0] in modules)
        return {**self.count_parameters(), "modules": modules}

    def count_parameters(self) -> dict[str, int]:
        """Trainable and total parameter counts (shared tensors counted once)."""
        seen, trainable, total = set(), 0, 0
        for parameter in self.parameters():
            if id(parameter) in seen:
                continue
            seen.add(id(parameter))
            total += parameter.numel()
            trainable += parameter.numel() if parameter.requires_grad else 0
        return {"trainable": trainable, "total": total}

    # ------------------------------------------------------------------------------------------------ modality features
    def num_audio_tokens(self, feature_lengths: torch.Tensor) -> torch.Tensor:
        """Placeholder tokens per audio window, from its count of valid mel frames (shared with the processor)."""
        return torch.tensor(
            [num_audio_tokens(int(length), self.config.audio_pool_stride) for length in feature_lengths.tolist()],
            dtype=torch.long,
            device=feature_lengths.device,
        )

    def get_audio_features(
        self, input_features: torch.FloatTensor, feature_attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Encode audio windows and project them to the LLM width.

        Args:
            input_features: `(num_windows, num_mel_bins, window_frames)` log-mel windows (Whisper needs the full
                window, padded).
            feature_attention_mask: `(num_windows, window_frames)`, 1 on valid frames. Without it every frame counts.

        Returns:
            `(total_audio_tokens, hidden_size)`: each window's valid tokens, windows concatenated in order, ready to
            be scattered into the `<|audio_pad|>` positions.
        """
        if input_features.dim() != 3:
            raise ValueError(
                f"input_features must be (num_windows, num_mel_bins, frames), got shape {tuple(input_features.shape)}"
            )
        mel_bins = self.config.audio_config.num_mel_bins
        if input_features.shape[1] != mel_bins:
            raise ValueError(
                f"input_features has {input_features.shape[1]} mel bins but the audio encoder takes {mel_bins}: "
                f"compute them with its own feature extractor (e.g. WhisperFeatureExtractor(feature_size={mel_bins})), "
                "as VAEmotionProcessor does"
            )
        if feature_attention_mask is not None and feature_attention_mask.shape != (
            input_features.shape[0], input_features.shape[-1]
        ):
            raise ValueError(
                f"feature_attention_mask must be (num_windows, frames) = {tuple(input_features.shape[::2])}, got "
                f"{tuple(feature_attention_mask.shape)}"
            )
        if feature_attention_mask is None:
            lengths = torch.full((input_features.shape[0],), input_features.shape[-1], device=input_features.device)
        else:
            lengths = feature_attention_mask.sum(-1)
        tower_trains = any(p.requires_grad for p in self.audio_tower.parameters())
        with torch.set_grad_enabled(torch.is_grad_enabled() and tower_trains):  # a frozen encoder keeps no graph
            states = self._encode_audio(input_features.to(self.audio_tower.device, self.audio_tower.dtype))
        projected = self.audio_projector(states)
        keep = self.num_audio_tokens(lengths).clamp(max=projected.shape[1])
        positions = torch.arange(projected.shape[1], device=projected.device)
        return projected[positions[None, :] < keep[:, None]]

    def memoize_frozen_audio_states(self, enabled: bool = True) -> None:
        """Keep the audio tower's states per distinct window while the tower is frozen and deterministic (no
        trainable parameter, and in eval mode or without dropout), and reuse them instead of re-encoding; see
        [`FrozenAudioStateMemo`]. Training with a pretrained, frozen encoder then encodes each clip once. While the
        tower trains, or dropout is active in it, the memo is bypassed."""
        self.audio_state_memo = FrozenAudioStateMemo() if enabled else None

    def _audio_states_are_fixed(self) -> bool:
        tower = self.audio_tower
        if any(parameter.requires_grad for parameter in tower.parameters()):
            return False
        rates = ("dropout", "attention_dropout", "activation_dropout", "encoder_layerdrop")
        return not tower.training or not any(getattr(tower.config, name, 0.0) for name in rates)

    def _encode_audio(self, input_features: torch.Tensor) -> torch.Tensor:
        if self.audio_state_memo is not None and self._audio_states_are_fixed():
            return self.audio_state_memo(input_features, self._run_audio_tower)
        return self._run_audio_tower(input_features)

    def _run_audio_tower(self, input_features: torch.Tensor) -> torch.Tensor:
        tower = self.audio_tower
        if isinstance(tower, WhisperEncoder) and input_features.shape[-1] < _whisper_window_frames(tower):
            return whisper_encode_prefix(tower, input_features)
        return tower(input_features).last_hidden_state

    def get_image_features(self, pixel_values: torch.FloatTensor, image_grid_thw=None, **kwargs) -> torch.Tensor:
        """Visual tokens of the VLM's own image pathway, flattened to `(total_image_tokens, hidden_size)`."""
        if self._uses_mrope:
            _check_patch_grid("pixel_values", pixel_values, "image_grid_thw", image_grid_thw)
            kwargs["image_grid_thw"] = image_grid_thw
        out = self.language_backbone.get_image_features(pixel_values=pixel_values, return_dict=True, **kwargs)
        return _flatten_features(out.pooler_output)

    def get_video_features(self, pixel_values_videos: torch.FloatTensor, video_grid_thw=None, **kwargs) -> torch.Tensor:
        """Visual tokens of the VLM's video pathway, flattened to `(total_video_tokens, hidden_size)`."""
        if not hasattr(self.language_backbone, "get_video_features"):
            raise ValueError(f"the {self.config.vlm_config.model_type} backbone takes no videos; pass frames as images")
        if self._uses_mrope:
            _check_patch_grid("pixel_values_videos", pixel_values_videos, "video_grid_thw", video_grid_thw)
        out = self.language_backbone.get_video_features(
            pixel_values_videos=pixel_values_videos, video_grid_thw=video_grid_thw, return_dict=True, **kwargs
        )
        return _flatten_features(out.pooler_output)

    # ------------------------------------------------------------------------------------------------ forward
    @can_return_tuple  # honours `return_dict=False` (argument or config) as transformers models do
    @cache_argument  # past_key_values too: else it reached the VLM beside cache=None
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        pixel_values: torch.FloatTensor | None = None,
        pixel_values_videos: torch.FloatTensor | None = None,
        image_grid_thw: torch.LongTensor | None = None,
        video_grid_thw: torch.LongTensor | None = None,
        second_per_grid_ts: torch.Tensor | None = None,
        mm_token_type_ids: torch.IntTensor | None = None,
        input_features: torch.FloatTensor | None = None,
        feature_attention_mask: torch.Tensor | None = None,
        emotion_labels: torch.LongTensor | None = None,
        valence: torch.FloatTensor | None = None,
        arousal: torch.FloatTensor | None = None,
        emotion_positions: torch.LongTensor | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        **kwargs,
    ) -> VAEmotionOutput:
        r"""
        Any combination of text, audio (`input_features`, `feature_attention_mask`), images (`pixel_values`,
        `image_grid_thw`) and video frames (`pixel_values_videos`, `video_grid_thw`, `second_per_grid_ts`).

        labels (`torch.LongTensor` of shape `(batch_size, sequence_length)`, *optional*):
            Next-token targets (-100 ignored) for the LM loss.
        emotion_labels (`torch.LongTensor` of shape `(batch_size,)`, *optional*):
            Emotion category indices into `config.emotion_labels` (-100 ignored).
        valence / arousal (`torch.FloatTensor` of shape `(batch_size,)`, *optional*):
            Targets in [-1, 1] (NaN ignored).
        emotion_positions (`torch.LongTensor` of shape `(batch_size,)`, *optional*):
            Index of the token whose LLM state the Supervisor reads. Default: the last prompt token, found from the
            chat structure (the end of the last `config.generation_prompt_ids` in `input_ids`) however `labels` are
            given; without one, the token before the first supervised label, or the last attended token.
        logits_to_keep (`int` or `torch.Tensor`):
            Compute logits only for the last `logits_to_keep` positions (0: all), or for the given positions.
        """
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids and inputs_embeds")
        is_prefill = cache is None or cache.get_seq_length() == 0
        if is_prefill:  # once per sequence (one host sync), not at every decoding step
            _check_text_inputs(input_ids, attention_mask, emotion_positions, self.get_input_embeddings().num_embeddings)
        # LM targets already shifted on the full sequence (the Trainer passes them under sequence/context
        # parallelism): they replace `labels` in the LM loss and must not reach the backbone.
        shift_labels = kwargs.pop("shift_labels", None)
        if inputs_embeds is None:
            inputs_embeds = self.get_input_embeddings()(input_ids)
            inputs_embeds = self.audio_delimiters(
                input_ids, inputs_embeds, self.config.audio_bos_token_id, self.config.audio_eos_token_id
            )
        batch_size = inputs_embeds.shape[0]

        streams = [
            # features may come from another device (device_map splits towers and LLM): move them to the embeddings'
            (self._placeholder_mask(input_ids, inputs_embeds, token_id, features.shape[0], name),
             features.to(inputs_embeds.device, inputs_embeds.dtype))
            for name, token_id, features in self._modality_streams(
                input_ids, input_features, feature_attention_mask, pixel_values, image_grid_thw,
                pixel_values_videos, video_grid_thw,
            )
        ]  # fmt: skip
        clip_context, bottleneck_count = None, None
        if self.emotion_enhancer is not None and streams:
            # every stream's bottleneck first: the clip context pools them all, sound and picture together
            bottlenecks = [self.emotion_enhancer.bottleneck(features) for _, features in streams]
            bottleneck_sum = sum(_sum_per_sample(z, mask) for (mask, _), z in zip(streams, bottlenecks))
            bottleneck_count = sum(mask.sum(-1) for mask, _ in streams)
            clip_context = bottleneck_sum / bottleneck_count.clamp(min=1)[:, None]  # (batch, bottleneck)
            streams = [
                (mask, self.emotion_enhancer(features, z, clip_context[mask.nonzero(as_tuple=True)[0]]))
                for (mask, features), z in zip(streams, bottlenecks)
            ]
        for mask, features in streams:
            inputs_embeds = inputs_embeds.masked_scatter(mask[..., None], features)

        backbone_inputs = self._backbone_inputs(
            input_ids, inputs_embeds, attention_mask, position_ids, cache, use_cache, image_grid_thw,
            video_grid_thw, second_per_grid_ts, mm_token_type_ids, kwargs,
        )  # fmt: skip
        outputs = self.language_backbone(**backbone_inputs)
        hidden = outputs.last_hidden_state
        logits = self.get_output_embeddings()(slice_logits_to_keep(hidden, logits_to_keep))

        result = VAEmotionOutput(
            logits=logits,
            **{CACHE_NAME: getattr(outputs, CACHE_NAME, None) if use_cache is not False else None},
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
        )
        if labels is not None or shift_labels is not None:
            result.lm_loss = self._lm_loss(logits, labels, logits_to_keep, shift_labels)
        if self.emotion_supervisor is not None and is_prefill:
            if emotion_positions is None:
                emotion_positions = _last_prompt_positions(
                    input_ids, attention_mask, labels, self.config.generation_prompt_ids, hidden.shape[1], batch_size
                )
            state = hidden[torch.arange(batch_size, device=hidden.device), emotion_positions.to(hidden.device)]
            va, result.emotion_logits = self.emotion_supervisor.llm_head(state)
            result.valence, result.arousal = va.unbind(-1)
            if clip_context is not None:
                aux_va, aux_logits = self.emotion_supervisor.bottleneck_head(clip_context)
                missing = (bottleneck_count == 0)[:, None]
                aux_va, aux_logits = aux_va.masked_fill(missing, float("nan")), aux_logits.masked_fill(missing, 0.0)
                result.aux_valence, result.aux_arousal = aux_va.unbind(-1)
                result.aux_emotion_logits = aux_logits
        self._add_emotion_losses(result, emotion_labels, valence, arousal, bottleneck_count)
        result.loss = self._total_loss(result)
        return result

    def _modality_streams(
        self, input_ids, input_features, feature_attention_mask, pixel_values, image_grid_thw,
        pixel_values_videos, video_grid_thw,
    ):  # fmt: skip
        """(name, placeholder token id, features) for each modality present, encoded by its own pathway."""
        vlm_config = self.config.vlm_config
        if input_features is not None:
            yield "audio", self.config.audio_token_id, self.get_audio_features(input_features, feature_attention_mask)
        if pixel_values is not None:
            yield "image", self.backbone.image_token_id(vlm_config), self.get_image_features(pixel_values, image_grid_thw)
        if pixel_values_videos is not None:
            yield "video", self.backbone.video_token_id(vlm_config), self.get_video_features(pixel_values_videos, video_grid_thw)

    def _placeholder_mask(self, input_ids, inputs_embeds, token_id: int, num_features: int, name: str) -> torch.Tensor:
        if input_ids is not None:
            mask = input_ids == token_id
        else:  # embeddings only: find the placeholders by their embedding, as LLaVA does
            token_embedding = self.get_input_embeddings()(torch.tensor(token_id, device=inputs_embeds.device))
            mask = (inputs_embeds == token_embedding).all(-1)
        num_tokens = int(mask.sum())
        if num_tokens != num_features:
            raise ValueError(
                f"{name} placeholders do not match the {name} input: the text holds {num_tokens} placeholder tokens "
                f"(id {token_id}) but the {name} input gives {num_features} feature vectors. Build inputs with "
                "VAEmotionProcessor so each placeholder block matches its media."
            )
        return mask

    def _backbone_inputs(
        self, input_ids, inputs_embeds, attention_mask, position_ids, cache, use_cache, image_grid_thw,
        video_grid_thw, second_per_grid_ts, mm_token_type_ids, extra,
    ) -> dict:  # fmt: skip
        inputs = {
            "inputs_embeds": inputs_embeds,
            "attention_mask": attention_mask,
            "position_ids": position_ids,
            CACHE_NAME: cache,
            "use_cache": use_cache,
            **extra,
        }
        if self._uses_mrope:
            # The 3D rope reads ids, grids and token types; features are already in inputs_embeds.
            if mm_token_type_ids is None and input_ids is not None:
                mm_token_type_ids = self._token_types_from_ids(input_ids)
            inputs.update(
                input_ids=input_ids,
                image_grid_thw=image_grid_thw,
                video_grid_thw=video_grid_thw,
                second_per_grid_ts=second_per_grid_ts,
                mm_token_type_ids=_text_typed_audio(mm_token_type_ids),
            )
        return {key: value for key, value in inputs.items() if key in self._backbone_forward_parameters or key in extra}

    def _token_types_from_ids(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.backbone.token_types(input_ids, self.config.vlm_config)

    def _lm_loss(self, logits: torch.Tensor, labels, logits_to_keep, shift_labels=None) -> torch.Tensor:
        if isinstance(logits_to_keep, int) and logits_to_keep == 0:
            vocab_size = self.config.get_text_config().vocab_size
            return self.loss_function(logits=logits, labels=labels, vocab_size=vocab_size, shift_labels=shift_labels)
        if shift_labels is not None:
            raise ValueError("shift_labels are aligned with every position: pass them with logits_to_keep=0")
        # Logits were kept at some positions only: each one is scored against the token after it.
        targets = _next_token_targets(labels.to(logits.device), logits_to_keep)
        return F.cross_entropy(logits.flatten(0, -2).float(), targets.flatten(), ignore_index=-100)

    def _add_emotion_losses(self, result: VAEmotionOutput, emotion_labels, valence, arousal, bottleneck_count):
        if self.emotion_supervisor is None or (emotion_labels is None and valence is None and arousal is None):
            return
        num_emotions = len(self.config.emotion_labels)
        _check_emotion_targets(emotion_labels, valence, arousal, result.valence.shape[0], num_emotions)
        targets = _va_targets(valence, arousal, result.valence)
        result.va_loss, result.category_loss = _emotion_loss_parts(
            result.valence, result.arousal, result.emotion_logits, targets, emotion_labels
        )
        if result.aux_emotion_logits is not None:
            has_tokens = bottleneck_count > 0
            aux_va, aux_category = _emotion_loss_parts(
                result.aux_valence[has_tokens],
                result.aux_arousal[has_tokens],
                result.aux_emotion_logits[has_tokens],
                None if targets is None else targets[has_tokens],
                None if emotion_labels is None else emotion_labels[has_tokens],
            )
            result.aux_emotion_loss = self._weighted_emotion_loss(aux_va, aux_category)

    def _weighted_emotion_loss(self, va_loss, category_loss):
        parts = []
        if va_loss is not None:
            parts.append(self.config.va_loss_weight * va_loss)
        if category_loss is not None:
            parts.append(self.config.category_loss_weight * category_loss)
        return sum(parts) if parts else None

    def _total_loss(self, result: VAEmotionOutput):
        config = self.config
        weighted = [
            (config.lm_loss_weight, result.lm_loss),
            (config.emotion_loss_weight, self._weighted_emotion_loss(result.va_loss, result.category_loss)),
            (config.aux_emotion_loss_weight, result.aux_emotion_loss),
        ]
        parts = [weight * loss for weight, loss in weighted if loss is not None]
        return sum(parts) if parts else None

    # ------------------------------------------------------------------------------------------------ inference
    @torch.no_grad()
    def predict_emotion(self, **inputs) -> EmotionPrediction:
        """Valence, arousal and category probabilities from one prefill (no decoding), read at the last prompt token.

        Accepts the processor's outputs (the prompt only, e.g. with `add_generation_prompt=True`). Left or right
        padding both work: the state is read at each sample's last attended token.
        """
        if self.emotion_supervisor is None:
            raise ValueError("this model was built with use_emotion_supervisor=False: it has no emotion heads")
        for target in ("labels", "emotion_labels", "valence", "arousal"):
            inputs.pop(target, None)
        outputs = self(**inputs, use_cache=False, logits_to_keep=1, return_dict=True)
        return EmotionPrediction(
            valence=outputs.valence.float(),
            arousal=outputs.arousal.float(),
            probabilities=outputs.emotion_logits.float().softmax(-1),
            labels=list(self.config.emotion_labels),
        )

    def _prepare_position_ids_for_generation(self, inputs_tensor, model_kwargs):
        # The VLM knows its own position scheme (Qwen's 3D rope); audio tokens count as text for it.
        token_types = model_kwargs.get("mm_token_type_ids")
        if token_types is None and self._uses_mrope:
            input_ids = model_kwargs.get("input_ids", inputs_tensor)
            if input_ids.dim() == 2 and not input_ids.is_floating_point():
                token_types = self._token_types_from_ids(input_ids)
        if token_types is not None:
            model_kwargs = {**model_kwargs, "mm_token_type_ids": _text_typed_audio(token_types)}
        return self.vlm._prepare_position_ids_for_generation(inputs_tensor, model_kwargs)


# ---------------------------------------------------------------------------------------------------- helpers
def _whisper_window_frames(encoder: WhisperEncoder) -> int:
    return encoder.config.max_source_positions * encoder.conv1.stride[0] * encoder.conv2.stride[0]


def whisper_encode_prefix(encoder: WhisperEncoder, input_features: torch.Tensor) -> torch.Tensor:
    """Whisper's encoder on windows shorter than its 30 s, with the prefix of its position table.

    The stock forward refuses anything but the full window (3000 mel frames), so a 2 s clip pays for 28 s of padding.
    This is the same computation (convolutions, sinusoidal positions, layers, final norm) on the frames given, with
    positions ``0..T-1``; on a full window it equals the stock forward. Whisper was trained on padded windows only, so
    the states of a short window differ somewhat from the padded form's (measured in benchmarks/RESULTS.md).
    """
    hidden = F.gelu(encoder.conv1(input_features))
    hidden = F.gelu(encoder.conv2(hidden)).permute(0, 2, 1)
    if hidden.shape[1] > encoder.embed_positions.num_embeddings:
        raise ValueError(
            f"input_features: {input_features.shape[-1]} mel frames are more than the encoder's window "
            f"({_whisper_window_frames(encoder)})"
        )
    hidden = hidden + encoder.embed_positions.weight[: hidden.shape[1]]
    hidden = F.dropout(hidden, p=encoder.dropout, training=encoder.training)
    for layer in encoder.layers:
        if encoder.training and encoder.layerdrop > 0.0 and torch.rand([]) < encoder.layerdrop:
            continue
        hidden = layer(hidden, None)
        hidden = hidden[0] if isinstance(hidden, tuple) else hidden  # transformers < 5.22 returned a tuple
    return encoder.layer_norm(hidden)


def _checkpoint_tokenizer(vlm_path, vlm_config):
    """The VLM checkpoint's tokenizer with the audio tokens (as the processor builds it), or None when the checkpoint
    has none: a tokenizer that does not know the VLM's image token is not the VLM's (transformers may build an empty
    one from a folder without tokenizer files)."""
    backbone = backbone_for(vlm_config.model_type)
    try:
        tokenizer = load_vlm_tokenizer(vlm_path)
    except (OSError, ValueError, TypeError):
        return None
    image_token_id = tokenizer.convert_tokens_to_ids(backbone.image_token(tokenizer))
    return tokenizer if image_token_id == backbone.image_token_id(vlm_config) else None


def _checkpoint_chat_template(vlm_path, tokenizer) -> str:
    """The chat template [`VAEmotionProcessor.from_vlm_and_audio_pretrained`] takes from the same checkpoint: its
    processor's, else its tokenizer's, else the default."""
    from transformers import AutoProcessor

    try:
        processor_template = getattr(AutoProcessor.from_pretrained(vlm_path), "chat_template", None)
    except (OSError, ValueError, TypeError):
        processor_template = None
    return chat_template_of(tokenizer, processor_template)


def _check_text_inputs(input_ids, attention_mask, emotion_positions, vocab_size: int) -> None:
    """What a script can get wrong about the token inputs, named before an embedding lookup or an index fails (one
    host sync for all the ranges)."""
    if input_ids is None:
        return
    if input_ids.dim() != 2 or input_ids.is_floating_point():
        raise ValueError(f"input_ids must be an integer (batch_size, sequence_length) tensor, got {input_ids.dtype} "
                         f"{tuple(input_ids.shape)}")
    if attention_mask is not None and attention_mask.shape != input_ids.shape:
        raise ValueError(f"attention_mask has shape {tuple(attention_mask.shape)}, input_ids {tuple(input_ids.shape)}: "
                         "they must match")
    length = input_ids.shape[-1]
    if emotion_positions is not None and (
        emotion_positions.shape != (input_ids.shape[0],) or emotion_positions.is_floating_point()
    ):
        raise ValueError(f"emotion_positions must be one integer position per sample, got {emotion_positions.dtype} "
                         f"{tuple(emotion_positions.shape)}")
    if not input_ids.numel():
        return
    extremes = [input_ids.min(), input_ids.max()]
    if emotion_positions is not None:
        extremes += [emotion_positions.min().to(input_ids.device), emotion_positions.max().to(input_ids.device)]
    low, high, *positions = torch.stack(extremes).tolist()
    if low < 0 or high >= vocab_size:
        raise ValueError(f"input_ids must lie in [0, {vocab_size}) (the embedding rows), got ids from {low} to {high}")
    if positions and (positions[0] < 0 or positions[1] >= length):
        raise ValueError(f"emotion_positions must be one integer position in [0, {length}) per sample, got "
                         f"{emotion_positions.tolist()}")


def _check_patch_grid(pixels_name: str, pixels: torch.Tensor, grid_name: str, grid) -> None:
    """Qwen-family vision towers take flat patch rows plus each picture's (t, h, w) patch grid: both must be given and
    agree, or the tower fails far from the cause."""
    if grid is None:
        raise ValueError(f"{pixels_name} needs {grid_name} beside it (each picture's (t, h, w) patch grid, which the "
                         "processor returns with the pixels)")
    if grid.dim() != 2 or grid.shape[-1] != 3 or grid.is_floating_point():
        raise ValueError(f"{grid_name} must be an integer (num_pictures, 3) tensor, got {grid.dtype} "
                         f"{tuple(grid.shape)}")
    described = int(grid.prod(-1).sum())
    if pixels.dim() != 2 or pixels.shape[0] != described:
        raise ValueError(f"{pixels_name} has shape {tuple(pixels.shape)} but {grid_name} describes {described} patch "
                         "rows: pass the pixels and grids of the same processor call")


def _flatten_features(features) -> torch.Tensor:
    """Per-item feature tensors (a tuple, a list or a batched tensor) to one `(tokens, hidden)` matrix."""
    if isinstance(features, torch.Tensor):
        return features.reshape(-1, features.shape[-1])
    return torch.cat([item.reshape(-1, item.shape[-1]) for item in features], dim=0)


def _text_typed_audio(mm_token_type_ids: torch.Tensor | None) -> torch.Tensor | None:
    # Qwen2.5-VL's rope index knows text (0), image (1) and video (2) only; audio tokens take text positions.
    if mm_token_type_ids is None:
        return None
    return mm_token_type_ids.masked_fill(mm_token_type_ids == AUDIO_TOKEN_TYPE, 0)


def _sum_per_sample(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Sum the rows of ``values`` (in mask order) per sample of ``mask`` (batch, seq)."""
    sample_index = mask.nonzero(as_tuple=True)[0]
    return values.new_zeros(mask.shape[0], values.shape[-1]).index_add(0, sample_index, values)


def _last_prompt_positions(
    input_ids, attention_mask, labels, prompt_ids, seq_len: int, batch_size: int
) -> torch.Tensor:
    """Index of each sample's last prompt token, read from the chat structure.

    It is the last token of the sample's last generation prompt (``prompt_ids``, e.g. ``<|im_start|>assistant\\n``):
    what the model reads at inference before answering, whether ``labels`` mask the prompt, cover it
    (``labels=input_ids``) or are absent. A sample without one (raw text, no ``input_ids``, a config without
    ``generation_prompt_ids``) falls back to the token before its first supervised label when the labels mask a
    prompt, else to its last attended token.
    """
    if attention_mask is not None:
        positions = torch.arange(seq_len, device=attention_mask.device)
        last_attended = (positions * attention_mask.bool()).max(-1).values
    else:
        last_attended = torch.full((batch_size,), seq_len - 1)
    fallback = last_attended
    if labels is not None:
        supervised = labels != -100
        masks_a_prompt = supervised.any(-1) & ~supervised[:, 0]
        before_first_label = supervised.int().argmax(-1) - 1
        fallback = torch.where(masks_a_prompt, before_first_label, last_attended.to(labels.device))
    if not prompt_ids or input_ids is None or input_ids.shape[1] < len(prompt_ids):
        return fallback
    prompt = torch.tensor(prompt_ids, device=input_ids.device)
    ends = (input_ids.unfold(1, len(prompt_ids), 1) == prompt).all(-1)  # (B, L - k + 1): a prompt starts here
    if attention_mask is not None:
        ends &= attention_mask[:, len(prompt_ids) - 1 :].bool()
    last_end = (torch.arange(ends.shape[1], device=ends.device) * ends).max(-1).values + len(prompt_ids) - 1
    return torch.where(ends.any(-1), last_end, fallback.to(last_end.device))


def _next_token_targets(labels: torch.Tensor, logits_to_keep: int | torch.Tensor) -> torch.Tensor:
    """For logits kept at some positions (`slice_logits_to_keep` semantics), the label of the token after each."""
    batch_size, seq_len = labels.shape
    if isinstance(logits_to_keep, int):
        positions = torch.arange(seq_len - logits_to_keep, seq_len, device=labels.device).expand(batch_size, -1)
    else:
        positions = logits_to_keep.to(labels.device)
        positions = positions.expand(batch_size, -1) if positions.dim() == 1 else positions
    following = positions + 1
    targets = labels.gather(1, following.clamp(max=seq_len - 1))
    return targets.masked_fill(following >= seq_len, -100)


def _va_targets(valence, arousal, like: torch.Tensor | None) -> torch.Tensor | None:
    if (valence is None and arousal is None) or like is None:
        return None
    nan = torch.full_like(like, float("nan"))
    columns = [nan if target is None else target.to(like) for target in (valence, arousal)]
    return torch.stack(columns, dim=-1)


def _check_emotion_targets(emotion_labels, valence, arousal, batch_size: int, num_emotions: int) -> None:
    """Emotion targets a training script can get wrong, refused with their name before they reach a loss."""
    if emotion_labels is not None:
        if emotion_labels.shape != (batch_size,) or emotion_labels.is_floating_point():
            raise ValueError(f"emotion_labels must be integer indices of shape ({batch_size},), one per sample, got "
                             f"{emotion_labels.dtype} of shape {tuple(emotion_labels.shape)}")
        bad = (emotion_labels != -100) & ((emotion_labels < 0) | (emotion_labels >= num_emotions))
        if bad.any():
            raise ValueError(f"emotion_labels must lie in [0, {num_emotions}) (config.emotion_labels) or be -100, got "
                             f"{emotion_labels[bad][0].item()}")
    for name, values in (("valence", valence), ("arousal", arousal)):
        if values is None:
            continue
        if values.shape != (batch_size,):
            raise ValueError(
                f"{name} must have shape ({batch_size},), one target per sample, got {tuple(values.shape)}"
            )
        outside = ~torch.isnan(values) & ~((values >= -1) & (values <= 1))
        if outside.any():
            raise ValueError(f"{name} targets must lie in [-1, 1] (NaN: unknown), got {values[outside][0].item()}")


def _emotion_loss_parts(pred_valence, pred_arousal, logits, va_targets, emotion_labels):
    """Mean squared error over the known valence/arousal targets, and category cross-entropy (-100 ignored)."""
    va_loss = category_loss = None
    if va_targets is not None:
        prediction = torch.stack([pred_valence, pred_arousal], dim=-1)
        known = ~torch.isnan(va_targets)
        if known.any():
            va_loss = F.mse_loss(prediction[known].float(), va_targets[known].float())
    if emotion_labels is not None:
        labels = emotion_labels.to(logits.device)
        if (labels != -100).any():
            category_loss = F.cross_entropy(logits.float(), labels, ignore_index=-100)
    return va_loss, category_loss


__all__ = [
    "VAEmotionForConditionalGeneration",
    "VAEmotionPreTrainedModel",
    "VAEmotionOutput",
    "EmotionPrediction",
    "STAGE_TRAINABLE_MODULES",
]
