# Copyright 2026 The VAEmotion Authors. Licensed under the Apache License, Version 2.0.
"""Audio and video decoding for VAEmotion: soundfile and PyAV, anti-aliased resampling, frame sampling, A/V sync.

Flat module with relative imports only: it is copied into hub checkpoints next to `processing_vaemotion.py`.

Why our own loaders: transformers' video processors decode paths only through torchcodec (which needs system
FFmpeg libraries), and `transformers.audio_utils.load_audio` cannot read the audio track of a video without it.
PyAV bundles FFmpeg, so [`load_video`] demuxes a file once and returns the sampled frames together with the audio
played under them. torchcodec is used for videos when it imports (it is never required).

Example:

```python
>>> import numpy as np
>>> from vaemotion.media import load_audio

>>> one_second_at_44k = np.sin(2 * np.pi * 440 * np.arange(44100) / 44100)
>>> load_audio({"array": one_second_at_44k, "sampling_rate": 44100}).shape
(16000,)
```
"""

from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass, field

import av
import numpy as np
import soundfile
from scipy.signal import resample_poly
from transformers.video_utils import VideoMetadata


# Containers libsndfile reads natively; everything else (mp3, m4a, the audio track of mp4/mkv/webm/mov) goes to PyAV.
SOUNDFILE_EXTENSIONS = frozenset({".wav", ".flac", ".ogg", ".oga", ".aiff", ".aif"})

# A float signal whose peak exceeds this is not normalised audio (e.g. int16 PCM stored as float): refusing it
# beats clipping it into a square wave. Decoders and resamplers overshoot full scale by far less than this.
_MAX_FLOAT_PEAK = 2.0


class VAEmotionInputError(ValueError):
    """Bad media or arguments given to VAEmotion's loaders or processor.

    Every message names the file or argument at fault and the problem, e.g.
    ``"clip.mp4: the video has no audio stream, but audio was requested (with_audio=True)"``.
    """


@dataclass
class VideoClip:
    """Frames sampled from a video and, optionally, the audio played under them.

    Attributes:
        frames (`np.ndarray`): uint8 RGB frames, shape `(T, H, W, 3)`.
        timestamps (`np.ndarray`): presentation time of each frame in seconds, float64, shape `(T,)`.
        fps (`float`): frame rate of the source video.
        duration (`float`): duration of the source video in seconds.
        audio (`np.ndarray` or `None`): float32 mono samples in [-1, 1] at `sampling_rate`, from `timestamps[0]` to
            `timestamps[-1]` plus one sampled-frame period (`1 / metadata.sampled_fps`): each sampled frame stands
            for that long, as the VLM's temporal positions count it. `None` when the audio was not requested.
        sampling_rate (`int`): sampling rate of `audio`.
        audio_start (`float` or `None`): time in seconds of `audio[0]` (equal to `timestamps[0]` unless the audio
            track starts later than the first sampled frame).
        metadata (`transformers.video_utils.VideoMetadata`): source frame count, fps and the sampled frame indices,
            to pass as `video_metadata=[clip.metadata]` with `frames` so the VLM's temporal positions are right.
        path (`str` or `None`): the file the clip was decoded from.
    """

    frames: np.ndarray
    timestamps: np.ndarray
    fps: float
    duration: float
    audio: np.ndarray | None
    sampling_rate: int
    audio_start: float | None
    metadata: VideoMetadata = field(repr=False)
    path: str | None = None


# Pictures larger than this are refused from their header, before any pixel is decoded (a 64 Mpx RGB picture is
# about 200 MB decoded). A decompression-bomb PNG of a few kilobytes can declare 150 Mpx and more; Pillow itself
# only warns below about 179 Mpx.
DEFAULT_MAX_IMAGE_PIXELS = 64_000_000


