# Copyright 2026 The VAEmotion Authors. Licensed under the Apache License, Version 2.0.
"""VAEmotion processor: the VLM family's own image/video processing plus a Whisper audio pathway.

Flat module with relative imports only: it is copied into hub checkpoints as remote code.
"""

from __future__ import annotations

import math
import os
import re
import warnings
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import torch
from transformers import (
    AutoConfig,
    AutoFeatureExtractor,
    AutoProcessor,
    BatchFeature,
    WhisperFeatureExtractor,
)
from transformers.image_utils import make_flat_list_of_images
from transformers.processing_utils import ProcessorMixin
from transformers.utils import logging
from transformers.video_utils import make_batched_videos

from .backbones import (
    AUDIO_SPECIAL_TOKENS,
    AUDIO_TOKEN_TYPE,
    DEFAULT_CHAT_TEMPLATE,
    IMAGE_TOKEN_TYPE,
    VIDEO_FRAMES_MARKER,
    VIDEO_TOKEN_TYPE,
    backbone_for,
    chat_template_of,
    generation_prompt_ids,
    load_vlm_tokenizer,
)
from .configuration_vaemotion import num_audio_tokens
from .media import (
    DEFAULT_MAX_IMAGE_PIXELS,
    VAEmotionInputError,
    VideoClip,
    has_audio_stream,
    load_audio,
    load_image,
    load_video,
)


logger = logging.get_logger(__name__)

# What an audio part (and a video's soundtrack) becomes in the text: one placeholder, expanded by the processor to
# one block per audio window. Audio parts are written into the VLM's own chat template as this text.
AUDIO_BLOCK = "".join(AUDIO_SPECIAL_TOKENS[name] for name in ("audio_bos_token", "audio_token", "audio_eos_token"))

# Video sampling when the call names neither `num_frames` nor `fps` and the video processor has no default:
# 2 frames per second, as qwen-vl-utils samples for Qwen2.5-VL.
DEFAULT_VIDEO_FPS = 2.0
# Keys of a typed part that carry its medium, per type.
MEDIA_KEYS = {"image": ("image", "url", "path", "base64"), "video": ("video", "url", "path"), "audio": ("audio", "url", "path")}


