"""ArtEmoBenchmark: the dataset builder, plain metric functions and ``evaluate`` modules.

``evaluate`` is an optional extra (``pip install vaemotion[metrics]``), so nothing here imports it; the modules
are loaded by path:

>>> import evaluate  # doctest: +SKIP
>>> f1 = evaluate.load(metric_path("emotion_f1"))  # doctest: +SKIP
>>> f1.compute(predictions=[0, 1, 1], references=[0, 1, 2])["macro_f1"]  # doctest: +SKIP
0.5555555555555555

The harness (``evaluate_model``, ``write_report``; ``vaemotion eval`` on the command line) and the model adapters
(``load_adapter``) are imported on first use.
"""

import os

from ..lazy import lazy_exports
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

# The harness and the model adapters load on first use: they pull in the processors and matplotlib.
__getattr__, __dir__ = lazy_exports(__name__, {
    "evaluate_model": ".harness",
    "evaluate_checkpoints": ".harness",
    "write_report": ".harness",
    "adapter_for": ".baselines",
    "load_adapter": ".baselines",
})  # fmt: skip


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
    "adapter_for",
    "cast_audio",
    "embed_media",
    "evaluate_checkpoints",
    "evaluate_model",
    "export_parquet",
    "load_adapter",
    "load_artemo",
    "metric_path",
    "push_artemo_to_hub",
    "read_metadata",
    "write_report",
]
