"""vaemotion.media: decoding, resampling and A/V sync, checked against signals whose properties we know exactly."""

import av
import numpy as np
import pytest
import soundfile
from conftest import tone, write_video

from vaemotion.media import VAEmotionInputError, load_audio, load_image, load_video, sample_frame_indices


AAC_FRAME_SECONDS = 1024 / 44100  # the sync tolerance: one AAC frame of the 44.1 kHz test tracks


def dominant_frequency(samples, sampling_rate):
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
    return np.fft.rfftfreq(len(samples), 1 / sampling_rate)[np.argmax(spectrum)]


def onset_time(samples, sampling_rate, start=0.0, threshold=0.05):
    return start + np.argmax(np.abs(samples) > threshold) / sampling_rate


def write_mp3(path, samples, sampling_rate):
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libmp3lame", rate=sampling_rate)
        stream.layout = "mono"
        frame = av.AudioFrame.from_ndarray(samples[None], format="fltp", layout="mono")
        frame.sample_rate, frame.pts = sampling_rate, 0
        container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return str(path)


@pytest.mark.parametrize("extension", ["wav", "flac", "ogg", "mp3"])
def test_audio_files_decode_to_16k_mono(tmp_path, extension):
    samples = tone(1.0, 44100, frequency=1000.0, amplitude=0.5)
    path = tmp_path / f"tone.{extension}"
    if extension == "mp3":
        write_mp3(path, samples, 44100)
    else:
        soundfile.write(path, np.stack([samples, samples], axis=1), 44100)  # stereo
    audio = load_audio(path)
    assert audio.dtype == np.float32 and audio.ndim == 1
    # Lossy codecs add at most a couple of codec frames of delay/padding (mp3: 1152 samples at 44.1k).
    tolerance = 0 if extension in ("wav", "flac") else int(2 * 1152 * 16000 / 44100)
    assert abs(len(audio) - 16000) <= tolerance
    assert dominant_frequency(audio, 16000) == pytest.approx(1000.0, abs=2.0)
    middle = audio[4000:12000]
    assert np.sqrt(np.mean(middle**2)) == pytest.approx(0.5 / np.sqrt(2), rel=0.05)


def test_resampling_keeps_in_band_tones_and_removes_aliases():
    t = np.arange(44100) / 44100
    in_band = 0.8 * np.sin(2 * np.pi * 1000 * t)
    audio = load_audio({"array": in_band, "sampling_rate": 44100})
    assert len(audio) == 16000
    assert dominant_frequency(audio, 16000) == pytest.approx(1000.0, abs=1.0)
    reference = 0.8 * np.sin(2 * np.pi * 1000 * np.arange(16000) / 16000)
    np.testing.assert_allclose(audio[500:-500], reference[500:-500], atol=1e-3)
    # 10 kHz is above the 8 kHz Nyquist limit of 16 kHz: decimating without a filter would fold it to 6 kHz at
    # full amplitude; an anti-aliasing resampler removes it.
    above_nyquist = load_audio(0.8 * np.sin(2 * np.pi * 10000 * t), source_sampling_rate=44100)
    assert np.sqrt(np.mean(above_nyquist[500:-500] ** 2)) < 0.01 * 0.8 / np.sqrt(2)


def test_arrays_channels_and_integer_pcm():
    left, right = tone(0.5, 16000, amplitude=0.6), tone(0.5, 16000, amplitude=0.2)
    expected_mono = (left + right) / 2
    np.testing.assert_allclose(load_audio(np.stack([left, right]), source_sampling_rate=16000), expected_mono, atol=1e-6)
    np.testing.assert_allclose(load_audio(np.stack([left, right], 1), source_sampling_rate=16000), expected_mono, atol=1e-6)
    full_scale = np.array([-32768, 0, 16384], dtype=np.int16)
    np.testing.assert_allclose(load_audio(full_scale, source_sampling_rate=16000), [-1.0, 0.0, 0.5])


