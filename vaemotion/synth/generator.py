"""ArtEmo-Synth: seeded synchronized audio-visual clips whose picture and sound express one latent, written in the
ArtEmoBenchmark layout (docs/benchmark_layout.md).

One seed fixes everything: ``SeedSequence(seed)`` is split into independent streams for the latents, the split,
the multiple-choice options, each clip's rendering and which cues each clip hides, so the metadata does not change when only the media size,
frame rate or duration does, and the same seed always writes the same files.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import math
import multiprocessing
import os
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from ..configuration_vaemotion import ARTEMIS_EMOTIONS
from .audio import render_audio
from .io import write_atomically, write_clip, write_image, write_wav
from .latents import CONTENT_CLASSES, CUES, HIDDEN_CUE_RATE, ClipLatent, Cues, sample_cues, sample_latents
from .visual import render_frames

CONTENT_QUESTION = "what is the main subject of this clip?"
EMOTION_QUESTION = "which emotion does this clip show?"
MEDIA_KINDS = ("video", "image")


@dataclass(frozen=True)
class SynthClip:
    """One rendered clip: its latent, what each modality shows of it, frames uint8 (T, H, W, 3) and mono float32
    audio in [-1, 1]."""

    latent: ClipLatent
    cues: Cues
    frames: np.ndarray
    audio: np.ndarray


@dataclass(frozen=True)
class Streams:
    """The independent random streams one seed is split into."""

    latents: np.random.Generator
    split: np.random.Generator
    options: np.random.Generator
    clips: list[np.random.SeedSequence]
    cues: np.random.Generator


def random_streams(seed: int, num_clips: int) -> Streams:
    """Split ``seed`` into the latent, split, option and cue streams and one rendering seed per clip."""
    latents, split, options, clips, cues = np.random.SeedSequence(seed).spawn(5)
    return Streams(
        latents=np.random.default_rng(latents),
        split=np.random.default_rng(split),
        options=np.random.default_rng(options),
        clips=clips.spawn(num_clips),
        cues=np.random.default_rng(cues),
    )


def num_frames(duration: float, fps: float) -> int:
    """Frames in a clip of ``duration`` s at ``fps`` (at least one)."""
    return max(1, int(round(duration * fps)))


def render_clip(
    latent: ClipLatent,
    rng: np.random.Generator,
    duration: float = 2.0,
    fps: float = 8.0,
    size: int = 64,
    sampling_rate: int = 16000,
    cues: Cues = Cues(),
) -> SynthClip:
    """Render a latent's sound, then its frames (which flash on the sound's note onsets), each hiding what ``cues``
    says (``None`` for a hidden part: see ``render_audio`` and ``render_frames``)."""
    audio, onsets = render_audio(
        latent.content, latent.valence if cues.sound_valence else None, latent.arousal, duration, sampling_rate, rng
    )
    frames = render_frames(
        latent.content if cues.picture_content else None,
        latent.valence,
        latent.arousal if cues.picture_arousal else None,
        onsets,
        rng,
        num_frames(duration, fps),
        size,
        fps,
    )
    return SynthClip(latent, cues, frames, audio)


def check_classes(classes: Sequence[str], num_options: int) -> list[str]:
    """The requested content classes, refused if unknown, repeated or too few for ``num_options`` options."""
    classes = list(classes)
    unknown = sorted(set(classes) - set(CONTENT_CLASSES))
    if unknown or len(set(classes)) != len(classes):
        raise ValueError(f"classes must be distinct names among {CONTENT_CLASSES}, got {classes}")
    if not 2 <= num_options <= min(len(classes), len(ARTEMIS_EMOTIONS)):
        raise ValueError(f"num_options must be between 2 and the number of classes ({len(classes)}), got {num_options}")
    return classes


def synthesize(
    num_clips: int,
    seed: int = 0,
    duration: float = 2.0,
    fps: float = 8.0,
    size: int = 64,
    sampling_rate: int = 16000,
    classes: Sequence[str] = CONTENT_CLASSES,
    hidden_cue_rate: float = HIDDEN_CUE_RATE,
) -> Iterator[SynthClip]:
    """Render ``num_clips`` clips in memory (the clips ``generate_benchmark`` with the same arguments writes)."""
    streams = random_streams(seed, num_clips)
    latents = sample_latents(num_clips, streams.latents, classes)
    cues = sample_cues(num_clips, streams.cues, hidden_cue_rate)
    for latent, clip_cues, clip_seed in zip(latents, cues, streams.clips):
        yield render_clip(latent, np.random.default_rng(clip_seed), duration, fps, size, sampling_rate, clip_cues)


def stratified_split(latents: Sequence[ClipLatent], test_fraction: float, rng: np.random.Generator) -> list[str]:
    """"train" or "test" per clip; within each content class a random ``test_fraction`` (at least one) is test.

    Every class keeps at least one clip on each side, so both splits cover all classes.
    """
    splits = ["train"] * len(latents)
    if test_fraction <= 0:
        return splits
    for content in sorted({latent.content for latent in latents}):
        members = [index for index, latent in enumerate(latents) if latent.content == content]
        if len(members) < 2:
            raise ValueError(f"class {content!r} has {len(members)} clip(s); a train/test split needs 2 per class")
        count = min(max(1, int(round(test_fraction * len(members)))), len(members) - 1)
        for index in rng.permutation(members)[:count]:
            splits[index] = "test"
    return splits


def multiple_choice(answer: str, names: Sequence[str], num_options: int, rng: np.random.Generator):
    """``num_options`` distinct options: ``answer`` and random others from ``names``, shuffled; and answer's index."""
    distractors = [name for name in names if name != answer]
    picked = rng.choice(len(distractors), num_options - 1, replace=False)
    candidates = [answer] + [distractors[index] for index in picked]
    options = [candidates[index] for index in rng.permutation(num_options)]
    return options, options.index(answer)


