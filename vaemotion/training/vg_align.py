# Copyright 2026 The VAEmotion Authors. Licensed under the Apache License, Version 2.0.
"""Stage 1, VG-Align: the frozen visual pathway teaches the new audio pathway to hear (DESIGN.md section 3).

For every (clip, prompt) pair the teacher is the model on the clip's **frames** + prompt + response, the student
the same model on the clip's **sound** + prompt + response. The loss matches the shared LLM's next-token
distributions at the response positions (``tau^2 * D(teacher || student)``, forward KL by default) plus an optional
cross-entropy on the response tokens. Nothing needs labels: the response is what the teacher itself says about the
clip (generated once, before training) or a caption from the manifest.

Pieces, usable on their own (Stage 2 reuses several):

- [`VGAlignConfig`]: every field of the method, on top of `TrainingArguments`.
- [`load_model_and_processor`]: the model and processor a config names.
- [`VGAlignDataset`] / [`VGAlignCollator`]: (clip x prompt) examples, and teacher + student batches sharing one
  response mask.
- [`generate_responses`]: the teacher's own responses, batched ``generate`` on the visual path.
- [`teacher_fingerprint`] / [`build_teacher_cache`] / [`open_teacher_cache`]: the teacher cache (responses and
  top-k log-probabilities on disk), so training never runs the vision tower again.
- [`vg_align_loss`] / [`VGAlignTrainer`]: the loss of one batch, and the Trainer that logs its parts.
- [`train_from_config`]: everything above, end to end (``vaemotion train stage1 --config FILE.yaml``).

Example (a tiny random model and one clip written on the spot):

```python
>>> import tempfile, numpy as np, av
>>> from vaemotion import VAEmotionForConditionalGeneration
>>> from vaemotion.tiny import build_tiny_processor, build_tiny_tokenizer, tiny_vaemotion_config
>>> tokenizer = build_tiny_tokenizer()
>>> model_dir, data_dir, out_dir = tempfile.mkdtemp(), tempfile.mkdtemp(), tempfile.mkdtemp()
>>> VAEmotionForConditionalGeneration(tiny_vaemotion_config(tokenizer, window_seconds=2)).save_pretrained(model_dir)
>>> _ = build_tiny_processor(tokenizer, window_seconds=2).save_pretrained(model_dir)
>>> with av.open(f"{data_dir}/clip.mp4", "w") as container:
...     video, sound = container.add_stream("libx264", rate=4), container.add_stream("aac", rate=16000)
...     video.width, video.height, video.pix_fmt = 32, 32, "yuv420p"
...     for i in range(4):
...         frame = av.VideoFrame.from_ndarray(np.full((32, 32, 3), 60 * i, np.uint8), format="rgb24")
...         frame.pts = i
...         container.mux(video.encode(frame))
...     container.mux(video.encode())
...     samples = np.sin(np.arange(16000) / 10)[None].astype(np.float32)
...     for start in range(0, 16000, 1024):
...         frame = av.AudioFrame.from_ndarray(samples[:, start : start + 1024], format="fltp", layout="mono")
...         frame.sample_rate, frame.pts = 16000, start
...         container.mux(sound.encode(frame))
...     container.mux(sound.encode())
>>> config = VGAlignConfig(output_dir=out_dir, model_name_or_path=model_dir, train_data=data_dir, use_cpu=True,
...                        prompts=["describe the scene"], max_completion_length=4, num_frames=4, max_steps=2,
...                        disable_tqdm=True, save_strategy="no", logging_steps=1)
>>> train_from_config(config) == out_dir  # doctest: +ELLIPSIS
VG-Align: trainable params ... 1 training examples (1 clips x prompts) on 1 process
...
True

```
"""

from __future__ import annotations

import json
import logging
import random
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import torch
from torch.utils.data import DataLoader, Dataset, Subset

from ..configuration_vaemotion import num_encoder_frames
from .data import (
    ClipDataError,
    ClipDataset,
    ClipRecord,
    append_response,
    collate_encoded,
    encode_prompt,
    read_clips,
    response_positions,
    tokenize_response,
)
from .distill import (
    DistillationSettings,
    STAGING_FOLDER,
    LossPartsTrainer,
    cached_teacher,
    checkpoint_to_resume,
    frozen_visual_pathway,
    peft_or_model,
    publish_staged_folder,
    student_distillation,
    teacher_targets,
    unwrap,
)
from .arguments import (
    VAEmotionTrainingArguments,
    finish_trainable_setup,
    load_model_and_processor,
)
from .losses import response_cross_entropy
from .teacher_cache import (
    TeacherCache,
    TeacherCacheError,
    TeacherCacheWriter,
    cache_is_complete,
    fingerprint_json,
    fingerprint_model,
    fingerprint_processor,
    fingerprint_prompts,
    merge_parts,
    part_directory,
    remove_parts,
)

logger = logging.getLogger(__name__)

DEFAULT_PROMPTS = (
    "Describe the scene.",
    "Describe the mood of this clip.",
    "What is the content of this clip?",
)
RESPONSE_SOURCES = ("teacher", "caption")
# Weights that define the teacher (distill.frozen_visual_pathway): the VLM alone. The audio pathway (tower +
# projector, the student's own parts), the Enhancer (bypassed by the teacher) and the emotion heads are left out,
# so training any of them never invalidates a cache.
TEACHER_WEIGHT_PREFIXES = ("vlm.",)