class VAEmotionProcessor(ProcessorMixin):
    r"""Builds VAEmotion's model inputs from text, images, videos and audio, for any supported VLM family.

    Images and videos go through the VLM family's own processor (`Qwen2_5_VLProcessor`, `LlavaProcessor`, ...:
    see `vaemotion/backbones.py`), which expands their placeholders exactly as the pretrained VLM expects. A family
    without a video pathway (LLaVA 1.5) sees a video as its sampled frames, each an image. Audio is loaded with
    [`~vaemotion.media.load_audio`], cut into consecutive windows of the feature extractor's length (30 s for real
    Whisper), at most `max_audio_windows` per audio, and each window becomes its own placeholder block of
    `num_audio_tokens(valid mel frames, audio_pool_stride)` `<|audio_pad|>` tokens; consecutive windows are separated
    by `<|audio_eos|><|audio_bos|>`. Short audio is not padded into extra tokens.

    Videos can be paths (decoded with [`~vaemotion.media.load_video`], never torchcodec-only), [`VideoClip`]s, or
    frames as transformers accepts them. With `load_audio_from_video=True` (transformers' omni-modal convention) each
    video's soundtrack, synchronized with its sampled frames, fills the first audio placeholder that follows the
    video in the text (where the chat template writes an empty audio part that follows it), or the slots
    `audio_from_video_indices` names; a video without sound loses its slot, the batch goes on.

    Outputs: `input_ids`, `attention_mask`, `mm_token_type_ids` (0 text, 1 image, 2 video, 3 audio), the family's
    visual inputs (Qwen: `pixel_values`, `image_grid_thw`, `pixel_values_videos`, `video_grid_thw`,
    `second_per_grid_ts`; LLaVA: `pixel_values`), `input_features` `(num_windows, n_mels, window_frames)` and
    `feature_attention_mask` `(num_windows, window_frames)`, windows in the order of their placeholder blocks.

    Args:
        image_processor: the VLM's image processor.
        tokenizer ([`PreTrainedTokenizerBase`]): the VLM's tokenizer with `<|audio_bos|>`, `<|audio_pad|>` and
            `<|audio_eos|>` (see [`~VAEmotionProcessor.from_vlm_and_audio_pretrained`]).
        video_processor: the VLM's video processor. A family without a video pathway never calls it: it carries
            the stand-in `from_vlm_and_audio_pretrained` builds, since every processor part must be present.
        feature_extractor ([`WhisperFeatureExtractor`]): log-mel features for the audio encoder.
        chat_template (`str`, *optional*): the VLM's own chat template; audio parts are written into it as text.
            Defaults to a Qwen-style template when the VLM has none.
        audio_pool_stride (`int`, defaults to 2): the model's pooling after the encoder (25 tokens per second).
        max_audio_windows (`int`, defaults to 4): windows kept per audio; longer audio is cut with a warning.
        vlm_family (`str`, defaults to `"qwen2_5_vl"`): the VLM's `model_type`, which selects its backbone adapter.
        vlm_processor_settings (`dict`, *optional*): the family processor's own settings (LLaVA: `patch_size`,
            `vision_feature_select_strategy`, `num_additional_image_tokens`).
        pad_audio_to_window (`bool`, defaults to `True`): pad every audio window to the encoder's full window (real
            Whisper: 30 s) as Whisper was trained. `False` pads only to the longest window of the batch, so a 2 s clip
            does not pay for 28 s of padding; the model then runs Whisper on the shorter input with a prefix of its
            position table (its effect on the encoder's states is measured in benchmarks/RESULTS.md).

    Example:

    ```python
    >>> import numpy as np
    >>> from vaemotion.tiny import build_tiny_processor

    >>> processor = build_tiny_processor()
    >>> messages = [{"role": "user", "content": [{"type": "audio"}, {"type": "text", "text": "what is the mood ?"}]}]
    >>> prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    >>> one_second = {"array": np.zeros(16000, dtype=np.float32), "sampling_rate": 16000}
    >>> inputs = processor(text=prompt, audio=[one_second], return_tensors="pt")
    >>> (inputs["input_ids"] == processor.audio_token_id).sum().item()  # 25 tokens per second
    25
    >>> inputs["input_features"].shape
    torch.Size([1, 16, 3000])
    ```
    """

    def __init__(
        self,
        image_processor=None,
        tokenizer=None,
        video_processor=None,
        feature_extractor=None,
        chat_template=None,
        audio_pool_stride=2,
        max_audio_windows=4,
        vlm_family="qwen2_5_vl",
        vlm_processor_settings=None,
        pad_audio_to_window=True,
        **kwargs,
    ):
        if audio_pool_stride < 1:
            raise VAEmotionInputError(f"audio_pool_stride: must be >= 1, got {audio_pool_stride}")
        if max_audio_windows < 1:
            raise VAEmotionInputError(f"max_audio_windows: must be >= 1, got {max_audio_windows}")
        try:
            backbone = backbone_for(vlm_family)
        except ValueError as error:
            raise VAEmotionInputError(f"vlm_family: {error}") from None
        tokens = {"image_token": backbone.image_token(tokenizer), **AUDIO_SPECIAL_TOKENS}
        if backbone.takes_videos:
            tokens["video_token"] = backbone.video_token(tokenizer)
        for name, token in tokens.items():
            token_id = tokenizer.convert_tokens_to_ids(token)
            if token_id is None or token_id == tokenizer.unk_token_id:
                raise VAEmotionInputError(
                    f"tokenizer: has no {token} token; build the processor with "
                    "VAEmotionProcessor.from_vlm_and_audio_pretrained, which adds the audio tokens"
                )
            setattr(self, name, token)
            setattr(self, f"{name}_id", token_id)
        if not backbone.takes_videos:
            self.video_token, self.video_token_id = None, None
        self.audio_pool_stride = audio_pool_stride
        self.max_audio_windows = max_audio_windows
        self.vlm_family = vlm_family
        self.vlm_processor_settings = dict(vlm_processor_settings or {})
        self.pad_audio_to_window = pad_audio_to_window
        template = chat_template_of(tokenizer, chat_template)
        super().__init__(image_processor, tokenizer, video_processor, feature_extractor, chat_template=template, **kwargs)

    @property
    def generation_prompt_ids(self) -> list[int]:
        """Token ids that open the assistant's turn in this processor's chat template (`add_generation_prompt`):
        the model's `config.generation_prompt_ids`, where the Emotion Supervisor reads the prompt."""
        return generation_prompt_ids(self.tokenizer, self.chat_template)

    @property
    def backbone(self):
        """What differs in this VLM family (vaemotion/backbones.py)."""
        return backbone_for(self.vlm_family)

    @cached_property
    def vlm_processor(self):
        """The VLM family's own processor over these parts: it expands image and video placeholders."""
        return self.backbone.build_vlm_processor(
            self.image_processor, self.tokenizer, self.video_processor, self.vlm_processor_settings
        )

    @property
    def frame_multiple(self) -> int:
        """Frames a video is sampled in multiples of (the VLM's temporal patch size; 1 without one)."""
        return self.backbone.frame_multiple(self.video_processor)

    @classmethod
    def from_vlm_and_audio_pretrained(cls, vlm_path, audio_path, **kwargs) -> VAEmotionProcessor:
        """Build the processor from a VLM checkpoint (its own processor: tokenizer, image and video processors,
        chat template, family settings) and an audio encoder.

        The VLM's tokenizer gets the three audio tokens (`vaemotion.backbones.load_vlm_tokenizer`, the same call
        [`VAEmotionForConditionalGeneration.from_vlm_and_audio_pretrained`] makes, so both get the same ids). The
        feature extractor is the audio checkpoint's own, or a [`WhisperFeatureExtractor`] built from its config;
        either way its mel bins must equal the encoder's `num_mel_bins` and its window must fill the encoder's
        `max_source_positions`.

        Args:
            vlm_path (`str` or `os.PathLike`): a VLM checkpoint directory or hub id of a supported family.
            audio_path (`str` or `os.PathLike`): a Whisper checkpoint directory or hub id.
            kwargs: `chat_template`, `audio_pool_stride`, `max_audio_windows`, `pad_audio_to_window`.
        """
        family = AutoConfig.from_pretrained(vlm_path).model_type
        try:
            backbone = backbone_for(family)
        except ValueError as error:
            raise VAEmotionInputError(f"vlm_path: {error}") from None
        vlm_processor = AutoProcessor.from_pretrained(vlm_path)
        if not hasattr(vlm_processor, "image_processor"):
            raise VAEmotionInputError(
                f"vlm_path: {vlm_path} has no image processor (AutoProcessor gave a {type(vlm_processor).__name__}); "
                "save the VLM's processor there"
            )
        tokenizer = load_vlm_tokenizer(vlm_path)
        video_processor = getattr(vlm_processor, "video_processor", None)
        if video_processor is None:
            video_processor = _stand_in_video_processor(vlm_processor.image_processor)
        kwargs.setdefault("chat_template", getattr(vlm_processor, "chat_template", None) or tokenizer.chat_template)
        return cls(
            image_processor=vlm_processor.image_processor,
            tokenizer=tokenizer,
            video_processor=video_processor,
            feature_extractor=_feature_extractor_for_encoder(audio_path),
            vlm_family=family,
            vlm_processor_settings=backbone.processor_settings(vlm_processor),
            **kwargs,
        )

    def to_dict(self) -> dict:
        # What this object derives from its parts is not configuration: keep it out of the (deep-copied) dict.
        derived = {key: self.__dict__.pop(key) for key in ("vlm_processor", "_template_takes_parts_cache") if key in self.__dict__}
        try:
            return super().to_dict()
        finally:
            self.__dict__.update(derived)

    # ------------------------------------------------------------------------------------------------ chat template
    def apply_chat_template(
        self,
        conversation,
        chat_template=None,
        add_generation_prompt: bool = False,
        continue_final_message: bool = False,
        tokenize: bool = False,
        return_dict: bool = False,
        return_tensors=None,
        load_audio_from_video: bool | None = None,
        processor_kwargs: dict | None = None,
        use_audio_in_video: bool | None = None,
        **kwargs,
    ):
        """Render (and with `tokenize=True`, process) conversations with typed parts in the VLM's own template.

        Parts are `{"type": "text", "text": ...}`, `{"type": "image", "image"|"path"|"url": ...}`,
        `{"type": "video", "path"|"video": ...}` and `{"type": "audio", "path"|"audio": ...}`. Images and videos
        are written the way the VLM's template writes them (a family without a video pathway gets one image block
        per sampled frame); audio parts become `<|audio_bos|><|audio_pad|><|audio_eos|>` text. As in transformers'
        omni-modal processors, with `load_audio_from_video=True` an empty audio part (`{"type": "audio"}`, no
        source) right after a video holds that video's soundtrack; a video without one is seen without its sound,
        so one batch can mix both. (The deprecated `use_audio_in_video=True` writes that part after every video.) The
        template's own system prompt and turn markup are kept. A template that only takes string contents gets the
        parts joined into one string.

        With `tokenize=True` media given as paths are decoded by [`~vaemotion.media.load_video`] /
        [`~vaemotion.media.load_audio`]; pass audio arrays as `{"array", "sampling_rate"}` dicts. `num_frames` /
        `fps` (in `processor_kwargs`, or as keyword arguments like `padding`) choose the frames sampled from videos;
        keyword arguments that the template does not read go to the processor.
        """
        batched = bool(conversation) and isinstance(conversation[0], (list, tuple))
        conversations = list(conversation) if batched else [conversation]
        soundtrack_after_every_video = bool(use_audio_in_video)
        load_audio_from_video = _audio_from_video_switch(load_audio_from_video, use_audio_in_video)
        # the parts say which audio slot holds which video's sound: no placeholder is left to the text rule
        sources = None
        if load_audio_from_video:
            sources = _conversation_slot_sources(conversations, soundtrack_after_every_video)
        if sources is not None and not soundtrack_after_every_video and set(sources) <= {None}:
            raise VAEmotionInputError(
                "conversation: load_audio_from_video=True, but no video is followed by an empty audio part "
                '({"type": "audio"}), which is where its sound goes'
            )
        template = chat_template or self.chat_template
        # processing kwargs given at the top level (padding, num_frames, ...) go to the processor, as transformers does
        template_variables = _template_variables(template)
        call = {key: value for key, value in kwargs.items() if key not in template_variables}
        template_kwargs = {key: value for key, value in kwargs.items() if key in template_variables}
        texts = [
            self.tokenizer.apply_chat_template(
                self._template_conversation(conv, template, soundtrack_after_every_video),
                chat_template=template,
                add_generation_prompt=add_generation_prompt,
                continue_final_message=continue_final_message,
                tokenize=False,
                **template_kwargs,
            )
            for conv in conversations
        ]
        if not tokenize:
            return texts if batched else texts[0]
        call.update(processor_kwargs or {})
        call.setdefault("return_tensors", None if return_tensors == "auto" else return_tensors)
        bos = self.tokenizer.bos_token
        if bos and all(text.startswith(bos) for text in texts):
            call.setdefault("add_special_tokens", False)  # the template wrote the BOS already
        media = {key: value for key, value in _media_from_conversations(conversations).items() if value}
        for key, value in media.items():
            if key in call:
                raise VAEmotionInputError(f"{key}: given both in the conversation and as an argument")
            call[key] = value
        if sources is not None:
            call.setdefault("audio_from_video_indices", sources)
        inputs = self(text=texts, load_audio_from_video=load_audio_from_video, **call)
        return inputs if return_dict else inputs["input_ids"]

    def _template_conversation(self, conversation, template: str, soundtrack_after_every_video: bool) -> list[dict]:
        """The conversation as the VLM's template can render it: audio parts (empty ones: soundtracks) as text,
        videos as the family writes them, everything joined into one string for a template without typed parts."""
        # the fallback template writes Qwen's vision tokens for typed parts: every family gets its own as text instead
        string_contents = template == DEFAULT_CHAT_TEMPLATE or not self._template_takes_parts(template)
        rendered = []
        for index, message in enumerate(conversation):
            content = message.get("content")
            if content is None or isinstance(content, str):
                rendered.append(message)
                continue
            parts = []
            for position, part in enumerate(content):
                kind = part.get("type") if isinstance(part, dict) else None
                if kind == "text":
                    parts.append(part)
                elif kind == "image":
                    parts.append(_text_part(self.backbone.image_text(self.tokenizer)) if string_contents else part)
                elif kind == "video":
                    typed = self.backbone.takes_videos and not string_contents
                    parts.append(part if typed else _text_part(self.backbone.video_text(self.tokenizer)))
                    if soundtrack_after_every_video and not _is_soundtrack_part(content, position + 1):
                        parts.append(_text_part(AUDIO_BLOCK))
                elif kind == "audio":
                    parts.append(_text_part(AUDIO_BLOCK))
                else:
                    raise VAEmotionInputError(
                        f"conversation: message {index} has a part of type {kind!r}; parts are text, image, video, audio"
                    )
            if string_contents:
                parts = "".join(part["text"] for part in parts)
            rendered.append({**message, "content": parts})
        return rendered

    def _template_takes_parts(self, template: str) -> bool:
        """Whether a chat template renders typed content parts (a VLM's) or only string contents (a text LLM's,
        which prints a list as its Python repr, or fails concatenating it, as SmolLM2's does): found by rendering a
        probe once per template."""
        known = self.__dict__.setdefault("_template_takes_parts_cache", {})
        if template not in known:
            probe = "vaemotion-probe-7f3a"
            conversation = [{"role": "user", "content": [{"type": "text", "text": probe}]}]
            try:
                text = self.tokenizer.apply_chat_template(conversation, chat_template=template, tokenize=False)
            except Exception:  # noqa: BLE001 - any failure on a typed part means the template wants strings
                text = ""
            known[template] = probe in text and "'type'" not in text
        return known[template]

    # ------------------------------------------------------------------------------------------------ processing
    def __call__(
        self, images=None, text=None, videos=None, audio=None, audio_from_video_indices=None,
        load_audio_from_video: bool | None = None, use_audio_in_video: bool | None = None, **kwargs,
    ):  # fmt: skip
        """Process a batch; see the class docstring for the inputs and outputs.

        Audio arrays need their rate: pass `{"array", "sampling_rate"}` dicts, or `sampling_rate=` for all bare
        arrays (they are resampled to the feature extractor's rate). Video paths are sampled with `num_frames` or
        `fps` (rounded down to a multiple of the VLM's temporal patch size, if it has one); frames given as arrays go
        to the family's video processor as they are (Qwen's pads an odd count by repeating the last frame).

        Sound from videos follows transformers' omni-modal processors. Each audio placeholder of the batch (in text
        order) is a slot; `audio_from_video_indices` gives each slot's source: `None` the next entry of `audio`,
        `i` the soundtrack of `videos[i]` (a path or a [`VideoClip`] decoded with its audio). Without it, under
        `load_audio_from_video=True` the first audio placeholder after a video (before the next video, in the same
        sample: where `apply_chat_template` writes an empty audio part that follows the video) takes that video's
        soundtrack, and every other placeholder takes the next standalone audio. A video without an audio stream
        loses its slot (the placeholder and its delimiters leave the text): batches may mix videos with and
        without sound. `use_audio_in_video` is the deprecated name of `load_audio_from_video`.

        Raises:
            [`VAEmotionInputError`]: undecodable media, placeholder counts that do not match the media, audio
                arrays without a sampling rate, slots that name no video or a video given as frames.
        """
        load_audio_from_video = _audio_from_video_switch(load_audio_from_video, use_audio_in_video)
        if isinstance(text, str):
            text = [text]
        if text is not None:
            text = list(text)
        return_tensors = kwargs.pop("return_tensors", None)
        max_image_pixels = kwargs.pop("max_image_pixels", DEFAULT_MAX_IMAGE_PIXELS)
        image_names = None
        if images is not None:
            image_names = _image_names(images)
            images = make_flat_list_of_images(self._fetch_images(images, max_image_pixels))
        audio, kwargs = self._load_audio(audio, kwargs)
        indices = audio_from_video_indices
        slots = sources = None
        if text is not None and (audio is not None or load_audio_from_video or indices is not None):
            slots = self._audio_slots(text)
            sources = self._slot_sources(slots, len(audio or []), load_audio_from_video, indices)
        elif indices is not None:
            raise VAEmotionInputError("audio_from_video_indices: slots are the text's audio placeholders; give the text")
        # only the videos whose sound fills a slot are probed and decoded with it (without text: all or none)
        if sources is not None:
            with_sound = set(sources) - {None}
        else:
            with_sound = None if load_audio_from_video else set()
        clips, silent, videos, kwargs = self._load_videos(videos, with_sound, kwargs)
        self._check_placeholders(text, images, videos)
        if slots is not None:
            audio, text = self._audio_in_slots(slots, sources, audio or [], clips, silent)
        elif load_audio_from_video:  # no text: the standalone audio, then the soundtracks
            audio = (audio or []) + [clip.audio for clip in clips if clip is not None and clip.audio is not None]
        audio_inputs = {}
        if audio:
            audio_inputs, blocks = self._process_audio(audio, return_tensors)
            text = self._expand_audio(text, blocks)
        if videos is not None and not self.backbone.takes_videos:
            text, images, videos = self._videos_as_frames(text, images, videos)
            kwargs.pop("videos_kwargs", None)
        try:
            vision = self.vlm_processor(images=images, text=text, videos=videos, return_tensors=return_tensors, **kwargs)
        except ValueError as error:
            culprit = self._refused_image(images, image_names)
            if culprit is None:
                raise
            name, reason = culprit
            raise VAEmotionInputError(
                f"{name}: the {self.vlm_family} image processor cannot take this picture ({reason})"
            ) from error
        data = {key: value for key, value in vision.items() if key != "mm_token_type_ids"}
        if "input_ids" in data:
            data["mm_token_type_ids"] = self._token_types(data["input_ids"])
        data.update(audio_inputs)
        return BatchFeature(data=data, tensor_type=return_tensors)

    def _token_types(self, input_ids):
        """0 text, 1 image, 2 video, 3 audio, from the ids (tensors, arrays or lists of lists)."""
        types = {self.image_token_id: IMAGE_TOKEN_TYPE, self.audio_token_id: AUDIO_TOKEN_TYPE}
        if self.video_token_id is not None:
            types[self.video_token_id] = VIDEO_TOKEN_TYPE
        if isinstance(input_ids, (torch.Tensor, np.ndarray)):
            token_types = input_ids * 0
            for token_id, token_type in types.items():
                token_types[input_ids == token_id] = token_type
            return token_types
        return [[types.get(token_id, 0) for token_id in row] for row in input_ids]

    def _refused_image(self, images, names) -> tuple[str, str] | None:
        """After the VLM's processor failed: the first picture its image processor refuses on its own (an extreme
        aspect ratio, a size below its patch), with the reason, so the error can name the file."""
        if not images:
            return None
        if names is None or len(names) != len(images):  # video frames joined the images: number them instead
            names = [f"picture {index}" for index in range(len(images))]
        for name, image in zip(names, images):
            try:
                self.image_processor(images=[image])
            except ValueError as error:
                return name, str(error)
        return None

    def _fetch_images(self, images, max_pixels: int | None):
        """Image paths and PIL images through [`~vaemotion.media.load_image`] (the package's errors, the pixel
        limit read from the header, 16-bit pictures scaled); arrays as they are; URLs through transformers."""
        if isinstance(images, (list, tuple)):
            return [self._fetch_images(image, max_pixels) for image in images]
        if isinstance(images, str) and images.startswith(("http://", "https://")):
            return self.image_processor.fetch_images(images)
        if isinstance(images, (str, os.PathLike)) or _is_pil_image(images):
            return load_image(images, max_pixels=max_pixels)
        return images

    def _load_videos(self, videos, with_sound: set[int] | None, kwargs: dict):
        """Decode video paths into frames + metadata, each video in `with_sound` (`None`: every video) with its
        soundtrack where the file has one; returns `(VideoClip or None per video, indices of those video files
        without sound, videos, kwargs)`."""
        flat = _flatten_batch(videos, (str, os.PathLike, VideoClip))
        if flat is None:
            return ([None] * len(make_batched_videos(videos)) if videos is not None else []), set(), videos, kwargs
        kwargs = dict(kwargs)
        videos_kwargs = dict(kwargs.pop("videos_kwargs", None) or {})
        sampling = {
            key: videos_kwargs.pop(key, kwargs.pop(key, None)) for key in ("num_frames", "fps", "video_metadata")
        }
        given_metadata = sampling.pop("video_metadata")
        # Sampling is decided here (the frames passed on are final), whatever apply_chat_template set.
        videos_kwargs.pop("do_sample_frames", None)
        kwargs.pop("do_sample_frames", None)
        if sampling["num_frames"] is None and sampling["fps"] is None:
            sampling["num_frames"] = (
                getattr(self.video_processor, "num_frames", None) if self.backbone.takes_videos
                else self.backbone.default_num_frames
            )
            if sampling["num_frames"] is None:
                sampling["fps"] = getattr(self.video_processor, "fps", None) or DEFAULT_VIDEO_FPS
        clips, silent, frames, metadata = [], set(), [], []
        for index, video in enumerate(flat):
            clip = video
            if isinstance(video, (str, os.PathLike)):
                sound = with_sound is None or index in with_sound
                if sound and not has_audio_stream(video):
                    silent.add(index)  # a silent file loses its slot, not the batch
                clip = load_video(
                    video,
                    **sampling,
                    with_audio=sound and index not in silent,
                    sampling_rate=self.feature_extractor.sampling_rate,
                    frame_multiple=self.frame_multiple,
                )
            if isinstance(clip, VideoClip):
                frames.append(clip.frames)
                metadata.append(clip.metadata)
            else:
                frames.append(video)
                metadata.append(given_metadata[index] if given_metadata else _default_metadata(video))
            clips.append(clip if isinstance(clip, VideoClip) else None)
        # Frames are sampled already: the video processor must keep them all and read fps from the metadata.
        kwargs["videos_kwargs"] = {**videos_kwargs, "video_metadata": metadata, "do_sample_frames": False}
        return clips, silent, frames, kwargs

    def _load_audio(self, audio, kwargs: dict):
        """Decode audio paths, dicts and arrays to mono float32 at the feature extractor's rate."""
        if audio is None:
            return None, kwargs
        kwargs = dict(kwargs)
        audio_kwargs = dict(kwargs.pop("audio_kwargs", None) or {})
        source_rate = audio_kwargs.pop("sampling_rate", kwargs.pop("sampling_rate", None))
        if audio_kwargs:
            kwargs["audio_kwargs"] = audio_kwargs
        target_rate = self.feature_extractor.sampling_rate
        loaded = []
        for index, item in enumerate(_flatten_batch(audio, (str, os.PathLike, dict, np.ndarray)) or [audio]):
            if not isinstance(item, (str, os.PathLike, dict)) and source_rate is None:
                raise VAEmotionInputError(
                    f"audio[{index}]: an audio array has no sampling rate; pass sampling_rate=... or "
                    "{'array': ..., 'sampling_rate': ...} dicts"
                )
            try:
                loaded.append(load_audio(item, target_rate, source_sampling_rate=source_rate))
            except VAEmotionInputError as error:
                raise VAEmotionInputError(f"audio[{index}]: {error}") from None
        return loaded, kwargs

    def _check_placeholders(self, text, images, videos):
        if text is None:
            return
        video_placeholder = self.video_token if self.backbone.takes_videos else VIDEO_FRAMES_MARKER
        counts = {
            "images": (self.image_token, 0 if images is None else len(images)),
            "videos": (video_placeholder, 0 if videos is None else len(make_batched_videos(videos))),
        }
        for argument, (token, given) in counts.items():
            found = sum(sample.count(token) for sample in text)
            if found != given:
                raise VAEmotionInputError(f"{argument}: the text has {found} {token} placeholders but {given} were given")

    def _slot_sources(self, slots: _AudioSlots, num_audio: int, load_audio_from_video: bool, indices) -> list:
        """Each slot's source (see `__call__`): `audio_from_video_indices`, checked, or the rule on the text."""
        if indices is not None:
            return _checked_slot_indices(indices, slots, num_audio)
        sources = [video if load_audio_from_video else None for video in slots.videos_before]
        if sources.count(None) != num_audio:
            note = (f" ({len(sources) - sources.count(None)} follow a video and take its soundtrack: "
                    "pass audio_from_video_indices to say which slot is whose)") if load_audio_from_video else ""
            raise VAEmotionInputError(
                f"audio: the text has {len(sources)} {self.audio_token} placeholders{note} but {num_audio} "
                "audio inputs were given"
            )
        return sources

    def _audio_in_slots(self, slots: _AudioSlots, sources: list, audio: list, clips: list, silent: set):
        """The audio of every slot in placeholder order, and the text without the slots of silent video files."""
        standalone, ordered, kept = iter(audio), [], []
        for video in sources:
            if video is None:
                ordered.append(next(standalone))
                kept.append(True)
                continue
            if clips[video] is None:
                raise VAEmotionInputError(
                    f"videos[{video}]: its soundtrack was asked for, which needs a path or a VideoClip, not decoded frames"
                )
            if clips[video].audio is None and video not in silent:
                raise VAEmotionInputError(
                    f"videos[{video}]: its soundtrack was asked for, but the VideoClip has no audio (decode it with "
                    "with_audio=True)"
                )
            if video not in silent:
                ordered.append(clips[video].audio)
            kept.append(video not in silent)
        return ordered, slots.text_keeping(kept)

    def _audio_slots(self, text: list[str]) -> _AudioSlots:
        """Where the audio placeholders (with their delimiters, if any) and the videos are in the batch's text."""
        video_placeholder = self.video_token if self.backbone.takes_videos else VIDEO_FRAMES_MARKER
        bos, eos = (re.escape(AUDIO_SPECIAL_TOKENS[name]) for name in ("audio_bos_token", "audio_eos_token"))
        pattern = re.compile(
            f"(?P<video>{re.escape(video_placeholder)})|(?P<audio>(?:{bos})?{re.escape(self.audio_token)}(?:{eos})?)"
        )
        spans, videos_before, video_sample, slot_sample = [], [], [], []
        for sample_index, sample in enumerate(text):
            last_video = None  # the last video of this sample whose first following placeholder is still to come
            for match in pattern.finditer(sample):
                if match.lastgroup == "video":
                    last_video = len(video_sample)
                    video_sample.append(sample_index)
                    continue
                spans.append((sample_index, match.span()))
                slot_sample.append(sample_index)
                videos_before.append(last_video)
                last_video = None
        return _AudioSlots(text, spans, videos_before, video_sample, slot_sample)

    def _process_audio(self, audio: list, return_tensors) -> tuple[dict, list[str]]:
        """Log-mel windows of every audio (in placeholder order) and the placeholder text each audio becomes."""
        windows, windows_per_audio = self._split_into_windows(audio)
        # Whisper's stock encoder takes exactly one window: pad to it (or, with pad_audio_to_window=False, only to the
        # batch's longest window) and keep the mask of valid frames.
        padding = "max_length" if self.pad_audio_to_window else "longest"
        features = self.feature_extractor(
            windows, sampling_rate=self.feature_extractor.sampling_rate, return_attention_mask=True,
            padding=padding, truncation=self.pad_audio_to_window, return_tensors=return_tensors,
        )  # fmt: skip
        mask = features.pop("attention_mask")
        window_tokens = [num_audio_tokens(int(frames), self.audio_pool_stride) for frames in np.asarray(mask).sum(-1)]
        bounds = np.cumsum([0, *windows_per_audio]).tolist()
        blocks = [
            (self.audio_eos_token + self.audio_bos_token).join(self.audio_token * count for count in window_tokens[start:stop])
            for start, stop in zip(bounds, bounds[1:])
        ]
        return {"input_features": features["input_features"], "feature_attention_mask": mask}, blocks

    def _split_into_windows(self, audio: list) -> tuple[list, list[int]]:
        window = self.feature_extractor.n_samples
        windows, windows_per_audio = [], []
        for index, samples in enumerate(audio):
            count = math.ceil(len(samples) / window)
            if count > self.max_audio_windows:
                logger.warning(
                    f"audio[{index}]: {len(samples) / self.feature_extractor.sampling_rate:.1f}s is longer than "
                    f"max_audio_windows={self.max_audio_windows} windows of {self.feature_extractor.chunk_length}s; "
                    "the rest is dropped"
                )
                count = self.max_audio_windows
            windows.extend(samples[start * window : (start + 1) * window] for start in range(count))
            windows_per_audio.append(count)
        return windows, windows_per_audio

    def _expand_audio(self, text, blocks: list[str]):
        """Each audio placeholder of the batch (in order) replaced by its audio's blocks."""
        if text is None:
            return None
        remaining = iter(blocks)
        pattern = re.compile(re.escape(self.audio_token))
        return [pattern.sub(lambda _: next(remaining), sample) for sample in text]

    def _videos_as_frames(self, text, images, videos):
        """For a family without a video pathway: every video marker becomes one image block per sampled frame, and
        the frames join the images in text order."""
        if text is None:
            raise VAEmotionInputError(
                f"text: a {self.vlm_family} model sees a video as its frames, each an image block in the text; "
                "give the text (e.g. from apply_chat_template)"
            )
        pattern = re.compile(f"(?P<image>{re.escape(self.image_token)})|(?P<video>{re.escape(VIDEO_FRAMES_MARKER)})")
        given_images, given_videos = iter(images or []), iter(make_batched_videos(videos))
        ordered, expanded = [], []
        for sample in text:

            def replace(match):
                if match.lastgroup == "image":
                    ordered.append(next(given_images))
                    return match.group(0)
                frames = list(next(given_videos))
                ordered.extend(frames)
                return self.backbone.frames_text(self.tokenizer, len(frames))

            expanded.append(pattern.sub(replace, sample))
        return expanded, ordered or None, None

    @property
    def model_input_names(self) -> list[str]:
        names = self.vlm_processor.model_input_names + ["mm_token_type_ids", "input_features", "feature_attention_mask"]
        return list(dict.fromkeys(names))


