# Copyright 2026 The VAEmotion Authors. Licensed under the Apache License, Version 2.0.
"""Stage 1 teacher cache: the frozen visual pathway's responses and top-k log-probabilities, computed once.

The cache is model-agnostic storage: it takes tensors and strings. For each key ``(clip_id, prompt_id)`` it keeps

* ``response_ids``: int32 ``(L,)``, the token ids of the response text (what the teacher said, or a caption);
* ``topk_logprobs``: ``(L, k)`` in ``logprob_dtype`` (float16 by default), the teacher's log-probabilities at
  ``temperature`` of its ``k`` most likely next tokens at each response position: row ``i`` is the distribution
  that *predicts* ``response_ids[i]`` (from the logits one position earlier), as
  :func:`vaemotion.training.losses.topk_teacher` returns it;
* ``topk_indices``: int32 ``(L, k)``, their vocabulary ids.

Layout of a cache directory::

    manifest.json               format version, fingerprint, k, temperature, dtype, shards, ``complete``
    shard-00000.safetensors     records packed per shard: response_ids (T,), topk_logprobs (T, k),
    shard-00001.safetensors     topk_indices (T, k), offsets (n + 1,) int64; the n keys in the header metadata
    ...
    parts/rank-00001-of-00002/  only during a parallel build: one process's share, a cache of its own

**Parallel builds.** Under several processes each process writes its share of the records to its own part cache
(:func:`part_directory`), which resumes on its own like any cache; the main process then copies the parts' records
into the cache in one agreed order with :func:`merge_parts` (so the shards are those a one-process build adding
records in that order writes) and deletes the parts. A part is only merged once complete, and the cache is only
marked complete once every record of the order is in it.

**Fingerprint.** The caller describes what produced the cache as ``{component: digest}``, e.g.
``{"weights": fingerprint_model(vlm, include=...), "processor": fingerprint_processor(processor),
"prompts": fingerprint_prompts(prompts), "generation": fingerprint_json(generate_kwargs)}``.
:meth:`TeacherCache.open` refuses a cache whose fingerprint differs and names the components that changed.

**Crash safety.** Every shard is written to a temporary file, fsynced and renamed into place, and only then added
to the manifest, itself replaced atomically. A crash therefore leaves a manifest listing only whole, hashed
shards. ``complete`` becomes true only when the writer is closed without error; an incomplete cache is refused by
:meth:`TeacherCache.open` and resumed by opening a :class:`TeacherCacheWriter` on the same directory: its shards
are kept, the keys they hold are skipped by :meth:`TeacherCacheWriter.add`, and the records buffered for the
unfinished shard are computed again. Adding records in the same order as an uninterrupted run gives the same
shards, byte for byte. One writer per directory at a time.

Example:

>>> import tempfile
>>> directory = tempfile.mkdtemp()
>>> fingerprint = {"weights": "w1", "prompts": fingerprint_prompts({"describe": "Describe the scene."})}
>>> with TeacherCacheWriter(directory, fingerprint, k=2, temperature=1.0, vocab_size=10) as writer:
...     writer.add(("clip-0", "describe"), torch.tensor([4, 7]), torch.log(torch.tensor([[0.6, 0.3], [0.9, 0.05]])),
...                torch.tensor([[4, 1], [7, 2]]))
True
>>> cache = TeacherCache.open(directory, fingerprint)
>>> len(cache), cache["clip-0", "describe"].response_ids.tolist()
(1, [4, 7])
>>> TeacherCache.open(directory, {**fingerprint, "weights": "w2"})  # doctest: +IGNORE_EXCEPTION_DETAIL
Traceback (most recent call last):
TeacherCacheError: stale teacher cache at ...: component 'weights' changed (cache w1, expected w2); ...
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, NamedTuple

import safetensors.torch
import torch
from safetensors import safe_open

FORMAT = "vaemotion.teacher_cache"
FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
DEFAULT_SHARD_SIZE = 256
LOGPROB_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
_SHARD_NAME = "shard-{:05d}.safetensors"
PARTS_DIRECTORY = "parts"
_KEYS_METADATA = "vaemotion.teacher_cache.keys"
_SAFETENSORS_DTYPES = {torch.float16: "F16", torch.bfloat16: "BF16", torch.float32: "F32", torch.int32: "I32",
                       torch.int64: "I64"}
# The exp of stored log-probabilities may sum slightly above 1 after rounding to float16/bfloat16.
_PROBABILITY_SUM_TOLERANCE = 1e-2
_MAX_INT32 = 2**31 - 1

CacheKey = tuple[str, str]


class TeacherCacheError(ValueError):
    """A teacher cache that must not be used: missing, stale, partial, corrupt, or of another format version."""


class TeacherRecord(NamedTuple):
    """One cached teacher response; dtypes as stored (int32 ids and indices, ``logprob_dtype`` log-probs)."""

    response_ids: torch.Tensor
    topk_logprobs: torch.Tensor
    topk_indices: torch.Tensor


# ----------------------------------------------------------------------------------------------------------------
# Fingerprints


def fingerprint_model(model: torch.nn.Module, include: Callable[[str], bool] | Sequence[str] | None = None) -> str:
    """SHA-256 hex digest of the model weights that determine the teacher.

    Hashes, for every selected ``state_dict`` entry in name order, its name, shape, dtype and an exact checksum
    of its bytes, computed on the tensor's own device: two linear sums, plain and position-weighted, of the raw
    16-bit words (bytes for odd-sized 1-byte tensors), in 64-bit integers modulo the prime ``2**61 - 1``.

    Tradeoff: this reads every byte of the selected weights once (well under a second for a 7B model on a GPU,
    tens of seconds on a CPU), and in exchange any change of any value, including a permutation, changes the
    digest, and the same weights give the same digest on any device (integer sums do not depend on the order of
    the reduction, unlike float sums). A strided sample would be cheaper but blind to most weights. The checksum
    is not cryptographic: it detects accidents, not adversaries. The dtype is part of the digest (a bf16 teacher
    and an fp32 teacher produce different distributions).

    Args:
        model: the teacher model.
        include: which entries determine the teacher, e.g. the visual pathway and the LLM but not the audio
            pathway being trained: name prefixes, a predicate on names, or None for every entry.

    >>> layer = torch.nn.Linear(2, 2)
    >>> weights, bias_only = fingerprint_model(layer), fingerprint_model(layer, include=["bias"])
    >>> with torch.no_grad():
    ...     layer.weight[0, 0] += 1e-6
    >>> weights == fingerprint_model(layer), bias_only == fingerprint_model(layer, include=["bias"])
    (False, True)
    """
    selected = _name_filter(include)
    digest = hashlib.sha256()
    count = 0
    for name, tensor in sorted(model.state_dict().items()):
        if selected(name):
            plain, weighted = _content_checksum(tensor)
            digest.update(f"{name}|{tuple(tensor.shape)}|{tensor.dtype}|{plain}|{weighted}\n".encode())
            count += 1
    if count == 0:
        raise ValueError("fingerprint_model: `include` selects no weight of the model")
    return digest.hexdigest()


def _name_filter(include: Callable[[str], bool] | Sequence[str] | None) -> Callable[[str], bool]:
    if include is None:
        return lambda name: True
    if callable(include):
        return include
    prefixes = tuple(include)
    return lambda name: name.startswith(prefixes)


_CHECKSUM_MODULUS = 2**61 - 1
_CHECKSUM_CHUNK = 1 << 22  # words per step: int64 temporaries of 32 MB, sums below 2**53 (no overflow)


def _content_checksum(tensor: torch.Tensor) -> tuple[int, int]:
    """Exact ``(sum w_i, sum w_i * (i mod 65521 + 1)) mod (2**61 - 1)`` over the tensor's raw words ``w_i``."""
    words = tensor.detach().contiguous().reshape(-1).view(torch.uint8)
    if words.numel() % 2 == 0:
        words = words.view(torch.int16)  # half as many words; every byte still counts
    plain = torch.zeros((), dtype=torch.int64, device=words.device)
    weighted = torch.zeros((), dtype=torch.int64, device=words.device)
    for start in range(0, words.numel(), _CHECKSUM_CHUNK):
        chunk = words[start : start + _CHECKSUM_CHUNK].to(torch.int64)
        position = torch.arange(start, start + chunk.numel(), device=words.device) % 65521 + 1
        plain = (plain + chunk.sum()) % _CHECKSUM_MODULUS
        weighted = (weighted + (chunk * position).sum()) % _CHECKSUM_MODULUS
    return int(plain), int(weighted)