@pytest.mark.parametrize(
    "bad, match",
    [
        (np.zeros(100, np.float32), "path_or_array: an audio array has no sampling rate"),
        ({"array": np.zeros(100)}, "path_or_array: an audio dict needs 'array' and 'sampling_rate'"),
        ({"array": np.zeros(0), "sampling_rate": 16000}, "path_or_array: the audio is empty"),
        ({"array": np.array([0.1, np.nan]), "sampling_rate": 16000}, "path_or_array: .*NaN or infinite"),
        ({"array": np.array([0.1, np.inf]), "sampling_rate": 16000}, "path_or_array: .*NaN or infinite"),
        ({"array": np.array([0.0, 1200.0]), "sampling_rate": 16000}, "path_or_array: float audio must lie in"),
        ({"array": np.zeros(100), "sampling_rate": 0}, "path_or_array: the audio's sampling rate must be a positive"),
        ({"array": np.zeros(100), "sampling_rate": -16000}, "sampling rate must be a positive whole number of Hz"),
        ({"array": np.zeros(100), "sampling_rate": 22050.5}, "sampling rate must be a positive whole number"),
        ({"array": np.zeros(100), "sampling_rate": True}, "sampling rate must be a positive whole number"),
    ],
)
def test_bad_audio_arrays(bad, match):
    with pytest.raises(VAEmotionInputError, match=match):
        load_audio(bad)


def test_bfloat16_tensors_load_and_ragged_lists_are_named():
    import torch

    samples = torch.linspace(-0.5, 0.5, 160)
    loaded = load_audio({"array": samples.to(torch.bfloat16), "sampling_rate": 16000})
    np.testing.assert_allclose(loaded, samples.to(torch.bfloat16).float().numpy())
    with pytest.raises(VAEmotionInputError, match="audio must be a rectangular array of samples"):
        load_audio({"array": [[0.0, 0.1], [0.2]], "sampling_rate": 16000})


@pytest.mark.parametrize("rate", [0, -8000, 16000.5])
def test_a_bad_target_sampling_rate_is_named(rate):
    with pytest.raises(VAEmotionInputError, match=f"sampling_rate must be a positive whole number of Hz, got {rate}"):
        load_audio({"array": np.zeros(100), "sampling_rate": 16000}, sampling_rate=rate)
    assert load_audio({"array": np.zeros(100), "sampling_rate": 16000.0}).shape == (100,)  # a whole float is fine


def test_a_bad_sampling_rate_for_a_video_track_is_named(av_clip):
    with pytest.raises(VAEmotionInputError, match="sampling_rate must be a positive whole number of Hz, got 0"):
        load_video(av_clip, num_frames=2, sampling_rate=0)


def test_bad_audio_files(tmp_path, silent_clip):
    missing = tmp_path / "missing.wav"
    with pytest.raises(VAEmotionInputError, match=f"{missing}: file not found"):
        load_audio(missing)
    corrupt = tmp_path / "corrupt.wav"
    corrupt.write_bytes(b"RIFF" + np.random.default_rng(0).bytes(2000))
    with pytest.raises(VAEmotionInputError, match=f"{corrupt}: cannot"):
        load_audio(corrupt)
    empty = tmp_path / "empty.wav"
    soundfile.write(empty, np.zeros(0, np.float32), 16000)
    with pytest.raises(VAEmotionInputError, match=f"{empty}: the audio is empty"):
        load_audio(empty)
    with pytest.raises(VAEmotionInputError, match=f"{silent_clip}: the file has no audio stream"):
        load_audio(silent_clip)


def test_audio_track_of_a_video(av_clip):
    audio = load_audio(av_clip)
    assert abs(len(audio) - 32000) <= 1024 * 16000 / 44100 * 2  # AAC padding: at most a frame at each end
    assert onset_time(audio, 16000) == pytest.approx(1.0, abs=AAC_FRAME_SECONDS)


def test_load_video_frames_timestamps_and_metadata(av_clip):
    clip = load_video(av_clip, num_frames=5)
    # 20 frames at 10 fps, 5 sampled uniformly: indices 0, 4, 8, 12, 16 -> 0.0 ... 1.6 s
    np.testing.assert_allclose(clip.timestamps, [0.0, 0.4, 0.8, 1.2, 1.6])
    assert clip.frames.shape == (5, 48, 64, 3) and clip.frames.dtype == np.uint8
    white = clip.frames.reshape(5, -1).mean(-1) > 127
    assert white.tolist() == [False, False, False, True, True]  # the picture turns white at 1.0 s
    assert clip.fps == 10 and clip.duration == pytest.approx(2.0)
    assert clip.metadata.total_num_frames == 20 and clip.metadata.frames_indices == [0, 4, 8, 12, 16]
    assert clip.metadata.sampled_fps == pytest.approx(2.5)
    np.testing.assert_allclose(clip.metadata.timestamps, clip.timestamps)
    # The audio spans the sampled frames: from 0.0 s to 1.6 s + one sampled-frame period (0.4 s).
    assert clip.audio_start == pytest.approx(0.0)
    assert abs(len(clip.audio) - 2.0 * 16000) <= 1
    every_frame = load_video(av_clip)
    assert abs(len(every_frame.audio) - 2.0 * 16000) <= 1  # 1.9 s + 0.1 s


