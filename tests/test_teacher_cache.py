"""Tests of the Stage 1 teacher cache: round trip, crash safety and resumption, refusal of bad caches."""

import copy
import hashlib
import json
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from vaemotion.tiny import build_tiny_tokenizer
from vaemotion.training import teacher_cache
from vaemotion.training.losses import topk_teacher
from vaemotion.training.teacher_cache import (
    MANIFEST_NAME,
    TeacherCache,
    TeacherCacheDataset,
    TeacherCacheError,
    TeacherCacheWriter,
    fingerprint_json,
    fingerprint_model,
    fingerprint_processor,
    fingerprint_prompts,
)

VOCAB, K, SHARD_SIZE = 50, 4, 3
FINGERPRINT = {"weights": "a" * 64, "processor": "b" * 64, "prompts": "c" * 64}


def make_records(count=7, seed=0):
    """(key, response_ids, topk_logprobs, topk_indices) with lengths 0..3, as a teacher would produce them."""
    g = torch.Generator().manual_seed(seed)
    records = []
    for i in range(count):
        length = i % 4
        top = topk_teacher(torch.randn(length, VOCAB, generator=g) * 3, K, temperature=1.0)
        ids = torch.randint(0, VOCAB, (length,), generator=g)
        records.append(((f"clip-{i}", "mood" if i % 2 else "describe"), ids, top.logprobs, top.indices))
    return records


def writer(directory, **overrides):
    options = dict(k=K, temperature=1.0, vocab_size=VOCAB, shard_size=SHARD_SIZE)
    return TeacherCacheWriter(directory, overrides.pop("fingerprint", FINGERPRINT), **{**options, **overrides})


def write_cache(directory, records):
    with writer(directory) as cache_writer:
        for record in records:
            cache_writer.add(*record)


def manifest(directory):
    return json.loads((Path(directory) / MANIFEST_NAME).read_text())


def rewrite_manifest(directory, **changes):
    (Path(directory) / MANIFEST_NAME).write_text(json.dumps({**manifest(directory), **changes}))


def shard_bytes(directory):
    return {entry["file"]: (Path(directory) / entry["file"]).read_bytes() for entry in manifest(directory)["shards"]}


def assert_holds(cache, records):
    assert len(cache) == len(records)
    assert list(cache) == [key for key, *_ in records]
    for key, ids, logprobs, indices in records:
        stored = cache[key]
        assert stored.response_ids.dtype == torch.int32 and stored.topk_indices.dtype == torch.int32
        assert stored.topk_logprobs.dtype == torch.float16
        assert torch.equal(stored.response_ids, ids.int())
        assert torch.equal(stored.topk_logprobs, logprobs.half())
        assert torch.equal(stored.topk_indices, indices.int())


# ---------------------------------------------------------------------------------------------------------------
# Round trip


def test_round_trip(tmp_path):
    records = make_records()
    write_cache(tmp_path, records)
    cache = TeacherCache.open(tmp_path, dict(FINGERPRINT))
    assert_holds(cache, records)
    assert (cache.k, cache.temperature, cache.vocab_size) == (K, 1.0, VOCAB)
    stored = manifest(tmp_path)
    assert stored["complete"] and stored["num_records"] == 7 and stored["fingerprint"] == FINGERPRINT
    assert [entry["num_records"] for entry in stored["shards"]] == [3, 3, 1]
    assert sorted(p.name for p in tmp_path.iterdir()) == [MANIFEST_NAME] + [e["file"] for e in stored["shards"]]
    assert records[1][0] in cache and ("clip-1", "describe") not in cache
    with pytest.raises(KeyError):
        cache["clip-1", "describe"]

    item = TeacherCacheDataset(cache)[4]
    assert (item["clip_id"], item["prompt_id"]) == records[4][0]
    assert torch.equal(item["topk_indices"], records[4][3].int())
    revived = pickle.loads(pickle.dumps(cache))  # what DataLoader workers receive
    assert_holds(revived, records)