# ---------------------------------------------------------------------------------------------------- config
@dataclass
class VGAlignConfig(VAEmotionTrainingArguments):
    r"""Configuration of Stage 1 (VG-Align): the method's fields on top of [`~transformers.TrainingArguments`].

    Model: either ``model_name_or_path`` (a saved VAEmotion model + processor) or ``vlm_name_or_path`` +
    ``audio_name_or_path`` (built with ``from_vlm_and_audio_pretrained``). Data: ``train_data`` (and optionally
    ``eval_data``) is a folder of videos or a ``.jsonl`` manifest (see `vaemotion.training.data`).

    Example:

    >>> config = VGAlignConfig(output_dir="out", model_name_or_path="model", train_data="clips", use_cpu=True)
    >>> config.beta, config.distillation.divergence, config.remove_unused_columns, config.report_to
    (0.0, 'forward_kl', False, [])
    >>> VGAlignConfig(output_dir="out", model_name_or_path="m", train_data="d", beta=1.5)
    Traceback (most recent call last):
    ValueError: beta must lie in [0, 1], got 1.5
    """

    # -- model: model_name_or_path (shared), or a VLM and an audio encoder to assemble
    vlm_name_or_path: str | None = field(
        default=None, metadata={"help": "A VLM checkpoint (e.g. Qwen/Qwen2.5-VL-7B-Instruct), with audio_name_or_path."}
    )
    audio_name_or_path: str | None = field(
        default=None, metadata={"help": "A Whisper checkpoint (e.g. openai/whisper-large-v3), with vlm_name_or_path."}
    )
    # -- prompts and responses
    prompts: list[str] = field(
        default_factory=lambda: list(DEFAULT_PROMPTS), metadata={"help": "The pool of instructions."}
    )
    prompts_per_clip: int | None = field(
        default=None, metadata={"help": "Prompts drawn (deterministically, per clip id) from the pool; None: all."}
    )
    response_source: str = field(
        default="teacher", metadata={"help": "teacher: what the teacher says from the frames; caption: the manifest's."}
    )
    teacher_generation_kwargs: dict | str | None = field(
        default=None, metadata={"help": "generate() kwargs for the teacher's responses (JSON); default greedy."}
    )
    teacher_batch_size: int = field(default=8, metadata={"help": "Clips per generate() / cache batch."})
    teacher_cache_dir: str | None = field(
        default=None,
        metadata={"help": "Teacher cache directory: read if it exists (stale/partial/corrupt refused), else built."},
    )
    # -- loss
    kd_weight: float = field(default=1.0, metadata={"help": "Weight of the distillation loss."})
    ce_weight: float = field(default=0.0, metadata={"help": "Weight of the student's cross-entropy on the response."})
    answer_head_weight: float = field(
        default=0.0,
        metadata={"help": "Weight of the answer head's loss (0: no head). A temporary linear head on the mean-pooled "
                  "audio-encoder states predicts the teacher's answer (the response's first token) to each prompt, "
                  "so a from-scratch audio encoder gets the teacher's knowledge without going through the LLM. "
                  "Needs train_audio_encoder; meant for short-answer prompts; the head is not saved with the model."},
    )
    # -- trainable set
    train_audio_encoder: bool = field(default=False, metadata={"help": "Also train the audio encoder."})
    train_audio_delimiters: bool = field(
        default=True,
        metadata={"help": "Train the <|audio_bos|>/<|audio_eos|> embeddings (two rows, started from the VLM's vision "
                  "delimiters) with the projector."},
    )

    def __post_init__(self):
        if isinstance(self.teacher_generation_kwargs, str):
            try:
                self.teacher_generation_kwargs = json.loads(self.teacher_generation_kwargs)
            except json.JSONDecodeError as error:
                raise ValueError(f"teacher_generation_kwargs must be a JSON object, e.g. '{{\"do_sample\": false}}' "
                                 f"({error.msg} at character {error.pos})") from None
        if self.teacher_generation_kwargs is None:
            self.teacher_generation_kwargs = {"do_sample": False}
        super().__post_init__()
        self._validate()

    def _validate(self) -> None:
        def check(condition: bool, message: str) -> None:
            if not condition:
                raise ValueError(message)

        pair = (self.vlm_name_or_path, self.audio_name_or_path)
        check(
            bool(self.model_name_or_path) != bool(any(pair)),
            "give either model_name_or_path or vlm_name_or_path + audio_name_or_path (exactly one model source)",
        )
        check(all(pair) or not any(pair), "vlm_name_or_path and audio_name_or_path go together")
        check(isinstance(self.prompts, list) and len(self.prompts) > 0, "prompts must be a non-empty list")
        check(all(isinstance(p, str) and p.strip() for p in self.prompts), "every prompt must be a non-empty string")
        check(len(set(self.prompts)) == len(self.prompts), "prompts must be distinct")
        check(self.prompts_per_clip is None or 1 <= self.prompts_per_clip <= len(self.prompts),
              f"prompts_per_clip must lie in [1, {len(self.prompts)}] (the pool size), got {self.prompts_per_clip}")
        check(self.response_source in RESPONSE_SOURCES,
              f"response_source must be one of {RESPONSE_SOURCES}, got {self.response_source!r}")
        check(isinstance(self.teacher_generation_kwargs, dict), "teacher_generation_kwargs must be a mapping (JSON)")
        length_keys = sorted(set(self.teacher_generation_kwargs) & {"max_new_tokens", "max_length", "min_new_tokens"})
        check(not length_keys, f"teacher_generation_kwargs sets {length_keys}: the response length is "
                               "max_completion_length (which also bounds the cached and distilled tokens)")
        check(self.teacher_batch_size >= 1, f"teacher_batch_size must be at least 1, got {self.teacher_batch_size}")
        check(self.teacher_cache_dir is None or bool(self.loss_top_k),
              "teacher_cache_dir needs loss_top_k: the cache stores the teacher's top-k log-probabilities "
              "(e.g. loss_top_k: 64)")
        check(self.kd_weight >= 0 and self.ce_weight >= 0, "kd_weight and ce_weight must be >= 0")
        check(self.kd_weight > 0 or self.ce_weight > 0, "kd_weight and ce_weight are both 0: nothing to train")
        check(self.answer_head_weight >= 0, f"answer_head_weight must be >= 0, got {self.answer_head_weight}")
        check(self.answer_head_weight == 0 or self.train_audio_encoder,
              "answer_head_weight > 0 trains the audio encoder through the answer head: set train_audio_encoder")
        check(self.answer_head_weight == 0 or self.lora_r == 0,
              "answer_head_weight > 0 is not supported with LoRA (lora_r > 0): the head would be merged and saved")


# ---------------------------------------------------------------------------------------------------- model
# ---------------------------------------------------------------------------------------------------- data
@dataclass(frozen=True)
class Stage1Example:
    """One (clip, prompt) pair; ``key`` is ``f"{clip_id}::{prompt_index}"``."""

    clip_index: int
    clip_id: str
    prompt_index: int

    @property
    def key(self) -> str:
        return f"{self.clip_id}::{self.prompt_index}"

    @property
    def cache_key(self) -> tuple[str, str]:
        return (self.clip_id, str(self.prompt_index))


