"""Training data shared by Stage 1 (VG-Align), Stage 2 (EmoAdapter) and the benchmark harness.

A *clip* is synchronized sight and sound: a video with an audio track, or a still image (or frames) with an audio
file. Clips come from a folder of videos or from a ``jsonl`` manifest (format below); they are decoded in
``DataLoader`` workers by [`ClipDataset`], and turned into model inputs for one **path** at a time:

- ``"audio"``: the clip's sound only (the student path of Stage 1),
- ``"visual"``: the clip's frames or image only (the teacher path of Stage 1),
- ``"audio_visual"``: both.

Every path of the same clip, prompt and response shares the response tokens, so a loss can pair the teacher's and
the student's next-token distributions position by position ([`response_positions`]).

Manifest format (``.jsonl``, one clip per line; paths relative to the manifest's folder):

| field | meaning |
|---|---|
| ``id`` | unique clip id (default: the line number) |
| ``video`` | a video whose audio track is the clip's sound |
| ``image`` or ``frames`` | a still image, or a list of frame images, used instead of ``video`` for the picture |
| ``audio`` | an audio file (required with ``image``/``frames``; overrides a video's track) |
| ``caption`` | optional response text for Stage 1 instead of the teacher's own words |
| ``valence``, ``arousal`` | optional floats in [-1, 1] (Stage 2) |
| ``emotion`` | optional category name from ``config.emotion_labels`` (Stage 2) |
| ``question``, ``answer`` | optional emotion Q&A text (Stage 2) |
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import av
import numpy as np
import torch
from torch.utils.data import Dataset

from ..media import VAEmotionInputError, load_audio, load_image, load_video

logger = logging.getLogger(__name__)

PATHS = ("audio", "visual", "audio_visual")
VIDEO_SUFFIXES = frozenset({".mp4", ".mkv", ".webm", ".mov", ".avi", ".m4v"})
# Keys of processor outputs that are per-token sequences (padded in a batch); every other tensor is per-media
# (concatenated along its first axis, as the processor itself batches media).
SEQUENCE_KEYS = ("input_ids", "attention_mask", "mm_token_type_ids", "labels")


class ClipDataError(VAEmotionInputError):
    """A manifest line or clip that cannot be used: the message names the manifest, line and field."""


# Fields that hold text: a number or an empty string there is a mistake in the manifest, never a label
TEXT_FIELDS = ("caption", "emotion", "question", "answer")


@dataclass
class ClipRecord:
    """One clip of a manifest, with absolute media paths and optional Stage 2 labels."""

    id: str
    video: str | None = None
    image: str | None = None
    frames: list[str] | None = None
    audio: str | None = None
    caption: str | None = None
    valence: float | None = None
    arousal: float | None = None
    emotion: str | None = None
    question: str | None = None
    answer: str | None = None

    @property
    def has_picture(self) -> bool:
        return bool(self.video or self.image or self.frames)


@dataclass
class ClipSource:
    """The usable clips of a source and the ones left out, each with its reason."""

    records: list[ClipRecord]
    skipped: list[tuple[str, str]] = field(default_factory=list)


def read_clips(
    source: str | os.PathLike,
    *,
    require_audio: bool = True,
    require_picture: bool = True,
    emotion_labels: Sequence[str] | None = None,
) -> ClipSource:
    """Read clips from a folder of videos or a ``.jsonl`` manifest, validating every line.

    Clips whose video has no audio track (when ``require_audio``) are **reported and skipped**: they are logged as a
    warning and listed in ``ClipSource.skipped``, never silently kept. Malformed lines, missing media files and
    out-of-range labels raise [`ClipDataError`] naming the line and field.
    """
    source = Path(source)
    if source.is_dir():
        videos = sorted(p for p in source.iterdir() if p.suffix.lower() in VIDEO_SUFFIXES)
        if not videos:
            raise ClipDataError(f"{source}: the folder holds no videos ({', '.join(sorted(VIDEO_SUFFIXES))})")
        records = [ClipRecord(id=p.stem, video=str(p)) for p in videos]
    elif source.is_file():
        records = [
            _record_from_line(line, number, source, emotion_labels)
            for number, line in enumerate(read_utf8(source, ClipDataError).splitlines(), start=1)
            if line.strip()
        ]
    else:
        raise ClipDataError(f"{source}: no such manifest file or folder")
    _check_unique_ids(records, source)
    usable, skipped = [], []
    for record in records:
        reason = _unusable_reason(record, require_audio, require_picture)
        if reason is None:
            usable.append(record)
        else:
            skipped.append((record.id, reason))
    if skipped:
        listed = "; ".join(f"{clip_id}: {reason}" for clip_id, reason in skipped[:5])
        more = f" (and {len(skipped) - 5} more)" if len(skipped) > 5 else ""
        logger.warning(f"{source}: skipped {len(skipped)} of {len(records)} clips: {listed}{more}")
    if not usable:
        raise ClipDataError(f"{source}: no usable clips ({len(skipped)} skipped)")
    return ClipSource(usable, skipped)


def _record_from_line(line: str, number: int, manifest: Path, emotion_labels) -> ClipRecord:
    where = f"{manifest}:{number}"
    try:
        row = json.loads(line)
    except json.JSONDecodeError as error:
        raise ClipDataError(f"{where}: not valid JSON ({error.msg})") from None
    if not isinstance(row, dict):
        raise ClipDataError(f"{where}: a line must be a JSON object, got {type(row).__name__}")
    known = {f for f in ClipRecord.__dataclass_fields__}
    unknown = sorted(set(row) - known)
    if unknown:
        raise ClipDataError(f"{where}: unknown field(s) {unknown}; known fields are {sorted(known)}")
    row = {key: value for key, value in row.items() if value is not None}
    row.setdefault("id", str(number))
    if isinstance(row["id"], bool) or not isinstance(row["id"], (str, int)) or not str(row["id"]).strip():
        raise ClipDataError(f"{where}: id must be a non-empty string or a whole number, got {row['id']!r}")
    row["id"] = str(row["id"])
    pictures = [key for key in ("video", "image", "frames") if row.get(key)]
    if len(pictures) > 1:
        raise ClipDataError(f"{where}: give one picture source of video, image and frames, got {pictures}")
    for key in ("video", "image", "audio"):
        if key in row:
            row[key] = _existing_media(row[key], manifest.parent, f"{where}: {key}")
    if "frames" in row:
        if not isinstance(row["frames"], list) or not row["frames"]:
            raise ClipDataError(f"{where}: frames must be a non-empty list of image paths")
        row["frames"] = [_existing_media(p, manifest.parent, f"{where}: frames[{i}]") for i, p in enumerate(row["frames"])]
    if not (row.get("video") or row.get("image") or row.get("frames") or row.get("audio")):
        raise ClipDataError(f"{where}: a clip needs a video, or an image/frames and an audio file")
    for key in ("valence", "arousal"):
        if key in row:
            value = row[key]
            number = isinstance(value, (int, float)) and not isinstance(value, bool)  # JSON true is not 1.0
            if not number or not math.isfinite(value) or not -1.0 <= value <= 1.0:
                raise ClipDataError(f"{where}: {key} must be a number in [-1, 1], got {value!r}")
            row[key] = float(value)
    for key in TEXT_FIELDS:
        if key in row and (not isinstance(row[key], str) or not row[key].strip()):
            raise ClipDataError(f"{where}: {key} must be a non-empty string, got {row[key]!r}")
    if "emotion" in row and emotion_labels is not None and row["emotion"] not in emotion_labels:
        raise ClipDataError(f"{where}: unknown emotion {row['emotion']!r}; expected one of {list(emotion_labels)}")
    return ClipRecord(**row)


def _existing_media(value, root: Path, where: str) -> str:
    if not isinstance(value, str) or not value:
        raise ClipDataError(f"{where}: must be a file path, got {value!r}")
    path = Path(value) if os.path.isabs(value) else root / value
    if not path.is_file():
        raise ClipDataError(f"{where}: media file {path} does not exist")
    return str(path)


def _check_unique_ids(records: list[ClipRecord], source: Path) -> None:
    seen = set()
    for record in records:
        if record.id in seen:
            raise ClipDataError(f"{source}: clip id {record.id!r} appears more than once")
        seen.add(record.id)


def _unusable_reason(record: ClipRecord, require_audio: bool, require_picture: bool) -> str | None:
    if require_picture and not record.has_picture:
        return "no video, image or frames"
    if require_audio and not record.audio:
        if not record.video:
            return "no audio file"
        if not has_audio_stream(record.video):
            return f"{record.video} has no audio track"
    return None


def has_audio_stream(path: str) -> bool:
    """Whether a media file has an audio stream (reads the container header only)."""
    try:
        with av.open(path) as container:
            return len(container.streams.audio) > 0
    except (av.FFmpegError, OSError) as error:
        raise ClipDataError(f"{path}: cannot be opened as media ({error})") from None


@dataclass
class DecodedClip:
    """A clip decoded for the model: frames (or an image) with their metadata, and the audio under them."""

    record: ClipRecord
    frames: np.ndarray | None = None  # (T, H, W, 3) uint8
    video_metadata: object | None = None
    image: np.ndarray | None = None  # (H, W, 3) uint8
    audio: np.ndarray | None = None  # float32 mono at sampling_rate
    sampling_rate: int = 16000
    # encode_prompt's results for this clip, reused while the clip stays in memory (ClipDataset(keep_in_memory=True))
    encodings: dict = field(default_factory=dict, repr=False, compare=False)


class ClipDataset(Dataset):
    """Decodes clips on access (so a DataLoader's workers do the decoding in parallel).

    Args:
        records: the clips (see [`read_clips`]).
        num_frames: frames sampled uniformly from each video (rounded down to ``frame_multiple``).
        sampling_rate: audio rate for the feature extractor (16 kHz for Whisper).
        decode_picture / decode_audio: skip a stream nobody needs (e.g. the frames when a teacher cache holds
            the visual pathway's outputs).
        frame_multiple: the VLM's temporal patch size (2 for Qwen2.5-VL).
        keep_in_memory: keep each clip once decoded, with its encodings (see [`encode_prompt`]), so later epochs
            neither decode nor re-process it: for data sets that fit in memory (the CPU demo). Each DataLoader
            worker keeps its own copy.
    """

    def __init__(
        self,
        records: Sequence[ClipRecord],
        *,
        num_frames: int = 8,
        sampling_rate: int = 16000,
        decode_picture: bool = True,
        decode_audio: bool = True,
        frame_multiple: int = 2,
        keep_in_memory: bool = False,
    ):
        self.records = list(records)
        self.num_frames = num_frames
        self.sampling_rate = sampling_rate
        self.decode_picture = decode_picture
        self.decode_audio = decode_audio
        self.frame_multiple = frame_multiple
        self.kept: dict[int, DecodedClip] | None = {} if keep_in_memory else None

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> DecodedClip:
        if self.kept is None:
            return self._decode(index)
        if index not in self.kept:
            self.kept[index] = self._decode(index)
        return self.kept[index]

    def _decode(self, index: int) -> DecodedClip:
        record = self.records[index]
        clip = DecodedClip(record=record, sampling_rate=self.sampling_rate)
        video_audio_needed = self.decode_audio and record.audio is None
        if record.video and (self.decode_picture or video_audio_needed):
            decoded = load_video(
                record.video,
                num_frames=self.num_frames,
                with_audio=video_audio_needed,
                sampling_rate=self.sampling_rate,
                frame_multiple=self.frame_multiple,
            )
            if self.decode_picture:
                clip.frames, clip.video_metadata = decoded.frames, decoded.metadata
            clip.audio = decoded.audio
        elif self.decode_picture and record.frames:
            clip.frames = _stacked_frames(record)
        if self.decode_picture and record.image and clip.frames is None:
            clip.image = _read_image(record.image)
        if self.decode_audio and record.audio:
            clip.audio = load_audio(record.audio, self.sampling_rate)
        return clip


def _stacked_frames(record: ClipRecord) -> np.ndarray:
    """A clip's frame images as one ``(T, H, W, 3)`` array: they must share one size, as a video's frames do."""
    frames = [_read_image(path) for path in record.frames]
    sizes = sorted({frame.shape[:2] for frame in frames})
    if len(sizes) > 1:
        raise ClipDataError(f"clip {record.id}: its frames have different sizes {[f'{w}x{h}' for h, w in sizes]}; "
                            "resize them to one size")
    return np.stack(frames)


def read_utf8(path: Path, error_class: type[Exception] = ValueError) -> str:
    """A text file's content, or ``error_class`` naming the file and the first byte that is not UTF-8."""
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise error_class(f"{path}: not UTF-8 text ({error.reason} at byte {error.start}); save it as UTF-8") from None


def _read_image(path: str) -> np.ndarray:
    try:
        return np.array(load_image(path))  # a writable copy: torch warns on read-only arrays
    except VAEmotionInputError as error:
        raise ClipDataError(str(error)) from None


# ---------------------------------------------------------------------------------------------------- encoding
def conversation(clip: DecodedClip, path: str, prompt: str, system: str | None = None) -> list[dict]:
    """The user turn for one path: the path's media parts, then the prompt text."""
    if path not in PATHS:
        raise ValueError(f"path must be one of {PATHS}, got {path!r}")
    parts = []
    if path in ("visual", "audio_visual"):
        if clip.frames is None and clip.image is None:
            raise ClipDataError(f"clip {clip.record.id}: the {path} path needs its picture, which was not decoded")
        parts.append({"type": "video"} if clip.frames is not None else {"type": "image"})
    if path in ("audio", "audio_visual"):
        if clip.audio is None:
            raise ClipDataError(f"clip {clip.record.id}: the {path} path needs its audio, which was not decoded")
        parts.append({"type": "audio"})
    parts.append({"type": "text", "text": prompt})
    messages = [{"role": "system", "content": system}] if system else []
    return messages + [{"role": "user", "content": parts}]


def encode_prompt(processor, clip: DecodedClip, path: str, prompt: str, system: str | None = None) -> dict:
    """Model inputs of one clip on one path, ending with the assistant header (no response yet), unpadded.

    The result is remembered on ``clip`` (per processor, path, prompt and system prompt), so a clip kept in memory
    is processed once however many epochs see it. Callers must not modify the returned tensors in place.
    """
    key = (id(processor), path, prompt, system)
    remembered = clip.encodings.get(key)
    if remembered is None or remembered[0] is not processor:  # holding the processor keeps its id from being reused
        remembered = clip.encodings[key] = (processor, _encode_prompt(processor, clip, path, prompt, system))
    return remembered[1]


def _encode_prompt(processor, clip: DecodedClip, path: str, prompt: str, system: str | None) -> dict:
    text = processor.apply_chat_template(conversation(clip, path, prompt, system), add_generation_prompt=True)
    media = {}
    if path in ("visual", "audio_visual"):
        if clip.frames is not None:
            media["videos"] = [clip.frames]
            if clip.video_metadata is not None:
                media["video_metadata"] = [clip.video_metadata]
        else:
            media["images"] = [clip.image]
    if path in ("audio", "audio_visual"):
        media["audio"] = [{"array": clip.audio, "sampling_rate": clip.sampling_rate}]
    encoded = processor(text=[text], return_tensors="pt", **media)
    return {key: value for key, value in encoded.items() if isinstance(value, torch.Tensor)}


def append_response(encoded: dict, response_ids: Sequence[int]) -> dict:
    """Append response tokens to an unpadded single-sample encoding; labels supervise exactly those tokens."""
    response = torch.as_tensor(list(response_ids), dtype=encoded["input_ids"].dtype)[None]
    out = dict(encoded)
    out["input_ids"] = torch.cat([encoded["input_ids"], response], dim=1)
    out["attention_mask"] = torch.cat([encoded["attention_mask"], torch.ones_like(response)], dim=1)
    if "mm_token_type_ids" in encoded:
        out["mm_token_type_ids"] = torch.cat([encoded["mm_token_type_ids"], torch.zeros_like(response)], dim=1)
    prompt_labels = torch.full_like(encoded["input_ids"], -100)
    out["labels"] = torch.cat([prompt_labels, response], dim=1)
    out["response_length"] = response.shape[1]
    return out


def collate_encoded(samples: Sequence[dict], pad_token_id: int, padding_side: str = "right") -> dict:
    """Pad per-token sequences and concatenate per-media tensors of single-sample encodings into one batch."""
    if padding_side not in ("left", "right"):
        raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
    length = max(sample["input_ids"].shape[1] for sample in samples)
    pad_values = {"input_ids": pad_token_id, "attention_mask": 0, "mm_token_type_ids": 0, "labels": -100}
    batch = {}
    for key in samples[0]:
        if key == "response_length":
            continue
        values = [sample[key] for sample in samples if key in sample]
        if key in SEQUENCE_KEYS:
            batch[key] = torch.cat([_pad(v, length, pad_values[key], padding_side) for v in values], dim=0)
        else:
            batch[key] = torch.cat(values, dim=0)
    for key in {k for sample in samples for k in sample} - set(samples[0]) - {"response_length"}:
        batch[key] = torch.cat([sample[key] for sample in samples if key in sample], dim=0)
    return batch


def _pad(values: torch.Tensor, length: int, value: int, side: str) -> torch.Tensor:
    missing = length - values.shape[1]
    padding = torch.full((values.shape[0], missing), value, dtype=values.dtype)
    return torch.cat([values, padding] if side == "right" else [padding, values], dim=1)


def response_positions(batch: dict, response_lengths: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Positions whose logits predict each sample's response tokens, padded to the longest response.

    Returns ``(positions (B, R), mask (B, R))``: the logit at position ``p`` predicts token ``p + 1``, so a response
    occupying ``[end - n, end)`` is predicted from ``[end - n - 1, end - 1)``. Works for left and right padding.
    """
    longest = max(response_lengths)
    positions = torch.zeros(len(response_lengths), longest, dtype=torch.long)
    mask = torch.zeros(len(response_lengths), longest, dtype=torch.bool)
    attended = batch["attention_mask"].bool()
    for row, count in enumerate(response_lengths):
        end = int(attended[row].nonzero().max()) + 1  # one past the last real token
        positions[row, :count] = torch.arange(end - count - 1, end - 1)
        mask[row, :count] = True
    return positions, mask


def tokenize_response(tokenizer, text: str, end_token: str = "<|im_end|>", max_tokens: int | None = None) -> list[int]:
    """Token ids of an assistant response closed by the end-of-turn token (kept when truncating)."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if max_tokens is not None:
        ids = ids[: max_tokens - 1]
    end_id = tokenizer.convert_tokens_to_ids(end_token)
    if end_id is None or end_id == tokenizer.unk_token_id:
        end_id = tokenizer.eos_token_id
    return ids + [end_id]