def test_lookups_read_only_their_rows(tmp_path):
    records = make_records(count=6)
    write_cache(tmp_path, records)
    cache = TeacherCache.open(tmp_path, FINGERPRINT)
    record = cache[records[5][0]]
    assert record.topk_logprobs.shape == (1, K) and record.topk_logprobs.untyped_storage().nbytes() == 2 * K


# ---------------------------------------------------------------------------------------------------------------
# Crashes and resumption


def test_exception_mid_run_leaves_partial_cache_that_resumes_identically(tmp_path):
    records = make_records()
    write_cache(tmp_path / "reference", records)

    crashed = tmp_path / "crashed"
    with pytest.raises(RuntimeError, match="teacher ran out of memory"):
        with writer(crashed) as cache_writer:
            for record in records[:5]:
                cache_writer.add(*record)
            raise RuntimeError("teacher ran out of memory")
    stored = manifest(crashed)
    assert not stored["complete"] and [entry["file"] for entry in stored["shards"]] == ["shard-00000.safetensors"]
    assert sorted(p.name for p in crashed.iterdir()) == [MANIFEST_NAME, "shard-00000.safetensors"]
    with pytest.raises(TeacherCacheError, match="partial teacher cache.*did not finish.*3 records in 1 shards"):
        TeacherCache.open(crashed, FINGERPRINT)

    with writer(crashed) as resumed:
        assert len(resumed) == 3 and records[2][0] in resumed and records[3][0] not in resumed
        added = [resumed.add(*record) for record in records]
    assert added == [False] * 3 + [True] * 4
    assert shard_bytes(crashed) == shard_bytes(tmp_path / "reference")
    assert manifest(crashed) == manifest(tmp_path / "reference")
    assert_holds(TeacherCache.open(crashed, FINGERPRINT), records)


KILLED_WRITER = """
import importlib.util, os, signal, sys, torch
# load the module from its file: the child skips importing the package (and transformers) to start faster
spec = importlib.util.spec_from_file_location("teacher_cache", sys.argv[3])
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
records = torch.load(sys.argv[2])
real_replace = os.replace

def die_before_second_shard_lands(source, target):
    if str(target).endswith("shard-00001.safetensors"):
        os.kill(os.getpid(), signal.SIGKILL)  # the temporary file is fully written, the rename never happens
    real_replace(source, target)

os.replace = die_before_second_shard_lands
with module.TeacherCacheWriter(sys.argv[1], {fingerprint!r}, k={k}, temperature=1.0, vocab_size={vocab},
                        shard_size={shard_size}) as writer:
    for record in records:
        writer.add(*record)
"""


def test_process_killed_while_writing_a_shard(tmp_path):
    records = make_records()
    write_cache(tmp_path / "reference", records)
    torch.save(records, tmp_path / "records.pt")
    script = textwrap.dedent(KILLED_WRITER).format(fingerprint=FINGERPRINT, k=K, vocab=VOCAB, shard_size=SHARD_SIZE)
    killed = tmp_path / "killed"
    result = subprocess.run([sys.executable, "-c", script, str(killed), str(tmp_path / "records.pt"),
                             teacher_cache.__file__], capture_output=True, timeout=120)
    assert result.returncode == -9, result.stderr.decode()
    assert (killed / ".shard-00001.safetensors.tmp").exists()
    assert [entry["file"] for entry in manifest(killed)["shards"]] == ["shard-00000.safetensors"]
    with pytest.raises(TeacherCacheError, match="partial"):
        TeacherCache.open(killed, FINGERPRINT)

    with writer(killed) as resumed:
        for record in records:
            resumed.add(*record)
    assert not (killed / ".shard-00001.safetensors.tmp").exists()
    assert shard_bytes(killed) == shard_bytes(tmp_path / "reference")
    assert_holds(TeacherCache.open(killed, FINGERPRINT), records)


