# Copyright 2026 The VAEmotion Authors. Licensed under the Apache License, Version 2.0.
"""VAEmotion processor: Qwen2.5-VL's image/video processing plus a Whisper audio pathway.

Flat module with relative imports only: it is copied into hub checkpoints as remote code.
"""

from __future__ import annotations

import math
import os
import re

import numpy as np
from transformers import (
    AutoConfig,
    AutoFeatureExtractor,
    AutoImageProcessor,
    AutoTokenizer,
    AutoVideoProcessor,
    Qwen2_5_VLProcessor,
    WhisperFeatureExtractor,
)
from transformers.image_utils import make_flat_list_of_images
from transformers.processing_utils import ProcessingKwargs, ProcessorMixin
from transformers.utils import logging
from transformers.video_utils import make_batched_videos

from .configuration_vaemotion import num_audio_tokens
from .media import VAEmotionInputError, VideoClip, load_audio, load_video


logger = logging.get_logger(__name__)

# The three tokens VAEmotion adds to a VLM's tokenizer, under the names transformers exposes them by
# (`tokenizer.audio_token`, `tokenizer.audio_token_id`, ...).
AUDIO_SPECIAL_TOKENS = {
    "audio_token": "<|audio_pad|>",
    "audio_bos_token": "<|audio_bos|>",
    "audio_eos_token": "<|audio_eos|>",
}

# Qwen-style turns with typed parts. A video's soundtrack (`use_audio_in_video=True`) gets its own audio block
# right after the video block: the processor fills the first audio placeholder after each video with that video's
# audio, so the model hears the clip where it sees it.
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
    "{% if use_audio_in_video %}<|audio_bos|><|audio_pad|><|audio_eos|>{% endif %}"
    "{% elif part['type'] == 'audio' %}"
    "<|audio_bos|><|audio_pad|><|audio_eos|>"
    "{% elif part['type'] == 'text' %}"
    "{{ part['text'] }}"
    "{% endif %}"
    "{% endfor %}"
    "{% endif %}"
    "<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# Video sampling when the call names neither `num_frames` nor `fps` and the video processor has no default:
# 2 frames per second, as qwen-vl-utils samples for Qwen2.5-VL.
DEFAULT_VIDEO_FPS = 2.0


class VAEmotionProcessingKwargs(ProcessingKwargs, total=False):
    use_audio_in_video: bool


