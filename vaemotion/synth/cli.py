"""`vaemotion synth`: write an ArtEmo-Synth benchmark folder (metadata.jsonl + media/)."""

from __future__ import annotations

import argparse
import json

from .generator import MEDIA_KINDS, generate_benchmark
from .latents import CONTENT_CLASSES, HIDDEN_CUE_RATE


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--output", required=True, help="folder to write (metadata.jsonl and media/)")
    parser.add_argument("--num-clips", type=int, required=True, help="number of clips (two items each)")
    parser.add_argument("--seed", type=int, default=0, help="the one seed that fixes every clip (default 0)")
    parser.add_argument("--test-fraction", type=float, default=0.25, help="share of each class in the test split")
    parser.add_argument("--duration", type=float, default=2.0, help="clip length in seconds (default 2)")
    parser.add_argument("--fps", type=float, default=8.0, help="video frames per second (default 8)")
    parser.add_argument("--size", type=int, default=64, help="frame height and width in pixels (default 64)")
    parser.add_argument("--sampling-rate", type=int, default=16000, help="audio sampling rate in Hz (default 16000)")
    parser.add_argument(
        "--classes", nargs="+", default=list(CONTENT_CLASSES), metavar="CLASS",
        help=f"content classes to use (default all: {' '.join(CONTENT_CLASSES)})",
    )
    parser.add_argument("--num-options", type=int, default=4, help="options per multiple-choice item (default 4)")
    parser.add_argument(
        "--media", choices=MEDIA_KINDS, default="video",
        help="video: one mp4 (H.264 + AAC) per clip; image: a png still + a wav per clip",
    )
    parser.add_argument(
        "--hidden-cue-rate", type=float, default=HIDDEN_CUE_RATE,
        help="share of clips whose picture hides the content class (fog), whose picture hides arousal (still), and "
        f"whose sound hides valence (mode-neutral), each drawn independently (default {HIDDEN_CUE_RATE}; 0: both "
        "modalities show everything)",
    )
    parser.add_argument("--workers", type=int, default=1, help="processes rendering clips (same files; default 1)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def run(args: argparse.Namespace) -> int:
    summary = generate_benchmark(
        args.output,
        args.num_clips,
        seed=args.seed,
        test_fraction=args.test_fraction,
        duration=args.duration,
        fps=args.fps,
        size=args.size,
        sampling_rate=args.sampling_rate,
        classes=args.classes,
        num_options=args.num_options,
        media=args.media,
        hidden_cue_rate=args.hidden_cue_rate,
        num_workers=args.workers,
        progress=not args.no_progress,
    )
    print(json.dumps(summary, indent=2))
    return 0