def pair_clips_with_prompts(records: Sequence[ClipRecord], num_prompts: int, prompts_per_clip: int | None = None):
    """The (clip x prompt) examples: every prompt per clip, or ``prompts_per_clip`` of them drawn per clip id.

    The draw is seeded by the clip id alone, so a clip keeps its prompts whatever else the data holds (and a
    teacher cache built for one run serves the next).

    >>> records = [ClipRecord(id="a"), ClipRecord(id="b")]
    >>> [e.key for e in pair_clips_with_prompts(records, 2)]
    ['a::0', 'a::1', 'b::0', 'b::1']
    >>> len(pair_clips_with_prompts(records, 3, prompts_per_clip=1))
    2
    """
    examples = []
    for index, record in enumerate(records):
        chosen = range(num_prompts)
        if prompts_per_clip is not None and prompts_per_clip < num_prompts:
            chosen = sorted(random.Random(f"vaemotion-stage1:{record.id}").sample(range(num_prompts), prompts_per_clip))
        examples.extend(Stage1Example(index, record.id, prompt_index) for prompt_index in chosen)
    return examples


def caption_responses(records: Sequence[ClipRecord], examples, tokenizer, max_tokens: int,
                      media_ids: Sequence[int] | None = None) -> dict[str, list[int]]:
    """Response ids from each clip's ``caption`` (end-of-turn appended), for ``response_source="caption"``.

    Captions holding any of ``media_ids`` (placeholder tokens, see [`media_token_ids`]) are refused.
    """
    missing = sorted({records[e.clip_index].id for e in examples if not records[e.clip_index].caption})
    if missing:
        raise ClipDataError(f"response_source='caption' but {len(missing)} clips have no caption: {missing[:5]}")
    responses = {e.key: tokenize_response(tokenizer, records[e.clip_index].caption, max_tokens=max_tokens)
                 for e in examples}
    if media_ids is not None:
        forbidden = set(media_ids)
        bad = sorted({key.rsplit("::", 1)[0] for key, ids in responses.items() if forbidden & set(ids)})
        if bad:
            raise ClipDataError(f"captions of clips {bad[:5]} contain media placeholder tokens; remove them")
    return responses


class VGAlignDataset(Dataset):
    """Stage 1 examples: each (clip, prompt) pair, decoded, with its response when known.

    An item is a dict with ``key``, ``clip`` ([`DecodedClip`]), ``prompt`` and, when known, ``response_ids``; with a
    teacher cache also ``teacher_topk_logprobs`` / ``teacher_topk_indices`` (the cache's response replaces
    ``responses``). ``decode_picture=False`` skips the frames (training from a cache never needs them).

    Args:
        records: the clips ([`read_clips`]).
        prompts: the prompt pool.
        prompts_per_clip: see [`pair_clips_with_prompts`].
        responses: ``{example key: response ids}`` (captions, or generated by [`generate_responses`]).
        cache: an open [`TeacherCache`] holding every example (checked here).
        num_frames / sampling_rate / frame_multiple / decode_picture / keep_in_memory: as [`ClipDataset`] takes them.
    """

    def __init__(
        self,
        records: Sequence[ClipRecord],
        prompts: Sequence[str],
        *,
        prompts_per_clip: int | None = None,
        responses: Mapping[str, Sequence[int]] | None = None,
        cache: TeacherCache | None = None,
        num_frames: int = 8,
        sampling_rate: int = 16000,
        frame_multiple: int = 2,
        decode_picture: bool = True,
        keep_in_memory: bool = False,
    ):
        self.records = list(records)
        self.prompts = list(prompts)
        self.examples = pair_clips_with_prompts(self.records, len(self.prompts), prompts_per_clip)
        self.responses = dict(responses) if responses is not None else None
        self.cache = cache
        self.clips = ClipDataset(
            self.records,
            num_frames=num_frames,
            sampling_rate=sampling_rate,
            decode_picture=decode_picture,
            frame_multiple=frame_multiple,
            keep_in_memory=keep_in_memory,
        )
        if cache is not None:
            missing = [e.key for e in self.examples if e.cache_key not in cache]
            if missing:
                raise TeacherCacheError(
                    f"the teacher cache at {cache.directory} lacks {len(missing)} of {len(self.examples)} examples "
                    f"(e.g. {missing[:3]}); add them with `vaemotion cache-teacher CONFIG.yaml`"
                )

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> dict:
        example = self.examples[index]
        item = {
            "key": example.key,
            "clip": self.clips[example.clip_index],
            "prompt": self.prompts[example.prompt_index],
            "prompt_index": example.prompt_index,
        }
        if self.cache is not None:
            record = self.cache[example.cache_key]
            item["response_ids"] = record.response_ids.tolist()
            item["teacher_topk_logprobs"] = record.topk_logprobs.float()
            item["teacher_topk_indices"] = record.topk_indices.long()
        elif self.responses is not None:
            item["response_ids"] = list(self.responses[example.key])
        return item


def encode_path_batch(processor, items: Sequence[dict], path: str, responses: Sequence[Sequence[int]],
                      system_prompt: str | None = None):
    """Right-padded model inputs of ``items`` on one path with their responses appended, and the response positions.

    Returns ``(batch, positions (B, R), mask (B, R))``; the batch carries no ``labels`` (the losses read the
    response at ``positions``).
    """
    encoded = [
        append_response(encode_prompt(processor, item["clip"], path, item["prompt"], system_prompt), response)
        for item, response in zip(items, responses)
    ]
    batch = collate_encoded(encoded, processor.tokenizer.pad_token_id)
    batch.pop("labels")
    positions, mask = response_positions(batch, [len(response) for response in responses])
    return batch, positions, mask


def _pad_rows(rows: Sequence[torch.Tensor], length: int, value) -> torch.Tensor:
    """Stack ``(L_i, ...)`` tensors into ``(B, length, ...)``, padding with ``value``."""
    out = rows[0].new_full((len(rows), length, *rows[0].shape[1:]), value)
    for row, values in enumerate(rows):
        out[row, : values.shape[0]] = values
    return out


