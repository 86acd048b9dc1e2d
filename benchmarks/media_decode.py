"""Clips per second per core: 10 s 720p H.264 + AAC clips decoded into model inputs.

Compares, in the same run and on the same pinned CPU core:

* **VAEmotion**: `VAEmotionProcessor(text, videos=[path], load_audio_from_video=True, num_frames=...)`: one demux pass
  gives the sampled frames and the audio under them (`vaemotion.media.load_video`).
* **transformers, two decodes**: `transformers.video_utils.load_video(path, backend="pyav")` for the frames, then a
  second PyAV pass for the audio track (`transformers.audio_utils.load_audio` cannot read mp4 without torchcodec;
  that is checked and reported), then the same processor on frames + metadata + audio.

Both arms end with the same processor call (Qwen2.5-VL's default video resizing, 128-mel Whisper features), so the
difference is the decoding. Run: `python benchmarks/media_decode.py [--clips 3] [--repeats 2] [--num-frames 16]`.
"""

import argparse
import os
import tempfile
import time

import av
import numpy as np
import torch
from transformers import Qwen2VLImageProcessor, Qwen2VLVideoProcessor, WhisperFeatureExtractor
from transformers.audio_utils import load_audio as transformers_load_audio
from transformers.video_utils import load_video as transformers_load_video

from vaemotion.media import load_video
from vaemotion.processing_vaemotion import VAEmotionProcessor
from vaemotion.tiny import build_tiny_tokenizer


PROMPT = "<|vision_start|><|video_pad|><|vision_end|><|audio_bos|><|audio_pad|><|audio_eos|>describe"


def write_clip(path, seconds=10, fps=30, width=1280, height=720, sampling_rate=44100, seed=0):
    """A moving textured picture (not trivially compressible) with a stereo chord."""
    rng = np.random.default_rng(seed)
    texture = rng.integers(0, 256, (height, width + seconds * fps * 4, 3), dtype=np.uint8)
    with av.open(path, "w") as container:
        video = container.add_stream("libx264", rate=fps, options={"preset": "veryfast", "crf": "23"})
        video.width, video.height, video.pix_fmt = width, height, "yuv420p"
        audio = container.add_stream("aac", rate=sampling_rate)
        audio.layout = "stereo"
        for index in range(seconds * fps):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(texture[:, index * 4 : index * 4 + width]))
            frame.pts = index
            container.mux(video.encode(frame))
        container.mux(video.encode())
        t = np.arange(seconds * sampling_rate) / sampling_rate
        chord = (0.2 * (np.sin(2 * np.pi * 220 * t) + np.sin(2 * np.pi * 277 * t))).astype(np.float32)
        stereo = np.stack([chord, chord])
        for start in range(0, stereo.shape[1], 1024):
            frame = av.AudioFrame.from_ndarray(
                np.ascontiguousarray(stereo[:, start : start + 1024]), format="fltp", layout="stereo"
            )
            frame.sample_rate, frame.pts = sampling_rate, start
            container.mux(audio.encode(frame))
        container.mux(audio.encode())


def build_processor():
    return VAEmotionProcessor(
        image_processor=Qwen2VLImageProcessor(),
        tokenizer=build_tiny_tokenizer(),
        video_processor=Qwen2VLVideoProcessor(cap_pixels_per_frame=True),
        feature_extractor=WhisperFeatureExtractor(feature_size=128),
    )


def vaemotion_inputs(processor, path, num_frames):
    return processor(text=PROMPT, videos=[path], load_audio_from_video=True, num_frames=num_frames, return_tensors="pt")


def pyav_audio_track(path, sampling_rate=16000):
    """The second decode of the baseline: the whole audio track, mono at `sampling_rate`, through swresample."""
    resampler = av.AudioResampler(format="flt", layout="mono", rate=sampling_rate)
    chunks = []
    with av.open(path) as container:
        for frame in container.decode(audio=0):
            chunks.extend(resampled.to_ndarray().reshape(-1) for resampled in resampler.resample(frame))
    chunks.extend(resampled.to_ndarray().reshape(-1) for resampled in resampler.resample(None))
    return np.concatenate(chunks)


