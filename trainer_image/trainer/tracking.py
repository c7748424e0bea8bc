"""Where a run's state and progress go: the store (the program a Job runs) or the console
(``training-agent train``, no database). The workflow talks to one :class:`Tracker`, so
both paths share every step."""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from dataclasses import dataclass, replace
from typing import Any

from rich.console import Console
from training_core.domain import ACTIVE_PHASES, Phase, Progress
from training_core.errors import InvalidInput, InvalidState, NotFound
from training_core.runspec import RunSpec
from training_core.settings import Settings
from training_core.store import RunUpdate, Store

log = logging.getLogger("trainer")


class RunEnded(Exception):
    """The run reached a terminal phase elsewhere (e.g. cancelled): stop, record nothing."""


@dataclass(frozen=True)
class ProjectInfo:
    name: str
    expected_num_classes: int | None = None
    dataset: str | None = None  # how the platform registered the dataset, for the log


class Tracker(ABC):
    """The run's outside world: its state, its log, its progress, its outcome."""

    project_id: str | None = None

    @abstractmethod
    def begin(self) -> bool:
        """Check the run and project may train and mark the run Running; ``False``: already over."""

    @abstractmethod
    def project(self) -> ProjectInfo: ...

    @abstractmethod
    def log(self, message: str, level: str = "info") -> None: ...

    @abstractmethod
    def progress(self, progress: Progress) -> None:
        """Publish progress; ``RunEnded`` when the run was ended meanwhile."""

    @abstractmethod
    def succeed(
        self, name: str, model_url: str, metadata: dict[str, Any], progress: Progress
    ) -> None: ...

    @abstractmethod
    def fail(self, message: str) -> None: ...


class StoreTracker(Tracker):
    """The store-backed run: agent_logs, the run's phase and progress, models, project status."""

    def __init__(self, store: Store, settings: Settings, spec: RunSpec) -> None:
        self.store, self.settings, self.spec = store, settings, spec
        self.project_id = str(spec.project_id)
        self.owns_project = False  # set once the project is seen in our 'training' status

    def begin(self) -> bool:
        try:
            run = self.store.get_run(self.spec.run_id)
        except NotFound:
            raise InvalidInput(f"run {self.spec.run_id} is not recorded") from None
        if run.phase.is_terminal:
            log.info("run %s is already %s: nothing to do", run.name, run.phase)
            return False
        project = self.store.get_project(self.spec.project_id)
        if project.status != self.settings.status_training:
            raise InvalidInput(
                f"project {project.id} is '{project.status}', expected "
                f"'{self.settings.status_training}': it was not claimed for this run"
            )
        self.owns_project = True
        self._project = ProjectInfo(project.name, _expected_classes(project.metadata))
        try:
            self.store.update_run(run.id, RunUpdate(phase=Phase.RUNNING), expected=ACTIVE_PHASES)
        except InvalidState:
            return False  # ended (cancelled) between the two reads
        return True

    def project(self) -> ProjectInfo:
        try:
            dataset = self.store.get_dataset(self.spec.project_id)
        except NotFound:
            return self._project  # the spec's URL is what counts; the row is only a description
        size = f", {dataset.size / 2**20:.1f} MiB" if dataset.size else ""
        return replace(
            self._project, dataset=f"{dataset.name or 'dataset'} ({dataset.gcs_url}{size})"
        )

    def log(self, message: str, level: str = "info") -> None:
        log.log(logging.getLevelName(level.upper()), message)
        self.store.log(self.spec.project_id, message, level, agent=self.settings.agent_name)

    def progress(self, progress: Progress) -> None:
        update = RunUpdate(progress=progress.model_dump(exclude_none=True))
        try:
            self.store.update_run(self.spec.run_id, update, expected=ACTIVE_PHASES)
        except InvalidState as error:
            raise RunEnded(f"the run is {error.actual}") from None

    def succeed(
        self, name: str, model_url: str, metadata: dict[str, Any], progress: Progress
    ) -> None:
        self.store.insert_model(
            project_id=self.spec.project_id, run_id=self.spec.run_id, name=name,
            gcs_url=model_url, framework="pytorch", metadata=metadata,
        )  # fmt: skip
        update = RunUpdate(
            phase=Phase.SUCCEEDED,
            progress=progress.model_dump(exclude_none=True),
            model_url=model_url,
        )
        try:
            self.store.update_run(self.spec.run_id, update, expected=ACTIVE_PHASES)
        except InvalidState as error:
            self.log(
                f"The run was {error.actual} before it finished; the model stays at {model_url}",
                "warning",
            )
            return
        self._set_project_status(self.settings.status_trained)

    def fail(self, message: str) -> None:
        self.log(message, "error")
        try:
            self.store.update_run(
                self.spec.run_id,
                RunUpdate(phase=Phase.FAILED, error=message),
                expected=ACTIVE_PHASES,
            )
        except (InvalidState, NotFound):
            return  # already ended (e.g. cancelled), or never recorded: nothing of ours to fail
        if self.owns_project:
            self._set_project_status(self.settings.status_failed)

    def _set_project_status(self, status: str) -> None:
        try:
            self.store.set_project_status(
                self.spec.project_id, status, expected=[self.settings.status_training]
            )
        except InvalidState as error:
            log.warning("project status left as '%s' (not ours to change)", error.actual)


class ConsoleTracker(Tracker):
    """A one-off local training: everything goes to the console."""

    def __init__(self, console: Console, name: str) -> None:
        self.console = console
        self.name = name

    def begin(self) -> bool:
        return True

    def project(self) -> ProjectInfo:
        return ProjectInfo(self.name)

    def log(self, message: str, level: str = "info") -> None:
        style = {"error": "bold red", "warning": "yellow"}.get(level, "")
        self.console.print(message, style=style, highlight=False)

    def progress(self, progress: Progress) -> None:
        pass  # the epoch line the workflow logs says it all on a console

    def succeed(
        self, name: str, model_url: str, metadata: dict[str, Any], progress: Progress
    ) -> None:
        self.console.print(f"[bold green]Model saved[/] to {model_url}")

    def fail(self, message: str) -> None:
        self.log(message, "error")


def _expected_classes(metadata: dict[str, Any]) -> int | None:
    value = metadata.get("num_classes")
    return value if isinstance(value, int) and value > 0 else None
