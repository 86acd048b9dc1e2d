"""Model adapters: one interface over VAEmotion and the baselines it is compared with on ArtEmoBenchmark.

An adapter wraps a model and its processor and knows, for its architecture, how to

- ``encode`` one clip on one benchmark config (which media parts, which processor arguments),
- compute the prompt's ``position_ids`` (Qwen's 3D mrope, or plain 1D positions), so option tokens scored from
  the KV cache continue exactly where the prompt ended,
- run one ``forward`` step (prefill or continuation) that returns logits, the cache and, for models with emotion
  heads, the structured emotion prediction of the prefill.

The harness (:mod:`vaemotion.benchmark.harness`) does the scoring itself, the same way for every adapter.
Adapters are chosen from the checkpoint's ``config.model_type``:

=====================================  ============================================  ============  ===========
``config.model_type``                  class                                          configs       emotion
=====================================  ============================================  ============  ===========
``vaemotion``                          ``VAEmotionForConditionalGeneration``          all three     heads
``qwen2_5_omni``, ``..._omni_thinker``  ``Qwen2_5OmniThinkerForConditionalGeneration``  all three     label words
``qwen2_audio``                        ``Qwen2AudioForConditionalGeneration``         audio_only    label words
``qwen2_5_vl``                         ``Qwen2_5_VLForConditionalGeneration``         visual_only   label words
=====================================  ============================================  ============  ===========

A config an adapter does not support is reported as "n/a" rather than run with missing media.

>>> sorted(ADAPTERS)
['qwen2_5_omni', 'qwen2_5_omni_thinker', 'qwen2_5_vl', 'qwen2_audio', 'vaemotion']
>>> Qwen2AudioAdapter.supported_configs
('audio_only',)
"""

from __future__ import annotations

import inspect
import os
from dataclasses import dataclass

import torch
from transformers import (
    AutoConfig,
    AutoProcessor,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2_5OmniThinkerForConditionalGeneration,
    Qwen2AudioForConditionalGeneration,
)
from transformers.modeling_utils import slice_logits_to_keep

from .. import VAEmotionForConditionalGeneration
from ..backbones import backbone_for, check_model_reference
from ..configuration_vaemotion import ARTEMIS_EMOTIONS
from ..processing_vaemotion import VAEmotionProcessor
from ..training.data import DecodedClip, conversation, encode_prompt, tokenize_response
from .artemo import CONFIG_NAMES

__all__ = [
    "ADAPTERS",
    "CONFIG_PATHS",
    "ModelAdapter",
    "Qwen2AudioAdapter",
    "Qwen2_5OmniAdapter",
    "Qwen2_5_VLAdapter",
    "StepOutput",
    "VAEmotionAdapter",
    "adapter_for",
    "load_adapter",
]

# Benchmark config -> the input path of vaemotion.training.data (which media parts the prompt carries).
CONFIG_PATHS = {"audio_only": "audio", "visual_only": "visual", "audio_visual": "audio_visual"}


@dataclass
class StepOutput:
    """One forward step: logits at the kept positions, the KV cache, and (prefill only) structured emotion.

    ``emotion`` is ``None`` or ``{"valence": (B,), "arousal": (B,), "probabilities": (B, 8)}`` with probabilities
    over ``ARTEMIS_EMOTIONS`` in that order.
    """

    logits: torch.Tensor
    cache: object
    emotion: dict | None = None


class ModelAdapter:
    """Common interface of a scored model: subclasses set the class attributes and override what differs.

    Args:
        model: the loaded model (in eval mode; moved nowhere: inputs follow the model's device).
        processor: its processor.
        name: how the model is named in reports (default: the checkpoint path or the class name).
    """

    model_class: type | None = None
    supported_configs: tuple[str, ...] = CONFIG_NAMES
    emotion_source = "label_words"  # or "heads": the model predicts emotion itself in the prefill

    def __init__(self, model, processor, name: str | None = None):
        self.model = model.eval()
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.name = name or getattr(model, "name_or_path", None) or type(model).__name__
        self._forward_parameters = frozenset(inspect.signature(self.backbone.forward).parameters)

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, *, dtype="auto", device: str | None = None, **kwargs):
        """Load the model and its processor from a checkpoint folder (or Hub id) and wrap them."""
        model = cls.model_class.from_pretrained(path, dtype=dtype, **kwargs)
        if device is not None:
            model.to(device)
        return cls(model, AutoProcessor.from_pretrained(path), name=os.fspath(path))

    # ----------------------------------------------------------------------------------------------- properties
    @property
    def backbone(self):
        """The module called in ``forward``: the base model (logits are computed only where they are needed)."""
        return self.model.model

    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def pad_token_id(self) -> int:
        pad = self.tokenizer.pad_token_id
        return pad if pad is not None else self.tokenizer.eos_token_id

    def supports(self, config_name: str) -> bool:
        return config_name in self.supported_configs

    def option_ids(self, option: str) -> list[int]:
        """Token ids of an option as the assistant's whole answer: its text, then the end-of-turn token.

        The end token makes the score that of *exactly* this answer, so "sad" is not favoured over "sadness" for
        being its prefix.
        """
        return tokenize_response(self.tokenizer, option)

    # ----------------------------------------------------------------------------------------------- inputs
    def encode(self, clip: DecodedClip, config_name: str, prompt: str) -> dict:
        """Unpadded single-sample model inputs: the config's media parts, the prompt, the assistant header."""
        return encode_prompt(self.processor, clip, CONFIG_PATHS[config_name], prompt)

    def position_ids(self, batch: dict) -> torch.Tensor:
        """Positions of a left-padded prompt batch, ``(B, L)``; the first real token of each row is at 0."""
        return _text_positions(batch["attention_mask"])

    # ----------------------------------------------------------------------------------------------- forward
    def forward(self, inputs: dict, *, cache=None, logits_to_keep: int = 0) -> StepOutput:
        """Run the base model and the LM head on the kept positions (0: all)."""
        accepted = {key: value for key, value in inputs.items() if key in self._forward_parameters}
        outputs = self.backbone(**accepted, cache=cache, use_cache=True)
        hidden = slice_logits_to_keep(outputs.last_hidden_state, logits_to_keep)
        return StepOutput(logits=self.model.get_output_embeddings()(hidden), cache=outputs.cache)


