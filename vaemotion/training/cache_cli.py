# Copyright 2026 The VAEmotion Authors. Licensed under the Apache License, Version 2.0.
"""`vaemotion cache-teacher CONFIG.yaml [--overwrite] [--any_config_field VALUE ...]`: precompute the Stage 1 teacher.

Reads the same YAML as `vaemotion train stage1` (so the cache matches the run that will read it), loads the model
and processor, and for every (clip, prompt) of ``train_data`` and ``eval_data`` writes to ``teacher_cache_dir``
the response (the teacher's own words from the frames, or the caption) and the teacher's top-k log-probabilities
at each response position. The cache is keyed by a fingerprint of the frozen visual-path weights, the processor,
the prompt pool and the response/target settings; an interrupted build is resumed, an existing cache is extended
with new clips, and a stale one is refused unless ``--overwrite`` is given. Under `accelerate launch` every process
runs the teacher on its share of the clips and the main process merges the shares (see `build_teacher_cache`).

Example::

    vaemotion cache-teacher examples/configs/stage1_qwen2_5_vl_7b_whisper.yaml --loss_top_k 64
    accelerate launch --num_processes 8 -m vaemotion.cli cache-teacher examples/configs/stage1_qwen2_5_vl_7b_whisper.yaml
    vaemotion train stage1 --config examples/configs/stage1_qwen2_5_vl_7b_whisper.yaml
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="the Stage 1 YAML config (its teacher_cache_dir and loss_top_k are used)")
    parser.add_argument(
        "options",
        nargs=argparse.REMAINDER,
        help="--overwrite to rebuild a stale cache, then any config field as a flag (e.g. --loss_top_k 32)",
    )


def run(args) -> int:
    from accelerate import PartialState

    from .arguments import load_model_and_processor
    from .cli import parse_stage_config
    from .data import read_clips
    from .vg_align import build_teacher_cache, stage1_dataset, teacher_fingerprint

    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--overwrite", action="store_true")
    known, options = pre.parse_known_args(args.options)
    _, config = parse_stage_config("stage1", ["--config", args.config, *options])
    if not config.teacher_cache_dir:
        raise SystemExit(f"{args.config}: set teacher_cache_dir (and loss_top_k) to build a teacher cache")
    from transformers import set_seed

    set_seed(config.seed)  # as `train stage1` does: a model built from parts gets the same new weights there
    model, processor = load_model_and_processor(config)
    state = PartialState()
    model.to(state.device)
    datasets = [stage1_dataset(read_clips(source).records, processor, config)
                for source in [config.train_data] + ([config.eval_data] if config.eval_data else [])]
    fingerprint = teacher_fingerprint(model, processor, config)
    added = build_teacher_cache(model, processor, datasets, config, fingerprint, overwrite=known.overwrite,
                                progress=not config.disable_tqdm)
    total = sum(len(dataset) for dataset in datasets)
    if state.is_main_process:
        print(f"teacher cache {config.teacher_cache_dir}: {added} records added, {total} examples covered "
              f"({state.num_processes} process{'es' if state.num_processes > 1 else ''})")
    return 0