def test_writer_refuses_mismatching_cache_unless_overwrite(tmp_path):
    records = make_records()
    write_cache(tmp_path, records[:4])
    with pytest.raises(TeacherCacheError, match="cannot resume.*component 'weights' changed.*overwrite=True"):
        writer(tmp_path, fingerprint={**FINGERPRINT, "weights": "d" * 64})
    with pytest.raises(TeacherCacheError, match="settings differ.*'k': \\(4, 5\\)"):
        writer(tmp_path, k=5)
    with writer(tmp_path) as extended:  # a complete cache can be extended; it is complete again once closed
        assert [extended.add(*record) for record in records] == [False] * 4 + [True] * 3
    assert_holds(TeacherCache.open(tmp_path, FINGERPRINT), records)

    new_fingerprint = {**FINGERPRINT, "weights": "d" * 64}
    with writer(tmp_path, fingerprint=new_fingerprint, overwrite=True) as rebuilt:
        rebuilt.add(*records[6])
    assert_holds(TeacherCache.open(tmp_path, new_fingerprint), records[6:])
    assert len(list(tmp_path.glob("shard-*"))) == 1


# ---------------------------------------------------------------------------------------------------------------
# Refusals


@pytest.mark.parametrize("component", sorted(FINGERPRINT))
def test_stale_cache_names_the_changed_component(tmp_path, component):
    write_cache(tmp_path, make_records(count=2))
    expected = {**FINGERPRINT, component: "e" * 64}
    with pytest.raises(TeacherCacheError, match=f"stale teacher cache.*component '{component}' changed") as error:
        TeacherCache.open(tmp_path, expected)
    others = set(FINGERPRINT) - {component}
    assert not any(f"'{other}'" in str(error.value) for other in others)


def test_stale_cache_with_added_or_dropped_components(tmp_path):
    write_cache(tmp_path, make_records(count=2))
    with pytest.raises(TeacherCacheError, match="'generation' is missing from the cache's fingerprint"):
        TeacherCache.open(tmp_path, {**FINGERPRINT, "generation": fingerprint_json({"max_new_tokens": 64})})
    with pytest.raises(TeacherCacheError, match="'prompts' is in the cache's fingerprint but not expected"):
        TeacherCache.open(tmp_path, {"weights": "a" * 64, "processor": "b" * 64})


def test_flipped_byte_is_refused(tmp_path):
    records = make_records()
    write_cache(tmp_path, records)
    shard = tmp_path / "shard-00001.safetensors"
    data = bytearray(shard.read_bytes())
    data[-5] ^= 0x01  # inside the last record's indices
    shard.write_bytes(bytes(data))
    with pytest.raises(TeacherCacheError, match="corrupt.*shard-00001.safetensors does not match its SHA-256"):
        TeacherCache.open(tmp_path, FINGERPRINT)
    lazy = TeacherCache.open(tmp_path, FINGERPRINT, verify="lazy")
    assert torch.equal(lazy[records[0][0]].topk_indices, records[0][3].int())  # shard 0 is intact
    with pytest.raises(TeacherCacheError, match="SHA-256"):
        lazy[records[3][0]]


def test_unreadable_missing_and_truncated_shards_are_refused(tmp_path):
    write_cache(tmp_path, make_records())
    shard = tmp_path / "shard-00000.safetensors"
    original = shard.read_bytes()
    garbage = b"\xff" * len(original)
    shard.write_bytes(garbage)
    shards = manifest(tmp_path)["shards"]
    shards[0]["sha256"] = hashlib.sha256(garbage).hexdigest()  # hash matches: the content is bad
    rewrite_manifest(tmp_path, shards=shards)
    with pytest.raises(TeacherCacheError, match="shard-00000.safetensors is not readable safetensors"):
        TeacherCache.open(tmp_path, FINGERPRINT)

    shard.write_bytes(original[:-10])
    with pytest.raises(TeacherCacheError, match="corrupt.*has \\d+ bytes, the manifest says"):
        TeacherCache.open(tmp_path, FINGERPRINT)
    shard.unlink()
    with pytest.raises(TeacherCacheError, match="partial.*shard-00000.safetensors listed in the manifest is missing"):
        TeacherCache.open(tmp_path, FINGERPRINT)


