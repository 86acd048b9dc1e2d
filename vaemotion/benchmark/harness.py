"""The ArtEmoBenchmark harness: score a model (ours or a baseline) on the same items in every modality config.

**Multiple choice, by option log-likelihood.** Each item's prompt (its media, the question and the listed options)
is run once (one prefill, ``use_cache=True``); the KV cache is then expanded to one row per option and every
option's tokens are scored as the continuation of that cached prefix, all options of a batch in a single step.
An option's tokens are its text followed by the end-of-turn token (so the score is that of *exactly* this answer),
and the harness records, per option,

- ``sum``: the summed log-probability of its tokens, ``log P(option | prompt)`` (**the primary score**), and
- ``mean``: the same divided by its token count (length-normalised; reported as ``*_acc_norm``).

The prediction is the argmax (ties go to the first option). No text is generated or parsed, and no judge is used.

**Emotion, per clip.** Valence, arousal and the emotion category are predicted once per clip and config, from one
fixed prompt, the same in every config (only the media differ): :data:`EMOTION_PROMPT`, the category question with
the eight ArtEmis labels as options. Models with emotion heads (VAEmotion) give them from that prompt's prefill,
read at its last token. Models without heads answer it and two more label-word questions (scored like the items,
with the probabilities a softmax over the options' summed log-probabilities):

- category: :data:`EMOTION_PROMPT`, probabilities over the 8 ArtEmis emotion words;
- valence: ``negative / neutral / positive`` mapped to ``-1 / 0 / +1``, valence = the probability-weighted mean;
- arousal: ``calm / neutral / excited`` mapped to ``-1 / 0 / +1``, likewise.

Emotion metrics are computed over clips, each clip once, with the labels of its first item that carries them
(valence and arousal together for the VA metrics, ``emotion`` for the category F1): a clip with two items neither
counts twice nor gets two predictions. Every item line of ``predictions.jsonl`` carries its clip's prediction.

**Outputs** (:func:`write_report`): ``results.json`` (per model and config: accuracies, VA CCC/Pearson/RMSE and
quadrant accuracy, category macro/weighted F1, counts, chance levels), ``results.md`` (a table),
``results.png`` (a plot) and ``predictions.jsonl`` (one line per item and config, for error analysis).

>>> item_prompt("which emotion does this clip show?", ["awe", "fear"])
'which emotion does this clip show?\\nOptions: awe; fear.\\nAnswer with one of the options.'
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ..configuration_vaemotion import ARTEMIS_EMOTIONS
from ..training.data import ClipDataset, ClipRecord, collate_encoded
from .artemo import CONFIG_NAMES, NO_EMOTION, load_artemo
from .baselines import CONFIG_PATHS, ModelAdapter, adapter_for, load_adapter
from .functional import accuracy_by, f1_scores, valence_arousal_metrics

__all__ = [
    "AROUSAL_WORDS",
    "EMOTION_PROMPT",
    "EMOTION_QUESTIONS",
    "VALENCE_WORDS",
    "OptionScores",
    "evaluate_adapter",
    "evaluate_checkpoints",
    "evaluate_model",
    "item_prompt",
    "markdown_table",
    "read_emotions",
    "score_options",
    "write_report",
]

# Label words of models without emotion heads, each mapped to its value on the dimension.
VALENCE_WORDS = {"negative": -1.0, "neutral": 0.0, "positive": 1.0}
AROUSAL_WORDS = {"calm": -1.0, "neutral": 0.0, "excited": 1.0}
EMOTION_QUESTIONS = {
    "category": ("which emotion does this clip evoke?", tuple(ARTEMIS_EMOTIONS)),
    "valence": ("is the mood of this clip negative, neutral or positive?", tuple(VALENCE_WORDS)),
    "arousal": ("is the energy of this clip calm, neutral or excited?", tuple(AROUSAL_WORDS)),
}
# Decoded clips kept per config: the items of a clip are usually adjacent, so a few suffice.
DECODED_CLIPS_KEPT = 32
# Table columns with a chance level (the length-normalised accuracies share their plain one's).
_CHANCE_COLUMNS = frozenset({"content_acc", "content_acc_norm", "emotion_acc", "emotion_acc_norm", "quadrant_accuracy"})
TABLE_COLUMNS = (
    ("content acc", "content_acc"),
    ("content acc (norm)", "content_acc_norm"),
    ("emotion acc", "emotion_acc"),
    ("emotion acc (norm)", "emotion_acc_norm"),
    ("V CCC", "valence_ccc"),
    ("A CCC", "arousal_ccc"),
    ("V RMSE", "valence_rmse"),
    ("A RMSE", "arousal_rmse"),
    ("quadrant acc", "quadrant_accuracy"),
    ("category macro-F1", "category_macro_f1"),
    ("category weighted-F1", "category_weighted_f1"),
    ("category UAR", "category_uar"),
    ("MER score", "mer_score"),
)


def item_prompt(question: str, options: Sequence[str]) -> str:
    """The user text of a multiple-choice item: the question, the options, and how to answer."""
    return f"{question}\nOptions: {'; '.join(options)}.\nAnswer with one of the options."


# The one prompt each clip's emotion is read from, in every config (see the module docstring).
EMOTION_PROMPT = item_prompt(*EMOTION_QUESTIONS["category"])


# ---------------------------------------------------------------------------------------------------- scoring
@dataclass
class OptionScores:
    """Log-likelihood scores of one query's options, and the emotion the prefill predicted (heads only)."""

    sums: list[float]
    num_tokens: list[int]
    emotion: dict | None = None

    @property
    def means(self) -> list[float]:
        return [total / count for total, count in zip(self.sums, self.num_tokens)]

    @property
    def predicted(self) -> int:
        return int(np.argmax(self.sums))

    @property
    def predicted_norm(self) -> int:
        return int(np.argmax(self.means))


