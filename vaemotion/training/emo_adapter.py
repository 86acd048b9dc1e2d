# Copyright 2026 The VAEmotion Authors. Licensed under the Apache License, Version 2.0.
r"""Stage 2, EmoAdapter: train the Emotion Enhancer and Emotion Supervisor on emotion-labelled clips.

Run it with ``vaemotion train stage2 --config FILE.yaml`` (fields of [`EmoAdapterConfig`]), or call
[`train_from_config`]. ``model_name_or_path`` is a saved VAEmotion model and processor, typically the output
directory of Stage 1; the result is saved the same way (``AutoModel`` / ``AutoProcessor`` load it).

**Data.** A ``jsonl`` manifest of emotion-labelled clips in the format of [`vaemotion.training.data`] (full
description and examples: ``docs/stage2_data.md``). Stage 2 uses these fields of each line:

| field | Stage 2 use |
|---|---|
| ``video``, or ``image``/``frames`` + ``audio`` | the clip; both its picture and its sound must be present |
| ``valence``, ``arousal`` | regression targets in [-1, 1] (each optional; a missing one is not supervised) |
| ``emotion`` | category target, one of the model's ``config.emotion_labels`` (optional) |
| ``question`` | the user prompt (default: ``default_question``) |
| ``answer`` | the response the LM loss supervises (default: ``answer_template`` filled with the labels) |

Every clip needs at least one of ``valence``, ``arousal``, ``emotion``, and an answer (its own, or one the
template can be filled with). Values out of [-1, 1], unknown categories, missing media files and unusable lines
raise [`~vaemotion.training.data.ClipDataError`] naming the file, line and field; clips whose video has no audio
track are skipped with a warning.

**Paths.** Each clip is presented on every path of ``paths`` (``"audio"``, ``"visual"``, ``"audio_visual"``) with
the same labels and answer. All paths of a batch go through the model in **one** forward (rows ordered path by path
in the order of [`~vaemotion.training.data.PATHS`]); ``per_device_train_batch_size`` counts clips, so a step runs
``len(paths)`` times as many sequences.

**Loss.** With each part averaged over the paths it is computed on (KD over the student paths only):

    L = w_lm * CE(answer tokens)
      + w_kd * tau^2 * D(teacher || student) on the answer tokens   (students: the audio and audio-visual paths)
      + w_emo * (va_weight * VA(valence, arousal) + category_weight * CE(category))      (LLM-state heads)
      + aux_weight * (va_weight * VA + category_weight * CE)                           (bottleneck heads)

``VA`` is MSE, ``1 - CCC`` or their sum (``va_loss``; CCC is a batch statistic, so use batches of several clips).
The Supervisor reads the LLM state at the last prompt token (the assistant header), where inference reads it. The
emotion parts are computed here from the model's predictions with [`vaemotion.training.losses`]; the model is never
given targets, so its own config-weighted loss is not computed and nothing is counted twice. Every part is logged,
in total and per path: ``lm_loss``, ``kd_loss``, ``emo_loss`` (= its ``va_loss`` and ``category_loss``),
``aux_loss`` (= ``aux_va_loss`` and ``aux_category_loss``), and e.g. ``emo_loss/audio``, ``kd_loss/audio_visual``.

**Teacher.** The KD teacher is a separate pass of the same model on the visual path as
[`~vaemotion.training.distill.frozen_visual_pathway`] defines it for both stages (no gradients, Emotion Enhancer
bypassed, LoRA adapters disabled, dropout off): exactly Stage 1's teacher. Detaching the student's own visual-path
forward would be cheaper, but its tokens carry the Enhancer's residuals, so the target would move as the adapter
trains and the audio student could be pulled along with whatever the Enhancer does to the picture; the frozen
pathway keeps the anchor that Stage 1 aligned to. It also means KD needs no ``"visual"`` entry in ``paths``.

**Trainable set.** The Enhancer and the Supervisor (``set_trainable("emo_adapter")``), plus the audio projector
with ``train_projector`` and LoRA adapters on the LLM with ``lora_r > 0``; everything else is frozen. Trainable
parameters are kept in float32 under mixed precision. With LoRA the saved model is merged (the adapter, with the
fully trained modules, is kept in ``output_dir/adapter``).

**Ablations.** ``use_emotion_enhancer=False`` / ``use_emotion_supervisor=False`` load the model with that module
**removed** (the config flags are overridden at load time, so the checkpoint's weights for it are ignored and the
saved model has no such module): without the Enhancer there is no bottleneck, so no auxiliary heads either; without
the Supervisor there are no emotion heads and no emotion parts. ``use_kd=False`` (or ``w_kd=0``) builds no teacher
inputs and never runs the teacher. Switching a module on that the checkpoint lacks creates it fresh (the Enhancer
then starts as the identity).

Example (a run on a tiny model: see ``tests/test_emo_adapter.py`` for the files it needs):

```python
>>> from vaemotion.training.emo_adapter import EmoAdapterConfig, train_from_config
>>> config = EmoAdapterConfig(  # doctest: +SKIP
...     output_dir="runs/stage2", model_name_or_path="runs/stage1", train_data="clips/train.jsonl",
...     eval_data="clips/eval.jsonl", paths=["audio", "visual", "audio_visual"], va_loss="mse+ccc",
... )
>>> train_from_config(config)  # doctest: +SKIP
'runs/stage2'
```
"""

