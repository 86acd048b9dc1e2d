"""Stage 1 (VG-Align): data, collator, loss, trainer, LoRA, resume, CLI and a 2-process accelerate run (CPU, tiny)."""

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml
from conftest import assert_killed_run_resumes_to_the_uninterrupted_one, write_video
from safetensors.torch import load_file
from transformers import AutoModel, AutoProcessor

from vaemotion import VAEmotionConfig, VAEmotionForConditionalGeneration
from vaemotion.processing_vaemotion import VAEmotionProcessor
from vaemotion.tiny import build_tiny_processor, build_tiny_tokenizer, tiny_vaemotion_config
from vaemotion.training.data import read_clips, tokenize_response
from vaemotion.training.distill import teacher_targets
from vaemotion.training.lora import LLM_LORA_TARGET, lora_target_names
from vaemotion.training.vg_align import (
    AnswerHead,
    VGAlignCollator,
    VGAlignConfig,
    VGAlignTrainer,
    attach_answer_head,
    build_datasets,
    load_model_and_processor,
    pair_clips_with_prompts,
    prepare_trainable_model,
    pool_audio_states,
    stage1_dataset,
    teacher_fingerprint,
    train_from_config,
    vg_align_loss,
)

REPO = Path(__file__).resolve().parents[1]
PROMPTS = ["describe the scene", "describe the mood"]
CAPTIONS = ["a calm scene", "the sound is happy and high", "a sad low clip"]


# ------------------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # toy-sized ops: thread start-up and contention on a shared 2-core machine cost far more than they save
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tokenizer():
    return build_tiny_tokenizer()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tokenizer):
    """A saved tiny model + processor (2 s Whisper windows)."""
    directory = tmp_path_factory.mktemp("tiny_model")
    torch.manual_seed(0)
    VAEmotionForConditionalGeneration(tiny_vaemotion_config(tokenizer, window_seconds=2)).save_pretrained(directory)
    build_tiny_processor(tokenizer, window_seconds=2).save_pretrained(directory)
    return str(directory)


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    """Three 1 s H.264 + AAC clips at 32x32 in a folder, and a manifest giving each a caption."""
    directory = tmp_path_factory.mktemp("clips")
    lines = []
    for index, caption in enumerate(CAPTIONS):
        name = f"clip{index}.mp4"
        write_video(directory / name, seconds=1.0, fps=8, size=(32, 32), sampling_rate=16000, onset=0.25 * (index + 1))
        lines.append(json.dumps({"id": f"clip{index}", "video": name, "caption": caption}))
    manifest = directory / "manifest.jsonl"
    manifest.write_text("\n".join(lines) + "\n")
    return {"folder": str(directory), "manifest": str(manifest)}


def make_config(tmp_path, model_dir, clips, **overrides):
    values = dict(
        output_dir=str(tmp_path / "out"), model_name_or_path=model_dir, train_data=clips["manifest"], prompts=PROMPTS,
        response_source="caption", max_completion_length=6, num_frames=4, per_device_train_batch_size=2,
        learning_rate=1e-2, max_steps=2, logging_steps=1, save_strategy="no", use_cpu=True, disable_tqdm=True,
        seed=0,
    )  # fmt: skip
    values.update(overrides)
    return VGAlignConfig(**values)


def load_tiny(model_dir):
    return VAEmotionForConditionalGeneration.from_pretrained(model_dir).eval(), VAEmotionProcessor.from_pretrained(model_dir)


def collated_batch(tmp_path, model_dir, clips, processor, count=2):
    config = make_config(tmp_path, model_dir, clips)
    dataset = stage1_dataset(read_clips(config.train_data).records, processor, config)
    return dataset, VGAlignCollator(processor)([dataset[i] for i in range(count)])