class VGAlignCollator:
    """Teacher (visual path) and student (audio path) batches of the same prompts and responses.

    Returns ``{"student", "student_positions", "response_mask", "response_ids"}``, ``"prompt_indices"`` when the items
    carry their prompt's index, plus, for an online teacher,
    ``{"teacher", "teacher_positions"}``, or, for cached items, ``{"teacher_topk_logprobs",
    "teacher_topk_indices"}`` (``(B, R, k)``). Position ``[b, r]`` of either path predicts ``response_ids[b, r]``;
    ``response_mask`` marks the real (non-padding) response tokens, the same for both paths.
    """

    def __init__(self, processor, system_prompt: str | None = None):
        self.processor = processor
        self.system_prompt = system_prompt

    def __call__(self, items: Sequence[dict]) -> dict:
        if any("response_ids" not in item for item in items):
            raise ValueError("VGAlignCollator needs items with response_ids (captions, generated or cached)")
        responses = [list(item["response_ids"]) for item in items]
        student, student_positions, mask = encode_path_batch(
            self.processor, items, "audio", responses, self.system_prompt
        )
        rows = [torch.tensor(response, dtype=torch.long) for response in responses]
        out = {
            "student": student,
            "student_positions": student_positions,
            "response_mask": mask,
            "response_ids": _pad_rows(rows, mask.shape[1], self.processor.tokenizer.pad_token_id),
        }
        if all("prompt_index" in item for item in items):  # what the answer head needs; VGAlignDataset items have it
            out["prompt_indices"] = torch.tensor([item["prompt_index"] for item in items], dtype=torch.long)
        if "teacher_topk_logprobs" in items[0]:
            # padded rows are masked out of the loss; distinct indices keep them well-formed all the same
            k = items[0]["teacher_topk_indices"].shape[-1]
            out["teacher_topk_logprobs"] = _pad_rows([i["teacher_topk_logprobs"] for i in items], mask.shape[1], 0.0)
            indices = _pad_rows([i["teacher_topk_indices"] for i in items], mask.shape[1], 0)
            out["teacher_topk_indices"] = torch.where(mask[..., None], indices, torch.arange(k))
        else:
            teacher, teacher_positions, teacher_mask = encode_path_batch(
                self.processor, items, "visual", responses, self.system_prompt
            )
            if not torch.equal(teacher_mask, mask):
                raise AssertionError("teacher and student response masks differ")
            out["teacher"], out["teacher_positions"] = teacher, teacher_positions
        return out


def _item_batches(dataset: Dataset, batch_size: int, num_workers: int = 0):
    """Batches of dataset items (lists of dicts), decoded by ``num_workers`` DataLoader workers."""
    return DataLoader(dataset, batch_size=batch_size, collate_fn=list, num_workers=num_workers)


def _end_of_turn_id(tokenizer, end_token: str = "<|im_end|>") -> int:
    token_id = tokenizer.convert_tokens_to_ids(end_token)
    return tokenizer.eos_token_id if token_id is None or token_id == tokenizer.unk_token_id else token_id


def _model_device(model) -> torch.device:
    return next(unwrap(model).parameters()).device


def _to_device(batch: dict, device: torch.device) -> dict:
    return {key: value.to(device) for key, value in batch.items()}


@torch.no_grad()
def generate_responses(
    model,
    processor,
    dataset: Dataset,
    *,
    max_new_tokens: int = 64,
    batch_size: int = 8,
    generation_kwargs: Mapping | None = None,
    system_prompt: str | None = None,
    num_workers: int = 0,
) -> dict[str, list[int]]:
    """What the frozen visual pathway says about each item: batched ``generate`` on the visual path (left padding).

    ``dataset`` yields dicts with ``key``, ``clip`` (frames decoded) and ``prompt`` (e.g. a [`VGAlignDataset`]).
    Each response ends with the end-of-turn token: the one generated, or one appended when ``max_new_tokens`` cut
    the answer (the token budget then includes it). Adapters are disabled: the teacher is the pretrained VLM.

    Returns ``{key: response ids}``.
    """
    tokenizer = processor.tokenizer
    end_id = _end_of_turn_id(tokenizer)
    device = _model_device(model)
    # a placeholder token inside a response would be taken for media the batch does not carry
    kwargs = {"do_sample": False, **(generation_kwargs or {})}
    kwargs["suppress_tokens"] = sorted(set(kwargs.get("suppress_tokens") or ()) | set(media_token_ids(processor)))
    responses = {}
    for items in _item_batches(dataset, batch_size, num_workers):
        encoded = [encode_prompt(processor, item["clip"], "visual", item["prompt"], system_prompt) for item in items]
        batch = _to_device(collate_encoded(encoded, tokenizer.pad_token_id, padding_side="left"), device)
        with frozen_visual_pathway(model):
            sequences = unwrap(model).generate(
                **batch, max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id,
                eos_token_id=end_id, **kwargs,
            )  # fmt: skip
        for item, generated in zip(items, sequences[:, batch["input_ids"].shape[1] :].tolist()):
            responses[item["key"]] = _close_response(generated, end_id, max_new_tokens)
    return responses


def media_token_ids(processor) -> list[int]:
    """Ids of the media placeholder and delimiter tokens (image/video/audio), which no response may contain."""
    tokenizer = processor.tokenizer
    names = ("image_token", "video_token", "audio_token", "audio_bos_token", "audio_eos_token",
             "vision_bos_token", "vision_eos_token")
    tokens = {getattr(processor, name, None) or getattr(tokenizer, name, None) for name in names}
    ids = {tokenizer.convert_tokens_to_ids(token) for token in tokens if token}
    return sorted(i for i in ids if i is not None and i != tokenizer.unk_token_id)


def _close_response(generated: list[int], end_id: int, max_tokens: int) -> list[int]:
    """Generated ids up to and including the first end-of-turn; an unfinished answer is cut and closed."""
    if end_id in generated:
        return generated[: generated.index(end_id) + 1]
    return generated[: max_tokens - 1] + [end_id]


