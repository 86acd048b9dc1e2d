# Copyright 2026 The VAEmotion Authors. Licensed under the Apache License, Version 2.0.
"""Sharing VAEmotion models on the Hugging Face Hub, and the `vaemotion push` command.

A pushed repository loads where `vaemotion` is not installed: it carries the configuration, modeling, processing,
media and pipeline files as remote code, with `auto_map` entries for `AutoConfig`, `AutoModel`,
`AutoModelForImageTextToText` and `AutoProcessor`, and `custom_pipelines` for the `audio-visual-emotion` task:

```python
from transformers import pipeline

classifier = pipeline(model="me/vaemotion", trust_remote_code=True)
classifier("clip.mp4")
```

A PEFT adapter folder (one with `adapter_config.json`) is pushed as an adapter repository whose base model is a
pushed VAEmotion model: `model.load_adapter("me/vaemotion-lora")` on that base, or `from_pretrained` of the adapter
repository directly.

Benchmark results (`--eval-results`) go into the model card's `model-index`. Accepted JSON shapes (see
[`read_eval_results`]): a mapping `{config: {metric: value}}` such as
`vaemotion eval`'s `results.json` (`{"models": [{"model": name, "model_type": ..., "configs": {config: {metric:
value}}}, ...]}`, our model and baselines: the VAEmotion entry is taken unless `--eval-model` names another), a plain
mapping `{config: {metric: value}}` such as `{"audio_only": {"accuracy": 0.61, "mean_ccc": 0.42}, ...}`, the same
under a `"results"` key (next to optional `"split"` / `"dataset"` keys), or a list of rows
`{"config": ..., "<metric>": value, ...}` / `{"config": ..., "metric": ..., "value": ...}` (with a `"model"` field
when several models are listed). Nested metric groups (`{"emotion": {"accuracy": ...}}`) become `emotion/accuracy`;
counts, chance levels, `None` and NaN values are left out.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import tempfile
from collections.abc import Iterable, Sequence
from contextlib import contextmanager
from pathlib import Path

from huggingface_hub import EvalResult, HfApi, ModelCard, ModelCardData
from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import validate_repo_id
from transformers.dynamic_module_utils import custom_object_save

from .media import VAEmotionInputError
from .pipeline_vaemotion import TASK, AudioVisualEmotionPipeline


PIPELINE_TAG = "any-to-any"  # a task the Hub indexes; the custom task goes in the tags
BASE_TAGS = ["vaemotion", "audio-visual", "emotion-recognition", TASK, "multimodal", "custom_code"]
ADAPTER_TAGS = ["peft", "lora"]
# Extra auto classes next to the one `register_for_auto_class` keeps per class (it stores a single one).
EXTRA_MODEL_AUTO_CLASSES = ("AutoModelForImageTextToText",)
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
# Weights of an earlier push that would shadow or contradict the uploaded ones (e.g. a shard index).
STALE_WEIGHT_PATTERNS = ["*.safetensors", "*.safetensors.index.json", "*.bin", "*.bin.index.json"]
DEFAULT_EVAL_DATASET = "artemo-benchmark"
DEFAULT_EVAL_SPLIT = "test"
CONFIG_KEYS = ("config", "modality", "path")
# Numbers in a results file that describe the run or a reference point rather than the model's score.
SKIPPED_KEYS = frozenset({"n", "count", "counts", "support", "samples", "seed", "chance", "supported"})


# ---------------------------------------------------------------------------------------------------- saving
def save_for_hub(model, processor, save_directory: str | os.PathLike) -> list[str]:
    """Save `model` and `processor` into a folder that loads with `trust_remote_code=True` without `vaemotion`.

    Besides the weights (safetensors) and processor files, the folder gets the flat code files, `auto_map` entries
    for `AutoConfig`, `AutoModel`, `AutoModelForImageTextToText` and `AutoProcessor`, and `custom_pipelines` for the
    `audio-visual-emotion` task. Neither the model, its config nor the classes keep any of this afterwards.

    Returns the sorted file names written.

    Example:

    ```python
    >>> import tempfile
    >>> from vaemotion import VAEmotionForConditionalGeneration
    >>> from vaemotion.hub import save_for_hub
    >>> from vaemotion.tiny import build_tiny_processor, tiny_vaemotion_config

    >>> processor = build_tiny_processor(window_seconds=2)
    >>> model = VAEmotionForConditionalGeneration(tiny_vaemotion_config(processor.tokenizer, window_seconds=2))
    >>> files = save_for_hub(model, processor, tempfile.mkdtemp())
    >>> "model.safetensors" in files, "pipeline_vaemotion.py" in files, len([n for n in files if n.endswith(".py")])
    (True, True, 7)
    ```
    """
    if getattr(model, "_hf_peft_config_loaded", False) or hasattr(model, "peft_config"):
        raise ValueError(
            "the model carries PEFT adapters, and save_pretrained would write the adapter only: merge them "
            "(merge_and_unload) or push the adapter folder on its own"
        )
    os.makedirs(save_directory, exist_ok=True)
    with _exported_as_remote_code(model, processor):
        model.save_pretrained(save_directory)
        processor.save_pretrained(save_directory)
        custom_object_save(AudioVisualEmotionPipeline, save_directory)  # the pipeline file and what it imports
    return sorted(os.listdir(save_directory))


@contextmanager
def _exported_as_remote_code(model, processor):
    """Register the classes for their auto classes and set the config's hub fields, only while saving."""
    config = model.config
    classes = {type(config): "AutoConfig", type(model): "AutoModel", type(processor): "AutoProcessor"}
    previous_classes = {cls: cls.__dict__.get("_auto_class") for cls in classes}
    previous_fields = {name: getattr(config, name, None) for name in ("auto_map", "custom_pipelines")}
    model_class = f"{type(model).__module__.rsplit('.', 1)[-1]}.{type(model).__name__}"
    try:
        for cls, auto_class in classes.items():
            cls.register_for_auto_class(auto_class)
        # save_pretrained merges AutoConfig and AutoModel into this map.
        config.auto_map = {auto_class: model_class for auto_class in EXTRA_MODEL_AUTO_CLASSES}
        config.custom_pipelines = _custom_pipelines()
        yield
    finally:
        for cls, auto_class in previous_classes.items():
            if auto_class is not None:
                cls._auto_class = auto_class
            elif "_auto_class" in cls.__dict__:
                delattr(cls, "_auto_class")  # back to the inherited None
        for name, value in previous_fields.items():
            if value is not None:
                setattr(config, name, value)
            elif name in config.__dict__:
                delattr(config, name)