def _image_names(images) -> list[str]:
    """How errors name each picture of an `images` argument, in the flat order the processor uses: its path, or
    its position."""
    flat = []

    def visit(item):
        if isinstance(item, (list, tuple)):
            for inner in item:
                visit(inner)
        else:
            flat.append(os.fspath(item) if isinstance(item, (str, os.PathLike)) else f"images[{len(flat)}]")

    visit(images)
    return flat


def _is_pil_image(item) -> bool:
    from PIL import Image

    return isinstance(item, Image.Image)


def _flatten_batch(items, leaf_types: tuple) -> list | None:
    """A flat list when `items` holds `leaf_types` (alone, in a list, or in per-sample lists), else None."""
    if items is None:
        return None
    if isinstance(items, leaf_types):
        return [items]
    if not isinstance(items, (list, tuple)):
        return None
    flat = []
    for item in items:
        if isinstance(item, (list, tuple)) and all(isinstance(leaf, leaf_types) for leaf in item):
            flat.extend(item)  # one sample's list (possibly empty) in a batch
        else:
            flat.append(item)
    return flat if any(isinstance(item, leaf_types) for item in flat) else None


@dataclass(frozen=True)
class _AudioSlots:
    """The audio placeholders of a batch's text, in order: each one's sample and span, and the video whose soundtrack
    it takes by default (the last video before it in its sample with no placeholder in between; else `None`)."""

    text: list[str]
    spans: list[tuple[int, tuple[int, int]]]
    videos_before: list[int | None]
    video_sample: list[int]
    slot_sample: list[int]

    def text_keeping(self, kept: list[bool]) -> list[str]:
        """The text without the placeholders (and their delimiters) of the slots not kept."""
        text = list(self.text)
        for (sample, (start, end)), keep in reversed(list(zip(self.spans, kept))):
            if not keep:
                text[sample] = text[sample][:start] + text[sample][end:]
        return text


