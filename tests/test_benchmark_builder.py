"""ArtEmoBenchmark builder: configs, validation, cache invalidation, Parquet export and (mocked) Hub push.

Everything runs offline on a tiny generated layout: a 1 s 32x32 H.264+AAC mp4, a png and a wav.
"""

import inspect
import io
import json
import os
import shutil
from pathlib import Path

import av
import datasets
import numpy as np
import pytest
import soundfile
from PIL import Image

from vaemotion.benchmark import (
    CONFIG_NAMES,
    NO_EMOTION,
    ArtEmoBenchmark,
    ArtEmoValidationError,
    cast_audio,
    export_parquet,
    load_artemo,
    push_artemo_to_hub,
)
from vaemotion.benchmark import artemo
from vaemotion.configuration_vaemotion import ARTEMIS_EMOTIONS

SAMPLE_RATE = 16000


def write_mp4(path: Path) -> None:
    """1 s, 32x32, 8 fps H.264 video with a mono AAC 440 Hz tone."""
    with av.open(str(path), "w") as container:
        video = container.add_stream("libx264", rate=8)
        video.width = video.height = 32
        video.pix_fmt = "yuv420p"
        audio = container.add_stream("aac", rate=SAMPLE_RATE, layout="mono")
        for index in range(8):
            frame = av.VideoFrame.from_ndarray(np.full((32, 32, 3), 30 * index, np.uint8), format="rgb24")
            container.mux(video.encode(frame))
        container.mux(video.encode())
        tone = (0.1 * np.sin(2 * np.pi * 440 * np.arange(SAMPLE_RATE) / SAMPLE_RATE)).astype(np.float32)
        for start in range(0, SAMPLE_RATE, 1024):  # AAC consumes 1024-sample frames
            frame = av.AudioFrame.from_ndarray(tone[None, start : start + 1024], format="fltp", layout="mono")
            frame.sample_rate, frame.pts = SAMPLE_RATE, start
            container.mux(audio.encode(frame))
        container.mux(audio.encode())


def write_wav(path: Path, frequency: float = 220.0) -> None:
    samples = 0.1 * np.sin(2 * np.pi * frequency * np.arange(SAMPLE_RATE) / SAMPLE_RATE)
    soundfile.write(str(path), samples.astype(np.float32), SAMPLE_RATE)


def base_records() -> list[dict]:
    """Four items: two questions about one video clip, an image+audio clip, and a video whose sound is replaced."""
    return [
        {"id": "q1", "clip_id": "c1", "split": "test", "video": "media/c1.mp4", "task": "content",
         "question": "What is shown?", "options": ["a sea", "a city", "a forest"], "answer": 1,
         "valence": 0.5, "arousal": -0.25, "emotion": "awe", "content": "city"},
        {"id": "q2", "clip_id": "c1", "split": "test", "video": "media/c1.mp4", "task": "emotion",
         "question": "How does it feel?", "options": ["calm", "tense"], "answer": 0,
         "valence": None, "arousal": None, "emotion": None, "content": None},
        {"id": "q3", "clip_id": "c2", "split": "test", "image": "media/c2.png", "audio": "media/c2.wav",
         "task": "emotion", "question": "Which emotion?", "options": ["sadness", "amusement"], "answer": 0,
         "valence": -0.75, "arousal": 0.0, "emotion": "sadness", "content": "portrait"},
        {"id": "q4", "clip_id": "c3", "split": "validation", "video": "media/c1.mp4", "audio": "media/c2.wav",
         "task": "content", "question": "What is heard?", "options": ["rain", "a tone"], "answer": 1},
    ]


def write_metadata(data_dir: Path, records: list) -> None:
    lines = [record if isinstance(record, str) else json.dumps(record) for record in records]
    (data_dir / "metadata.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")


@pytest.fixture(scope="module")
def media_template(tmp_path_factory) -> Path:
    media = tmp_path_factory.mktemp("artemo_media") / "media"
    media.mkdir()
    write_mp4(media / "c1.mp4")
    Image.fromarray(np.full((32, 32, 3), 128, np.uint8)).save(media / "c2.png")
    write_wav(media / "c2.wav")
    return media


