"""What a run produced, assembled for the bucket and the store: the model file with its
metrics and hyperparameters, the models row's metadata, the progress a finished epoch (or
the whole run) shows."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from training_core.dataset import DatasetDescription
from training_core.domain import Progress
from training_core.runspec import RunSpec

from trainer.artifact import build_artifact
from trainer.engine import EpochResult, Evaluation, Trainer


@dataclass(frozen=True)
class Outcome:
    """What training produced, ready to upload and record."""

    model_path: Path
    metrics: dict[str, Any]
    record: dict[str, Any]  # the models row's metadata


def build_outcome(
    spec: RunSpec, project_id: str | None, trainer: Trainer, dataset: DatasetDescription,
    history: list[EpochResult], validation: Evaluation, test: Evaluation | None, scratch: Path,
) -> Outcome:  # fmt: skip
    """The model file (written to ``scratch``), its metrics and its row's metadata."""
    final = history[-1]
    training_seconds = sum(r.seconds for r in history)
    metrics = {
        "final_loss": final.train_loss,
        "val_loss": validation.loss,
        "val_accuracy": validation.accuracy,
        "test_accuracy": test.accuracy if test else None,
        "training_time_seconds": round(training_seconds, 2),
        "steps": trainer.lr_scheduler.last_epoch,  # optimizer steps, resumes included
        "images_per_second": final.images_per_second,
        "confusion_matrix": (test or validation).confusion,
        "confusion_matrix_split": "test" if test else "val",
        "history": [asdict(r) for r in history],
    }
    hyperparameters = {
        "model": spec.model, "epochs": spec.epochs,
        "learning_rate": spec.learning_rate, "batch_size": spec.batch_size,
        "image_size": spec.image_size, "pretrained": spec.pretrained,
        "seed": trainer.config.seed, "optimizer": "adam", "lr_schedule": "cosine",
        "compiled": trainer.compiled,
        "precision": "bf16" if trainer.amp else "fp32",
    }  # fmt: skip
    artifact = build_artifact(
        trainer.model, architecture=spec.model, classes=dataset.classes,
        input_size=spec.image_size, metrics=metrics, hyperparameters=hyperparameters,
        run_id=str(spec.run_id), project_id=project_id,
    )  # fmt: skip
    model_path = scratch / "model.pth"
    torch.save(artifact, model_path)
    return Outcome(model_path, metrics, model_record(artifact["metadata"]))


def epoch_progress(trainer: Trainer, result: EpochResult) -> Progress:
    return Progress(
        epoch=result.epoch, total_epochs=trainer.config.epochs, loss=round(result.train_loss, 5),
        val_loss=round(result.val_loss, 5), val_accuracy=round(result.val_accuracy, 5),
        images_per_second=round(result.images_per_second, 1), eta_seconds=round(trainer.eta_seconds(), 1),
        history=Progress.history_of(asdict(r) for r in trainer.state.history),  # restored too
    )  # fmt: skip


def final_progress(spec: RunSpec, outcome: Outcome) -> Progress:
    history = outcome.metrics["history"]
    last = history[-1]
    return Progress(
        epoch=last["epoch"], total_epochs=spec.epochs, loss=round(last["train_loss"], 5),
        val_loss=round(last["val_loss"], 5), val_accuracy=round(last["val_accuracy"], 5),
        images_per_second=round(last["images_per_second"], 1), eta_seconds=0,
        history=Progress.history_of(history),
    )  # fmt: skip


def model_record(metadata: dict[str, Any]) -> dict[str, Any]:
    """The ``models`` row's metadata: what a user looks for first."""
    metrics, hyper = metadata["metrics"], metadata["hyperparameters"]
    return {
        "epochs": hyper["epochs"],
        "final_loss": metrics["final_loss"],
        "val_accuracy": metrics["val_accuracy"],
        "test_accuracy": metrics["test_accuracy"],
        "training_time_seconds": metrics["training_time_seconds"],
        "classes": metadata["classes"],
        "architecture": metadata["architecture"],
        "input_size": metadata["input_size"],
    }
