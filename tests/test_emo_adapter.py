"""Stage 2 (EmoAdapter) on a tiny random model and tiny clips written on the spot (CPU, offline)."""

import json
import math

import pytest
import torch
import torch.nn.functional as F
import yaml
from conftest import assert_killed_run_resumes_to_the_uninterrupted_one, write_video
from transformers import AutoModel, AutoProcessor

from vaemotion import VAEmotionForConditionalGeneration
from vaemotion.processing_vaemotion import VAEmotionProcessor
from vaemotion.tiny import build_tiny_processor, build_tiny_tokenizer, tiny_vaemotion_config
from vaemotion.training.data import PATHS, ClipDataError
from vaemotion.training.emo_adapter import (
    EmoAdapterConfig,
    EmoAdapterTrainer,
    build_trainer,
    emo_adapter_loss,
    emotion_enhancer_bypassed,
    load_model,
    read_emotion_clips,
    visual_teacher,
)

EMOTIONS = ["happy", "sad", "calm"]
QUESTION = "what is the mood of this clip ?"
# Bright picture + tone is "happy", dark and silent is "sad": labels the heads can learn from either sense. Some
# labels are missing on purpose (masking), and the last clip has its own question and answer.
CLIPS = [
    {"id": "b0", "bright": True, "emotion": "happy", "valence": 0.8, "arousal": 0.6},
    {"id": "d0", "bright": False, "emotion": "sad", "valence": -0.8, "arousal": -0.6},
    {"id": "b1", "bright": True, "emotion": "happy", "valence": 0.7},
    {"id": "d1", "bright": False, "valence": -0.7, "arousal": -0.5, "question": "how does this clip feel ?",
     "answer": "sad and low"},
]  # fmt: skip


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A stand-in Stage 1 output directory (tiny model + processor) and a manifest of 1 s clips."""
    root = tmp_path_factory.mktemp("stage2")
    tokenizer = build_tiny_tokenizer()
    torch.manual_seed(0)
    model_dir = root / "stage1"
    config = tiny_vaemotion_config(tokenizer, window_seconds=2, emotion_labels=EMOTIONS)
    VAEmotionForConditionalGeneration(config).save_pretrained(model_dir)
    build_tiny_processor(tokenizer, window_seconds=2).save_pretrained(model_dir)
    lines = []
    for clip in CLIPS:
        onset = 0.0 if clip["bright"] else 5.0  # the picture turns white and the tone starts at `onset`
        write_video(root / f"{clip['id']}.mp4", seconds=1.0, fps=8, size=(32, 32), sampling_rate=16000, onset=onset)
        line = {key: value for key, value in clip.items() if key != "bright"}
        lines.append(json.dumps({**line, "video": f"{clip['id']}.mp4"}))
    (root / "train.jsonl").write_text("\n".join(lines) + "\n")
    return root


def make_config(workspace, tmp_path, **overrides):
    values = {
        "output_dir": str(tmp_path / "out"), "model_name_or_path": str(workspace / "stage1"),
        "train_data": str(workspace / "train.jsonl"), "default_question": QUESTION, "num_frames": 4, "use_cpu": True,
        "per_device_train_batch_size": 4, "per_device_eval_batch_size": 4, "report_to": "none", "disable_tqdm": True,
        "save_strategy": "no", "logging_steps": 1, "seed": 0,
    }  # fmt: skip
    return EmoAdapterConfig(**{**values, **overrides})


@pytest.fixture(scope="module")
def batches():
    """Collated batches, one per collator kind (with or without the teacher's inputs): the processor is slow on CPU."""
    return {}


def first_batch(trainer, batches):
    collator = trainer.data_collator
    if collator.with_teacher not in batches:
        batches[collator.with_teacher] = collator([trainer.train_dataset[i] for i in range(len(CLIPS))])
    return batches[collator.with_teacher]


def student_forward(model, batch):
    positions = batch["positions"]
    return model(**batch["inputs"], logits_to_keep=positions, emotion_positions=positions[:, 0], use_cache=False)


def count_forwards(model):
    calls = []
    model.register_forward_pre_hook(lambda module, args: calls.append(1))
    return calls


# ------------------------------------------------------------------------------------------------ config and data
@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"model_name_or_path": None}, "model_name_or_path is required"),
        ({"paths": ["audio", "smell"]}, "paths must be a non-empty subset"),
        ({"paths": ["visual"]}, "use_kd needs a path that hears"),
        ({"va_loss": "l1"}, "va_loss must be one of"),
        ({"w_emo": -1.0}, "w_emo must be >= 0"),
        ({"divergence": "kl"}, "divergence must be one of"),
        ({"answer_template": "{mood}"}, "answer_template may only name"),
        ({"answer_template": "{valence:d}"}, r"answer_template '\{valence:d\}' cannot be filled with a clip's labels"),
        ({"answer_template": "{emotion:.2f}"}, "cannot be filled with a clip's labels"),
        ({"paths": "audio"}, r"paths must be a list .*got the string 'audio' \(write \['audio'\]\)"),
        ({"remove_unused_columns": True}, "remove_unused_columns must be False"),
        ({"model_dtype": "int8"}, "model_dtype must be one of"),
    ],
)
def test_config_validation(tmp_path, overrides, message):
    values = {"output_dir": str(tmp_path), "model_name_or_path": "m", "train_data": "t.jsonl", "use_cpu": True}
    with pytest.raises(ValueError, match=message):
        EmoAdapterConfig(**{**values, **overrides})


