"""VAEmotion: a pretrained vision-language model learns to hear by seeing, then to understand emotion.

Importing the package registers its classes with the transformers Auto classes (and the
``audio-visual-emotion`` pipeline task), so ``AutoModel.from_pretrained(dir)`` returns our model.
"""

__version__ = "0.1.0"

from transformers import AutoConfig, AutoModel, AutoModelForImageTextToText, AutoProcessor
from transformers.pipelines import PIPELINE_REGISTRY

from .configuration_vaemotion import ARTEMIS_EMOTIONS, VAEmotionConfig, num_audio_tokens
from .lazy import lazy_exports
from .media import VAEmotionInputError, VideoClip, load_audio, load_video
from .modeling_vaemotion import (
    EmotionPrediction,
    VAEmotionForConditionalGeneration,
    VAEmotionOutput,
    VAEmotionPreTrainedModel,
)
from .pipeline_vaemotion import AudioVisualEmotionPipeline
from .processing_vaemotion import VAEmotionProcessor

AutoConfig.register("vaemotion", VAEmotionConfig, exist_ok=True)
AutoModel.register(VAEmotionConfig, VAEmotionForConditionalGeneration, exist_ok=True)
AutoModelForImageTextToText.register(VAEmotionConfig, VAEmotionForConditionalGeneration, exist_ok=True)
AutoProcessor.register(VAEmotionConfig, VAEmotionProcessor, exist_ok=True)
# An Auto class, not our own: transformers resolves a saved pipeline's model classes by name in its own namespace.
PIPELINE_REGISTRY.register_pipeline(
    "audio-visual-emotion",
    pipeline_class=AudioVisualEmotionPipeline,
    pt_model=AutoModelForImageTextToText,
    type="multimodal",
)

# The benchmark's entry points, loaded on first use: `import vaemotion` stays free of the harness, the trainers,
# datasets' builder and matplotlib.
__getattr__, __dir__ = lazy_exports(__name__, {
    "evaluate_model": ".benchmark.harness",
    "evaluate_checkpoints": ".benchmark.harness",
    "write_report": ".benchmark.harness",
    "load_adapter": ".benchmark.baselines",
    "load_artemo": ".benchmark.artemo",
    "metric_path": ".benchmark",
    "generate_benchmark": ".synth",
})  # fmt: skip


__all__ = [
    "ARTEMIS_EMOTIONS",
    "AudioVisualEmotionPipeline",
    "EmotionPrediction",
    "VAEmotionConfig",
    "VAEmotionForConditionalGeneration",
    "VAEmotionInputError",
    "VAEmotionOutput",
    "VAEmotionPreTrainedModel",
    "VAEmotionProcessor",
    "VideoClip",
    "evaluate_checkpoints",
    "evaluate_model",
    "generate_benchmark",
    "load_adapter",
    "load_artemo",
    "load_audio",
    "load_video",
    "metric_path",
    "num_audio_tokens",
    "write_report",
    "__version__",
]