@torch.no_grad()
def score_options(
    adapter: ModelAdapter, encodings: Sequence[dict], options: Sequence[Sequence[str]]
) -> list[OptionScores]:
    """Score every option of a batch of prompts: one prefill, then all options from the cached prefix at once.

    ``encodings`` are unpadded single-prompt encodings (``adapter.encode``); ``options[i]`` are prompt i's options.
    The prompts are left-padded so every row ends at the same column; the cache rows are repeated once per option;
    the options (right-padded) continue each row's positions. The log-probability of an option's first token
    comes from the prefill's last logits, the others from the continuation step.
    """
    batch, positions, prefill = _prefill(adapter, encodings)
    option_ids = [[adapter.option_ids(option) for option in item] for item in options]
    rows = torch.tensor([row for row, item in enumerate(option_ids) for _ in item], device=adapter.device)
    tokens, token_mask = _right_padded([ids for item in option_ids for ids in item], adapter.pad_token_id)
    tokens, token_mask = tokens.to(adapter.device), token_mask.to(adapter.device)

    cache = prefill.cache
    cache.batch_select_indices(rows)  # one copy of each prompt's cache per option
    # the last token of each option predicts nothing we score: feed all but it
    continuation = adapter.forward(
        {
            "input_ids": tokens[:, :-1],
            "attention_mask": torch.cat([batch["attention_mask"][rows], token_mask[:, :-1]], dim=1),
            "position_ids": _continued_positions(positions, rows, tokens.shape[1] - 1),
        },
        cache=cache,
    )
    # logits predicting token j: the prefill's last logits for j = 0, the continuation's step j - 1 after that
    logits = torch.cat([prefill.logits[:, -1:][rows], continuation.logits], dim=1).float()
    token_logprobs = logits.gather(-1, tokens[..., None]).squeeze(-1) - logits.logsumexp(-1)
    sums = (token_logprobs * token_mask).sum(-1).tolist()
    counts = token_mask.sum(-1).tolist()

    results, start = [], 0
    for row, item in enumerate(option_ids):
        stop = start + len(item)
        emotion = None
        if prefill.emotion is not None:
            emotion = {key: value[row].tolist() for key, value in prefill.emotion.items()}
        results.append(OptionScores(sums[start:stop], [int(n) for n in counts[start:stop]], emotion))
        start = stop
    return results