def test_example_config_parses():
    from pathlib import Path

    from vaemotion.training.cli import parse_stage_config

    example = Path(__file__).parents[1] / "examples" / "configs" / "stage2_emo_adapter.yaml"
    _, config = parse_stage_config("stage2", ["--config", str(example), "--bf16", "false", "--use_cpu", "true"])
    assert isinstance(config, EmoAdapterConfig)
    assert config.paths == list(PATHS) and config.va_loss == "mse+ccc" and config.kd_enabled


def test_config_defaults(tmp_path):
    config = EmoAdapterConfig(output_dir=str(tmp_path), model_name_or_path="m", train_data="t.jsonl",
                              paths=["audio_visual", "audio"], use_cpu=True)  # fmt: skip
    assert config.paths == ["audio", "audio_visual"]  # batch rows follow PATHS order
    assert config.remove_unused_columns is False and config.kd_enabled
    assert not EmoAdapterConfig(output_dir=str(tmp_path), model_name_or_path="m", train_data="t.jsonl",
                                w_kd=0.0, use_cpu=True).kd_enabled  # fmt: skip


@pytest.mark.parametrize(
    "line, message",
    [
        ({"valence": 1.5, "emotion": "happy"}, r"valence must be a number in \[-1, 1\], got 1.5"),
        ({"arousal": "high", "emotion": "happy"}, "arousal must be a number"),
        ({"emotion": "joyful"}, r"unknown emotion 'joyful'; expected one of \['happy', 'sad', 'calm'\]"),
        ({"emotion": "happy", "video": "missing.mp4"}, "media file .*missing.mp4 does not exist"),
        ({"answer": "fine"}, "clip 1 has no label"),
        ({"valence": 0.2}, r"clip 1: no answer, and answer_template '\{emotion\}' needs its \['emotion'\]"),
        ({"valence": True, "emotion": "happy"}, r"valence must be a number in \[-1, 1\], got True"),
        ({"emotion": "happy", "answer": 3}, "answer must be a non-empty string, got 3"),
        ({"emotion": "happy", "question": "  "}, "question must be a non-empty string"),
        ({"emotion": 2}, "emotion must be a non-empty string, got 2"),
    ],
)
def test_bad_labels_are_refused(workspace, tmp_path, line, message):
    manifest = tmp_path / "bad.jsonl"
    manifest.write_text(json.dumps({"video": str(workspace / "b0.mp4"), **line}) + "\n")
    with pytest.raises(ClipDataError, match=message):
        read_emotion_clips(str(manifest), EMOTIONS)