from __future__ import annotations

import math
import string
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from transformers import AutoConfig, set_seed

from ..benchmark.functional import concordance_correlation_coefficient, f1_scores
from ..modeling_vaemotion import VAEmotionOutput
from .data import (
    PATHS,
    ClipDataError,
    ClipDataset,
    ClipRecord,
    DecodedClip,
    append_response,
    collate_encoded,
    encode_prompt,
    read_clips,
    response_positions,
    tokenize_response,
)
from .distill import LossPartsTrainer, checkpoint_to_resume, emotion_enhancer_bypassed, teacher_targets
from .arguments import VAEmotionTrainingArguments, finish_trainable_setup, load_model_and_processor
from .losses import (
    VA_LOSS_KINDS,
    Teacher,
    category_loss,
    distillation_loss,
    response_cross_entropy,
    valence_arousal_loss,
)
from .vg_align import save_final_model

# Paths distilled from the visual teacher: the ones that hear.
STUDENT_PATHS = ("audio", "audio_visual")
PICTURE_PATHS = ("visual", "audio_visual")
AUDIO_PATHS = ("audio", "audio_visual")
# Label fields an answer template may name.
TEMPLATE_FIELDS = ("emotion", "valence", "arousal")
# Total loss parts and the config field weighting each.
# Each part of the total: the config weights that multiply it, and the items its mean is over (count_loss_items)
WEIGHTED_PARTS = {
    "lm_loss": (("w_lm",), "tokens"),
    "kd_loss": (("w_kd",), "tokens"),
    "va_loss": (("w_emo", "va_weight"), "va_samples"),
    "category_loss": (("w_emo", "category_weight"), "category_samples"),
    "aux_va_loss": (("aux_weight", "va_weight"), "va_samples"),
    "aux_category_loss": (("aux_weight", "category_weight"), "category_samples"),
}