def _custom_pipelines() -> dict:
    """`config.custom_pipelines` as `Pipeline.save_pretrained` writes it: classes become names."""
    entry = dict(AudioVisualEmotionPipeline._registered_impl[TASK])
    module = AudioVisualEmotionPipeline.__module__.rsplit(".", 1)[-1]
    entry["impl"] = f"{module}.{AudioVisualEmotionPipeline.__name__}"
    entry["pt"] = [model_class.__name__ for model_class in entry["pt"]]
    return {TASK: entry}


def save_adapter_for_hub(adapter_directory, save_directory, base_model: str | None = None) -> list[str]:
    """Copy a PEFT adapter folder for upload, pointing its `base_model_name_or_path` at a Hub id.

    The adapter's own base path is often a local training folder, which nobody else can load: it must then be
    replaced by `base_model`, the id of the pushed base model.
    """
    adapter_directory = Path(adapter_directory)
    missing = [name for name in ADAPTER_FILES if not (adapter_directory / name).is_file()]
    if missing:
        raise VAEmotionInputError(
            f"{adapter_directory}: a PEFT adapter folder needs {' and '.join(ADAPTER_FILES)}, missing {missing}"
            " (adapters saved as .bin must be re-saved with safetensors)"
        )
    adapter_config = json.loads((adapter_directory / "adapter_config.json").read_text(encoding="utf-8"))
    base = base_model or adapter_config.get("base_model_name_or_path")
    if not _is_hub_id(base):
        raise VAEmotionInputError(
            f"{adapter_directory}: the adapter's base model is {base!r}, not a Hub id; pass --base-model with the "
            "repository of the pushed base model"
        )
    adapter_config["base_model_name_or_path"] = base
    os.makedirs(save_directory, exist_ok=True)
    (Path(save_directory) / "adapter_config.json").write_text(json.dumps(adapter_config, indent=2), encoding="utf-8")
    shutil.copyfile(
        adapter_directory / "adapter_model.safetensors", Path(save_directory) / "adapter_model.safetensors"
    )
    return sorted(os.listdir(save_directory))