def _prefill(adapter: ModelAdapter, encodings: Sequence[dict]):
    """One batched prefill of left-padded prompts (every row ends at the last column): batch, positions, output."""
    batch = {
        key: value.to(adapter.device) for key, value in collate_encoded(encodings, adapter.pad_token_id, "left").items()
    }
    positions = adapter.position_ids(batch)
    return batch, positions, adapter.forward({**batch, "position_ids": positions}, logits_to_keep=1)


@torch.no_grad()
def read_emotions(adapter: ModelAdapter, encodings: Sequence[dict]) -> list[dict]:
    """What a model's emotion heads read at the end of each prompt: one batched prefill, no option scored."""
    _, _, prefill = _prefill(adapter, encodings)
    if prefill.emotion is None:
        raise ValueError(f"{adapter.name} has no emotion heads: ask it label-word questions instead")
    return [{key: value[row].tolist() for key, value in prefill.emotion.items()} for row in range(len(encodings))]


def _right_padded(sequences: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    length = max(len(ids) for ids in sequences)
    tokens = torch.full((len(sequences), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), length), dtype=torch.long)
    for row, ids in enumerate(sequences):
        tokens[row, : len(ids)] = torch.tensor(ids)
        mask[row, : len(ids)] = 1
    return tokens, mask


def _continued_positions(prompt_positions: torch.Tensor, rows: torch.Tensor, length: int) -> torch.Tensor:
    """Positions of ``length`` text tokens after each selected row's prompt (1D ``(B, L)`` or mrope ``(3, B, L)``).

    Prompts are left-padded, so the last column holds each row's last prompt token (text, whose mrope components
    are equal); text positions then advance by one per token.
    """
    following = prompt_positions[..., -1:].index_select(-2, rows) + 1
    return following + torch.arange(length, device=following.device)


# ---------------------------------------------------------------------------------------------------- items
@dataclass(frozen=True)
class Query:
    """One scored prompt: which clip (row index of the config's dataset), the prompt text and its options."""

    clip_row: int
    prompt: str
    options: tuple[str, ...]


def _clip_record(row: dict) -> ClipRecord:
    """The builder row's media as a clip; a video's own track is left to be decoded with its frames."""
    video = (row.get("video") or {}).get("path")
    image = (row.get("image") or {}).get("path")
    audio = (row.get("audio") or {}).get("path")
    if audio is not None and audio == video:
        audio = None
    return ClipRecord(id=row["clip_id"], video=video, image=image, audio=audio)


def _clip_decoder(dataset, config_name: str, num_frames: int, frame_multiple: int):
    """A cached ``row index -> DecodedClip`` for one config (only the config's media are decoded)."""
    path = CONFIG_PATHS[config_name]
    clips = ClipDataset(
        [_clip_record(row) for row in dataset],
        num_frames=num_frames,
        decode_picture=path != "audio",
        decode_audio=path != "visual",
        frame_multiple=frame_multiple,
    )
    by_clip = {}  # rows of one clip decode once
    first_row = [by_clip.setdefault(row["clip_id"], index) for index, row in enumerate(dataset)]
    decode = lru_cache(maxsize=DECODED_CLIPS_KEPT)(clips.__getitem__)
    return lambda row_index: decode(first_row[row_index])


def _batches(items: Sequence, size: int) -> Iterator[Sequence]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _run_queries(adapter, queries: list[Query], decode, config_name, batch_size, progress: tqdm) -> list[OptionScores]:
    scores = []
    for batch in _batches(queries, batch_size):
        encodings = [adapter.encode(decode(query.clip_row), config_name, query.prompt) for query in batch]
        scores += score_options(adapter, encodings, [query.options for query in batch])
        progress.update(len(batch))
    return scores