@dataclass
class EmoAdapterConfig(VAEmotionTrainingArguments):
    r"""Configuration of Stage 2 (EmoAdapter): the [`~transformers.TrainingArguments`] plus the fields below.

    Example:

    ```python
    >>> import tempfile
    >>> config = EmoAdapterConfig(output_dir=tempfile.mkdtemp(), model_name_or_path="runs/stage1",
    ...                           train_data="train.jsonl", paths=["audio", "audio_visual"], use_cpu=True)
    >>> config.paths, config.kd_enabled, config.remove_unused_columns
    (['audio', 'audio_visual'], True, False)
    >>> EmoAdapterConfig(output_dir=tempfile.mkdtemp(), model_name_or_path="m", train_data="t.jsonl",
    ...                  paths=["visual"], use_cpu=True)
    Traceback (most recent call last):
    ...
    ValueError: use_kd needs a path that hears (audio or audio_visual), got ['visual']: add one, or set use_kd=False

    ```
    """

    paths: list[str] = field(
        default_factory=lambda: list(PATHS),
        metadata={"help": "Paths each clip is presented on, with the same labels: audio, visual, audio_visual."},
    )
    default_question: str = field(
        default="Which emotion does this clip evoke? Answer with one word.",
        metadata={"help": "User prompt for clips without a question."},
    )
    answer_template: str = field(
        default="{emotion}",
        metadata={"help": "Response for clips without an answer; may name {emotion}, {valence} and {arousal}."},
    )
    w_lm: float = field(default=1.0, metadata={"help": "Weight of the cross-entropy on the answer tokens."})
    w_kd: float = field(default=1.0, metadata={"help": "Weight of the visual-teacher distillation (0: no teacher)."})
    w_emo: float = field(default=1.0, metadata={"help": "Weight of the emotion loss of the LLM-state heads."})
    aux_weight: float = field(default=0.5, metadata={"help": "Weight of the emotion loss of the bottleneck heads."})
    va_loss: str = field(default="mse", metadata={"help": "Valence/arousal regression: mse, ccc or mse+ccc."})
    va_weight: float = field(default=1.0, metadata={"help": "Weight of the valence/arousal part of an emotion loss."})
    category_weight: float = field(default=1.0, metadata={"help": "Weight of the category part of an emotion loss."})
    train_projector: bool = field(default=False, metadata={"help": "Also train the audio projector."})
    use_emotion_enhancer: bool = field(default=True, metadata={"help": "Ablation: keep the Emotion Enhancer."})
    use_emotion_supervisor: bool = field(default=True, metadata={"help": "Ablation: keep the Emotion Supervisor."})
    use_kd: bool = field(default=True, metadata={"help": "Ablation: keep the visual-teacher distillation term."})

    def __post_init__(self):
        super().__post_init__()
        if not self.model_name_or_path:
            raise ValueError("model_name_or_path is required: a saved VAEmotion model + processor (Stage 1's output)")
        self.paths = _checked_paths(self.paths)
        for name in ("w_lm", "w_kd", "w_emo", "aux_weight", "va_weight", "category_weight"):
            value = getattr(self, name)
            if not value >= 0:  # also refuses NaN
                raise ValueError(f"{name} must be >= 0, got {value}")
        if self.va_loss not in VA_LOSS_KINDS:
            raise ValueError(f"va_loss must be one of {VA_LOSS_KINDS}, got {self.va_loss!r}")
        _check_template(self.answer_template)
        if self.use_kd and not set(self.paths) & set(STUDENT_PATHS):
            raise ValueError(
                f"use_kd needs a path that hears (audio or audio_visual), got {self.paths}: add one, or set "
                "use_kd=False"
            )

    @property
    def kd_enabled(self) -> bool:
        """Whether the KD term is computed (and the teacher run): ``use_kd`` and ``w_kd > 0``."""
        return self.use_kd and self.w_kd > 0



def _checked_paths(paths: Sequence[str]) -> list[str]:
    if isinstance(paths, str):
        raise ValueError(f"paths must be a list of path names from {list(PATHS)}, got the string {paths!r} "
                         f"(write [{paths!r}])")
    paths = list(paths)
    unknown = [path for path in paths if path not in PATHS]
    if unknown or not paths or len(set(paths)) != len(paths):
        raise ValueError(f"paths must be a non-empty subset of {list(PATHS)} without repeats, got {paths}")
    return [path for path in PATHS if path in paths]  # the order of the batch rows


def _check_template(template: str) -> None:
    names = _template_fields(template)
    unknown = sorted(names - set(TEMPLATE_FIELDS))
    if unknown:
        raise ValueError(f"answer_template may only name {list(TEMPLATE_FIELDS)}, got {unknown} in {template!r}")
    try:  # the labels' own types: a format spec or attribute that does not fit them fails here, not mid-training
        template.format(emotion="awe", valence=0.5, arousal=-0.5)
    except (ValueError, TypeError, AttributeError, IndexError, KeyError) as error:
        raise ValueError(f"answer_template {template!r} cannot be filled with a clip's labels (emotion is a string, "
                         f"valence and arousal numbers): {error}") from None


