# Copyright 2026 The VAEmotion Authors. Licensed under the Apache License, Version 2.0.
"""The backbone seam: what differs between VLM families, in one small class per family.

Flat module with relative imports only: it is copied into hub checkpoints as remote code.

Everything else in VAEmotion (model, processor, trainers, pipeline, harness, hub) asks the family's
[`VLMBackbone`] instead of testing model types:

- the placeholder tokens of images and videos, and the vision delimiters new audio delimiters start from;
- how images and videos become tokens: the family's own processor class expands them (VAEmotion never counts
  another model's patches), and a family without a video pathway (LLaVA 1.5) sees a video as its frames, each an
  image;
- position ids: whether the LLM's position code (Qwen's 3D rope) needs ids, grids and token types beside the
  embeddings;
- how one image reads in a chat template that only takes string contents.

Adding a family is one subclass here and one line in `BACKBONES`.
"""

from __future__ import annotations

import os

import torch


# The three tokens VAEmotion adds to a VLM's tokenizer, under the names transformers exposes them by
# (`tokenizer.audio_token`, `tokenizer.audio_token_id`, ...). Their order is the order of the ids they get.
AUDIO_SPECIAL_TOKENS = {
    "audio_token": "<|audio_pad|>",
    "audio_bos_token": "<|audio_bos|>",
    "audio_eos_token": "<|audio_eos|>",
}
# Used only when the VLM's tokenizer has no chat template of its own: Qwen-style turns with typed image, video and
# text parts (audio parts arrive as text, see processing_vaemotion.AUDIO_BLOCK).
DEFAULT_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}"
    "{{ message['content'] }}"
    "{% else %}"
    "{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif part['type'] == 'video' %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif part['type'] == 'text' %}"
    "{{ part['text'] }}"
    "{% endif %}"
    "{% endfor %}"
    "{% endif %}"
    "<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def chat_template_of(tokenizer, chat_template: str | None = None) -> str:
    """The chat template VAEmotion renders with: the one given (a VLM processor's), else the tokenizer's, else
    [`DEFAULT_CHAT_TEMPLATE`]. The processor and the model builder both choose it here."""
    return chat_template or getattr(tokenizer, "chat_template", None) or DEFAULT_CHAT_TEMPLATE


def generation_prompt_ids(tokenizer, chat_template: str) -> list[int]:
    """Token ids a chat template appends with ``add_generation_prompt=True``: what opens the assistant's turn
    (``<|im_start|>assistant\\n`` in Qwen's template, `` ASSISTANT:`` in LLaVA 1.5's); empty when it appends nothing.

    Found by rendering one user turn with and without the prompt and tokenizing both, so that the ids are the ones
    the prompt gets in context (a BPE merge across its left edge would change them if it were tokenized alone).
    """
    renders = None
    # a text LLM's template wants string contents, a VLM's may want typed parts
    for content in ("x", [{"type": "text", "text": "x"}]):
        conversation = [{"role": "user", "content": content}]
        try:
            renders = [
                tokenizer.apply_chat_template(conversation, chat_template=chat_template, tokenize=False,
                                              add_generation_prompt=prompt)
                for prompt in (False, True)
            ]
            break
        except Exception:  # noqa: BLE001 - a template that rejects this content form: try the other
            continue
    if renders is None or not renders[1].startswith(renders[0]) or renders[1] == renders[0]:
        return []
    without, with_prompt = (tokenizer(text, add_special_tokens=False)["input_ids"] for text in renders)
    if with_prompt[: len(without)] == without:
        return with_prompt[len(without):]
    return tokenizer(renders[1][len(renders[0]):], add_special_tokens=False)["input_ids"]


# mm_token_type_ids as transformers processors write them: 0 text, 1 image, 2 video, 3 audio.
IMAGE_TOKEN_TYPE, VIDEO_TOKEN_TYPE, AUDIO_TOKEN_TYPE = 1, 2, 3


def check_model_reference(reference, name: str) -> None:
    """Refuse, naming ``name``, a model reference that can be neither a saved model folder nor a hub id: a path that
    does not exist, or a folder without ``config.json``. A hub id (``org/model``) passes: its loader says the rest."""
    if not isinstance(reference, (str, os.PathLike)):
        raise ValueError(f"{name}: must be a model folder or hub id, got {type(reference).__name__}")
    text = os.fspath(reference)
    if os.path.isdir(text):
        if not os.path.isfile(os.path.join(text, "config.json")):
            raise ValueError(f"{name}: {text} is a folder without config.json, not a saved model")
        return
    looks_like_path = os.path.isabs(text) or text.startswith((".", "~")) or text.count("/") > 1 or os.path.exists(text)
    if looks_like_path:
        raise ValueError(f"{name}: {text}: no such model folder (a hub id reads 'org/model')")


