"""ArtEmoBenchmark: the dataset builder, plain metric functions and ``evaluate`` modules.

``evaluate`` is an optional extra (``pip install vaemotion[metrics]``), so nothing here imports it; the modules
are loaded by path:

>>> import evaluate  # doctest: +SKIP
>>> f1 = evaluate.load(metric_path("emotion_f1"))  # doctest: +SKIP
>>> f1.compute(predictions=[0, 1, 1], references=[0, 1, 2])["macro_f1"]  # doctest: +SKIP
0.5555555555555555
"""

import os

from .artemo import (
    CONFIG_NAMES,
    NO_EMOTION,
    ArtEmoBenchmark,
    ArtEmoConfig,
    ArtEmoValidationError,
    cast_audio,
    embed_media,
    export_parquet,
    load_artemo,
    push_artemo_to_hub,
    read_metadata,
)

METRIC_NAMES = ("artemo_accuracy", "emotion_f1", "valence_arousal")


def metric_path(name: str) -> str:
    """Absolute path of one of our ``evaluate`` module folders, for ``evaluate.load`` (works offline).

    An absolute path matters: ``evaluate.load`` treats a relative path that does not exist from the working
    directory as a Hub id.

    >>> os.path.isabs(metric_path("emotion_f1")), os.path.basename(metric_path("emotion_f1"))
    (True, 'emotion_f1')
    """
    if name not in METRIC_NAMES:
        raise ValueError(f"unknown ArtEmoBenchmark metric {name!r}; known metrics: {', '.join(METRIC_NAMES)}")
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), "metrics", name)


__all__ = [
    "CONFIG_NAMES",
    "METRIC_NAMES",
    "NO_EMOTION",
    "ArtEmoBenchmark",
    "ArtEmoConfig",
    "ArtEmoValidationError",
    "cast_audio",
    "embed_media",
    "export_parquet",
    "load_artemo",
    "metric_path",
    "push_artemo_to_hub",
    "read_metadata",
]
