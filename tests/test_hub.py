"""Hub sharing: remote-code export, model card, eval results, mocked uploads, and loading by repo id offline in a
fresh process that cannot import `vaemotion`."""

import copy
import hashlib
import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from huggingface_hub import HfApi, ModelCard
from peft import LoraConfig, get_peft_model

from vaemotion import VAEmotionConfig, VAEmotionForConditionalGeneration, VAEmotionInputError, VAEmotionProcessor
from vaemotion.cli import main
from vaemotion.hub import build_model_card, eval_results_for_card, read_eval_results, save_for_hub
from vaemotion.tiny import build_tiny_processor, tiny_vaemotion_config


WINDOW_SECONDS = 2
REPO_ID = "me/vaemotion-tiny"
ADAPTER_REPO_ID = "me/vaemotion-tiny-lora"
LORA_TARGET = r".*vlm\.model\.language_model\.layers\.\d+\.self_attn\.(q|v)_proj"
CODE_FILES = [
    "backbones.py",
    "configuration_vaemotion.py",
    "media.py",
    "modeling_vaemotion.py",
    "pipeline_vaemotion.py",
    "processing_vaemotion.py",
    "transformers_compat.py",
]
EXPORTED_FILES = sorted(
    CODE_FILES
    + [
        "chat_template.jinja",
        "config.json",
        "generation_config.json",
        "model.safetensors",
        "processor_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
    ]
)
# The shape `vaemotion eval` writes (benchmark/harness.py `write_report`): our model and a baseline.
HARNESS_RESULTS = {
    "models": [
        {
            "model": "runs/stage2",
            "model_type": "vaemotion",
            "emotion_source": "emotion_heads",
            "configs": {
                "audio_only": {
                    "supported": True,
                    "accuracy": 0.5,
                    "content_acc": None,
                    "valence_ccc": float("nan"),
                    "category_macro_f1": 0.25,
                    "counts": {"items": 12, "content": 6},
                    "chance": {"content_acc": 0.25, "mean_ccc": 0.0},
                },
                "audio_visual": {"supported": True, "accuracy": 0.75},
            },
        },
        {
            "model": "Qwen/Qwen2.5-VL-3B-Instruct",
            "model_type": "qwen2_5_vl",
            "emotion_source": "label_words",
            "configs": {
                "audio_only": {"supported": False, "reason": "Qwen2_5_VLForConditionalGeneration does not take audio"},
                "visual_only": {"supported": True, "accuracy": 0.6},
            },
        },
    ]
}
NESTED_RESULTS = {"split": "validation", "results": {"audio_only": {"emotion": {"macro_f1": 0.25}, "n": 12}}}


@pytest.fixture(scope="module")
def processor():
    return build_tiny_processor(window_seconds=WINDOW_SECONDS)


@pytest.fixture(scope="module")
def model(processor):
    torch.manual_seed(0)
    config = tiny_vaemotion_config(processor.tokenizer, window_seconds=WINDOW_SECONDS)
    # As `from_vlm_and_audio_pretrained` leaves them: the parts remember where they came from.
    config.vlm_config._name_or_path = "Qwen/Qwen2.5-VL-7B-Instruct"
    config.audio_config._name_or_path = "openai/whisper-large-v3"
    return VAEmotionForConditionalGeneration(config).eval()


@pytest.fixture(scope="module")
def model_dir(model, processor, tmp_path_factory):
    """A training output: model, processor, and files that must not be uploaded."""
    path = tmp_path_factory.mktemp("trained")
    model.save_pretrained(path)
    processor.save_pretrained(path)
    (path / "training_args.bin").write_bytes(b"\0")
    (path / "trainer_state.json").write_text("{}")
    return path


@pytest.fixture(scope="module")
def adapter(model, tmp_path_factory):
    """A tiny LoRA on the LLM's q/v projections with non-zero weights; returns (folder, text-only logits)."""
    peft_model = get_peft_model(copy.deepcopy(model), LoraConfig(r=2, lora_alpha=4, target_modules=LORA_TARGET))
    torch.manual_seed(1)
    with torch.no_grad():
        for name, parameter in peft_model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(std=0.5)  # LoRA starts as the identity: make it change the outputs
    path = tmp_path_factory.mktemp("adapter")
    peft_model.save_pretrained(path)
    with torch.no_grad():
        logits = peft_model(input_ids=torch.arange(3, 23)[None]).logits
    return path, logits


