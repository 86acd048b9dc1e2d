"""The ArtEmoBenchmark results plot: one panel per headline metric, bars per config, one colour per model.

Unsupported configs (or metrics without labelled items) get no bar but an "n/a" mark; chance levels are dashed.
Uses matplotlib's Agg backend, so it works without a display.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)
from matplotlib.patches import Patch  # noqa: E402

__all__ = ["PLOT_METRICS", "plot_results"]

PLOT_METRICS = (
    ("content_acc", "Content accuracy"),
    ("emotion_acc", "Emotion accuracy"),
    ("category_macro_f1", "Category macro-F1"),
    ("mean_ccc", "Valence/arousal mean CCC"),
)


def _value(metrics: dict, key: str) -> float | None:
    value = metrics.get(key) if metrics.get("supported") else None
    return None if value is None or math.isnan(value) else value


def plot_results(results: Sequence[dict], path: str | os.PathLike) -> None:
    """Save the plot of one or more models' results (as :func:`~vaemotion.benchmark.harness.evaluate_model` gives)."""
    configs = list(dict.fromkeys(name for result in results for name in result["configs"]))
    width = 0.8 / max(len(results), 1)
    figure, axes = plt.subplots(1, len(PLOT_METRICS), figsize=(4.2 * len(PLOT_METRICS), 3.8), squeeze=False)
    for axis, (key, title) in zip(axes[0], PLOT_METRICS):
        for index, result in enumerate(results):
            for column, config_name in enumerate(configs):
                x = column - 0.4 + width * (index + 0.5)
                value = _value(result["configs"].get(config_name, {}), key)
                if value is None:
                    axis.text(x, 0.02, "n/a", ha="center", va="bottom", fontsize=7, rotation=90, color="grey")
                else:
                    axis.bar(x, value, width, color=f"C{index}")
            for column, config_name in enumerate(configs):
                chance = result["configs"].get(config_name, {}).get("chance", {}).get(key)
                if chance is not None:
                    axis.hlines(chance, column - 0.45, column + 0.45, colors="black", linestyles="dashed", linewidth=1)
        axis.set_title(title, fontsize=10)
        axis.set_xticks(range(len(configs)), [name.replace("_", "\n") for name in configs], fontsize=8)
        axis.set_xlim(-0.5, len(configs) - 0.5)
        axis.set_ylim(min(0.0, axis.get_ylim()[0]), 1.0)
        axis.axhline(0.0, color="black", linewidth=0.5)
    # one legend entry per model, even for a model with no bar in some panels
    handles = [Patch(color=f"C{index}", label=result["model"]) for index, result in enumerate(results)]
    figure.legend(handles=handles, loc="lower center", ncol=max(len(handles), 1), fontsize=8, frameon=False)
    figure.tight_layout(rect=(0, 0.08, 1, 1))
    figure.savefig(path, dpi=120)
    plt.close(figure)
