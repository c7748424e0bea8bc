"""Request and response bodies of the HTTP API (with the examples OpenAPI shows)."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any, Literal
from uuid import UUID

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from training_core.domain import EpochPoint, LogEntry, Progress, ProgressSummary, Project, Run
from training_core.runspec import SUPPORTED_MODELS
from training_api import decisions

if TYPE_CHECKING:
    from training_api.service import ModelMetrics, Started
    from training_core.store import ProjectRun, ProjectStatus

SupportedModel = Literal[SUPPORTED_MODELS]  # type: ignore[valid-type]

# A string, not a UUID: a malformed id is the caller's 400, not a schema 422.
ProjectIdText = Annotated[
    str,
    Field(
        max_length=100,
        description="The project's id (a UUID).",
        json_schema_extra={"format": "uuid"},
    ),
]

def _not_a_bool(value: Any) -> Any:
    if isinstance(value, bool):
        raise ValueError("Input should be a valid integer, not a boolean")
    return value


def count(at_least: int) -> Any:
    """A whole number from ``at_least`` on, as JSON Schema has it (48.0 is 48), but JSON's
    true is not 1."""
    return Annotated[int, Field(ge=at_least), BeforeValidator(_not_a_bool)]

EXAMPLE_PROJECT = "3f2b6c1e-8d4a-4f6b-9c2e-1a7d5e9b0c34"
EXAMPLE_RUN = "9b1c2d3e-4f5a-4b6c-8d7e-0f1a2b3c4d5e"
EXAMPLE_MODEL_URL = "gs://automl-models/models/flowers_model.pth"


class StartRequest(BaseModel):
    """Start training a project. Values given here win over the project's metadata."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"project_id": EXAMPLE_PROJECT},
                {
                    "project_id": EXAMPLE_PROJECT,
                    "model": "resnet50",
                    "epochs": 20,
                    "batch_size": 64,
                },
            ]
        },
    )

    project_id: ProjectIdText
    model: SupportedModel | None = Field(None, description="Architecture to fine-tune.")
    epochs: count(1) | None = Field(None, description="Epochs to train (at most MAX_EPOCHS).")
    learning_rate: float | None = Field(None, gt=0, lt=1, description="Initial learning rate.")
    batch_size: count(2) | None = Field(
        None,
        description="Images per step, over all GPUs (at most MAX_BATCH_SIZE); each training"
        " process trains an equal slice of it.",
    )
    gpus: count(0) | None = Field(
        None,
        description="GPUs per node, one training process each (at most MAX_GPUS_PER_NODE).",
    )
    nodes: count(1) | None = Field(None, description="Nodes that train together (at most MAX_NODES).")

    def overrides(self) -> dict[str, Any]:
        return self.model_dump(exclude={"project_id"}, exclude_none=True)


class StartResponse(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "success": True,
                    "created": True,
                    "run_id": EXAMPLE_RUN,
                    "run_name": "train-3f2b6c1e-1a7d5e9b0c34-1",
                    "status": "queued",
                    "model_url": EXAMPLE_MODEL_URL,
                    "status_url": f"/agents/training/status/{EXAMPLE_PROJECT}",
                    "message": "training run train-3f2b6c1e-1a7d5e9b0c34-1 queued",
                }
            ]
        }
    )

    success: bool = True
    created: bool = Field(
        description="False when the project already had an active run (returned)."
    )
    run_id: UUID
    run_name: str
    status: str = Field(description="The run's phase, lower-case: queued, pending, running, …")
    model_url: str | None = Field(description="Where the run writes its model.")
    status_url: str
    message: str

    @classmethod
    def of(cls, started: Started, public_base_url: str) -> StartResponse:
        run = started.run
        if started.created:
            message = f"training run {run.name} queued"
        else:
            message = (
                f"training run {run.name} is already active for this project; no new run started"
            )
        return cls(
            created=started.created,
            run_id=run.id,
            run_name=run.name,
            status=decisions.phase_label(run.phase),
            model_url=run.model_url,
            status_url=f"{public_base_url.rstrip('/')}/agents/training/status/{run.project_id}",
            message=message,
        )


