"""vaemotion.training.data: clip manifests, decoding, path encodings and response positions."""

import json

import pytest

from conftest import write_video
from vaemotion.training.data import (
    PATHS,
    ClipDataError,
    ClipDataset,
    append_response,
    collate_encoded,
    encode_prompt,
    read_clips,
    response_positions,
    tokenize_response,
)
from vaemotion.tiny import build_tiny_processor, build_tiny_tokenizer


@pytest.fixture(scope="module")
def processor():
    return build_tiny_processor(build_tiny_tokenizer(), window_seconds=2)


@pytest.fixture(scope="module")
def clip_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("clips")
    write_video(folder / "a.mp4", seconds=1.0, fps=8, size=(32, 32))
    write_video(folder / "b.mp4", seconds=1.0, fps=8, size=(32, 32), onset=0.25)
    write_video(folder / "silent.mp4", seconds=1.0, fps=8, size=(32, 32), audio=False)
    return folder


def write_manifest(path, rows):
    path.write_text("\n".join(json.dumps(row) for row in rows) + "\n")
    return path


def test_folder_source_reports_and_skips_clips_without_sound(clip_folder, caplog):
    source = read_clips(clip_folder)
    assert [record.id for record in source.records] == ["a", "b"]
    assert [clip_id for clip_id, _ in source.skipped] == ["silent"]
    assert "has no audio track" in source.skipped[0][1]
    assert "skipped 1 of 3 clips" in caplog.text


@pytest.mark.parametrize(
    "row, message",
    [
        ({"video": "missing.mp4"}, "media file .*missing.mp4 does not exist"),
        ({"video": "a.mp4", "valence": 1.5}, "valence must be a number in \\[-1, 1\\]"),
        ({"video": "a.mp4", "arousal": "high"}, "arousal must be a number"),
        ({"video": "a.mp4", "emotion": "joy"}, "unknown emotion 'joy'"),
        ({"video": "a.mp4", "colour": "red"}, "unknown field\\(s\\) \\['colour'\\]"),
        ({"caption": "hello"}, "a clip needs a video, or an image/frames and an audio file"),
        ({"video": "a.mp4", "id": {"a": 1}}, r"id must be a non-empty string or a whole number, got \{'a': 1\}"),
        ({"video": "a.mp4", "id": " "}, "id must be a non-empty string"),
        ({"video": "a.mp4", "image": "a.mp4"}, r"give one picture source of video, image and frames, got \['video', 'image'\]"),
    ],
)
def test_manifest_errors_name_line_and_field(clip_folder, tmp_path, row, message):
    absolute = {k: (str(clip_folder / v) if k == "video" and v == "a.mp4" else v) for k, v in row.items()}
    manifest = write_manifest(tmp_path / "m.jsonl", [{"video": str(clip_folder / "a.mp4")}, absolute])
    with pytest.raises(ClipDataError, match=f"m.jsonl:2: .*{message}"):
        read_clips(manifest, emotion_labels=["awe", "fear"])


def test_manifest_paths_are_relative_to_the_manifest(clip_folder):
    manifest = write_manifest(clip_folder / "clips.jsonl", [{"id": "x", "video": "a.mp4", "valence": 0.5}])
    (record,) = read_clips(manifest).records
    assert record.video == str(clip_folder / "a.mp4") and record.valence == 0.5


def test_duplicate_ids_and_bad_json_are_refused(clip_folder, tmp_path):
    video = str(clip_folder / "a.mp4")
    with pytest.raises(ClipDataError, match="clip id 'x' appears more than once"):
        read_clips(write_manifest(tmp_path / "d.jsonl", [{"id": "x", "video": video}, {"id": "x", "video": video}]))
    broken = tmp_path / "b.jsonl"
    broken.write_text('{"video": \n')
    with pytest.raises(ClipDataError, match="b.jsonl:1: not valid JSON"):
        read_clips(broken)