class VAEmotionAdapter(ModelAdapter):
    """Our model: every config, emotion from the EmoAdapter heads read in the prefill of the fixed emotion prompt
    (from label-word likelihood, like the baselines, for a model built without the Emotion Supervisor)."""

    model_class = VAEmotionForConditionalGeneration

    def __init__(self, model, processor, name: str | None = None):
        super().__init__(model, processor, name)
        self.emotion_source = "heads" if model.emotion_supervisor is not None else "label_words"
        labels = list(model.config.emotion_labels)
        missing = sorted(set(ARTEMIS_EMOTIONS) - set(labels))
        if missing:
            raise ValueError(f"the model's emotion_labels {labels} lack the ArtEmis categories {missing}")
        # the heads' label order may differ from ArtEmis': reorder probabilities once, by name
        self._artemis_order = torch.tensor([labels.index(label) for label in ARTEMIS_EMOTIONS])

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, *, dtype="auto", device: str | None = None, **kwargs):
        model = VAEmotionForConditionalGeneration.from_pretrained(path, dtype=dtype, **kwargs)
        if device is not None:
            model.to(device)
        return cls(model, VAEmotionProcessor.from_pretrained(path), name=os.fspath(path))

    @property
    def backbone(self):
        return self.model  # its own forward keeps logits where asked and adds the emotion heads

    def position_ids(self, batch: dict) -> torch.Tensor:
        if not self.model.backbone.uses_mrope:  # LLaVA-style VLMs: plain positions
            return super().position_ids(batch)
        return _qwen_vl_positions(self.model.language_backbone, batch, self.model.config.vlm_config)

    def forward(self, inputs: dict, *, cache=None, logits_to_keep: int = 0) -> StepOutput:
        outputs = self.model(**inputs, cache=cache, use_cache=True, logits_to_keep=logits_to_keep)
        emotion = None
        if outputs.emotion_logits is not None:
            probabilities = outputs.emotion_logits.float().softmax(-1)
            emotion = {
                "valence": outputs.valence.float(),
                "arousal": outputs.arousal.float(),
                "probabilities": probabilities[:, self._artemis_order.to(probabilities.device)],
            }
        return StepOutput(logits=outputs.logits, cache=outputs.cache, emotion=emotion)


class Qwen2_5_VLAdapter(ModelAdapter):
    """Qwen2.5-VL: sees frames or the image; it has no audio input, so only ``visual_only``."""

    model_class = Qwen2_5_VLForConditionalGeneration
    supported_configs = ("visual_only",)

    def position_ids(self, batch: dict) -> torch.Tensor:
        return _qwen_vl_positions(self.backbone, batch, self.model.config)


class _HubTemplateAdapter(ModelAdapter):
    """Adapters whose hub chat templates test ``'audio' in part`` (a key named after the medium), as Qwen2-Audio's
    and Qwen2.5-Omni's do, and whose processors take bare audio arrays with ``sampling_rate``."""

    def encode(self, clip: DecodedClip, config_name: str, prompt: str) -> dict:
        path = CONFIG_PATHS[config_name]
        messages = conversation(clip, path, prompt)
        for part in messages[-1]["content"]:
            if part["type"] != "text":
                part[part["type"]] = clip.record.id  # only the key's presence matters when rendering
        text = self.processor.apply_chat_template(messages, add_generation_prompt=True)
        encoded = self.processor(text=[text], return_tensors="pt", **self._media_arguments(clip, path))
        return {key: value for key, value in encoded.items() if isinstance(value, torch.Tensor)}

    def _media_arguments(self, clip: DecodedClip, path: str) -> dict:
        media = {}
        if path in ("audio", "audio_visual"):
            media.update(audio=[clip.audio], sampling_rate=clip.sampling_rate)
        if path in ("visual", "audio_visual"):
            if clip.frames is not None:
                # frames are sampled already; the fps they were sampled at spaces the video's temporal positions
                media.update(videos=[clip.frames], videos_kwargs={"do_sample_frames": False, "fps": _sampled_fps(clip)})
            else:
                media["images"] = [clip.image]
        return media