@pytest.fixture
def data_dir(tmp_path, media_template) -> Path:
    root = tmp_path / "artemo"
    shutil.copytree(media_template, root / "media")
    write_metadata(root, base_records())
    return root


@pytest.fixture(autouse=True)
def offline_isolated_cache(tmp_path, monkeypatch) -> Path:
    cache = tmp_path / "hf_datasets_cache"
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(cache))
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", cache)
    return cache


def by_id(dataset: datasets.Dataset) -> dict[str, dict]:
    return {row["id"]: row for row in dataset}


# ------------------------------------------------------------------------------------------------ configs


@pytest.mark.parametrize(
    "config_name, media_columns",
    [("audio_only", ["audio"]), ("visual_only", ["image", "video"]), ("audio_visual", ["audio", "image", "video"])],
)
def test_each_config_exposes_its_media(data_dir, offline_isolated_cache, config_name, media_columns):
    test = load_artemo(config_name, data_dir, cache_dir=offline_isolated_cache)
    assert test.num_rows == 3
    assert [c for c in test.column_names if c in ("audio", "image", "video")] == media_columns
    rows = by_id(test)
    expected = {  # the sound is the audio file, else the video's track; a still image replaces the video frames
        "audio": {"q1": "media/c1.mp4", "q2": "media/c1.mp4", "q3": "media/c2.wav"},
        "image": {"q1": None, "q2": None, "q3": "media/c2.png"},
        "video": {"q1": "media/c1.mp4", "q2": "media/c1.mp4", "q3": None},
    }
    for column in media_columns:
        for item_id, relative in expected[column].items():
            reference = rows[item_id][column]
            if relative is None:
                assert reference is None
            else:
                assert reference == {"bytes": None, "path": str(data_dir / relative)}


def test_sound_of_a_video_item_decodes_from_the_audio_column(data_dir, offline_isolated_cache):
    row = by_id(load_artemo("audio_only", data_dir, cache_dir=offline_isolated_cache))["q1"]
    with av.open(row["audio"]["path"]) as container:
        samples = sum(frame.samples for frame in container.decode(audio=0))
    assert samples >= SAMPLE_RATE


def test_features_labels_and_null_conventions(data_dir, offline_isolated_cache):
    test = load_artemo("audio_visual", data_dir, cache_dir=offline_isolated_cache)
    emotion = test.features["emotion"]
    assert isinstance(emotion, datasets.ClassLabel) and emotion.names == list(ARTEMIS_EMOTIONS)
    assert test.features["valence"] == datasets.Value("float32")
    rows = by_id(test)
    q1, q2 = rows["q1"], rows["q2"]
    assert (q1["task"], q1["answer"], q1["clip_id"]) == ("content", 1, "c1")
    assert q1["options"] == ["a sea", "a city", "a forest"]
    assert emotion.int2str(q1["emotion"]) == "awe"
    assert (q1["valence"], q1["arousal"], q1["content"]) == (0.5, -0.25, "city")
    assert q2["emotion"] == NO_EMOTION == -1
    assert (q2["valence"], q2["arousal"], q2["content"]) == (None, None, None)


def test_splits(data_dir, offline_isolated_cache):
    splits = load_artemo("audio_only", data_dir, split=None, cache_dir=offline_isolated_cache)
    assert {name: part.num_rows for name, part in splits.items()} == {"validation": 1, "test": 3}
    validation = load_artemo("audio_only", data_dir, split="validation", cache_dir=offline_isolated_cache)
    assert validation[0]["audio"]["path"] == str(data_dir / "media/c2.wav")  # a separate audio file wins
    with pytest.raises(ValueError, match=r"split 'train' has no items .*available: \['validation', 'test'\]"):
        load_artemo("audio_only", data_dir, split="train", cache_dir=offline_isolated_cache)


def test_unknown_config_and_missing_metadata(data_dir, tmp_path, offline_isolated_cache):
    with pytest.raises(ValueError, match="unknown ArtEmoBenchmark config 'audio'.*audio_only"):
        load_artemo("audio", data_dir, cache_dir=offline_isolated_cache)
    with pytest.raises(FileNotFoundError, match="no metadata.jsonl"):
        load_artemo("audio_only", tmp_path / "nowhere", cache_dir=offline_isolated_cache)