def _template_fields(template: str) -> set[str]:
    try:
        return {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}
    except ValueError as error:
        raise ValueError(f"answer_template {template!r} is not a valid format string ({error})") from None


# ---------------------------------------------------------------------------------------------------- data
def answer_text(record: ClipRecord, template: str = "{emotion}") -> str:
    """The response a clip is trained on: its own ``answer``, else ``template`` filled with its labels.

    >>> answer_text(ClipRecord(id="1", emotion="awe", answer="It feels like awe."))
    'It feels like awe.'
    >>> answer_text(ClipRecord(id="2", emotion="fear", valence=-0.6, arousal=0.7),
    ...             "{emotion} (valence {valence:+.1f}, arousal {arousal:+.1f})")
    'fear (valence -0.6, arousal +0.7)'
    """
    if record.answer:
        return record.answer
    missing = sorted(name for name in _template_fields(template) if getattr(record, name) is None)
    if missing:
        raise ClipDataError(
            f"clip {record.id}: no answer, and answer_template {template!r} needs its {missing}; give the clip an "
            "answer or use a template naming only the labels it has"
        )
    return template.format(**{name: getattr(record, name) for name in TEMPLATE_FIELDS})


def read_emotion_clips(
    source: str, emotion_labels: Sequence[str], answer_template: str = "{emotion}", paths: Sequence[str] = PATHS,
    with_teacher: bool = True,
) -> list[ClipRecord]:
    """Read and validate a Stage 2 manifest: media, label ranges and categories, and an answer for every clip.

    Raises [`~vaemotion.training.data.ClipDataError`] for a line out of range, an unknown category, a missing
    media file, a clip with no label at all, or one without an answer the template can produce.
    """
    _check_template(answer_template)
    paths = _checked_paths(paths)
    needs_audio = any(path in AUDIO_PATHS for path in paths)
    needs_picture = with_teacher or any(path in PICTURE_PATHS for path in paths)
    records = read_clips(
        source, require_audio=needs_audio, require_picture=needs_picture, emotion_labels=emotion_labels
    ).records
    for record in records:
        if record.valence is None and record.arousal is None and record.emotion is None:
            raise ClipDataError(f"{source}: clip {record.id} has no label; Stage 2 needs valence, arousal or emotion")
        answer_text(record, answer_template)
    return records