def test_audio_is_in_sync_with_frames(media_dir):
    path = write_video(media_dir / "sync.mp4", seconds=3.0, fps=25, onset=1.32)
    clip = load_video(path)  # every frame
    first_white = clip.timestamps[np.argmax(clip.frames.reshape(len(clip.frames), -1).mean(-1) > 127)]
    assert first_white == pytest.approx(1.32)
    assert onset_time(clip.audio, 16000, clip.audio_start) == pytest.approx(first_white, abs=AAC_FRAME_SECONDS)
    sparse = load_video(path, fps=2)
    assert onset_time(sparse.audio, 16000, sparse.audio_start) == pytest.approx(1.32, abs=AAC_FRAME_SECONDS)


def test_webm_without_frame_count_in_header(media_dir):
    path = write_video(media_dir / "clip.webm", video_codec="libvpx-vp9", audio_codec="libopus", sampling_rate=48000)
    with av.open(path) as container:
        assert container.streams.video[0].frames == 0  # Matroska does not store it: frames are counted
    clip = load_video(path, num_frames=4)
    np.testing.assert_allclose(clip.timestamps, [0.0, 0.5, 1.0, 1.5])
    assert onset_time(clip.audio, 16000, clip.audio_start) == pytest.approx(1.0, abs=960 / 48000)


def test_silent_video(silent_clip):
    with pytest.raises(VAEmotionInputError, match=f"{silent_clip}: the video has no audio stream.*with_audio=True"):
        load_video(silent_clip)
    clip = load_video(silent_clip, num_frames=2, with_audio=False)
    assert clip.audio is None and clip.frames.shape[0] == 2


def test_frame_counts():
    np.testing.assert_array_equal(sample_frame_indices(20, 10.0, num_frames=5), [0, 4, 8, 12, 16])
    assert len(sample_frame_indices(20, 10.0, num_frames=5, frame_multiple=2)) == 4
    assert len(sample_frame_indices(20, 10.0, fps=1.5, frame_multiple=2)) == 2  # 3 frames, rounded down to pairs
    assert len(sample_frame_indices(1, 10.0, frame_multiple=2)) == 1  # too short: the VLM pads it
    with pytest.raises(VAEmotionInputError, match="num_frames: asked for 30 frames but the video has 20"):
        sample_frame_indices(20, 10.0, num_frames=30)
    with pytest.raises(VAEmotionInputError, match="num_frames and fps"):
        sample_frame_indices(20, 10.0, num_frames=2, fps=1.0)


@pytest.mark.parametrize(
    "arguments, message",
    [
        ({"num_frames": "4"}, "num_frames: must be a whole number"),
        ({"num_frames": 2.0}, "num_frames: must be a whole number"),
        ({"fps": float("inf")}, "fps: must be a finite number"),
        ({"fps": "2"}, "fps: must be a finite number"),
        ({"frame_multiple": 0}, "frame_multiple: must be a whole number >= 1, got 0"),
    ],
)
def test_bad_frame_sampling_arguments_are_named(av_clip, arguments, message):
    with pytest.raises(VAEmotionInputError, match=message):
        load_video(av_clip, **arguments)
    with pytest.raises(VAEmotionInputError, match=message):
        sample_frame_indices(20, 10.0, **arguments)
    with pytest.raises(VAEmotionInputError, match="video: must be a path to a video file, got NoneType"):
        load_video(None)