@pytest.fixture
def hub(monkeypatch):
    """Replaces the two HfApi calls a push makes; records what would have been uploaded."""
    record = {"create_repo": [], "uploads": []}

    def create_repo(self, repo_id, **kwargs):
        record["create_repo"].append({"repo_id": repo_id, **kwargs})

    def upload_folder(self, *, repo_id, folder_path, **kwargs):
        files = sorted(str(path.relative_to(folder_path)) for path in Path(folder_path).rglob("*") if path.is_file())
        card = ModelCard.load(Path(folder_path) / "README.md")
        record["uploads"].append({"repo_id": repo_id, "files": files, "card": card, **kwargs})
        return type("CommitInfo", (), {"commit_url": f"https://huggingface.co/{repo_id}/commit/0"})()

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    return record


def test_save_for_hub_writes_remote_code_and_leaves_no_state(model, processor, tmp_path):
    assert save_for_hub(model, processor, tmp_path) == EXPORTED_FILES
    config = json.loads((tmp_path / "config.json").read_text())
    model_class = "modeling_vaemotion.VAEmotionForConditionalGeneration"
    assert config["auto_map"] == {
        "AutoConfig": "configuration_vaemotion.VAEmotionConfig",
        "AutoModel": model_class,
        "AutoModelForImageTextToText": model_class,
    }
    assert config["custom_pipelines"] == {
        "audio-visual-emotion": {
            "impl": "pipeline_vaemotion.AudioVisualEmotionPipeline",
            "pt": ["AutoModelForImageTextToText"],
            "type": "multimodal",
        }
    }
    processor_config = json.loads((tmp_path / "processor_config.json").read_text())
    assert processor_config["auto_map"] == {"AutoProcessor": "processing_vaemotion.VAEmotionProcessor"}
    for code_file in CODE_FILES:  # flat: relative imports only (docstring examples may name the package)
        assert not re.search(r"^\s*(from|import) vaemotion\b", (tmp_path / code_file).read_text(), re.MULTILINE)
    # Nothing sticks: a later plain save_pretrained writes no code and no hub fields.
    for cls in (VAEmotionConfig, VAEmotionForConditionalGeneration, VAEmotionProcessor):
        assert cls._auto_class is None
    assert getattr(model.config, "auto_map", None) is None and getattr(model.config, "custom_pipelines", None) is None


def test_save_for_hub_refuses_a_model_with_adapters(model, tmp_path, processor):
    peft_model = get_peft_model(copy.deepcopy(model), LoraConfig(r=2, target_modules=LORA_TARGET))
    with pytest.raises(ValueError, match="carries PEFT adapters"):
        save_for_hub(peft_model, processor, tmp_path)


def test_push_uploads_model_processor_code_and_card(model_dir, hub, tmp_path, capsys):
    results = tmp_path / "vaemotion_eval_results.json"
    results.write_text(json.dumps(HARNESS_RESULTS))
    argv = ["push", "--model", str(model_dir), "--repo-id", REPO_ID, "--private", "--eval-results", str(results)]
    assert main(argv + ["--dataset", "me/artemo-synth", "--license", "mit"]) == 0
    assert f"pushed {REPO_ID}" in capsys.readouterr().out
    assert hub["create_repo"] == [{"repo_id": REPO_ID, "private": True, "exist_ok": True, "repo_type": "model"}]
    (upload,) = hub["uploads"]
    assert upload["repo_id"] == REPO_ID and upload["files"] == sorted(EXPORTED_FILES + ["README.md"])
    assert "*.safetensors" in upload["delete_patterns"]  # weights of an earlier push cannot linger
    data = upload["card"].data
    assert data.license == "mit" and data.library_name == "transformers" and data.pipeline_tag == "any-to-any"
    assert data.base_model == ["Qwen/Qwen2.5-VL-7B-Instruct", "openai/whisper-large-v3"]
    assert data.datasets == ["me/artemo-synth"]
    assert {"audio-visual", "emotion-recognition", "custom_code", "vaemotion", "audio-visual-emotion"} <= set(
        data.tags
    )
    published = {(r.dataset_config, r.metric_name, r.metric_type, r.metric_value) for r in data.eval_results}
    assert published == {  # ours, not the baseline's; no NaN, None, counts or chance levels
        ("audio_only", "accuracy", "accuracy", 0.5),
        ("audio_only", "category_macro_f1", "category_macro_f1", 0.25),
        ("audio_visual", "accuracy", "accuracy", 0.75),
    }
    assert {(r.dataset_type, r.dataset_split) for r in data.eval_results} == {("me/artemo-synth", "test")}
    assert 'pipeline(model="me/vaemotion-tiny", trust_remote_code=True)' in upload["card"].text