def test_bad_manifests_are_refused(tmp_path):
    with pytest.raises(TeacherCacheError, match="no teacher cache.*manifest.json is missing"):
        TeacherCache.open(tmp_path, FINGERPRINT)
    write_cache(tmp_path, make_records(count=2))
    good = manifest(tmp_path)
    rewrite_manifest(tmp_path, format_version=99)
    with pytest.raises(TeacherCacheError, match="format version 99; this VAEmotion reads version 1"):
        TeacherCache.open(tmp_path, FINGERPRINT)
    rewrite_manifest(tmp_path, **{**good, "num_records": 5})
    with pytest.raises(TeacherCacheError, match="manifest counts 5 records, the shards hold 2"):
        TeacherCache.open(tmp_path, FINGERPRINT)
    (tmp_path / MANIFEST_NAME).write_text('{"format": "vaemotion.teacher_cache", "format_vers')
    with pytest.raises(TeacherCacheError, match="corrupt.*unreadable manifest.json"):
        TeacherCache.open(tmp_path, FINGERPRINT)


def damaged_entry(entry, **changes):
    return [{**entry, **changes}]


@pytest.mark.parametrize("field, damage, message", [
    ("fingerprint", lambda good: ["weights", "a" * 64], "fingerprint that is not a mapping"),
    ("fingerprint", lambda good: {"weights": 3}, "fingerprint that is not a mapping"),
    ("complete", lambda good: "yes", "'complete' that is not true or false"),
    ("k", lambda good: True, "'k' that is not a whole number"),
    ("num_records", lambda good: -1, "'num_records' that is not a whole number"),
    ("temperature", lambda good: "1.0", "temperature that is not a positive number"),
    ("shards", lambda good: {"file": "shard-00000.safetensors"}, "'shards' that is not a list"),
    ("shards", lambda good: ["shard-00000.safetensors"], "shard entry 0 is not an object with exactly"),
    ("shards", lambda good: damaged_entry(good[0], bytes="12"), "shard entry 0 has a 'bytes' of the wrong type"),
    ("shards", lambda good: damaged_entry(good[0], num_tokens=2.0), "'num_tokens' of the wrong type"),
    ("shards", lambda good: damaged_entry(good[0], file="../shard-00000.safetensors"), "outside the cache directory"),
    ("shards", lambda good: damaged_entry(good[0], sha256="abc"), "sha256 that is not 64 hex digits"),
])  # fmt: skip
def test_manifests_of_the_wrong_shape_are_refused_by_name(tmp_path, field, damage, message):
    """A hand-edited or foreign manifest fails with the cache's error naming the field, when opened and when a
    writer resumes it, not later with a KeyError or TypeError from inside a lookup."""
    write_cache(tmp_path, make_records(count=2))
    rewrite_manifest(tmp_path, **{field: damage(manifest(tmp_path)[field])})
    with pytest.raises(TeacherCacheError, match=f"corrupt teacher cache.*manifest.json .*{message}"):
        TeacherCache.open(tmp_path, FINGERPRINT)
    with pytest.raises(TeacherCacheError, match=message):
        writer(tmp_path)


# ---------------------------------------------------------------------------------------------------------------
# Parallel builds


