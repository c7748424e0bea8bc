"""Start, status and cancel (and the reads the MCP tools add): the store and launcher calls
around the pure decisions.

Every refusal for a project that exists is also written to its ``agent_logs``, so the
platform sees why a start or cancel was refused.
"""

from __future__ import annotations

import logging
import tempfile
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

from tenacity import Retrying, retry_if_result, stop_after_delay, wait_fixed

from training_core.blobs import BlobStore, open_blob_store
from training_core.dataset import DatasetDescription
from training_core.domain import Dataset, ModelRecord, Phase, Project, Run
from training_core.errors import (
    BlobError,
    BlobNotFound,
    ChecksumMismatch,
    Conflict,
    InvalidInput,
    InvalidState,
    NotFound,
    StoreUnavailable,
)
from training_core.intake import intake_dataset
from training_core.lifecycle import EndSteps, RunEnd, end_run
from training_core.logs import bind
from training_core.runspec import RunSpec, model_url_for
from training_core.settings import Settings
from training_core.store import NewRun, ProjectRun, ProjectStatus, Store
from training_api import decisions
from training_api.errors import ApiError, unavailable
from training_api.launchers import Launcher, LauncherUnavailable
from training_api.metrics import ApiMetrics

log = logging.getLogger(__name__)

# A caller that lost the claim waits this long for the winner to record its run.
RUN_VISIBLE_WITHIN_SECONDS = 3.0


@dataclass(frozen=True)
class Started:
    run: Run
    created: bool


@dataclass(frozen=True)
class DatasetChecked:
    """A dataset as a run's intake saw it: its description, or what the run would refuse."""

    project: Project
    dataset: Dataset
    description: DatasetDescription | None
    problem: str | None


@dataclass(frozen=True)
class ModelMetrics:
    """A succeeded run's metrics file, and the class names its ``models`` row records."""

    run: Run
    metrics_url: str
    metrics: decisions.MetricsFile
    classes: list[str] | None