def test_dry_run_writes_exactly_the_upload_and_uploads_nothing(model_dir, hub, tmp_path):
    out = tmp_path / "out"
    assert main(["push", "--model", str(model_dir), "--repo-id", REPO_ID, "--dry-run", str(out)]) == 0
    assert hub == {"create_repo": [], "uploads": []}
    assert sorted(os.listdir(out)) == sorted(EXPORTED_FILES + ["README.md"])
    assert main(["push", "--model", str(model_dir), "--repo-id", REPO_ID]) == 0
    assert hub["uploads"][0]["files"] == sorted(os.listdir(out))
    assert ModelCard.load(out / "README.md").data.eval_results is None


def test_push_errors_are_clear(model_dir, adapter, hub, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["push", "--model", str(empty), "--repo-id", REPO_ID]) == 2
    assert "not a saved VAEmotion model (no config.json) nor a PEFT adapter" in capsys.readouterr().err
    adapter_dir, _ = adapter
    assert main(["push", "--model", str(adapter_dir), "--repo-id", ADAPTER_REPO_ID]) == 2
    assert "not a Hub id; pass --base-model" in capsys.readouterr().err
    assert main(["push", "--model", str(model_dir), "--repo-id", "not a repo id"]) == 2
    assert hub["uploads"] == []


def test_adapter_push(adapter, hub):
    adapter_dir, _ = adapter
    argv = ["push", "--model", str(adapter_dir), "--repo-id", ADAPTER_REPO_ID, "--base-model", REPO_ID]
    assert main(argv) == 0
    (upload,) = hub["uploads"]
    assert upload["files"] == ["README.md", "adapter_config.json", "adapter_model.safetensors"]
    data = upload["card"].data
    assert data.library_name == "peft" and data.base_model == [REPO_ID] and {"peft", "lora"} <= set(data.tags)
    assert f'classifier.model.load_adapter("{ADAPTER_REPO_ID}")' in upload["card"].text


@pytest.mark.parametrize(
    "content, expected, meta",
    [
        ({"audio_only": {"accuracy": 0.5}}, {"audio_only": {"accuracy": 0.5}}, {}),
        (HARNESS_RESULTS, {"audio_only": {"accuracy": 0.5, "category_macro_f1": 0.25},
                           "audio_visual": {"accuracy": 0.75}}, {}),
        (NESTED_RESULTS, {"audio_only": {"emotion/macro_f1": 0.25}}, {"split": "validation"}),
        ([{"config": "visual_only", "accuracy": 0.4, "ccc": 0.1, "num_items": 9}],
         {"visual_only": {"accuracy": 0.4, "ccc": 0.1}}, {}),
        ({"results": [{"modality": "audio_only", "metric": "f1", "value": 0.3}], "dataset": "me/artemo"},
         {"audio_only": {"f1": 0.3}}, {"dataset": "me/artemo"}),
        ({"models": {"vaemotion": {"audio_only": {"accuracy": 0.9}}}}, {"audio_only": {"accuracy": 0.9}}, {}),
        ({"audio_only": {"accuracy": True, "label": "x", "rmse": 0.2}, "x": "y"}, {"audio_only": {"rmse": 0.2}}, {}),
    ],
)  # fmt: skip
def test_read_eval_results_accepts_the_documented_shapes(tmp_path, content, expected, meta):
    path = tmp_path / "results.json"
    path.write_text(json.dumps(content))
    assert read_eval_results(path) == (expected, meta)