def test_cast_audio_requires_torchcodec(data_dir, offline_isolated_cache, monkeypatch):
    test = load_artemo("audio_only", data_dir, cache_dir=offline_isolated_cache)
    monkeypatch.setattr(datasets.config, "TORCHCODEC_AVAILABLE", False)
    with pytest.raises(ImportError, match="torchcodec"):
        cast_audio(test)
    # our struct is the Audio storage layout, so the cast itself needs no decoder
    monkeypatch.setattr(datasets.config, "TORCHCODEC_AVAILABLE", True)
    assert cast_audio(test, sampling_rate=SAMPLE_RATE).features["audio"] == datasets.Audio(sampling_rate=SAMPLE_RATE)


# --------------------------------------------------------------------------------------------- validation


def _replace(index: int, **changes):
    def mutate(records):
        records[index].update(changes)
        return records

    return mutate


def _drop(index: int, field: str):
    def mutate(records):
        del records[index][field]
        return records

    return mutate


VALIDATION_CASES = {
    "missing media file": (
        _replace(0, video="media/gone.mp4"),
        "line 1 (id 'q1'): field 'video': media file 'media/gone.mp4' does not exist",
    ),
    "answer outside options": (
        _replace(0, answer=3),
        "line 1 (id 'q1'): field 'answer': 3 is outside the 3 options (valid: 0..2)",
    ),
    "negative answer": (_replace(0, answer=-1), "field 'answer': -1 is outside the 3 options"),
    "answer not an int": (_replace(0, answer="1"), "field 'answer': must be an integer option index"),
    "unknown task": (
        _replace(0, task="mood"),
        "line 1 (id 'q1'): field 'task': 'mood' is not one of ['content', 'emotion']",
    ),
    "unknown emotion": (_replace(0, emotion="joy"), "line 1 (id 'q1'): field 'emotion': 'joy' is not one of"),
    "valence above 1": (_replace(0, valence=1.5), "line 1 (id 'q1'): field 'valence': 1.5 is outside [-1, 1]"),
    "arousal below -1": (_replace(0, arousal=-2), "line 1 (id 'q1'): field 'arousal': -2 is outside [-1, 1]"),
    "valence not a number": (_replace(0, valence="high"), "field 'valence': must be a number in [-1, 1] or null"),
    "absolute media path": (_replace(0, video="/etc/hosts"), "field 'video': '/etc/hosts' is absolute"),
    "media path escaping data_dir": (
        _replace(2, audio="../outside.wav"),
        "line 3 (id 'q3'): field 'audio': '../outside.wav' escapes data_dir",
    ),
    "neither video nor image+audio": (
        _drop(2, "audio"),
        "line 3 (id 'q3'): media: an item needs either 'video' or both 'image' and 'audio'",
    ),
    "missing required field": (_drop(0, "question"), "line 1 (id 'q1'): field 'question': missing (required)"),
    "unknown field": (_replace(0, emtion="awe"), "line 1 (id 'q1'): field 'emtion': unknown field"),
    "too few options": (
        _replace(0, options=["only"], answer=0),
        "field 'options': must be a list of at least 2 strings",
    ),
    "unknown split": (_replace(0, split="dev"), "field 'split': 'dev' is not one of ['train', 'validation', 'test']"),
    "duplicate id": (_replace(1, id="q1"), "line 2 (id 'q1'): field 'id': duplicate id, first used on line 1"),
    "malformed JSON": (lambda records: records[:1] + ['{"id": "q2", "task": '] + records[2:], "line 2: malformed JSON"),
    "not an object": (lambda records: records + ["[1, 2]"], "line 5: expected a JSON object"),
}


@pytest.mark.parametrize("case", list(VALIDATION_CASES))
def test_validation_errors_name_line_id_field_and_problem(data_dir, offline_isolated_cache, case):
    mutate, expected = VALIDATION_CASES[case]
    (data_dir.parent / "outside.wav").write_bytes((data_dir / "media/c2.wav").read_bytes())
    write_metadata(data_dir, mutate(base_records()))
    with pytest.raises(ArtEmoValidationError) as caught:
        load_artemo("audio_visual", data_dir, cache_dir=offline_isolated_cache)
    assert isinstance(caught.value, ValueError)
    assert any(expected in problem for problem in caught.value.problems), caught.value.problems
    assert expected in str(caught.value)
    assert not list(offline_isolated_cache.rglob("*.arrow")), "nothing is built from invalid metadata"