class RunView(BaseModel):
    id: UUID
    name: str
    phase: str
    attempt: int
    model: str | None = None
    epochs: int | None = None
    model_url: str | None = None
    error: str | None = None
    progress: dict[str, Any] = Field(default_factory=dict)
    created_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None

    @classmethod
    def of(cls, run: Run) -> RunView:
        return cls(
            **run.model_dump(include={"id", "name", "attempt", "model_url", "error"}),
            progress=decisions.progress_without_history(run),
            phase=run.phase.value,
            model=run.spec.get("model"),
            epochs=run.spec.get("epochs"),
            created_at=run.created_at,
            started_at=run.started_at,
            finished_at=run.finished_at,
        )


class ProgressView(ProgressSummary):
    """A run's progress as the API answers it (the history is answered on its own)."""


class LogView(BaseModel):
    message: str
    level: str
    agent: str
    created_at: datetime | None = None

    @classmethod
    def of(cls, entry: LogEntry) -> LogView:
        return cls(
            message=entry.message,
            level=entry.log_level,
            agent=entry.agent_name,
            created_at=entry.created_at,
        )


class StatusResponse(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "success": True,
                    "project_id": EXAMPLE_PROJECT,
                    "project_name": "flowers",
                    "project_status": "training",
                    "status": "running",
                    "progress": {
                        "epoch": 3,
                        "total_epochs": 10,
                        "loss": 0.41,
                        "val_accuracy": 0.87,
                        "images_per_second": 812.5,
                        "eta_seconds": 95,
                    },
                    "run": {
                        "id": EXAMPLE_RUN,
                        "name": "train-3f2b6c1e-1a7d5e9b0c34-1",
                        "phase": "Running",
                        "attempt": 1,
                        "model": "resnet18",
                        "epochs": 10,
                        "model_url": EXAMPLE_MODEL_URL,
                        "error": None,
                        "progress": {},
                    },
                    "model_url": EXAMPLE_MODEL_URL,
                    "logs": [
                        {
                            "message": "Epoch 3/10: loss 0.41, val accuracy 0.87",
                            "level": "info",
                            "agent": "training-agent",
                            "created_at": "2026-11-26T22:50:00Z",
                        }
                    ],
                    "history": [
                        {"epoch": 1, "loss": 1.02, "val_loss": 0.81, "val_accuracy": 0.71,
                         "images_per_second": 790.2, "seconds": 31.6},
                        {"epoch": 2, "loss": 0.58, "val_loss": 0.52, "val_accuracy": 0.83,
                         "images_per_second": 815.0, "seconds": 30.7},
                        {"epoch": 3, "loss": 0.41, "val_loss": 0.44, "val_accuracy": 0.87,
                         "images_per_second": 812.5, "seconds": 30.8},
                    ],
                }
            ]
        }
    )

    success: bool = True
    project_id: UUID
    project_name: str | None = None
    project_status: str
    status: str = Field(description="The latest run's phase, lower-case, or 'not_started'.")
    progress: ProgressView
    run: RunView | None
    model_url: str | None
    logs: list[LogView] = Field(description="The newest agent_logs lines, newest first.")
    history: list[EpochPoint] = Field(
        default_factory=list,
        description="Every finished epoch of the latest run, oldest first (a resumed run keeps"
        " the epochs it trained before): loss (training), val_loss, val_accuracy,"
        " images_per_second, seconds.",
    )

    @classmethod
    def of(cls, found: ProjectStatus) -> StatusResponse:
        run = found.run
        return cls(
            project_id=found.project.id,
            project_name=found.project.name,
            project_status=found.project.status,
            status=decisions.phase_label(run.phase) if run else "not_started",
            progress=ProgressView(**decisions.progress_of(run)),
            run=RunView.of(run) if run else None,
            model_url=run.model_url if run else None,
            logs=[LogView.of(entry) for entry in found.logs],
            history=decisions.history_of(run),
        )


class RunSummary(BaseModel):
    """One run of the runs list, with its project."""

    project_id: UUID
    project_name: str
    project_status: str
    status: str = Field(description="The run's phase, lower-case.")
    progress: ProgressView
    run: RunView

    @classmethod
    def of(cls, item: ProjectRun) -> RunSummary:
        return cls(
            project_id=item.project.id,
            project_name=item.project.name,
            project_status=item.project.status,
            status=decisions.phase_label(item.run.phase),
            progress=ProgressView(**decisions.progress_of(item.run)),
            run=RunView.of(item.run),
        )