def test_read_eval_results_picks_one_of_several_models(tmp_path):
    path = tmp_path / "results.json"
    path.write_text(json.dumps(HARNESS_RESULTS))
    baseline = read_eval_results(path, model="Qwen/Qwen2.5-VL-3B-Instruct")[0]
    assert baseline == {"visual_only": {"accuracy": 0.6}}
    two_of_ours = {"models": [{**entry, "model_type": "vaemotion"} for entry in HARNESS_RESULTS["models"]]}
    path.write_text(json.dumps(two_of_ours))
    with pytest.raises(
        VAEmotionInputError, match=r"holds results for \['Qwen/Qwen2.5-VL-3B-Instruct', 'runs/stage2'\]"
    ):
        read_eval_results(path)
    rows = [
        {"model": "vaemotion", "config": "audio_only", "accuracy": 0.7},
        {"model": "qwen2.5-omni", "config": "audio_only", "accuracy": 0.6},
    ]
    path.write_text(json.dumps(rows))
    assert read_eval_results(path, model="qwen2.5-omni")[0] == {"audio_only": {"accuracy": 0.6}}
    with pytest.raises(VAEmotionInputError, match=r"holds results for \['qwen2.5-omni', 'vaemotion'\]"):
        read_eval_results(path)
    path.write_text(json.dumps({"models": {"a": {}, "b": {}}}))
    with pytest.raises(VAEmotionInputError, match="choose one with --eval-model"):
        read_eval_results(path)
    for bad in ("{not json", json.dumps({"audio_only": {"accuracy": "high"}}), json.dumps([1, 2])):
        path.write_text(bad)
        with pytest.raises(VAEmotionInputError, match=str(path)):
            read_eval_results(path)


def test_model_card_metadata_round_trips(tmp_path):
    results = eval_results_for_card({"audio_visual": {"accuracy": 0.8}}, dataset="me/artemo", split="validation")
    card = build_model_card("me/x", base_models=["openai/whisper-small"], datasets=["me/artemo"], eval_results=results)
    card.save(tmp_path / "README.md")
    data = ModelCard.load(tmp_path / "README.md").data
    (result,) = data.eval_results
    assert (result.dataset_type, result.dataset_config, result.dataset_split) == (
        "me/artemo",
        "audio_visual",
        "validation",
    )
    assert data.model_name == "x" and data.base_model == ["openai/whisper-small"]


# ---------------------------------------------------------------------------------------------------- fresh process
FRESH_PROCESS = textwrap.dedent(
    """
    import importlib.util, sys

    if sys.argv[3] != "installed":  # another transformers release, installed with --no-deps --target
        sys.path.insert(0, sys.argv[3])
    # The editable install's finder would import vaemotion from the working tree: drop it, then prove it is gone.
    sys.meta_path[:] = [f for f in sys.meta_path if not getattr(f, "__module__", "").startswith("__editable__")]
    sys.path[:] = [entry for entry in sys.path if "__editable__" not in entry]
    assert importlib.util.find_spec("vaemotion") is None, "vaemotion is importable"
    try:
        import vaemotion  # noqa: F401
    except ModuleNotFoundError:
        pass
    else:
        raise AssertionError("vaemotion imported")

    import torch
    import transformers
    from transformers import AutoModel, AutoModelForImageTextToText, pipeline

    assert sys.argv[3] == "installed" or transformers.__file__.startswith(sys.argv[3]), transformers.__file__
    clip, expected_logits_path = sys.argv[1], sys.argv[2]
    classifier = pipeline(model="{repo_id}", trust_remote_code=True)
    assert type(classifier).__module__.startswith("transformers_modules."), type(classifier).__module__
    assert type(classifier).__name__ == "AudioVisualEmotionPipeline"
    result = classifier(clip, num_frames=4)
    assert set(result) == {{"emotion", "score", "scores", "valence", "arousal"}}, result
    batch = classifier([clip, {{"video": clip, "text": "what is the mood ?"}}], batch_size=2, modality="audio_only")
    assert len(batch) == 2
    auto_model = AutoModel.from_pretrained("{repo_id}", trust_remote_code=True)
    assert type(auto_model).__name__ == "VAEmotionForConditionalGeneration"

    expected = torch.load(expected_logits_path)
    ids = torch.arange(3, 23)[None]
    classifier.model.load_adapter("{adapter_repo_id}")  # as the adapter's model card shows
    with torch.no_grad():
        torch.testing.assert_close(classifier.model(input_ids=ids).logits, expected)
    assert set(classifier(clip, num_frames=4)) == set(result)
    direct = AutoModelForImageTextToText.from_pretrained("{adapter_repo_id}", trust_remote_code=True)
    with torch.no_grad():
        torch.testing.assert_close(direct(input_ids=ids).logits, expected)
    described = classifier(clip, num_frames=4, describe=True, max_new_tokens=3)
    assert isinstance(described["description"], str), described
    # this release's generate() hands the KV cache back under its own name: decoding with it equals decoding without
    greedy = dict(max_new_tokens=6, do_sample=False)
    with torch.no_grad():
        cached = auto_model.generate(input_ids=ids, **greedy)
        torch.testing.assert_close(cached, auto_model.generate(input_ids=ids, use_cache=False, **greedy))
    assert not any(name.split(".")[0] == "vaemotion" for name in sys.modules)
    print("FRESH PROCESS OK", transformers.__version__)
    """
).format(repo_id=REPO_ID, adapter_repo_id=ADAPTER_REPO_ID)