def _word_emotion(category: OptionScores, valence: OptionScores, arousal: OptionScores) -> dict:
    """Emotion of a model without heads from its label-word scores (see the module docstring)."""

    def softmax(scores: OptionScores) -> np.ndarray:
        values = np.asarray(scores.sums)
        weights = np.exp(values - values.max())
        return weights / weights.sum()

    return {
        "valence": float(softmax(valence) @ np.asarray(list(VALENCE_WORDS.values()))),
        "arousal": float(softmax(arousal) @ np.asarray(list(AROUSAL_WORDS.values()))),
        "probabilities": softmax(category).tolist(),
    }


def _has_emotion_label(row: dict) -> bool:
    return row["valence"] is not None or row["arousal"] is not None or row["emotion"] != NO_EMOTION


def _clip_emotions(adapter, rows, decode, config_name, batch_size, progress: tqdm, emotion_rows) -> dict[str, dict]:
    """``{clip_id: emotion}`` from the fixed emotion prompt(s) of each clip in ``emotion_rows`` (row indices)."""
    if adapter.emotion_source == "heads":
        emotions = {}
        for batch in _batches(emotion_rows, batch_size):
            encodings = [adapter.encode(decode(index), config_name, EMOTION_PROMPT) for index in batch]
            emotions.update(zip((rows[index]["clip_id"] for index in batch), read_emotions(adapter, encodings)))
            progress.update(len(batch))
        return emotions
    queries = [
        Query(index, item_prompt(question, words), words)
        for index in emotion_rows
        for question, words in EMOTION_QUESTIONS.values()
    ]
    scores = _run_queries(adapter, queries, decode, config_name, batch_size, progress)
    per_clip = len(EMOTION_QUESTIONS)
    return {
        rows[index]["clip_id"]: _word_emotion(*scores[position * per_clip : (position + 1) * per_clip])
        for position, index in enumerate(emotion_rows)
    }


def _prediction(model_name: str, config_name: str, row: dict, scores: OptionScores, emotion: dict | None) -> dict:
    """One line of predictions.jsonl."""
    line = {
        "model": model_name,
        "config": config_name,
        "id": row["id"],
        "clip_id": row["clip_id"],
        "task": row["task"],
        "question": row["question"],
        "options": list(row["options"]),
        "answer": row["answer"],
        "option_logprobs": scores.sums,
        "option_num_tokens": scores.num_tokens,
        "predicted": scores.predicted,
        "predicted_norm": scores.predicted_norm,
        "correct": scores.predicted == row["answer"],
        "correct_norm": scores.predicted_norm == row["answer"],
        "valence_ref": row["valence"],
        "arousal_ref": row["arousal"],
        "emotion_ref": None if row["emotion"] == NO_EMOTION else ARTEMIS_EMOTIONS[row["emotion"]],
        "valence_pred": None,
        "arousal_pred": None,
        "emotion_pred": None,
        "emotion_probabilities": None,
    }
    if emotion is not None:
        probabilities = emotion["probabilities"]
        line.update(
            valence_pred=emotion["valence"],
            arousal_pred=emotion["arousal"],
            emotion_pred=ARTEMIS_EMOTIONS[int(np.argmax(probabilities))],
            emotion_probabilities=dict(zip(ARTEMIS_EMOTIONS, probabilities)),
        )
    return line


def _evaluate_config(adapter, dataset, config_name, *, batch_size, num_frames, progress, emotions=True) -> list[dict]:
    # VAEmotion's processor knows its family's frame multiple; a baseline's video processor says it as its patch size
    frame_multiple = getattr(adapter.processor, "frame_multiple", None) or getattr(
        getattr(adapter.processor, "video_processor", None), "temporal_patch_size", 1
    )
    decode = _clip_decoder(dataset, config_name, num_frames, frame_multiple)
    rows = list(dataset)
    item_queries = [
        Query(index, item_prompt(row["question"], row["options"]), tuple(row["options"]))
        for index, row in enumerate(rows)
    ]
    clip_rows = {}  # the first row of each clip that carries an emotion label
    for index, row in enumerate(rows):
        if emotions and _has_emotion_label(row):
            clip_rows.setdefault(row["clip_id"], index)
    emotion_rows = list(clip_rows.values())
    prompts_per_clip = 1 if adapter.emotion_source == "heads" else len(EMOTION_QUESTIONS)

    with tqdm(
        total=len(item_queries) + prompts_per_clip * len(emotion_rows),
        desc=f"{adapter.name} {config_name}",
        unit="prompt",
        disable=not progress,
    ) as bar:
        item_scores = _run_queries(adapter, item_queries, decode, config_name, batch_size, bar)
        clip_emotions = _clip_emotions(adapter, rows, decode, config_name, batch_size, bar, emotion_rows)
    return [
        _prediction(adapter.name, config_name, row, scores, clip_emotions.get(row["clip_id"]))
        for row, scores in zip(rows, item_scores)
    ]


