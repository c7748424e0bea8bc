"""The run domain: phases, the records the store hands out, and the progress a run reports.

Pure data and decisions only; no I/O lives here.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from datetime import datetime
from enum import StrEnum
from typing import Any
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field


class Phase(StrEnum):
    """One vocabulary for the store, the TrainingRun resource and the API."""

    QUEUED = "Queued"
    PENDING = "Pending"
    RUNNING = "Running"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    CANCELLED = "Cancelled"

    @property
    def is_active(self) -> bool:
        return self in ACTIVE_PHASES

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL_PHASES


ACTIVE_PHASES = frozenset({Phase.QUEUED, Phase.PENDING, Phase.RUNNING})
TERMINAL_PHASES = frozenset({Phase.SUCCEEDED, Phase.FAILED, Phase.CANCELLED})

# A terminal phase is final: every state change is a conditional update that expects one of
# ACTIVE_PHASES, so nothing overwrites an outcome (Running → Pending is a preempted pod).


class Record(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")


class Project(Record):
    id: UUID
    name: str
    task_type: str | None = None
    framework: str | None = None
    status: str
    metadata: dict[str, Any] = Field(default_factory=dict)
    created_at: datetime | None = None


class Dataset(Record):
    id: UUID
    project_id: UUID
    name: str | None = None
    gcs_url: str
    size: int | None = None
    source: str | None = None
    created_at: datetime | None = None


class EpochPoint(Record):
    """One finished epoch, as the curves draw it (``loss`` is the training loss)."""

    epoch: int
    loss: float | None = None
    val_loss: float | None = None
    val_accuracy: float | None = None
    images_per_second: float | None = None
    seconds: float | None = None


class ProgressSummary(Record):
    """What a user watches while a run trains (the API's ``progress``); every field is
    optional until known."""

    epoch: int | None = None
    total_epochs: int | None = None
    loss: float | None = None
    val_accuracy: float | None = None
    images_per_second: float | None = None
    eta_seconds: float | None = None


class Progress(ProgressSummary):
    """A run's progress document, as the trainer writes it to the store and the TrainingRun's
    status shows it (camelCase, less the history).

    ``history`` holds every finished epoch, oldest first: a run's whole curve lives in its
    one progress document, and a resumed run carries the epochs it trained before."""

    val_loss: float | None = None
    history: list[EpochPoint] | None = None

    @staticmethod
    def status_keys() -> list[str]:
        """The keys a progress status shows: every one but the history."""
        return [name for name in Progress.model_fields if name != "history"]

    @staticmethod
    def history_of(results: Iterable[Mapping[str, Any]]) -> list[EpochPoint]:
        """The trainer's per-epoch results (``epoch, train_loss, val_loss, val_accuracy,
        images_per_second, seconds``) as a progress history, rounded: a few dozen bytes an epoch."""

        def rounded(value: Any, digits: int) -> float | None:
            return None if value is None else round(float(value), digits)

        return [
            EpochPoint(
                epoch=int(result["epoch"]),
                loss=rounded(result.get("train_loss"), 5),
                val_loss=rounded(result.get("val_loss"), 5),
                val_accuracy=rounded(result.get("val_accuracy"), 5),
                images_per_second=rounded(result.get("images_per_second"), 1),
                seconds=rounded(result.get("seconds"), 2),
            )
            for result in results
        ]


class Run(Record):
    id: UUID
    project_id: UUID
    name: str
    phase: Phase
    attempt: int = 1
    spec: dict[str, Any] = Field(default_factory=dict)
    progress: dict[str, Any] = Field(default_factory=dict)
    model_url: str | None = None
    error: str | None = None
    created_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    updated_at: datetime | None = None


class ModelRecord(Record):
    id: UUID
    project_id: UUID
    run_id: UUID | None = None
    name: str
    framework: str | None = None
    gcs_url: str
    metadata: dict[str, Any] = Field(default_factory=dict)


class LogEntry(Record):
    id: int
    project_id: UUID
    agent_name: str
    message: str
    log_level: str
    created_at: datetime | None = None


_UNSAFE = re.compile(r"[^a-z0-9-]+")


def run_name(project_id: UUID | str, attempt: int) -> str:
    """A deterministic, DNS-1123-safe name: a retried start finds the run it already made."""
    return f"train-{str(project_id)[:8]}-{str(project_id)[-12:]}-{attempt}"


def safe_name(text: str, max_length: int = 63) -> str:
    """Lower-case letters, digits and dashes only: fit for object names and labels."""
    cleaned = _UNSAFE.sub("-", text.lower()).strip("-")
    return cleaned[:max_length].rstrip("-") or "model"