# ---------------------------------------------------------------------------------------------------- teacher cache
def teacher_fingerprint(model, processor, config) -> dict[str, str]:
    """What the cached teacher outputs depend on: the frozen visual-path weights (not the audio pathway being
    trained), the processor, the prompt pool, how responses are made, and the top-k/temperature of the targets.

    Compute it on the model as loaded (before LoRA): the teacher always runs with adapters disabled.
    """
    return {
        "weights": fingerprint_model(unwrap(model), include=TEACHER_WEIGHT_PREFIXES),
        "processor": fingerprint_processor(processor),
        "prompts": fingerprint_prompts(list(config.prompts)),
        "responses": fingerprint_json(
            {
                "source": config.response_source,
                "max_response_tokens": config.max_completion_length,
                "generation": config.teacher_generation_kwargs,
                "system_prompt": config.system_prompt,
                "num_frames": config.num_frames,
            }
        ),
        "targets": fingerprint_json({"top_k": config.loss_top_k, "temperature": config.temperature}),
    }


def open_teacher_cache(config, fingerprint: Mapping[str, str]) -> TeacherCache:
    """Open ``config.teacher_cache_dir``, refusing a stale, partial or corrupt cache with the cache's error."""
    return TeacherCache.open(config.teacher_cache_dir, fingerprint)


def build_teacher_cache(
    model,
    processor,
    datasets: Sequence[VGAlignDataset],
    config,
    fingerprint: Mapping[str, str],
    *,
    overwrite: bool = False,
    progress: bool = False,
) -> int:
    """Write (or resume, or extend) the teacher cache of ``datasets``: responses and top-k log-probabilities.

    For each example not yet cached: the response (the teacher's own, generated on the visual path, or the
    caption the dataset holds), then one teacher-forced pass on the visual path that keeps the teacher's top-k
    log-probabilities at each response position. Returns the number of records added (the same on every process).

    Under several processes (`accelerate launch`, `torchrun`) every process runs the teacher: the missing examples
    are cut into teacher batches as one process would cut them, and process ``r`` of ``n`` takes batches ``r, r + n,
    ...`` into its own part cache, which a killed build resumes. The main process then merges the parts in example
    order, so the cache holds what a one-process build writes. A resumed build must use the same number of
    processes to reuse the parts (others are discarded).
    """
    from accelerate import PartialState
    from accelerate.utils import broadcast_object_list

    state = PartialState()
    vocab_size = unwrap(model).config.get_text_config().vocab_size
    settings = {"k": min(config.loss_top_k, vocab_size), "temperature": config.temperature, "vocab_size": vocab_size}
    directory = config.teacher_cache_dir
    if state.num_processes == 1:
        with TeacherCacheWriter(directory, fingerprint, overwrite=overwrite, **settings) as writer:
            return _add_teacher_records(model, processor, datasets, config, writer, writer.keys(), 0, 1, progress)

    writer = None
    if state.is_main_process:  # resumes or refuses the cache (a stale one stops here, and the launch with it)
        writer = TeacherCacheWriter(directory, fingerprint, overwrite=overwrite, **settings)
        remove_parts(directory, keep_num_processes=state.num_processes)
    [cached] = broadcast_object_list([writer.keys() if writer is not None else None])
    part = part_directory(directory, state.process_index, state.num_processes)
    with TeacherCacheWriter(part, fingerprint, **settings) as part_writer:
        _add_teacher_records(model, processor, datasets, config, part_writer, cached, state.process_index,
                             state.num_processes, progress and state.is_main_process)  # fmt: skip
    state.wait_for_everyone()
    added = None
    if writer is not None:
        added = merge_parts(writer, state.num_processes, [ex.cache_key for d in datasets for ex in d.examples])
    [added] = broadcast_object_list([added])
    return added


@torch.no_grad()
def _add_teacher_records(
    model, processor, datasets, config, writer: TeacherCacheWriter, cached, rank: int, num_processes: int,
    progress: bool,
) -> int:
    """Run the teacher on this process's share of the examples whose keys are not in ``cached`` nor ``writer``."""
    settings = config.distillation
    device = _model_device(model)
    size = config.teacher_batch_size
    added = 0
    for dataset in datasets:
        todo = [i for i, example in enumerate(dataset.examples) if example.cache_key not in cached]
        batches = [todo[start : start + size] for start in range(0, len(todo), size)][rank::num_processes]
        mine = [i for batch in batches for i in batch if dataset.examples[i].cache_key not in writer]
        for items in _progress(_item_batches(Subset(dataset, mine), size, config.dataloader_num_workers), progress,
                               "teacher cache"):  # fmt: skip
            responses = [item.get("response_ids") for item in items]
            if config.response_source == "teacher":
                generated = generate_responses(
                    model, processor, items, max_new_tokens=config.max_completion_length,
                    batch_size=len(items), generation_kwargs=config.teacher_generation_kwargs,
                    system_prompt=config.system_prompt,
                )  # fmt: skip
                responses = [generated[item["key"]] for item in items]
            batch, positions, mask = encode_path_batch(processor, items, "visual", responses, config.system_prompt)
            top = teacher_targets(unwrap(model), _to_device(batch, device), positions.to(device), settings)
            for row, (item, response) in enumerate(zip(items, responses)):
                clip_id, prompt_index = item["key"].rsplit("::", 1)
                n = len(response)
                added += writer.add(
                    (clip_id, prompt_index), torch.tensor(response), top.logprobs[row, :n], top.indices[row, :n]
                )
    return added


def _progress(iterable, enabled: bool, description: str):
    if not enabled:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, desc=description)


# ---------------------------------------------------------------------------------------------------- loss
class VGAlignLoss(NamedTuple):
    """One batch's loss and its parts (``kd_loss`` None when ``kd_weight`` is 0, ``answer_loss`` None without an
    answer head)."""

    loss: torch.Tensor
    kd_loss: torch.Tensor | None
    ce_loss: torch.Tensor
    response_tokens: torch.Tensor
    answer_loss: torch.Tensor | None = None


