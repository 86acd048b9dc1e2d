"""Hear by seeing on real pretrained parts (CPU): a real VLM learns to see ArtEmo-Synth, then VG-Align alone
teaches a frozen real Whisper base to hear.

1. **Sight.** A LLaVA 1.5-style VLM assembled from the real DINOv2 ViT-S/14 vision tower and the real
   SmolLM2-135M-Instruct LLM (`tests/real_vlms.py`), both frozen; only its vision projector (new, random: no
   pretrained LLaVA projector ships in a package) learns, by cross-entropy on answers to picture questions about
   the training clips (plain and multiple-choice), to make the LLM see the pictures.
2. **Stage 1, VG-Align, KD alone.** The audio pathway is the real Whisper base encoder, frozen (its states computed
   once per clip), plus a new projector; it learns only from the sighted VLM's answers and top-k next-token
   distributions on the pictures (teacher cache), never from an audio label, through the frozen LLM.
3. **Benchmark.** Audio-only, visual-only and audio-visual content and emotion accuracy (option log-likelihood) on
   the test split, before and after Stage 1, with 95% bootstrap intervals over clips.

Writes ``results.json`` and ``report.md`` under ``--output`` and prints the table. Run it alone (one torch job at a
time), after ``python scripts/fetch_real_parts.py``::

    python benchmarks/real_parts_hear_by_seeing.py --output hear_by_seeing   # 1.5-2 hours on 2 cores
    python benchmarks/real_parts_hear_by_seeing.py --output smoke --smoke    # two minutes: plumbing only
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent / "tests")]

from real_parts import real_part_path  # noqa: E402
from real_vlms import assemble_llava  # noqa: E402

from vaemotion import VAEmotionForConditionalGeneration, VAEmotionProcessor  # noqa: E402
from vaemotion.demo import (  # noqa: E402
    QUICK,
    PhaseTimer,
    decoded_train_clips,
    evaluate,
    instruction_tune,
    quiet_libraries,
    read_items,
    run_stage1,
    runs_table,
    score_table,
    sight_examples,
    train_items_by_clip,
    write_manifests,
)
from vaemotion.synth import generate_benchmark  # noqa: E402

PROJECTOR = "vlm.model.multi_modal_projector."


def build_parts(work: Path, image_size: int, seed: int):
    """The LLaVA (DINOv2 + SmolLM2) with pictures at ``image_size`` px, and Whisper base, by the README recipe."""
    import numpy as np
    from transformers import AutoProcessor

    llava = assemble_llava(work / "llava", seed=seed)
    # DINOv2's 224 px crop gives 256 tokens a picture; smaller is cheaper. The whole processor is saved again:
    # transformers 5 keeps the image processor's settings in processor_config.json, which wins over
    # preprocessor_config.json (saving the image processor alone left 224 px in force).
    vlm_processor = AutoProcessor.from_pretrained(llava)
    vlm_processor.image_processor.size = {"shortest_edge": image_size}
    vlm_processor.image_processor.crop_size = {"height": image_size, "width": image_size}
    vlm_processor.save_pretrained(llava)
    check = AutoProcessor.from_pretrained(llava).image_processor(images=np.zeros((image_size, image_size, 3), np.uint8))
    if check["pixel_values"][0].shape[-1] != image_size:
        raise RuntimeError(f"the LLaVA processor still resizes pictures to {check['pixel_values'][0].shape[-1]} px")
    whisper = real_part_path("whisper-base")
    model = VAEmotionForConditionalGeneration.from_vlm_and_audio_pretrained(llava, whisper)
    processor = VAEmotionProcessor.from_vlm_and_audio_pretrained(llava, whisper, pad_audio_to_window=False)
    return model, processor


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", required=True)
    parser.add_argument("--num-clips", type=int, default=480)
    parser.add_argument("--image-size", type=int, default=112, help="picture side in px (DINOv2 patches of 14)")
    parser.add_argument("--sight-epochs", type=int, default=4)
    parser.add_argument("--sight-learning-rate", type=float, default=1e-3)
    parser.add_argument("--stage1-epochs", type=int, default=12)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--smoke", action="store_true", help="32 clips, one epoch each: checks the plumbing only")
    args = parser.parse_args(argv)
    if args.smoke:
        args.num_clips, args.sight_epochs, args.stage1_epochs = 32, 1, 1
    output = Path(args.output)
    work = output / "work"
    data = output / "data"
    torch.manual_seed(args.seed)
    torch.set_num_threads(2)
    quiet_libraries()
    started = time.perf_counter()
    timer = PhaseTimer()
    # the demo's quick settings, with one frame per clip (LLaVA sees a frame as an image) and the real encoder frozen
    settings = replace(QUICK, num_clips=args.num_clips, num_frames=1, image_size=args.image_size,
                       sight_epochs=args.sight_epochs, stage1_epochs=args.stage1_epochs,
                       train_audio_encoder=False, answer_head_weight=0.0, batch_size=8)  # fmt: skip

    print(f"[1/4] data: {args.num_clips} ArtEmo-Synth clips", flush=True)
    generate_benchmark(data, args.num_clips, seed=args.seed, duration=settings.duration, fps=settings.fps,
                       size=args.image_size, num_workers=2)  # fmt: skip
    items = read_items(data)
    manifests = write_manifests(data, items)
    timer.done("data")

    print("[2/4] sight: the LLaVA's projector learns the pictures (DINOv2 and SmolLM2 frozen)", flush=True)
    model, processor = build_parts(work, args.image_size, args.seed)
    clips, answers = decoded_train_clips(data, items, settings, frame_multiple=processor.frame_multiple)
    instruction_tune(model, processor, sight_examples(clips, answers, train_items_by_clip(items)), settings, True,
                     trainable_prefix=PROJECTOR, learning_rate=args.sight_learning_rate)  # fmt: skip
    sighted = work / "sighted"
    model.save_pretrained(sighted)
    processor.save_pretrained(sighted)
    del model, clips
    timer.done("sight")
    scores = {}
    scores["before_stage1"], chance = evaluate(sighted, data, settings, False, True, output / "predictions" / "before.jsonl")
    timer.done("evaluation")

    print("[3/4] Stage 1, VG-Align, KD alone: the frozen Whisper base + a projector learn from the visual teacher",
          flush=True)
    stage1 = run_stage1(sighted, manifests["stage1"], work / "stage1", settings, args.seed)
    timer.done("stage1")
    scores["after_stage1"], _ = evaluate(stage1, data, settings, False, True, output / "predictions" / "after.jsonl")
    timer.done("evaluation")

    print("[4/4] report", flush=True)
    tables = {name: score_table(value, args.seed) for name, value in scores.items()}
    results = {
        "command": "python benchmarks/real_parts_hear_by_seeing.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch "
                   f"{torch.__version__}",
        "chance": {"content": chance["content_acc"], "emotion": chance["emotion_acc"]},
        "num_test_clips": len(scores["after_stage1"]["audio_only"].clip_ids),
        "stages": tables,
        "seconds": round(time.perf_counter() - started, 1),
        "phase_seconds": timer.seconds,
        "settings": {**vars(args), "batch_size": settings.batch_size, "stage1_learning_rate": settings.stage1_learning_rate},
    }
    table = runs_table(tables, intervals=True)
    (output / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (output / "report.md").write_text(f"# Hear by seeing on real parts\n\n{table}\n")
    print(table)
    after, visual = tables["after_stage1"]["audio_only"], tables["after_stage1"]["visual_only"]
    margin = visual["content_acc"] - results["chance"]["content"]
    share = (after["content_acc"] - results["chance"]["content"]) / margin if margin > 0 else float("nan")
    print(f"\naudio-only content after Stage 1: {after['content_acc']:.3f} vs picture {visual['content_acc']:.3f} "
          f"(chance {results['chance']['content']:.3f}: {share:.0%} of the picture's margin); "
          f"{results['seconds']:.0f} s")
    return results


if __name__ == "__main__":
    main()
