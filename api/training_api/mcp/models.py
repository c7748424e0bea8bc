"""The MCP tools' inputs and the answers the HTTP API has no body for (the rest are reused)."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field, computed_field

from training_core.dataset import DatasetDescription
from training_core.domain import ModelRecord, Phase
from training_api.schemas import ProjectIdText, RunView, StatusResponse
from training_api.service import DatasetChecked

MAX_WAIT_SECONDS = 1800
MAX_LISTED_RUNS = 100


# -- inputs --------------------------------------------------------------------------------
class ToolInput(BaseModel):
    model_config = ConfigDict(extra="forbid")  # a misspelt argument is refused, not ignored


class NoInput(ToolInput):
    pass


class ProjectInput(ToolInput):
    project_id: ProjectIdText


class StatusInput(ProjectInput):
    logs: int | None = Field(
        None,
        ge=0,
        description="How many of the project's agent_logs lines to return, newest first"
        " (default STATUS_LOGS_DEFAULT, at most STATUS_LOGS_MAX).",
    )


class WaitInput(ProjectInput):
    timeout_seconds: int = Field(
        300,
        ge=1,
        le=MAX_WAIT_SECONDS,
        description="How long to wait for the run to end before answering with its status"
        " so far; call again to keep waiting.",
    )


class CancelInput(ProjectInput):
    confirm: bool = Field(
        False,
        strict=True,  # a destructive call needs a real true, not "yes" or 1
        description="Must be true: cancelling stops the run and its progress is lost.",
    )


class RunsInput(ProjectInput):
    limit: int = Field(20, ge=1, le=MAX_LISTED_RUNS, description="How many runs, newest first.")


# -- answers -------------------------------------------------------------------------------
class WaitResponse(StatusResponse):
    model_config = ConfigDict(json_schema_extra=None)

    @computed_field(  # type: ignore[prop-decorator]
        description="True when the run reached a terminal phase (succeeded, failed, cancelled)"
        " before the timeout; false when it is still going."
    )
    @property
    def finished(self) -> bool:
        return self.run is not None and Phase(self.run.phase).is_terminal


class RunList(BaseModel):
    success: bool = True
    project_id: UUID
    runs: list[RunView] = Field(description="The project's runs, newest first.")


class ModelView(BaseModel):
    id: UUID
    run_id: UUID | None
    name: str
    framework: str | None
    model_url: str = Field(description="Where the model file is (gs://… or file://…).")
    metadata: dict[str, Any] = Field(
        description="What the trainer recorded: architecture, classes, accuracy, …"
    )

    @classmethod
    def of(cls, record: ModelRecord) -> ModelView:
        return cls(
            **record.model_dump(include={"id", "run_id", "name", "framework", "metadata"}),
            model_url=record.gcs_url,
        )


class ModelList(BaseModel):
    success: bool = True
    project_id: UUID
    models: list[ModelView] = Field(description="The project's trained models, oldest first.")


class ImageSize(BaseModel):
    width: int
    height: int


class SplitView(BaseModel):
    images: int
    per_class: dict[str, int]


class DatasetCheck(BaseModel):
    success: bool = True
    project_id: UUID
    dataset_url: str
    valid: bool = Field(description="Whether a training run would accept this dataset.")
    problem: str | None = Field(description="What a run would refuse, and how to fix it.")
    classes: list[str] = Field([], description="Class names, in the order the model uses.")
    splits: dict[str, SplitView] = Field({}, description="train, val and (optionally) test.")
    smallest_image: ImageSize | None = None
    largest_image: ImageSize | None = None
    val_from_train: bool = Field(False, description="val/ is carved out of train/ (no val/).")

    @classmethod
    def of(cls, checked: DatasetChecked) -> DatasetCheck:
        found = checked.description
        return cls(
            project_id=checked.project.id,
            dataset_url=checked.dataset.gcs_url,
            valid=found is not None,
            problem=checked.problem,
            **(_described(found) if found else {}),
        )


def _described(found: DatasetDescription) -> dict[str, Any]:
    return {
        "classes": list(found.classes),
        "splits": {
            name: SplitView(images=split.total, per_class=dict(split.counts))
            for name, split in found.splits.items()
        },
        "smallest_image": ImageSize(width=found.min_size[0], height=found.min_size[1]),
        "largest_image": ImageSize(width=found.max_size[0], height=found.max_size[1]),
        "val_from_train": found.val_from_train,
    }


class SupportedModels(BaseModel):
    success: bool = True
    models: list[str] = Field(description="Architectures start_training accepts.")
    default_model: str = Field(
        description="What a run trains when neither the call nor the project's metadata"
        " names a model."
    )
