"""The user journey on real pretrained parts, for each supported VLM family (CPU, offline).

(a) LLaVA 1.5: the real DINOv2 ViT-S/14 vision tower and the real SmolLM2-135M-Instruct LLM (real tokenizer, real
    ChatML template), with the real Whisper tiny.en as the audio encoder.
(b) Qwen2.5-VL: the real Qwen2.5 tokenizer, ids, vocabulary size (151,936 rows for 151,665 tokens) and chat
    template, small random weights.

Each goes the README's way: both `from_vlm_and_audio_pretrained` recipes -> the processor on raw media (a video with
its soundtrack, an image, an audio file) -> `vaemotion cache-teacher` -> `train stage1` -> `train stage2` ->
`vaemotion eval` -> `vaemotion push --dry-run` -> loaded as remote code in a process that cannot import vaemotion ->
`pipeline("audio-visual-emotion")`. The parts come from `scripts/fetch_real_parts.py`; without them these tests skip.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
import yaml
from PIL import Image
from real_parts import real_part_path
from real_vlms import QWEN2_5_TOKENIZER_SIZE, QWEN2_5_VL_3B_VOCAB_SIZE, assemble_llava, build_qwen2_5_vl
from safetensors.torch import load_file
from transformers import AutoTokenizer

from vaemotion import VAEmotionForConditionalGeneration, VAEmotionProcessor
from vaemotion.cli import main
from vaemotion.synth import generate_benchmark


FAMILIES = ["llava", "qwen2_5_vl"]
NUM_FRAMES = {"llava": 1, "qwen2_5_vl": 2}  # LLaVA sees each frame as a 224 px image: 256 tokens a frame


@pytest.fixture(scope="module")
def whisper_dir():
    return real_part_path("whisper-tiny.en")


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    """Eight ArtEmo-Synth clips (mp4, H.264 + AAC), their Stage 1 and Stage 2 manifests, a png and a wav."""
    root = tmp_path_factory.mktemp("journey_data")
    generate_benchmark(root, 8, seed=0, duration=1.0, fps=4.0, size=56, classes=["city", "bells"], num_options=2,
                       progress=False)
    items = [json.loads(line) for line in (root / "metadata.jsonl").read_text().splitlines() if line.strip()]
    clips = {}
    for item in items:
        clips.setdefault(item["clip_id"], item)
    train = [item for item in clips.values() if item["split"] == "train"][:4]
    with open(root / "stage1.jsonl", "w") as one, open(root / "stage2.jsonl", "w") as two:
        for item in train:
            one.write(json.dumps({"id": item["clip_id"], "video": item["video"]}) + "\n")
            labels = {key: item[key] for key in ("valence", "arousal", "emotion")}
            two.write(json.dumps({"id": item["clip_id"], "video": item["video"], **labels}) + "\n")
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (80, 96, 3), dtype=np.uint8)).save(root / "picture.png")
    soundfile.write(root / "sound.wav", 0.1 * np.sin(np.linspace(0, 2000, 22050)).astype(np.float32), 22050)
    return root, train


@pytest.fixture(scope="module", params=FAMILIES)
def vlm(request, tmp_path_factory):
    family = request.param
    folder = tmp_path_factory.mktemp(f"vlm_{family}")
    (assemble_llava if family == "llava" else build_qwen2_5_vl)(folder)
    return family, folder


@pytest.fixture(scope="module")
def recipe(vlm, whisper_dir):
    """The README recipe: model and processor built separately from the same two paths."""
    family, vlm_dir = vlm
    model = VAEmotionForConditionalGeneration.from_vlm_and_audio_pretrained(vlm_dir, whisper_dir).eval()
    processor = VAEmotionProcessor.from_vlm_and_audio_pretrained(vlm_dir, whisper_dir)
    return family, vlm_dir, model, processor


def test_ids_embeddings_and_template_match_the_checkpoint(recipe):
    family, vlm_dir, model, processor = recipe
    original = AutoTokenizer.from_pretrained(vlm_dir)
    ids = [processor.audio_token_id, processor.audio_bos_token_id, processor.audio_eos_token_id]
    assert ids == [model.config.audio_token_id, model.config.audio_bos_token_id, model.config.audio_eos_token_id]
    assert ids == [len(original), len(original) + 1, len(original) + 2]  # the tokenizer's next free ids
    rows = model.get_input_embeddings().weight
    if family == "qwen2_5_vl":
        assert len(original) == QWEN2_5_TOKENIZER_SIZE and ids == [151665, 151666, 151667]
        assert rows.shape[0] == QWEN2_5_VL_3B_VOCAB_SIZE  # spare rows took the new ids: no growth
        start, end = (original.convert_tokens_to_ids(t) for t in ("<|vision_start|>", "<|vision_end|>"))
        expected = rows[[start, end]]
        assert processor.image_token_id == 151655 and processor.video_token_id == 151656
    else:
        assert rows.shape[0] == len(original) + 3  # no spare row in SmolLM2's matrix: grown by exactly three
        expected = rows[: len(original)].mean(0, keepdim=True).expand(2, -1)
    torch.testing.assert_close(model.audio_delimiters.weight, expected)
    # the VLM's own template and system prompt are kept; audio enters it as text
    vlm_template = json.loads((vlm_dir / "processor_config.json").read_text()).get("chat_template") or (
        (vlm_dir / "chat_template.jinja").read_text()
    )
    assert processor.chat_template == vlm_template
    messages = [{"role": "user", "content": [{"type": "audio"}, {"type": "text", "text": "How does it feel?"}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    text_only = original.apply_chat_template(
        [{"role": "user", "content": "How does it feel?"}], add_generation_prompt=True, tokenize=False
    ) if family == "llava" else None
    if family == "qwen2_5_vl":
        assert prompt.startswith("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n")
    else:  # SmolLM2's own default system prompt, and the same turns as the text-only prompt with the audio block
        assert prompt == text_only.replace("How does it feel?", "<|audio_bos|><|audio_pad|><|audio_eos|>How does it feel?")
    assert "<|audio_bos|><|audio_pad|><|audio_eos|>How does it feel?" in prompt
    # where the Supervisor reads: the end of the template's generation prompt, the same for model and processor
    assert model.config.generation_prompt_ids == processor.generation_prompt_ids
    if family == "qwen2_5_vl":  # <|im_start|>, "assistant", "\n" in Qwen2.5's vocabulary
        assert model.config.generation_prompt_ids == [151644, 77091, 198]
    no_prompt = processor.apply_chat_template(messages, add_generation_prompt=False)
    assert processor.tokenizer.decode(model.config.generation_prompt_ids) == prompt[len(no_prompt):]


def test_raw_media_through_the_processor_and_the_model(recipe, synth):
    family, _, model, processor = recipe
    root, train = synth
    video = str(root / train[0]["video"])
    cases = {
        "video+soundtrack": ([{"type": "video", "path": video}, {"type": "audio"}], True),
        "image": ([{"type": "image", "path": str(root / "picture.png")}], False),
        "audio file": ([{"type": "audio", "path": str(root / "sound.wav")}], False),
    }
    for name, (parts, soundtrack) in cases.items():
        messages = [{"role": "user", "content": [*parts, {"type": "text", "text": "What is the mood?"}]}]
        inputs = processor.apply_chat_template(
            messages, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt",
            load_audio_from_video=soundtrack, processor_kwargs={"num_frames": NUM_FRAMES[family]},
        )  # fmt: skip
        ids = inputs["input_ids"]
        if "input_features" in inputs:
            assert inputs["input_features"].shape[1:] == (80, 3000), name  # Whisper tiny.en: 80 mels, 30 s
            assert int((ids == processor.audio_token_id).sum()) > 0
        types = inputs["mm_token_type_ids"]
        assert ((types == 3) == (ids == processor.audio_token_id)).all(), name
        assert ((types == 1) == (ids == processor.image_token_id)).all(), name
        if family == "llava" and name != "audio file":  # 16 x 16 DINOv2 patches a picture, CLS dropped
            assert int((ids == processor.image_token_id).sum()) == 256 * (NUM_FRAMES[family] if "video" in name else 1)
        with torch.no_grad():
            out = model(**inputs)
            emotion = model.predict_emotion(**inputs).to_list()[0]
        assert out.logits.shape == (1, ids.shape[1], model.get_output_embeddings().weight.shape[0]), name
        assert torch.isfinite(out.logits).all() and set(emotion) >= {"emotion", "valence", "arousal"}, name
    # transformers-style labels on prompt + answer: the Supervisor still reads the prompt's last token
    answer = processor.tokenizer(" calm", add_special_tokens=False, return_tensors="pt").input_ids
    full_ids = torch.cat([ids, answer], dim=1)
    with torch.no_grad():
        trained_view = model(**{**inputs, "input_ids": full_ids, "attention_mask": torch.ones_like(full_ids),
                                "mm_token_type_ids": torch.nn.functional.pad(types, (0, answer.shape[1]))},
                             labels=full_ids)
        torch.testing.assert_close(trained_view.valence, model.predict_emotion(**inputs).valence)
    generated = model.generate(**inputs, max_new_tokens=3, do_sample=False)
    assert generated.shape[1] == ids.shape[1] + 3 or processor.tokenizer.eos_token_id in generated[0, ids.shape[1]:]


def stage1_yaml(root: Path, vlm_dir: Path, whisper_dir: Path, data: Path, family: str) -> Path:
    config = {
        "vlm_name_or_path": str(vlm_dir), "audio_name_or_path": str(whisper_dir), "train_data": str(data),
        "output_dir": str(root / "stage1"), "prompts": ["What is the mood?", "Describe the scene."],
        "prompts_per_clip": 1, "max_completion_length": 4, "num_frames": NUM_FRAMES[family],
        "teacher_cache_dir": str(root / "cache"), "loss_top_k": 8, "teacher_batch_size": 2,
        "per_device_train_batch_size": 2, "max_steps": 2, "logging_steps": 1, "save_strategy": "no",
        "learning_rate": 1e-2, "warmup_steps": 0, "use_cpu": True, "disable_tqdm": True, "seed": 0,
        "dataloader_num_workers": 0,
    }  # fmt: skip
    path = root / "stage1.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def parameters(folder: Path) -> dict[str, torch.Tensor]:
    return {name: tensor for file in sorted(folder.glob("*.safetensors")) for name, tensor in load_file(file).items()}


FRESH_PROCESS = textwrap.dedent(
    """
    import importlib.util, sys
    sys.meta_path[:] = [f for f in sys.meta_path if not getattr(f, "__module__", "").startswith("__editable__")]
    sys.path[:] = [entry for entry in sys.path if "__editable__" not in entry]
    assert importlib.util.find_spec("vaemotion") is None, "vaemotion is importable"
    from transformers import pipeline

    folder, clip, frames = sys.argv[1], sys.argv[2], int(sys.argv[3])
    classifier = pipeline(model=folder, trust_remote_code=True)
    assert type(classifier).__module__.startswith("transformers_modules."), type(classifier).__module__
    for modality in ("audio_only", "visual_only", "audio_visual"):
        result = classifier(clip, modality=modality, num_frames=frames)
        assert set(result) == {"emotion", "score", "scores", "valence", "arousal"}, result
    assert not any(name.split(".")[0] == "vaemotion" for name in sys.modules)
    print("FRESH PROCESS OK")
    """
)


def test_the_whole_journey_through_the_cli(vlm, whisper_dir, synth, tmp_path):
    family, vlm_dir = vlm
    root, train = synth
    config = stage1_yaml(tmp_path, vlm_dir, whisper_dir, root / "stage1.jsonl", family)
    assert main(["cache-teacher", str(config)]) == 0
    manifest = json.loads((tmp_path / "cache" / "manifest.json").read_text())
    assert manifest and (tmp_path / "cache").is_dir()

    assert main(["train", "stage1", "--config", str(config)]) == 0
    stage1 = tmp_path / "stage1"
    before, after = parameters(vlm_dir), parameters(stage1)
    for name, tensor in before.items():  # every VLM weight is frozen in Stage 1 (grown rows aside)
        trained = after[f"vlm.{name}"] if f"vlm.{name}" in after else None
        if trained is not None and trained.shape == tensor.shape:
            torch.testing.assert_close(trained, tensor, msg=name)
    whisper = parameters(whisper_dir)
    frozen_audio = {n: t for n, t in after.items() if n.startswith("audio_tower.")}
    assert frozen_audio and all(torch.equal(t, whisper[f"model.encoder.{n.split('.', 1)[1]}"]) for n, t in frozen_audio.items())
    fresh = VAEmotionForConditionalGeneration.from_vlm_and_audio_pretrained(vlm_dir, whisper_dir).state_dict()
    assert not torch.equal(after["audio_projector.linear_1.weight"], fresh["audio_projector.linear_1.weight"])
    assert not torch.equal(after["audio_delimiters.weight"], fresh["audio_delimiters.weight"])

    stage2 = tmp_path / "stage2"
    assert main([
        "train", "stage2", "--model_name_or_path", str(stage1), "--train_data", str(root / "stage2.jsonl"),
        "--output_dir", str(stage2), "--max_steps", "2", "--per_device_train_batch_size", "2",
        "--num_frames", str(NUM_FRAMES[family]), "--max_completion_length", "4", "--learning_rate", "1e-2",
        "--save_strategy", "no", "--use_cpu", "true", "--disable_tqdm", "true", "--report_to", "none",
        "--dataloader_num_workers", "0", "--loss_top_k", "8",
    ]) == 0  # fmt: skip
    trained = parameters(stage2)
    assert not torch.equal(trained["emotion_enhancer.up.weight"], torch.zeros_like(trained["emotion_enhancer.up.weight"]))
    torch.testing.assert_close(trained["audio_projector.linear_1.weight"], after["audio_projector.linear_1.weight"])

    results = tmp_path / "eval"
    assert main([
        "eval", "--model", str(stage2), "--data-dir", str(root), "--output", str(results), "--limit", "4",
        "--num-frames", str(NUM_FRAMES[family]), "--device", "cpu", "--no-progress", "--batch-size", "2",
    ]) == 0  # fmt: skip
    scores = json.loads((results / "results.json").read_text())["models"][0]["configs"]
    assert set(scores) == {"audio_only", "visual_only", "audio_visual"}
    assert all(0.0 <= scores[name]["accuracy"] <= 1.0 for name in scores)

    exported = tmp_path / "exported"
    assert main(["push", "--model", str(stage2), "--repo-id", f"me/vaemotion-{family}", "--dry-run", str(exported)]) == 0
    assert (exported / "backbones.py").exists()
    script = tmp_path / "fresh_process.py"
    script.write_text(FRESH_PROCESS)
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(tmp_path), "HF_HOME": str(tmp_path / "hf_home"),
           "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "2"}  # fmt: skip
    clip = str(root / train[0]["video"])
    completed = subprocess.run(
        [sys.executable, "-I", str(script), str(exported), clip, str(NUM_FRAMES[family])],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert completed.returncode == 0, completed.stderr[-4000:]
    assert "FRESH PROCESS OK" in completed.stdout