def _is_hub_id(name) -> bool:
    if not name or os.path.isabs(name) or os.path.exists(name):
        return False
    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return True


# ---------------------------------------------------------------------------------------------------- model card
def base_models_from_config(config) -> list[str]:
    """Hub ids of the VLM and the audio encoder the model was built from, when the config still knows them."""
    names = [getattr(sub_config, "_name_or_path", None) for sub_config in (config.vlm_config, config.audio_config)]
    return [name for name in dict.fromkeys(names) if _is_hub_id(name)]


def build_model_card(
    repo_id: str,
    *,
    emotion_labels: Sequence[str] = (),
    base_models: Sequence[str] = (),
    datasets: Sequence[str] = (),
    license: str = "apache-2.0",
    eval_results: list[EvalResult] | None = None,
    adapter: bool = False,
) -> ModelCard:
    """The model card: Hub metadata (`ModelCardData`) and a short usage guide.

    Example:

    ```python
    >>> card = build_model_card("me/vaemotion", base_models=["Qwen/Qwen2.5-VL-7B-Instruct"], datasets=["me/artemo"])
    >>> card.data.pipeline_tag, "custom_code" in card.data.tags, card.data.base_model
    ('any-to-any', True, ['Qwen/Qwen2.5-VL-7B-Instruct'])
    ```
    """
    name = repo_id.split("/")[-1]
    data = ModelCardData(
        model_name=name,
        license=license,
        library_name="peft" if adapter else "transformers",
        pipeline_tag=PIPELINE_TAG,
        tags=BASE_TAGS + (ADAPTER_TAGS if adapter else []),
        base_model=list(base_models) or None,
        datasets=list(datasets) or None,
        eval_results=eval_results or None,
    )
    body = [
        f"# {name}",
        "",
        _DESCRIPTION,
        "",
        "## Usage",
        "",
        "```python",
        *_usage(repo_id, base_models, adapter),
        "```",
    ]
    if emotion_labels:
        body += ["", f"Emotion labels: {', '.join(emotion_labels)}."]
    if eval_results:
        body += ["", "## Evaluation", "", *_results_table(eval_results)]
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(body) + "\n")


_DESCRIPTION = (
    "A VAEmotion model: a vision-language model that learned to hear by seeing (VG-Align) and to recognise emotion "
    "from sight and sound (EmoAdapter). It takes a video with its soundtrack, an image, audio, or an image with "
    "audio, and returns an emotion category with probabilities, valence and arousal, and optionally a description."
)


def _usage(repo_id: str, base_models: Sequence[str], adapter: bool) -> list[str]:
    if adapter:
        base = base_models[0] if base_models else "BASE_MODEL_ID"
        return [
            "from transformers import pipeline",
            "",
            f'classifier = pipeline(model="{base}", trust_remote_code=True)',
            f'classifier.model.load_adapter("{repo_id}")',
            'print(classifier("clip.mp4"))',
        ]
    return [
        "from transformers import pipeline",
        "",
        f'classifier = pipeline(model="{repo_id}", trust_remote_code=True)',
        'print(classifier("clip.mp4"))  # a video with sound; also audio, images, or {"image": ..., "audio": ...}',
        'print(classifier("clip.mp4", modality="audio_only", describe=True, max_new_tokens=64))',
    ]