def _checked_slot_indices(indices, slots: _AudioSlots, num_audio: int) -> list[int | None]:
    """`audio_from_video_indices`, checked against the text's slots and videos and the audio given."""
    if isinstance(indices, (str, bytes)) or not isinstance(indices, (list, tuple)):
        raise VAEmotionInputError(
            f"audio_from_video_indices: must be a list with one entry per audio placeholder (None or a video index), "
            f"got {type(indices).__name__}"
        )
    indices, num_videos = list(indices), len(slots.video_sample)
    if len(indices) != len(slots.spans):
        raise VAEmotionInputError(
            f"audio_from_video_indices: has {len(indices)} entries but the text has {len(slots.spans)} audio placeholders"
        )
    for slot, video in enumerate(indices):
        if video is None:
            continue
        if isinstance(video, bool) or not isinstance(video, (int, np.integer)) or not 0 <= video < num_videos:
            raise VAEmotionInputError(
                f"audio_from_video_indices[{slot}]: must be None or a video index in [0, {num_videos}), got {video!r}"
            )
        if slots.video_sample[video] != slots.slot_sample[slot]:
            raise VAEmotionInputError(
                f"audio_from_video_indices[{slot}]: videos[{video}] is in sample {slots.video_sample[video]}, its "
                f"slot in sample {slots.slot_sample[slot]}"
            )
    named = [video for video in indices if video is not None]
    if len(set(named)) != len(named):
        raise VAEmotionInputError(f"audio_from_video_indices: a video's soundtrack can fill one slot, got {indices}")
    if indices.count(None) != num_audio:
        raise VAEmotionInputError(
            f"audio_from_video_indices: has {indices.count(None)} standalone slots (None) but {num_audio} audio inputs "
            "were given"
        )
    return [None if video is None else int(video) for video in indices]