def test_bad_video_files(tmp_path, av_clip):
    missing = tmp_path / "missing.mp4"
    with pytest.raises(VAEmotionInputError, match=f"{missing}: file not found"):
        load_video(missing)
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(np.random.default_rng(0).bytes(5000))
    with pytest.raises(VAEmotionInputError, match=f"{garbage}: cannot read the file"):
        load_video(garbage)
    for truncated in (tmp_path / "truncated.mp4", tmp_path / "truncated.mkv"):
        write_video(truncated, seconds=2.0)
        truncated.write_bytes(truncated.read_bytes()[: truncated.stat().st_size // 2])
        with pytest.raises(VAEmotionInputError, match=f"{truncated}: "):
            load_video(truncated, num_frames=20, with_audio=False)
    audio_only = tmp_path / "audio.wav"
    soundfile.write(audio_only, tone(0.5, 16000), 16000)
    with pytest.raises(VAEmotionInputError, match=f"{audio_only}: the file has no video stream"):
        load_video(audio_only)


def test_torchcodec_backend_matches_pyav(av_clip):
    pytest.importorskip("torchcodec.decoders")
    reference = load_video(av_clip, num_frames=4, backend="pyav")
    clip = load_video(av_clip, num_frames=4, backend="torchcodec")
    np.testing.assert_array_equal(clip.frames, reference.frames)
    np.testing.assert_allclose(clip.timestamps, reference.timestamps)
    assert onset_time(clip.audio, 16000, clip.audio_start) == pytest.approx(1.0, abs=AAC_FRAME_SECONDS)


# ------------------------------------------------------------------------------------------------ images
def bomb_png(path, width=12_000, height=12_000):
    """A valid 1 x 1 PNG whose header is rewritten to declare ``width`` x ``height`` (a few hundred bytes)."""
    import struct
    import zlib

    from PIL import Image

    Image.new("L", (1, 1)).save(path)
    data = bytearray(path.read_bytes())
    ihdr = data[12:29]  # b"IHDR" + 13 bytes
    ihdr[4:12] = struct.pack(">II", width, height)
    data[12:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(ihdr)))
    path.write_bytes(bytes(data))
    return path


def test_a_decompression_bomb_is_refused_from_its_header(tmp_path):
    import tracemalloc

    from PIL import Image

    path = bomb_png(tmp_path / "bomb.png")
    with pytest.warns(Image.DecompressionBombWarning), Image.open(path) as opened:  # at 144 Mpx Pillow only warns
        assert opened.size == (12_000, 12_000)
    tracemalloc.start()
    with pytest.raises(VAEmotionInputError, match=r"bomb.png: the picture is 12000 x 12000 = 144000000 pixels"):
        load_image(path)
    assert tracemalloc.get_traced_memory()[1] < 10_000_000  # nothing was decoded
    tracemalloc.stop()
    with pytest.raises(VAEmotionInputError, match="max_pixels=1000"):
        load_image(bomb_png(tmp_path / "small.png", 40, 30), max_pixels=1000)
    with pytest.raises(VAEmotionInputError, match="small.png: cannot be read as an image"):  # within the limit,
        load_image(tmp_path / "small.png", max_pixels=1200)  # it is decoded, and its missing rows are named


def test_a_picture_at_the_limit_is_decoded(tmp_path):
    from PIL import Image

    path = tmp_path / "at_limit.png"
    Image.new("RGB", (40, 30), (10, 20, 30)).save(path)
    assert np.asarray(load_image(path, max_pixels=1200)).tolist()[0][0] == [10, 20, 30]
    with pytest.raises(VAEmotionInputError, match="max_pixels=1199"):
        load_image(path, max_pixels=1199)
    for bad in (0, -5, 1.5, True, "big"):
        with pytest.raises(VAEmotionInputError, match="max_pixels"):
            load_image(path, max_pixels=bad)


def test_sixteen_bit_pictures_are_scaled_not_clipped(tmp_path):
    from PIL import Image

    levels = np.array([[0, 257, 32768, 65535]], np.uint16)
    path = tmp_path / "grey16.png"
    Image.fromarray(levels).save(path)
    with Image.open(path) as opened:
        clipped = np.asarray(opened.convert("RGB"))[0, :, 0]
        assert clipped.tolist()[1:] == [255, 255, 255]  # what Pillow alone gives: white
    loaded = np.asarray(load_image(path))
    assert loaded.shape == (1, 4, 3)
    np.testing.assert_array_equal(loaded[0, :, 0], np.round(levels[0] / 257.0).astype(np.uint8))  # 65535 / 257 = 255
    np.testing.assert_array_equal(loaded[..., 0], loaded[..., 2])


@pytest.mark.parametrize("content, message", [(b"not a picture", "cannot be read as an image"), (None, "file not found")])
def test_unreadable_pictures_are_named(tmp_path, content, message):
    path = tmp_path / "broken.png"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(VAEmotionInputError, match=f"broken.png: {message}"):
        load_image(path)
    with pytest.raises(VAEmotionInputError, match="must be a path or a PIL image"):
        load_image(3)