def audio_token_ids(tokenizer) -> dict[str, int]:
    """``{"audio_token_id": ..., "audio_bos_token_id": ..., "audio_eos_token_id": ...}`` of a tokenizer that has them."""
    ids = {}
    for name, token in AUDIO_SPECIAL_TOKENS.items():
        if not _has_token(tokenizer, token):
            raise ValueError(f"tokenizer: has no {token} token; load it with load_vlm_tokenizer, which adds them")
        ids[f"{name}_id"] = tokenizer.convert_tokens_to_ids(token)
    return ids


def load_vlm_tokenizer(vlm_path, **kwargs):
    """The VLM checkpoint's tokenizer with the three audio tokens added as named special tokens (`tokenizer.audio_token`,
    `tokenizer.audio_token_id`, ...; saved with it): the one source of audio token ids.

    A token the tokenizer lacks takes its next free id (``len(tokenizer)``). The model and the processor both get
    their ids from a tokenizer loaded here, so the ids agree however the two are built; a checkpoint whose embedding
    matrix has spare rows (every Qwen2.5-VL) puts the tokens on those rows instead of growing the matrix.
    """
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(vlm_path, extra_special_tokens=dict(AUDIO_SPECIAL_TOKENS), **kwargs)


def _has_token(tokenizer, token: str) -> bool:
    token_id = tokenizer.convert_tokens_to_ids(token)
    return token_id is not None and token_id != tokenizer.unk_token_id


# A video in a family without a video pathway: a text marker (never tokenized) the processor replaces by the
# frames' image blocks once it knows how many frames were sampled.
VIDEO_FRAMES_MARKER = "<vaemotion_video_frames>"


class VLMBackbone:
    """What VAEmotion needs to know about one VLM family. Subclasses set the class attributes.

    Attributes:
        model_types: the `config.model_type` values of the family.
        processor_class_name: the family's own processor in transformers, which expands image (and video) tokens.
        default_image_token / default_video_token: placeholders when the tokenizer names none.
        vision_delimiters: the tokens around a visual block (`<|vision_start|>`, `<|vision_end|>`), from which the
            audio delimiters' embeddings start; `None` when the family has none (they start from the mean of the
            trained embedding rows).
        takes_videos: whether the family has a video pathway; without one a video is its frames, each an image.
        uses_mrope: whether the LLM's position code needs `input_ids`, grids and token types next to the embeddings.
        processor_init_keys: the family processor's own settings (beyond its parts) that VAEmotion's processor keeps.
        default_num_frames: frames sampled per video by default when the family has no video pathway.
    """

    model_types: tuple[str, ...] = ()
    processor_class_name: str = ""
    default_image_token: str = "<image>"
    default_video_token: str | None = None
    vision_delimiters: tuple[str, str] | None = None
    takes_videos: bool = False
    uses_mrope: bool = False
    processor_init_keys: tuple[str, ...] = ()
    # frames sampled from a video when the call names neither num_frames nor fps, for a family without a video
    # pathway (each frame costs a whole image's tokens: 576 for LLaVA 1.5 at 336 px)
    default_num_frames: int = 4

    # ---------------------------------------------------------------------------------------------------- processor
    def processor_class(self):
        import transformers

        return getattr(transformers, self.processor_class_name)

    def build_vlm_processor(self, image_processor, tokenizer, video_processor, settings: dict):
        """The family's own processor over VAEmotion's parts (no chat template: VAEmotion renders the text)."""
        parts = {"image_processor": image_processor, "tokenizer": tokenizer}
        if self.takes_videos:
            parts["video_processor"] = video_processor
        return self.processor_class()(**parts, **settings)

    def processor_settings(self, vlm_processor) -> dict:
        """The settings of a loaded family processor that VAEmotion's processor must keep (e.g. LLaVA's patch size)."""
        return {key: getattr(vlm_processor, key) for key in self.processor_init_keys if hasattr(vlm_processor, key)}

    def image_token(self, tokenizer) -> str:
        return getattr(tokenizer, "image_token", None) or self.default_image_token

    def video_token(self, tokenizer) -> str | None:
        if not self.takes_videos:
            return None
        return getattr(tokenizer, "video_token", None) or self.default_video_token

    def image_text(self, tokenizer) -> str:
        """How one image part reads when a chat template only takes string contents."""
        return self.image_token(tokenizer)

    def video_text(self, tokenizer) -> str:
        """How one video part reads in the rendered text: the family's video block, or a marker that the processor
        replaces by one image block per frame (`VIDEO_FRAMES_MARKER`) for a family without a video pathway."""
        if not self.takes_videos:
            return VIDEO_FRAMES_MARKER
        return self.video_token(tokenizer)

    def frames_text(self, tokenizer, num_frames: int) -> str:
        """The text that stands for a video's frames in a family without a video pathway: one image block each."""
        return "".join(self.image_text(tokenizer) for _ in range(num_frames))

    def frame_multiple(self, video_processor) -> int:
        """Frames a video is sampled in multiples of (Qwen groups frames in pairs)."""
        return 1

    # ---------------------------------------------------------------------------------------------------- model
    def image_token_id(self, vlm_config) -> int | None:
        return getattr(vlm_config, "image_token_id", None) or getattr(vlm_config, "image_token_index", None)

    def video_token_id(self, vlm_config) -> int | None:
        return getattr(vlm_config, "video_token_id", None) if self.takes_videos else None

    def vision_delimiter_ids(self, vlm_config) -> tuple[int, int] | None:
        return None

    def token_types(self, input_ids: torch.Tensor, vlm_config) -> torch.Tensor:
        """Image (1) and video (2) token types from the ids; everything else, audio included, is text (0)."""
        token_types = torch.zeros_like(input_ids, dtype=torch.int)
        for token_id, token_type in ((self.image_token_id(vlm_config), IMAGE_TOKEN_TYPE),
                                     (self.video_token_id(vlm_config), VIDEO_TOKEN_TYPE)):  # fmt: skip
            if token_id is not None:
                token_types[input_ids == token_id] = token_type
        return token_types


