"""What Stage 1 and Stage 2 configs share: the model to load, the data, the distillation settings, LoRA, and the
`TrainingArguments` defaults that suit trainers fed with decoded clips."""

from __future__ import annotations

import math
import re
import warnings
from dataclasses import dataclass, field

import torch
from transformers import TrainingArguments

from .distill import DistillationSettings, unwrap
from .losses import DIVERGENCE_KINDS
from .lora import LLM_LORA_TARGET, apply_lora

MODEL_DTYPES = ("auto", "float32", "bfloat16", "float16")


@dataclass
class VAEmotionTrainingArguments(TrainingArguments):
    """Fields common to [`VGAlignConfig`] and [`EmoAdapterConfig`], validated in one place."""

    # -- model
    model_name_or_path: str | None = field(
        default=None, metadata={"help": "A saved VAEmotion model and processor (directory or hub id)."}
    )
    model_dtype: str | None = field(
        default=None, metadata={"help": f"Dtype the weights are loaded in: one of {MODEL_DTYPES} (default float32)."}
    )
    attn_implementation: str | None = field(default="sdpa", metadata={"help": "eager, sdpa or flash_attention_2."})
    cache_audio_encoder_states: bool = field(
        default=False,
        metadata={"help": "With a frozen audio encoder, encode each distinct audio window once and keep its states in "
                  "host memory for the run (memoize_frozen_audio_states), instead of re-encoding it every epoch. "
                  "Costs frames x width x 4 bytes per window (about 0.15 MB for 2 s through Whisper tiny, 7.7 MB for "
                  "a padded 30 s window through Whisper large-v3): meant for small datasets and many epochs."},
    )
    # -- data
    train_data: str | None = field(default=None, metadata={"help": "Training clips: a .jsonl manifest (or a folder)."})
    eval_data: str | None = field(default=None, metadata={"help": "Evaluation clips, in the same form (optional)."})
    system_prompt: str | None = field(default=None, metadata={"help": "System turn (default: the chat template's)."})
    num_frames: int = field(default=8, metadata={"help": "Frames sampled uniformly from each video."})
    keep_clips_in_memory: bool = field(
        default=False,
        metadata={"help": "Decode and process each clip once and keep it in memory (small data sets, e.g. the demo)."},
    )
    max_completion_length: int = field(
        default=64, metadata={"help": "Responses (the teacher's, or a manifest's answers) are cut to this many tokens."}
    )
    # -- distillation from the visual teacher, under TRL's names (DistillationConfig's beta and temperature, the
    #    server distillation's loss_top_k); README, "TRL's names"
    beta: float = field(
        default=0.0,
        metadata={"help": "KD divergence as TRL's beta: 0 forward KL(teacher || student), 1 reverse KL, in between the "
                  "generalised JSD whose mixture gives the teacher weight beta (0.5: symmetric JSD)."},
    )
    temperature: float = field(default=1.0, metadata={"help": "KD temperature tau (the loss is scaled by tau^2)."})
    loss_top_k: int | None = field(
        default=None,
        metadata={"help": "Keep the teacher's top-k tokens per position plus one tail bucket with the rest of its mass "
                  "(TRL's loss_top_k with loss_add_tail); None or 0: the whole vocabulary."},
    )
    loss_chunk_size: int | None = field(default=256, metadata={"help": "Positions per chunk of the KD loss."})
    # -- LoRA on the LLM
    lora_r: int = field(default=0, metadata={"help": "LoRA rank on the LLM (0: no LoRA)."})
    lora_alpha: int = field(default=16, metadata={"help": "LoRA alpha."})
    lora_dropout: float = field(default=0.05, metadata={"help": "LoRA dropout."})
    lora_target_modules: str = field(default=LLM_LORA_TARGET, metadata={"help": "Regex of the LoRA target modules."})
    # -- TrainingArguments defaults that suit these trainers
    remove_unused_columns: bool = field(
        default=False, metadata={"help": "Must stay False: examples carry decoded clips, not forward() arguments."}
    )
    report_to: None | str | list[str] = field(default="none", metadata={"help": "Integrations to report to."})

    # -- names before TRL's, still read: each warns and sets its TRL-named field
    max_response_tokens: int | None = field(default=None, metadata={"help": "Deprecated: max_completion_length."})
    divergence: str | None = field(
        default=None, metadata={"help": f"Deprecated: beta (forward_kl = 0, reverse_kl = 1, jsd = jsd_beta); one of {DIVERGENCE_KINDS}."}
    )
    jsd_beta: float | None = field(default=None, metadata={"help": "Deprecated: beta, with divergence jsd."})
    teacher_top_k: int | None = field(default=None, metadata={"help": "Deprecated: loss_top_k."})

    def __post_init__(self):
        self._read_deprecated_names()
        super().__post_init__()
        self._validate_shared()

    def _read_deprecated_names(self) -> None:
        """Map the names used before TRL's (``max_response_tokens``, ``divergence`` + ``jsd_beta``, ``teacher_top_k``)
        onto their TRL-named fields, with a FutureWarning each; a config that sets both names of one knob to
        different values is refused."""
        if self.divergence is not None and self.divergence not in DIVERGENCE_KINDS:
            raise ValueError(f"divergence must be one of {DIVERGENCE_KINDS}, got {self.divergence!r}")
        if self.divergence is None and self.jsd_beta is not None:
            raise ValueError("jsd_beta only applies with divergence: jsd; set TRL's beta instead (e.g. beta: 0.5)")
        beta = None
        if self.divergence is not None:
            jsd_beta = 0.5 if self.jsd_beta is None else self.jsd_beta
            if self.divergence == "jsd" and not 0 < jsd_beta < 1:
                raise ValueError(f"jsd_beta must lie in (0, 1), got {jsd_beta}")
            beta = {"forward_kl": 0.0, "reverse_kl": 1.0, "jsd": jsd_beta}[self.divergence]
        renames = (
            ("max_response_tokens", "max_completion_length", self.max_response_tokens),
            ("divergence" + ("/jsd_beta" if self.jsd_beta is not None else ""), "beta", beta),
            ("teacher_top_k", "loss_top_k", self.teacher_top_k),
        )
        defaults = {name: field.default for name, field in type(self).__dataclass_fields__.items()}
        for old, new, value in renames:
            if value is None:
                continue
            current = getattr(self, new)
            # a TRL-named field left at its default cannot be told from one set to it: the old name then wins
            if current != defaults[new] and current != value:
                raise ValueError(f"{old} (deprecated) and {new} are both set, to different values: remove {old}")
            warnings.warn(f"{old} is deprecated: use TRL's name {new} (here {new}={value!r})", FutureWarning, stacklevel=4)
            setattr(self, new, value)
        self.max_response_tokens = self.divergence = self.jsd_beta = self.teacher_top_k = None

    def _validate_shared(self) -> None:
        checks = [
            (bool(self.train_data), "train_data is required: a .jsonl manifest of clips (or a folder of videos)"),
            (self.model_dtype is None or self.model_dtype in MODEL_DTYPES,
             f"model_dtype must be one of {MODEL_DTYPES}, got {self.model_dtype!r}"),
            (self.num_frames >= 1, f"num_frames must be at least 1, got {self.num_frames}"),
            (self.max_completion_length >= 2,
             f"max_completion_length must be at least 2 (a word and the end of turn), got {self.max_completion_length}"),
            (math.isfinite(self.beta) and 0 <= self.beta <= 1, f"beta must lie in [0, 1], got {self.beta}"),
            (math.isfinite(self.temperature) and self.temperature > 0,
             f"temperature must be positive, got {self.temperature}"),
            (self.loss_top_k is None or self.loss_top_k >= 0,
             f"loss_top_k must be at least 1, or 0 or None for the whole vocabulary, got {self.loss_top_k}"),
            (self.loss_chunk_size is None or self.loss_chunk_size >= 1,
             f"loss_chunk_size must be at least 1 or None, got {self.loss_chunk_size}"),
            (self.lora_r >= 0, f"lora_r must be >= 0 (0: no LoRA), got {self.lora_r}"),
            (self.lora_alpha > 0, f"lora_alpha must be positive, got {self.lora_alpha}"),
            (0 <= self.lora_dropout < 1, f"lora_dropout must lie in [0, 1), got {self.lora_dropout}"),
            (not self.remove_unused_columns,
             "remove_unused_columns must be False: the collators read decoded clips, not forward() arguments"),
            (self.per_device_train_batch_size >= 1,
             f"per_device_train_batch_size must be at least 1, got {self.per_device_train_batch_size}"),
            (self.per_device_eval_batch_size >= 1,
             f"per_device_eval_batch_size must be at least 1, got {self.per_device_eval_batch_size}"),
            (self.gradient_accumulation_steps >= 1,
             f"gradient_accumulation_steps must be at least 1, got {self.gradient_accumulation_steps}"),
        ]
        for holds, message in checks:
            if not holds:
                raise ValueError(message)
        try:
            re.compile(self.lora_target_modules)
        except re.error as error:
            raise ValueError(f"lora_target_modules is not a valid regex: {error}") from None

    @property
    def torch_dtype(self):
        """The dtype weights are loaded in (``"auto"`` passes through)."""
        dtype = self.model_dtype or "float32"
        return dtype if dtype == "auto" else getattr(torch, dtype)

    @property
    def distillation(self) -> DistillationSettings:
        return DistillationSettings.from_beta(
            self.beta, temperature=self.temperature, teacher_top_k=self.loss_top_k or None,
            loss_chunk_size=self.loss_chunk_size,
        )