def test_merged_parts_equal_a_one_writer_cache_byte_for_byte(tmp_path):
    """Records computed by three processes, each in its own order, merged in the agreed order: the shards of one
    writer adding them in that order, and the parts deleted. Keys the cache already holds are kept as they are."""
    records = make_records(count=8)
    write_cache(tmp_path / "one_writer", records)
    for target, already in ((tmp_path / "merged", []), (tmp_path / "extended", records[:1])):
        with writer(target) as cache_writer:
            for record in already:
                cache_writer.add(*record)
        for rank in range(3):
            with writer(teacher_cache.part_directory(target, rank, 3)) as part:
                for record in reversed(records[len(already):][rank::3]):
                    part.add(*record)
        added = teacher_cache.merge_parts(writer(target), 3, [key for key, *_ in records])
        assert added == len(records) - len(already)
        assert_holds(TeacherCache.open(target, FINGERPRINT), records)
        assert not (target / teacher_cache.PARTS_DIRECTORY).exists()
    assert shard_bytes(tmp_path / "merged") == shard_bytes(tmp_path / "one_writer")


def test_merging_refuses_missing_records_and_unfinished_parts(tmp_path):
    records = make_records(count=4)
    with writer(teacher_cache.part_directory(tmp_path, 0, 2)) as part:
        part.add(*records[0])
    with pytest.raises(TeacherCacheError, match="no teacher cache.*rank-00001-of-00002"):
        teacher_cache.merge_parts(writer(tmp_path), 2, [key for key, *_ in records])
    with writer(teacher_cache.part_directory(tmp_path, 1, 2)) as part:
        part.add(*records[1])
    with pytest.raises(TeacherCacheError, match="2 records are in no part"):
        teacher_cache.merge_parts(writer(tmp_path), 2, [key for key, *_ in records])
    assert not (tmp_path / MANIFEST_NAME).exists()  # nothing was marked complete


# ---------------------------------------------------------------------------------------------------------------
# Validation


def test_records_are_validated(tmp_path):
    (key, ids, logprobs, indices) = make_records(count=4)[3]  # length 3
    cases = {
        "topk_logprobs must be float \\(3, k=4\\)": (ids, logprobs[:, :3], indices),
        "topk_indices must be integer": (ids, logprobs, indices.float()),
        "response_ids must be a 1-D integer tensor": (ids.float(), logprobs, indices),
        "response_ids must lie in \\[0, vocab_size=50\\)": (ids + VOCAB, logprobs, indices),
        "topk_indices must lie in": (ids, logprobs, indices - VOCAB),
        "repeat an id": (ids, logprobs, indices[:, [0, 0, 1, 2]]),
        "were logits passed": (ids, logprobs.abs() + 0.5, indices),
        "NaN": (ids, logprobs.masked_fill(torch.eye(3, 4, dtype=torch.bool), float("nan")), indices),
        "sum above 1": (ids, torch.full((3, K), -0.1), indices),
    }
    with writer(tmp_path) as cache_writer:
        for message, tensors in cases.items():
            with pytest.raises(ValueError, match=message):
                cache_writer.add(key, *tensors)
        with pytest.raises(TypeError, match="pair of strings"):
            cache_writer.add("clip-3", ids, logprobs, indices)
        assert cache_writer.add(key, ids, logprobs, indices)
        assert not cache_writer.add(list(key), ids, logprobs, indices)
    with pytest.raises(RuntimeError, match="closed"):
        cache_writer.add(("x", "y"), ids, logprobs, indices)
    assert len(TeacherCache.open(tmp_path, FINGERPRINT)) == 1


def test_writer_arguments_are_validated(tmp_path):
    with pytest.raises(ValueError, match="k must lie in \\[1, vocab_size=50\\].*min\\(k, vocab_size\\)"):
        writer(tmp_path, k=51)
    with pytest.raises(ValueError, match="int32"):
        writer(tmp_path, vocab_size=2**31)
    with pytest.raises(ValueError, match="logprob_dtype"):
        writer(tmp_path, logprob_dtype=torch.float64)
    with pytest.raises(TypeError, match="non-empty mapping"):
        writer(tmp_path, fingerprint={})