class EmoAdapterCollator:
    """Turns decoded clips into one Stage 2 batch: every clip on every path, and the visual teacher's inputs.

    Returns a dict with

    - ``emotion_labels`` ``(B,)`` (``-100`` when unknown), ``valence`` and ``arousal`` ``(B,)`` (NaN when unknown);
    - ``inputs``: the model inputs of the ``len(paths) * B`` sequences, path by path (``paths`` order), each a clip's
      prompt followed by its answer;
    - ``positions`` / ``response_mask`` ``(len(paths) * B, R)``: the positions whose logits predict the answer
      tokens ([`~vaemotion.training.data.response_positions`]); ``positions[:, 0]`` is the last prompt token, where
      the Supervisor reads the LLM state; ``response_labels`` ``(len(paths) * B, R)``: the answer tokens there;
    - with a teacher: ``teacher_inputs`` and ``teacher_positions`` ``(B, R)``, the same clips on the visual path.
    """

    def __init__(
        self,
        processor,
        emotion_labels: Sequence[str],
        *,
        paths: Sequence[str] = PATHS,
        with_teacher: bool = True,
        default_question: str = EmoAdapterConfig.default_question,
        answer_template: str = "{emotion}",
        system_prompt: str | None = None,
        max_response_tokens: int = 64,
    ):
        self.processor = processor
        self.emotion2id = {label: index for index, label in enumerate(emotion_labels)}
        self.paths = _checked_paths(paths)
        self.with_teacher = with_teacher
        self.default_question = default_question
        self.answer_template = answer_template
        self.system_prompt = system_prompt
        self.max_response_tokens = max_response_tokens

    def __call__(self, clips: Sequence[DecodedClip]) -> dict:
        tokenizer = self.processor.tokenizer
        answers = [answer_text(clip.record, self.answer_template) for clip in clips]
        responses = [tokenize_response(tokenizer, text, max_tokens=self.max_response_tokens) for text in answers]
        needed = set(self.paths) | ({"visual"} if self.with_teacher else set())
        encoded = {path: self._encode(clips, responses, path) for path in PATHS if path in needed}
        batch = self._targets(clips)
        batch.update(self._sequences([sample for path in self.paths for sample in encoded[path]], responses))
        if self.with_teacher:
            teacher = self._sequences(encoded["visual"], responses)
            batch["teacher_inputs"], batch["teacher_positions"] = teacher["inputs"], teacher["positions"]
        return batch

    def _encode(self, clips, responses, path: str) -> list[dict]:
        return [
            append_response(
                encode_prompt(self.processor, clip, path, clip.record.question or self.default_question,
                              self.system_prompt),
                response,
            )
            for clip, response in zip(clips, responses)
        ]

    def _targets(self, clips) -> dict:
        def value(label):
            return float("nan") if label is None else label

        return {
            "emotion_labels": torch.tensor(
                [-100 if c.record.emotion is None else self.emotion2id[c.record.emotion] for c in clips]
            ),
            "valence": torch.tensor([value(c.record.valence) for c in clips], dtype=torch.float32),
            "arousal": torch.tensor([value(c.record.arousal) for c in clips], dtype=torch.float32),
        }

    def _sequences(self, samples: list[dict], responses: list[list[int]]) -> dict:
        inputs = collate_encoded(samples, self.processor.tokenizer.pad_token_id)
        inputs.pop("labels")  # the answer is scored at `positions` by the trainer, not by the model
        repeats = len(samples) // len(responses)
        lengths = [len(response) for response in responses] * repeats
        positions, mask = response_positions(inputs, lengths)
        labels = torch.full(mask.shape, -100, dtype=torch.long)
        for row, response in enumerate(responses * repeats):
            labels[row, : len(response)] = torch.tensor(response)
        return {"inputs": inputs, "positions": positions, "response_mask": mask, "response_labels": labels}


def clip_dataset(records: Sequence[ClipRecord], config: EmoAdapterConfig, processor) -> ClipDataset:
    """A [`~vaemotion.training.data.ClipDataset`] decoding only the streams the configured paths need."""
    return ClipDataset(
        records,
        num_frames=config.num_frames,
        sampling_rate=processor.feature_extractor.sampling_rate,
        decode_picture=config.kd_enabled or any(path in PICTURE_PATHS for path in config.paths),
        decode_audio=any(path in AUDIO_PATHS for path in config.paths),
        frame_multiple=processor.frame_multiple,
        keep_in_memory=config.keep_clips_in_memory,
    )


# ---------------------------------------------------------------------------------------------------- loss
@torch.no_grad()
def visual_teacher(model, batch: dict, config: EmoAdapterConfig) -> Teacher:
    """The frozen visual pathway's next-token distribution at the answer positions (see the module docstring)."""
    return teacher_targets(model, batch["teacher_inputs"], batch["teacher_positions"], config.distillation)


@dataclass
class EmoAdapterStep:
    """One Stage 2 loss evaluation.

    Attributes:
        loss: the weighted total.
        parts: every unweighted part, in total (``lm_loss``, ...) and per path (``lm_loss/audio``, ...).
        predictions: ``(B, len(paths), 2 + num_emotions)``: valence, arousal and category logits of the LLM-state
            heads on each path; ``None`` without a Supervisor.
        outputs: the model's output for the ``len(paths) * B`` student sequences (logits at ``positions`` only).
    """

    loss: torch.Tensor
    parts: dict[str, torch.Tensor]
    predictions: torch.Tensor | None
    outputs: VAEmotionOutput