def media_fields(clip_id: str, media: str) -> dict[str, str | None]:
    """Relative media paths of a clip: an mp4 (video with its AAC track) or a png still + wav."""
    if media == "video":
        return {"video": f"media/{clip_id}.mp4", "image": None, "audio": None}
    return {"video": None, "image": f"media/{clip_id}.png", "audio": f"media/{clip_id}.wav"}


def clip_items(
    latent: ClipLatent, split: str, media: str, classes: Sequence[str], num_options: int, rng: np.random.Generator
) -> list[dict]:
    """The clip's two benchmark items (content, then emotion), as metadata.jsonl records."""
    shared = {
        "clip_id": latent.clip_id,
        "split": split,
        **media_fields(latent.clip_id, media),
    }
    labels = {
        "valence": latent.valence,
        "arousal": latent.arousal,
        "emotion": latent.emotion,
        "content": latent.content,
    }
    items = []
    for task, question, answer, names in (
        ("content", CONTENT_QUESTION, latent.content, classes),
        ("emotion", EMOTION_QUESTION, latent.emotion, ARTEMIS_EMOTIONS),
    ):
        options, index = multiple_choice(answer, names, num_options, rng)
        items.append(
            {"id": f"{latent.clip_id}-{task}", **shared, "task": task, "question": question, "options": options,
             "answer": index, **labels}
        )
    return items


