"""``vaemotion eval``: score one or more checkpoints on ArtEmoBenchmark and write a comparison report.

Each ``--model`` is loaded with the adapter its ``config.json`` selects (VAEmotion, Qwen2.5-Omni, Qwen2-Audio,
Qwen2.5-VL), scored on the same items of every config, then freed before the next one loads. Example::

    vaemotion eval --model out/stage2 --model Qwen/Qwen2.5-Omni-7B --model Qwen/Qwen2-Audio-7B-Instruct \\
        --model Qwen/Qwen2.5-VL-7B-Instruct --data-dir artemo_synth --output results --dtype bfloat16
"""

from __future__ import annotations

import argparse
import os
import sys

from .artemo import CONFIG_NAMES


def _config_list(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in CONFIG_NAMES]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"configs must be a comma-separated subset of {','.join(CONFIG_NAMES)}")
    return names


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        action="append",
        required=True,
        metavar="PATH",
        help="checkpoint folder or Hub id; repeat to compare several models in one table",
    )
    parser.add_argument("--data-dir", required=True, help="ArtEmoBenchmark folder (metadata.jsonl + media)")
    parser.add_argument(
        "--configs",
        type=_config_list,
        default=list(CONFIG_NAMES),
        help=f"comma-separated configs (default: {','.join(CONFIG_NAMES)})",
    )
    parser.add_argument(
        "--output", default="artemo_results", help="folder for results.json/.md/.png and predictions.jsonl"
    )
    parser.add_argument(
        "--batch-size", type=_positive, default=4, help="prompts per prefill (each option adds a cache row)"
    )
    parser.add_argument("--split", default="test")
    parser.add_argument("--num-frames", type=_positive, default=8, help="frames sampled uniformly per video")
    parser.add_argument("--limit", type=_positive, default=None, help="score only the first N items of the split")
    parser.add_argument("--device", default=None, help="e.g. cuda or cpu (default: cuda when available)")
    parser.add_argument(
        "--dtype",
        default="auto",
        choices=["auto", "float32", "bfloat16", "float16"],
        help="weights dtype (default: the checkpoint's)",
    )
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bars")  # fmt: skip


def run(args: argparse.Namespace) -> int:
    import torch

    from .harness import evaluate_checkpoints, markdown_table, write_report

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        torch.device(device)
    except RuntimeError:
        raise SystemExit(f"--device: {device!r} is not a torch device (e.g. cpu, cuda, cuda:1, mps)") from None
    if os.path.exists(args.output) and not os.path.isdir(args.output):  # before an evaluation that may take hours
        raise SystemExit(f"--output: {args.output} exists and is not a folder")
    if not os.path.isfile(os.path.join(args.data_dir, "metadata.jsonl")):  # before any model loads
        raise SystemExit(f"--data-dir: no metadata.jsonl in {args.data_dir} (see docs/benchmark_layout.md)")
    results = evaluate_checkpoints(
        args.model,
        args.data_dir,
        dtype=args.dtype,
        device=device,
        configs=args.configs,
        batch_size=args.batch_size,
        split=args.split,
        num_frames=args.num_frames,
        limit=args.limit,
        progress=not args.no_progress,
    )
    paths = write_report(results, args.output)
    print(markdown_table(results))
    print(f"wrote {', '.join(paths.values())}", file=sys.stderr)
    return 0
