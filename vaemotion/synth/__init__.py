"""ArtEmo-Synth: procedural synchronized audio-visual clips in which picture and sound express one latent.

The latent is a content class (a visual motif and a sonic timbre/texture) and a valence-arousal point (colour,
brightness and motion in the picture; mode, consonance, tempo and loudness in the sound), from which one of the 8
ArtEmis emotion categories follows. Each modality hides part of the latent in a documented share of the clips
(``Cues``, ``HIDDEN_CUE_RATE``), so sound and picture complement each other. :func:`generate_benchmark` writes the
ArtEmoBenchmark layout (docs/benchmark_layout.md); :func:`synthesize` renders clips in memory.
"""

from .generator import (
    CONTENT_QUESTION,
    EMOTION_QUESTION,
    SynthClip,
    generate_benchmark,
    read_hidden_cues,
    render_clip,
    synthesize,
)
from .io import write_clip, write_image, write_wav
from .latents import (
    CONTENT_CLASSES,
    CUES,
    EMOTION_SECTORS,
    HIDDEN_CUE_RATE,
    ClipLatent,
    Cues,
    emotion_from_valence_arousal,
    sample_cues,
    sample_latents,
)

__all__ = [
    "CONTENT_CLASSES",
    "CONTENT_QUESTION",
    "CUES",
    "EMOTION_QUESTION",
    "EMOTION_SECTORS",
    "HIDDEN_CUE_RATE",
    "ClipLatent",
    "Cues",
    "SynthClip",
    "emotion_from_valence_arousal",
    "generate_benchmark",
    "read_hidden_cues",
    "render_clip",
    "sample_cues",
    "sample_latents",
    "synthesize",
    "write_clip",
    "write_image",
    "write_wav",
]
