"""Where a run's state and progress go: the store (the program a Job runs) or the console
(``training-agent train``, no database). The workflow talks to one :class:`Tracker`, so
both paths share every step."""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from rich.console import Console
from training_core.domain import ACTIVE_PHASES, Phase, Progress
from training_core.errors import InvalidInput, InvalidState, NotFound, StoreUnavailable
from training_core.lifecycle import RunEnd, end_run, settle_project
from training_core.runspec import RunSpec
from training_core.settings import Settings
from training_core.store import RunUpdate, Store

from trainer.outbox import Outbox, retry_through_outage

log = logging.getLogger("trainer")
T = TypeVar("T")
# A retried log line already in the store since shortly before it was first sent is the
# same line, whose first try landed and lost its answer: it is not written twice.
SAME_LINE_WINDOW = timedelta(seconds=5)


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

    def close(self, timeout: float) -> None:
        """Send what is still pending, waiting at most ``timeout`` seconds."""


class StoreTracker(Tracker):
    """The store-backed run: agent_logs, the run's phase and progress, models, project status.

    Log lines and progress go through an :class:`Outbox`, so a store outage never stops
    training; the start and the outcome wait for the store (``STORE_RETRY_SECONDS``), then
    give up with ``StoreUnavailable``: the program exits to be retried, the model kept.
    """

    def __init__(
        self, store: Store, settings: Settings, spec: RunSpec,
        stopping: Callable[[], bool] = lambda: False,
    ) -> None:  # fmt: skip
        self.store, self.settings, self.spec = store, settings, spec
        self.project_id = str(spec.project_id)
        self.owns_project = False  # set once the project is seen in our 'training' status
        self.stopping = stopping
        self._ended: str | None = None  # the phase another party ended the run in
        self._outbox = Outbox(on_error=self._write_refused)

    def begin(self) -> bool:
        try:
            run = self._waiting(lambda: self.store.get_run(self.spec.run_id))
        except NotFound:
            raise InvalidInput(f"run {self.spec.run_id} is not recorded") from None
        if run.phase.is_terminal:
            log.info("run %s is already %s: nothing to do", run.name, run.phase)
            return False
        project = self._waiting(lambda: self.store.get_project(self.spec.project_id))
        if project.status != self.settings.status_training:
            raise InvalidInput(
                f"project {project.id} is '{project.status}', expected "
                f"'{self.settings.status_training}': it was not claimed for this run"
            )
        self.owns_project = True
        self._project = ProjectInfo(project.name, _expected_classes(project.metadata))
        running = RunUpdate(phase=Phase.RUNNING)
        try:
            self._waiting(lambda: self.store.update_run(run.id, running, expected=ACTIVE_PHASES))
        except InvalidState:
            return False  # ended (cancelled) between the two reads
        return True

    def project(self) -> ProjectInfo:
        try:
            dataset = self._waiting(lambda: self.store.get_dataset(self.spec.project_id))
        except NotFound:
            return self._project  # the spec's URL is what counts; the row is only a description
        size = f", {dataset.size / 2**20:.1f} MiB" if dataset.size else ""
        return replace(
            self._project, dataset=f"{dataset.name or 'dataset'} ({dataset.gcs_url}{size})"
        )

    def log(self, message: str, level: str = "info") -> None:
        log.log(logging.getLevelName(level.upper()), message)
        queued = datetime.now(UTC)

        def write(retry: bool) -> None:
            if not (retry and self._logged_since(message, queued)):
                self.store.log(self.spec.project_id, message, level, agent=self.settings.agent_name)

        self._outbox.put(write)

    def progress(self, progress: Progress) -> None:
        if self._ended:
            raise RunEnded(f"the run is {self._ended}")
        update = RunUpdate(progress=progress.model_dump(exclude_none=True))
        self._outbox.put(
            lambda _retry: self.store.update_run(self.spec.run_id, update, expected=ACTIVE_PHASES),
            key="progress",
        )

    def succeed(
        self, name: str, model_url: str, metadata: dict[str, Any], progress: Progress
    ) -> None:
        self._outbox.flush(self.settings.store_retry_seconds)
        self._waiting(
            lambda: self.store.insert_model(
                project_id=self.spec.project_id, run_id=self.spec.run_id, name=name,
                gcs_url=model_url, framework="pytorch", metadata=metadata,
            )  # fmt: skip
        )  # one row per run: a retried insert returns the first
        succeeded = RunEnd(
            self.spec.run_id, self.spec.project_id, Phase.SUCCEEDED, None,
            progress=progress.model_dump(exclude_none=True), model_url=model_url,
        )  # fmt: skip
        try:
            end_run(self.store, self.settings, succeeded, attempt=self._waiting)
        except InvalidState as error:
            if error.actual != Phase.SUCCEEDED:  # Succeeded: our try landed, its answer lost
                self.log(
                    f"The run was {error.actual} before it finished; the model stays at {model_url}",
                    "warning",
                )
                return
            settle_project(self.store, self.settings, succeeded, attempt=self._waiting)

    def fail(self, message: str) -> None:
        self.log(message, "error")  # the line is the trainer's, whoever records the end
        self._outbox.flush(self.settings.store_retry_seconds)
        failed = RunEnd(
            self.spec.run_id, self.spec.project_id, Phase.FAILED, None, error=message,
            project_status="" if self.owns_project else None,  # "": what Failed leads to
        )  # fmt: skip
        with suppress(InvalidState, NotFound):  # already ended (e.g. cancelled), or never
            end_run(self.store, self.settings, failed, attempt=self._waiting)  # recorded

    def close(self, timeout: float) -> None:
        try:
            self._outbox.flush(timeout)
        except StoreUnavailable as error:
            log.warning("exiting with store writes unsent: %s", error)
        self._outbox.close()

    def _waiting(self, call: Callable[[], T]) -> T:
        return retry_through_outage(call, self.settings.store_retry_seconds, self.stopping)

    def _logged_since(self, message: str, queued: datetime) -> bool:
        recent = self.store.get_logs(self.spec.project_id, limit=50)
        since = queued - SAME_LINE_WINDOW
        return any(e.message == message and e.created_at and e.created_at >= since for e in recent)

    def _write_refused(self, error: Exception) -> None:
        if isinstance(error, InvalidState):
            self._ended = str(error.actual)  # e.g. cancelled: the next progress() stops the run
        else:
            log.warning("a store write was refused: %s", error)


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


class FollowerTracker(Tracker):
    """A rank other than 0 of a group: rank 0 writes the run's story, this one only logs to
    its own output (what it would decide, rank 0 decides for it)."""

    def begin(self) -> bool:
        return True

    def project(self) -> ProjectInfo:
        return ProjectInfo("")

    def log(self, message: str, level: str = "info") -> None:
        log.debug(message)

    def progress(self, progress: Progress) -> None:
        pass

    def succeed(
        self, name: str, model_url: str, metadata: dict[str, Any], progress: Progress
    ) -> None:
        pass

    def fail(self, message: str) -> None:
        log.error(message)


def _expected_classes(metadata: dict[str, Any]) -> int | None:
    value = metadata.get("num_classes")
    return value if isinstance(value, int) and value > 0 else None