def fingerprint_processor(processor: Any) -> str:
    """SHA-256 hex digest of everything ``processor.save_pretrained`` writes (configs, tokenizer, chat template).

    Works for any object with ``save_pretrained(directory)``: a processor, a tokenizer, a feature extractor.
    """
    with tempfile.TemporaryDirectory() as directory:
        processor.save_pretrained(directory)
        return _hash_directory(Path(directory))


def _hash_directory(directory: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        content = path.read_bytes()
        digest.update(f"{path.relative_to(directory).as_posix()}|{len(content)}\n".encode())
        digest.update(content)
    return digest.hexdigest()


def fingerprint_json(value: Any) -> str:
    """SHA-256 hex digest of a JSON-serialisable value in canonical form (sorted keys, no whitespace).

    For generation settings and anything else that shapes the teacher's responses.

    >>> fingerprint_json({"a": 1, "b": [2]}) == fingerprint_json({"b": [2], "a": 1})
    True
    """
    text = json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(text.encode()).hexdigest()


def fingerprint_prompts(prompts: Mapping[str, str] | Sequence[str]) -> str:
    """SHA-256 hex digest of the prompt pool: ``{prompt_id: text}``, or a list whose indices are the ids.

    >>> fingerprint_prompts(["Describe the scene."]) == fingerprint_prompts(["Describe the mood."])
    False
    """
    items = dict(prompts) if isinstance(prompts, Mapping) else list(prompts)
    texts = items.values() if isinstance(items, dict) else items
    if isinstance(prompts, str) or not all(isinstance(text, str) for text in texts):
        raise TypeError("prompts must be a mapping of prompt ids to texts or a sequence of texts")
    return fingerprint_json(items)


# ----------------------------------------------------------------------------------------------------------------
# Writer


class TeacherCacheWriter:
    """Writes (or resumes) a teacher cache; use as a context manager, which marks it complete on a clean exit.

    Args:
        directory: the cache directory (created if needed).
        fingerprint: ``{component: digest}`` describing what produced the teacher outputs (see the module doc).
        k: top-k width of every record, ``1 <= k <= vocab_size``.
        temperature: the temperature the log-probabilities were computed at (recorded; the loss must use it).
        vocab_size: the teacher's vocabulary size (ids and indices are checked against it).
        shard_size: records per shard. Smaller loses less work to a crash, larger makes fewer files.
        logprob_dtype: storage dtype of the log-probabilities; float16 (default) keeps 3 more mantissa bits than
            bfloat16 near ``log p = 0``, where the rest mass ``1 - sum(top-k)`` is decided.
        overwrite: discard whatever cache the directory holds and start afresh. Without it, an existing cache is
            resumed if its fingerprint and settings match and refused otherwise.

    Records are validated on :meth:`add`: shapes, id ranges, distinct indices per row, and that the values are
    log-probabilities (at most 0, probabilities summing to at most 1 + rounding), which catches raw logits.
    """

    def __init__(
        self,
        directory: str | os.PathLike,
        fingerprint: Mapping[str, str],
        *,
        k: int,
        temperature: float,
        vocab_size: int,
        shard_size: int = DEFAULT_SHARD_SIZE,
        logprob_dtype: torch.dtype = torch.float16,
        overwrite: bool = False,
    ):
        if not 1 <= vocab_size <= _MAX_INT32:
            raise ValueError(f"vocab_size must lie in [1, 2**31 - 1] (ids are stored as int32), got {vocab_size}")
        if not 1 <= k <= vocab_size:
            raise ValueError(f"k must lie in [1, vocab_size={vocab_size}], got {k} (use min(k, vocab_size))")
        if not temperature > 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        if shard_size < 1:
            raise ValueError(f"shard_size must be at least 1, got {shard_size}")
        dtype_names = {dtype: name for name, dtype in LOGPROB_DTYPES.items()}
        if logprob_dtype not in dtype_names:
            raise ValueError(f"logprob_dtype must be one of {list(LOGPROB_DTYPES)}, got {logprob_dtype}")
        self.directory = Path(directory)
        self.fingerprint = _checked_fingerprint(fingerprint)
        self.k, self.vocab_size, self.logprob_dtype = k, vocab_size, logprob_dtype
        self.settings = {"k": k, "temperature": float(temperature), "vocab_size": vocab_size,
                         "logprob_dtype": dtype_names[logprob_dtype], "shard_size": shard_size}
        self._shards: list[dict] = []
        self._keys: set[CacheKey] = set()
        self._buffer: list[tuple[CacheKey, TeacherRecord]] = []
        self._complete = False
        self._closed = False
        self.directory.mkdir(parents=True, exist_ok=True)
        if overwrite:
            (self.directory / MANIFEST_NAME).unlink(missing_ok=True)
            remove_parts(self.directory)
        elif (self.directory / MANIFEST_NAME).exists():
            self._resume(_read_manifest(self.directory))
        self._remove_unreferenced_files()

    # -- resuming ------------------------------------------------------------------------------------------------

    def _resume(self, manifest: dict) -> None:
        hint = "pass overwrite=True to rebuild it, or use another directory"
        _check_format(manifest, self.directory)
        changed = _fingerprint_changes(manifest["fingerprint"], self.fingerprint)
        if changed:
            raise TeacherCacheError(f"cannot resume the teacher cache at {self.directory}: {changed}; {hint}")
        different = {name: (manifest.get(name), value) for name, value in self.settings.items()
                     if manifest.get(name) != value}
        if different:
            raise TeacherCacheError(f"cannot resume the teacher cache at {self.directory}: settings differ "
                                    f"(cache, requested): {different}; {hint}")
        for entry in manifest["shards"]:
            path = self.directory / entry["file"]
            _verify_shard_file(path, entry)
            with _open_shard(path) as handle:
                keys = _shard_keys(handle, path, entry)
            self._keys.update(keys)
            self._shards.append(entry)
        self._complete = manifest["complete"]

    def _remove_unreferenced_files(self) -> None:
        """Delete temporary files and shards a crash left outside the manifest (their records are recomputed)."""
        referenced = {entry["file"] for entry in self._shards}
        for path in self.directory.iterdir():
            is_temporary = path.name.startswith(".") and path.name.endswith(".tmp")
            is_orphan_shard = path.name.startswith("shard-") and path.suffix == ".safetensors"
            if is_temporary or (is_orphan_shard and path.name not in referenced):
                path.unlink()

    # -- adding --------------------------------------------------------------------------------------------------

    def __contains__(self, key: CacheKey) -> bool:
        """Whether ``key`` is stored or buffered: a resumed run can skip computing the teacher for it."""
        return _checked_key(key) in self._keys

    def __len__(self) -> int:
        return len(self._keys)

    def keys(self) -> frozenset[CacheKey]:
        """The keys stored or buffered so far."""
        return frozenset(self._keys)

    def add(
        self,
        key: CacheKey,
        response_ids: torch.Tensor,
        topk_logprobs: torch.Tensor,
        topk_indices: torch.Tensor,
    ) -> bool:
        """Add one record; returns False (and stores nothing) if ``key`` is already in the cache.

        Args:
            key: ``(clip_id, prompt_id)``.
            response_ids: integer ``(L,)`` response token ids.
            topk_logprobs: float ``(L, k)`` teacher log-probabilities at the cache temperature.
            topk_indices: integer ``(L, k)`` their vocabulary ids, distinct within each row.
        """
        if self._closed:
            raise RuntimeError("this TeacherCacheWriter is closed")
        key = _checked_key(key)
        if key in self._keys:
            return False
        record = self._checked_record(key, response_ids, topk_logprobs, topk_indices)
        self._buffer.append((key, record))
        self._keys.add(key)
        if len(self._buffer) >= self.settings["shard_size"]:
            self._write_shard()
        return True

    def _checked_record(self, key, response_ids, topk_logprobs, topk_indices) -> TeacherRecord:
        def fail(message: str):
            raise ValueError(f"teacher cache record {key}: {message}")

        if response_ids.dim() != 1 or response_ids.is_floating_point():
            fail(f"response_ids must be a 1-D integer tensor, got {response_ids.dtype} {tuple(response_ids.shape)}")
        length = response_ids.shape[0]
        if tuple(topk_logprobs.shape) != (length, self.k) or not topk_logprobs.is_floating_point():
            fail(f"topk_logprobs must be float ({length}, k={self.k}), got {topk_logprobs.dtype} "
                 f"{tuple(topk_logprobs.shape)}")
        if tuple(topk_indices.shape) != (length, self.k) or topk_indices.is_floating_point():
            fail(f"topk_indices must be integer ({length}, k={self.k}), got {topk_indices.dtype} "
                 f"{tuple(topk_indices.shape)}")
        response_ids, topk_indices = response_ids.detach().cpu(), topk_indices.detach().cpu()
        logprobs = topk_logprobs.detach().cpu().float()
        for name, ids in (("response_ids", response_ids), ("topk_indices", topk_indices)):
            if ids.numel() and (ids.min() < 0 or ids.max() >= self.vocab_size):
                fail(f"{name} must lie in [0, vocab_size={self.vocab_size})")
        if length and (topk_indices.sort(-1).values.diff(dim=-1) == 0).any():
            fail("topk_indices repeat an id within a position")
        if logprobs.isnan().any() or (logprobs > 0).any():
            fail("topk_logprobs must be log-probabilities (<= 0, no NaN); were logits passed?")
        if length and (torch.logsumexp(logprobs, -1).exp() > 1 + _PROBABILITY_SUM_TOLERANCE).any():
            fail("the probabilities in topk_logprobs sum above 1; were they normalised over the full vocabulary?")
        return TeacherRecord(response_ids.to(torch.int32).contiguous(),
                             logprobs.to(self.logprob_dtype).contiguous(),
                             topk_indices.to(torch.int32).contiguous())

    # -- writing -------------------------------------------------------------------------------------------------

    def _write_shard(self) -> None:
        keys = [key for key, _ in self._buffer]
        records = [record for _, record in self._buffer]
        lengths = torch.tensor([0] + [record.response_ids.shape[0] for record in records], dtype=torch.int64)
        tensors = {
            "response_ids": torch.cat([r.response_ids for r in records]),
            "topk_logprobs": torch.cat([r.topk_logprobs for r in records]),
            "topk_indices": torch.cat([r.topk_indices for r in records]),
            "offsets": lengths.cumsum(0),
        }
        # one metadata entry: the header (and so the shard's bytes) does not depend on dict ordering
        data = safetensors.torch.save(tensors, metadata={_KEYS_METADATA: json.dumps([list(key) for key in keys])})
        name = _SHARD_NAME.format(len(self._shards))
        _atomic_write(self.directory / name, data)
        self._shards.append({"file": name, "num_records": len(records), "num_tokens": int(lengths.sum()),
                             "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()})
        self._buffer = []
        self._complete = False
        self._write_manifest()

    def _write_manifest(self) -> None:
        manifest = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "complete": self._complete,
            "fingerprint": self.fingerprint,
            **self.settings,
            "num_records": sum(entry["num_records"] for entry in self._shards),
            "shards": self._shards,
        }
        _atomic_write(self.directory / MANIFEST_NAME, (json.dumps(manifest, indent=1) + "\n").encode())

    def close(self) -> None:
        """Write the buffered records as a last shard and mark the cache complete."""
        if self._closed:
            return
        if self._buffer:
            self._write_shard()
        self._complete = True
        self._write_manifest()
        self._closed = True

    def __enter__(self) -> TeacherCacheWriter:
        return self

    def __exit__(self, exc_type, exc, traceback) -> None:
        if exc_type is None:
            self.close()
        else:
            # the cache stays incomplete; buffered records are dropped so that a resumed run, adding records in
            # the same order, rebuilds exactly the shards an uninterrupted run would have written
            self._closed = True


def _atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to a temporary file, fsync it, rename it over ``path`` and fsync the directory."""
    temporary = path.with_name(f".{path.name}.tmp")
    with open(temporary, "wb") as file:
        file.write(data)
        file.flush()
        os.fsync(file.fileno())
    os.replace(temporary, path)
    if os.name == "posix":  # make the rename itself durable
        descriptor = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)


def cache_is_complete(directory: str | os.PathLike) -> bool:
    """Whether ``directory`` holds a manifest marked complete (nothing else is checked: :meth:`TeacherCache.open`
    does that)."""
    try:
        return _read_manifest(Path(directory)).get("complete") is True
    except TeacherCacheError:
        return False


def part_directory(directory: str | os.PathLike, rank: int, num_processes: int) -> Path:
    """Where process ``rank`` of ``num_processes`` writes its share of a parallel build of the cache at
    ``directory``."""
    return Path(directory) / PARTS_DIRECTORY / f"rank-{rank:05d}-of-{num_processes:05d}"


def remove_parts(directory: str | os.PathLike, *, keep_num_processes: int | None = None) -> None:
    """Delete the part caches of parallel builds at ``directory``, except those of a build on
    ``keep_num_processes`` processes (which a resumed build of that size reuses)."""
    parts = Path(directory) / PARTS_DIRECTORY
    if not parts.is_dir():
        return
    keep = (
        {part_directory(directory, rank, keep_num_processes).name for rank in range(keep_num_processes)}
        if keep_num_processes
        else set()
    )
    for path in parts.iterdir():
        if path.name in keep:
            continue
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()
    if not any(parts.iterdir()):
        parts.rmdir()


def merge_parts(writer: TeacherCacheWriter, num_processes: int, order: Iterable[CacheKey]) -> int:
    """Copy the records of a parallel build's parts into ``writer`` in ``order``, close it and delete the parts.

    Every part (``part_directory(writer.directory, rank, num_processes)``) must be complete and carry the writer's
    fingerprint; every key of ``order`` must be in the writer or in a part (else nothing is closed and a
    :class:`TeacherCacheError` says how many are missing). Records are added in ``order``, so the shards are those a
    one-process build adding them in that order writes. Returns the number of records added.
    """
    parts = [TeacherCache.open(part_directory(writer.directory, rank, num_processes), writer.fingerprint)
             for rank in range(num_processes)]  # fmt: skip
    owner = {key: part for part in parts for key in part}
    order = list(dict.fromkeys(_checked_key(key) for key in order))
    missing = [key for key in order if key not in writer and key not in owner]
    if missing:
        raise TeacherCacheError(f"cannot merge the parallel build at {writer.directory}: {len(missing)} records are in "
                                f"no part (first: {missing[0]})")
    added = 0
    for key in order:
        if key not in writer:
            added += writer.add(key, *owner[key][key])
    writer.close()
    remove_parts(writer.directory)
    return added


# ----------------------------------------------------------------------------------------------------------------
# Reader


class TeacherCache(Mapping):
    """A complete, verified teacher cache: a read-only mapping ``(clip_id, prompt_id) -> TeacherRecord``.

    Build it with :meth:`open`. Shards are memory-mapped with ``safetensors.safe_open`` and each lookup reads
    only its record's rows, so memory stays flat whatever the cache size (the key index is held in memory). The
    object pickles without its file handles, so it can be sent to ``DataLoader`` workers. Iteration yields keys
    in storage order; :class:`TeacherCacheDataset` gives positional access.

    Attributes: ``directory``, ``fingerprint``, ``k``, ``temperature``, ``vocab_size``, ``logprob_dtype``.
    """

    def __init__(self, directory: Path, manifest: dict, verified: bool):
        self.directory = directory
        self.fingerprint = manifest["fingerprint"]
        self.k, self.temperature, self.vocab_size = manifest["k"], manifest["temperature"], manifest["vocab_size"]
        self.logprob_dtype = LOGPROB_DTYPES[manifest["logprob_dtype"]]
        self._shards = manifest["shards"]
        self._verified = set(range(len(self._shards))) if verified else set()
        self._keys: list[CacheKey] = []
        self._location: dict[CacheKey, tuple[int, int]] = {}
        self._offsets: list[torch.Tensor] = []
        self._handles: dict[int, Any] = {}
        for shard, entry in enumerate(self._shards):
            path = directory / entry["file"]
            handle = self._handle(shard)
            keys = _shard_keys(handle, path, entry)
            self._offsets.append(_shard_offsets(handle, path, entry, self.k, self.logprob_dtype))
            for row, key in enumerate(keys):
                if key in self._location:
                    raise TeacherCacheError(f"corrupt teacher cache at {directory}: key {key} is stored twice")
                self._location[key] = (shard, row)
            self._keys.extend(keys)
        if len(self._keys) != manifest["num_records"]:
            raise TeacherCacheError(f"corrupt teacher cache at {directory}: the manifest counts "
                                    f"{manifest['num_records']} records, the shards hold {len(self._keys)}")

    @classmethod
    def open(
        cls,
        directory: str | os.PathLike,
        expected_fingerprint: Mapping[str, str],
        *,
        verify: Literal["eager", "lazy"] = "eager",
    ) -> TeacherCache:
        """Open a cache, refusing it with :class:`TeacherCacheError` unless it is usable.

        Refused when: there is no manifest; the format version differs; it is **stale** (the fingerprint differs
        from ``expected_fingerprint``: the message names each component that changed); it is **partial** (never
        completed, or a shard file is missing); it is **corrupt** (unreadable manifest or shard, size or SHA-256
        mismatch, inconsistent structure).

        Args:
            verify: ``"eager"`` hashes every shard now; ``"lazy"`` checks sizes and structure now and hashes each
                shard the first time a record is read from it (for large caches; the error then comes later).
        """
        if verify not in ("eager", "lazy"):
            raise ValueError(f"verify must be 'eager' or 'lazy', got {verify!r}")
        directory = Path(directory)
        manifest = _read_manifest(directory)
        _check_format(manifest, directory)
        changed = _fingerprint_changes(manifest["fingerprint"], _checked_fingerprint(expected_fingerprint))
        if changed:
            raise TeacherCacheError(f"stale teacher cache at {directory}: {changed}; rebuild it "
                                    "(TeacherCacheWriter(..., overwrite=True)) or use the cache of this teacher")
        if not manifest["complete"]:
            raise TeacherCacheError(
                f"partial teacher cache at {directory}: its build did not finish ({manifest['num_records']} records "
                f"in {len(manifest['shards'])} shards); open a TeacherCacheWriter on it to resume")
        for entry in manifest["shards"]:
            _verify_shard_file(directory / entry["file"], entry, hash_content=verify == "eager")
        return cls(directory, manifest, verified=verify == "eager")

    # -- mapping -------------------------------------------------------------------------------------------------

    def __getitem__(self, key: CacheKey) -> TeacherRecord:
        shard, row = self._location[_checked_key(key)]
        return self._read(shard, row)

    def __len__(self) -> int:
        return len(self._keys)

    def __iter__(self) -> Iterator[CacheKey]:
        return iter(self._keys)

    def __contains__(self, key: object) -> bool:
        return isinstance(key, (tuple, list)) and tuple(key) in self._location

    def key_at(self, index: int) -> CacheKey:
        """The key of the ``index``-th record in storage order."""
        return self._keys[index]

    # -- shards --------------------------------------------------------------------------------------------------

    def _handle(self, shard: int):
        if shard not in self._handles:
            self._handles[shard] = _open_shard(self.directory / self._shards[shard]["file"])
        return self._handles[shard]

    def _read(self, shard: int, row: int) -> TeacherRecord:
        if shard not in self._verified:
            _verify_shard_file(self.directory / self._shards[shard]["file"], self._shards[shard])
            self._verified.add(shard)
        handle = self._handle(shard)
        start, end = self._offsets[shard][row : row + 2].tolist()
        # safetensors returns views into the memory-mapped shard; a record owns a copy of just its rows, so that
        # sending it between processes (DataLoader workers) does not pickle the whole shard tensor
        return TeacherRecord(*(handle.get_slice(name)[start:end].clone()
                               for name in ("response_ids", "topk_logprobs", "topk_indices")))

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_handles"] = {}  # memory maps do not pickle; each process reopens the shards it reads
        return state


class TeacherCacheDataset(torch.utils.data.Dataset):
    """Positional view of a :class:`TeacherCache` for ``DataLoader``: item ``i`` is a dict with ``clip_id``,
    ``prompt_id``, ``response_ids``, ``topk_logprobs`` and ``topk_indices`` (stored dtypes)."""

    def __init__(self, cache: TeacherCache):
        self.cache = cache

    def __len__(self) -> int:
        return len(self.cache)

    def __getitem__(self, index: int) -> dict:
        clip_id, prompt_id = key = self.cache.key_at(index)
        return {"clip_id": clip_id, "prompt_id": prompt_id, **self.cache[key]._asdict()}


# ----------------------------------------------------------------------------------------------------------------
# Shared checks


def _checked_key(key: Any) -> CacheKey:
    if not (isinstance(key, (tuple, list)) and len(key) == 2 and all(isinstance(part, str) for part in key)):
        raise TypeError(f"a teacher cache key is a (clip_id, prompt_id) pair of strings, got {key!r}")
    return tuple(key)


def _checked_fingerprint(fingerprint: Mapping[str, str]) -> dict[str, str]:
    if not isinstance(fingerprint, Mapping) or not fingerprint:
        raise TypeError("a fingerprint is a non-empty mapping {component: digest}")
    if not all(isinstance(name, str) and isinstance(value, str) for name, value in fingerprint.items()):
        raise TypeError("fingerprint components and digests must be strings")
    return dict(fingerprint)


def _fingerprint_changes(stored: Mapping[str, str], expected: Mapping[str, str]) -> str:
    """Human-readable differences between two fingerprints ('' if none)."""
    problems = []
    for name in sorted(set(stored) | set(expected)):
        if name not in stored:
            problems.append(f"component {name!r} is missing from the cache's fingerprint")
        elif name not in expected:
            problems.append(f"component {name!r} is in the cache's fingerprint but not expected")
        elif stored[name] != expected[name]:
            problems.append(f"component {name!r} changed (cache {stored[name][:16]}, expected {expected[name][:16]})")
    return "; ".join(problems)


def _read_manifest(directory: Path) -> dict:
    path = directory / MANIFEST_NAME
    if not path.exists():
        raise TeacherCacheError(f"no teacher cache at {directory}: {MANIFEST_NAME} is missing (build one with "
                                "TeacherCacheWriter)")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise TeacherCacheError(f"corrupt teacher cache at {directory}: unreadable {MANIFEST_NAME} ({error})") from error
    if not isinstance(manifest, dict):
        raise TeacherCacheError(f"corrupt teacher cache at {directory}: {MANIFEST_NAME} is not a JSON object")
    return manifest


_MANIFEST_FIELDS = ("complete", "fingerprint", "k", "temperature", "vocab_size", "logprob_dtype", "shard_size",
                    "num_records", "shards")


def _check_format(manifest: dict, directory: Path) -> None:
    if manifest.get("format") != FORMAT:
        raise TeacherCacheError(f"{directory} does not hold a VAEmotion teacher cache (format "
                                f"{manifest.get('format')!r})")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise TeacherCacheError(f"teacher cache at {directory} has format version {manifest.get('format_version')}; "
                                f"this VAEmotion reads version {FORMAT_VERSION}: rebuild it")
    missing = [field for field in _MANIFEST_FIELDS if field not in manifest]
    if missing or manifest["logprob_dtype"] not in LOGPROB_DTYPES:
        raise TeacherCacheError(f"corrupt teacher cache at {directory}: {MANIFEST_NAME} lacks {missing} or names an "
                                f"unknown dtype")
    problem = _manifest_shape_problem(manifest)
    if problem:
        raise TeacherCacheError(f"corrupt teacher cache at {directory}: {MANIFEST_NAME} {problem}")


def _is_count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


_SHARD_ENTRY_FIELDS = {"file": str, "num_records": int, "num_tokens": int, "bytes": int, "sha256": str}


def _manifest_shape_problem(manifest: dict) -> str | None:
    """What is wrong with the types of a manifest's fields (None when nothing), so that a hand-edited or foreign
    manifest is refused by name rather than failing later inside a lookup."""
    fingerprint = manifest["fingerprint"]
    if not isinstance(fingerprint, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                                    for k, v in fingerprint.items()):  # fmt: skip
        return f"has a fingerprint that is not a mapping of component names to digests: {fingerprint!r:.80}"
    if not isinstance(manifest["complete"], bool):
        return f"has a 'complete' that is not true or false: {manifest['complete']!r}"
    for field in ("k", "vocab_size", "shard_size", "num_records"):
        if not _is_count(manifest[field]):
            return f"has a {field!r} that is not a whole number >= 0: {manifest[field]!r}"
    temperature = manifest["temperature"]
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not temperature > 0:
        return f"has a temperature that is not a positive number: {temperature!r}"
    if not isinstance(manifest["shards"], list):
        return f"has 'shards' that is not a list: {manifest['shards']!r:.80}"
    for index, entry in enumerate(manifest["shards"]):
        if not isinstance(entry, dict) or set(entry) != set(_SHARD_ENTRY_FIELDS):
            return f"shard entry {index} is not an object with exactly {sorted(_SHARD_ENTRY_FIELDS)}: {entry!r:.120}"
        for field, kind in _SHARD_ENTRY_FIELDS.items():
            if (kind is int and not _is_count(entry[field])) or not isinstance(entry[field], kind):
                return f"shard entry {index} has a {field!r} of the wrong type: {entry[field]!r:.80}"
        if entry["file"] != Path(entry["file"]).name or not entry["file"].endswith(".safetensors"):
            return f"shard entry {index} names a file outside the cache directory: {entry['file']!r}"
        if len(entry["sha256"]) != 64 or any(c not in "0123456789abcdef" for c in entry["sha256"]):
            return f"shard entry {index} has a sha256 that is not 64 hex digits: {entry['sha256']!r:.80}"
    return None


def _verify_shard_file(path: Path, entry: dict, hash_content: bool = True) -> None:
    if not path.exists():
        raise TeacherCacheError(f"partial teacher cache: shard {path} listed in the manifest is missing")
    size = path.stat().st_size
    if size != entry["bytes"]:
        raise TeacherCacheError(f"corrupt teacher cache: shard {path} has {size} bytes, the manifest says "
                                f"{entry['bytes']}")
    if hash_content:
        digest = hashlib.sha256()
        with open(path, "rb") as file:
            for block in iter(lambda: file.read(1 << 24), b""):
                digest.update(block)
        if digest.hexdigest() != entry["sha256"]:
            raise TeacherCacheError(f"corrupt teacher cache: shard {path} does not match its SHA-256 in the manifest")


def _open_shard(path: Path):
    try:
        return safe_open(str(path), framework="pt")
    except Exception as error:  # safetensors raises its own SafetensorError (and OSError) for unreadable files
        raise TeacherCacheError(f"corrupt teacher cache: shard {path} is not readable safetensors ({error})") from error


def _shard_keys(handle, path: Path, entry: dict) -> list[CacheKey]:
    try:
        keys = [_checked_key(key) for key in json.loads((handle.metadata() or {})[_KEYS_METADATA])]
    except (KeyError, TypeError, json.JSONDecodeError) as error:
        raise TeacherCacheError(f"corrupt teacher cache: shard {path} has no valid key list ({error})") from error
    if len(keys) != entry["num_records"]:
        raise TeacherCacheError(f"corrupt teacher cache: shard {path} holds {len(keys)} keys, the manifest says "
                                f"{entry['num_records']}")
    return keys


def _shard_offsets(handle, path: Path, entry: dict, k: int, logprob_dtype: torch.dtype) -> torch.Tensor:
    """Check a shard's tensors against the manifest; return its record offsets ``(n + 1,)``."""
    tokens, records = entry["num_tokens"], entry["num_records"]
    expected = {
        "response_ids": ([tokens], torch.int32),
        "topk_logprobs": ([tokens, k], logprob_dtype),
        "topk_indices": ([tokens, k], torch.int32),
        "offsets": ([records + 1], torch.int64),
    }
    for name, (shape, dtype) in expected.items():
        found = handle.get_slice(name) if name in handle.keys() else None
        if found is None or found.get_shape() != shape or found.get_dtype() != _SAFETENSORS_DTYPES[dtype]:
            raise TeacherCacheError(f"corrupt teacher cache: shard {path} lacks tensor {name!r} of shape {shape} "
                                    f"and dtype {dtype}")
    offsets = handle.get_tensor("offsets")
    if offsets[0] != 0 or offsets[-1] != tokens or (offsets.diff() < 0).any():
        raise TeacherCacheError(f"corrupt teacher cache: shard {path} has inconsistent record offsets")
    return offsets