def _audio_from_video_switch(load_audio_from_video: bool | None, use_audio_in_video: bool | None) -> bool:
    """`load_audio_from_video`, or the deprecated `use_audio_in_video` (transformers 5.24 deprecates it on its own
    processors, its removal announced for 5.25), with a warning."""
    if use_audio_in_video is None:
        return bool(load_audio_from_video)
    if use_audio_in_video:
        warnings.warn(
            "use_audio_in_video is deprecated, as in transformers' omni-modal processors: pass load_audio_from_video "
            "(and, in conversations, an empty audio part after each video whose sound is wanted)",
            FutureWarning,
            stacklevel=3,
        )
    if load_audio_from_video is not None and bool(load_audio_from_video) != bool(use_audio_in_video):
        raise VAEmotionInputError("load_audio_from_video and its deprecated name use_audio_in_video disagree")
    return bool(use_audio_in_video)


def _template_variables(template: str) -> set[str]:
    """The variables a chat template reads (besides the conversation), as transformers finds them."""
    from jinja2 import Environment, meta

    return set(meta.find_undeclared_variables(Environment().parse(template)))


def _text_part(text: str) -> dict:
    return {"type": "text", "text": text}


def _is_soundtrack_part(content: list, position: int) -> bool:
    """Whether `content[position]` is an empty audio part right after a video: the slot of its soundtrack."""
    if not 0 < position < len(content):
        return False
    part, before = content[position], content[position - 1]
    return (
        isinstance(part, dict) and part.get("type") == "audio" and not any(key in part for key in MEDIA_KEYS["audio"])
        and isinstance(before, dict) and before.get("type") == "video"
    )  # fmt: skip