def _results_table(eval_results: list[EvalResult]) -> list[str]:
    rows = ["| config | metric | value |", "|---|---|---|"]
    rows += [f"| {r.dataset_config} | {r.metric_name} | {r.metric_value:.4g} |" for r in eval_results]
    return rows


# ---------------------------------------------------------------------------------------------------- eval results
def read_eval_results(path: str | os.PathLike, model: str | None = None) -> tuple[dict[str, dict[str, float]], dict]:
    """Read a `vaemotion eval` results file as `({config: {metric: value}}, {"split"?, "dataset"?})`.

    The accepted shapes are listed in the module docstring. Only finite numbers are kept (a NaN, e.g. an undefined
    correlation, is no result to publish; `None` marks a metric no item qualified for); counts and chance levels are
    dropped. `model` picks one model's results when the file holds several; by default the only one, or the only
    VAEmotion model among baselines.

    Example:

    ```python
    >>> import json, tempfile
    >>> path = tempfile.mktemp(suffix=".json")
    >>> rows = [{"config": "audio_only", "metric": "accuracy", "value": 0.5}, {"config": "audio_only", "n": 10}]
    >>> _ = open(path, "w").write(json.dumps({"results": rows, "split": "validation"}))
    >>> read_eval_results(path)
    ({'audio_only': {'accuracy': 0.5}}, {'split': 'validation'})
    ```
    """
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise VAEmotionInputError(f"{path}: cannot read the eval results ({error})") from error
    meta = {
        key: data[key] for key in ("split", "dataset") if isinstance(data, dict) and isinstance(data.get(key), str)
    }
    table = _configs_table(data, model, path)
    results = {}
    for config, metrics in table.items():
        flat = dict(_numeric_leaves(metrics)) if isinstance(metrics, dict) else {}
        if flat:
            results[str(config)] = flat
    if not results:
        raise VAEmotionInputError(f"{path}: no numeric results found (expected {{config: {{metric: value}}}})")
    return results, meta


def _configs_table(data, model: str | None, path) -> dict:
    """Unwrap `data` down to one model's `{config: metrics}`."""
    if isinstance(data, dict):
        if "models" in data:  # the harness: {"models": [{"model", "model_type", "configs": {...}}, ...]}
            return _configs_table(_pick_model(data["models"], model, path), None, path)
        for key in ("configs", "results", "scores", "metrics"):
            if isinstance(data.get(key), (dict, list)):
                return _configs_table(data[key], model, path)
        return data
    if isinstance(data, list):
        return _rows_to_mapping(data, model, path)
    raise VAEmotionInputError(f"{path}: expected a mapping of configs to metrics or a list of rows")


def _pick_model(models, model: str | None, path) -> dict:
    """One entry of `{name: results}` or `[{"model": name, ...}, ...]`."""
    if isinstance(models, list):
        models = {
            str(entry.get("model", index)): entry for index, entry in enumerate(models) if isinstance(entry, dict)
        }
    if not isinstance(models, dict):
        raise VAEmotionInputError(f"{path}: 'models' must be a list or a mapping of results")
    if model is None:
        ours = [
            name
            for name, entry in models.items()
            if isinstance(entry, dict) and entry.get("model_type") == "vaemotion"
        ]
        candidates = list(models) if len(models) == 1 else ours
        if len(candidates) == 1:
            return models[candidates[0]]
    if model not in models:
        raise VAEmotionInputError(f"{path}: holds results for {sorted(models)}; choose one with --eval-model")
    return models[model]


def _rows_to_mapping(rows: list, model: str | None, path) -> dict:
    rows = [row for row in rows if isinstance(row, dict)]
    models = sorted({str(row.get("model")) for row in rows if row.get("model") is not None})
    if len(models) > 1 or model is not None:
        if model not in models:
            raise VAEmotionInputError(f"{path}: holds results for {models}; choose one with --eval-model")
        rows = [row for row in rows if str(row.get("model")) == model]
    mapping: dict[str, dict] = {}
    for row in rows:
        config = next((row[key] for key in CONFIG_KEYS if key in row), None)
        if config is None:
            continue
        metrics = mapping.setdefault(str(config), {})
        if "metric" in row and "value" in row:
            metrics[str(row["metric"])] = row["value"]
        else:
            metrics.update({key: value for key, value in row.items() if key not in (*CONFIG_KEYS, "model")})
    return mapping


