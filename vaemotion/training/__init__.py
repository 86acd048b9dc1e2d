"""Training: Stage 1 (VG-Align) and Stage 2 (EmoAdapter) trainers and configs, the teacher cache, the clip data.

The names below load their submodule on first use, so ``import vaemotion.training`` (or ``.losses``) stays light:

>>> from vaemotion.training import EmoAdapterConfig, EmoAdapterTrainer, VGAlignConfig, VGAlignTrainer
>>> VGAlignTrainer.__module__, EmoAdapterConfig.__module__
('vaemotion.training.vg_align', 'vaemotion.training.emo_adapter')

As in TRL (``from trl import DistillationTrainer, DistillationConfig``), each stage is a ``...Config``
(`TrainingArguments`) and a `Trainer` subclass; ``train_stage1`` / ``train_stage2`` run a stage from its config.
"""

import importlib

_LAZY_EXPORTS = {
    # Stage 1, VG-Align
    "VGAlignConfig": ("vg_align", "VGAlignConfig"),
    "VGAlignTrainer": ("vg_align", "VGAlignTrainer"),
    "VGAlignCollator": ("vg_align", "VGAlignCollator"),
    "stage1_dataset": ("vg_align", "stage1_dataset"),
    "build_teacher_cache": ("vg_align", "build_teacher_cache"),
    "train_stage1": ("vg_align", "train_from_config"),
    # Stage 2, EmoAdapter
    "EmoAdapterConfig": ("emo_adapter", "EmoAdapterConfig"),
    "EmoAdapterTrainer": ("emo_adapter", "EmoAdapterTrainer"),
    "EmoAdapterCollator": ("emo_adapter", "EmoAdapterCollator"),
    "read_emotion_clips": ("emo_adapter", "read_emotion_clips"),
    "train_stage2": ("emo_adapter", "train_from_config"),
    # shared: model loading, clips, teacher cache
    "load_model_and_processor": ("arguments", "load_model_and_processor"),
    "ClipDataError": ("data", "ClipDataError"),
    "ClipDataset": ("data", "ClipDataset"),
    "ClipRecord": ("data", "ClipRecord"),
    "read_clips": ("data", "read_clips"),
    "TeacherCache": ("teacher_cache", "TeacherCache"),
    "TeacherCacheError": ("teacher_cache", "TeacherCacheError"),
    "TeacherCacheWriter": ("teacher_cache", "TeacherCacheWriter"),
}

__all__ = sorted(_LAZY_EXPORTS)


def __getattr__(name: str):
    if name in _LAZY_EXPORTS:
        module, attribute = _LAZY_EXPORTS[name]
        return getattr(importlib.import_module(f".{module}", __name__), attribute)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY_EXPORTS))