def vaemotion_decode(processor, path, num_frames):
    return load_video(path, num_frames=num_frames, frame_multiple=processor.video_processor.temporal_patch_size)


def transformers_decode(processor, path, num_frames):
    return transformers_load_video(path, num_frames=num_frames, backend="pyav"), pyav_audio_track(path)


def transformers_inputs(processor, path, num_frames):
    frames, metadata = transformers_load_video(path, num_frames=num_frames, backend="pyav")
    audio = pyav_audio_track(path)
    return processor(
        text=PROMPT,
        videos=[frames],
        video_metadata=[metadata],
        audio=[{"array": audio, "sampling_rate": 16000}],
        return_tensors="pt",
    )


def clips_per_second(pipelines: dict, processor, paths, num_frames, repeats) -> dict:
    """Runs the pipelines in turn on each clip (so cache and allocator state favour neither) and times each one."""
    for function in pipelines.values():
        function(processor, paths[0], num_frames)  # warm-up: imports, filter banks, thread pools
    seconds = dict.fromkeys(pipelines, 0.0)
    for _ in range(repeats):
        for path in paths:
            for name, function in pipelines.items():
                start = time.perf_counter()
                function(processor, path, num_frames)
                seconds[name] += time.perf_counter() - start
    return {name: repeats * len(paths) / total for name, total in seconds.items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--num-frames", type=int, default=16)
    args = parser.parse_args()

    # One core for both arms: the numbers are per core, and FFmpeg/torch threads cannot borrow a second one.
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    torch.set_num_threads(1)
    processor = build_processor()
    with tempfile.TemporaryDirectory() as directory:
        paths = [os.path.join(directory, f"clip{index}.mp4") for index in range(args.clips)]
        started = time.perf_counter()
        for seed, path in enumerate(paths):
            write_clip(path, seed=seed)
        print(f"wrote {args.clips} clips of 10 s 1280x720 30 fps H.264 + 44.1 kHz AAC in {time.perf_counter() - started:.1f}s")
        try:
            transformers_load_audio(paths[0])
            print("transformers.audio_utils.load_audio read the mp4 (torchcodec present)")
        except Exception as error:  # what users without torchcodec get
            print(f"transformers.audio_utils.load_audio(mp4) fails here: {type(error).__name__}: {str(error)[:100]}")

        ours = vaemotion_inputs(processor, paths[0], args.num_frames)
        theirs = transformers_inputs(processor, paths[0], args.num_frames)
        assert ours["pixel_values_videos"].shape == theirs["pixel_values_videos"].shape
        print(f"model inputs: pixel_values_videos {tuple(ours['pixel_values_videos'].shape)}, "
              f"input_features {tuple(ours['input_features'].shape)}, {args.num_frames} frames per clip")

        stages = {
            "decode only (frames + audio)": {"vaemotion": vaemotion_decode, "transformers": transformers_decode},
            "decode + processor (model inputs)": {"vaemotion": vaemotion_inputs, "transformers": transformers_inputs},
        }
        results = {
            stage: clips_per_second(pipelines, processor, paths, args.num_frames, args.repeats)
            for stage, pipelines in stages.items()
        }
    print(f"\n{'stage':36s} {'vaemotion':>10s} {'transformers':>13s} {'ratio':>6s}   (clips/s/core)")
    for stage, rates in results.items():
        ratio = rates["vaemotion"] / rates["transformers"]
        print(f"{stage:36s} {rates['vaemotion']:10.3f} {rates['transformers']:13.3f} {ratio:5.2f}x")
    print("vaemotion: one demux pass (vaemotion.media.load_video); transformers: video_utils.load_video(backend='pyav')"
          " + a second PyAV pass for the audio (audio_utils.load_audio cannot read mp4 without torchcodec)")


if __name__ == "__main__":
    main()
