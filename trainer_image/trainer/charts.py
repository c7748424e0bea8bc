"""For people who would rather look than read: the training curves and the confusion
matrix as one PNG, and the same numbers as ``metrics.json``."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display in a Job; must precede pyplot's import

import matplotlib.pyplot as plt


def write_metrics_json(metrics: dict[str, Any], path: Path) -> Path:
    path.write_text(json.dumps(metrics, indent=2, sort_keys=True))
    return path


def write_charts(
    history: Sequence[dict[str, Any]],
    confusion: Sequence[Sequence[int]],
    classes: Sequence[str],
    path: Path,
    title: str,
) -> Path:
    epochs = [row["epoch"] for row in history]
    figure, (losses, accuracy, matrix) = plt.subplots(1, 3, figsize=(16, 4.8))
    figure.suptitle(title)
    losses.plot(epochs, [r["train_loss"] for r in history], marker="o", label="train")
    losses.plot(epochs, [r["val_loss"] for r in history], marker="o", label="validation")
    losses.set(title="Loss", xlabel="epoch")
    losses.legend()
    accuracy.plot(epochs, [r["val_accuracy"] for r in history], marker="o", color="tab:green")
    accuracy.set(title="Validation accuracy", xlabel="epoch", ylim=(0, 1.02))
    image = matrix.imshow(confusion, cmap="Blues")
    matrix.set(title="Confusion matrix", xlabel="predicted", ylabel="true")
    if len(classes) <= 30:  # beyond that the labels only make noise
        matrix.set_xticks(range(len(classes)), classes, rotation=90)
        matrix.set_yticks(range(len(classes)), classes)
    figure.colorbar(image, ax=matrix)
    figure.tight_layout()
    figure.savefig(path, dpi=80)
    plt.close(figure)
    return path