class TrainingService:
    def __init__(
        self,
        settings: Settings,
        store: Store,
        launcher: Launcher,
        metrics: ApiMetrics,
        blobs: BlobStore | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.launcher = launcher
        self.metrics = metrics
        self._blobs = blobs

    @property
    def blobs(self) -> BlobStore:
        """The bucket, opened on first use (its GCS client only when a gs:// URL is read)."""
        if self._blobs is None:
            self._blobs = open_blob_store(self.settings)
        return self._blobs

    # -- start ---------------------------------------------------------------------------
    def start(self, project_id: str, overrides: dict[str, Any]) -> Started:
        project = self._project(project_id)
        with bind(project_id=project.id):
            if project.status != self.settings.status_pending:
                return self._existing_run(project)
            try:
                choice = self._choose(project, overrides)
            except ApiError as error:
                raise self._refused(project, error) from None
            recorded = self._record(project, choice)
            if recorded is None:  # another start won the claim a moment ago
                return self._existing_run(self.store.get_project(project.id))
            run, spec = recorded
            self._launch(project, run, spec)
            return Started(run=run, created=True)

    def _choose(self, project: Project, overrides: dict[str, Any]) -> decisions.TrainingChoice:
        return decisions.resolve_training(project, self._dataset(project), overrides, self.settings)

    def _record(
        self, project: Project, choice: decisions.TrainingChoice
    ) -> tuple[Run, RunSpec] | None:
        """Claim the project and record its run, in one transaction; None if the claim was
        lost."""
        previous = self.store.get_latest_run(project.id)
        plain_url = model_url_for(self.settings.bucket_url, project.name)
        spec = decisions.plan_run(
            choice,
            project,
            previous,
            uuid4(),
            self.settings,
            plain_url_taken=previous is None and self.store.model_url_in_use(plain_url),
        )
        new_run = NewRun(
            id=spec.run_id,
            project_id=project.id,
            name=spec.run_name,
            attempt=decisions.next_attempt(previous),
            spec=spec.model_dump(mode="json"),
            model_url=spec.model_url,
        )
        try:
            run = self.store.start_run(
                self.settings.status_pending, self.settings.status_training, new_run
            )
        except Conflict:  # an active run the project's status did not show
            raise self._refused(
                project,
                ApiError(409, "active_run_exists", "the project already has an active run"),
            ) from None
        if run is None:
            return None
        # The run is recorded and the project claimed: an outage beginning now must not stop
        # the launch (nothing else would launch it), so the line is given up instead.
        try:
            self.store.log(
                project.id,
                f"Training run {run.name} queued: {spec.model}, {spec.epochs} epochs, batch"
                f" {spec.batch_size}, learning rate {spec.learning_rate:g}{_world(spec)};"
                f" model → {spec.model_url}",
            )
        except StoreUnavailable as error:
            log.warning("run %s recorded; its queued line was not written: %s", run.name, error)
        return run, spec

    def _launch(self, project: Project, run: Run, spec: RunSpec) -> None:
        """Hand the run to the launcher; if it cannot take it, undo: nothing is left orphaned."""
        try:
            self.launcher.start(spec)
        except LauncherUnavailable as error:
            log.warning("launcher refused run %s: %s", run.name, error)
            self.metrics.runs_failed.inc()
            reason = f"the launcher could not start the run: {error}"
            failed = RunEnd(
                run.id, project.id, Phase.FAILED,
                f"Training run {run.name} failed to start: {reason}", "error", error=reason,
                project_status=self.settings.status_pending,  # the claim is given back
            )  # fmt: skip
            with suppress(InvalidState):  # it ended meanwhile (a cancel): nothing to undo
                end_run(self.store, self.settings, failed)
            raise unavailable(
                "launcher_unavailable", "the launcher could not start the run; retry later"
            ) from None
        self.metrics.runs_started.inc()

    def release_stale_claims(self) -> list[Project]:
        """Give back the claims no run holds (a start interrupted before the claim and the
        run were one transaction, or a project set to training by hand)."""
        seconds = self.settings.stale_claim_seconds
        released = self.store.release_stale_claims(
            self.settings.status_training, self.settings.status_pending, seconds
        )
        for project in released:
            log.warning("released project %s: claimed with no active run", project.id)
            self.store.log(
                project.id,
                f"Project was {self.settings.status_training} for over {seconds:g} s with no"
                f" active run; back to {project.status}, so it can be started again",
                level="warning",
            )
        return released

    def _existing_run(self, project: Project) -> Started:
        """An active run answers a repeated start; otherwise the project's status refuses it."""
        if project.status != self.settings.status_training:
            raise self._refused(project, decisions.wrong_status(project, self.settings))
        # The winner of a concurrent claim records its run within moments; wait for it.
        waiting = Retrying(
            stop=stop_after_delay(RUN_VISIBLE_WITHIN_SECONDS),
            wait=wait_fixed(0.05),
            retry=retry_if_result(lambda run: run is None or not run.phase.is_active),
            retry_error_callback=lambda _: None,
        )
        run = waiting(self.store.get_latest_run, project.id)
        if run is not None:
            return Started(run=run, created=False)
        raise self._refused(
            project,
            ApiError(
                409,
                "no_active_run",
                f"project is {project.status!r} but has no active run; set it back to"
                f" {self.settings.status_pending!r} to train again",
            ),
        )

    # -- status --------------------------------------------------------------------------
    def status(self, project_id: str, logs: int) -> ProjectStatus:
        if not 0 <= logs <= self.settings.status_logs_max:
            raise ApiError(
                422,
                "invalid_parameter",
                f"logs must be between 0 and {self.settings.status_logs_max}",
            )
        uuid = decisions.parse_project_id(project_id)
        try:
            return self.store.get_status(uuid, logs)  # one round trip: the busiest call
        except NotFound:
            raise _project_not_found(uuid) from None

    # -- cancel --------------------------------------------------------------------------
    def cancel(self, project_id: str) -> tuple[Run, Project]:
        """Stop the active run: the launcher first (so nothing keeps training), then the records."""
        project = self._project(project_id)
        with bind(project_id=project.id):
            latest = self.store.get_latest_run(project.id)
            if latest is not None and decisions.cancel_cut_short(project, latest, self.settings):
                return self._finish_cancel(project, latest)  # a retry after a 503
            try:
                run = decisions.cancellable(latest)
            except ApiError as error:
                raise self._refused(project, error) from None
            self._stop(project, run)
            return self._record_cancel(project, run)

    def _stop(self, project: Project, run: Run) -> None:
        try:
            self.launcher.cancel(run)
        except LauncherUnavailable as error:
            log.warning("launcher could not cancel run %s: %s", run.name, error)
            self.store.log(project.id, f"Cancel of {run.name} failed: {error}; retry", "error")
            raise unavailable(
                "launcher_unavailable", "the launcher could not stop the run; retry later"
            ) from None

    def _record_cancel(self, project: Project, run: Run) -> tuple[Run, Project]:
        try:
            return self._finish_cancel(project, run, EndSteps())
        except InvalidState as error:
            if str(error.actual) == Phase.CANCELLED.value:
                # The operator saw its TrainingRun go and recorded the same cancel first.
                return self.store.get_run(run.id), self.store.get_project(project.id)
            message = f"the run ended before it could be cancelled ({error.actual})"
            raise self._refused(project, ApiError(409, "run_finished", message)) from None

    def _finish_cancel(
        self, project: Project, run: Run, steps: EndSteps | None = None
    ) -> tuple[Run, Project]:
        """Record the cancel: the run (``steps`` None: it is Cancelled already, a cancel cut
        short is finished), the project's status and the log line."""
        cancelled = RunEnd(
            run.id, project.id, Phase.CANCELLED, f"Training run {run.name} cancelled on request",
            error="cancelled on request",
        )  # fmt: skip
        ended = end_run(self.store, self.settings, cancelled, steps=steps or EndSteps(run=True))
        # No project: it moved on meanwhile; report what it is.
        return ended.run or run, ended.project or self.store.get_project(project.id)

    # -- reads ---------------------------------------------------------------------------
    def runs(self, project_id: str, limit: int) -> tuple[Project, list[Run]]:
        project = self._project(project_id)
        return project, self.store.list_runs(project.id, limit)

    def models(self, project_id: str) -> tuple[Project, list[ModelRecord]]:
        project = self._project(project_id)
        return project, self.store.get_models(project.id)

    def recent_runs(self, limit: int) -> list[ProjectRun]:
        return self.store.list_recent_runs(limit)

    def model_metrics(self, project_id: str) -> ModelMetrics:
        """The metrics file next to the model of the project's latest run, once it succeeded."""
        project = self._project(project_id)
        run = decisions.with_metrics(self.store.get_latest_run(project.id))
        assert run.model_url is not None  # with_metrics refuses a run without one
        url = decisions.metrics_url_of(run.model_url)
        metrics = decisions.parse_metrics(self._read_metrics(url), url)
        classes = decisions.classes_of(self.store.get_models(project.id), run)
        return ModelMetrics(run=run, metrics_url=url, metrics=metrics, classes=classes)

    def _read_metrics(self, url: str) -> bytes:
        try:
            size = self.blobs.stat(url).size
            if size > decisions.MAX_METRICS_BYTES:
                raise decisions.invalid_metrics(url, f"{size} bytes is too large")
            return self.blobs.read_bytes(url)
        except BlobNotFound:
            raise ApiError(
                404, "metrics_not_found", f"the model's metrics file {url} is missing"
            ) from None
        except (ChecksumMismatch, InvalidInput) as error:  # corrupt, or not a URL of a file
            raise decisions.invalid_metrics(url, str(error)) from None
        except BlobError as error:  # unreachable, or refused (credentials, permissions)
            log.warning("could not read %s: %s", url, error)
            message = "the bucket could not be read; retry later"
            raise unavailable("storage_unavailable", message) from None

    def check_dataset(self, project_id: str) -> DatasetChecked:
        """Fetch and check the project's newest dataset as a run's intake does; nothing trains.

        What a start refuses (unknown project, no dataset, a bad URL) is refused here too;
        what the run would refuse (layout, images, classes) is the check's answer.
        """
        project = self._project(project_id)
        dataset = self._dataset(project)
        url = decisions.check_dataset_url(dataset)
        expected = decisions.expected_classes(project)
        self.settings.scratch_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=self.settings.scratch_dir, prefix="check-") as work:
            try:
                description = intake_dataset(
                    url, Path(work), self.settings, expected_num_classes=expected
                )
            except InvalidInput as problem:
                return DatasetChecked(project, dataset, None, str(problem))
        return DatasetChecked(project, dataset, description, None)

    # -- helpers -------------------------------------------------------------------------
    def _dataset(self, project: Project) -> Dataset:
        try:
            return self.store.get_dataset(project.id)
        except NotFound:
            raise ApiError(404, "dataset_not_found", "the project has no dataset") from None

    def _project(self, project_id: str) -> Project:
        uuid: UUID = decisions.parse_project_id(project_id)
        try:
            return self.store.get_project(uuid)
        except NotFound:
            raise _project_not_found(uuid) from None

    def _refused(self, project: Project, error: ApiError) -> ApiError:
        """Write the refusal to the project's agent_logs too, then hand it back to raise."""
        self.store.log(project.id, f"Request refused ({error.code}): {error.message}", "warning")
        return error


def _project_not_found(project_id: UUID) -> ApiError:
    return ApiError(404, "project_not_found", f"project {project_id} not found")


def _world(spec: RunSpec) -> str:
    """A run of several processes says how many, and where."""
    resources = spec.resources
    if resources.world_size == 1:
        return ""
    if resources.nodes == 1:
        return f", {resources.world_size} processes"
    return (
        f", {resources.world_size} processes ({resources.nodes} nodes ×"
        f" {resources.processes_per_node})"
    )