def count_loss_items(batch: dict) -> dict[str, torch.Tensor]:
    """What the parts of a Stage 2 batch average over: answer tokens (LM and KD), clips with a valence or arousal
    target (VA), clips with a category (category CE)."""
    va_known = torch.isfinite(batch["valence"]) | torch.isfinite(batch["arousal"])
    return {
        "tokens": batch["response_mask"].sum(),
        "va_samples": va_known.sum(),
        "category_samples": (batch["emotion_labels"] != -100).sum(),
    }


def emo_adapter_loss(model, batch: dict, config: EmoAdapterConfig,
                     shares: Mapping[str, torch.Tensor] | None = None) -> EmoAdapterStep:
    """The Stage 2 loss of a batch from [`EmoAdapterCollator`] (the formula is in the module docstring).

    ``shares`` (from [`~vaemotion.training.distill.LossPartsTrainer.item_shares`], keyed like
    [`count_loss_items`]) scales each part's mean in the total so that an optimizer step's sum is the mean over all
    its tokens and clips; the logged parts stay unscaled. The VA part's CCC is a batch statistic: over accumulated
    micro-batches it is their weighted mean, not the CCC of the whole step (its MSE and every other part are
    exact)."""
    positions = batch["positions"]
    outputs = model(
        **batch["inputs"], logits_to_keep=positions, emotion_positions=positions[:, 0], use_cache=False
    )
    teacher = visual_teacher(model, batch, config) if config.kd_enabled else None
    num_clips = batch["valence"].shape[0]
    targets = torch.stack([batch["valence"], batch["arousal"]], dim=-1)
    parts, per_part = {}, defaultdict(list)
    for index, path in enumerate(config.paths):
        rows = slice(index * num_clips, (index + 1) * num_clips)
        path_teacher = teacher if path in STUDENT_PATHS else None
        for name, value in _path_parts(outputs, batch, rows, path_teacher, targets, config).items():
            parts[f"{name}/{path}"] = value
            per_part[name].append(value)
    for name, values in per_part.items():
        parts[name] = torch.stack(values).mean()
    loss = sum(
        math.prod(getattr(config, weight) for weight in weights) * parts[name]
        * (1.0 if shares is None else shares[kind])
        for name, (weights, kind) in WEIGHTED_PARTS.items()
        if name in parts
    )
    return EmoAdapterStep(loss=loss, parts=parts, predictions=_predictions(outputs, num_clips), outputs=outputs)


def _path_parts(outputs, batch, rows: slice, teacher, targets, config: EmoAdapterConfig) -> dict:
    logits = outputs.logits[rows]
    parts = {"lm_loss": response_cross_entropy(logits, batch["response_labels"][rows])}
    if teacher is not None:
        settings = config.distillation
        parts["kd_loss"] = distillation_loss(
            logits, teacher, batch["response_mask"][rows], kind=settings.divergence,
            temperature=settings.temperature, jsd_beta=settings.jsd_beta,
        )  # fmt: skip
    labels = batch["emotion_labels"]
    if outputs.valence is not None:
        heads = (outputs.valence[rows], outputs.arousal[rows], outputs.emotion_logits[rows])
        parts.update(_emotion_parts("", "emo_loss", *heads, targets, labels, config))
    if outputs.aux_valence is not None:
        heads = (outputs.aux_valence[rows], outputs.aux_arousal[rows], outputs.aux_emotion_logits[rows])
        parts.update(_emotion_parts("aux_", "aux_loss", *heads, targets, labels, config))
    return parts


def _emotion_parts(prefix, total_name, valence, arousal, logits, targets, labels, config) -> dict:
    """VA regression and category CE of one head on one path; a part without any target in the batch is left out."""
    parts = {}
    if torch.isfinite(targets).any():
        prediction = torch.stack([valence, arousal], dim=-1)
        parts[f"{prefix}va_loss"] = valence_arousal_loss(prediction, targets, kind=config.va_loss)
    if (labels != -100).any():
        parts[f"{prefix}category_loss"] = category_loss(logits, labels)
    weighted = [
        weight * parts[name]
        for name, weight in ((f"{prefix}va_loss", config.va_weight), (f"{prefix}category_loss", config.category_weight))
        if name in parts
    ]
    if weighted:
        parts[total_name] = sum(weighted)
    return parts