def load_model_and_processor(config: VAEmotionTrainingArguments, **config_overrides):
    """The model and processor a config names: ``model_name_or_path``, or (Stage 1) ``vlm_name_or_path`` +
    ``audio_name_or_path``. ``config_overrides`` replace fields of the saved model config at load time (a module
    switched off is never built). The model is returned in eval mode (the Trainer switches it to train mode)."""
    from ..modeling_vaemotion import VAEmotionForConditionalGeneration
    from ..processing_vaemotion import VAEmotionProcessor

    from ..backbones import check_model_reference

    for name in ("model_name_or_path", "vlm_name_or_path", "audio_name_or_path"):
        if getattr(config, name, None):
            check_model_reference(getattr(config, name), name)
    dtype = config.torch_dtype
    if config.model_name_or_path:
        processor = VAEmotionProcessor.from_pretrained(config.model_name_or_path)
        model = VAEmotionForConditionalGeneration.from_pretrained(
            config.model_name_or_path, dtype=dtype, attn_implementation=config.attn_implementation, **config_overrides
        )
    else:
        processor = VAEmotionProcessor.from_vlm_and_audio_pretrained(config.vlm_name_or_path, config.audio_name_or_path)
        model = VAEmotionForConditionalGeneration.from_vlm_and_audio_pretrained(
            config.vlm_name_or_path,
            config.audio_name_or_path,
            tokenizer=processor.tokenizer,
            attn_implementation=config.attn_implementation,
            dtype=None if dtype == "auto" else dtype,
            **config_overrides,
        )
    return model.eval(), processor