def test_frames_of_different_sizes_are_named(clip_folder, tmp_path):
    import numpy as np
    import soundfile
    from PIL import Image

    for name, size in (("f0.png", (16, 16)), ("f1.png", (24, 20))):
        Image.new("RGB", size).save(tmp_path / name)
    soundfile.write(tmp_path / "sound.wav", np.zeros(16000, np.float32), 16000)
    manifest = write_manifest(tmp_path / "m.jsonl", [{"id": "odd", "frames": ["f0.png", "f1.png"], "audio": "sound.wav"}])
    with pytest.raises(ClipDataError, match=r"clip odd: its frames have different sizes \['16x16', '24x20'\]"):
        ClipDataset(read_clips(manifest).records, num_frames=2)[0]


def test_each_path_carries_exactly_its_media(clip_folder, processor):
    clip = ClipDataset(read_clips(clip_folder).records, num_frames=2)[0]
    expected = {
        "audio": {"input_features"},
        "visual": {"pixel_values_videos"},
        "audio_visual": {"input_features", "pixel_values_videos"},
    }
    for path in PATHS:
        encoded = encode_prompt(processor, clip, path, "describe the mood")
        media = {key for key in ("input_features", "pixel_values_videos") if key in encoded}
        assert media == expected[path]
        ids = encoded["input_ids"][0]
        assert ((ids == processor.audio_token_id).sum() > 0) == ("audio" in path)
        assert ((ids == processor.video_token_id).sum() > 0) == (path != "audio")


def test_response_positions_predict_the_response_for_both_paddings(clip_folder, processor):
    dataset = ClipDataset(read_clips(clip_folder).records, num_frames=2)
    tokenizer = processor.tokenizer
    responses = [tokenize_response(tokenizer, "a calm scene"), tokenize_response(tokenizer, "sad")]
    samples = [
        append_response(encode_prompt(processor, dataset[i], "audio", prompt), response)
        for i, (prompt, response) in enumerate(zip(["describe it", "what is the mood of this clip"], responses))
    ]
    for side in ("right", "left"):
        batch = collate_encoded(samples, tokenizer.pad_token_id, padding_side=side)
        positions, mask = response_positions(batch, [len(r) for r in responses])
        for row, response in enumerate(responses):
            following = batch["input_ids"][row, positions[row, : len(response)] + 1]
            assert following.tolist() == response  # the logit at p predicts token p + 1
            labelled = batch["labels"][row][batch["labels"][row] != -100]
            assert labelled.tolist() == response
        assert mask.sum(-1).tolist() == [len(r) for r in responses]
    # media tensors are concatenated in sample order, one window per clip
    assert batch["input_features"].shape[0] == 2


def test_keep_in_memory_decodes_and_encodes_once(clip_folder, processor, monkeypatch):
    import vaemotion.training.data as data

    calls = {"decode": 0, "encode": 0}
    real_load, real_encode = data.load_video, data._encode_prompt

    def counting_load(*args, **kwargs):
        calls["decode"] += 1
        return real_load(*args, **kwargs)

    def counting_encode(*args, **kwargs):
        calls["encode"] += 1
        return real_encode(*args, **kwargs)

    monkeypatch.setattr(data, "load_video", counting_load)
    monkeypatch.setattr(data, "_encode_prompt", counting_encode)
    records = read_clips(clip_folder).records
    kept = ClipDataset(records, num_frames=2, keep_in_memory=True)
    first = encode_prompt(processor, kept[0], "audio", "what")
    again = encode_prompt(processor, kept[0], "audio", "what")
    assert calls == {"decode": 1, "encode": 1} and again is first
    encode_prompt(processor, kept[0], "visual", "what")  # another path is another encoding
    assert calls["encode"] == 2
    plain = ClipDataset(records, num_frames=2)
    plain[0], plain[0]
    assert calls["decode"] == 3
    # a different processor never gets another's encodings
    other = build_tiny_processor(build_tiny_tokenizer(["zebra"]), window_seconds=2)
    encode_prompt(other, kept[0], "audio", "what")
    assert calls["encode"] == 3