# ---------------------------------------------------------------------------------------------------- metrics
def config_metrics(predictions: Sequence[dict], config_name: str) -> dict:
    """Metrics of one model on one config from its predictions.jsonl lines (``None`` where no item qualifies)."""
    tasks = [line["task"] for line in predictions]
    modality = [config_name] * len(predictions)
    accuracy = accuracy_by(tasks, modality, [line["correct"] for line in predictions])
    accuracy_norm = accuracy_by(tasks, modality, [line["correct_norm"] for line in predictions])
    metrics = {
        "supported": True,
        "accuracy": accuracy["accuracy"],
        "accuracy_norm": accuracy_norm["accuracy"],
    }
    for task in ("content", "emotion"):
        metrics[f"{task}_acc"] = accuracy["by_task"].get(task)
        metrics[f"{task}_acc_norm"] = accuracy_norm["by_task"].get(task)

    va = _first_per_clip(line for line in predictions if line["valence_ref"] is not None
                         and line["arousal_ref"] is not None and line["valence_pred"] is not None)  # fmt: skip
    va_metrics = dict.fromkeys(
        ("valence_ccc", "valence_pearson", "valence_rmse", "arousal_ccc", "arousal_pearson", "arousal_rmse",
         "mean_ccc", "quadrant_accuracy")
    )  # fmt: skip
    if va:
        va_metrics = valence_arousal_metrics(
            *([line[key] for line in va] for key in ("valence_pred", "arousal_pred", "valence_ref", "arousal_ref"))
        )
    metrics.update(va_metrics)

    labelled = _first_per_clip(line for line in predictions if line["emotion_ref"] is not None
                               and line["emotion_pred"] is not None)  # fmt: skip
    category = dict.fromkeys(("accuracy", "macro_f1", "weighted_f1", "uar", "war"))
    if labelled:
        category = f1_scores(
            [ARTEMIS_EMOTIONS.index(line["emotion_pred"]) for line in labelled],
            [ARTEMIS_EMOTIONS.index(line["emotion_ref"]) for line in labelled],
            num_labels=len(ARTEMIS_EMOTIONS),
        )
    metrics.update(
        category_acc=category["accuracy"],
        category_macro_f1=category["macro_f1"],
        category_weighted_f1=category["weighted_f1"],
        category_uar=category["uar"],
        category_war=category["war"],
        # the MER challenges' combined score, WAF - 0.25 x valence MSE, each over the clips labelled for it
        mer_score=None if category["weighted_f1"] is None or not va else float(
            category["weighted_f1"] - 0.25 * metrics["valence_rmse"] ** 2
        ),
        counts={
            "items": len(predictions),
            "content": tasks.count("content"),
            "emotion": tasks.count("emotion"),
            "va_clips": len(va),
            "category_clips": len(labelled),
        },
        chance=chance_levels(predictions),
    )
    return metrics


def _first_per_clip(lines) -> list[dict]:
    """Each clip once: its first line (every line of a clip carries the clip's one emotion prediction)."""
    first = {}
    for line in lines:
        first.setdefault(line["clip_id"], line)
    return list(first.values())