def load_image(image, max_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS):
    """An RGB `PIL.Image` from a path (or `os.PathLike`) or a `PIL.Image`, with the package's errors.

    The picture's size is read from the file's header and checked against ``max_pixels`` (None: no limit) before it
    is decoded. EXIF orientation is applied, as transformers' `load_image` does. Pictures with more than 8 bits per
    sample (16-bit grey PNGs, 32-bit integer or float TIFFs) are scaled to 8 bits over their own bit depth (16-bit:
    65535 is white) instead of being clipped to white, which is what Pillow's ``convert("RGB")`` does.

    ```python
    >>> import tempfile, numpy as np
    >>> from PIL import Image
    >>> from vaemotion.media import load_image

    >>> path = tempfile.mktemp(suffix=".png")
    >>> Image.fromarray(np.full((2, 3), 32768, np.uint16)).save(path)  # a mid-grey 16-bit picture
    >>> np.asarray(load_image(path))[0, 0].tolist()
    [128, 128, 128]
    >>> load_image(path, max_pixels=5)
    Traceback (most recent call last):
    ...
    vaemotion.media.VAEmotionInputError: ...: the picture is 3 x 2 = 6 pixels, more than max_pixels=5 ...
    ```
    """
    from PIL import Image, ImageOps

    if max_pixels is not None and (isinstance(max_pixels, bool) or not isinstance(max_pixels, int) or max_pixels < 1):
        raise VAEmotionInputError(f"max_pixels: must be a positive whole number or None, got {max_pixels!r}")
    if isinstance(image, Image.Image):
        _check_image_size(image, max_pixels, "image")
        return _image_to_rgb(ImageOps.exif_transpose(image))
    if isinstance(image, os.PathLike):
        image = os.fspath(image)
    if not isinstance(image, str):
        raise VAEmotionInputError(f"image: must be a path or a PIL image, got {type(image).__name__}")
    _check_file(image)
    try:
        with warnings.catch_warnings():  # Pillow's own bomb warning: the size is checked here, with the file named
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            opened = Image.open(image)  # reads the header only
        with opened:
            _check_image_size(opened, max_pixels, image)
            opened.load()
            return _image_to_rgb(ImageOps.exif_transpose(opened))
    except VAEmotionInputError:
        raise
    except Image.DecompressionBombError as error:
        raise VAEmotionInputError(f"{image}: the picture is too large to decode safely ({error})") from None
    except (OSError, ValueError, SyntaxError) as error:  # Pillow's errors for unknown, truncated or corrupt files
        raise VAEmotionInputError(f"{image}: cannot be read as an image ({error})") from None


def _check_image_size(image, max_pixels: int | None, name: str) -> None:
    width, height = image.size
    if width < 1 or height < 1:
        raise VAEmotionInputError(f"{name}: the picture is {width} x {height} pixels: it has no pixels")
    if max_pixels is not None and width * height > max_pixels:
        raise VAEmotionInputError(
            f"{name}: the picture is {width} x {height} = {width * height} pixels, more than max_pixels={max_pixels} "
            "(raise max_pixels if the picture is meant to be this large)"
        )


def _image_to_rgb(image):
    """RGB, with samples of more than 8 bits scaled down over their bit depth rather than clipped."""
    from PIL import Image

    if image.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        samples = np.asarray(image).astype(np.float64)
        if image.mode.startswith("I;16"):
            full_scale = 65535.0
        elif image.mode == "I":
            full_scale = 65535.0 if samples.max(initial=0) <= 65535 else float(2**31 - 1)  # 16-bit PNGs open as "I"
        else:  # float pictures: [0, 1] if they fit, else their own range
            full_scale = 1.0 if samples.min(initial=0) >= 0 and samples.max(initial=0) <= 1 else None
        if full_scale is None:
            low, high = samples.min(), samples.max()
            samples = (samples - low) / (high - low if high > low else 1.0)
        else:
            samples = samples / full_scale
        image = Image.fromarray(np.round(np.clip(samples, 0, 1) * 255).astype(np.uint8))
    return image if image.mode == "RGB" else image.convert("RGB")