def upcast_trainable_parameters(model: torch.nn.Module) -> int:
    """Cast trainable half-precision parameters to float32; returns how many were cast.

    A bf16 weight cannot take AdamW's small updates (8 mantissa bits), so the few trainable parameters of a
    half-precision model are kept in float32; mixed-precision autocast runs them with the frozen bf16 ones.
    """
    cast = 0
    for parameter in model.parameters():
        if parameter.requires_grad and parameter.dtype in (torch.float16, torch.bfloat16):
            parameter.data = parameter.data.float()
            cast += 1
    return cast


def finish_trainable_setup(model, config: VAEmotionTrainingArguments, trainable_modules: list[str]):
    """After a stage froze all but its modules: memoize a frozen audio encoder's states when
    ``cache_audio_encoder_states`` asks for it, keep the trainable modules in float32 under mixed precision, attach
    LoRA adapters to the LLM when ``lora_r > 0`` (the fully trained modules become peft ``modules_to_save``), and
    count parameters. Returns ``(model or PeftModel, {"trainable", "total"})``."""
    model.memoize_frozen_audio_states(config.cache_audio_encoder_states)  # bypassed while the encoder trains
    if config.bf16 or config.fp16:
        upcast_trainable_parameters(model)
    if config.lora_r > 0:
        model = apply_lora(
            model, r=config.lora_r, alpha=config.lora_alpha, dropout=config.lora_dropout,
            target_modules=config.lora_target_modules, modules_to_save=trainable_modules,
        )  # fmt: skip
    return model, unwrap(model).count_parameters()
