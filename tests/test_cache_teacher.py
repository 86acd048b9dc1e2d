"""`vaemotion cache-teacher` and training from the teacher cache (CPU, tiny, offline)."""

import json
from pathlib import Path

import pytest
import torch
import yaml
from conftest import write_video

from vaemotion import VAEmotionForConditionalGeneration
from vaemotion.cli import main
from vaemotion.processing_vaemotion import VAEmotionProcessor
from vaemotion.tiny import build_tiny_processor, build_tiny_tokenizer, tiny_vaemotion_config
from vaemotion.training.cli import parse_stage_config
from vaemotion.training.data import ClipDataset, encode_prompt, read_clips
from vaemotion.training.teacher_cache import MANIFEST_NAME, TeacherCache, TeacherCacheError
from vaemotion.training.vg_align import (
    VGAlignCollator,
    build_datasets,
    stage1_dataset,
    teacher_fingerprint,
    train_from_config,
    vg_align_loss,
)

TOP_K = 8
MEDIA_TOKENS = ["<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>", "<|audio_bos|>",
                "<|audio_pad|>", "<|audio_eos|>"]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # toy-sized ops: threads cost more than they save on a shared 2-core machine
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A tiny model + processor, two clips, a Stage 1 YAML with a teacher cache, and the cache built by the CLI."""
    root = tmp_path_factory.mktemp("cache_teacher")
    tokenizer = build_tiny_tokenizer()
    torch.manual_seed(0)
    VAEmotionForConditionalGeneration(tiny_vaemotion_config(tokenizer, window_seconds=2)).save_pretrained(root / "model")
    build_tiny_processor(tokenizer, window_seconds=2).save_pretrained(root / "model")
    (root / "clips").mkdir()
    for index in range(2):
        write_video(root / "clips" / f"clip{index}.mp4", seconds=1.0, fps=8, size=(32, 32), sampling_rate=16000,
                    onset=0.3 + 0.3 * index)
    config = {
        "model_name_or_path": str(root / "model"), "train_data": str(root / "clips"), "output_dir": str(root / "out"),
        "prompts": ["describe the scene", "describe the mood"], "max_completion_length": 5, "num_frames": 4,
        "teacher_cache_dir": str(root / "cache"), "loss_top_k": TOP_K, "temperature": 2.0, "teacher_batch_size": 4,
        "per_device_train_batch_size": 2, "max_steps": 2, "logging_steps": 1, "save_strategy": "no",
        "use_cpu": True, "disable_tqdm": True, "learning_rate": 1e-2,
    }  # fmt: skip
    (root / "stage1.yaml").write_text(yaml.safe_dump(config))
    assert main(["cache-teacher", str(root / "stage1.yaml")]) == 0
    return root


def load_config(root, *flags):
    return parse_stage_config("stage1", ["--config", str(root / "stage1.yaml"), *flags])[1]


def load(root, directory="model"):
    return (VAEmotionForConditionalGeneration.from_pretrained(root / directory).eval(),
            VAEmotionProcessor.from_pretrained(root / directory))


def test_cache_holds_the_teachers_greedy_answer_and_its_top_k(setup):
    model, processor = load(setup)
    config = load_config(setup)
    cache = TeacherCache.open(config.teacher_cache_dir, teacher_fingerprint(model, processor, config))
    assert sorted(cache) == [(f"clip{c}", str(p)) for c in range(2) for p in range(2)]
    clip = ClipDataset(read_clips(config.train_data).records, num_frames=4)[1]
    record = cache["clip1", "1"]

    # reference: the clip alone (no padding), greedy decoding, then a plain forward with full-sequence logits
    prompt = encode_prompt(processor, clip, "visual", "describe the mood")
    tokenizer = processor.tokenizer
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    with torch.no_grad():
        generated = model.generate(**prompt, max_new_tokens=5, do_sample=False, eos_token_id=end,
                                   pad_token_id=tokenizer.pad_token_id,
                                   suppress_tokens=tokenizer.convert_tokens_to_ids(MEDIA_TOKENS))
    answer = generated[0, prompt["input_ids"].shape[1]:].tolist()
    answer = answer[: answer.index(end) + 1] if end in answer else answer[:4] + [end]
    assert record.response_ids.tolist() == answer

    full = torch.cat([prompt["input_ids"], torch.tensor([answer])], dim=1)
    inputs = {**prompt, "input_ids": full, "attention_mask": torch.ones_like(full),
              "mm_token_type_ids": torch.cat([prompt["mm_token_type_ids"], torch.zeros(1, len(answer), dtype=torch.int)], 1)}
    with torch.no_grad():
        logits = model(**inputs).logits[0]
    start = prompt["input_ids"].shape[1] - 1  # the logit at the last prompt token predicts the first answer token
    reference = (logits[start : start + len(answer)].float() / 2.0).log_softmax(-1)
    torch.testing.assert_close(record.topk_logprobs.float(), reference.gather(1, record.topk_indices.long()),
                               atol=2e-3, rtol=1e-3)
    kth_best = reference.topk(TOP_K, dim=-1).values[:, -1:]
    assert (record.topk_logprobs.float() >= kth_best - 2e-3).all()  # they are the k most likely tokens


def test_training_from_the_cache_never_runs_the_visual_pathway(setup, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the visual pathway ran although the teacher comes from the cache")

    for name in ("get_video_features", "get_image_features"):
        monkeypatch.setattr(VAEmotionForConditionalGeneration, name, refuse)
    model, processor = load(setup)
    monkeypatch.setattr(model.vlm.model.visual, "forward", refuse)
    config = load_config(setup, "--output_dir", str(setup / "from_cache"))
    train_set, _ = build_datasets(model, processor, config)
    item = train_set[0]
    assert item["clip"].frames is None and "teacher_topk_logprobs" in item  # the frames are not even decoded
    batch = VGAlignCollator(processor)([train_set[0], train_set[1]])
    assert "teacher" not in batch and batch["teacher_topk_indices"].shape[-1] == TOP_K
    assert train_from_config(config) == str(setup / "from_cache")


def test_cached_loss_equals_the_online_top_k_loss(setup):
    model, processor = load(setup)
    config = load_config(setup)
    cache = TeacherCache.open(config.teacher_cache_dir, teacher_fingerprint(model, processor, config))
    records = read_clips(config.train_data).records
    cached = stage1_dataset(records, processor, config, cache=cache)
    online = stage1_dataset(records, processor, config)
    online.responses = {cached.examples[i].key: cached[i]["response_ids"] for i in range(len(cached))}
    collate = VGAlignCollator(processor)
    with torch.no_grad():
        from_cache = vg_align_loss(model, collate([cached[0], cached[3]]), config.distillation)
        live = vg_align_loss(model, collate([online[0], online[3]]), config.distillation)
    torch.testing.assert_close(from_cache.kd_loss, live.kd_loss, rtol=2e-2, atol=1e-5)  # fp16 storage


def test_rerunning_the_cli_adds_nothing(setup, capsys):
    assert main(["cache-teacher", str(setup / "stage1.yaml")]) == 0
    assert "0 records added, 4 examples covered" in capsys.readouterr().out


def test_training_the_projector_keeps_the_cache_valid_but_a_new_llm_does_not(setup, tmp_path):
    model, processor = load(setup)
    config = load_config(setup)
    with torch.no_grad():
        model.audio_projector.linear_1.weight.add_(1.0)
    TeacherCache.open(config.teacher_cache_dir, teacher_fingerprint(model, processor, config))
    with torch.no_grad():
        model.vlm.lm_head.weight.mul_(1.01)
    with pytest.raises(TeacherCacheError, match="stale teacher cache.*'weights' changed"):
        build_datasets(model, processor, config)


@pytest.mark.parametrize("flags, message", [
    (["--prompts", "describe the scene", "what is the content"], "stale teacher cache.*'prompts' changed"),
    (["--loss_top_k", "4"], "stale teacher cache.*'targets' changed"),
    (["--max_completion_length", "9"], "stale teacher cache.*'responses' changed"),
])
def test_stale_cache_is_refused(setup, flags, message):
    model, processor = load(setup)
    with pytest.raises(TeacherCacheError, match=message):
        build_datasets(model, processor, load_config(setup, *flags))


def test_a_corrupt_cache_is_refused(setup, tmp_path):
    import shutil

    copy = tmp_path / "cache"
    shutil.copytree(setup / "cache", copy)
    shard = next(copy.glob("shard-*.safetensors"))
    data = bytearray(shard.read_bytes())
    data[-1] ^= 0xFF
    shard.write_bytes(bytes(data))
    model, processor = load(setup)
    with pytest.raises(TeacherCacheError, match="corrupt teacher cache"):
        build_datasets(model, processor, load_config(setup, "--teacher_cache_dir", str(copy)))


def test_training_resumes_an_unfinished_cache(setup, tmp_path):
    """A build killed before its first shard was listed: training finishes the cache instead of refusing it, and
    the records are the ones an uninterrupted build wrote."""
    import shutil

    copy = tmp_path / "cache"
    shutil.copytree(setup / "cache", copy)
    manifest = json.loads((copy / MANIFEST_NAME).read_text())
    (copy / MANIFEST_NAME).write_text(json.dumps({**manifest, "complete": False, "num_records": 0, "shards": []}))
    model, processor = load(setup)
    build_datasets(model, processor, load_config(setup, "--teacher_cache_dir", str(copy)))
    assert shard_hashes(copy) == shard_hashes(setup / "cache")


def shard_hashes(directory) -> list[str]:
    manifest = json.loads((Path(directory) / MANIFEST_NAME).read_text())
    assert manifest["complete"]
    return [entry["sha256"] for entry in manifest["shards"]]


# ------------------------------------------------------------------------------------------------ parallel builds
KILLED_RANK_SCRIPT = """
import os, signal, sys
from vaemotion.cli import main
from vaemotion.training import teacher_cache

