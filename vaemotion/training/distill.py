"""The VG-Align step shared by Stage 1 and Stage 2, and what both trainers share: loss-part logging, resuming only
complete checkpoints, and publishing the final model so that a killed save leaves nothing that looks complete.

Teacher and student are the **same model object**. The teacher is defined once, by [`frozen_visual_pathway`], and
every teacher pass goes through it (Stage 1's targets and responses, the teacher cache, Stage 2's KD): the model on
the visual input, without gradients, with any LoRA adapters disabled and the Emotion Enhancer bypassed (the
pretrained VLM as it was before either stage; an untrained Enhancer is the identity anyway), and with dropout off
while the student trains. The student pass is the model on the audio input. Logits are computed only at the
positions that predict response tokens (``logits_to_keep`` with explicit positions), never over the whole sequence.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import Trainer
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from .losses import Teacher, TeacherTopK, distillation_loss, response_cross_entropy, topk_teacher


@dataclass
class DistillationSettings:
    """How the student is matched to the teacher (a subset of the trainers' config fields)."""

    divergence: str = "forward_kl"
    temperature: float = 1.0
    jsd_beta: float = 0.5
    teacher_top_k: int | None = None
    loss_chunk_size: int | None = 256

    @classmethod
    def from_beta(cls, beta: float, **fields) -> DistillationSettings:
        """Settings whose divergence is TRL's ``beta``: 0 forward KL, 1 reverse KL, in between the generalised JSD
        with teacher weight ``beta``.

        >>> DistillationSettings.from_beta(0.0).divergence, DistillationSettings.from_beta(1.0).divergence
        ('forward_kl', 'reverse_kl')
        >>> settings = DistillationSettings.from_beta(0.25)
        >>> settings.divergence, settings.jsd_beta
        ('jsd', 0.25)
        """
        if beta == 0:
            return cls(divergence="forward_kl", **fields)
        if beta == 1:
            return cls(divergence="reverse_kl", **fields)
        return cls(divergence="jsd", jsd_beta=beta, **fields)


def peft_or_model(model):
    """The model inside accelerate/DDP wrappers, keeping a peft wrapper (whose adapters can be disabled)."""
    while hasattr(model, "module"):
        model = model.module
    return model


@contextlib.contextmanager
def adapters_disabled(model):
    """Run ``model`` without its peft adapters (a no-op for a model without them), through DDP-style wrappers."""
    model = peft_or_model(model)
    disable = getattr(model, "disable_adapter", None)
    if disable is None or not getattr(model, "peft_config", None):
        yield
        return
    with disable():
        yield


@contextlib.contextmanager
def emotion_enhancer_bypassed(model):
    """Run ``model`` (a VAEmotion model, unwrapped) as if it had no Emotion Enhancer: every modality token enters the
    LLM unchanged. The module is detached for the duration and put back afterwards, even on error; its parameters
    (and the optimizer's references to them) are untouched.

    >>> from vaemotion import VAEmotionForConditionalGeneration
    >>> from vaemotion.tiny import tiny_vaemotion_config
    >>> model = VAEmotionForConditionalGeneration(tiny_vaemotion_config())
    >>> with emotion_enhancer_bypassed(model):
    ...     print(model.emotion_enhancer)
    None
    >>> type(model.emotion_enhancer).__name__
    'VAEmotionEmotionEnhancer'
    """
    enhancer = model.emotion_enhancer
    model.emotion_enhancer = None
    try:
        yield model
    finally:
        model.emotion_enhancer = enhancer


@contextlib.contextmanager
def evaluation_mode(model):
    """Every module of ``model`` in eval mode (dropout off) for the duration, each put back in its own mode after."""
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for module, training in modes:
            module.training = training


@contextlib.contextmanager
def frozen_visual_pathway(model):
    """The teacher: ``model`` (possibly wrapped) with adapters disabled, the Enhancer bypassed, dropout off.

    The one definition of the teacher every stage and the teacher cache use (see the module docstring).
    """
    with torch.no_grad(), emotion_enhancer_bypassed(unwrap(model)), evaluation_mode(peft_or_model(model)), \
            adapters_disabled(model):
        yield model


def unwrap(model):
    """The VAEmotion model inside accelerate/DDP/peft wrappers (for attribute access, not for the forward)."""
    while hasattr(model, "module"):
        model = model.module
    get_base = getattr(model, "get_base_model", None)
    return get_base() if get_base is not None else model


@torch.no_grad()
def teacher_targets(model, teacher_batch: dict, positions: torch.Tensor, settings: DistillationSettings) -> Teacher:
    """The frozen visual pathway's next-token distribution at ``positions`` (logits, or top-k log-probabilities)."""
    with frozen_visual_pathway(model):
        logits = model(**teacher_batch, logits_to_keep=positions, use_cache=False).logits
    if settings.teacher_top_k:
        return topk_teacher(logits, settings.teacher_top_k, settings.temperature)
    return logits


def cached_teacher(batch: dict, temperature: float) -> TeacherTopK:
    """A teacher read from the cache by the collator: ``teacher_topk_logprobs`` / ``teacher_topk_indices``."""
    return TeacherTopK(batch["teacher_topk_logprobs"], batch["teacher_topk_indices"], temperature)


def student_distillation(
    model,
    student_batch: dict,
    positions: torch.Tensor,
    response_mask: torch.Tensor,
    teacher: Teacher,
    settings: DistillationSettings,
    response_ids: torch.Tensor | None = None,
):
    """Student forward at the response positions; returns ``(kd_loss, ce_loss or None, outputs)``.

    ``response_ids`` (the response tokens, ``-100``-free where ``response_mask``) adds the cross-entropy of the
    student on them. The KD loss is ``tau^2 * mean D(teacher || student)`` over the response tokens.
    """
    outputs = model(**student_batch, logits_to_keep=positions, use_cache=False)
    kd = distillation_loss(
        outputs.logits,
        teacher,
        response_mask,
        kind=settings.divergence,
        temperature=settings.temperature,
        jsd_beta=settings.jsd_beta,
        chunk_size=settings.loss_chunk_size,
    )
    ce = None
    if response_ids is not None:
        labels = response_ids.masked_fill(~response_mask, -100)
        ce = response_cross_entropy(outputs.logits, labels, chunk_size=settings.loss_chunk_size)
    return kd, ce, outputs


class LossPartsTrainer(Trainer):
    """A Trainer whose loss parts are weighted by what they average over, and logged.

    **Weighting.** Each loss part is a mean over some items of its micro-batch: response tokens (distillation, LM
    cross-entropy) or labelled samples (the emotion terms). Under gradient accumulation, and across ranks, a plain
    per-micro-batch mean would let a micro-batch with few items weigh as much as one with many. Subclasses say what
    a batch holds (``count_loss_items(batch) -> {kind: count}``); the Trainer sums the counts over the micro-batches
    of an optimizer step (and over ranks with ``average_tokens_across_devices``) and passes them to
    ``compute_loss`` as ``num_items_in_batch``; [`item_shares`] turns them into each micro-batch's share, by which
    its part means are scaled. The sum over the step is then the mean over all its items, as with one big batch.

    **Logging.** Subclasses call ``self.record_loss_parts(kd_loss=..., lm_loss=...)`` in ``compute_loss``; the parts
    appear in the logs next to ``loss`` (with the ``eval_`` prefix during evaluation), as TRL's trainers do.
    """

    # compute_loss scales the loss by the micro-batch's share of the step's items: training_step must not divide it
    # by the number of accumulation steps again
    loss_is_scaled_for_ga = True

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._loss_parts: dict[str, dict[str, tuple]] = {"train": {}, "eval": {}}  # name -> (sum, count)

    def train(self, resume_from_checkpoint: str | bool | None = None, *args, **kwargs):
        """`Trainer.train`, where ``resume_from_checkpoint=True`` means the newest *complete* checkpoint in
        ``output_dir`` (see [`last_complete_checkpoint`]), not merely the highest-numbered folder, which a process
        killed while saving leaves half written."""
        if resume_from_checkpoint is True:
            resume_from_checkpoint = last_complete_checkpoint(self.args.output_dir)
            if resume_from_checkpoint is None:
                raise ValueError(f"resume_from_checkpoint=True: no complete checkpoint in {self.args.output_dir}")
        elif isinstance(resume_from_checkpoint, (str, os.PathLike)) and not is_complete_checkpoint(resume_from_checkpoint):
            raise ValueError(f"resume_from_checkpoint={resume_from_checkpoint}: not a complete checkpoint (no readable "
                             f"trainer_state.json, which the Trainer writes last: was its save interrupted?)")
        return super().train(resume_from_checkpoint, *args, **kwargs)

    def count_loss_items(self, batch: dict) -> dict[str, torch.Tensor]:
        """How many items of each kind (``"tokens"``, ``"samples"``, ...) the loss parts of ``batch`` average over."""
        raise NotImplementedError

    def _get_num_items_in_batch(self, batch_samples: list, device: torch.device) -> dict[str, torch.Tensor] | None:
        if not batch_samples:
            return None
        counts = [self.count_loss_items(batch) for batch in batch_samples]
        totals = torch.stack([torch.stack([c[kind] for c in counts]).sum() for kind in counts[0]]).to(device).float()
        if self.args.average_tokens_across_devices and self.args.world_size > 1:
            totals = self.accelerator.gather(totals[None]).sum(0)
        return dict(zip(counts[0], totals))

    def item_shares(self, batch: dict, num_items_in_batch: dict[str, torch.Tensor] | None) -> dict[str, torch.Tensor]:
        """Per kind of item, the factor that turns ``batch``'s part means into its share of the step's mean.

        ``local count / step count``, times the number of processes when the counts are global (DDP averages the
        gradients of the ranks); without counts (evaluation, a direct call), 1 and the loss divided by the number of
        accumulation steps, the Trainer's usual scaling.
        """
        local = self.count_loss_items(batch)
        if num_items_in_batch is None:
            steps = getattr(self, "current_gradient_accumulation_steps", 1) if self.model.training else 1
            return {kind: torch.tensor(1.0 / steps) for kind in local}
        ranks = self.accelerator.num_processes if self.args.average_tokens_across_devices else 1
        return {
            kind: local[kind].to(total.device).float() * ranks / total.clamp(min=1)
            for kind, total in num_items_in_batch.items()
        }

    def record_loss_parts(self, **parts) -> None:
        """Add this step's parts to the running sums, on the device: nothing waits for the host until a log."""
        sums = self._loss_parts["train" if self.model.training else "eval"]
        for name, value in parts.items():
            if value is not None:
                value = value.detach().float() if torch.is_tensor(value) else torch.tensor(float(value))
                total, count = sums.get(name, (0.0, 0))
                sums[name] = (total + value, count + 1)

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        mode = "train" if self.model.training else "eval"
        prefix = "eval_" if mode == "eval" and any(key.startswith("eval_") for key in logs) else ""
        logs.update({f"{prefix}{name}": value for name, value in self._reduced_loss_parts(mode).items()})
        super().log(logs, start_time)

    def _reduced_loss_parts(self, mode: str) -> dict[str, float]:
        """Each part's mean over the steps since the last log and over the ranks, in one host sync (and, with
        several processes, one gather of the part names, which may differ between ranks, and one all-reduce)."""
        sums = self._loss_parts[mode]
        names = sorted(sums)
        if self.args.world_size > 1:
            from accelerate.utils import gather_object

            names = sorted(set().union(*gather_object([names])))  # one list per rank
        if not names:
            return {}
        device = self.args.device
        totals = torch.stack([torch.as_tensor(sums[n][0] if n in sums else 0.0, device=device).float() for n in names])
        counts = torch.tensor([float(sums[n][1]) if n in sums else 0.0 for n in names], device=device)
        if self.args.world_size > 1:
            totals, counts = self.accelerator.reduce(torch.stack([totals, counts]), reduction="sum")
        sums.clear()
        means, counts = torch.stack([totals / counts.clamp(min=1), counts]).tolist()  # the one host sync
        return {name: mean for name, mean, count in zip(names, means, counts) if count > 0}


# ---------------------------------------------------------------------------------------------------- checkpoints
_CHECKPOINT_NAME = re.compile(rf"^{PREFIX_CHECKPOINT_DIR}-(\d+)$")


def is_complete_checkpoint(path: str | os.PathLike) -> bool:
    """Whether a Trainer checkpoint folder was written to the end: the Trainer writes the weights, optimizer,
    scheduler and RNG states first and ``trainer_state.json`` last, so a readable state file with its step means
    everything before it is there. A process killed mid-save leaves a folder without one (or with a cut one)."""
    try:
        state = json.loads((Path(path) / "trainer_state.json").read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return isinstance(state, dict) and isinstance(state.get("global_step"), int)


def last_complete_checkpoint(output_dir: str | os.PathLike) -> str | None:
    """The highest-step complete checkpoint (``checkpoint-N``) in ``output_dir``, or None."""
    if not Path(output_dir).is_dir():
        return None
    steps = {int(match[1]): path for path in Path(output_dir).iterdir()
             if (match := _CHECKPOINT_NAME.match(path.name)) and path.is_dir()}  # fmt: skip
    for step in sorted(steps, reverse=True):
        if is_complete_checkpoint(steps[step]):
            return str(steps[step])
    return None


def checkpoint_to_resume(value: str | None, output_dir: str | os.PathLike) -> str | None:
    """What a config's ``resume_from_checkpoint`` names: None for none (``false``/``no``/empty), the newest complete
    checkpoint in ``output_dir`` for ``last``/``true`` (None when there is none yet: a first run starts afresh), or
    the path given."""
    if value is None or value.strip().lower() in ("", "false", "no"):
        return None
    if value.strip().lower() in ("true", "last"):
        return last_complete_checkpoint(output_dir)
    return value


STAGING_FOLDER = ".final-model.tmp"
# from_pretrained starts from these: moved last, so a folder that has them holds everything else already
ENTRY_FILES = ("config.json", "processor_config.json")
# weights of an earlier save (one file or shards + index), which save_pretrained itself would have cleaned up
_WEIGHT_FILE = re.compile(r"^(model|pytorch_model)(-\d+-of-\d+)?\.(safetensors|bin)(\.index\.json)?$")


def publish_staged_folder(staging: str | os.PathLike, output_dir: str | os.PathLike) -> None:
    """Move a model saved into ``staging`` into ``output_dir`` so that a process killed on the way never leaves a
    folder that looks complete: the entry files of an earlier model there are removed first, the weights and other
    files are moved (each by an atomic rename), and ``config.json`` / ``processor_config.json`` come last.
    Checkpoint folders and other files already in ``output_dir`` are kept."""
    staging, output_dir = Path(staging), Path(output_dir)
    for name in ENTRY_FILES:
        (output_dir / name).unlink(missing_ok=True)
    for path in output_dir.iterdir():
        if _WEIGHT_FILE.match(path.name) and path.is_file():
            path.unlink()
    entries = [path for path in staging.iterdir() if path.name not in ENTRY_FILES]
    for path in entries + [staging / name for name in ENTRY_FILES if (staging / name).exists()]:
        target = output_dir / path.name
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        os.replace(path, target)
    staging.rmdir()