def trainer_logs(output_dir):
    checkpoint = max(Path(output_dir).glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    return json.loads((checkpoint / "trainer_state.json").read_text())["log_history"]


# ------------------------------------------------------------------------------------------------ config and data
@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"divergence": "kl"}, "divergence must be one of"),
        ({"beta": -0.1}, r"beta must lie in \[0, 1\]"),
        ({"loss_top_k": -1}, "loss_top_k must be at least 1, or 0 or None"),
        ({"jsd_beta": 0.3}, "jsd_beta only applies with divergence: jsd; set TRL's beta"),
        ({"divergence": "jsd", "jsd_beta": 1.0}, r"jsd_beta must lie in \(0, 1\)"),
        ({"teacher_top_k": 4, "loss_top_k": 8}, "teacher_top_k .deprecated. and loss_top_k are both set"),
        ({"response_source": "oracle"}, "response_source must be one of"),
        ({"teacher_cache_dir": "cache"}, "teacher_cache_dir needs loss_top_k"),
        ({"kd_weight": 0.0}, "nothing to train"),
        ({"prompts_per_clip": 3}, r"prompts_per_clip must lie in \[1, 2\]"),
        ({"vlm_name_or_path": "vlm"}, "exactly one model source"),
        ({"lora_target_modules": "("}, "not a valid regex"),
        ({"remove_unused_columns": True}, "remove_unused_columns must be False"),
        ({"answer_head_weight": 1.0}, "set train_audio_encoder"),
        ({"answer_head_weight": 1.0, "train_audio_encoder": True, "lora_r": 4}, "not supported with LoRA"),
        ({"answer_head_weight": -1.0}, "answer_head_weight must be >= 0"),
        ({"teacher_generation_kwargs": {"max_new_tokens": 32}}, r"sets \['max_new_tokens'\]: .*max_completion_length"),
        ({"teacher_generation_kwargs": "{do_sample: false}"}, "teacher_generation_kwargs must be a JSON object"),
        ({"per_device_train_batch_size": 0}, "per_device_train_batch_size must be at least 1, got 0"),
        ({"gradient_accumulation_steps": -2}, "gradient_accumulation_steps must be at least 1"),
    ],
)
def test_config_rejects_bad_fields(tmp_path, model_dir, clips, overrides, message):
    with pytest.raises(ValueError, match=message):
        make_config(tmp_path, model_dir, clips, **overrides)


@pytest.mark.parametrize("divergence, jsd_beta, beta", [("forward_kl", None, 0.0), ("reverse_kl", None, 1.0),
                                                        ("jsd", None, 0.5), ("jsd", 0.25, 0.25)])
def test_names_before_trls_still_read_with_a_warning(tmp_path, model_dir, clips, divergence, jsd_beta, beta):
    old = {"divergence": divergence, "teacher_top_k": 16, "max_response_tokens": 9}
    if jsd_beta is not None:
        old["jsd_beta"] = jsd_beta
    with pytest.warns(FutureWarning) as caught:
        config = VGAlignConfig(output_dir=str(tmp_path), model_name_or_path=model_dir, train_data=clips["manifest"],
                               use_cpu=True, **old)
    messages = " ".join(str(warning.message) for warning in caught)
    assert all(f"use TRL's name {name}" in messages for name in ("beta", "loss_top_k", "max_completion_length"))
    assert (config.beta, config.loss_top_k, config.max_completion_length) == (beta, 16, 9)
    assert (config.distillation.divergence, config.distillation.teacher_top_k) == (divergence, 16)
    assert config.divergence is None and config.teacher_top_k is None  # one source of truth after loading


def test_examples_pair_each_clip_with_its_prompts(clips):
    records = read_clips(clips["manifest"]).records
    assert [e.key for e in pair_clips_with_prompts(records, 2)] == [f"clip{i}::{p}" for i in range(3) for p in (0, 1)]
    one_each = pair_clips_with_prompts(records, 2, prompts_per_clip=1)
    assert [e.clip_id for e in one_each] == ["clip0", "clip1", "clip2"]
    assert pair_clips_with_prompts(records[1:], 2, prompts_per_clip=1) == [
        e.__class__(e.clip_index - 1, e.clip_id, e.prompt_index) for e in one_each[1:]
    ]  # a clip's prompts do not depend on the other clips


def test_collator_pairs_paths_on_one_response(tmp_path, model_dir, clips, tokenizer):
    processor = VAEmotionProcessor.from_pretrained(model_dir)
    _, batch = collated_batch(tmp_path, model_dir, clips, processor)
    expected = [tokenize_response(tokenizer, caption, max_tokens=6) for caption in CAPTIONS[:1]] * 2
    assert "pixel_values_videos" in batch["teacher"] and "input_features" not in batch["teacher"]
    assert "input_features" in batch["student"] and "pixel_values_videos" not in batch["student"]
    assert "labels" not in batch["student"] and "labels" not in batch["teacher"]
    for path in ("teacher", "student"):
        ids, positions = batch[path]["input_ids"], batch[f"{path}_positions"]
        for row, response in enumerate(expected):
            predicted = ids[row, positions[row, : len(response)] + 1]  # the token each kept logit predicts
            assert predicted.tolist() == response
            assert batch["response_ids"][row, : len(response)].tolist() == response
            assert batch["response_mask"][row].sum() == len(response)
    # the teacher's prompt holds video tokens, the student's audio tokens: the responses sit at different places
    assert not torch.equal(batch["teacher_positions"], batch["student_positions"])