def test_all_problems_are_reported_together(data_dir, offline_isolated_cache):
    records = base_records()
    records[0]["answer"] = 7
    records[2]["emotion"] = "joy"
    records[3]["valence"] = 2.0
    write_metadata(data_dir, records)
    with pytest.raises(ArtEmoValidationError, match=r"^3 problem\(s\) in .*metadata.jsonl") as caught:
        load_artemo("audio_only", data_dir, cache_dir=offline_isolated_cache)
    assert [problem.split(":")[0] for problem in caught.value.problems] == [
        "line 1 (id 'q1')", "line 3 (id 'q3')", "line 4 (id 'q4')"
    ]


def test_unicode_line_separators_inside_strings_and_crlf(data_dir, offline_isolated_cache):
    records = base_records()
    records[0]["question"] = "Qu\u2028est-ce que c\u2019est ?"
    text = "\r\n".join(json.dumps(record, ensure_ascii=False) for record in records) + "\r\n"
    (data_dir / "metadata.jsonl").write_text(text, encoding="utf-8", newline="")
    test = by_id(load_artemo("audio_only", data_dir, cache_dir=offline_isolated_cache))
    assert test["q1"]["question"] == "Qu\u2028est-ce que c\u2019est ?"


def test_empty_metadata_is_an_error(data_dir, offline_isolated_cache):
    (data_dir / "metadata.jsonl").write_text("\n\n", encoding="utf-8")
    with pytest.raises(ArtEmoValidationError, match="no items"):
        load_artemo("audio_only", data_dir, cache_dir=offline_isolated_cache)


def test_metadata_that_is_not_utf8_is_an_error(data_dir, offline_isolated_cache):
    text = "\n".join(json.dumps(record, ensure_ascii=False) for record in base_records()) + "\n"
    (data_dir / "metadata.jsonl").write_text(text, encoding="utf-16")
    with pytest.raises(ArtEmoValidationError, match=r"metadata.jsonl:\n  - not UTF-8 text"):
        load_artemo("audio_only", data_dir, cache_dir=offline_isolated_cache)


# ---------------------------------------------------------------------------------------------------- cache


def test_cache_is_reused_until_metadata_changes(data_dir, offline_isolated_cache):
    first = load_artemo("audio_visual", data_dir, cache_dir=offline_isolated_cache)
    again = load_artemo("audio_visual", data_dir, cache_dir=offline_isolated_cache)
    assert again.cache_files == first.cache_files

    records = base_records()
    records[0]["question"] = "What is really shown?"
    records.append({**records[1], "id": "q5", "answer": 1})
    write_metadata(data_dir, records)
    reloaded = by_id(load_artemo("audio_visual", data_dir, cache_dir=offline_isolated_cache))
    assert reloaded["q1"]["question"] == "What is really shown?"
    assert sorted(reloaded) == ["q1", "q2", "q3", "q5"]


def test_fingerprint_follows_media_and_builder_code(data_dir, tmp_path, monkeypatch):
    original = artemo.artemo_fingerprint(data_dir)
    assert artemo.artemo_fingerprint(data_dir) == original
    write_wav(data_dir / "media/c2.wav", frequency=330.0)
    os.utime(data_dir / "media/c2.wav", ns=(1, 1))  # a re-encoded file: new mtime
    after_media = artemo.artemo_fingerprint(data_dir)
    assert after_media != original

    edited_source = tmp_path / "artemo.py"
    edited_source.write_text(Path(artemo.__file__).read_text() + "\n# an edit\n")
    monkeypatch.setattr(artemo, "__file__", str(edited_source))
    assert artemo.artemo_fingerprint(data_dir) != after_media


