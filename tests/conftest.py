"""Shared test helpers: media files written on the fly with PyAV and soundfile (nothing is downloaded)."""

import av
import numpy as np
import pytest


def tone(seconds, sampling_rate, frequency=440.0, amplitude=0.5, onset=0.0):
    """A sine that is silent before ``onset`` seconds."""
    t = np.arange(int(round(seconds * sampling_rate))) / sampling_rate
    return np.where(t >= onset, amplitude * np.sin(2 * np.pi * frequency * t), 0.0).astype(np.float32)


def write_video(path, seconds=2.0, fps=10, size=(48, 64), audio=True, sampling_rate=44100, onset=None,
                video_codec="libx264", audio_codec="aac"):
    """A video whose frames turn from black to white at ``onset`` s, when a 440 Hz stereo tone starts."""
    onset = seconds / 2 if onset is None else onset
    height, width = size
    with av.open(str(path), "w") as container:
        video = container.add_stream(video_codec, rate=fps)
        video.width, video.height, video.pix_fmt = width, height, "yuv420p"
        sound = None
        if audio:
            sound = container.add_stream(audio_codec, rate=sampling_rate)
            sound.layout = "stereo"
        for index in range(int(seconds * fps)):
            pixels = np.full((height, width, 3), 255 if index / fps >= onset else 0, np.uint8)
            frame = av.VideoFrame.from_ndarray(pixels, format="rgb24")
            frame.pts = index
            container.mux(video.encode(frame))
        container.mux(video.encode())
        if sound is not None:
            samples = tone(seconds, sampling_rate, onset=onset)
            stereo = np.stack([samples, samples])
            frame_size = sound.codec_context.frame_size or 1024
            for start in range(0, stereo.shape[1], frame_size):
                frame = av.AudioFrame.from_ndarray(
                    np.ascontiguousarray(stereo[:, start : start + frame_size]), format="fltp", layout="stereo"
                )
                frame.sample_rate, frame.pts = sampling_rate, start
                container.mux(sound.encode(frame))
            container.mux(sound.encode())
    return str(path)


@pytest.fixture(scope="session")
def media_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("media")


@pytest.fixture(scope="session")
def av_clip(media_dir):
    """2 s of 10 fps H.264 + 44.1 kHz AAC; picture and tone both start at 1.0 s."""
    return write_video(media_dir / "clip.mp4")


@pytest.fixture(scope="session")
def silent_clip(media_dir):
    """A video without an audio stream."""
    return write_video(media_dir / "silent.mp4", audio=False)