close = teacher_cache.TeacherCacheWriter.close

def close_or_die(self):  # rank 1 is killed as it finishes its share: its part never becomes complete
    if "rank-00001" in str(self.directory):
        os.kill(os.getpid(), signal.SIGKILL)
    close(self)

teacher_cache.TeacherCacheWriter.close = close_or_die
sys.exit(main(["cache-teacher", *sys.argv[1:]]))
"""


def launch_two_processes(tmp_path, *arguments):
    import os
    import subprocess
    import sys

    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    # without GPUs, --multi_gpu starts torch.distributed on gloo (MULTI_CPU)
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", *arguments]
    return subprocess.run(command, capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)


def test_two_processes_build_the_cache_one_process_builds_and_a_killed_build_resumes(setup, tmp_path):
    """`accelerate launch` on 2 gloo processes: each runs the teacher on half of the batches. A rank killed
    (SIGKILL) before its share is complete leaves no complete cache; the relaunch reuses the finished share,
    recomputes the other, and merges them into shards identical, byte for byte, to a one-process build's."""
    from vaemotion.training.teacher_cache import cache_is_complete, part_directory

    flags = ["--teacher_batch_size", "1"]  # 4 batches of one example: 2 for each rank
    reference, parallel = tmp_path / "one_process", tmp_path / "two_processes"
    assert main(["cache-teacher", str(setup / "stage1.yaml"), *flags, "--teacher_cache_dir", str(reference)]) == 0

    script = tmp_path / "killed_rank.py"
    script.write_text(KILLED_RANK_SCRIPT)
    arguments = [str(setup / "stage1.yaml"), *flags, "--teacher_cache_dir", str(parallel)]
    killed = launch_two_processes(tmp_path, str(script), *arguments)
    assert killed.returncode != 0
    assert not cache_is_complete(parallel)
    assert cache_is_complete(part_directory(parallel, 0, 2)) and not cache_is_complete(part_directory(parallel, 1, 2))

    resumed = launch_two_processes(tmp_path, "-m", "vaemotion.cli", "cache-teacher", *arguments)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "4 records added, 4 examples covered (2 processes)" in resumed.stdout
    assert shard_hashes(parallel) == shard_hashes(reference)
    assert sorted(path.name for path in parallel.iterdir()) == [MANIFEST_NAME, "shard-00000.safetensors"]


def test_training_builds_a_missing_cache_first(setup, tmp_path):
    config = load_config(setup, "--teacher_cache_dir", str(tmp_path / "fresh"), "--output_dir", str(tmp_path / "out"))
    train_from_config(config)
    assert (Path(tmp_path / "fresh") / MANIFEST_NAME).exists()
    assert json.loads((tmp_path / "fresh" / MANIFEST_NAME).read_text())["num_records"] == 4