def test_full_vocabulary_top_k_and_float32_storage(tmp_path):
    g = torch.Generator().manual_seed(1)
    top = topk_teacher(torch.randn(5, 8, generator=g), k=100, temperature=2.0)  # k >= V: the whole vocabulary
    with TeacherCacheWriter(tmp_path, FINGERPRINT, k=8, temperature=2.0, vocab_size=8,
                            logprob_dtype=torch.float32) as cache_writer:
        cache_writer.add(("clip", "p"), torch.arange(5), top.logprobs, top.indices)
    record = TeacherCache.open(tmp_path, FINGERPRINT)["clip", "p"]
    assert torch.equal(record.topk_logprobs, top.logprobs) and record.topk_logprobs.shape == (5, 8)


# ---------------------------------------------------------------------------------------------------------------
# Fingerprints


def test_content_checksum_matches_independent_reference(monkeypatch):
    monkeypatch.setattr(teacher_cache, "_CHECKSUM_CHUNK", 7)  # exercise many chunk boundaries
    g = torch.Generator().manual_seed(2)
    modulus = 2**61 - 1
    for tensor in (torch.randn(5, 9, generator=g), torch.randn(13, generator=g).bfloat16(),
                   torch.randint(0, 255, (11,), generator=g, dtype=torch.uint8), torch.randn(3, dtype=torch.float64)):
        raw = tensor.view(torch.uint8).numpy().tobytes() if tensor.dtype == torch.bfloat16 else tensor.numpy().tobytes()
        words = np.frombuffer(raw, dtype=np.int16 if len(raw) % 2 == 0 else np.uint8)
        values = [int(w) for w in words]
        plain = sum(values) % modulus
        weighted = sum(w * (i % 65521 + 1) for i, w in enumerate(values)) % modulus
        assert teacher_cache._content_checksum(tensor) == (plain, weighted)


def test_fingerprint_model_detects_any_weight_change():
    torch.manual_seed(3)
    model = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.LayerNorm(6), torch.nn.Linear(6, 3))
    digest = fingerprint_model(model)
    assert fingerprint_model(copy.deepcopy(model)) == digest
    one_ulp = copy.deepcopy(model)
    with torch.no_grad():
        weight = one_ulp[2].weight
        weight[1, 2] = torch.nextafter(weight[1, 2], torch.tensor(1.0))
    assert fingerprint_model(one_ulp) != digest
    swapped = copy.deepcopy(model)
    with torch.no_grad():
        swapped[0].weight[[0, 1]] = swapped[0].weight[[1, 0]]
    assert fingerprint_model(swapped) != digest
    assert fingerprint_model(copy.deepcopy(model).bfloat16()) != digest
    # weights outside `include` (e.g. the audio pathway being trained) do not matter
    assert fingerprint_model(one_ulp, include=["0.", "1."]) == fingerprint_model(model, include=["0.", "1."])
    assert fingerprint_model(one_ulp, include=lambda n: n.startswith("0.")) == fingerprint_model(
        model, include=lambda n: n.startswith("0."))
    with pytest.raises(ValueError, match="selects no weight"):
        fingerprint_model(model, include=["audio"])


def test_fingerprint_processor_and_prompts():
    assert fingerprint_processor(build_tiny_tokenizer()) == fingerprint_processor(build_tiny_tokenizer())
    assert fingerprint_processor(build_tiny_tokenizer(["violin"])) != fingerprint_processor(build_tiny_tokenizer())
    pool = {"describe": "Describe the scene.", "mood": "What is the mood?"}
    assert fingerprint_prompts(pool) == fingerprint_prompts(dict(reversed(pool.items())))
    assert fingerprint_prompts(pool) != fingerprint_prompts({**pool, "mood": "What is the mood? "})
    assert fingerprint_prompts(["a", "b"]) != fingerprint_prompts(["b", "a"])  # list indices are the prompt ids
    with pytest.raises(TypeError):
        fingerprint_prompts("Describe the scene.")