class Qwen2_5_VLBackbone(VLMBackbone):
    """Qwen2-VL and Qwen2.5-VL: images and videos through the family's processor, 3D rope positions."""

    model_types = ("qwen2_5_vl", "qwen2_vl")
    processor_class_name = "Qwen2_5_VLProcessor"
    default_image_token = "<|image_pad|>"
    default_video_token = "<|video_pad|>"
    vision_delimiters = ("<|vision_start|>", "<|vision_end|>")
    takes_videos = True
    uses_mrope = True

    def image_text(self, tokenizer) -> str:
        start, end = self.vision_delimiters
        return f"{start}{self.image_token(tokenizer)}{end}"

    def video_text(self, tokenizer) -> str:
        start, end = self.vision_delimiters
        return f"{start}{self.video_token(tokenizer)}{end}"

    def frame_multiple(self, video_processor) -> int:
        return int(getattr(video_processor, "temporal_patch_size", None) or 2)

    def vision_delimiter_ids(self, vlm_config) -> tuple[int, int] | None:
        start, end = getattr(vlm_config, "vision_start_token_id", None), getattr(vlm_config, "vision_end_token_id", None)
        return None if start is None or end is None else (start, end)


class LlavaBackbone(VLMBackbone):
    """LLaVA 1.5 (`LlavaForConditionalGeneration`, any vision tower): one image placeholder expanded to the tower's
    patch count by `LlavaProcessor`; no video pathway (a video is its frames, each an image); plain positions."""

    model_types = ("llava",)
    processor_class_name = "LlavaProcessor"
    default_image_token = "<image>"
    processor_init_keys = ("patch_size", "vision_feature_select_strategy", "num_additional_image_tokens")

    def image_text(self, tokenizer) -> str:
        return f"{self.image_token(tokenizer)}\n"  # how LLaVA's own prompts place an image before the question


BACKBONES: dict[str, VLMBackbone] = {
    model_type: backbone for backbone in (Qwen2_5_VLBackbone(), LlavaBackbone()) for model_type in backbone.model_types
}


def backbone_for(model_type: str) -> VLMBackbone:
    """The [`VLMBackbone`] of a VLM family, by its `config.model_type`."""
    if model_type not in BACKBONES:
        raise ValueError(
            f"VLM family {model_type!r} has no VAEmotion backbone adapter; supported: {sorted(BACKBONES)} "
            "(vaemotion/backbones.py: one VLMBackbone subclass per family)"
        )
    return BACKBONES[model_type]


__all__ = [
    "AUDIO_SPECIAL_TOKENS",
    "BACKBONES",
    "LlavaBackbone",
    "Qwen2_5_VLBackbone",
    "VIDEO_FRAMES_MARKER",
    "VLMBackbone",
    "audio_token_ids",
    "backbone_for",
    "load_vlm_tokenizer",
]