def _conversation_slot_sources(conversations, soundtrack_after_every_video: bool) -> list[int | None]:
    """`audio_from_video_indices` of rendered conversations: for each audio part in order (with the parts the
    deprecated `use_audio_in_video` adds), the index of the video whose sound it holds, or `None` for audio of its
    own."""
    sources, videos = [], 0
    for conversation in conversations:
        for message in conversation:
            content = message.get("content") if isinstance(message, dict) else None
            if isinstance(content, str) or not content:
                continue
            for position, part in enumerate(content):
                kind = part.get("type") if isinstance(part, dict) else None
                if kind == "video":
                    videos += 1
                    if soundtrack_after_every_video and not _is_soundtrack_part(content, position + 1):
                        sources.append(videos - 1)
                elif kind == "audio":
                    sources.append(videos - 1 if _is_soundtrack_part(content, position) else None)
    return sources


def _media_from_conversations(conversations) -> dict:
    """The media of typed parts, in conversation order (paths stay paths: `__call__` decodes them once)."""
    media = {"images": [], "videos": [], "audio": []}
    argument = {"image": "images", "video": "videos", "audio": "audio"}
    for conversation in conversations:
        for message in conversation:
            content = message.get("content")
            if isinstance(content, str) or not content:
                continue
            for part in content:
                kind = part.get("type")
                if kind in MEDIA_KEYS:
                    media[argument[kind]].extend(part[key] for key in MEDIA_KEYS[kind] if key in part)
    return media