def write_media(output_dir: Path, clip: SynthClip, media: str, fps: float, sampling_rate: int) -> None:
    """Write a clip's media where ``media_fields`` says (the still is the middle frame)."""
    paths = media_fields(clip.latent.clip_id, media)
    if media == "video":
        write_clip(output_dir / paths["video"], clip.frames, clip.audio, fps, sampling_rate)
    else:
        write_image(output_dir / paths["image"], clip.frames[len(clip.frames) // 2])
        write_wav(output_dir / paths["audio"], clip.audio, sampling_rate)


def render_and_write(job) -> None:
    """Render one clip from its own seed and write its media (a worker's unit of work)."""
    output_dir, latent, cues, clip_seed, duration, fps, size, sampling_rate, media = job
    clip = render_clip(latent, np.random.default_rng(clip_seed), duration, fps, size, sampling_rate, cues)
    write_media(output_dir, clip, media, fps, sampling_rate)


@contextlib.contextmanager
def _clip_writer(num_workers: int):
    """``write(jobs)``, an iterator that renders and writes the clips: in this process, or in ``num_workers`` forked
    processes (numpy and PyAV only; each clip has its own seed, so the files are the same either way)."""
    if num_workers <= 1 or "fork" not in multiprocessing.get_all_start_methods():
        yield lambda jobs: map(render_and_write, jobs)
        return
    with concurrent.futures.ProcessPoolExecutor(num_workers, mp_context=multiprocessing.get_context("fork")) as pool:
        yield lambda jobs: pool.map(render_and_write, jobs, chunksize=8)


def write_jsonl(path: Path, records: Sequence[dict]) -> None:
    """One JSON record per line, written atomically."""
    text = "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records)
    write_atomically(path, lambda temporary: temporary.write_text(text, encoding="utf-8"))


def cue_records(latents: Sequence[ClipLatent], cues: Sequence[Cues]) -> list[dict]:
    """cues.jsonl: per clip, the cues its picture or sound hides (ArtEmo-Synth only; the benchmark loader ignores
    it, analyses read it)."""
    return [{"clip_id": latent.clip_id, "hidden": clip_cues.hidden} for latent, clip_cues in zip(latents, cues)]


def read_hidden_cues(data_dir: str | os.PathLike) -> dict[str, list[str]]:
    """``cues.jsonl`` of an ArtEmo-Synth folder: per clip id, the cues it hides (empty when the file is absent)."""
    path = Path(data_dir) / "cues.jsonl"
    if not path.is_file():
        return {}
    with open(path, encoding="utf-8") as handle:
        records = [json.loads(line) for line in handle if line.strip()]
    return {record["clip_id"]: record["hidden"] for record in records}


# The class textures and melodies reach a few kHz; below this they would alias or vanish.
MIN_SAMPLING_RATE = 8000
MIN_FRAMES = 2  # Qwen-family VLMs take frames in pairs


def check_arguments(
    num_clips: int, test_fraction: float, duration: float, fps: float, size: int, media: str,
    sampling_rate: int = 16000, seed: int = 0, num_workers: int = 1, output_dir: str | os.PathLike | None = None,
) -> None:  # fmt: skip
    """Refuse arguments that cannot give a valid benchmark folder, before any file is written."""
    if num_clips < 1:
        raise ValueError(f"num_clips must be >= 1, got {num_clips}")
    if not 0 <= test_fraction < 1:
        raise ValueError(f"test_fraction must be in [0, 1), got {test_fraction}")
    if not (math.isfinite(duration) and math.isfinite(fps) and duration > 0 and fps > 0):
        raise ValueError(f"duration and fps must be positive finite numbers, got {duration} and {fps}")
    if media == "video" and int(duration * fps) < MIN_FRAMES:
        raise ValueError(f"duration x fps must give at least {MIN_FRAMES} frames, got {duration} s x {fps} fps")
    if isinstance(sampling_rate, bool) or not isinstance(sampling_rate, int) or sampling_rate < MIN_SAMPLING_RATE:
        raise ValueError(f"sampling_rate must be a whole number of Hz >= {MIN_SAMPLING_RATE}, got {sampling_rate!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a whole number >= 0, got {seed!r}")
    if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 1:
        raise ValueError(f"num_workers must be a whole number >= 1, got {num_workers!r}")
    if output_dir is not None and os.path.exists(output_dir) and not os.path.isdir(output_dir):
        raise ValueError(f"output_dir: {output_dir} exists and is not a folder")
    if media not in MEDIA_KINDS:
        raise ValueError(f"media must be one of {MEDIA_KINDS}, got {media!r}")
    if size < 8 or (media == "video" and size % 2):
        raise ValueError(f"size must be >= 8 (and even for H.264 video), got {size}")


def generate_benchmark(
    output_dir: str | os.PathLike,
    num_clips: int,
    seed: int = 0,
    test_fraction: float = 0.25,
    duration: float = 2.0,
    fps: float = 8.0,
    size: int = 64,
    sampling_rate: int = 16000,
    classes: Sequence[str] = CONTENT_CLASSES,
    num_options: int = 4,
    media: str = "video",
    hidden_cue_rate: float = HIDDEN_CUE_RATE,
    num_workers: int = 1,
    progress: bool = True,
) -> dict:
    """Write an ArtEmo-Synth benchmark folder: ``media/`` (one mp4, or png + wav, per clip), cues.jsonl, then
    metadata.jsonl.

    Each clip gets a ``content`` and an ``emotion`` multiple-choice item with ``num_options`` options. Content
    classes and emotion categories are balanced; the train/test split is stratified by content class. Each of the
    three cues (``latents.CUES``) is hidden in ``hidden_cue_rate`` of the clips (0: picture and sound both show
    everything). ``num_workers`` > 1 renders clips in that many processes (the same files). Returns a summary
    (counts per split, class, emotion and hidden cue; timing).
    """
    check_arguments(num_clips, test_fraction, duration, fps, size, media, sampling_rate, seed, num_workers, output_dir)
    classes = check_classes(classes, num_options)
    output_dir = Path(output_dir)
    started = time.perf_counter()
    streams = random_streams(seed, num_clips)
    latents = sample_latents(num_clips, streams.latents, classes)
    cues = sample_cues(num_clips, streams.cues, hidden_cue_rate)  # refuses a bad rate before anything is written
    splits = stratified_split(latents, test_fraction, streams.split)
    jobs = [
        (output_dir, latent, clip_cues, clip_seed, duration, fps, size, sampling_rate, media)
        for latent, clip_cues, clip_seed in zip(latents, cues, streams.clips)
    ]
    with _clip_writer(num_workers) as write:
        for _ in tqdm(write(jobs), total=len(jobs), desc="ArtEmo-Synth", unit="clip", disable=not progress):
            pass
    items = []
    for latent, split in zip(latents, splits):  # options drawn in clip order, whatever the workers did
        items.extend(clip_items(latent, split, media, classes, num_options, streams.options))
    write_jsonl(output_dir / "cues.jsonl", cue_records(latents, cues))
    write_jsonl(output_dir / "metadata.jsonl", items)  # last: a folder with metadata.jsonl is complete
    seconds = time.perf_counter() - started
    return {
        "output_dir": str(output_dir),
        "num_clips": num_clips,
        "num_items": len(items),
        "media": media,
        "splits": dict(sorted(Counter(splits).items())),
        "contents": dict(sorted(Counter(latent.content for latent in latents).items())),
        "emotions": dict(sorted(Counter(latent.emotion for latent in latents).items())),
        "hidden_cues": {name: sum(name in clip_cues.hidden for clip_cues in cues) for name in CUES},
        "seconds": round(seconds, 2),
        "clips_per_second": round(num_clips / seconds, 2),
    }