class RunsResponse(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "success": True,
                    "runs": [
                        {
                            "project_id": EXAMPLE_PROJECT,
                            "project_name": "flowers",
                            "project_status": "training",
                            "status": "running",
                            "progress": {
                                "epoch": 3, "total_epochs": 10, "loss": 0.41,
                                "val_accuracy": 0.87, "images_per_second": 812.5,
                                "eta_seconds": 95,
                            },
                            "run": {
                                "id": EXAMPLE_RUN, "name": "train-3f2b6c1e-1a7d5e9b0c34-1",
                                "phase": "Running", "attempt": 1, "model": "resnet18",
                                "epochs": 10, "model_url": EXAMPLE_MODEL_URL, "error": None,
                                "progress": {}, "started_at": "2026-11-26T22:49:00Z",
                            },
                        }
                    ],
                }
            ]
        }
    )  # fmt: skip

    success: bool = True
    runs: list[RunSummary] = Field(description="The newest runs of all projects, newest first.")


class MetricsResponse(decisions.ModelFigures):
    """The metrics file the trainer wrote next to the model, with the model's class names."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "success": True,
                    "project_id": EXAMPLE_PROJECT,
                    "run_id": EXAMPLE_RUN,
                    "model_url": EXAMPLE_MODEL_URL,
                    "metrics_url": decisions.metrics_url_of(EXAMPLE_MODEL_URL),
                    "classes": ["rose", "tulip"],
                    "confusion_matrix": [[48, 2], [3, 47]],
                    "confusion_matrix_split": "test",
                    "val_accuracy": 0.94,
                    "test_accuracy": 0.95,
                    "val_loss": 0.18,
                    "final_loss": 0.12,
                    "training_time_seconds": 312.4,
                    "images_per_second": 812.5,
                    "history": [],
                }
            ]
        }
    )

    success: bool = True
    project_id: UUID
    run_id: UUID
    model_url: str
    metrics_url: str = Field(description="Where the metrics file is, next to the model.")
    classes: list[str] | None = Field(
        description="Class names in the model's index order: the rows (true class) and columns"
        " (predicted class) of the confusion matrix; null when the models row has none."
    )
    confusion_matrix: list[list[int]]
    confusion_matrix_split: str | None = Field(description="'test' when test/ existed, else 'val'.")
    history: list[EpochPoint] = Field(default_factory=list)

    @classmethod
    def of(cls, found: ModelMetrics) -> MetricsResponse:
        return cls(
            project_id=found.run.project_id,
            run_id=found.run.id,
            model_url=found.run.model_url or "",
            metrics_url=found.metrics_url,
            classes=found.classes,
            **found.metrics.model_dump(exclude={"history"}),
            history=Progress.history_of(e.model_dump() for e in found.metrics.history),
        )


class CancelResponse(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "success": True,
                    "run_id": EXAMPLE_RUN,
                    "status": "cancelled",
                    "project_status": "pending_training",
                    "message": "training run train-3f2b6c1e-1a7d5e9b0c34-1 cancelled",
                }
            ]
        }
    )

    success: bool = True
    run_id: UUID
    status: str
    project_status: str
    message: str

    @classmethod
    def of(cls, run: Run, project: Project) -> CancelResponse:
        return cls(
            run_id=run.id,
            status=decisions.phase_label(run.phase),
            project_status=project.status,
            message=f"training run {run.name} cancelled",
        )


class ErrorDetail(BaseModel):
    code: str
    message: str


class ErrorResponse(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "success": False,
                    "error": {
                        "code": "invalid_project_status",
                        "message": "project is 'trained'; training starts from 'pending_training'",
                    },
                }
            ]
        }
    )

    success: bool = False
    error: ErrorDetail


class HealthResponse(BaseModel):
    status: str = "ok"


def set_maximum(field: dict[str, Any], maximum: int) -> None:
    """Write a bound that comes from the settings into a field's JSON schema (for clients)."""
    for branch in field.get("anyOf", [field]):
        if branch.get("type") == "integer":
            branch["maximum"] = maximum
