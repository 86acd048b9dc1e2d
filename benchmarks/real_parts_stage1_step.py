"""Stage 1 step on real parts, on CPU: plain student step vs online VG-Align vs VG-Align from the teacher cache.

The model is what `tests/test_real_journey.py` runs: a LLaVA 1.5 VLM assembled from the real DINOv2 ViT-S/14 and
the real SmolLM2-135M-Instruct LLM, with the real Whisper tiny.en as the audio encoder, built with the README
recipe. The batch is real too: ArtEmo-Synth clips (mp4, H.264 + AAC) through the real processor and the Stage 1
collator (`VGAlignCollator`), responses from captions. The three arms share the model, the inputs, the trainable
set (projector + audio delimiters) and the optimizer, as in `benchmarks/gpu_stage1.py`, whose step and interleaved
timing this reuses:

* **plain**: the student alone (audio path), cross-entropy on the response tokens;
* **online**: VG-Align with the teacher pass (visual path, no grad) in the step;
* **cached**: VG-Align from the teacher's top-k log-probabilities (what the teacher cache stores).

Peak memory on CPU: before each arm's step Linux's peak-RSS counter (VmHWM) is reset to the current RSS
(`/proc/self/clear_refs`), and the peak's growth over that step is reported (after one warm-up step of every arm, so
the optimizer state and allocator pools exist). Goal: cached/plain time <= 1.10.

Run (needs `python scripts/fetch_real_parts.py` first; one torch job at a time)::

    python benchmarks/real_parts_stage1_step.py --batch-size 2 --steps 6
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent / "tests")]

from gpu_stage1 import measure, one_step  # noqa: E402
from real_parts import real_part_path  # noqa: E402
from real_vlms import assemble_llava  # noqa: E402

from vaemotion import VAEmotionForConditionalGeneration, VAEmotionProcessor  # noqa: E402
from vaemotion.synth import generate_benchmark  # noqa: E402
from vaemotion.training.data import read_clips  # noqa: E402
from vaemotion.training.distill import DistillationSettings, teacher_targets  # noqa: E402
from vaemotion.training.vg_align import VGAlignCollator, VGAlignConfig, stage1_dataset  # noqa: E402


def _status_mib(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024  # kB
    raise RuntimeError(f"/proc/self/status has no {field}")


def step_peak_growth_mib(step) -> float:
    """How far one call of ``step`` raises the resident set above where it started: Linux's peak RSS (VmHWM) is
    reset to the current RSS first (``clear_refs`` 5), then read after the step."""
    Path("/proc/self/clear_refs").write_text("5")
    start = _status_mib("VmRSS")
    step()
    return _status_mib("VmHWM") - start


def real_batch(processor, model_dirs: tuple[Path, Path], workdir: Path, batch_size: int, num_frames: int) -> dict:
    """A VGAlignCollator batch (online teacher) of synth clips, with captions as responses."""
    data = workdir / "synth"
    generate_benchmark(data, 2 * batch_size + 4, seed=0, duration=2.0, size=64, classes=["city", "bells"],
                       num_options=2, progress=False)  # fmt: skip
    clips = {}
    for line in (data / "metadata.jsonl").read_text().splitlines():
        item = json.loads(line)
        clips.setdefault(item["clip_id"], item)
    manifest = data / "stage1.jsonl"
    captions = ["A calm scene with soft light.", "A busy city street at night with bright signs."]
    with open(manifest, "w") as out:
        for index, item in enumerate(list(clips.values())[:batch_size]):
            out.write(json.dumps({"id": item["clip_id"], "video": item["video"], "caption": captions[index % 2]}) + "\n")
    config = VGAlignConfig(vlm_name_or_path=str(model_dirs[0]), audio_name_or_path=str(model_dirs[1]),
                           output_dir=str(workdir / "out"), train_data=str(manifest), response_source="caption",
                           prompts=["Describe the scene."], num_frames=num_frames, max_completion_length=16,
                           use_cpu=True, report_to="none")  # fmt: skip
    dataset = stage1_dataset(read_clips(str(manifest)).records, processor, config)
    return VGAlignCollator(processor)([dataset[index] for index in range(batch_size)])


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--num-frames", type=int, default=1, help="frames per video (LLaVA: 256 tokens each)")
    parser.add_argument("--top-k", type=int, default=64, help="teacher top-k of the cached arm")
    args = parser.parse_args(argv)
    args.device = "cpu"
    start = time.perf_counter()
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        vlm_dir = assemble_llava(workdir / "vlm")
        whisper = real_part_path("whisper-tiny.en")
        model = VAEmotionForConditionalGeneration.from_vlm_and_audio_pretrained(vlm_dir, whisper)
        processor = VAEmotionProcessor.from_vlm_and_audio_pretrained(vlm_dir, whisper)
        model.set_trainable("vg_align")
        model.train()
        batch = real_batch(processor, (vlm_dir, whisper), workdir, args.batch_size, args.num_frames)
    online = DistillationSettings()
    cached_settings = DistillationSettings(teacher_top_k=args.top_k)
    top = teacher_targets(model, batch["teacher"], batch["teacher_positions"], cached_settings)
    cached = {key: value for key, value in batch.items() if not key.startswith("teacher")}
    cached.update(teacher_topk_logprobs=top.logprobs, teacher_topk_indices=top.indices)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    arms = {"plain": (cached, online, 0.0, 1.0), "cached": (cached, cached_settings, 1.0, 0.0),
            "online": (batch, online, 1.0, 0.0)}  # fmt: skip
    for arm in arms.values():
        one_step(model, *arm, optimizer, "cpu")  # warm-up: optimizer state, allocator pools
    growth = {name: step_peak_growth_mib(lambda arm=arm: one_step(model, *arm, optimizer, "cpu")) for name, arm in arms.items()}
    times, _ = measure(model, arms, optimizer, args)
    medians = {name: statistics.median(values) for name, values in times.items()}
    lengths = {"student": batch["student"]["input_ids"].shape, "teacher": batch["teacher"]["input_ids"].shape}
    print(f"real parts (DINOv2-S + SmolLM2-135M LLaVA, Whisper tiny.en), CPU x{torch.get_num_threads()} threads, "
          f"float32, batch {args.batch_size}, student {tuple(lengths['student'])} / teacher "
          f"{tuple(lengths['teacher'])} tokens, median of {args.steps} interleaved steps after {args.warmup} warm-up")
    for name in arms:
        print(f"  {name:<7} {1000 * medians[name]:9.1f} ms   peak-RSS growth over one step {growth[name]:7.1f} MiB")
    print(f"  cached/plain time {medians['cached'] / medians['plain']:.3f} (goal <= 1.10)")
    print(f"  online/plain time {medians['online'] / medians['plain']:.3f}")
    print(f"  total {time.perf_counter() - start:.0f} s")
    return {"median_s": medians, "rss_growth_mib": growth}


if __name__ == "__main__":
    main()