def chance_levels(predictions: Sequence[dict]) -> dict:
    """Expected scores of uniform random guessing: 1/#options per item, 1/8 categories, 1/4 quadrants, CCC 0."""

    def mean_inverse_options(task: str) -> float | None:
        counts = [len(line["options"]) for line in predictions if line["task"] == task]
        return float(np.mean([1.0 / count for count in counts])) if counts else None

    return {
        "content_acc": mean_inverse_options("content"),
        "emotion_acc": mean_inverse_options("emotion"),
        "category_acc": 1.0 / len(ARTEMIS_EMOTIONS),
        "quadrant_accuracy": 0.25,
        "mean_ccc": 0.0,
    }


def _unsupported(adapter: ModelAdapter, config_name: str) -> dict:
    modalities = ", ".join(adapter.supported_configs)
    return {
        "supported": False,
        "reason": f"{type(adapter.model).__name__} does not take {config_name} input (it supports {modalities})",
    }


# ---------------------------------------------------------------------------------------------------- API
def evaluate_adapter(
    adapter: ModelAdapter,
    data_dir: str | os.PathLike,
    *,
    configs: Sequence[str] = CONFIG_NAMES,
    batch_size: int = 4,
    split: str = "test",
    num_frames: int = 8,
    limit: int | None = None,
    progress: bool = True,
    emotions: bool = True,
) -> dict:
    """Evaluate an adapter on every config; see :func:`evaluate_model` for the result."""
    unknown = [name for name in configs if name not in CONFIG_NAMES]
    if unknown:
        raise ValueError(f"unknown configs {unknown}; choose from {list(CONFIG_NAMES)}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    results = {
        "model": adapter.name,
        "model_type": adapter.model.config.model_type,
        "emotion_source": adapter.emotion_source,
        "configs": {},
    }
    predictions = []
    for config_name in configs:
        if not adapter.supports(config_name):
            results["configs"][config_name] = _unsupported(adapter, config_name)
            continue
        dataset = load_artemo(config_name, data_dir, split)
        if limit is not None:
            dataset = dataset.select(range(min(limit, len(dataset))))  # the same first items in every config
        lines = _evaluate_config(
            adapter, dataset, config_name, batch_size=batch_size, num_frames=num_frames, progress=progress,
            emotions=emotions,
        )  # fmt: skip
        results["configs"][config_name] = config_metrics(lines, config_name)
        predictions += lines
    results["predictions"] = predictions
    return results


def evaluate_model(
    model,
    processor,
    data_dir: str | os.PathLike,
    *,
    configs: Sequence[str] = CONFIG_NAMES,
    batch_size: int = 4,
    split: str = "test",
    num_frames: int = 8,
    limit: int | None = None,
    progress: bool = True,
    name: str | None = None,
    emotions: bool = True,
) -> dict:
    """Evaluate a loaded model (ours or a supported baseline) on ArtEmoBenchmark, in process.

    Returns ``{"model", "model_type", "emotion_source", "configs": {config: metrics}, "predictions": [...]}``; a
    config the model cannot take is ``{"supported": False, "reason": ...}``. Metric keys: ``accuracy``,
    ``content_acc``, ``emotion_acc`` (each also ``*_norm``), ``valence_ccc`` / ``_pearson`` / ``_rmse`` (and
    ``arousal_*``), ``mean_ccc``, ``quadrant_accuracy``, ``category_acc``, ``category_macro_f1``,
    ``category_weighted_f1`` (WAF), ``category_uar`` / ``category_war`` (unweighted / weighted average recall),
    ``mer_score`` (WAF - 0.25 x valence MSE), ``counts`` and ``chance``. ``emotions=False`` scores the items only
    (no per-clip emotion prompt; the valence, arousal and category metrics are ``None``).

    >>> results = evaluate_model(model, processor, "artemo_synth", configs=["audio_only"])  # doctest: +SKIP
    >>> results["configs"]["audio_only"]["emotion_acc"]  # doctest: +SKIP
    0.625
    """
    adapter = adapter_for(model, processor, name=name)
    return evaluate_adapter(
        adapter, data_dir, configs=configs, batch_size=batch_size, split=split, num_frames=num_frames, limit=limit,
        progress=progress, emotions=emotions,
    )  # fmt: skip