class VAEmotionProcessor(Qwen2_5_VLProcessor):
    r"""Builds VAEmotion's model inputs from text, images, videos and audio.

    Images and videos go through the VLM's processors exactly as in [`Qwen2_5_VLProcessor`]. Audio is loaded with
    [`~vaemotion.media.load_audio`], cut into consecutive windows of the feature extractor's length (30 s for real
    Whisper), at most `max_audio_windows` per audio, and each window becomes its own placeholder block of
    `num_audio_tokens(valid mel frames, audio_pool_stride)` `<|audio_pad|>` tokens; consecutive windows are separated
    by `<|audio_eos|><|audio_bos|>`. Short audio is not padded into extra tokens.

    Videos can be paths (decoded with [`~vaemotion.media.load_video`], never torchcodec-only), [`VideoClip`]s, or
    frames as transformers accepts them. With `use_audio_in_video=True` each video's soundtrack, synchronized with
    its sampled frames, fills the first audio placeholder that follows the video in the text (the chat template
    writes one right after each video block).

    Outputs: `input_ids`, `attention_mask`, `mm_token_type_ids` (0 text, 1 image, 2 video, 3 audio), `pixel_values`,
    `image_grid_thw`, `pixel_values_videos`, `video_grid_thw`, `second_per_grid_ts`, `input_features`
    `(num_windows, n_mels, window_frames)` and `feature_attention_mask` `(num_windows, window_frames)`, windows in
    the order of their placeholder blocks in the batch.

    Args:
        image_processor ([`Qwen2VLImageProcessor`]): the VLM's image processor.
        tokenizer ([`PreTrainedTokenizerBase`]): the VLM's tokenizer with `<|audio_bos|>`, `<|audio_pad|>` and
            `<|audio_eos|>` (see [`~VAEmotionProcessor.from_vlm_and_audio_pretrained`]).
        video_processor ([`Qwen2VLVideoProcessor`]): the VLM's video processor.
        feature_extractor ([`WhisperFeatureExtractor`]): log-mel features for the audio encoder.
        chat_template (`str`, *optional*): defaults to a Qwen-style template with image, video and audio parts.
        audio_pool_stride (`int`, defaults to 2): the model's pooling after the encoder (25 tokens per second).
        max_audio_windows (`int`, defaults to 4): windows kept per audio; longer audio is cut with a warning.

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

    valid_processor_kwargs = VAEmotionProcessingKwargs

    def __init__(
        self,
        image_processor=None,
        tokenizer=None,
        video_processor=None,
        feature_extractor=None,
        chat_template=None,
        audio_pool_stride=2,
        max_audio_windows=4,
        **kwargs,
    ):
        if audio_pool_stride < 1:
            raise VAEmotionInputError(f"audio_pool_stride: must be >= 1, got {audio_pool_stride}")
        if max_audio_windows < 1:
            raise VAEmotionInputError(f"max_audio_windows: must be >= 1, got {max_audio_windows}")
        for name, default in (
            ("image_token", "<|image_pad|>"),
            ("video_token", "<|video_pad|>"),
            *AUDIO_SPECIAL_TOKENS.items(),
        ):
            token = getattr(tokenizer, name, None) or default
            token_id = tokenizer.convert_tokens_to_ids(token)
            if token_id is None or token_id == tokenizer.unk_token_id:
                raise VAEmotionInputError(
                    f"tokenizer: has no {token} token; build the processor with "
                    "VAEmotionProcessor.from_vlm_and_audio_pretrained, which adds the audio tokens"
                )
            setattr(self, name, token)
            setattr(self, f"{name}_id", token_id)
        self.audio_pool_stride = audio_pool_stride
        self.max_audio_windows = max_audio_windows
        # Qwen2_5_VLProcessor.__init__ only takes three sub-processors: go to the mixin directly.
        ProcessorMixin.__init__(
            self,
            image_processor,
            tokenizer,
            video_processor,
            feature_extractor,
            chat_template=chat_template or DEFAULT_CHAT_TEMPLATE,
            **kwargs,
        )

    @classmethod
    def from_vlm_and_audio_pretrained(cls, vlm_path, audio_path, **kwargs) -> VAEmotionProcessor:
        """Build the processor from a VLM checkpoint (tokenizer, image and video processors) and an audio encoder.

        The VLM's tokenizer gets the three audio tokens through `extra_special_tokens`. The feature extractor is
        the audio checkpoint's own, or a [`WhisperFeatureExtractor`] built from its config; either way its mel bins
        must equal the encoder's `num_mel_bins` and its window must fill the encoder's `max_source_positions`.

        Args:
            vlm_path (`str` or `os.PathLike`): a Qwen2.5-VL-style checkpoint directory or hub id.
            audio_path (`str` or `os.PathLike`): a Whisper checkpoint directory or hub id.
            kwargs: `chat_template`, `audio_pool_stride`, `max_audio_windows`.
        """
        # Named special tokens already in the checkpoint (e.g. `image_token`) are kept alongside these.
        tokenizer = AutoTokenizer.from_pretrained(vlm_path, extra_special_tokens=dict(AUDIO_SPECIAL_TOKENS))
        return cls(
            image_processor=AutoImageProcessor.from_pretrained(vlm_path),
            tokenizer=tokenizer,
            video_processor=AutoVideoProcessor.from_pretrained(vlm_path),
            feature_extractor=_feature_extractor_for_encoder(audio_path),
            **kwargs,
        )

    def apply_chat_template(self, conversation, chat_template=None, use_audio_in_video: bool = False, **kwargs):
        """Render (and with `tokenize=True`, process) conversations with typed parts.

        Parts are `{"type": "text", "text": ...}`, `{"type": "image", "image"|"path"|"url": ...}`,
        `{"type": "video", "path"|"video": ...}` and `{"type": "audio", "path"|"audio": ...}`. With `tokenize=True`
        media given as paths are decoded by [`~vaemotion.media.load_video`] / [`~vaemotion.media.load_audio`];
        pass audio arrays as `{"array", "sampling_rate"}` dicts. `num_frames` / `fps` (in `processor_kwargs`)
        choose the frames sampled from videos. With `use_audio_in_video=True` every video also brings its
        soundtrack, placed in an audio block right after the video block.
        """
        return super().apply_chat_template(
            conversation,
            chat_template=chat_template,
            use_audio_in_video=use_audio_in_video,  # a template variable: it places the soundtrack's block
            load_audio_from_video=use_audio_in_video,  # reaches _multimodal_inputs_from_conversations
            **kwargs,
        )

    def _multimodal_inputs_from_conversations(self, conversations, audio_loading_params, load_audio_from_video=False):
        # Media are gathered as given (paths stay paths) and decoded once, by __call__, with our loaders.
        batch_images, batch_videos, batch_audio = [], [], []
        for conversation in conversations:
            images, videos = [], []
            for message in conversation:
                content = message.get("content")
                if isinstance(content, str) or not content:
                    continue
                for part in content:
                    if part["type"] == "image":
                        images.extend(part[key] for key in ("image", "url", "path", "base64") if key in part)
                    elif part["type"] == "video":
                        videos.extend(part[key] for key in ("video", "url", "path") if key in part)
                    elif part["type"] == "audio":
                        batch_audio.extend(part[key] for key in ("audio", "url", "path") if key in part)
            batch_images.append(images)
            batch_videos.append(videos)
        return batch_images, batch_videos, batch_audio, {"use_audio_in_video": load_audio_from_video}

    def __call__(self, images=None, text=None, videos=None, audio=None, use_audio_in_video: bool = False, **kwargs):
        """Process a batch; see the class docstring for the inputs and outputs.

        Audio arrays need their rate: pass `{"array", "sampling_rate"}` dicts, or `sampling_rate=` for all bare
        arrays (they are resampled to the feature extractor's rate). Video paths are sampled with `num_frames` or
        `fps` (rounded down to a multiple of the VLM's `temporal_patch_size`); frames given as arrays with an odd
        count are padded by repeating the last frame, as Qwen's video processor does.

        Raises:
            [`VAEmotionInputError`]: undecodable media, placeholder counts that do not match the media, audio
                arrays without a sampling rate, a video without soundtrack under `use_audio_in_video=True`.
        """
        if isinstance(text, str):
            text = [text]
        if images is not None:
            images = self.image_processor.fetch_images(images)
        clips, videos, kwargs = self._load_videos(videos, use_audio_in_video, kwargs)
        audio, kwargs = self._load_audio(audio, kwargs)
        self._check_placeholders(text, images, videos)
        if audio is not None or (use_audio_in_video and clips):
            audio = self._order_audio(text, audio or [], clips, use_audio_in_video)
            kwargs["sampling_rate"] = self.feature_extractor.sampling_rate
        return super().__call__(images=images, text=text, videos=videos, audio=audio, **kwargs)

    def _load_videos(self, videos, use_audio_in_video: bool, kwargs: dict):
        """Decode video paths into frames + metadata; returns `(clips or None per video, videos, kwargs)`."""
        flat = _flatten_batch(videos, (str, os.PathLike, VideoClip))
        if flat is None:
            if use_audio_in_video and videos is not None:
                raise VAEmotionInputError(
                    "videos: use_audio_in_video=True needs videos given as paths or VideoClips, not decoded frames"
                )
            return [], videos, kwargs
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
            sampling["num_frames"] = getattr(self.video_processor, "num_frames", None)
            if sampling["num_frames"] is None:
                sampling["fps"] = getattr(self.video_processor, "fps", None) or DEFAULT_VIDEO_FPS
        clips, frames, metadata = [], [], []
        for index, video in enumerate(flat):
            clip = video
            if isinstance(video, (str, os.PathLike)):
                clip = load_video(
                    video,
                    **sampling,
                    with_audio=use_audio_in_video,
                    sampling_rate=self.feature_extractor.sampling_rate,
                    frame_multiple=self.video_processor.temporal_patch_size,
                )
            if isinstance(clip, VideoClip):
                if use_audio_in_video and clip.audio is None:
                    raise VAEmotionInputError(f"videos[{index}]: the VideoClip has no audio (decoded with_audio=False)")
                frames.append(clip.frames)
                metadata.append(clip.metadata)
            else:
                if use_audio_in_video:
                    raise VAEmotionInputError(
                        f"videos[{index}]: use_audio_in_video=True needs a path or a VideoClip, not decoded frames"
                    )
                frames.append(video)
                metadata.append(given_metadata[index] if given_metadata else _default_metadata(video))
            clips.append(clip if isinstance(clip, VideoClip) else None)
        # Frames are sampled already: the video processor must keep them all and read fps from the metadata.
        kwargs["videos_kwargs"] = {**videos_kwargs, "video_metadata": metadata, "do_sample_frames": False}
        return clips, frames, kwargs

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
        counts = {
            "images": (self.image_token, 0 if images is None else len(make_flat_list_of_images(images))),
            "videos": (self.video_token, 0 if videos is None else len(make_batched_videos(videos))),
        }
        for argument, (token, given) in counts.items():
            found = sum(sample.count(token) for sample in text)
            if found != given:
                raise VAEmotionInputError(f"{argument}: the text has {found} {token} placeholders but {given} were given")

    def _order_audio(self, text, audio: list, clips: list, use_audio_in_video: bool) -> list:
        """Audio in the order of the audio placeholders in the batch, each soundtrack at the first one after its video."""
        soundtracks = [clip.audio for clip in clips] if use_audio_in_video else []
        if text is None:
            return audio + soundtracks
        found = sum(sample.count(self.audio_token) for sample in text)
        if found != len(audio) + len(soundtracks):
            soundtrack_note = f" + {len(soundtracks)} video soundtracks (use_audio_in_video=True)" if soundtracks else ""
            raise VAEmotionInputError(
                f"audio: the text has {found} {self.audio_token} placeholders but {len(audio)} audio inputs"
                f"{soundtrack_note} were given"
            )
        standalone, soundtrack_iter = iter(audio), iter(soundtracks)
        pattern = re.compile(f"(?P<video>{re.escape(self.video_token)})|(?P<audio>{re.escape(self.audio_token)})")
        ordered = []
        for sample in text:
            pending = None  # the soundtrack of the last video, until an audio placeholder takes it
            for match in pattern.finditer(sample):
                if match.lastgroup == "video":
                    if pending is not None:
                        raise _soundtrack_without_placeholder()
                    pending = next(soundtrack_iter, None)
                elif pending is not None:
                    ordered.append(pending)
                    pending = None
                else:
                    ordered.append(next(standalone))
            if pending is not None:
                raise _soundtrack_without_placeholder()
        return ordered

    def _process_audio(self, audio, **kwargs):
        windows, windows_per_audio = self._split_into_windows(audio)
        # Whisper's encoder takes exactly one window: pad every window to it and keep the mask of valid frames.
        kwargs.update(return_attention_mask=True, padding="max_length", truncation=True)
        kwargs.pop("sampling_rate", None)
        features = self.feature_extractor(windows, sampling_rate=self.feature_extractor.sampling_rate, **kwargs)
        features["feature_attention_mask"] = features.pop("attention_mask")
        window_tokens = [
            num_audio_tokens(int(frames), self.audio_pool_stride)
            for frames in np.asarray(features["feature_attention_mask"]).sum(-1)
        ]
        bounds = np.cumsum([0, *windows_per_audio]).tolist()
        features["num_audio_tokens"] = [window_tokens[start:stop] for start, stop in zip(bounds, bounds[1:])]
        replacements = [self.replace_audio_token(features, audio_idx=index) for index in range(len(audio))]
        return features, replacements

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

    def replace_audio_token(self, audio_inputs: dict, audio_idx: int, **kwargs) -> str:
        blocks = [self.audio_token * count for count in audio_inputs["num_audio_tokens"][audio_idx]]
        return (self.audio_eos_token + self.audio_bos_token).join(blocks)

    @property
    def unused_input_names(self) -> list[str]:
        return ["num_audio_tokens"]

    @property
    def model_input_names(self) -> list[str]:
        return list(dict.fromkeys(super().model_input_names + ["feature_attention_mask"]))


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


def _soundtrack_without_placeholder() -> VAEmotionInputError:
    return VAEmotionInputError(
        "audio: with use_audio_in_video=True every video needs an audio placeholder after it, before the next video "
        "and in the same sample (the chat template writes one)"
    )


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


__all__ = ["VAEmotionProcessor", "AUDIO_SPECIAL_TOKENS", "DEFAULT_CHAT_TEMPLATE"]