def _numeric_leaves(metrics: dict, prefix: str = "") -> Iterable[tuple[str, float]]:
    for key, value in metrics.items():
        key = str(key)
        if key in SKIPPED_KEYS or key.startswith("num_"):
            continue
        if isinstance(value, dict):
            yield from _numeric_leaves(value, f"{prefix}{key}/")
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            yield f"{prefix}{key}", float(value)


def eval_results_for_card(
    results: dict[str, dict[str, float]], dataset: str = DEFAULT_EVAL_DATASET, split: str = DEFAULT_EVAL_SPLIT
) -> list[EvalResult]:
    """One `EvalResult` per config and metric; `metric_type` is the metric's own name (`emotion/f1` -> `f1`)."""
    return [
        EvalResult(
            task_type=PIPELINE_TAG,
            task_name="Audio-visual emotion recognition",
            dataset_type=dataset,
            dataset_name="ArtEmoBenchmark",
            dataset_config=config,
            dataset_split=split,
            metric_type=metric.rsplit("/", 1)[-1],
            metric_name=metric,
            metric_value=value,
        )
        for config, metrics in results.items()
        for metric, value in metrics.items()
    ]


# ---------------------------------------------------------------------------------------------------- export + upload
def export_for_hub(
    model_directory: str | os.PathLike,
    save_directory: str | os.PathLike,
    repo_id: str,
    *,
    processor_directory: str | os.PathLike | None = None,
    base_models: Sequence[str] = (),
    datasets: Sequence[str] = (),
    license: str = "apache-2.0",
    eval_results_path: str | os.PathLike | None = None,
    eval_model: str | None = None,
) -> list[str]:
    """Write exactly the folder `push` uploads: model (or PEFT adapter), processor, code and `README.md`.

    `model_directory` is a saved VAEmotion model, or a PEFT adapter folder (detected by its `adapter_config.json`).
    Only the files that belong in a model repository are written: no optimizer states or training logs.
    """
    model_directory = Path(model_directory)
    validate_repo_id(repo_id)
    eval_results = None
    if eval_results_path is not None:
        results, meta = read_eval_results(eval_results_path, eval_model)
        dataset = meta.get("dataset") or (datasets[0] if datasets else DEFAULT_EVAL_DATASET)
        eval_results = eval_results_for_card(results, dataset, meta.get("split", DEFAULT_EVAL_SPLIT))
    card_kwargs = {"datasets": datasets, "license": license, "eval_results": eval_results}
    if (model_directory / "adapter_config.json").is_file():
        save_adapter_for_hub(model_directory, save_directory, base_models[0] if base_models else None)
        adapter_config = json.loads((Path(save_directory) / "adapter_config.json").read_text(encoding="utf-8"))
        card = build_model_card(
            repo_id, base_models=[adapter_config["base_model_name_or_path"]], adapter=True, **card_kwargs
        )
    else:
        model, processor = _load_model_and_processor(model_directory, processor_directory)
        save_for_hub(model, processor, save_directory)
        bases = list(dict.fromkeys([*base_models, *base_models_from_config(model.config)]))
        card = build_model_card(repo_id, emotion_labels=model.config.emotion_labels, base_models=bases, **card_kwargs)
    card.save(Path(save_directory) / "README.md")
    return sorted(os.listdir(save_directory))


def _load_model_and_processor(model_directory: Path, processor_directory):
    from .modeling_vaemotion import VAEmotionForConditionalGeneration
    from .processing_vaemotion import VAEmotionProcessor

    if not (model_directory / "config.json").is_file():
        raise VAEmotionInputError(
            f"{model_directory}: not a saved VAEmotion model (no config.json) nor a PEFT adapter "
            "(no adapter_config.json)"
        )
    processor_directory = Path(processor_directory or model_directory)
    if not (processor_directory / "processor_config.json").is_file():
        raise VAEmotionInputError(
            f"{processor_directory}: no processor_config.json; save the processor with the model or pass --processor"
        )
    model = VAEmotionForConditionalGeneration.from_pretrained(model_directory)
    return model, VAEmotionProcessor.from_pretrained(processor_directory)