def _stand_in_video_processor(image_processor):
    """For a family without a video pathway: a video processor with the image processor's settings, which is never
    called (frames go through the image processor) but fills the processor's video part."""
    from transformers import LlavaOnevisionVideoProcessor

    settings = {key: getattr(image_processor, key) for key in ("size", "crop_size", "image_mean", "image_std",
                                                                  "do_center_crop", "resample") if hasattr(image_processor, key)}  # fmt: skip
    return LlavaOnevisionVideoProcessor(**{key: value for key, value in settings.items() if value is not None})


def _default_metadata(frames) -> dict:
    # What transformers assumes for frames without metadata: all frames kept, unknown fps.
    return {"total_num_frames": len(frames), "fps": None, "frames_indices": list(range(len(frames)))}


def _feature_extractor_for_encoder(audio_path) -> WhisperFeatureExtractor:
    config = AutoConfig.from_pretrained(audio_path)
    window_frames = 2 * config.max_source_positions  # the encoder's stride-2 convolution halves the mel frames
    try:
        extractor = AutoFeatureExtractor.from_pretrained(audio_path)
    except OSError:  # an encoder saved without its feature extractor: build the one it expects
        hop_length = WhisperFeatureExtractor().hop_length
        seconds, remainder = divmod(window_frames * hop_length, 16000)
        if remainder:
            raise VAEmotionInputError(
                f"audio_path: max_source_positions={config.max_source_positions} is not a whole number of seconds"
            ) from None
        return WhisperFeatureExtractor(feature_size=config.num_mel_bins, chunk_length=seconds)
    if extractor.feature_size != config.num_mel_bins or extractor.nb_max_frames != window_frames:
        raise VAEmotionInputError(
            f"audio_path: the feature extractor gives {extractor.feature_size} mel bins x {extractor.nb_max_frames} "
            f"frames but the encoder takes {config.num_mel_bins} x {window_frames}"
        )
    return extractor


__all__ = ["VAEmotionProcessor", "AUDIO_BLOCK", "AUDIO_SPECIAL_TOKENS", "DEFAULT_CHAT_TEMPLATE"]