def vg_align_loss(model, inputs: dict, settings: DistillationSettings, *, kd_weight: float = 1.0,
                  ce_weight: float = 0.0, answer_head_weight: float = 0.0,
                  shares: Mapping[str, torch.Tensor] | None = None) -> VGAlignLoss:
    """``kd_weight * KD + ce_weight * CE (+ answer_head_weight * answer-head CE)`` of one [`VGAlignCollator`]
    batch; ``model`` may be wrapped.

    KD and CE are means over the batch's response tokens, the answer-head CE a mean over its samples; ``shares``
    (``{"tokens": ..., "samples": ...}``, from [`LossPartsTrainer.item_shares`]) scales each in the total, so that
    an optimizer step's sum is the mean over all its tokens and samples. The returned parts stay unscaled.

    The teacher is the same ``model`` on the visual batch, without gradients and with adapters disabled (or the
    cached top-k, when the batch carries it); the student is ``model`` on the audio batch. Logits exist only at
    the response positions. The CE is always returned for logging (computed without a graph when its weight is 0).
    With ``answer_head_weight`` the model carries an [`AnswerHead`], which reads the student pass's own encoder
    states.
    """
    mask = inputs["response_mask"]
    kd = teacher = None
    if kd_weight > 0:
        if "teacher_topk_logprobs" in inputs:
            teacher = cached_teacher(inputs, settings.temperature)
        else:
            teacher = teacher_targets(model, inputs["teacher"], inputs["teacher_positions"], settings)
    labels = inputs["response_ids"].masked_fill(~mask, -100)
    recorder = _AudioStatesRecorder(unwrap(model).audio_tower) if answer_head_weight > 0 else None
    try:
        if teacher is not None:
            kd, ce, outputs = student_distillation(
                model, inputs["student"], inputs["student_positions"], mask, teacher, settings,
                response_ids=inputs["response_ids"] if ce_weight > 0 else None,
            )  # fmt: skip
        else:
            outputs, ce = model(**inputs["student"], logits_to_keep=inputs["student_positions"], use_cache=False), None
    finally:
        if recorder is not None:
            recorder.close()
    if ce is None:
        trains_ce = ce_weight > 0
        with torch.set_grad_enabled(torch.is_grad_enabled() and trains_ce):
            logits = outputs.logits if trains_ce else outputs.logits.detach()
            ce = response_cross_entropy(logits, labels, chunk_size=settings.loss_chunk_size)
    token_share = 1.0 if shares is None else shares["tokens"]
    loss = ce_weight * token_share * ce if ce_weight > 0 else 0.0
    if kd is not None:
        loss = loss + kd_weight * token_share * kd
    answer = None
    if recorder is not None:
        answer = _answer_head_loss(unwrap(model), recorder.states, inputs)
        loss = loss + answer_head_weight * (1.0 if shares is None else shares["samples"]) * answer
    return VGAlignLoss(loss, kd, ce, mask.sum(), answer)


def _answer_head_loss(model, states: torch.Tensor | None, inputs: dict) -> torch.Tensor:
    head = getattr(model, AnswerHead.ATTRIBUTE, None)
    if head is None or states is None or "prompt_indices" not in inputs:
        raise ValueError("answer_head_weight > 0 needs a model with an answer head (attach_answer_head), audio input "
                         "and batches of VGAlignDataset items (their prompt_index)")
    student = inputs["student"]
    pooled = pool_audio_states(
        states, student.get("feature_attention_mask"), student["input_ids"], model.config.audio_bos_token_id
    )
    return head.loss(pooled, inputs["prompt_indices"], inputs["response_ids"][:, 0])


# ---------------------------------------------------------------------------------------------------- answer head
class AnswerHead(torch.nn.Module):
    """A temporary classifier from the mean-pooled audio-encoder states to the teacher's answer to each prompt.

    A random audio encoder learns slowly when its only signal comes back through the frozen LLM and a projector
    that is itself still random (the demo measured a plateau of about twenty epochs). The head gives the encoder a
    short path to the same teacher: its classes are the first response tokens the teacher gave to each prompt on the
    training clips (for short-answer prompts, the answers themselves), and a prompt's logits are restricted to the
    answers seen for that prompt. No label other than the teacher's own responses is used. Built by
    [`AnswerHead.from_dataset`]; attached to the model as ``vg_align_answer_head`` for training and removed before
    the final save.
    """

    ATTRIBUTE = "vg_align_answer_head"

    def __init__(self, audio_width: int, answer_ids: Sequence[int], allowed: torch.Tensor):
        super().__init__()
        self.classifier = torch.nn.Linear(audio_width, len(answer_ids))
        self.register_buffer("answer_ids", torch.tensor(list(answer_ids), dtype=torch.long), persistent=False)
        self.register_buffer("allowed", allowed.bool(), persistent=False)  # (num_prompts, num_answers)

    @classmethod
    def from_dataset(cls, dataset: VGAlignDataset, audio_width: int) -> AnswerHead:
        """The head whose classes are the first response tokens of ``dataset`` (responses must be known)."""
        firsts = []
        for example in dataset.examples:
            if dataset.cache is not None:
                response = dataset.cache[example.cache_key].response_ids.tolist()
            else:
                response = (dataset.responses or {}).get(example.key)
            if not response:
                raise ValueError(f"answer head: example {example.key} has no response to learn from")
            firsts.append((example.prompt_index, int(response[0])))
        answer_ids = sorted({token for _, token in firsts})
        column = {token: index for index, token in enumerate(answer_ids)}
        allowed = torch.zeros(len(dataset.prompts), len(answer_ids), dtype=torch.bool)
        for prompt_index, token in firsts:
            allowed[prompt_index, column[token]] = True
        return cls(audio_width, answer_ids, allowed)

    def forward(self, pooled: torch.Tensor, prompt_indices: torch.Tensor) -> torch.Tensor:
        """``(B, num_answers)`` logits, ``-inf`` for answers never given to the row's prompt."""
        logits = self.classifier(pooled.to(self.classifier.weight.dtype)).float()
        return logits.masked_fill(~self.allowed[prompt_indices], float("-inf"))

    def loss(self, pooled: torch.Tensor, prompt_indices: torch.Tensor, first_tokens: torch.Tensor) -> torch.Tensor:
        """Cross-entropy on the teacher's answers; answers outside the head's classes (unseen in training) are
        skipped."""
        matches = first_tokens[:, None] == self.answer_ids[None, :]
        targets = torch.where(matches.any(-1), matches.float().argmax(-1), -100)
        if not (targets >= 0).any():
            return pooled.sum() * 0.0  # keeps the graph (and DDP's gradient sync) intact
        return torch.nn.functional.cross_entropy(self(pooled, prompt_indices), targets, ignore_index=-100)