# ------------------------------------------------------------------------------------------------ loss and sharing
def test_loss_matches_a_full_logits_reference_and_teacher_has_no_grad(tmp_path, model_dir, clips):
    model, processor = load_tiny(model_dir)
    model.set_trainable("vg_align")
    _, batch = collated_batch(tmp_path, model_dir, clips, processor)
    llm_calls, vision_calls = [], []
    llm = model.vlm.model.language_model
    hooks = [
        llm.register_forward_hook(lambda m, a, o: llm_calls.append((id(m), torch.is_grad_enabled()))),
        model.vlm.model.visual.register_forward_hook(lambda m, a, o: vision_calls.append(torch.is_grad_enabled())),
    ]
    settings = make_config(tmp_path, model_dir, clips, temperature=2.0).distillation
    parts = vg_align_loss(model, batch, settings, kd_weight=1.0, ce_weight=0.5)
    parts.loss.backward()
    for hook in hooks:
        hook.remove()
    # one LLM (the same module) runs twice: the teacher pass without gradients, then the student pass with them
    assert llm_calls == [(id(llm), False), (id(llm), True)] and vision_calls == [False]

    # reference: full-sequence logits of plain forwards, gathered at the response by token ids, tau^2 * KL
    with torch.no_grad():
        teacher = model(**batch["teacher"]).logits
        student = model(**batch["student"]).logits
    kl_terms, ce_terms = [], []
    for row in range(2):
        n = int(batch["response_mask"][row].sum())
        t_rows = teacher[row, batch["teacher_positions"][row, :n]] / 2.0
        s_rows = student[row, batch["student_positions"][row, :n]] / 2.0
        kl_terms.append(F.kl_div(s_rows.log_softmax(-1), t_rows.log_softmax(-1), log_target=True, reduction="none").sum(-1))
        ce_terms.append(F.cross_entropy(student[row, batch["student_positions"][row, :n]],
                                        batch["response_ids"][row, :n], reduction="none"))
    torch.testing.assert_close(parts.kd_loss, 4.0 * torch.cat(kl_terms).mean(), rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(parts.ce_loss, torch.cat(ce_terms).mean(), rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(parts.loss, parts.kd_loss + 0.5 * parts.ce_loss)
    grads = {name.split(".")[0] for name, p in model.named_parameters() if p.grad is not None}
    assert grads == {"audio_projector", "audio_delimiters"}


def test_the_teacher_is_one_pathway_without_enhancer_adapters_or_dropout(tmp_path, model_dir, clips):
    """Stage 1's teacher (and so the teacher cache and Stage 2, which use the same function) ignores a trained
    Enhancer and runs without dropout while the model trains; the cache fingerprint ignores the Enhancer too."""
    model, processor = load_tiny(model_dir)
    config = make_config(tmp_path, model_dir, clips)
    _, batch = collated_batch(tmp_path, model_dir, clips, processor)
    teacher = lambda: teacher_targets(model, batch["teacher"], batch["teacher_positions"], config.distillation)  # noqa: E731
    reference, fingerprint = teacher(), teacher_fingerprint(model, processor, config)
    with torch.no_grad():
        model.emotion_enhancer.up.weight.normal_()  # a trained Enhancer: no longer the identity
    for module in model.modules():
        if hasattr(module, "attention_dropout"):
            module.attention_dropout = 0.5
    model.train()
    with torch.no_grad():  # the same model, plain: the Enhancer and dropout do act on it
        plain = model(**batch["teacher"], logits_to_keep=batch["teacher_positions"]).logits
    assert not torch.allclose(plain, reference, atol=1e-3)
    torch.testing.assert_close(teacher(), reference)
    torch.testing.assert_close(teacher(), reference)
    assert all(module.training for module in model.modules())  # put back in training mode
    assert model.emotion_enhancer is not None
    assert teacher_fingerprint(model, processor, config) == fingerprint


def test_trainer_holds_a_single_copy_of_the_weights(tmp_path, model_dir, clips):
    model, processor = load_tiny(model_dir)
    model.set_trainable("vg_align")
    config = make_config(tmp_path, model_dir, clips)
    dataset = stage1_dataset(read_clips(config.train_data).records, processor, config)
    trainer = VGAlignTrainer(model=model, args=config, train_dataset=dataset, data_collator=VGAlignCollator(processor))
    reachable = set()
    for value in vars(trainer).values():
        if isinstance(value, torch.nn.Module):
            reachable |= {p.data_ptr() for p in value.parameters()}
    own = {p.data_ptr() for p in model.parameters()}
    assert reachable == own
    assert sum(p.numel() for p in model.parameters()) == model.count_parameters()["total"]


# ------------------------------------------------------------------------------------------------ training
def test_training_lowers_the_loss_and_changes_only_the_projector(tmp_path, model_dir, clips):
    # a projector whose outputs are far too large puts the student far from the teacher: there is a gap to close
    model, processor = load_tiny(model_dir)
    with torch.no_grad():
        model.audio_projector.linear_2.weight.mul_(30.0)
    start_dir = str(tmp_path / "start")
    model.save_pretrained(start_dir)
    processor.save_pretrained(start_dir)
    before = load_file(Path(start_dir) / "model.safetensors")
    config = make_config(tmp_path, start_dir, clips, train_data=clips["folder"], response_source="teacher",
                         per_device_train_batch_size=6, max_steps=6, learning_rate=1e-2, save_strategy="steps",
                         save_steps=6, eval_data=clips["folder"], eval_strategy="steps", eval_steps=6,
                         train_audio_delimiters=False)
    output_dir = train_from_config(config)
    after = load_file(Path(output_dir) / "model.safetensors")
    changed = {name for name in before if not torch.equal(before[name], after[name])}
    assert changed and {name.split(".")[0] for name in changed} == {"audio_projector"}
    logs = trainer_logs(output_dir)
    kd = [entry["kd_loss"] for entry in logs if "kd_loss" in entry]
    assert len(kd) == 6 and kd[-1] < 0.7 * kd[0]
    evaluation = next(entry for entry in logs if "eval_loss" in entry)
    assert {"eval_kd_loss", "eval_ce_loss", "eval_response_tokens"} <= set(evaluation)
    # the final model and processor load through the Auto classes
    AutoProcessor.register(VAEmotionConfig, VAEmotionProcessor, exist_ok=True)
    assert isinstance(AutoModel.from_pretrained(output_dir), VAEmotionForConditionalGeneration)
    assert isinstance(AutoProcessor.from_pretrained(output_dir), VAEmotionProcessor)


def test_resume_reaches_the_uninterrupted_result(tmp_path, model_dir, clips):
    straight = make_config(tmp_path, model_dir, clips, output_dir=str(tmp_path / "straight"), max_steps=6,
                           save_strategy="steps", save_steps=3)
    train_from_config(straight)
    resumed = make_config(tmp_path, model_dir, clips, output_dir=str(tmp_path / "resumed"), max_steps=6,
                          save_strategy="steps", save_steps=3,
                          resume_from_checkpoint=str(tmp_path / "straight" / "checkpoint-3"))
    train_from_config(resumed)
    first, second = (load_file(tmp_path / run / "model.safetensors") for run in ("straight", "resumed"))
    assert not torch.equal(first["audio_projector.linear_1.weight"],
                           load_file(Path(model_dir) / "model.safetensors")["audio_projector.linear_1.weight"])
    for name in first:
        torch.testing.assert_close(first[name], second[name], rtol=1e-5, atol=1e-6)
    final_loss = [[e["loss"] for e in trainer_logs(tmp_path / run) if "loss" in e][-1] for run in ("straight", "resumed")]
    assert final_loss[0] == pytest.approx(final_loss[1], rel=1e-4)


def test_only_complete_checkpoints_are_resumed(tmp_path):
    """A checkpoint counts once its trainer_state.json (written last) reads; a cut one or none leaves it out."""
    from vaemotion.training.distill import checkpoint_to_resume, is_complete_checkpoint, last_complete_checkpoint

    for step, state in ((2, '{"global_step": 2}'), (10, '{"global_step": 10}'), (12, '{"global_st'), (14, None)):
        folder = tmp_path / f"checkpoint-{step}"
        folder.mkdir()
        if state is not None:
            (folder / "trainer_state.json").write_text(state)
    (tmp_path / "checkpoint-final").mkdir()
    assert [is_complete_checkpoint(tmp_path / f"checkpoint-{step}") for step in (2, 10, 12, 14)] == [True, True, False, False]
    assert last_complete_checkpoint(tmp_path) == str(tmp_path / "checkpoint-10")  # by step, not by name order
    assert checkpoint_to_resume("last", tmp_path) == checkpoint_to_resume("True", tmp_path) == str(tmp_path / "checkpoint-10")
    assert checkpoint_to_resume("last", tmp_path / "nothing yet") is None  # a first run starts afresh
    assert checkpoint_to_resume("no", tmp_path) is None and checkpoint_to_resume(None, tmp_path) is None


KILLED_WHILE_PUBLISHING = """
import os, signal, sys
from vaemotion.training import distill

replace = os.replace

def replace_or_die(source, target):  # killed just before the first entry file would land
    if os.path.basename(target) == "config.json":
        os.kill(os.getpid(), signal.SIGKILL)
    replace(source, target)

os.replace = replace_or_die
distill.publish_staged_folder(sys.argv[1], sys.argv[2])
"""


def test_a_final_model_killed_while_moving_in_does_not_look_complete(tmp_path):
    """The final model is saved to a staging folder and moved in entry files last: SIGKILLed halfway, the output
    folder has no config.json (an earlier model's is removed first), so nothing loads a mix of two models."""
    from vaemotion.training.distill import ENTRY_FILES, publish_staged_folder

    output = tmp_path / "out"
    (output / "checkpoint-2").mkdir(parents=True)
    for name in ("config.json", "model.safetensors", "model-00002-of-00002.safetensors", "model.safetensors.index.json"):
        (output / name).write_text(f"old {name}")  # an earlier, sharded save: its shards must not outlive it

    def stage():
        staging = output / ".final-model.tmp"
        (staging / "adapter").mkdir(parents=True)
        for name in ("model.safetensors", "adapter/adapter_model.safetensors", *ENTRY_FILES):
            (staging / name).write_text(f"new {name}")
        return staging

    script = tmp_path / "publish.py"
    script.write_text(KILLED_WHILE_PUBLISHING)
    killed = subprocess.run([sys.executable, str(script), str(stage()), str(output)], capture_output=True, text=True,
                            timeout=120)  # fmt: skip
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert not (output / "config.json").exists() and not (output / "processor_config.json").exists()
    assert (output / "model.safetensors").read_text() == "new model.safetensors" and (output / "checkpoint-2").is_dir()
    shutil.rmtree(output / ".final-model.tmp")
    publish_staged_folder(stage(), output)  # the next save completes it
    assert sorted(path.name for path in output.iterdir()) == sorted(
        ["adapter", "checkpoint-2", "config.json", "model.safetensors", "processor_config.json"])
    assert (output / "config.json").read_text() == "new config.json"


def test_sigkill_while_checkpointing_resumes_to_the_uninterrupted_run(tmp_path, model_dir, clips):
    config = yaml.safe_load((REPO / "examples/configs/stage1_tiny.yaml").read_text())
    config.update(model_name_or_path=model_dir, train_data=clips["folder"], max_steps=6, save_strategy="steps",
                  save_steps=2, learning_rate=1e-2)
    assert_killed_run_resumes_to_the_uninterrupted_one("stage1", config, tmp_path)


# ------------------------------------------------------------------------------------------------ answer head
def test_pooled_audio_states_match_a_per_sample_float64_reference():
    torch.manual_seed(0)
    states = torch.randn(3, 10, 4)  # windows: sample 0 owns two, sample 1 one
    mel_valid = torch.tensor([20, 7, 12])  # mel frames; the encoder keeps ceil(n / 2) of them
    feature_mask = (torch.arange(20)[None] < mel_valid[:, None]).long()
    bos = 7
    input_ids = torch.tensor([[1, bos, 2, bos, 2, 3], [1, bos, 2, 3, 3, 3]])
    pooled = pool_audio_states(states, feature_mask, input_ids, bos)
    double = states.double()
    frames = [(int(n) + 1) // 2 for n in mel_valid]
    expected = torch.stack([
        torch.cat([double[0, : frames[0]], double[1, : frames[1]]]).mean(0),
        double[2, : frames[2]].mean(0),
    ])  # fmt: skip
    torch.testing.assert_close(pooled.double(), expected)
    with pytest.raises(ValueError, match="3 audio windows but 2"):
        pool_audio_states(states, feature_mask, input_ids[:, :3], bos)


def test_answer_head_classes_are_the_teachers_first_tokens_per_prompt(tmp_path, model_dir, clips, tokenizer):
    model, processor = load_tiny(model_dir)
    config = make_config(tmp_path, model_dir, clips)
    dataset = stage1_dataset(read_clips(config.train_data).records, processor, config)
    firsts = {example.key: dataset.responses[example.key][0] for example in dataset.examples}
    head = AnswerHead.from_dataset(dataset, audio_width=model.config.audio_config.d_model)
    assert head.answer_ids.tolist() == sorted(set(firsts.values()))
    for example in dataset.examples:  # every prompt may give exactly the answers the teacher gave to it
        column = head.answer_ids.tolist().index(firsts[example.key])
        assert head.allowed[example.prompt_index, column]
    per_prompt = {p: {firsts[e.key] for e in dataset.examples if e.prompt_index == p} for p in range(len(PROMPTS))}
    assert head.allowed.sum(-1).tolist() == [len(per_prompt[p]) for p in range(len(PROMPTS))]

    # the loss is a cross-entropy over the prompt's allowed answers only; answers the head never saw are skipped
    pooled = torch.randn(3, model.config.audio_config.d_model)
    prompts = torch.tensor([0, 1, 0])
    answers = torch.tensor([head.answer_ids[head.allowed[0]][0], head.answer_ids[head.allowed[1]][-1], 10_000])
    logits = head.classifier(pooled).double()
    reference = []
    for row in range(2):
        allowed = head.allowed[prompts[row]]
        target = int(allowed[: head.answer_ids.tolist().index(int(answers[row]))].sum())  # index among allowed
        reference.append(F.cross_entropy(logits[row, allowed][None], torch.tensor([target])))
    torch.testing.assert_close(head.loss(pooled, prompts, answers).double(), torch.stack(reference).mean())


def test_answer_head_loss_reads_the_student_pass_and_trains_only_the_encoder(tmp_path, model_dir, clips):
    model, processor = load_tiny(model_dir)
    model.set_trainable("vg_align", train_audio_encoder=True)
    dataset, batch = collated_batch(tmp_path, model_dir, clips, processor, count=3)
    head = attach_answer_head(model, dataset)
    settings = make_config(tmp_path, model_dir, clips).distillation
    parts = vg_align_loss(model, batch, settings, kd_weight=1.0, answer_head_weight=0.5)
    torch.testing.assert_close(parts.loss, parts.kd_loss + 0.5 * parts.answer_loss)
    # second code path: the encoder run on its own, pooled by hand over each sample's valid frames
    student = batch["student"]
    with torch.no_grad():
        states = model.audio_tower(student["input_features"]).last_hidden_state
        expected = head.loss(
            pool_audio_states(states, student["feature_attention_mask"], student["input_ids"],
                              model.config.audio_bos_token_id),
            batch["prompt_indices"], batch["response_ids"][:, 0],
        )  # fmt: skip
    torch.testing.assert_close(parts.answer_loss.detach(), expected)
    model.zero_grad()
    parts.answer_loss.backward()
    grads = {name.split(".")[0] for name, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert grads == {"audio_tower", AnswerHead.ATTRIBUTE}
    without_prompts = {key: value for key, value in batch.items() if key != "prompt_indices"}
    with pytest.raises(ValueError, match="prompt_index"):
        vg_align_loss(model, without_prompts, settings, kd_weight=1.0, answer_head_weight=0.5)


def test_training_with_the_answer_head_logs_it_and_saves_a_model_without_it(tmp_path, model_dir, clips):
    config = make_config(tmp_path, model_dir, clips, answer_head_weight=1.0, train_audio_encoder=True, max_steps=3,
                         save_strategy="steps", save_steps=3)
    output_dir = train_from_config(config)
    logs = [entry for entry in trainer_logs(output_dir) if "loss" in entry]
    assert len(logs) == 3 and all(entry["answer_loss"] > 0 for entry in logs)
    saved = load_file(Path(output_dir) / "model.safetensors")
    assert not any(name.startswith(AnswerHead.ATTRIBUTE) for name in saved)
    before = load_file(Path(model_dir) / "model.safetensors")
    assert not torch.equal(saved["audio_tower.layers.0.fc1.weight"], before["audio_tower.layers.0.fc1.weight"])
    # the head's weights live in the checkpoint, so a resumed run continues with the head it had
    checkpoint = load_file(Path(output_dir) / "checkpoint-3" / "model.safetensors")
    assert any(name.startswith(AnswerHead.ATTRIBUTE) for name in checkpoint)


# ------------------------------------------------------------------------------------------------ LoRA
@pytest.mark.parametrize("family, layers", [("qwen2_5_vl", 2), ("llava", 2)])
def test_lora_regex_targets_only_the_llm(tokenizer, family, layers):
    model = VAEmotionForConditionalGeneration(tiny_vaemotion_config(tokenizer, family=family, window_seconds=2))
    names = lora_target_names(model, LLM_LORA_TARGET)
    assert len(names) == 7 * layers
    assert all(name.startswith("vlm.model.language_model.layers.") for name in names)


def test_lora_adapter_saves_loads_and_merges(tmp_path, model_dir, clips):
    from peft import PeftModel

    config = make_config(tmp_path, model_dir, clips, lora_r=4, lora_alpha=8, lora_dropout=0.0, max_steps=2)
    output_dir = train_from_config(config)
    adapter = Path(output_dir) / "adapter"
    assert (adapter / "adapter_config.json").exists()
    _, processor = load_tiny(model_dir)
    _, batch = collated_batch(tmp_path, model_dir, clips, processor)

    def logits(model):
        with torch.no_grad():
            return model(**batch["student"]).logits

    base = logits(load_tiny(model_dir)[0])
    loaded = load_tiny(model_dir)[0]
    loaded.load_adapter(str(adapter))
    merged = PeftModel.from_pretrained(load_tiny(model_dir)[0], str(adapter)).merge_and_unload()
    saved = AutoModel.from_pretrained(output_dir).eval()
    assert not torch.allclose(logits(loaded), base, atol=1e-4)
    torch.testing.assert_close(logits(merged), logits(loaded), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(logits(saved), logits(loaded), rtol=1e-4, atol=1e-5)
    # LoRA changed the LLM projections only; the vision tower is untouched
    base_weights, saved_weights = load_file(Path(model_dir) / "model.safetensors"), load_file(Path(output_dir) / "model.safetensors")
    changed = {name for name in base_weights if not torch.equal(base_weights[name], saved_weights[name])}
    in_llm_layers = [name for name in changed if ".layers." in name and "visual" not in name]
    trained_in_full = {n for n in changed if n.startswith(("audio_projector.", "audio_delimiters."))}
    assert in_llm_layers and set(changed) - set(in_llm_layers) == trained_in_full


# ------------------------------------------------------------------------------------------------ CLI and accelerate
@pytest.mark.parametrize(
    "content, message",
    [
        (None, "config file not found"),
        (b"learning_rate: [1, 2", "not valid YAML"),
        ("learning_rate: 1.0e-3\n".encode("utf-16"), "not UTF-8 text"),
        (b"- a\n- b\n", "must hold a mapping of config fields"),
        (b"learning_rat: 0.1\n", r"unknown config field\(s\) \['learning_rat'\]"),
        (b"learning_rate: [1.0e-4]\n", r"learning_rate: \[0.0001\] is not a finite number"),
        (b"num_frames: 2.5\n", "num_frames: 2.5 is not a whole number"),
        (b"num_frames: null\n", "num_frames: None is not a whole number"),
        (b"use_cpu: 2\n", "use_cpu: 2 is not true/false"),
        (b"train_data: 5\n", "train_data: 5 is not a string or null"),
        (b"prompts: [describe, 3]\n", r"prompts: \['describe', 3\] is not a list of a string"),
        (b"lora_alpha: .inf\n", "lora_alpha: inf is not a whole number"),
    ],
)  # fmt: skip
def test_bad_yaml_configs_are_named_before_anything_loads(tmp_path, content, message):
    """The file and the field are named, and nothing from inside yaml, argparse or torch escapes; strings still
    go through argparse's conversion (YAML reads 1e-4 without a dot as a string)."""
    from vaemotion.training.cli import parse_stage_config

    path = tmp_path / "stage1.yaml"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(SystemExit, match=message):
        parse_stage_config("stage1", ["--config", str(path), "--train_data", "clips.jsonl"])
    path.write_bytes(b"learning_rate: 1e-4\nnum_frames: '4'\ntrain_data: clips.jsonl\nprompts: [a, b]\nmodel_name_or_path: m\n")
    _, config = parse_stage_config("stage1", ["--config", str(path)])
    assert (config.learning_rate, config.num_frames, config.prompts) == (1e-4, 4, ["a", "b"])


def test_cli_trains_stage1_from_the_tiny_yaml(tmp_path, model_dir, clips):
    from vaemotion.cli import main

    output_dir = tmp_path / "cli_out"
    code = main(["train", "stage1", "--config", str(REPO / "examples/configs/stage1_tiny.yaml"),
                 "--model_name_or_path", model_dir, "--train_data", clips["folder"], "--output_dir", str(output_dir)])
    assert code == 0
    assert (output_dir / "model.safetensors").exists() and (output_dir / "processor_config.json").exists()


def test_accelerate_two_processes(tmp_path, model_dir, clips):
    config = yaml.safe_load((REPO / "examples/configs/stage1_tiny.yaml").read_text())
    config.update(model_name_or_path=model_dir, train_data=clips["folder"], output_dir=str(tmp_path / "ddp"),
                  per_device_train_batch_size=1, max_steps=2)
    config_path = tmp_path / "ddp.yaml"
    config_path.write_text(yaml.safe_dump(config))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    # without GPUs, --multi_gpu starts torch.distributed on gloo (MULTI_CPU); --cpu alone would start one process
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               "-m", "vaemotion.cli", "train", "stage1", "--config", str(config_path)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert result.stdout.count("stage1 finished") == 2  # one line per process
    assert "on 2 processes" in result.stdout and (tmp_path / "ddp" / "model.safetensors").exists()


LOSS_PARTS_SCRIPT = """
import json, pathlib, sys, torch
from transformers import TrainingArguments
from vaemotion.training.distill import LossPartsTrainer

args = TrainingArguments(output_dir=sys.argv[1], use_cpu=True, report_to="none")
trainer = LossPartsTrainer(model=torch.nn.Linear(2, 2), args=args)
rank = args.process_index
for step in range(2):  # rank r records a = r + step (two steps), and only rank 1 records b
    trainer.record_loss_parts(a=torch.tensor(float(rank + step)), b=torch.tensor(5.0) if rank == 1 else None)
trainer.log({"loss": 0.0})  # the public path: the parts join the logged record
logged = {k: v for k, v in trainer.state.log_history[-1].items() if k in ("a", "b")}
(pathlib.Path(sys.argv[1]) / f"parts_{rank}.json").write_text(json.dumps(logged))  # not stdout: ranks interleave
"""


def test_logged_loss_parts_are_means_over_steps_and_ranks(tmp_path):
    """Two gloo processes: each part is averaged over the steps and the ranks that recorded it, and a part only one
    rank has is still logged (the ranks agree on the names before they reduce)."""
    script = tmp_path / "parts.py"
    script.write_text(LOSS_PARTS_SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", str(script), str(tmp_path)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    logged = [json.loads((tmp_path / f"parts_{rank}.json").read_text()) for rank in range(2)]
    assert logged == [{"a": 1.0, "b": 5.0}] * 2  # a: (0 + 1 + 1 + 2) / 4 on both ranks


# ------------------------------------------------------------------------------------------------ frozen encoder memo
def test_a_frozen_encoder_is_run_once_per_window_and_gives_the_same_states(model_dir):
    model, _ = load_tiny(model_dir)
    calls = []
    model.audio_tower.register_forward_hook(lambda module, args, output: calls.append(args[0].shape[0]))
    features = torch.randn(3, model.config.audio_config.num_mel_bins, 200)
    reference = model.get_audio_features(features)
    model.memoize_frozen_audio_states()
    model.set_trainable("vg_align", train_audio_encoder=False)
    calls.clear()
    first = model.get_audio_features(features)
    again = model.get_audio_features(torch.cat([features[2:], features[:1]]))  # windows seen before, reordered
    assert calls == [3]  # encoded once, then served from the memo
    torch.testing.assert_close(first, reference)
    torch.testing.assert_close(again, torch.cat([reference.view(3, -1, reference.shape[-1])[i] for i in (2, 0)]))
    assert model.get_audio_features(features + 1e-3).shape == first.shape and calls == [3, 3]  # new input: a miss
    first.sum().backward()  # the projector still trains on memoized states
    assert model.audio_projector.linear_1.weight.grad is not None

    model.set_trainable("vg_align", train_audio_encoder=True)  # a training encoder is never memoized
    calls.clear()
    model.get_audio_features(features)
    model.get_audio_features(features)
    assert calls == [3, 3]


def test_training_with_memoized_encoder_states_equals_training_without(tmp_path, model_dir, clips):
    runs = {}
    for memo in (False, True):
        config = make_config(tmp_path, model_dir, clips, output_dir=str(tmp_path / f"memo_{memo}"), max_steps=4,
                             cache_audio_encoder_states=memo)
        runs[memo] = load_file(Path(train_from_config(config)) / "model.safetensors")
    for name, tensor in runs[False].items():
        torch.testing.assert_close(runs[True][name], tensor, rtol=1e-5, atol=1e-6)


def test_gradient_accumulation_takes_the_step_of_one_big_batch(tmp_path, model_dir):
    """Eight examples whose responses have 2 to 6 tokens: 4 accumulated micro-batches of 2 take the same optimizer
    step, and log the same loss, as one batch of 8 (float64, plain SGD; KD + CE)."""
    captions = ["calm", "the sound is happy and high", "a sad clip", "low"]
    lines = []
    for index, caption in enumerate(captions):
        write_video(tmp_path / f"c{index}.mp4", seconds=1.0, fps=8, size=(32, 32), sampling_rate=16000,
                    onset=0.2 * (index + 1))
        lines.append(json.dumps({"id": f"c{index}", "video": f"c{index}.mp4", "caption": caption}))
    (tmp_path / "m.jsonl").write_text("\n".join(lines) + "\n")
    steps, losses, lengths = {}, {}, None
    for batch_size, accumulation in ((8, 1), (2, 4)):
        config = make_config(tmp_path, model_dir, {"manifest": str(tmp_path / "m.jsonl")},
                             output_dir=str(tmp_path / f"ga{accumulation}"), per_device_train_batch_size=batch_size,
                             gradient_accumulation_steps=accumulation, max_steps=1, ce_weight=0.5, optim="sgd",
                             learning_rate=1.0, lr_scheduler_type="constant", weight_decay=0.0, max_grad_norm=0.0)
        model, processor = load_model_and_processor(config)
        train_set, _ = build_datasets(model, processor, config)
        model, _ = prepare_trainable_model(model.double(), config)
        trainer = VGAlignTrainer(model=model, args=config, train_dataset=train_set,
                                 data_collator=VGAlignCollator(processor), processing_class=processor)
        lengths = sorted(len(train_set.responses[example.key]) for example in train_set.examples)
        start = {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}
        trainer.train()
        steps[accumulation] = {name: p.detach() - start[name] for name, p in model.named_parameters() if name in start}
        losses[accumulation] = next(entry["loss"] for entry in trainer.state.log_history if "loss" in entry)
    assert lengths[0] <= 2 and lengths[-1] >= 6  # very different response lengths
    assert any(step.abs().max() > 1e-3 for step in steps[1].values())
    for name, step in steps[1].items():
        torch.testing.assert_close(steps[4][name], step, rtol=1e-5, atol=1e-8, msg=name)
    assert losses[4] == pytest.approx(losses[1], rel=1e-5)