class Qwen2AudioAdapter(_HubTemplateAdapter):
    """Qwen2-Audio: hears the sound only, so only ``audio_only``."""

    model_class = Qwen2AudioForConditionalGeneration
    supported_configs = ("audio_only",)


class Qwen2_5OmniAdapter(_HubTemplateAdapter):
    """Qwen2.5-Omni's thinker (the text-producing half): every config.

    In ``audio_visual`` the sound is its own audio part after the frames (or image), the same layout for videos and
    image+audio items, rather than Omni's ``use_audio_in_video`` interleaving, which only applies to videos.
    A full Omni checkpoint (``qwen2_5_omni``: thinker, talker, token2wav) loads only its thinker.
    """

    model_class = Qwen2_5OmniThinkerForConditionalGeneration

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, *, dtype="auto", device: str | None = None, **kwargs):
        config = AutoConfig.from_pretrained(path)
        if config.model_type == "qwen2_5_omni":  # keep the thinker's weights, skip the speech generator's
            kwargs.update(config=config.thinker_config, key_mapping={r"^thinker\.": ""})
        return super().from_pretrained(path, dtype=dtype, device=device, **kwargs)

    def position_ids(self, batch: dict) -> torch.Tensor:
        feature_mask = batch.get("feature_attention_mask")
        positions, _ = self.model.get_rope_index(
            batch["input_ids"],
            image_grid_thw=batch.get("image_grid_thw"),
            video_grid_thw=batch.get("video_grid_thw"),
            attention_mask=batch["attention_mask"],
            use_audio_in_video=False,
            audio_seqlens=None if feature_mask is None else feature_mask.sum(-1),
            second_per_grids=batch.get("video_second_per_grid"),
        )
        return positions


ADAPTERS = {
    "vaemotion": VAEmotionAdapter,
    "qwen2_5_omni": Qwen2_5OmniAdapter,
    "qwen2_5_omni_thinker": Qwen2_5OmniAdapter,
    "qwen2_audio": Qwen2AudioAdapter,
    "qwen2_5_vl": Qwen2_5_VLAdapter,
}


def _adapter_class(model_type: str) -> type[ModelAdapter]:
    if model_type not in ADAPTERS:
        raise ValueError(f"no ArtEmoBenchmark adapter for model_type {model_type!r}; supported: {sorted(ADAPTERS)}")
    return ADAPTERS[model_type]


def adapter_for(model, processor, name: str | None = None) -> ModelAdapter:
    """Wrap an already loaded model and processor in the adapter its ``config.model_type`` selects."""
    return _adapter_class(model.config.model_type)(model, processor, name=name)


def load_adapter(path: str | os.PathLike, *, dtype="auto", device: str | None = None) -> ModelAdapter:
    """Load a checkpoint (folder or Hub id) with the adapter its ``config.json`` selects.

    >>> adapter = load_adapter("Qwen/Qwen2-Audio-7B-Instruct", dtype="bfloat16", device="cuda")  # doctest: +SKIP
    >>> adapter.supported_configs  # doctest: +SKIP
    ('audio_only',)
    """
    check_model_reference(path, "model")
    model_type = AutoConfig.from_pretrained(path).model_type
    return _adapter_class(model_type).from_pretrained(path, dtype=dtype, device=device)


# ------------------------------------------------------------------------------------------------ positions
def _text_positions(attention_mask: torch.Tensor) -> torch.Tensor:
    # pads (left) sit at 0 too; they are masked out, and only the last column is used to continue
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def _qwen_vl_positions(vl_model, batch: dict, config) -> torch.Tensor:
    """Qwen2(.5)-VL 3D positions ``(3, B, L)`` of a left-padded batch, from the model's own ``get_rope_index``."""
    positions, _ = vl_model.get_rope_index(
        batch["input_ids"],
        mm_token_type_ids=backbone_for(config.model_type).token_types(batch["input_ids"], config),
        image_grid_thw=batch.get("image_grid_thw"),
        video_grid_thw=batch.get("video_grid_thw"),
        second_per_grid_ts=batch.get("second_per_grid_ts"),
        attention_mask=batch["attention_mask"],
    )
    return positions


def _sampled_fps(clip: DecodedClip) -> float:
    metadata = clip.video_metadata
    if metadata is None or not getattr(metadata, "duration", None):
        return 2.0  # Qwen's default sampling rate, what its processors assume when told nothing
    return len(clip.frames) / metadata.duration