def seed_hub_cache(hf_home: Path, repo_id: str, folder: Path) -> None:
    """Lay `folder` out as the Hub cache holds a downloaded snapshot of `repo_id`."""
    repo = hf_home / "hub" / f"models--{repo_id.replace('/', '--')}"
    commit = hashlib.sha1(repo_id.encode()).hexdigest()  # any 40-hex revision
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for path in folder.iterdir():
        (snapshot / path.name).write_bytes(path.read_bytes())
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)


def transformers_releases() -> list[str]:
    """The installed transformers, then every other release that scripts/fetch_transformers_releases.sh installed
    (CI: two older minors), each a folder to put first on the fresh process's path."""
    root = Path(os.environ.get("VAEMOTION_TRANSFORMERS_RELEASES", "~/.cache/vaemotion/transformers-releases"))
    folders = [path.parent for path in root.expanduser().glob("*/transformers")]
    releases = [folder for folder in folders if re.fullmatch(r"\d+(\.\d+)+", folder.name)]  # not a .partial one
    releases.sort(key=lambda folder: [int(part) for part in folder.name.split(".")])
    return ["installed", *(str(folder) for folder in releases)]


@pytest.mark.parametrize("release", transformers_releases(), ids=lambda release: Path(release).name)
def test_load_by_repo_id_offline_without_the_package(model_dir, adapter, av_clip, tmp_path, release):
    """A pushed checkpoint loads and answers as remote code with the package not importable, under the installed
    transformers and under every other release prepared (the remote code's range: 5.20 to 5.25)."""
    adapter_dir, adapter_logits = adapter
    exported, adapter_exported = tmp_path / "exported", tmp_path / "adapter_exported"
    assert main(["push", "--model", str(model_dir), "--repo-id", REPO_ID, "--dry-run", str(exported)]) == 0
    argv = ["push", "--model", str(adapter_dir), "--repo-id", ADAPTER_REPO_ID, "--base-model", REPO_ID]
    assert main(argv + ["--dry-run", str(adapter_exported)]) == 0
    hf_home = tmp_path / "hf_home"
    seed_hub_cache(hf_home, REPO_ID, exported)
    seed_hub_cache(hf_home, ADAPTER_REPO_ID, adapter_exported)
    expected = tmp_path / "expected_logits.pt"
    torch.save(adapter_logits, expected)
    script = tmp_path / "fresh_process.py"
    script.write_text(FRESH_PROCESS)
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": str(tmp_path),
        "HF_HOME": str(hf_home),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "HF_HUB_DISABLE_TELEMETRY": "1",
    }
    # -I: no PYTHONPATH, no user site, and the script's folder (not the repository) first on sys.path.
    completed = subprocess.run(
        [sys.executable, "-I", str(script), av_clip, str(expected), release],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert completed.returncode == 0, completed.stderr[-4000:]
    assert "FRESH PROCESS OK" in completed.stdout
    assert not any((hf_home / "hub").glob("models--*--*/blobs/*"))  # nothing was downloaded
