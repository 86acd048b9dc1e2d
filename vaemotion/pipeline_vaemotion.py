# Copyright 2026 The VAEmotion Authors. Licensed under the Apache License, Version 2.0.
"""The `audio-visual-emotion` pipeline: raw media in, structured emotion (and optionally a description) out.

Flat module with relative imports only: it is copied into hub checkpoints as remote code, next to the modeling and
processing files.
"""

from __future__ import annotations

import os
import types
from collections.abc import Sized
from dataclasses import dataclass
from functools import partial

import numpy as np
import torch
from torch.utils.data import DataLoader
from transformers import GenerationConfig, Pipeline
from transformers.image_utils import load_image
from transformers.pipelines.pt_utils import PipelineDataset, PipelineIterator

from .media import VAEmotionInputError, has_audio_stream, load_audio
from .media import load_image as load_media_image
from .modeling_vaemotion import EmotionPrediction


TASK = "audio-visual-emotion"
MODALITIES = ("audio_only", "visual_only", "audio_visual")
DEFAULT_PROMPT = "What emotion does this evoke? Describe the mood."
INPUT_KEYS = ("video", "image", "audio", "text")

# A path's kind is read from its extension: probing every file with a decoder would be slower and still ambiguous
# (FFmpeg opens images and many audio files as "videos").
VIDEO_EXTENSIONS = frozenset({".mp4", ".m4v", ".mkv", ".webm", ".mov", ".avi", ".mpg", ".mpeg", ".wmv", ".flv", ".ts"})
IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
AUDIO_EXTENSIONS = frozenset(
    {".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".m4a", ".aac", ".aif", ".aiff", ".wma"}
)

# Per-token model inputs and the value their padding takes; every other input is per media item and is concatenated.
SEQUENCE_PAD_VALUES = {"input_ids": None, "attention_mask": 0, "mm_token_type_ids": 0}

# Keyword arguments of a call that are generation parameters (`max_new_tokens`, `do_sample`, ...).
GENERATION_PARAMETERS = frozenset(
    {key for key in vars(GenerationConfig()) if not key.startswith("_")} | {"generation_config"}
)


@dataclass
class _Indexed:
    """One item of a batched call with its position, so that errors can say which input failed."""

    index: int
    item: object


@dataclass
class _Request:
    """What one input asks the model to perceive, after `modality` was applied."""

    text: str
    video: str | None = None
    image: object = None
    audio: np.ndarray | None = None
    soundtrack: bool = False  # the video brings its own audio (`load_audio_from_video`)


class AudioVisualEmotionPipeline(Pipeline):
    r"""Emotion recognition from a video with its soundtrack, an image, audio, or an image and audio together.

    Inputs, alone or in a list (batched with `batch_size`):

    - a video path: its frames and, when it has one, its soundtrack;
    - an audio path, a `{"array", "sampling_rate"}` dict, or an array with `sampling_rate=...`;
    - an image path or a `PIL.Image`;
    - a dict with any of `"video"`, `"image"`, `"audio"` (same forms as above) and `"text"` (the question). A
      separate `"audio"` replaces a video's own soundtrack.

    Each input gives `{"emotion", "score", "scores", "valence", "arousal"}` from one prefill of the model's emotion
    heads ([`~VAEmotionForConditionalGeneration.predict_emotion`]); `describe=True` adds `"description"`, the text
    the model generates for the same prompt (generation parameters such as `max_new_tokens` pass through).

    Parameters of a call (or of the pipeline):
        prompt (`str`, *optional*): the question asked; defaults to `DEFAULT_PROMPT`. A dict input's `"text"` wins.
        modality (`str`, *optional*): `"audio_only"`, `"visual_only"` or `"audio_visual"` forces a path: e.g. ignore
            a video's sound, or use only its sound. By default the model gets everything the input has.
        sampling_rate (`int`, *optional*): the rate of audio given as bare arrays.
        num_frames / fps (*optional*): how many frames to sample from videos (default: the processor's).
        describe (`bool`, defaults to `False`): also generate a description.

    Raises:
        [`VAEmotionInputError`]: unreadable media, an input that lacks what `modality` asks for, audio without a
            sampling rate. In a batch the message starts with the failing item, e.g.
            `"inputs[2]: clip.mp4: the video has no audio stream, but audio was requested (with_audio=True)"`.

    Example (a tiny random model, so the emotion itself is arbitrary):

    ```python
    >>> import numpy as np
    >>> import vaemotion  # registers the task
    >>> from transformers import pipeline
    >>> from vaemotion import VAEmotionForConditionalGeneration
    >>> from vaemotion.tiny import build_tiny_processor, tiny_vaemotion_config

    >>> processor = build_tiny_processor(window_seconds=2)
    >>> model = VAEmotionForConditionalGeneration(tiny_vaemotion_config(processor.tokenizer, window_seconds=2))
    >>> classifier = pipeline("audio-visual-emotion", model=model.eval(), processor=processor)
    >>> sound = {"array": np.zeros(16000, dtype=np.float32), "sampling_rate": 16000}
    >>> result = classifier(sound)
    >>> sorted(result), result["emotion"] in model.config.emotion_labels
    (['arousal', 'emotion', 'score', 'scores', 'valence'], True)
    >>> results = classifier([sound, sound], batch_size=2, describe=True, max_new_tokens=2)
    >>> len(results), isinstance(results[0]["description"], str)
    (2, True)
    ```
    """

    _load_processor = True
    _load_tokenizer = False
    _load_image_processor = False
    _load_video_processor = False
    _load_feature_extractor = False
    _pipeline_calls_generate = True
    _default_generation_config = GenerationConfig(max_new_tokens=64)

    def __call__(self, inputs, **kwargs):
        """Classify one input or a list of inputs; see the class docstring for inputs, parameters and outputs."""
        # Items of a batch carry their index to `preprocess`, which names the failing one in its errors.
        if isinstance(inputs, (list, tuple)):
            if not inputs:
                return []
            inputs = [_Indexed(index, item) for index, item in enumerate(inputs)]
        elif isinstance(inputs, types.GeneratorType):
            inputs = (_Indexed(index, item) for index, item in enumerate(inputs))
        return super().__call__(inputs, **kwargs)

    def _sanitize_parameters(
        self,
        prompt=None,
        modality=None,
        sampling_rate=None,
        num_frames=None,
        fps=None,
        describe=None,
        generate_kwargs=None,
        **generation_parameters,
    ):
        unknown = sorted(set(generation_parameters) - GENERATION_PARAMETERS)
        if unknown:
            raise TypeError(f"{type(self).__name__} got unexpected arguments {unknown}")
        if modality is not None and modality not in MODALITIES:
            raise VAEmotionInputError(f"modality: must be one of {', '.join(MODALITIES)}, got {modality!r}")
        if prompt is not None and not isinstance(prompt, str):
            raise VAEmotionInputError(f"prompt: must be a string, got {type(prompt).__name__}")
        if describe is not None and not isinstance(describe, bool):
            raise VAEmotionInputError(f"describe: must be True or False, got {describe!r}")
        if generate_kwargs is not None and not isinstance(generate_kwargs, dict):
            raise VAEmotionInputError(f"generate_kwargs: must be a dict of generate() arguments, got "
                                      f"{type(generate_kwargs).__name__}")
        if num_frames is not None and fps is not None:
            raise VAEmotionInputError("num_frames and fps: pass one of them, not both")
        preprocess_params = {
            key: value
            for key, value in {"prompt": prompt, "modality": modality, "sampling_rate": sampling_rate}.items()
            if value is not None
        }
        if num_frames is not None or fps is not None:  # both, so a call's choice replaces the pipeline's default
            preprocess_params.update(num_frames=num_frames, fps=fps)
        forward_params = {}
        if describe is not None:
            forward_params["describe"] = describe
        if generate_kwargs or generation_parameters:
            forward_params["generate_kwargs"] = {**(generate_kwargs or {}), **generation_parameters}
        return preprocess_params, forward_params, {}

    def preprocess(self, inputs, prompt=None, modality=None, sampling_rate=None, num_frames=None, fps=None):
        item, where = (inputs.item, f"inputs[{inputs.index}]") if isinstance(inputs, _Indexed) else (inputs, None)
        try:
            request = self._request(item, prompt, modality, sampling_rate)
            return self._encode(request, num_frames, fps)
        except VAEmotionInputError as error:
            if where is None:
                raise
            raise VAEmotionInputError(f"{where}: {error}") from error

    def _request(self, item, prompt, modality, sampling_rate) -> _Request:
        fields = _input_fields(item)
        if fields.get("text") is not None and not isinstance(fields["text"], str):
            raise VAEmotionInputError(f"text: the question must be a string, got {type(fields['text']).__name__}")
        text = fields.get("text") or prompt or DEFAULT_PROMPT
        video, image = fields.get("video"), fields.get("image")
        if video is not None and image is not None:
            raise VAEmotionInputError("an input takes a video or an image, not both")
        if video is not None and not isinstance(video, (str, os.PathLike)):
            raise VAEmotionInputError(f"video: must be a file path, got {type(video).__name__}")
        audio = fields.get("audio")
        if modality == "visual_only":
            if video is None and image is None:
                raise VAEmotionInputError(
                    "modality='visual_only' needs a video or an image, but the input has neither"
                )
            return _Request(text, video=video, image=_load_picture(image) if image is not None else None)
        if modality == "audio_only":
            if audio is None and video is None:
                raise VAEmotionInputError(
                    "modality='audio_only' needs audio or a video with sound, but the input has neither"
                )
            source = audio if audio is not None else os.fspath(video)  # only the video's soundtrack
            return _Request(text, audio=self._load_sound(source, sampling_rate))
        if modality == "audio_visual" and video is None and (image is None or audio is None):
            raise VAEmotionInputError(
                "modality='audio_visual' needs a video with sound, or a video or image with audio"
            )
        request = _Request(text, video=video, image=_load_picture(image) if image is not None else None)
        if audio is not None:
            request.audio = self._load_sound(audio, sampling_rate)
        elif video is not None:
            request.soundtrack = has_audio_stream(video)
            if modality == "audio_visual" and not request.soundtrack:  # the processor would see it without sound
                raise VAEmotionInputError(
                    f"{os.fspath(video)}: the video has no audio stream, but modality='audio_visual' needs its sound"
                )
        return request

    def _load_sound(self, source, sampling_rate) -> np.ndarray:
        if not isinstance(source, (str, os.PathLike, dict)) and sampling_rate is None:
            raise VAEmotionInputError(
                "an audio array needs its sampling rate: pass sampling_rate=... or {'array': ..., "
                "'sampling_rate': ...}"
            )
        return load_audio(source, self.processor.feature_extractor.sampling_rate, source_sampling_rate=sampling_rate)

    def _encode(self, request: _Request, num_frames, fps) -> dict[str, torch.Tensor]:
        parts = []
        media = {"load_audio_from_video": request.soundtrack}
        if request.video is not None:
            parts.append({"type": "video"})
            if request.soundtrack:
                parts.append({"type": "audio"})  # an empty audio part after the video: its soundtrack
            media["videos"] = [request.video]
            media.update(
                {key: value for key, value in (("num_frames", num_frames), ("fps", fps)) if value is not None}
            )
        if request.image is not None:
            parts.append({"type": "image"})
            media["images"] = [request.image]
        if request.audio is not None:
            parts.append({"type": "audio"})
            rate = self.processor.feature_extractor.sampling_rate
            media["audio"] = [{"array": request.audio, "sampling_rate": rate}]
        parts.append({"type": "text", "text": request.text})
        conversation = [{"role": "user", "content": parts}]
        text = self.processor.apply_chat_template(
            conversation, add_generation_prompt=True, load_audio_from_video=request.soundtrack
        )
        encoded = self.processor(text=[text], return_tensors="pt", **media)
        return {key: value for key, value in encoded.items() if isinstance(value, torch.Tensor)}

    def _forward(self, model_inputs, describe=False, generate_kwargs=None):
        prediction = self.model.predict_emotion(**model_inputs)
        outputs = {
            "valence": prediction.valence,
            "arousal": prediction.arousal,
            "probabilities": prediction.probabilities,
        }
        if describe:
            generate_kwargs = self._prepare_generate_kwargs(generate_kwargs or {})
            sequences = self.model.generate(**model_inputs, **generate_kwargs)
            # Prompts are left-padded to one length, so every sample's new tokens start at the same column.
            outputs["generated_ids"] = sequences[:, model_inputs["input_ids"].shape[1] :]
        return outputs

    def postprocess(self, model_outputs):
        prediction = EmotionPrediction(
            valence=model_outputs["valence"],
            arousal=model_outputs["arousal"],
            probabilities=model_outputs["probabilities"],
            labels=list(self.model.config.emotion_labels),
        )
        result = prediction.to_list()[0]
        if "generated_ids" in model_outputs:
            text = self.processor.tokenizer.decode(model_outputs["generated_ids"][0], skip_special_tokens=True)
            result["description"] = text.strip()
        return result

    def get_iterator(self, inputs, num_workers, batch_size, preprocess_params, forward_params, postprocess_params):
        if batch_size == 1:
            return super().get_iterator(
                inputs, num_workers, batch_size, preprocess_params, forward_params, postprocess_params
            )
        # transformers' default collate pads token sequences but cannot merge per-media tensors (flattened patches,
        # grids, audio windows): ours pads the sequences on the left and concatenates the media, one model call per
        # batch.
        if isinstance(inputs, Sized):
            dataset = PipelineDataset(inputs, self.preprocess, preprocess_params)
        else:
            dataset = PipelineIterator(inputs, self.preprocess, preprocess_params)
            num_workers = min(num_workers, 1)  # several workers would each replay the whole iterator
        collate = partial(collate_model_inputs, pad_token_id=self.processor.tokenizer.pad_token_id)
        dataloader = DataLoader(dataset, num_workers=num_workers, batch_size=batch_size, collate_fn=collate)
        model_iterator = PipelineIterator(dataloader, self.forward, forward_params, loader_batch_size=batch_size)
        return PipelineIterator(model_iterator, self.postprocess, postprocess_params)


def collate_model_inputs(samples: list[dict], pad_token_id: int) -> dict[str, torch.Tensor]:
    """One batch from single-sample processor outputs: token sequences left-padded, media tensors concatenated.

    The model scatters each modality's features into its placeholders in row-major order, so media concatenated in
    sample order land in the right rows. Left padding keeps every prompt's end, where the emotion heads read and
    generation starts, in the last column.

    ```python
    >>> import torch
    >>> a = {"input_ids": torch.tensor([[5, 6, 7]]), "attention_mask": torch.ones(1, 3, dtype=torch.long)}
    >>> b = {"input_ids": torch.tensor([[8]]), "attention_mask": torch.ones(1, 1, dtype=torch.long),
    ...      "input_features": torch.zeros(1, 16, 200)}
    >>> batch = collate_model_inputs([a, b], pad_token_id=0)
    >>> batch["input_ids"].tolist(), batch["attention_mask"][1].tolist(), batch["input_features"].shape[0]
    ([[5, 6, 7], [0, 0, 8]], [0, 0, 1], 1)
    ```
    """
    length = max(sample["input_ids"].shape[1] for sample in samples)
    batch = {}
    for key in dict.fromkeys(key for sample in samples for key in sample):
        values = [sample[key] for sample in samples if key in sample]
        if key in SEQUENCE_PAD_VALUES:
            if len(values) != len(samples):
                raise ValueError(f"{key}: given for some samples of the batch only")
            value = pad_token_id if SEQUENCE_PAD_VALUES[key] is None else SEQUENCE_PAD_VALUES[key]
            batch[key] = torch.cat([_left_pad(tensor, length, value) for tensor in values])
        else:
            batch[key] = torch.cat(values)
    return batch


def _left_pad(values: torch.Tensor, length: int, value: int) -> torch.Tensor:
    padding = values.new_full((values.shape[0], length - values.shape[1]), value)
    return torch.cat([padding, values], dim=1)


def _input_fields(item) -> dict:
    """The `video` / `image` / `audio` / `text` fields of one input, whatever form it came in."""
    if isinstance(item, dict):
        if "array" in item:  # the `datasets` audio layout
            return {"audio": item}
        unknown = sorted(set(item) - set(INPUT_KEYS))
        if unknown or not item:
            raise VAEmotionInputError(
                f"a dict input takes the keys {', '.join(INPUT_KEYS)} (or is an audio dict with 'array' and "
                f"'sampling_rate'), got {sorted(item)}"
            )
        if all(item.get(key) is None for key in ("video", "image", "audio")):
            raise VAEmotionInputError("a dict input needs at least one of 'video', 'image' or 'audio'")
        return {key: value for key, value in item.items() if value is not None}
    if isinstance(item, (str, os.PathLike)):
        return {_kind_of_path(os.fspath(item)): item}
    if isinstance(item, (np.ndarray, torch.Tensor)):
        return {"audio": item}
    if _is_pil_image(item):
        return {"image": item}
    raise VAEmotionInputError(
        f"unsupported input of type {type(item).__name__}: pass a media path, an audio array or dict, a PIL image, "
        "or a dict with 'video', 'image', 'audio' and 'text'"
    )


def _kind_of_path(path: str) -> str:
    extension = os.path.splitext(path)[1].lower()
    for kind, extensions in (("video", VIDEO_EXTENSIONS), ("image", IMAGE_EXTENSIONS), ("audio", AUDIO_EXTENSIONS)):
        if extension in extensions:
            return kind
    raise VAEmotionInputError(
        f"{path}: cannot tell from the extension whether this is a video, an image or audio; pass a dict such as "
        "{'video': path}"
    )


def _is_pil_image(item) -> bool:
    from PIL import Image

    return isinstance(item, Image.Image)


def _load_picture(image):
    """A PIL image, or an array in one of the layouts image processors take; paths and URLs are opened, with a
    clear error when that fails."""
    if _is_pil_image(image):
        return image
    if isinstance(image, (np.ndarray, torch.Tensor)):
        return _checked_picture_array(image)
    if isinstance(image, os.PathLike):
        image = os.fspath(image)
    if not isinstance(image, str):
        raise VAEmotionInputError(f"image: must be a path, a URL, a PIL image or an array, got {type(image).__name__}")
    if not image.startswith(("http://", "https://")):
        return load_media_image(image)  # the header's size is checked before decoding
    try:
        return load_image(image)
    except Exception as error:  # PIL and requests raise many types for unreadable images
        raise VAEmotionInputError(f"{image}: cannot be read as an image ({error})") from error


def _checked_picture_array(image):
    """``(H, W)`` grey (made RGB), ``(H, W, C)`` or ``(C, H, W)`` with 1, 3 or 4 channels, and at least one pixel."""
    shape = tuple(image.shape)
    if len(shape) == 2:
        image = image[..., None].repeat(3, axis=-1) if isinstance(image, np.ndarray) else image[..., None].expand(*shape, 3)
    elif len(shape) != 3 or not (shape[-1] in (1, 3, 4) or shape[0] in (1, 3, 4)):
        raise VAEmotionInputError(f"image: an array picture must be (height, width), (height, width, channels) or "
                                  f"(channels, height, width) with 1, 3 or 4 channels, got shape {shape}")
    if 0 in shape:
        raise VAEmotionInputError(f"image: the picture has no pixels (shape {shape})")
    if isinstance(image, np.ndarray) and not image.flags.writeable:  # np.asarray(PIL image): torch warns on it
        image = image.copy()
    return image


__all__ = ["AudioVisualEmotionPipeline", "DEFAULT_PROMPT", "MODALITIES", "TASK", "collate_model_inputs"]