def resample_audio(audio: np.ndarray, source_rate: int, target_rate: int) -> np.ndarray:
    """Resample along the last axis with a polyphase anti-aliasing filter (`scipy.signal.resample_poly`)."""
    source_rate, target_rate = int(source_rate), int(target_rate)
    if source_rate == target_rate:
        return audio.astype(np.float32, copy=False)
    divisor = math.gcd(source_rate, target_rate)
    return resample_poly(audio, target_rate // divisor, source_rate // divisor, axis=-1).astype(np.float32)


def load_audio(
    path_or_array, sampling_rate: int = 16000, *, source_sampling_rate: int | None = None
) -> np.ndarray:
    """Load audio as float32 mono samples in [-1, 1] at `sampling_rate`.

    Args:
        path_or_array (`str`, `os.PathLike`, `dict` or array-like):
            A file (wav/flac/ogg/aiff through soundfile; mp3, m4a and the audio track of mp4/mkv/webm/mov through
            PyAV), a `{"array": ..., "sampling_rate": ...}` dict (the `datasets` layout), or an array of samples,
            1-D or 2-D with channels on the shorter axis. Integer arrays are scaled from their dtype's range.
        sampling_rate (`int`, defaults to 16000): the rate of the returned samples.
        source_sampling_rate (`int`, *optional*): the rate of a bare array; required for one.

    Raises:
        [`VAEmotionInputError`]: missing or undecodable file, empty or non-finite audio, an array without a
            sampling rate.
    """
    if isinstance(path_or_array, (str, os.PathLike)):
        path = os.fspath(path_or_array)
        samples, rate = _decode_audio_file(path)
        name = path
    else:
        name = "path_or_array"
        if isinstance(path_or_array, dict):
            if "array" not in path_or_array or path_or_array.get("sampling_rate") is None:
                raise VAEmotionInputError(
                    f"path_or_array: an audio dict needs 'array' and 'sampling_rate', got keys {sorted(path_or_array)}"
                )
            samples, rate = path_or_array["array"], path_or_array["sampling_rate"]
        elif source_sampling_rate is None:
            raise VAEmotionInputError(
                "path_or_array: an audio array has no sampling rate; pass source_sampling_rate=... or a dict "
                "{'array': ..., 'sampling_rate': ...}"
            )
        else:
            samples, rate = path_or_array, source_sampling_rate
        samples = _array_to_channels_first(samples, name)
    _check_sampling_rate(rate, f"{name}: the audio's sampling rate")
    _check_sampling_rate(sampling_rate, "sampling_rate")
    mono = _to_mono(samples, name)
    return np.clip(resample_audio(mono, rate, sampling_rate), -1.0, 1.0)


def _check_sampling_rate(rate, what: str) -> None:
    """A sampling rate must be a positive whole number of Hz (scipy's resampler would fail deep inside otherwise)."""
    whole = isinstance(rate, (int, np.integer)) or (isinstance(rate, (float, np.floating)) and float(rate).is_integer())
    if isinstance(rate, bool) or not whole or rate <= 0:
        raise VAEmotionInputError(f"{what} must be a positive whole number of Hz, got {rate!r}")


def _decode_audio_file(path: str) -> tuple[np.ndarray, int]:
    """Decode a whole file to float32 `(channels, samples)` at its native rate."""
    _check_file(path)
    if os.path.splitext(path)[1].lower() in SOUNDFILE_EXTENSIONS:
        try:
            samples, rate = soundfile.read(path, dtype="float32", always_2d=True)
            return samples.T, rate
        except soundfile.LibsndfileError:
            pass  # e.g. an .ogg holding Opus that this libsndfile cannot read: let FFmpeg try before giving up
    with _open_container(path) as container:
        if not container.streams.audio:
            raise VAEmotionInputError(f"{path}: the file has no audio stream")
        stream = container.streams.audio[0]
        try:
            chunks = [_audio_frame_to_float(frame) for frame in container.decode(stream)]
        except av.FFmpegError as error:
            raise VAEmotionInputError(f"{path}: cannot decode the audio ({error})") from error
        rate = stream.codec_context.sample_rate
    if not chunks:
        raise VAEmotionInputError(f"{path}: the audio stream is empty")
    return np.concatenate(chunks, axis=1), rate


def _check_file(path: str) -> None:
    if not os.path.isfile(path):
        raise VAEmotionInputError(f"{path}: file not found")


def _open_container(path: str):
    try:
        return av.open(path)
    except av.FFmpegError as error:
        raise VAEmotionInputError(f"{path}: cannot read the file as audio or video ({error})") from error


def _audio_frame_to_float(frame) -> np.ndarray:
    """A decoded PyAV audio frame as float32 `(channels, samples)`, whatever its sample format."""
    data = frame.to_ndarray()
    if not frame.format.is_planar:  # packed formats interleave the channels in a single row
        data = data.reshape(-1, frame.layout.nb_channels).T
    return _pcm_to_float(data)


def _pcm_to_float(data: np.ndarray) -> np.ndarray:
    if data.dtype.kind == "i":
        return (data / -float(np.iinfo(data.dtype).min)).astype(np.float32)
    if data.dtype.kind == "u":
        half_range = float(np.iinfo(data.dtype).max + 1) / 2
        return ((data - half_range) / half_range).astype(np.float32)
    return data.astype(np.float32, copy=False)


def _array_to_channels_first(samples, name: str) -> np.ndarray:
    if hasattr(samples, "detach"):  # torch tensors, without importing torch here
        samples = samples.detach().cpu()
        samples = (samples.float() if samples.is_floating_point() else samples).numpy()  # numpy has no bfloat16
    try:
        samples = np.asarray(samples)
    except ValueError as error:  # a ragged list of lists
        raise VAEmotionInputError(f"{name}: audio must be a rectangular array of samples ({error})") from None
    if samples.dtype.kind not in "iuf":
        raise VAEmotionInputError(f"{name}: audio must be numeric, got dtype {samples.dtype}")
    if samples.ndim == 1:
        samples = samples[None]
    elif samples.ndim == 2:
        # Audio has far more samples than channels, so the shorter axis is the channel axis.
        samples = samples if samples.shape[0] <= samples.shape[1] else samples.T
    else:
        raise VAEmotionInputError(f"{name}: audio must be 1-D or 2-D (channels x samples), got shape {samples.shape}")
    return _pcm_to_float(samples)


def _to_mono(samples: np.ndarray, name: str) -> np.ndarray:
    """Average `(channels, samples)` float audio to mono, after checking it is usable."""
    if samples.size == 0:
        raise VAEmotionInputError(f"{name}: the audio is empty (0 samples)")
    if not np.all(np.isfinite(samples)):
        raise VAEmotionInputError(f"{name}: the audio contains NaN or infinite values")
    peak = float(np.abs(samples).max())
    if peak > _MAX_FLOAT_PEAK:
        raise VAEmotionInputError(
            f"{name}: float audio must lie in [-1, 1], got a peak of {peak:.4g} (integer PCM stored as float?)"
        )
    return samples.mean(axis=0)


def _torchcodec_decoders():
    """torchcodec's decoders when it imports, else None (it also fails to import without FFmpeg libraries)."""
    try:
        from torchcodec.decoders import AudioDecoder, VideoDecoder
    except Exception:
        return None
    return VideoDecoder, AudioDecoder


def sample_frame_indices(
    total_frames: int, source_fps: float, num_frames: int | None = None, fps: float | None = None, frame_multiple: int = 1
) -> np.ndarray:
    """Uniformly spaced frame indices, as transformers' `default_sample_indices_fn` picks them.

    `num_frames` frames, or `fps` frames per second of video, or every frame when both are `None`. The count is then
    rounded down to a multiple of `frame_multiple` (at least one multiple): VLMs such as Qwen2.5-VL group frames in
    pairs (`temporal_patch_size`). A video with fewer frames than `frame_multiple` gives all its frames.
    """
    _check_sampling_arguments(num_frames, fps, frame_multiple)
    if num_frames is not None and fps is not None:
        raise VAEmotionInputError("num_frames and fps: pass one of them, not both")
    if num_frames is not None:
        if num_frames < 1:
            raise VAEmotionInputError(f"num_frames: must be >= 1, got {num_frames}")
        if num_frames > total_frames:
            raise VAEmotionInputError(f"num_frames: asked for {num_frames} frames but the video has {total_frames}")
        count = num_frames
    elif fps is not None:
        if fps <= 0:
            raise VAEmotionInputError(f"fps: must be > 0, got {fps}")
        count = max(1, int(total_frames / source_fps * fps))
    else:
        count = total_frames
    count = min(max(count // frame_multiple, 1) * frame_multiple, total_frames)
    return np.arange(count, dtype=np.int64) * total_frames // count


def _is_whole_number(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _check_sampling_arguments(num_frames, fps, frame_multiple) -> None:
    """Types and ranges of the frame-sampling arguments, before any file is opened."""
    if num_frames is not None and not _is_whole_number(num_frames):
        raise VAEmotionInputError(f"num_frames: must be a whole number, got {num_frames!r}")
    if fps is not None and (isinstance(fps, bool) or not isinstance(fps, (int, float, np.number))
                            or not math.isfinite(fps)):  # fmt: skip
        raise VAEmotionInputError(f"fps: must be a finite number of frames per second, got {fps!r}")
    if not _is_whole_number(frame_multiple) or frame_multiple < 1:
        raise VAEmotionInputError(f"frame_multiple: must be a whole number >= 1, got {frame_multiple!r}")


def has_audio_stream(path) -> bool:
    """Whether the media file at `path` has an audio stream (read from its header, nothing decoded).

    Raises:
        [`VAEmotionInputError`]: a missing or unreadable file.
    """
    if not isinstance(path, (str, os.PathLike)):
        raise VAEmotionInputError(f"video: must be a path to a media file, got {type(path).__name__}")
    path = os.fspath(path)
    _check_file(path)
    with _open_container(path) as container:
        return bool(container.streams.audio)


def load_video(
    path,
    num_frames: int | None = None,
    fps: float | None = None,
    *,
    with_audio: bool = True,
    sampling_rate: int = 16000,
    frame_multiple: int = 1,
    backend: str = "auto",
) -> VideoClip:
    """Decode uniformly sampled frames of a video and the audio played under them.

    The audio returned spans the sampled frames: from the first sampled frame's time to the last one's time plus
    one sampled-frame period (`total_frames / (T * source_fps)` for `T` uniformly sampled frames), so uniformly
    sampled frames carry the whole clip's sound and every frame stands for the same stretch of audio. It is in sync
    with the frames to within one audio codec frame (1024 samples for AAC).

    Args:
        path (`str` or `os.PathLike`): a video file (mp4, mkv, webm, mov, avi... anything FFmpeg reads).
        num_frames (`int`, *optional*): how many frames to sample uniformly.
        fps (`float`, *optional*): sample this many frames per second instead. With neither, every frame is kept.
        with_audio (`bool`, defaults to `True`): also return the audio; a video without an audio stream is then an
            error.
        sampling_rate (`int`, defaults to 16000): the rate of the returned audio.
        frame_multiple (`int`, defaults to 1): round the frame count down to a multiple of this (see
            [`sample_frame_indices`]).
        backend (`str`, defaults to `"auto"`): `"pyav"` demuxes the file once for both streams; `"torchcodec"`
            uses torchcodec's decoders; `"auto"` is torchcodec when it imports, else PyAV.

    Raises:
        [`VAEmotionInputError`]: missing, unreadable or corrupt file, no video stream, no audio stream while
            `with_audio=True`, a frame count the video cannot give, a sampling rate that is not a positive integer.
    """
    if not isinstance(path, (str, os.PathLike)):
        raise VAEmotionInputError(f"video: must be a path to a video file, got {type(path).__name__}")
    path = os.fspath(path)
    _check_file(path)
    if with_audio:
        _check_sampling_rate(sampling_rate, "sampling_rate")
    _check_sampling_arguments(num_frames, fps, frame_multiple)
    if backend not in ("auto", "pyav", "torchcodec"):
        raise VAEmotionInputError(f"backend: must be 'auto', 'pyav' or 'torchcodec', got {backend!r}")
    decoders = _torchcodec_decoders() if backend != "pyav" else None
    if backend == "torchcodec" and decoders is None:
        raise VAEmotionInputError("backend: 'torchcodec' was asked for but torchcodec cannot be imported")
    sampling = {"num_frames": num_frames, "fps": fps, "frame_multiple": frame_multiple}
    if decoders is not None:
        return _load_video_torchcodec(path, decoders, sampling, with_audio, sampling_rate)
    return _load_video_pyav(path, sampling, with_audio, sampling_rate)


def _load_video_pyav(path: str, sampling: dict, with_audio: bool, sampling_rate: int) -> VideoClip:
    with _open_container(path) as container:
        video_stream, audio_stream = _select_streams(container, path, with_audio)
        source_fps = float(video_stream.guessed_rate or video_stream.average_rate or 0) or None
        total_frames = video_stream.frames or _count_video_packets(path)
        if not source_fps or not total_frames:
            raise VAEmotionInputError(f"{path}: the video stream has no frames or no frame rate")
        indices = _sample_for_file(path, total_frames, source_fps, sampling)
        frame_period = total_frames / (len(indices) * source_fps)
        try:
            frames, timestamps, audio_chunks, audio_time = _demux(
                container, video_stream, audio_stream, indices, source_fps, frame_period
            )
        except av.FFmpegError as error:
            raise VAEmotionInputError(f"{path}: cannot decode the video ({error})") from error
        if len(frames) < len(indices):
            raise VAEmotionInputError(
                f"{path}: the file is truncated or corrupt: decoded {len(frames)} of the {len(indices)} sampled "
                f"frames (the header announces {total_frames} frames)"
            )
        duration = _stream_duration(video_stream) or total_frames / source_fps
        audio_rate = audio_stream.codec_context.sample_rate if audio_stream is not None else None
    timestamps = np.asarray(timestamps, dtype=np.float64)
    audio = audio_start = None
    if with_audio:
        if not audio_chunks:
            raise VAEmotionInputError(f"{path}: the audio stream holds no samples under the sampled frames")
        track = np.concatenate(audio_chunks, axis=1)
        audio, audio_start = _cut_audio(track, audio_rate, audio_time, timestamps, frame_period, sampling_rate, path)
    metadata = _metadata(total_frames, source_fps, duration, frames[0], indices, "pyav")
    return VideoClip(np.stack(frames), timestamps, source_fps, duration, audio, sampling_rate, audio_start, metadata, path)


def _sample_for_file(path: str, total_frames: int, source_fps: float, sampling: dict) -> np.ndarray:
    try:
        return sample_frame_indices(total_frames, source_fps, **sampling)
    except VAEmotionInputError as error:
        raise VAEmotionInputError(f"{path}: {error}") from None


def _select_streams(container, path: str, with_audio: bool):
    if not container.streams.video:
        raise VAEmotionInputError(f"{path}: the file has no video stream")
    audio_stream = None
    if with_audio:
        if not container.streams.audio:
            raise VAEmotionInputError(
                f"{path}: the video has no audio stream, but audio was requested (with_audio=True)"
            )
        audio_stream = container.streams.audio[0]
    video_stream = container.streams.video[0]
    # Decoding every frame dominates the cost: frame threads pay off with several cores, slice threads on one.
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    video_stream.thread_type = "AUTO" if cores and cores > 1 else "SLICE"
    return video_stream, audio_stream


def _count_video_packets(path: str) -> int:
    # Matroska/WebM headers carry no frame count; one packet per frame holds for the codecs VLM inputs come in.
    with _open_container(path) as container:
        return sum(1 for packet in container.demux(video=0) if packet.size)


def _stream_duration(stream) -> float | None:
    if stream.duration is None or stream.time_base is None:
        return None
    return float(stream.duration * stream.time_base)


def _demux(container, video_stream, audio_stream, indices: np.ndarray, source_fps: float, frame_period: float):
    """One pass over the packets of both streams: keep the sampled frames and the audio up to their end.

    Every video frame must be decoded (inter-frame coding), but only the sampled ones are converted to RGB.
    Once the last sampled frame is out, video packets are skipped and audio is decoded until it passes the end.
    """
    wanted = set(indices.tolist())
    last_index = int(indices[-1])
    frames, timestamps, audio_chunks = [], [], []
    audio_time = None  # time of the first audio sample decoded
    end_time = math.inf
    frame_index = -1
    streams = [video_stream] + ([audio_stream] if audio_stream is not None else [])
    for packet in container.demux(streams):
        if packet.stream is video_stream:
            if frame_index >= last_index:
                if audio_stream is None:
                    break
                continue
            for frame in packet.decode():
                frame_index += 1
                if frame_index in wanted:
                    frames.append(frame.to_ndarray(format="rgb24"))
                    timestamps.append(frame.time if frame.time is not None else frame_index / source_fps)
                if frame_index == last_index:
                    end_time = timestamps[-1] + frame_period
                    break
        else:
            for frame in packet.decode():
                if audio_time is None:
                    audio_time = frame.time or 0.0
                audio_chunks.append(_audio_frame_to_float(frame))
            if frame_index >= last_index and packet.pts is not None and packet.pts * packet.time_base >= end_time:
                break
    return frames, timestamps, audio_chunks, audio_time


def _cut_audio(track, track_rate, track_time, timestamps, frame_period, sampling_rate, path):
    """The part of `track` (channels x samples, starting at `track_time` s) under the sampled frames, resampled."""
    start, stop = timestamps[0], timestamps[-1] + frame_period
    first = min(max(round((start - track_time) * track_rate), 0), track.shape[1])
    last = min(max(round((stop - track_time) * track_rate), 0), track.shape[1])
    if last <= first:
        raise VAEmotionInputError(
            f"{path}: the audio track ({track_time:.3f}s to {track_time + track.shape[1] / track_rate:.3f}s) does "
            f"not cover the sampled frames ({start:.3f}s to {stop:.3f}s)"
        )
    mono = _to_mono(track[:, first:last], path)
    audio = np.clip(resample_audio(mono, track_rate, sampling_rate), -1.0, 1.0)
    return audio, track_time + first / track_rate


def _metadata(total_frames, source_fps, duration, frame, indices, backend) -> VideoMetadata:
    return VideoMetadata(
        total_num_frames=int(total_frames),
        fps=float(source_fps),
        width=int(frame.shape[1]),
        height=int(frame.shape[0]),
        duration=float(duration),
        video_backend=backend,
        frames_indices=indices.tolist(),
    )


def _load_video_torchcodec(path: str, decoders, sampling: dict, with_audio: bool, sampling_rate: int) -> VideoClip:
    video_decoder_class, audio_decoder_class = decoders
    try:
        decoder = video_decoder_class(path, dimension_order="NHWC")
        total_frames, source_fps = decoder.metadata.num_frames, float(decoder.metadata.average_fps)
        indices = _sample_for_file(path, total_frames, source_fps, sampling)
        batch = decoder.get_frames_at(indices=indices.tolist())
        frames, timestamps = batch.data.numpy(), batch.pts_seconds.double().numpy()
        duration = float(decoder.metadata.duration_seconds or total_frames / source_fps)
        audio = audio_start = None
        if with_audio:
            audio_decoder = audio_decoder_class(path)
            frame_period = total_frames / (len(indices) * source_fps)
            samples = audio_decoder.get_samples_played_in_range(
                float(timestamps[0]), float(timestamps[-1]) + frame_period
            )
            mono = _to_mono(samples.data.numpy(), path)
            audio = np.clip(resample_audio(mono, samples.sample_rate, sampling_rate), -1.0, 1.0)
            audio_start = float(samples.pts_seconds)
    except VAEmotionInputError:
        raise
    except Exception as error:  # torchcodec raises RuntimeError/ValueError for unreadable files and missing streams
        raise VAEmotionInputError(f"{path}: torchcodec cannot decode the file ({error})") from error
    metadata = _metadata(total_frames, source_fps, duration, frames[0], indices, "torchcodec")
    return VideoClip(frames, timestamps, source_fps, duration, audio, sampling_rate, audio_start, metadata, path)


__all__ = [
    "VAEmotionInputError",
    "VideoClip",
    "has_audio_stream",
    "load_audio",
    "load_video",
    "resample_audio",
    "sample_frame_indices",
]
