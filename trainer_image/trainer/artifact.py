"""The model artifact: one ``.pth`` file that holds everything needed to use the model.

``torch.load(path, weights_only=True)`` gives a dict::

    {"format": "training-agent-model", "format_version": 1,
     "state_dict": {...},                 # the torchvision model's weights
     "metadata": {
        "architecture": "resnet18", "num_classes": 10, "classes": ["cat", "dog", …],
        "input_size": 224, "normalization": {"mean": [...], "std": [...]},
        "metrics": {"final_loss", "val_loss", "val_accuracy", "test_accuracy", "history"},
        "hyperparameters": {"epochs", "learning_rate", "batch_size", "seed", "pretrained"},
        "versions": {"torch", "torchvision", "training_agent"},
        "run_id", "project_id", "created_at"}}

:func:`load_model` rebuilds the model from it and classifies images.
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
import torchvision
from PIL import Image
from torch import nn
from training_core.errors import InvalidInput

from trainer.data import IMAGENET_MEAN, IMAGENET_STD
from trainer.models import create_model

FORMAT = "training-agent-model"
FORMAT_VERSION = 1


def build_artifact(
    model: nn.Module,
    *,
    architecture: str,
    classes: Sequence[str],
    input_size: int,
    metrics: dict[str, Any],
    hyperparameters: dict[str, Any],
    run_id: str | None = None,
    project_id: str | None = None,
) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "metadata": {
            "architecture": architecture,
            "num_classes": len(classes),
            "classes": list(classes),
            "input_size": input_size,
            "normalization": {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)},
            "metrics": metrics,
            "hyperparameters": hyperparameters,
            "versions": versions(),
            "run_id": run_id,
            "project_id": project_id,
            "created_at": datetime.now(UTC).isoformat(),
        },
    }


def versions() -> dict[str, str]:
    try:
        agent = importlib.metadata.version("training-agent")
    except importlib.metadata.PackageNotFoundError:
        agent = "unknown"
    # Plain str: torch.__version__ is a str subclass that weights_only loading refuses.
    return {
        "torch": str(torch.__version__),
        "torchvision": str(torchvision.__version__),
        "training_agent": agent,
    }


@dataclass(frozen=True)
class Prediction:
    label: str
    index: int
    confidence: float


class LoadedModel:
    """A trained classifier with the preprocessing it was trained with."""

    def __init__(self, model: nn.Module, metadata: dict[str, Any]) -> None:
        self.model = model.eval()
        self.metadata = metadata
        self.classes: list[str] = metadata["classes"]
        self.input_size: int = metadata["input_size"]
        norm = metadata["normalization"]
        self.mean = torch.tensor(norm["mean"]).view(3, 1, 1)
        self.std = torch.tensor(norm["std"]).view(3, 1, 1)

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        rgb = image.convert("RGB").resize((self.input_size,) * 2, Image.Resampling.BILINEAR)
        pixels = torch.frombuffer(bytearray(rgb.tobytes()), dtype=torch.uint8)
        x = pixels.view(self.input_size, self.input_size, 3).permute(2, 0, 1).float() / 255
        return (x - self.mean) / self.std

    @torch.inference_mode()
    def classify(self, images: Sequence[Image.Image | Path]) -> list[Prediction]:
        batch = torch.stack([self.preprocess(_open(image)) for image in images])
        probabilities = self.model(batch).softmax(dim=1)
        confidence, index = probabilities.max(dim=1)
        return [
            Prediction(self.classes[i], i, float(c))
            for i, c in zip(index.tolist(), confidence.tolist(), strict=True)
        ]


def load_model(path: Path) -> LoadedModel:
    """Rebuild a classifier from an artifact file (read as data only: no code runs)."""
    try:
        artifact = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - any unreadable file reads the same to a user
        raise InvalidInput(f"cannot read model file {path}: {error}") from None
    if not isinstance(artifact, dict) or artifact.get("format") != FORMAT:
        raise InvalidInput(f"{path} is not a {FORMAT} file")
    metadata = artifact["metadata"]
    model = create_model(metadata["architecture"], metadata["num_classes"])
    model.load_state_dict(artifact["state_dict"])
    return LoadedModel(model, metadata)


def _open(image: Image.Image | Path) -> Image.Image:
    if isinstance(image, Image.Image):
        return image
    with Image.open(image) as opened:
        opened.load()
        return opened