def _predictions(outputs, num_clips: int) -> torch.Tensor | None:
    if outputs.valence is None:
        return None
    per_row = torch.cat([outputs.valence[:, None], outputs.arousal[:, None], outputs.emotion_logits], dim=-1)
    return per_row.reshape(-1, num_clips, per_row.shape[-1]).transpose(0, 1)  # (clips, paths, 2 + C)


class EmoAdapterTrainer(LossPartsTrainer):
    """[`~transformers.Trainer`] for Stage 2: the loss of [`emo_adapter_loss`], each part logged.

    ``args`` must be an [`EmoAdapterConfig`], ``data_collator`` an [`EmoAdapterCollator`]. Evaluation returns only
    the emotion predictions (``(B, len(paths), 2 + num_emotions)``) and targets (``(B, 3)``: valence, arousal,
    category) for ``compute_metrics`` (e.g. [`EmotionMetrics`]), never the vocabulary logits.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # the model is never given targets (a peft wrapper's **kwargs forward would make the Trainer think it is)
        self.model_accepts_loss_kwargs = False

    def count_loss_items(self, batch: dict) -> dict[str, torch.Tensor]:
        return count_loss_items(batch)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        step = emo_adapter_loss(model, inputs, self.args, self.item_shares(inputs, num_items_in_batch))
        self.record_loss_parts(**step.parts)
        return (step.loss, step) if return_outputs else step.loss

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad(), self.compute_loss_context_manager():
            step = emo_adapter_loss(model, inputs, self.args)
        self.record_loss_parts(**step.parts)
        loss = step.loss.detach()
        if prediction_loss_only or step.predictions is None:
            return loss, None, None
        targets = torch.stack([inputs["valence"], inputs["arousal"], inputs["emotion_labels"].float()], dim=-1)
        return loss, step.predictions.detach().float(), targets


class EmotionMetrics:
    """``compute_metrics`` of [`EmoAdapterTrainer`]: valence and arousal CCC and category macro-F1 (and accuracy)
    per path, over the items that have the target.

    >>> from transformers import EvalPrediction
    >>> predictions = np.array([[[0.5, 0.1, 2.0, 0.0]], [[-0.5, 0.3, 0.0, 2.0]]])  # 2 clips, 1 path, 2 categories
    >>> targets = np.array([[0.5, np.nan, 0], [-0.5, np.nan, 1]])
    >>> EmotionMetrics(["audio"], num_emotions=2)(EvalPrediction(predictions, targets))
    {'valence_ccc/audio': 1.0, 'macro_f1/audio': 1.0, 'accuracy/audio': 1.0}
    """

    def __init__(self, paths: Sequence[str], num_emotions: int):
        self.paths = list(paths)
        self.num_emotions = num_emotions

    def __call__(self, eval_prediction) -> dict[str, float]:
        predictions, targets = np.asarray(eval_prediction.predictions), np.asarray(eval_prediction.label_ids)
        metrics = {}
        for index, path in enumerate(self.paths):
            for column, dimension in enumerate(("valence", "arousal")):
                known = np.isfinite(targets[:, column])
                if known.any():
                    metrics[f"{dimension}_ccc/{path}"] = concordance_correlation_coefficient(
                        predictions[known, index, column], targets[known, column]
                    )
            labelled = targets[:, 2] >= 0
            if labelled.any():
                scores = f1_scores(
                    predictions[labelled, index, 2:].argmax(-1), targets[labelled, 2].astype(np.int64),
                    self.num_emotions,
                )  # fmt: skip
                metrics[f"macro_f1/{path}"], metrics[f"accuracy/{path}"] = scores["macro_f1"], scores["accuracy"]
        return metrics


# ---------------------------------------------------------------------------------------------------- entry points
def load_model(config: EmoAdapterConfig):
    """The model and processor of ``model_name_or_path`` with the ablation switches applied: the config flags are
    overridden at load time, so a disabled module is never built (and its saved weights are ignored)."""
    return load_model_and_processor(
        config,
        use_emotion_enhancer=config.use_emotion_enhancer,
        use_emotion_supervisor=config.use_emotion_supervisor,
    )


def prepare_trainable_model(model, config: EmoAdapterConfig):
    """Freeze all but Stage 2's trainable set (+ LoRA); returns ``(model or PeftModel, counts)``.

    The Enhancer and Supervisor (and the projector with ``train_projector``) train in full, in float32 under
    mixed precision; with ``lora_r > 0`` they become peft ``modules_to_save`` next to LoRA adapters on the LLM.
    """
    report = model.set_trainable("emo_adapter", train_projector=config.train_projector)
    if not report["modules"] and config.lora_r == 0:
        raise ValueError("nothing to train: the Enhancer and the Supervisor are both disabled, train_projector is "
                         "False and lora_r is 0")
    return finish_trainable_setup(model, config, report["modules"])


def build_trainer(config: EmoAdapterConfig) -> EmoAdapterTrainer:
    """Validate the data (before any weight is read), load the processor and the model, freeze all but Stage 2's
    trainable set, and return the trainer, ready to ``train()``."""
    model_config = AutoConfig.from_pretrained(config.model_name_or_path)
    if model_config.model_type != "vaemotion":
        raise ValueError(
            f"{config.model_name_or_path} holds a {model_config.model_type!r} model; Stage 2 starts from a saved "
            "VAEmotion model (e.g. Stage 1's output directory)"
        )
    emotion_labels = model_config.emotion_labels
    read = {"emotion_labels": emotion_labels, "answer_template": config.answer_template, "paths": config.paths,
            "with_teacher": config.kd_enabled}  # fmt: skip
    train_records = read_emotion_clips(config.train_data, **read)
    eval_records = read_emotion_clips(config.eval_data, **read) if config.eval_data else None

    set_seed(config.seed)  # modules the checkpoint lacks are initialised at load time
    model, processor = load_model(config)
    model, counts = prepare_trainable_model(model, config)
    collator = EmoAdapterCollator(
        processor, emotion_labels, paths=config.paths, with_teacher=config.kd_enabled,
        default_question=config.default_question, answer_template=config.answer_template,
        system_prompt=config.system_prompt, max_response_tokens=config.max_completion_length,
    )  # fmt: skip
    trainer = EmoAdapterTrainer(
        model=model,
        args=config,
        data_collator=collator,
        train_dataset=clip_dataset(train_records, config, processor),
        eval_dataset=None if eval_records is None else clip_dataset(eval_records, config, processor),
        processing_class=processor,
        compute_metrics=EmotionMetrics(config.paths, len(emotion_labels)) if config.use_emotion_supervisor else None,
    )
    if trainer.is_world_process_zero():
        share = 100.0 * counts["trainable"] / max(counts["total"], 1)
        print(f"EmoAdapter: trainable params {counts['trainable']:,} of {counts['total']:,} ({share:.4f}%); "
              f"{len(train_records)} clips x paths {config.paths}")
    return trainer


def train_from_config(config: EmoAdapterConfig) -> str:
    """Train Stage 2 and save the model and processor to ``config.output_dir``; returns that directory.

    ``resume_from_checkpoint`` (a checkpoint directory, or ``last``/``true`` for the newest one in ``output_dir``)
    resumes training with its optimizer, scheduler, RNG and data position. With LoRA the merged model is saved, and
    the adapter under ``output_dir/adapter``.
    """
    trainer = build_trainer(config)
    trainer.train(resume_from_checkpoint=checkpoint_to_resume(config.resume_from_checkpoint, config.output_dir))
    save_final_model(trainer, trainer.processing_class, config.output_dir)
    return config.output_dir


CONFIG_CLASS = EmoAdapterConfig

__all__ = [
    "CONFIG_CLASS",
    "EmoAdapterCollator",
    "EmoAdapterConfig",
    "EmoAdapterStep",
    "EmoAdapterTrainer",
    "EmotionMetrics",
    "answer_text",
    "build_trainer",
    "emo_adapter_loss",
    "emotion_enhancer_bypassed",
    "load_model",
    "prepare_trainable_model",
    "read_emotion_clips",
    "train_from_config",
    "visual_teacher",
]
