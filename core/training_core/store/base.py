"""The store interface every component talks to.

Adapters raise only the typed errors of :mod:`training_core.errors`: ``NotFound``,
``InvalidState`` (carrying the actual state), ``Conflict`` and ``StoreUnavailable``.
Every state change is conditional on the expected old state, so concurrent callers can
never both win.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any
from uuid import UUID, uuid4

from pydantic import BaseModel, ConfigDict, Field

from training_core.domain import (
    Dataset,
    LogEntry,
    ModelRecord,
    Phase,
    Project,
    Run,
)


@dataclass(frozen=True)
class ProjectStatus:
    """What a status call answers: the project, its latest run, its newest log lines."""

    project: Project
    run: Run | None
    logs: list[LogEntry]

    @classmethod
    def from_document(cls, document: dict[str, Any]) -> ProjectStatus:
        """From the JSON of ``training_agent_status`` (supabase/migrations), either adapter's."""
        run = document.get("run")
        return cls(
            Project(**document["project"]),
            Run(**run) if run else None,
            [LogEntry(**entry) for entry in document.get("logs") or []],
        )


@dataclass(frozen=True)
class ProjectRun:
    """A run with the project it belongs to: one line of the runs page."""

    project: Project
    run: Run

    @staticmethod
    def each(runs: list[Run], projects: list[Project]) -> list[ProjectRun]:
        """Each run with its project, in the runs' order; a project deleted between the two
        reads took its runs with it (``on delete cascade``), so they are left out too."""
        by_id = {project.id: project for project in projects}
        return [ProjectRun(by_id[run.project_id], run) for run in runs if run.project_id in by_id]


class NewRun(BaseModel):
    model_config = ConfigDict(frozen=True)

    # Chosen by the caller, so the run's spec and model URL can carry it before the insert.
    id: UUID = Field(default_factory=uuid4)
    project_id: UUID
    name: str
    attempt: int = 1
    spec: dict[str, Any] = Field(default_factory=dict)
    model_url: str | None = None
    phase: Phase = Phase.QUEUED


class RunUpdate(BaseModel):
    """What to change on a run; ``None`` leaves a field as it is."""

    model_config = ConfigDict(frozen=True)

    phase: Phase | None = None
    progress: dict[str, Any] | None = None
    error: str | None = None
    model_url: str | None = None


class Store(ABC):
    # -- projects ----------------------------------------------------------------------
    @abstractmethod
    def get_project(self, project_id: UUID) -> Project: ...

    @abstractmethod
    def set_project_status(
        self, project_id: UUID, status: str, expected: Collection[str] | None = None
    ) -> Project:
        """Set the status, only if it is one of ``expected`` (any, when ``None``)."""

    @abstractmethod
    def create_project(
        self,
        name: str,
        *,
        status: str = "pending_training",
        task_type: str = "image_classification",
        framework: str = "pytorch",
        metadata: dict[str, Any] | None = None,
    ) -> Project:
        """Register a project (the platform does this; the local mode and tests do too)."""

    @abstractmethod
    def list_projects(self, limit: int = 50) -> list[Project]:
        """The newest ``limit`` projects, newest first."""

    @abstractmethod
    def delete_project(self, project_id: UUID) -> None:
        """Remove a project with its datasets, runs, models and logs (``on delete cascade``);
        nothing happens if there is no such project."""

    @abstractmethod
    def release_stale_claims(
        self, training: str, pending: str, older_than_seconds: float
    ) -> list[Project]:
        """Projects ``training`` for longer than ``older_than_seconds`` with no active run go
        back to ``pending``; returns them."""

    # -- datasets ----------------------------------------------------------------------
    @abstractmethod
    def get_dataset(self, project_id: UUID) -> Dataset:
        """The project's newest dataset."""

    @abstractmethod
    def add_dataset(
        self,
        project_id: UUID,
        gcs_url: str,
        *,
        name: str | None = None,
        size: int | None = None,
        source: str | None = "upload",
    ) -> Dataset:
        """Register a dataset for a project (the platform's job; local mode and tests too)."""

    # -- runs --------------------------------------------------------------------------
    @abstractmethod
    def start_run(self, pending: str, training: str, run: NewRun) -> Run | None:
        """Claim the run's project (``pending → training``) and record the run, both or
        neither: None when the project was not ``pending`` (another start won the claim);
        ``Conflict`` when it has an active run already."""

    @abstractmethod
    def create_run(self, run: NewRun) -> Run:
        """Record a run; ``Conflict`` when the project already has an active run."""

    @abstractmethod
    def get_run(self, run_id: UUID) -> Run: ...

    @abstractmethod
    def get_latest_run(self, project_id: UUID) -> Run | None: ...

    @abstractmethod
    def list_runs(self, project_id: UUID, limit: int = 20) -> list[Run]:
        """The project's newest ``limit`` runs, newest first (as ``get_latest_run`` orders)."""

    @abstractmethod
    def list_recent_runs(self, limit: int = 20) -> list[ProjectRun]:
        """The newest ``limit`` runs of all projects, newest first, each with its project."""

    @abstractmethod
    def model_url_in_use(self, model_url: str) -> bool:
        """Whether any run (of any project) has been given this model URL."""

    @abstractmethod
    def list_active_runs(self) -> list[Run]:
        """Every run in an active phase (Queued, Pending, Running), oldest first."""

    @abstractmethod
    def update_run(
        self, run_id: UUID, update: RunUpdate, expected: Collection[Phase] | None = None
    ) -> Run:
        """Apply ``update`` only while the run's phase is one of ``expected``.

        Entering Running stamps ``started_at`` (once); entering a terminal phase stamps
        ``finished_at``. A lost condition raises ``InvalidState`` with the actual phase.
        """

    # -- models ------------------------------------------------------------------------
    @abstractmethod
    def insert_model(
        self,
        *,
        project_id: UUID,
        run_id: UUID,
        name: str,
        gcs_url: str,
        framework: str = "pytorch",
        metadata: dict[str, Any] | None = None,
    ) -> ModelRecord:
        """Record the model of a run; a second call for the same run returns the first row."""

    @abstractmethod
    def get_models(self, project_id: UUID) -> list[ModelRecord]: ...

    # -- agent_logs --------------------------------------------------------------------
    @abstractmethod
    def log(self, project_id: UUID, message: str, level: str = "info", agent: str = "") -> None:
        """Append one line to ``agent_logs`` (``agent`` defaults to the adapter's name)."""

    @abstractmethod
    def get_logs(self, project_id: UUID, limit: int = 20) -> list[LogEntry]:
        """The newest ``limit`` lines, newest first."""

    # -- the status page ---------------------------------------------------------------
    @abstractmethod
    def get_status(self, project_id: UUID, logs: int = 20) -> ProjectStatus:
        """The project, its latest run and its newest ``logs`` lines, in one round trip;
        ``NotFound`` when there is no such project."""

    # -- health ------------------------------------------------------------------------
    @abstractmethod
    def ping(self) -> None:
        """Raise ``StoreUnavailable`` unless the store answers."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""