def upload_to_hub(
    folder: str | os.PathLike,
    repo_id: str,
    *,
    private: bool | None = None,
    token: str | None = None,
    commit_message: str = "Upload VAEmotion model",
):
    """Create the repository if needed and upload `folder` in one commit; returns the `CommitInfo`."""
    api = HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
    return api.upload_folder(
        repo_id=repo_id,
        folder_path=folder,
        repo_type="model",
        commit_message=commit_message,
        delete_patterns=STALE_WEIGHT_PATTERNS,
    )


def push_to_hub(model_directory, repo_id: str, *, private: bool | None = None, token: str | None = None,
                commit_message: str = "Upload VAEmotion model", **export_kwargs):  # fmt: skip
    """Export `model_directory` (see [`export_for_hub`]) to a temporary folder and upload it to `repo_id`."""
    with tempfile.TemporaryDirectory(prefix="vaemotion-push-") as folder:
        export_for_hub(model_directory, folder, repo_id, **export_kwargs)
        return upload_to_hub(folder, repo_id, private=private, token=token, commit_message=commit_message)


# ---------------------------------------------------------------------------------------------------- command line
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="a saved VAEmotion model, or a PEFT adapter folder")
    parser.add_argument("--repo-id", required=True, help="the Hub repository, e.g. me/vaemotion-7b")
    parser.add_argument("--processor", default=None, help="the processor folder (default: --model)")
    parser.add_argument("--private", action="store_true", help="create the repository as private")
    parser.add_argument("--dry-run", metavar="OUT", default=None, help="write the folder to OUT and upload nothing")
    parser.add_argument("--eval-results", metavar="PATH", default=None, help="a `vaemotion eval` results JSON")
    parser.add_argument("--eval-model", default=None, help="whose results to take when the file holds several models")
    parser.add_argument(
        "--base-model", action="append", default=[], help="Hub id of a base model (repeatable); required for an "
        "adapter whose base is a local folder",
    )  # fmt: skip
    parser.add_argument("--dataset", action="append", default=[], help="Hub id of a training dataset (repeatable)")
    parser.add_argument("--license", default="apache-2.0", help="license of the weights (default: apache-2.0)")
    parser.add_argument("--commit-message", default="Upload VAEmotion model")
    parser.add_argument("--token", default=None, help="Hub token (default: the saved login or HF_TOKEN)")


def run(args) -> int:
    export_kwargs = {
        "processor_directory": args.processor,
        "base_models": args.base_model,
        "datasets": args.dataset,
        "license": args.license,
        "eval_results_path": args.eval_results,
        "eval_model": args.eval_model,
    }
    try:
        if args.dry_run is not None:
            if os.path.exists(args.dry_run) and os.listdir(args.dry_run):
                raise VAEmotionInputError(f"--dry-run {args.dry_run}: the folder exists and is not empty")
            files = export_for_hub(args.model, args.dry_run, args.repo_id, **export_kwargs)
            print(f"dry run: {len(files)} files for {args.repo_id} written to {args.dry_run}: {', '.join(files)}")
            return 0
        commit = push_to_hub(
            args.model, args.repo_id, private=args.private or None, token=args.token,
            commit_message=args.commit_message, **export_kwargs,
        )  # fmt: skip
    except (VAEmotionInputError, HFValidationError) as error:
        print(f"vaemotion push: {error}", file=sys.stderr)
        return 2
    print(f"pushed {args.repo_id}: {commit.commit_url}")
    return 0


__all__ = [
    "base_models_from_config",
    "build_model_card",
    "eval_results_for_card",
    "export_for_hub",
    "push_to_hub",
    "read_eval_results",
    "save_adapter_for_hub",
    "save_for_hub",
    "upload_to_hub",
]