def test_builder_passes_its_fingerprint_as_hash(data_dir, offline_isolated_cache):
    builder = ArtEmoBenchmark(config_name="audio_only", data_dir=str(data_dir), cache_dir=str(offline_isolated_cache))
    assert builder.hash == artemo.artemo_fingerprint(data_dir)
    assert builder.cache_dir.endswith(builder.hash)


# -------------------------------------------------------------------------------------- export and push


def test_parquet_round_trip_keeps_labels_and_embeds_media(data_dir, tmp_path, offline_isolated_cache):
    out_dir = tmp_path / "parquet"
    written = export_parquet("audio_visual", out_dir, data_dir=data_dir, cache_dir=offline_isolated_cache)
    assert sorted(Path(path).relative_to(out_dir).as_posix() for path in written) == [
        "audio_visual/test.parquet", "audio_visual/validation.parquet"
    ]
    originals = {name: (data_dir / "media" / name).read_bytes() for name in ("c1.mp4", "c2.png", "c2.wav")}
    shutil.rmtree(data_dir)  # the export must not need the local files any more

    loaded = datasets.load_dataset("parquet", data_dir=str(out_dir / "audio_visual"), cache_dir=str(tmp_path / "pq"))
    assert {name: part.num_rows for name, part in loaded.items()} == {"test": 3, "validation": 1}
    test = loaded["test"]
    assert test.features["emotion"] == datasets.ClassLabel(names=list(ARTEMIS_EMOTIONS))
    rows = by_id(test)
    assert rows["q2"]["emotion"] == NO_EMOTION
    for item_id, column, name in [("q1", "video", "c1.mp4"), ("q1", "audio", "c1.mp4"), ("q3", "image", "c2.png"),
                                  ("q3", "audio", "c2.wav")]:
        assert rows[item_id][column] == {"bytes": originals[name], "path": name}
    assert rows["q3"]["video"] is None
    image = Image.open(io.BytesIO(rows["q3"]["image"]["bytes"]))
    assert image.size == (32, 32)


def test_export_of_a_loaded_split(data_dir, tmp_path, offline_isolated_cache):
    test = load_artemo("audio_only", data_dir, cache_dir=offline_isolated_cache)
    (path,) = export_parquet(test, tmp_path / "parquet")
    assert Path(path) == tmp_path / "parquet" / "audio_only" / "test.parquet"
    with pytest.raises(ValueError, match="needs data_dir"):
        export_parquet("audio_only", tmp_path / "parquet")


def test_push_uploads_three_self_contained_configs(data_dir, offline_isolated_cache, monkeypatch):
    uploads = []
    real_signature = inspect.signature(datasets.Dataset.push_to_hub)

    def fake_push_to_hub(self, repo_id, config_name="default", split=None, set_default=None, **kwargs):
        real_signature.bind(self, repo_id, config_name=config_name, split=split, set_default=set_default, **kwargs)
        media = [row[c] for row in self for c in ("audio", "image", "video") if c in self.column_names and row[c]]
        uploads.append({
            "repo_id": repo_id, "config": config_name, "split": split, "rows": self.num_rows,
            "default": set_default, "private": kwargs["private"],
            "embedded": all(ref["bytes"] and os.sep not in ref["path"] for ref in media),
            "emotion": self.features["emotion"].names,
        })
        return f"commit {config_name}/{split}"

    monkeypatch.setattr(datasets.Dataset, "push_to_hub", fake_push_to_hub)
    commits = push_artemo_to_hub(data_dir, "me/artemo", private=True, cache_dir=offline_isolated_cache)

    assert len(commits) == len(uploads) == 6
    assert [(u["config"], u["split"], u["rows"]) for u in uploads] == [
        (config, split, rows) for config in CONFIG_NAMES for split, rows in (("validation", 1), ("test", 3))
    ]
    assert all(u["repo_id"] == "me/artemo" and u["private"] is True and u["embedded"] for u in uploads)
    assert all(u["emotion"] == list(ARTEMIS_EMOTIONS) for u in uploads)
    assert {u["config"] for u in uploads if u["default"]} == {"audio_visual"}


def test_push_rejects_a_default_config_that_is_not_pushed(data_dir):
    with pytest.raises(ValueError, match="default_config 'audio_visual' is not among"):
        push_artemo_to_hub(data_dir, "me/artemo", config_names=("audio_only",))