def pool_audio_states(states: torch.Tensor, feature_attention_mask: torch.Tensor | None, input_ids: torch.Tensor,
                      audio_bos_token_id: int) -> torch.Tensor:
    """Mean of each sample's audio-encoder states over its valid frames, across all its windows: ``(B, width)``.

    ``states`` is ``(num_windows, frames, width)`` (windows in batch order); a sample's windows are counted by its
    ``<|audio_bos|>`` tokens (one per window).
    """
    frames = states.shape[1]
    if feature_attention_mask is None:
        valid = torch.full((states.shape[0],), frames, device=states.device)
    else:
        valid = num_encoder_frames(feature_attention_mask.sum(-1)).clamp(1, frames)
    keep = (torch.arange(frames, device=states.device)[None, :] < valid[:, None]).to(states.dtype)
    sums, counts = (states * keep[..., None]).sum(1), keep.sum(1)
    windows = (input_ids == audio_bos_token_id).sum(-1)
    if int(windows.sum()) != states.shape[0]:
        raise ValueError(f"{states.shape[0]} audio windows but {int(windows.sum())} <|audio_bos|> tokens in the batch")
    owner = torch.repeat_interleave(torch.arange(len(windows), device=states.device), windows.to(states.device))
    pooled = torch.zeros(len(windows), states.shape[-1], device=states.device, dtype=states.dtype)
    total = torch.zeros(len(windows), device=states.device, dtype=states.dtype)
    pooled.index_add_(0, owner, sums)
    total.index_add_(0, owner, counts)
    return pooled / total.clamp(min=1)[:, None]


class _AudioStatesRecorder:
    """Keeps the audio tower's last output during a forward (the student's encoder states, for the answer head),
    so the encoder does not run twice."""

    def __init__(self, audio_tower: torch.nn.Module):
        self.states = None
        self._handle = audio_tower.register_forward_hook(self._keep)

    def _keep(self, module, args, output):
        self.states = output.last_hidden_state if hasattr(output, "last_hidden_state") else output[0]

    def close(self) -> None:
        self._handle.remove()


def attach_answer_head(model, dataset: VGAlignDataset) -> AnswerHead:
    """Build the answer head for ``dataset`` and attach it to ``model`` (trainable, on the model's device)."""
    head = AnswerHead.from_dataset(dataset, model.config.audio_config.d_model)
    head.to(next(model.audio_projector.parameters()).device)
    setattr(model, AnswerHead.ATTRIBUTE, head)
    return head


def detach_answer_head(model) -> None:
    """Remove the answer head (before saving the trained model)."""
    if hasattr(model, AnswerHead.ATTRIBUTE):
        delattr(model, AnswerHead.ATTRIBUTE)


# ---------------------------------------------------------------------------------------------------- trainer
class VGAlignTrainer(LossPartsTrainer):
    """The Stage 1 Trainer: [`vg_align_loss`] per batch, its parts logged (``kd_loss``, ``ce_loss``,
    ``response_tokens``: teacher and student score the same response tokens), evaluation by loss only.

    Teacher and student are the one ``model`` the Trainer holds (and wraps for DDP/FSDP/DeepSpeed): no copy.
    ``args`` is a [`VGAlignConfig`]; pass ``data_collator=VGAlignCollator(processor)``.
    """

    def __init__(self, model=None, args: VGAlignConfig | None = None, **kwargs):
        super().__init__(model=model, args=args, **kwargs)
        self.model_accepts_loss_kwargs = False  # the model is never given labels: compute_loss weighs the parts

    def count_loss_items(self, batch: dict) -> dict[str, torch.Tensor]:
        """Response tokens (KD, CE) and samples (the answer head's CE)."""
        mask = batch["response_mask"]
        return {"tokens": mask.sum(), "samples": torch.tensor(mask.shape[0], device=mask.device)}

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        parts = vg_align_loss(
            model, inputs, self.args.distillation, kd_weight=self.args.kd_weight, ce_weight=self.args.ce_weight,
            answer_head_weight=self.args.answer_head_weight, shares=self.item_shares(inputs, num_items_in_batch),
        )  # fmt: skip
        self.record_loss_parts(kd_loss=parts.kd_loss, ce_loss=parts.ce_loss, response_tokens=parts.response_tokens,
                               answer_loss=parts.answer_loss)
        return (parts.loss, parts) if return_outputs else parts.loss

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        """The loss only: no full-vocabulary logits are gathered across the eval set."""
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad(), self.compute_loss_context_manager():
            loss = self.compute_loss(model, inputs)
        return loss.detach(), None, None

    def floating_point_ops(self, inputs) -> int:
        # the Trainer's estimate looks for `input_ids` at the top level; here it sits inside the student batch
        return 6 * inputs["student"]["input_ids"].numel() * unwrap(self.model).num_parameters(exclude_embeddings=True)


# ---------------------------------------------------------------------------------------------------- end to end
def stage1_dataset(records: Sequence[ClipRecord], processor, config, *, cache: TeacherCache | None = None):
    """A [`VGAlignDataset`] of ``records`` as ``config`` describes it: captions as responses for
    ``response_source="caption"``; with ``cache``, responses and teacher targets from it and no frames decoded."""
    responses = None
    if cache is None and config.response_source == "caption":
        examples = pair_clips_with_prompts(records, len(config.prompts), config.prompts_per_clip)
        responses = caption_responses(records, examples, processor.tokenizer, config.max_completion_length,
                                      media_token_ids(processor))
    return VGAlignDataset(
        records,
        config.prompts,
        prompts_per_clip=config.prompts_per_clip,
        responses=responses,
        cache=cache,
        num_frames=config.num_frames,
        sampling_rate=processor.feature_extractor.sampling_rate,
        frame_multiple=processor.frame_multiple,
        decode_picture=cache is None,
        keep_in_memory=config.keep_clips_in_memory,
    )