def test_a_manifest_that_is_not_utf8_is_named(workspace, tmp_path):
    manifest = tmp_path / "utf16.jsonl"
    manifest.write_text(json.dumps({"video": str(workspace / "b0.mp4"), "emotion": "happy"}) + "\n", encoding="utf-16")
    with pytest.raises(ClipDataError, match=r"utf16.jsonl: not UTF-8 text .* at byte 0\); save it as UTF-8"):
        read_emotion_clips(str(manifest), EMOTIONS)


def test_bad_manifest_fails_before_the_model_loads(workspace, tmp_path):
    manifest = tmp_path / "bad.jsonl"
    manifest.write_text(json.dumps({"video": str(workspace / "b0.mp4"), "emotion": "joyful"}) + "\n")
    with pytest.raises(ClipDataError, match=f"{manifest}:1: unknown emotion"):
        build_trainer(make_config(workspace, tmp_path, train_data=str(manifest)))


def test_collator_presents_every_clip_on_every_path(workspace, tmp_path, batches):
    trainer = build_trainer(make_config(workspace, tmp_path))
    batch = first_batch(trainer, batches)
    tokenizer = trainer.processing_class.tokenizer
    inputs, n = batch["inputs"], len(CLIPS)
    assert inputs["input_ids"].shape[0] == len(PATHS) * n and batch["teacher_inputs"]["input_ids"].shape[0] == n
    audio_rows = (inputs["input_ids"] == tokenizer.audio_token_id).any(-1)
    video_rows = (inputs["input_ids"] == tokenizer.convert_tokens_to_ids("<|video_pad|>")).any(-1)
    assert audio_rows.tolist() == [True] * n + [False] * n + [True] * n  # audio, visual, audio_visual
    assert video_rows.tolist() == [False] * n + [True] * n + [True] * n
    assert batch["emotion_labels"].tolist() == [0, 1, 0, -100]
    assert math.isnan(batch["arousal"][2]) and batch["valence"].tolist()[:2] == pytest.approx([0.8, -0.8])
    # the answer tokens, predicted at `positions`, are the same on every path; the last clip's answer is its own
    answers = [tokenizer.decode(row[row != -100]) for row in batch["response_labels"]]
    assert answers[:n] == answers[n : 2 * n] == answers[2 * n :]
    assert answers[0] == "happy <|im_end|>" and answers[3] == "sad and low <|im_end|>"
    following = inputs["input_ids"].gather(1, (batch["positions"] + 1).clamp(max=inputs["input_ids"].shape[1] - 1))
    assert torch.equal(following[batch["response_mask"]], batch["response_labels"][batch["response_mask"]])


# ------------------------------------------------------------------------------------------------ model and loss
def test_untrained_enhancer_is_the_identity(workspace, tmp_path, batches):
    trainer = build_trainer(make_config(workspace, tmp_path))
    batch, model = first_batch(trainer, batches), trainer.model.eval()
    without = load_model(make_config(workspace, tmp_path, use_emotion_enhancer=False))[0]
    with torch.no_grad():
        enhanced = student_forward(model, batch)
        with emotion_enhancer_bypassed(model):
            bypassed = student_forward(model, batch)
        removed = student_forward(without, batch)
    assert model.emotion_enhancer is not None and without.emotion_enhancer is None
    for other in (bypassed, removed):
        torch.testing.assert_close(enhanced.logits, other.logits, rtol=0, atol=0)
        torch.testing.assert_close(enhanced.emotion_logits, other.emotion_logits, rtol=0, atol=0)


def test_teacher_is_the_frozen_visual_pathway(workspace, tmp_path, batches):
    """Once the Enhancer has moved, the student's visual path moves with it but the teacher does not."""
    config = make_config(workspace, tmp_path)
    trainer = build_trainer(config)
    batch, model = first_batch(trainer, batches), trainer.model.eval()
    reference = load_model(make_config(workspace, tmp_path, use_emotion_enhancer=False))[0]
    torch.nn.init.normal_(model.emotion_enhancer.up.weight, std=0.5)
    with torch.no_grad():
        teacher = visual_teacher(model, batch, config)
        expected = reference(**batch["teacher_inputs"], logits_to_keep=batch["teacher_positions"]).logits
        student_visual = student_forward(model, batch).logits[len(CLIPS) : 2 * len(CLIPS)]
    torch.testing.assert_close(teacher, expected)
    assert model.emotion_enhancer is not None  # put back after the teacher pass
    mask = batch["response_mask"][: len(CLIPS)]
    assert not torch.allclose(student_visual[mask], teacher[mask], atol=1e-4)


