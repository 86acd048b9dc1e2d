"""Stage 1 step time and peak memory: plain student step vs online VG-Align vs VG-Align from the teacher cache.

All three arms run in ONE process, on the same model and the same inputs, with the same trainable set (the audio
projector) and the same optimizer (AdamW); each step is forward + backward + optimizer step:

* **plain**: the student alone (audio path), cross-entropy on the response tokens (``kd_weight=0, ce_weight=1``);
* **online**: VG-Align with the teacher pass in the step (the same model on the visual path, no grad, logits at the
  response positions only, full-vocabulary teacher distribution);
* **cached**: VG-Align with the teacher's top-k log-probabilities precomputed (what the teacher cache stores).

The steps are [`vaemotion.training.vg_align.vg_align_loss`], the function `VGAlignTrainer.compute_loss` calls.
Inputs are token sequences built directly (no processor): text, one video block on the teacher path, one audio
window on the student path, then the response. Weights are random (same cost as a real checkpoint).

Presets:

* ``tiny`` (default): the test-suite's tiny Qwen2.5-VL + Whisper; 4 frames at 56 px (8 video tokens), 2 s audio
  (50 audio tokens), 16 prompt and 16 response tokens.
* ``qwen2_5_vl_7b``: Qwen2.5-VL-7B + whisper-large-v3 encoder shapes (DESIGN.md section 9): 8 frames at 336 px
  (576 video tokens), 10 s of audio (250 tokens), 32 prompt and 64 response tokens.

Run::

    python benchmarks/gpu_stage1.py                                    # tiny, CPU
    python benchmarks/gpu_stage1.py --preset qwen2_5_vl_7b --device cuda --dtype bfloat16 --batch-size 4

Steps of the three arms are interleaved (a noisy machine slows them alike). Peak memory is
``torch.cuda.max_memory_allocated`` over one step of each arm after a reset, on GPU; on CPU it is reported as n/a (a process-wide
RSS peak cannot be reset between arms). Goals: cached <= 1.15x plain time; online peak <= 1.05x plain peak. Each
arm's FLOPs (one step, forward + backward, counted by torch's FLOP counter with grouped-query attention taught to
it, see [`grouped_query_sdpa_formulas`]) give its achieved TFLOP/s. On CPU the attention kernel has no FLOP formula,
so only matmuls count there.

Then the teacher alone: its forward (visual path, logits at the response positions, no grad) and its vision tower,
each with its median time, its FLOPs as torch's FLOP counter counts them, and the achieved rate as a share of a
large square matmul's rate measured in the same run (the chip's practical peak). ``--profile-vision N`` adds a
torch.profiler table of the vision tower's N most expensive operators (device time on GPU), to show where the
time goes before changing anything.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time

import torch

from vaemotion import VAEmotionConfig, VAEmotionForConditionalGeneration, num_audio_tokens
from vaemotion.training.distill import DistillationSettings, teacher_targets
from vaemotion.training.arguments import upcast_trainable_parameters
from vaemotion.training.vg_align import vg_align_loss

PRESETS = {
    "tiny": {"frames": 4, "pixels": 56, "audio_seconds": 2, "window_seconds": 2, "prompt": 16, "response": 16},
    "qwen2_5_vl_7b": {"frames": 8, "pixels": 336, "audio_seconds": 10, "window_seconds": 30, "prompt": 32,
                      "response": 64},
}


def qwen2_5_vl_7b_whisper_large_v3_config() -> VAEmotionConfig:
    """Qwen2.5-VL-7B-Instruct + whisper-large-v3 encoder, from their published config.json values."""
    from transformers import Qwen2_5_VLConfig, WhisperConfig

    vlm = Qwen2_5_VLConfig(
        text_config={
            "vocab_size": 152064, "hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28,
            "num_attention_heads": 28, "num_key_value_heads": 4, "max_position_embeddings": 128000,
            "rms_norm_eps": 1e-6, "hidden_act": "silu", "tie_word_embeddings": False,
            "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [16, 24, 24]},
            "bos_token_id": 151643, "eos_token_id": 151645, "pad_token_id": 151643,
        },
        vision_config={
            "depth": 32, "hidden_size": 1280, "intermediate_size": 3420, "num_heads": 16, "out_hidden_size": 3584,
            "patch_size": 14, "spatial_merge_size": 2, "temporal_patch_size": 2, "window_size": 112,
            "fullatt_block_indexes": [7, 15, 23, 31], "hidden_act": "silu", "tokens_per_second": 2,
        },
        image_token_id=151655, video_token_id=151656, vision_start_token_id=151652, vision_end_token_id=151653,
        tie_word_embeddings=False,
    )  # fmt: skip
    audio = WhisperConfig(
        num_mel_bins=128, d_model=1280, encoder_layers=32, encoder_attention_heads=20, encoder_ffn_dim=5120,
        decoder_layers=2, decoder_attention_heads=20, decoder_ffn_dim=5120, max_source_positions=1500,
        vocab_size=51866,
    )  # fmt: skip
    return VAEmotionConfig(vlm_config=vlm, audio_config=audio, audio_token_id=151665, audio_bos_token_id=151666,
                           audio_eos_token_id=151667)


def build_model(preset: str, device: str, dtype: torch.dtype, attn: str) -> VAEmotionForConditionalGeneration:
    if preset == "tiny":
        from vaemotion.tiny import build_tiny_tokenizer, tiny_vaemotion_config

        config = tiny_vaemotion_config(build_tiny_tokenizer(), window_seconds=PRESETS["tiny"]["window_seconds"])
    else:
        config = qwen2_5_vl_7b_whisper_large_v3_config()
    config.fast_vision_tower = True  # the batched window attention and matmul patch embedding measured here
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):  # initialise the random weights where they will live
            model = VAEmotionForConditionalGeneration(config)
    finally:
        torch.set_default_dtype(default)
    model.set_attn_implementation(attn)
    model.set_trainable("vg_align")
    if dtype != torch.float32:
        upcast_trainable_parameters(model)  # as training does: an fp32 projector under bf16 autocast
    return model.train()


def build_inputs(model, preset: str, batch_size: int, device: str, seed: int = 0) -> dict:
    """A VGAlignCollator-shaped batch (online teacher) with identical-length rows."""
    shape = PRESETS[preset]
    config = model.config
    vlm = config.vlm_config
    generator = torch.Generator().manual_seed(seed)
    special = {vlm.image_token_id, vlm.video_token_id, vlm.vision_start_token_id, vlm.vision_end_token_id,
               config.audio_token_id, config.audio_bos_token_id, config.audio_eos_token_id}
    vocab = config.get_text_config().vocab_size
    low = max(special) + 1 if max(special) + 1 < vocab - 64 else 32

    def text(n):
        ids = torch.randint(low, vocab, (batch_size, n), generator=generator)
        return ids if low > max(special) else ids.masked_fill(torch.isin(ids, torch.tensor(sorted(special))), low)

    vision = vlm.vision_config
    grid = torch.tensor([[shape["frames"] // vision.temporal_patch_size, shape["pixels"] // vision.patch_size,
                          shape["pixels"] // vision.patch_size]] * batch_size)
    video_tokens = int(grid[0].prod()) // vision.spatial_merge_size**2
    patch_dim = 3 * vision.temporal_patch_size * vision.patch_size**2
    window_frames = shape["window_seconds"] * 100
    valid = shape["audio_seconds"] * 100
    audio_tokens = num_audio_tokens(valid, config.audio_pool_stride)
    head, tail, response = text(shape["prompt"] // 2), text(shape["prompt"] - shape["prompt"] // 2), text(shape["response"])

    def block(open_id, token_id, count, close_id):
        return torch.tensor([open_id] + [token_id] * count + [close_id]).expand(batch_size, -1)

    def path(media, extra):
        ids = torch.cat([head, media, tail, response], dim=1)
        types = torch.zeros_like(ids, dtype=torch.int)
        start = ids.shape[1] - shape["response"]
        positions = torch.arange(start - 1, ids.shape[1] - 1).expand(batch_size, -1)
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "mm_token_type_ids": types, **extra}, positions

    teacher, teacher_positions = path(
        block(vlm.vision_start_token_id, vlm.video_token_id, video_tokens, vlm.vision_end_token_id),
        {"pixel_values_videos": torch.randn(int(grid.prod(-1).sum()), patch_dim, generator=generator),
         "video_grid_thw": grid, "second_per_grid_ts": torch.ones(batch_size)},
    )
    teacher["mm_token_type_ids"][teacher["input_ids"] == vlm.video_token_id] = 2
    mask = torch.zeros(batch_size, window_frames, dtype=torch.long)
    mask[:, :valid] = 1
    student, student_positions = path(
        block(config.audio_bos_token_id, config.audio_token_id, audio_tokens, config.audio_eos_token_id),
        {"input_features": torch.randn(batch_size, config.audio_config.num_mel_bins, window_frames, generator=generator),
         "feature_attention_mask": mask},
    )
    student["mm_token_type_ids"][student["input_ids"] == config.audio_token_id] = 3
    batch = {
        "teacher": teacher, "teacher_positions": teacher_positions, "student": student,
        "student_positions": student_positions, "response_ids": response,
        "response_mask": torch.ones_like(response, dtype=torch.bool),
    }  # fmt: skip
    return _to(batch, device, model.dtype)


def _to(value, device, dtype):
    if isinstance(value, dict):
        return {key: _to(item, device, dtype) for key, item in value.items()}
    return value.to(device, dtype) if value.is_floating_point() else value.to(device)


def one_step(model, inputs, settings, kd_weight, ce_weight, optimizer, device: str) -> float:
    """forward + backward + optimizer step; returns its wall time (synchronised on GPU)."""
    autocast = (torch.autocast(device.split(":")[0], dtype=model.dtype) if model.dtype != torch.float32
                else contextlib.nullcontext())
    start = time.perf_counter()
    optimizer.zero_grad(set_to_none=True)
    with autocast:
        loss = vg_align_loss(model, inputs, settings, kd_weight=kd_weight, ce_weight=ce_weight).loss
    loss.backward()
    optimizer.step()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - start


def measure(model, arms: dict, optimizer, args) -> tuple[dict, dict]:
    """Peak memory of each arm (one step after a reset, GPU only), then step times with the arms interleaved, so
    that a noisy machine slows them alike."""
    cuda = args.device.startswith("cuda")
    peaks = {}
    for name, arm in arms.items():
        one_step(model, *arm, optimizer, args.device)  # warm-up (allocator, kernels, optimizer state)
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        one_step(model, *arm, optimizer, args.device)
        peaks[name] = torch.cuda.max_memory_allocated() if cuda else None
    times = {name: [] for name in arms}
    for step in range(args.warmup + args.steps):
        for name, arm in arms.items():
            elapsed = one_step(model, *arm, optimizer, args.device)
            if step >= args.warmup:
                times[name].append(elapsed)
    return times, peaks


def median_time(fn, device: str, repeats: int) -> float:
    """Median wall time of ``fn()`` over ``repeats`` calls after one warm-up (synchronised on GPU)."""
    cuda = device.startswith("cuda")
    fn()
    times = []
    for _ in range(repeats):
        if cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


# The fused attention kernels broadcast grouped key/value heads to the query's heads; torch before 2.12 or so asserts
# equal head counts in their FLOP formulas, so the counter failed on the LLM's grouped-query attention.
SDPA_OPS = tuple(
    f"_scaled_dot_product_{kind}{suffix}"
    for kind in ("efficient_attention", "flash_attention", "cudnn_attention", "flash_attention_for_cpu")
    for suffix in ("", "_backward")
)


def _broadcast_kv_heads(formula):
    """``formula`` (a registered, shape-wrapped FLOP formula) applied with every 4-D input widened to the most heads
    of any input (the query's): the FLOPs of the kernel that broadcasts key/value heads."""

    def count(*args, **kwargs):
        heads = max((a.shape[1] for a in args if isinstance(a, torch.Tensor) and a.dim() == 4), default=None)
        widened = [
            torch.Size((a.shape[0], heads, *a.shape[2:])) if isinstance(a, torch.Tensor) and a.dim() == 4 else a
            for a in args
        ]
        return formula(*widened, **kwargs)

    count._get_raw = True  # receives tensors, as torch's own formulas do before their shape wrapper
    return count


def grouped_query_sdpa_formulas() -> dict:
    """A ``FlopCounterMode(custom_mapping=...)`` entry for each SDPA operator this torch has: its own formula, made
    to accept grouped-query shapes."""
    from torch.utils.flop_counter import flop_registry

    mapping = {}
    for name in SDPA_OPS:
        op = getattr(torch.ops.aten, name, None)
        if op is not None and op in flop_registry:
            mapping[op] = _broadcast_kv_heads(flop_registry[op])
    return mapping


def counted_flops(fn) -> int:
    """Floating-point operations of one ``fn()`` as torch's FLOP counter sees them (matmuls, convolutions and
    attention, forward and backward), grouped-query attention included."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False, custom_mapping=grouped_query_sdpa_formulas()) as counter:
        fn()
    return counter.get_total_flops()


def matmul_rate(device: str, dtype: torch.dtype) -> float:
    """Measured FLOP/s of one large square matmul in ``dtype``: the chip's practical peak for this run."""
    size = 8192 if device.startswith("cuda") else 1024
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    return 2 * size**3 / median_time(lambda: a @ b, device, repeats=10)


def teacher_breakdown(model, inputs: dict, args, dtype: torch.dtype, rate: float) -> dict:
    """The teacher's forward (visual path, logits at the response positions) and its vision tower alone: median
    time, counted FLOPs, and achieved FLOP/s (to compare with ``rate``, the measured matmul rate)."""
    teacher = inputs["teacher"]
    autocast = torch.autocast(args.device.split(":")[0], dtype=dtype, enabled=dtype != torch.float32)

    def forward():
        with torch.no_grad(), autocast:
            model(**teacher, logits_to_keep=inputs["teacher_positions"], use_cache=False)

    def vision_tower():
        with torch.no_grad(), autocast:
            model.get_video_features(teacher["pixel_values_videos"], teacher["video_grid_thw"])

    report = {"matmul_flops_per_s": rate}
    for name, fn in (("teacher_forward", forward), ("vision_tower", vision_tower)):
        seconds = median_time(fn, args.device, repeats=max(args.steps, 3))
        flops = counted_flops(fn)
        report[name] = {"seconds": seconds, "flops": flops, "flops_per_s": flops / seconds}
    return report


def rate_line(flops: int, seconds: float, rate: float) -> str:
    achieved = flops / seconds
    return f"{flops / 1e12:8.2f} TFLOP   {achieved / 1e12:7.1f} TFLOP/s = {100 * achieved / rate:5.1f} % of the matmul rate"


def profile_vision_tower(model, inputs: dict, args, dtype: torch.dtype, rows: int) -> str:
    """A torch.profiler table of one vision-tower forward (after one warm-up): the ``rows`` operators with the most
    device time (CPU time on CPU), with their call counts."""
    from torch.profiler import ProfilerActivity, profile

    teacher = inputs["teacher"]
    autocast = torch.autocast(args.device.split(":")[0], dtype=dtype, enabled=dtype != torch.float32)
    cuda = args.device.startswith("cuda")

    def vision_tower():
        with torch.no_grad(), autocast:
            model.get_video_features(teacher["pixel_values_videos"], teacher["video_grid_thw"])
        if cuda:
            torch.cuda.synchronize()

    vision_tower()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as profiler:
        vision_tower()
    sort_by = "self_cuda_time_total" if cuda else "self_cpu_time_total"
    return profiler.key_averages().table(sort_by=sort_by, row_limit=rows)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32")
    parser.add_argument("--attn", default="sdpa")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--top-k", type=int, default=64, help="teacher top-k of the cached arm")
    parser.add_argument("--profile-vision", type=int, default=0, metavar="N",
                        help="also print the vision tower's N most expensive operators (torch.profiler)")
    args = parser.parse_args(argv)

    torch.manual_seed(0)
    dtype = getattr(torch, args.dtype)
    model = build_model(args.preset, args.device, dtype, args.attn)
    inputs = build_inputs(model, args.preset, args.batch_size, args.device)
    online = DistillationSettings()
    cached_settings = DistillationSettings(teacher_top_k=args.top_k)
    with torch.autocast(args.device.split(":")[0], dtype=dtype, enabled=dtype != torch.float32):
        top = teacher_targets(model, inputs["teacher"], inputs["teacher_positions"], cached_settings)
    cached = {key: value for key, value in inputs.items() if not key.startswith("teacher")}
    cached.update(teacher_topk_logprobs=top.logprobs, teacher_topk_indices=top.indices)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)

    arms = {
        "plain": (cached, online, 0.0, 1.0),
        "online": (inputs, online, 1.0, 0.0),
        "cached": (cached, cached_settings, 1.0, 0.0),
    }
    times, peaks = measure(model, arms, optimizer, args)
    medians = {name: statistics.median(values) for name, values in times.items()}
    step_flops = {name: counted_flops(lambda arm=arm: one_step(model, *arm, optimizer, args.device)) for name, arm in arms.items()}
    rate = matmul_rate(args.device, dtype)
    device = torch.cuda.get_device_name(args.device) if args.device.startswith("cuda") else "CPU"
    print(f"preset {args.preset}, {device}, {args.dtype}, attn {args.attn}, batch {args.batch_size}, "
          f"median of {args.steps} interleaved steps after {args.warmup} warm-up")
    for name in arms:
        memory = f"{peaks[name] / 2**30:.2f} GiB" if peaks[name] is not None else "n/a"
        print(f"  {name:<7} {1000 * medians[name]:9.1f} ms   peak {memory}   "
              + rate_line(step_flops[name], medians[name], rate))
    ratio_time = medians["cached"] / medians["plain"]
    print(f"  cached/plain time {ratio_time:.3f} (goal <= 1.15)")
    if peaks["plain"] is not None:
        ratio_memory = peaks["online"] / peaks["plain"]
        print(f"  online/plain peak memory {ratio_memory:.3f} (goal <= 1.05)")
    else:
        print("  online/plain peak memory n/a on CPU")
    print(f"  online/plain time {medians['online'] / medians['plain']:.3f}")
    print(f"  measured {args.dtype} matmul rate {rate / 1e12:.1f} TFLOP/s")
    teacher = teacher_breakdown(model, inputs, args, dtype, rate)
    for name in ("teacher_forward", "vision_tower"):
        part = teacher[name]
        print(f"  {name:<15} {1000 * part['seconds']:9.1f} ms   " + rate_line(part["flops"], part["seconds"], rate))
    if args.profile_vision:
        print(profile_vision_tower(model, inputs, args, dtype, args.profile_vision))
    return {"median_s": medians, "peak_bytes": peaks, "step_flops": step_flops, "teacher": teacher}


if __name__ == "__main__":
    main()