def build_datasets(model, processor, config) -> tuple[VGAlignDataset, VGAlignDataset | None]:
    """The train (and eval) datasets of a config, with their responses: from the teacher cache (built here first
    when ``teacher_cache_dir`` has none), from captions, or generated by the teacher and kept in memory.

    In a multi-process run all processes build a missing or unfinished cache together ([`build_teacher_cache`]);
    generated responses are split across processes and gathered.
    """
    from accelerate import PartialState
    from accelerate.utils import broadcast_object_list, gather_object

    state = PartialState()
    sources = [config.train_data] + ([config.eval_data] if config.eval_data else [])
    records = [read_clips(source).records for source in sources]
    if config.teacher_cache_dir:
        fingerprint = teacher_fingerprint(model, processor, config)
        # decided once, on the main process: every process must take part in the build or none
        [build] = broadcast_object_list([not cache_is_complete(config.teacher_cache_dir)])
        if build:
            model.to(state.device)
            sets = [stage1_dataset(clips, processor, config) for clips in records]
            build_teacher_cache(model, processor, sets, config, fingerprint, progress=not config.disable_tqdm)
        cache = open_teacher_cache(config, fingerprint)
        built = [stage1_dataset(clips, processor, config, cache=cache) for clips in records]
    else:
        built = [stage1_dataset(clips, processor, config) for clips in records]
    if config.response_source == "teacher" and not config.teacher_cache_dir:
        model.to(state.device)
        for dataset in built:
            shard = Subset(dataset, list(range(state.process_index, len(dataset), state.num_processes)))
            generated = generate_responses(
                model, processor, shard, max_new_tokens=config.max_completion_length,
                batch_size=config.teacher_batch_size, generation_kwargs=config.teacher_generation_kwargs,
                system_prompt=config.system_prompt, num_workers=config.dataloader_num_workers,
            )  # fmt: skip
            if state.num_processes > 1:
                generated = dict(gather_object(list(generated.items())))
            dataset.responses = generated
    return built[0], (built[1] if len(built) > 1 else None)


def prepare_trainable_model(model, config):
    """Freeze all but the Stage 1 trainable set (+ LoRA); returns ``(model or PeftModel, counts)``.

    The projector and the audio delimiters (and the audio encoder with ``train_audio_encoder``) train in full; with
    ``lora_r > 0`` they become peft ``modules_to_save`` next to LoRA adapters on the LLM (``lora_target_modules``).
    """
    report = model.set_trainable(
        "vg_align", train_audio_encoder=config.train_audio_encoder, train_audio_delimiters=config.train_audio_delimiters
    )
    return finish_trainable_setup(model, config, report["modules"])


def save_final_model(trainer: VGAlignTrainer, processor, output_dir: str) -> None:
    """Save the trained model + processor to ``output_dir`` (loadable with AutoModel/AutoProcessor).

    With LoRA, the adapter (with the fully trained modules) goes to ``output_dir/adapter`` and the merged model to
    ``output_dir``; under FSDP/DeepSpeed only the adapter is written (merge it offline with ``merge_and_unload``).
    Everything is written to a staging folder first and then moved in with [`publish_staged_folder`]: a process
    killed while saving leaves no folder that looks complete.
    """
    staging = Path(output_dir) / STAGING_FOLDER
    if trainer.args.should_save and staging.exists():  # what a killed save left
        shutil.rmtree(staging)
    trainer.accelerator.wait_for_everyone()
    _save_trained_model(trainer, processor, str(staging))
    trainer.accelerator.wait_for_everyone()
    if trainer.args.should_save:
        publish_staged_folder(staging, output_dir)


def _save_trained_model(trainer: VGAlignTrainer, processor, output_dir: str) -> None:
    from peft import PeftModel

    model = peft_or_model(trainer.model)
    if not isinstance(model, PeftModel):
        trainer.save_model(output_dir)
        return
    adapter_dir = str(Path(output_dir) / "adapter")
    trainer.save_model(adapter_dir)
    if trainer.is_fsdp_enabled or trainer.is_deepspeed_enabled:
        logger.warning("sharded training: saved only the LoRA adapter (adapter/); merge it with merge_and_unload")
        return
    if trainer.args.should_save:
        merged = model.merge_and_unload()
        merged.save_pretrained(output_dir)
        processor.save_pretrained(output_dir)


def train_from_config(config: VGAlignConfig) -> str:
    """Run Stage 1 end to end: load, responses/cache, trainable set (+ LoRA), train, save. Returns ``output_dir``.

    ``resume_from_checkpoint`` may be a checkpoint path, or ``last``/``true`` for the newest one in ``output_dir``.
    """
    from transformers import set_seed

    start = time.perf_counter()
    set_seed(config.seed)
    model, processor = load_model_and_processor(config)
    train_set, eval_set = build_datasets(model, processor, config)
    model, counts = prepare_trainable_model(model, config)
    if config.answer_head_weight > 0:
        attach_answer_head(model, train_set)
    trainer = VGAlignTrainer(
        model=model,
        args=config,
        train_dataset=train_set,
        eval_dataset=eval_set,
        data_collator=VGAlignCollator(processor, config.system_prompt),
        processing_class=processor,
    )
    main = trainer.is_world_process_zero()
    if main:
        share = 100 * counts["trainable"] / max(counts["total"], 1)
        print(f"VG-Align: trainable params {counts['trainable']:,} of {counts['total']:,} ({share:.4f}%); "
              f"{len(train_set)} training examples ({len(train_set.records)} clips x prompts) on "
              f"{config.world_size} process{'es' if config.world_size > 1 else ''}"
              + (", teacher from cache" if train_set.cache is not None else ""))
    result = trainer.train(resume_from_checkpoint=checkpoint_to_resume(config.resume_from_checkpoint, config.output_dir))
    detach_answer_head(unwrap(trainer.model))
    save_final_model(trainer, processor, config.output_dir)
    if main:
        print(f"VG-Align done in {time.perf_counter() - start:.1f}s: {trainer.state.global_step} steps, "
              f"train_loss {result.training_loss:.4f}; saved to {config.output_dir}")
    return config.output_dir


CONFIG_CLASS = VGAlignConfig

__all__ = [
    "AnswerHead",
    "CONFIG_CLASS",
    "DEFAULT_PROMPTS",
    "Stage1Example",
    "VGAlignCollator",
    "VGAlignConfig",
    "VGAlignDataset",
    "VGAlignLoss",
    "VGAlignTrainer",
    "attach_answer_head",
    "build_datasets",
    "build_teacher_cache",
    "caption_responses",
    "detach_answer_head",
    "encode_path_batch",
    "generate_responses",
    "load_model_and_processor",
    "media_token_ids",
    "open_teacher_cache",
    "pair_clips_with_prompts",
    "pool_audio_states",
    "prepare_trainable_model",
    "save_final_model",
    "stage1_dataset",
    "teacher_fingerprint",
    "train_from_config",
    "vg_align_loss",
]