def evaluate_checkpoints(
    paths: Sequence[str | os.PathLike],
    data_dir: str | os.PathLike,
    *,
    dtype="auto",
    device: str | None = None,
    **kwargs,
) -> list[dict]:
    """Load and evaluate checkpoints one after the other (each freed before the next is loaded)."""
    results = []
    for path in paths:
        adapter = load_adapter(path, dtype=dtype, device=device)
        results.append(evaluate_adapter(adapter, data_dir, **kwargs))
        del adapter  # 7B models in a row: free one before the next loads
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    return results


# ---------------------------------------------------------------------------------------------------- report
def _as_list(results: dict | Sequence[dict]) -> list[dict]:
    return [results] if isinstance(results, dict) else list(results)


def _cell(value) -> str:
    if value is None:
        return "n/a"
    return "nan" if isinstance(value, float) and math.isnan(value) else f"{value:.3f}"


def markdown_table(results: dict | Sequence[dict]) -> str:
    """One row per model and config (``n/a``: unsupported or no labelled items), then chance rows.

    >>> line = markdown_table({"model": "m", "configs": {"audio_only": {"supported": False}}}).splitlines()[-1]
    >>> line.startswith("| m | audio_only | n/a |")
    True
    """
    header = ["model", "config", *(title for title, _ in TABLE_COLUMNS), "items"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    chance = {}
    for result in _as_list(results):
        for config_name, metrics in result["configs"].items():
            values = [_cell(metrics.get(key)) for _, key in TABLE_COLUMNS]
            count = metrics["counts"]["items"] if metrics.get("supported") else "n/a"
            lines.append("| " + " | ".join([result["model"], config_name, *values, str(count)]) + " |")
            if metrics.get("supported"):
                chance.setdefault(config_name, metrics["chance"])
    for config_name, levels in chance.items():
        values = [
            _cell(levels.get(key.removesuffix("_norm"))) if key in _CHANCE_COLUMNS else "" for _, key in TABLE_COLUMNS
        ]
        lines.append("| " + " | ".join(["chance", config_name, *values, ""]) + " |")
    return "\n".join(lines) + "\n"


_SCORING_NOTE = (
    "Multiple choice by option log-likelihood: `acc` uses the summed log-probability of each option's tokens "
    "(text + end of turn), `acc (norm)` the per-token mean. Emotion: {sources}. `n/a`: the model does not take "
    "this config's input, or no item carries the label.\n"
)


def write_report(results: dict | Sequence[dict], out_dir: str | os.PathLike) -> dict[str, str]:
    """Write ``results.json``, ``results.md``, ``results.png`` and ``predictions.jsonl`` for one or more models.

    ``results`` is what :func:`evaluate_model` returns, or a list of such results (one per model) for a comparison
    table. Returns the written paths by kind.
    """
    from .plotting import plot_results  # matplotlib only when a report is written

    results = _as_list(results)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {
        kind: out_dir / name
        for kind, name in (
            ("json", "results.json"),
            ("markdown", "results.md"),
            ("plot", "results.png"),
            ("predictions", "predictions.jsonl"),
        )
    }
    summaries = [{key: value for key, value in result.items() if key != "predictions"} for result in results]
    paths["json"].write_text(json.dumps({"models": summaries}, indent=2, allow_nan=True) + "\n", encoding="utf-8")
    sources = "; ".join(f"{result['model']}: {result['emotion_source'].replace('_', ' ')}" for result in results)
    paths["markdown"].write_text(
        "# ArtEmoBenchmark results\n\n" + markdown_table(results) + "\n" + _SCORING_NOTE.format(sources=sources),
        encoding="utf-8",
    )
    plot_results(results, paths["plot"])
    with paths["predictions"].open("w", encoding="utf-8") as handle:
        for result in results:
            for line in result.get("predictions", []):
                handle.write(json.dumps(line, ensure_ascii=False) + "\n")
    return {kind: str(path) for kind, path in paths.items()}
