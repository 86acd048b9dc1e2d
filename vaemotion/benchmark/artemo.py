"""ArtEmoBenchmark as a ``datasets`` builder shipped inside the package.

datasets 5.x rejects loading scripts, so the builder is a class used directly (``load_artemo`` wraps it). It
reads the local layout documented in ``docs/benchmark_layout.md``: ``data_dir/metadata.jsonl`` plus media files
under ``data_dir``. The three configs read the same items and differ only in their media columns:

============  =====================================================================================
config        media columns
============  =====================================================================================
audio_only    ``audio``: the item's ``audio`` file, else its video (decode the video's audio track)
visual_only   ``image`` (when the item has one) or ``video`` (otherwise; ignore its audio track)
audio_visual  ``audio``, ``image`` and ``video`` as above
============  =====================================================================================

Conventions:

- **Media** columns are ``{"bytes": binary, "path": string}`` structs (the storage layout of ``datasets.Image``,
  ``Audio`` and ``Video``), or null when the config's item has no such medium. A freshly built dataset keeps
  ``bytes`` null and ``path`` absolute, which keeps the cache light; decode with our own loaders (PyAV,
  soundfile). ``embed_media`` / ``export_parquet`` / ``push_artemo_to_hub`` fill ``bytes`` and keep only the
  file name in ``path``, as ``datasets`` does when it embeds files, so an export is self-contained. Because the
  layout matches, ``dataset.cast_column("image", datasets.Image())`` works, and ``cast_audio`` gives an
  ``Audio`` column where torchcodec is installed.
- **emotion** is a ``ClassLabel`` over ``ARTEMIS_EMOTIONS``; an item without an emotion label stores
  ``NO_EMOTION`` (-1), the ``datasets`` convention for "no label", which survives Parquet and the Hub.
- **valence** / **arousal** are float32 and null when unlabelled; **content** is null when unlabelled.
- **Caching**: the cache directory is keyed by the absolute ``data_dir`` and by ``hash=artemo_fingerprint(...)``,
  which covers this module's source, the emotion names, ``metadata.jsonl`` and every referenced media file's
  size and modification time, so editing any of them rebuilds on the next load.
- **Validation**: every line is checked before anything is built; all problems are reported together in one
  ``ArtEmoValidationError``.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import datasets

from ..configuration_vaemotion import ARTEMIS_EMOTIONS

__all__ = [
    "CONFIG_NAMES",
    "NO_EMOTION",
    "ArtEmoBenchmark",
    "ArtEmoConfig",
    "ArtEmoItem",
    "ArtEmoValidationError",
    "artemo_fingerprint",
    "cast_audio",
    "embed_media",
    "export_parquet",
    "load_artemo",
    "push_artemo_to_hub",
    "read_metadata",
]

CONFIG_NAMES = ("audio_only", "visual_only", "audio_visual")
NO_EMOTION = -1
METADATA_FILE = "metadata.jsonl"
SPLITS = ("train", "validation", "test")
TASKS = ("content", "emotion")
MEDIA_FIELDS = ("video", "image", "audio")
REQUIRED_FIELDS = ("id", "clip_id", "split", "task", "question", "options", "answer")
OPTIONAL_FIELDS = ("video", "image", "audio", "valence", "arousal", "emotion", "content")
MAX_PROBLEMS_SHOWN = 20
# rows per batch (and per Parquet row group) once media bytes are embedded: bounds the memory videos take
MEDIA_ROWS_PER_BATCH = 16


class ArtEmoValidationError(ValueError):
    """``metadata.jsonl`` (or its media) breaks the documented layout.

    ``problems`` lists every problem found, each naming the line, the item id, the field and what is wrong.
    """

    def __init__(self, metadata_path: str | os.PathLike, problems: list[str]):
        self.metadata_path = str(metadata_path)
        self.problems = list(problems)
        shown = "\n".join(f"  - {problem}" for problem in self.problems[:MAX_PROBLEMS_SHOWN])
        hidden = len(self.problems) - MAX_PROBLEMS_SHOWN
        more = f"\n  ... and {hidden} more" if hidden > 0 else ""
        super().__init__(f"{len(self.problems)} problem(s) in {self.metadata_path}:\n{shown}{more}")


@dataclass(frozen=True)
class ArtEmoItem:
    """One validated line of ``metadata.jsonl``; media paths stay relative to ``data_dir``."""

    line: int
    id: str
    clip_id: str
    split: str
    task: str
    question: str
    options: tuple[str, ...]
    answer: int
    valence: float | None = None
    arousal: float | None = None
    emotion: str | None = None
    content: str | None = None
    video: str | None = None
    image: str | None = None
    audio: str | None = None

    @property
    def media_paths(self) -> list[str]:
        return [path for path in (self.video, self.image, self.audio) if path is not None]

    @property
    def sound_path(self) -> str | None:
        """The file holding the clip's sound: the separate audio file, else the video's own track."""
        return self.audio or self.video

    @property
    def frames_path(self) -> str | None:
        """The video whose frames are shown; ``None`` when a still image replaces them."""
        return self.video if self.image is None else None


# ---------------------------------------------------------------------------------------------- validation


def _show(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _text_problem(value) -> str | None:
    if isinstance(value, str) and value.strip():
        return None
    return f"must be a non-empty string, got {_show(value)}"


def _choice_problem(choices: tuple[str, ...]) -> Callable[[object], str | None]:
    def problem(value) -> str | None:
        return None if value in choices else f"{_show(value)} is not one of {list(choices)}"

    return problem


def _options_problem(value) -> str | None:
    if not isinstance(value, list) or len(value) < 2:
        return f"must be a list of at least 2 strings, got {_show(value)}"
    if not all(isinstance(option, str) and option.strip() for option in value):
        return f"every option must be a non-empty string, got {_show(value)}"
    return None


def _score_problem(value) -> str | None:
    if value is None:
        return None
    if not _is_number(value) or not math.isfinite(value):
        return f"must be a number in [-1, 1] or null, got {_show(value)}"
    return None if -1.0 <= value <= 1.0 else f"{value} is outside [-1, 1]"


def _optional(check: Callable[[object], str | None]) -> Callable[[object], str | None]:
    return lambda value: None if value is None else check(value)


_VALUE_CHECKS = {
    "id": _text_problem,
    "clip_id": _text_problem,
    "split": _choice_problem(SPLITS),
    "task": _choice_problem(TASKS),
    "question": _text_problem,
    "options": _options_problem,
    "valence": _score_problem,
    "arousal": _score_problem,
    "emotion": _optional(_choice_problem(tuple(ARTEMIS_EMOTIONS))),
    "content": _optional(_text_problem),
}


def _answer_problem(record: dict) -> str | None:
    answer = record["answer"]
    if not isinstance(answer, int) or isinstance(answer, bool):
        return f"must be an integer option index, got {_show(answer)}"
    options = record.get("options")
    if _options_problem(options) is None and not 0 <= answer < len(options):
        return f"{answer} is outside the {len(options)} options (valid: 0..{len(options) - 1})"
    return None


def _media_problem(value, root: Path) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        return f"must be a relative path or null, got {_show(value)}"
    if os.path.isabs(value):
        return f"{value!r} is absolute; media paths must be relative to data_dir"
    target = (root / value).resolve()
    if not target.is_relative_to(root.resolve()):
        return f"{value!r} escapes data_dir ({root})"
    if not target.is_file():
        return f"media file {value!r} does not exist under {root}"
    return None


def _record_problems(record: dict, root: Path) -> list[str]:
    """Problems of one parsed line as ``"field 'x': ..."`` strings (empty when the line is valid)."""
    problems = [f"field {name!r}: missing (required)" for name in REQUIRED_FIELDS if name not in record]
    allowed = REQUIRED_FIELDS + OPTIONAL_FIELDS
    problems += [
        f"field {name!r}: unknown field (allowed: {', '.join(allowed)})" for name in record if name not in allowed
    ]
    for name, check in _VALUE_CHECKS.items():
        if name in record and (problem := check(record[name])) is not None:
            problems.append(f"field {name!r}: {problem}")
    if "answer" in record and (problem := _answer_problem(record)) is not None:
        problems.append(f"field 'answer': {problem}")
    for name in MEDIA_FIELDS:
        if (problem := _media_problem(record.get(name), root)) is not None:
            problems.append(f"field {name!r}: {problem}")
    if not record.get("video") and not (record.get("image") and record.get("audio")):
        problems.append("media: an item needs either 'video' or both 'image' and 'audio'")
    return problems


def _item_from_record(line: int, record: dict) -> ArtEmoItem:
    values = {name: record.get(name) for name in REQUIRED_FIELDS + OPTIONAL_FIELDS}
    values["options"] = tuple(values["options"])
    for name in ("valence", "arousal"):
        values[name] = None if values[name] is None else float(values[name])
    return ArtEmoItem(line=line, **values)


def _metadata_path(data_dir: str | os.PathLike) -> Path:
    if data_dir is None:
        raise ValueError("ArtEmoBenchmark needs data_dir: the folder holding metadata.jsonl and the media")
    path = Path(data_dir) / METADATA_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no {METADATA_FILE} in {data_dir} (see docs/benchmark_layout.md)")
    return path


def read_metadata(data_dir: str | os.PathLike) -> list[ArtEmoItem]:
    """Parse and validate ``data_dir/metadata.jsonl``; raise ``ArtEmoValidationError`` listing every problem.

    Blank lines are skipped. Each problem reads ``line N (id 'x'): field 'f': what is wrong``.

    >>> import json, pathlib, tempfile
    >>> root = pathlib.Path(tempfile.mkdtemp()); (root / "clip.mp4").write_bytes(b"")
    0
    >>> item = {"id": "q1", "clip_id": "c1", "split": "test", "task": "content", "question": "What?",
    ...         "options": ["a", "b"], "answer": 2, "video": "clip.mp4"}
    >>> _ = (root / "metadata.jsonl").write_text(json.dumps(item) + "\\n")
    >>> try:
    ...     read_metadata(root)
    ... except ArtEmoValidationError as error:
    ...     print(error.problems)
    ["line 1 (id 'q1'): field 'answer': 2 is outside the 2 options (valid: 0..1)"]
    """
    metadata_path = _metadata_path(data_dir)
    root = Path(data_dir)
    items, problems, first_line_of_id = [], [], {}
    # split on "\n" only: str.splitlines would also break inside JSON strings holding U+2028 and friends
    try:
        lines = metadata_path.read_text(encoding="utf-8").split("\n")
    except UnicodeDecodeError as error:
        raise ArtEmoValidationError(metadata_path, [f"not UTF-8 text ({error.reason} at byte {error.start})"]) from None
    for number, text in enumerate(lines, start=1):
        if not text.strip():
            continue
        try:
            record = json.loads(text)
        except json.JSONDecodeError as error:
            problems.append(f"line {number}: malformed JSON ({error.msg} at column {error.colno})")
            continue
        if not isinstance(record, dict):
            problems.append(f"line {number}: expected a JSON object, got {_show(record)}")
            continue
        where = f"line {number} (id {record.get('id')!r})"
        line_problems = _record_problems(record, root)
        item_id = record.get("id")
        if isinstance(item_id, str) and item_id in first_line_of_id:
            line_problems.append(f"field 'id': duplicate id, first used on line {first_line_of_id[item_id]}")
        elif isinstance(item_id, str):
            first_line_of_id[item_id] = number
        problems += [f"{where}: {problem}" for problem in line_problems]
        if not line_problems:
            items.append(_item_from_record(number, record))
    if not items and not problems:
        problems.append("no items: the file holds no JSON lines")
    if problems:
        raise ArtEmoValidationError(metadata_path, problems)
    return items


def artemo_fingerprint(data_dir: str | os.PathLike) -> str:
    """Hash of everything a build depends on: this module, the emotion names, metadata.jsonl and the media files.

    Media files enter by (relative path, size, mtime) rather than content, so fingerprinting stays instant on
    gigabytes of video while still noticing a replaced or re-encoded file.
    """
    metadata_path = _metadata_path(data_dir)
    digest = hashlib.sha256(Path(__file__).read_bytes())
    digest.update(json.dumps(ARTEMIS_EMOTIONS).encode())
    digest.update(metadata_path.read_bytes())
    for relative in sorted({path for item in read_metadata(data_dir) for path in item.media_paths}):
        stat = (Path(data_dir) / relative).stat()
        digest.update(f"{relative}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


# ------------------------------------------------------------------------------------------------- builder

_MEDIA_FEATURE = {"bytes": datasets.Value("binary"), "path": datasets.Value("string")}


@dataclass
class ArtEmoConfig(datasets.BuilderConfig):
    """A view of the benchmark items: which media the model is given."""

    with_audio: bool = True
    with_visual: bool = True


class ArtEmoBenchmark(datasets.GeneratorBasedBuilder):
    """ArtEmoBenchmark items from a local ``data_dir`` (``metadata.jsonl`` + media), one config per modality.

    Constructing it validates the metadata and, unless ``hash=`` is given, fingerprints the data so that the
    cache is rebuilt when the builder code, the metadata or a media file changes.

    >>> builder = ArtEmoBenchmark(config_name="audio_only", data_dir="my_artemo")  # doctest: +SKIP
    >>> builder.download_and_prepare(); builder.as_dataset(split="test")  # doctest: +SKIP
    """

    VERSION = datasets.Version("1.0.0")
    BUILDER_CONFIG_CLASS = ArtEmoConfig
    BUILDER_CONFIGS = [
        ArtEmoConfig(
            name="audio_only",
            version=VERSION,
            description="The clip's sound only: the item's audio file, else its video's audio track.",
            with_visual=False,
        ),
        ArtEmoConfig(
            name="visual_only",
            version=VERSION,
            description="The clip's frames only: the still image, else the video (its audio track unused).",
            with_audio=False,
        ),
        ArtEmoConfig(name="audio_visual", version=VERSION, description="The clip's sound and frames."),
    ]
    DEFAULT_CONFIG_NAME = "audio_visual"

    def __init__(self, *args, **kwargs):
        if kwargs.get("data_dir") is not None:
            # an absolute path makes the cache key independent of the working directory
            kwargs["data_dir"] = os.path.abspath(kwargs["data_dir"])
            if kwargs.get("hash") is None:
                kwargs["hash"] = artemo_fingerprint(kwargs["data_dir"])
        super().__init__(*args, **kwargs)

    def _info(self) -> datasets.DatasetInfo:
        features = {
            "id": datasets.Value("string"),
            "clip_id": datasets.Value("string"),
            "task": datasets.Value("string"),
            "question": datasets.Value("string"),
            "options": datasets.List(datasets.Value("string")),
            "answer": datasets.Value("int32"),
            "valence": datasets.Value("float32"),
            "arousal": datasets.Value("float32"),
            "emotion": datasets.ClassLabel(names=list(ARTEMIS_EMOTIONS)),
            "content": datasets.Value("string"),
        }
        if self.config.with_audio:
            features["audio"] = _MEDIA_FEATURE
        if self.config.with_visual:
            features["image"] = _MEDIA_FEATURE
            features["video"] = _MEDIA_FEATURE
        return datasets.DatasetInfo(
            description="ArtEmoBenchmark: multiple-choice content and emotion questions about audio-visual clips, "
            f"config {self.config.name!r}. emotion -1 means unlabelled.",
            features=datasets.Features(features),
        )

    def _split_generators(self, dl_manager) -> list[datasets.SplitGenerator]:
        items = read_metadata(self.config.data_dir)
        return [
            datasets.SplitGenerator(
                name=split,
                gen_kwargs={"items": [item for item in items if item.split == split], "root": self.config.data_dir},
            )
            for split in SPLITS
            if any(item.split == split for item in items)
        ]

    def _generate_examples(self, items: list[ArtEmoItem], root: str) -> Iterator[tuple[str, dict]]:
        for item in items:
            yield item.id, self._example(item, root)

    def _example(self, item: ArtEmoItem, root: str) -> dict:
        example = {
            "id": item.id,
            "clip_id": item.clip_id,
            "task": item.task,
            "question": item.question,
            "options": list(item.options),
            "answer": item.answer,
            "valence": item.valence,
            "arousal": item.arousal,
            "emotion": NO_EMOTION if item.emotion is None else item.emotion,
            "content": item.content,
        }
        if self.config.with_audio:
            example["audio"] = _media_reference(root, item.sound_path)
        if self.config.with_visual:
            example["image"] = _media_reference(root, item.image)
            example["video"] = _media_reference(root, item.frames_path)
        return example


def _media_reference(root: str, relative: str | None) -> dict | None:
    return None if relative is None else {"bytes": None, "path": os.path.join(root, relative)}


def load_artemo(
    config_name: str,
    data_dir: str | os.PathLike,
    split: str | None = "test",
    *,
    cache_dir: str | os.PathLike | None = None,
    download_mode: str | None = None,
    **builder_kwargs,
) -> datasets.Dataset | datasets.DatasetDict:
    """Build (or reuse from the cache) one ArtEmoBenchmark config and return a split.

    ``split=None`` returns a ``DatasetDict`` of every split that has items.

    >>> test = load_artemo("audio_visual", "my_artemo")  # doctest: +SKIP
    >>> test[0]["emotion"], test.features["emotion"].int2str(test[0]["emotion"])  # doctest: +SKIP
    (1, 'awe')
    """
    if config_name not in CONFIG_NAMES:
        raise ValueError(f"unknown ArtEmoBenchmark config {config_name!r}; choose one of {list(CONFIG_NAMES)}")
    builder = ArtEmoBenchmark(
        config_name=config_name,
        data_dir=os.fspath(data_dir),
        cache_dir=None if cache_dir is None else os.fspath(cache_dir),
        **builder_kwargs,
    )
    builder.download_and_prepare(download_mode=download_mode)
    if split is not None and split not in builder.info.splits:
        raise ValueError(f"split {split!r} has no items in {data_dir}; available: {list(builder.info.splits)}")
    return builder.as_dataset(split=split)


def cast_audio(dataset: datasets.Dataset, sampling_rate: int | None = None) -> datasets.Dataset:
    """Cast the ``audio`` column to ``datasets.Audio`` (decoded on access), which requires torchcodec.

    Without torchcodec, decode ``example["audio"]["path"]`` (or its ``bytes``) with soundfile or PyAV instead.
    """
    if not datasets.config.TORCHCODEC_AVAILABLE:
        raise ImportError(
            "datasets.Audio decodes with torchcodec, which is not installed; decode example['audio']['path'] "
            "(or ['bytes']) with soundfile / PyAV instead"
        )
    return dataset.cast_column("audio", datasets.Audio(sampling_rate=sampling_rate))


# ----------------------------------------------------------------------------------------- export and push


def _embedded(reference: dict | None) -> dict | None:
    if reference is None or reference["bytes"] is not None:
        return reference
    return {"bytes": Path(reference["path"]).read_bytes(), "path": os.path.basename(reference["path"])}


def embed_media(dataset: datasets.Dataset) -> datasets.Dataset:
    """Copy every media file's bytes into the dataset and keep only its file name as ``path``.

    The result no longer depends on the local files (nor leaks local paths), ready for Parquet or the Hub.
    """
    media_columns = [name for name in MEDIA_FIELDS if name in dataset.column_names]

    def embed_batch(batch: dict) -> dict:
        return {name: [_embedded(reference) for reference in batch[name]] for name in media_columns}

    return dataset.map(
        embed_batch,
        batched=True,
        batch_size=MEDIA_ROWS_PER_BATCH,
        writer_batch_size=MEDIA_ROWS_PER_BATCH,
        features=dataset.features,
        desc="Embedding media",
    )


def _splits_to_export(dataset_or_config, data_dir, cache_dir) -> dict[tuple[str, str], datasets.Dataset]:
    if isinstance(dataset_or_config, str):
        if data_dir is None:
            raise ValueError("export_parquet(config_name, ...) needs data_dir to build the config from")
        dataset_or_config = load_artemo(dataset_or_config, data_dir, split=None, cache_dir=cache_dir)
    if isinstance(dataset_or_config, datasets.DatasetDict):
        parts = dict(dataset_or_config)
    elif isinstance(dataset_or_config, datasets.Dataset):
        if dataset_or_config.split is None:
            raise ValueError("the dataset has no split name; export a DatasetDict or a split from load_artemo")
        parts = {str(dataset_or_config.split): dataset_or_config}
    else:
        raise TypeError(f"expected a config name, Dataset or DatasetDict, got {type(dataset_or_config).__name__}")
    return {(part.info.config_name or "default", split): part for split, part in parts.items()}


def export_parquet(
    dataset_or_config: str | datasets.Dataset | datasets.DatasetDict,
    out_dir: str | os.PathLike,
    *,
    data_dir: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> list[str]:
    """Write self-contained Parquet files (media bytes embedded) as ``out_dir/<config>/<split>.parquet``.

    Pass a config name with ``data_dir`` to export all its splits, or a ``Dataset``/``DatasetDict`` from
    ``load_artemo``. The Parquet schema keeps the features (``ClassLabel`` included), so
    ``load_dataset("parquet", data_dir=out_dir/<config>)`` gives the same columns back.

    >>> export_parquet("audio_visual", "artemo_parquet", data_dir="my_artemo")  # doctest: +SKIP
    ['artemo_parquet/audio_visual/test.parquet']
    """
    written = []
    for (config_name, split), dataset in _splits_to_export(dataset_or_config, data_dir, cache_dir).items():
        path = Path(out_dir) / config_name / f"{split}.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        embed_media(dataset).to_parquet(str(path), batch_size=MEDIA_ROWS_PER_BATCH)
        written.append(str(path))
    return written


def push_artemo_to_hub(
    data_dir: str | os.PathLike,
    repo_id: str,
    *,
    config_names: tuple[str, ...] = CONFIG_NAMES,
    default_config: str = "audio_visual",
    private: bool | None = None,
    token: str | None = None,
    revision: str | None = None,
    max_shard_size: int | str | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> list:
    """Push every config and split to one Hub dataset repo, media bytes embedded; return the commit infos.

    Each (config, split) is one ``Dataset.push_to_hub`` commit, so the repo ends up with ``<config>/<split>-*``
    Parquet shards and a dataset card listing the configs, ``default_config`` marked as the default.

    >>> push_artemo_to_hub("my_artemo", "me/artemo-benchmark", private=True)  # doctest: +SKIP
    """
    if default_config not in config_names:
        raise ValueError(f"default_config {default_config!r} is not among the pushed configs {list(config_names)}")
    commits = []
    for config_name in config_names:
        for split, dataset in load_artemo(config_name, data_dir, split=None, cache_dir=cache_dir).items():
            commits.append(
                embed_media(dataset).push_to_hub(
                    repo_id,
                    config_name=config_name,
                    split=split,
                    set_default=config_name == default_config,
                    commit_message=f"Upload ArtEmoBenchmark {config_name}/{split}",
                    private=private,
                    token=token,
                    revision=revision,
                    max_shard_size=max_shard_size,
                )
            )
    return commits