@pytest.mark.parametrize("train_projector", [False, True])
def test_gradients_reach_exactly_the_stage2_trainable_set(workspace, tmp_path, train_projector, batches):
    trainer = build_trainer(make_config(workspace, tmp_path, train_projector=train_projector))
    batch, model = first_batch(trainer, batches), trainer.model.train()
    torch.nn.init.normal_(model.emotion_enhancer.up.weight, std=0.02)  # past init, so W_down gets a gradient too
    emo_adapter_loss(model, batch, trainer.args).loss.backward()
    expected = {"emotion_enhancer", "emotion_supervisor"} | ({"audio_projector"} if train_projector else set())
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    with_gradient = {name for name, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert {name.split(".")[0] for name in trainable} == expected
    assert with_gradient == trainable
    assert all(p.grad is None for p in model.parameters() if not p.requires_grad)


def _ce64(logits, labels):
    valid = labels != -100
    logprobs = torch.log_softmax(logits.double(), -1)
    return -logprobs[valid].gather(-1, labels[valid][:, None]).mean()


def _kd64(student, teacher, mask, tau):
    q = torch.softmax(teacher.double()[mask] / tau, -1)
    log_p = torch.log_softmax(student.double()[mask] / tau, -1)
    return tau**2 * (q * (q.log() - log_p)).sum(-1).mean()


def _va64(prediction, target):
    """MSE + (1 - CCC) per dimension over the known targets, averaged over the two dimensions."""
    mse, ccc = [], []
    for d in range(2):
        known = ~torch.isnan(target[:, d])
        p, t = prediction[known, d].double(), target[known, d].double()
        mse.append(((p - t) ** 2).mean())
        covariance = ((p - p.mean()) * (t - t.mean())).mean()
        ccc.append(2 * covariance / (p.var(unbiased=False) + t.var(unbiased=False) + (p.mean() - t.mean()) ** 2))
    return sum(mse) / 2 + sum(1 - c for c in ccc) / 2


def _category64(logits, labels):
    known = labels != -100
    return F.cross_entropy(logits.double()[known], labels[known])


def test_each_loss_part_matches_an_independent_formula(workspace, tmp_path, batches):
    weights = {"w_lm": 0.7, "w_kd": 1.3, "w_emo": 0.9, "aux_weight": 0.4, "va_weight": 0.6, "category_weight": 1.1}
    config = make_config(workspace, tmp_path, va_loss="mse+ccc", temperature=2.0, **weights)
    trainer = build_trainer(config)
    batch, model = first_batch(trainer, batches), trainer.model.eval()
    torch.nn.init.normal_(model.emotion_enhancer.up.weight, std=0.1)  # a trained-looking Enhancer
    with torch.no_grad():
        step = emo_adapter_loss(model, batch, config)
        out = student_forward(model, batch)
        frozen = load_model(make_config(workspace, tmp_path, use_emotion_enhancer=False))[0]
        teacher = frozen(**batch["teacher_inputs"], logits_to_keep=batch["teacher_positions"]).logits

    n, targets, labels = len(CLIPS), torch.stack([batch["valence"], batch["arousal"]], -1), batch["emotion_labels"]
    totals = {"lm_loss": [], "kd_loss": [], "emo_loss": [], "aux_loss": []}
    for index, path in enumerate(PATHS):
        rows = slice(index * n, (index + 1) * n)
        expected = {"lm_loss": _ce64(out.logits[rows], batch["response_labels"][rows])}
        if path != "visual":
            expected["kd_loss"] = _kd64(out.logits[rows], teacher, batch["response_mask"][rows], 2.0)
        for prefix, v, a, logits in (("", out.valence, out.arousal, out.emotion_logits),
                                     ("aux_", out.aux_valence, out.aux_arousal, out.aux_emotion_logits)):
            expected[f"{prefix}va_loss"] = _va64(torch.stack([v[rows], a[rows]], -1), targets)
            expected[f"{prefix}category_loss"] = _category64(logits[rows], labels)
            total = 0.6 * expected[f"{prefix}va_loss"] + 1.1 * expected[f"{prefix}category_loss"]
            expected["aux_loss" if prefix else "emo_loss"] = total
        for name, value in expected.items():
            assert step.parts[f"{name}/{path}"].item() == pytest.approx(value.item(), rel=1e-5, abs=1e-6), name
            if name in totals:
                totals[name].append(value)
    means = {name: torch.stack(values).mean() for name, values in totals.items()}
    for name, value in means.items():
        assert step.parts[name].item() == pytest.approx(value.item(), rel=1e-5, abs=1e-6), name
    total = 0.7 * means["lm_loss"] + 1.3 * means["kd_loss"] + 0.9 * means["emo_loss"] + 0.4 * means["aux_loss"]
    assert step.loss.item() == pytest.approx(total.item(), rel=1e-5)
    assert "kd_loss/visual" not in step.parts
    assert step.predictions.shape == (n, len(PATHS), 2 + len(EMOTIONS))


# ------------------------------------------------------------------------------------------------ ablations
def test_without_kd_the_teacher_never_runs(workspace, tmp_path, batches):
    for overrides in ({}, {"use_kd": False}, {"w_kd": 0.0}):
        trainer = build_trainer(make_config(workspace, tmp_path, **overrides))
        batch = first_batch(trainer, batches)
        calls = count_forwards(trainer.model)
        step = emo_adapter_loss(trainer.model, batch, trainer.args)
        kd_parts = [name for name in step.parts if name.startswith("kd_loss")]
        if overrides:
            assert "teacher_inputs" not in batch and len(calls) == 1 and kd_parts == []
        else:
            assert len(calls) == 2 and sorted(kd_parts) == ["kd_loss", "kd_loss/audio", "kd_loss/audio_visual"]


def test_top_k_teacher_and_jsd(workspace, tmp_path, batches):
    trainer = build_trainer(make_config(workspace, tmp_path, loss_top_k=5, beta=0.5, temperature=2.0))
    step = emo_adapter_loss(trainer.model, first_batch(trainer, batches), trainer.args)
    assert all(torch.isfinite(step.parts[f"kd_loss/{path}"]) and step.parts[f"kd_loss/{path}"] > 0
               for path in ("audio", "audio_visual"))  # fmt: skip


def test_without_supervisor_there_are_no_emotion_heads(workspace, tmp_path, batches):
    trainer = build_trainer(make_config(workspace, tmp_path, use_emotion_supervisor=False))
    model = trainer.model
    assert model.emotion_supervisor is None and model.config.use_emotion_supervisor is False
    assert {name.split(".")[0] for name, p in model.named_parameters() if p.requires_grad} == {"emotion_enhancer"}
    step = emo_adapter_loss(model, first_batch(trainer, batches), trainer.args)
    assert step.outputs.valence is None and step.predictions is None
    assert {name.split("/")[0] for name in step.parts} == {"lm_loss", "kd_loss"}
    assert trainer.compute_metrics is None


def test_without_enhancer_there_is_no_bottleneck_head_loss(workspace, tmp_path, batches):
    trainer = build_trainer(make_config(workspace, tmp_path, use_emotion_enhancer=False))
    model = trainer.model
    assert model.emotion_enhancer is None and model.config.use_emotion_enhancer is False
    assert {name.split(".")[0] for name, p in model.named_parameters() if p.requires_grad} == {"emotion_supervisor"}
    step = emo_adapter_loss(model, first_batch(trainer, batches), trainer.args)
    assert step.outputs.aux_valence is None
    assert {name.split("/")[0] for name in step.parts} == {"lm_loss", "kd_loss", "va_loss", "category_loss", "emo_loss"}


def test_nothing_to_train_is_refused(workspace, tmp_path):
    config = make_config(workspace, tmp_path, use_emotion_enhancer=False, use_emotion_supervisor=False)
    with pytest.raises(ValueError, match="nothing to train"):
        build_trainer(config)


def test_lora_adapters_train_and_leave_the_teacher_alone(workspace, tmp_path, batches):
    trainer = build_trainer(make_config(workspace, tmp_path, lora_r=2, lora_dropout=0.0))
    batch, model = first_batch(trainer, batches), trainer.model.train()
    step = emo_adapter_loss(model, batch, trainer.args)
    step.loss.backward()
    lora_grads = [p.grad for name, p in model.named_parameters() if "lora_B" in name]
    assert lora_grads and all(g is not None and g.abs().sum() > 0 for g in lora_grads)
    for name, parameter in model.named_parameters():
        if "lora_" in name:
            parameter.data.normal_(std=0.5)
    with torch.no_grad():
        teacher = visual_teacher(model, batch, trainer.args)
        frozen = load_model(make_config(workspace, tmp_path, use_emotion_enhancer=False))[0]
        expected = frozen(**batch["teacher_inputs"], logits_to_keep=batch["teacher_positions"]).logits
    torch.testing.assert_close(teacher, expected)


# ------------------------------------------------------------------------------------------------ training
def test_training_with_memoized_encoder_states_equals_training_without(workspace, tmp_path):
    """The frozen encoder's states, computed once per clip (cache_audio_encoder_states), train the same weights."""
    weights, encoded = {}, {}
    for memo in (False, True):
        config = make_config(workspace, tmp_path, output_dir=str(tmp_path / f"memo_{memo}"), max_steps=3,
                             per_device_train_batch_size=2, cache_audio_encoder_states=memo)
        trainer = build_trainer(config)
        windows, model = [], trainer.model
        encode = model._run_audio_tower
        model._run_audio_tower = lambda features: windows.append(len(features)) or encode(features)
        trainer.train()
        weights[memo] = {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}
        encoded[memo] = sum(windows)
    assert 0 < encoded[True] < encoded[False]  # 3 steps of 2 clips over 4 clips: some windows come back
    for name, tensor in weights[False].items():
        torch.testing.assert_close(weights[True][name], tensor, rtol=1e-5, atol=1e-6)


def test_training_reduces_the_emotion_loss_on_every_path(workspace, tmp_path):
    config = make_config(workspace, tmp_path, eval_data=str(workspace / "train.jsonl"), max_steps=8,
                         learning_rate=2e-2, warmup_steps=0, va_loss="mse+ccc")  # fmt: skip
    trainer = build_trainer(config)
    seen = []
    metrics = trainer.compute_metrics
    trainer.compute_metrics = lambda prediction: seen.append(prediction) or metrics(prediction)
    before = trainer.evaluate()
    trainer.train()
    after = trainer.evaluate()
    for path in PATHS:
        # The random tiny Whisper encoder maps the tone and the silence to states about 1 % apart, so the audio path
        # gains less (mostly the label priors) than the paths that see the picture; every path must gain.
        assert after[f"eval_emo_loss/{path}"] < 0.9 * before[f"eval_emo_loss/{path}"], path
        for metric in ("valence_ccc", "arousal_ccc", "macro_f1", "accuracy"):
            assert math.isfinite(after[f"eval_{metric}/{path}"])
        assert f"eval_kd_loss/{path}" in after or path == "visual"
    # only the emotion outputs were gathered: (clips, paths, valence + arousal + categories), never vocab logits
    assert seen[-1].predictions.shape == (len(CLIPS), len(PATHS), 2 + len(EMOTIONS))
    assert seen[-1].label_ids.shape == (len(CLIPS), 3)
    logged = set().union(*(entry.keys() for entry in trainer.state.log_history))
    for name in ("lm_loss/audio", "kd_loss/audio_visual", "emo_loss/visual", "va_loss/audio", "aux_loss/visual",
                 "aux_category_loss/audio_visual", "lm_loss", "kd_loss", "emo_loss", "aux_loss"):
        assert name in logged, name


def test_cli_trains_saves_and_resumes(workspace, tmp_path, monkeypatch):
    from vaemotion.cli import main

    output_dir = tmp_path / "run"
    config_file = tmp_path / "stage2.yaml"
    config_file.write_text(yaml.safe_dump({
        "model_name_or_path": str(workspace / "stage1"), "train_data": str(workspace / "train.jsonl"),
        "output_dir": str(output_dir), "default_question": QUESTION, "num_frames": 4, "use_cpu": True,
        "per_device_train_batch_size": 2, "max_steps": 2, "save_strategy": "steps", "save_steps": 1,
        "logging_steps": 1, "report_to": "none",
    }))  # fmt: skip
    steps = []
    compute_loss = EmoAdapterTrainer.compute_loss
    counting = lambda self, *args, **kwargs: steps.append(1) or compute_loss(self, *args, **kwargs)
    monkeypatch.setattr(EmoAdapterTrainer, "compute_loss", counting)

    assert main(["train", "stage2", "--config", str(config_file)]) == 0
    assert len(steps) == 2 and (output_dir / "checkpoint-2").is_dir()
    assert type(AutoModel.from_pretrained(output_dir)) is VAEmotionForConditionalGeneration
    assert type(AutoProcessor.from_pretrained(output_dir)) is VAEmotionProcessor

    steps.clear()
    assert main(["train", "stage2", "--config", str(config_file), "--max_steps", "3",
                 "--resume_from_checkpoint", "last"]) == 0  # fmt: skip
    assert len(steps) == 1  # steps 1-2 came from checkpoint-2
    state = json.loads((output_dir / "checkpoint-3" / "trainer_state.json").read_text())
    assert state["global_step"] == 3


def test_sigkill_while_checkpointing_resumes_to_the_uninterrupted_run(workspace, tmp_path):
    config = {
        "model_name_or_path": str(workspace / "stage1"), "train_data": str(workspace / "train.jsonl"),
        "default_question": QUESTION, "num_frames": 4, "use_cpu": True, "per_device_train_batch_size": 2,
        "max_steps": 6, "save_strategy": "steps", "save_steps": 2, "logging_steps": 1, "report_to": "none",
        "disable_tqdm": True, "seed": 0,
    }  # fmt: skip
    assert_killed_run_resumes_to_the_uninterrupted_one("stage2", config, tmp_path)


def test_gradient_accumulation_takes_the_step_of_one_big_batch(workspace, tmp_path):
    """Answers of 1 to 3 tokens, one clip without a category: 2 accumulated micro-batches of 2 clips take the same
    optimizer step, and log the same loss, as one batch of 4 (float64, plain SGD): every answer token and every
    labelled clip weighs the same wherever it falls (num_items_in_batch)."""
    lines = [json.loads(line) for line in (workspace / "train.jsonl").read_text().splitlines()]
    lines[2]["arousal"] = 0.5  # exact with MSE when a clip with a VA target has both (see emo_adapter_loss)
    manifest = tmp_path / "train.jsonl"
    manifest.write_text("".join(json.dumps({**line, "video": str(workspace / line["video"])}) + "\n" for line in lines))
    steps, losses = {}, {}
    for batch_size, accumulation in ((4, 1), (2, 2)):
        config = make_config(workspace, tmp_path, output_dir=str(tmp_path / f"ga{accumulation}"), train_data=str(manifest),
                             max_steps=1, per_device_train_batch_size=batch_size,
                             gradient_accumulation_steps=accumulation, va_loss="mse", optim="sgd", learning_rate=1.0,
                             lr_scheduler_type="constant", weight_decay=0.0, max_grad_norm=0.0)
        trainer = build_trainer(config)
        trainer.model.double()
        start = {name: p.detach().clone() for name, p in trainer.model.named_parameters() if p.requires_grad}
        trainer.train()
        steps[accumulation] = {name: p.detach() - start[name] for name, p in trainer.model.named_parameters()
                               if name in start}
        losses[accumulation] = next(entry["loss"] for entry in trainer.state.log_history if "loss" in entry)
    assert any(step.abs().max() > 1e-3 for step in steps[1].values())
    for name, step in steps[1].items():
        torch.testing.assert_close(steps[2][name], step, rtol=1e-5, atol=1e-8, msg=name)
    assert losses[2] == pytest.approx(losses[1], rel=1e-5)
