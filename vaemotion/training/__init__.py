"""Training: Stage 1 (VG-Align) and Stage 2 (EmoAdapter) trainers and configs, the teacher cache, the clip data.

The names below load their submodule on first use, so ``import vaemotion.training`` (or ``.losses``) stays light:

>>> from vaemotion.training import EmoAdapterConfig, EmoAdapterTrainer, VGAlignConfig, VGAlignTrainer
>>> VGAlignTrainer.__module__, EmoAdapterConfig.__module__
('vaemotion.training.vg_align', 'vaemotion.training.emo_adapter')

As in TRL (``from trl import DistillationTrainer, DistillationConfig``), each stage is a ``...Config``
(`TrainingArguments`) and a `Trainer` subclass; ``train_stage1`` / ``train_stage2`` run a stage from its config.
"""

from ..lazy import lazy_exports

_EXPORTS = {
    # Stage 1, VG-Align
    "VGAlignConfig": ".vg_align",
    "VGAlignTrainer": ".vg_align",
    "VGAlignCollator": ".vg_align",
    "stage1_dataset": ".vg_align",
    "build_teacher_cache": ".vg_align",
    "train_stage1": ".vg_align:train_from_config",
    # Stage 2, EmoAdapter
    "EmoAdapterConfig": ".emo_adapter",
    "EmoAdapterTrainer": ".emo_adapter",
    "EmoAdapterCollator": ".emo_adapter",
    "read_emotion_clips": ".emo_adapter",
    "train_stage2": ".emo_adapter:train_from_config",
    # shared: model loading, clips, teacher cache
    "load_model_and_processor": ".arguments",
    "ClipDataError": ".data",
    "ClipDataset": ".data",
    "ClipRecord": ".data",
    "read_clips": ".data",
    "TeacherCache": ".teacher_cache",
    "TeacherCacheError": ".teacher_cache",
    "TeacherCacheWriter": ".teacher_cache",
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
__all__ = sorted(_EXPORTS)
