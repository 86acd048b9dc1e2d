"""Writing ArtEmo-Synth media: mp4 clips (H.264 video + AAC soundtrack) or still png + wav pairs, atomically.

Every writer encodes to a hidden temporary name next to the target and then ``os.replace``-s it into place, so an
interrupted run never leaves a truncated file under a final name that looks complete.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import soundfile
from PIL import Image


def write_atomically(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Call ``write(temporary_path)``, then move the result to ``path``; the temporary file is removed on failure."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.partial")
    try:
        write(temporary)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    return path


def check_media(frames: np.ndarray, audio: np.ndarray) -> None:
    """Refuse arrays the encoders would reject or silently damage, with a clear message."""
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be uint8 of shape (T, H, W, 3), got {frames.dtype} {frames.shape}")
    if frames.shape[1] % 2 or frames.shape[2] % 2:
        raise ValueError(f"H.264 (yuv420p) needs an even frame height and width, got {frames.shape[1:3]}")
    if audio.ndim != 1:
        raise ValueError(f"audio must be mono, shape (samples,), got {audio.shape}")


def add_video_stream(container, frames: np.ndarray, fps: float):
    """An H.264 stream for ``frames`` whose bytes depend on the frames only.

    x264's macroblock-tree rate control was seen to vary from run to run on tiny frames, so it is off (``mbtree=0``,
    a small cost in compression at these sizes); the encoder runs single-threaded.
    """
    stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
    stream.height, stream.width = frames.shape[1:3]
    stream.pix_fmt = "yuv420p"
    stream.codec_context.thread_count = 1
    stream.options = {"crf": "18", "preset": "veryfast", "x264-params": "mbtree=0"}
    return stream


# BT.601 limited-range RGB -> YCbCr (the matrix decoders assume for untagged SD video), rows Y, Cb, Cr.
RGB_TO_YCBCR = np.array(
    [[0.25679, 0.50413, 0.09790], [-0.14822, -0.29099, 0.43922], [0.43922, -0.36779, -0.07142]], np.float32
)
YCBCR_OFFSET = np.array([16.0, 128.0, 128.0], np.float32)


def rgb_to_yuv420p(image: np.ndarray) -> np.ndarray:
    """A uint8 (H, W, 3) RGB image as a planar yuv420p array (H * 3 / 2, W), chroma averaged over 2x2 blocks.

    Converting here, in numpy, rather than letting FFmpeg's swscale do it keeps the encoder's input, hence the file,
    identical from run to run and independent of FFmpeg's scaler.
    """
    height, width = image.shape[:2]
    ycbcr = np.einsum("hwc,kc->hwk", image.astype(np.float32), RGB_TO_YCBCR) + YCBCR_OFFSET  # no BLAS threads
    chroma = ycbcr[..., 1:].reshape(height // 2, 2, width // 2, 2, 2).mean(axis=(1, 3))
    planes = [ycbcr[..., 0].ravel(), chroma[..., 0].ravel(), chroma[..., 1].ravel()]
    return np.clip(np.rint(np.concatenate(planes)), 0, 255).astype(np.uint8).reshape(height * 3 // 2, width)


def encode(container, stream, frames) -> None:
    """Encode ``frames`` into ``stream`` and flush the encoder."""
    for frame in frames:
        container.mux(stream.encode(frame))
    container.mux(stream.encode(None))


def audio_frame(audio: np.ndarray, sampling_rate: int) -> av.AudioFrame:
    """The whole mono ``audio`` (float in [-1, 1]) as one planar float frame starting at time 0."""
    frame = av.AudioFrame.from_ndarray(np.asarray(audio, np.float32)[None, :], format="fltp", layout="mono")
    frame.sample_rate = sampling_rate
    frame.pts = 0
    return frame


def write_clip(path: str | os.PathLike, frames: np.ndarray, audio: np.ndarray, fps: float, sampling_rate: int) -> Path:
    """Write an mp4 with H.264 video (``frames``: uint8 (T, H, W, 3)) and an AAC soundtrack (mono ``audio``)."""
    check_media(frames, audio)

    def write(temporary: Path) -> None:
        with av.open(str(temporary), mode="w", format="mp4") as container:
            video = add_video_stream(container, frames, fps)
            sound = container.add_stream("aac", rate=sampling_rate, layout="mono")
            pictures = (av.VideoFrame.from_ndarray(rgb_to_yuv420p(image), format="yuv420p") for image in frames)
            encode(container, video, pictures)
            encode(container, sound, [audio_frame(audio, sampling_rate)])

    return write_atomically(path, write)


def write_image(path: str | os.PathLike, image: np.ndarray) -> Path:
    """Write one uint8 (H, W, 3) picture as png."""
    return write_atomically(path, lambda temporary: Image.fromarray(image).save(temporary, format="PNG"))


def write_wav(path: str | os.PathLike, audio: np.ndarray, sampling_rate: int) -> Path:
    """Write mono ``audio`` (float in [-1, 1]) as 16-bit PCM wav."""
    return write_atomically(
        path, lambda temporary: soundfile.write(temporary, audio, sampling_rate, format="WAV", subtype="PCM_16")
    )
