"""``SupabaseStore``: the store over Supabase's REST API with the service-role key.

Pods need no database connection. Every state change is a PATCH filtered on the expected
old state; an empty answer means the condition lost the race, and the record is read
back to report its actual state.
"""

from __future__ import annotations

import re
from collections.abc import Collection
from typing import Any
from uuid import UUID

import httpx
from postgrest import APIError, ReturnMethod, SyncRequestBuilder

from supabase import ClientOptions, SupabaseException, create_client
from training_core.domain import Dataset, LogEntry, ModelRecord, Phase, Project, Run
from training_core.errors import (
    AgentError,
    Conflict,
    InvalidInput,
    InvalidState,
    NotFound,
    StoreUnavailable,
)
from training_core.store.base import NewRun, ProjectRun, ProjectStatus, RunUpdate, Store
from training_core.store.common import (
    ACTIVE_PHASE_VALUES,
    DATASET_COLUMNS,
    LOG_COLUMNS,
    MODEL_COLUMNS,
    PROJECT_COLUMNS,
    RUN_COLUMNS,
    error_for_sqlstate,
    phase_values,
)

_SQLSTATE = re.compile(r"[0-9A-Z]{5}")
_AUTH_CODES = {"401", "403", "PGRST301", "PGRST302", "PGRST303"}


class SupabaseStore(Store):
    def __init__(
        self,
        url: str,
        service_role_key: str,
        *,
        timeout: float = 10.0,
        agent_name: str = "training-agent",
    ) -> None:
        options = ClientOptions(
            postgrest_client_timeout=httpx.Timeout(timeout),
            # One bounded try per call: the client's own retries sleep up to 7 s on GETs.
            postgrest_client_retry=False,
            auto_refresh_token=False,
            persist_session=False,
        )
        try:
            client = create_client(url, service_role_key, options)
        except SupabaseException as error:
            raise InvalidInput(
                f"SUPABASE_URL / SUPABASE_SERVICE_ROLE_KEY: {error.message}"
            ) from None
        # Made once, here: concurrent callers then share one HTTP connection pool.
        self._rest = client.postgrest
        self._url = url
        self._timeout = timeout
        self._agent = agent_name

    def __repr__(self) -> str:  # the key stays out of every repr
        return f"SupabaseStore({self._url!r})"

    # -- plumbing ----------------------------------------------------------------------
    def _table(self, name: str) -> SyncRequestBuilder:
        return self._rest.from_(name)

    def _rows(self, query: Any) -> list[dict[str, Any]]:
        """Execute a built query; every failure leaves as a typed error."""
        try:
            return query.execute().data
        except APIError as error:
            raise _typed(error) from None
        except httpx.TimeoutException:
            raise StoreUnavailable(f"Supabase did not answer within {self._timeout:g} s") from None
        except httpx.HTTPError as error:
            raise StoreUnavailable(f"Supabase unreachable: {error}") from None

    def _first(self, query: Any) -> dict[str, Any] | None:
        rows = self._rows(query)
        return rows[0] if rows else None

    # -- projects ----------------------------------------------------------------------
    def get_project(self, project_id: UUID) -> Project:
        row = self._first(
            self._table("projects").select(PROJECT_COLUMNS).eq("id", project_id).limit(1)
        )
        if row is None:
            raise NotFound("project", project_id)
        return Project(**row)

    def create_project(
        self,
        name: str,
        *,
        status: str = "pending_training",
        task_type: str = "image_classification",
        framework: str = "pytorch",
        metadata: dict[str, Any] | None = None,
    ) -> Project:
        row = {
            "name": name,
            "status": status,
            "task_type": task_type,
            "framework": framework,
            "metadata": metadata or {},
        }
        return Project(**self._rows(self._table("projects").insert(row))[0])

    def list_projects(self, limit: int = 50) -> list[Project]:
        query = (
            self._table("projects")
            .select(PROJECT_COLUMNS)
            .order("created_at", desc=True)
            .order("id")
            .limit(max(0, limit))
        )
        return [Project(**row) for row in self._rows(query)]

    def delete_project(self, project_id: UUID) -> None:
        self._rows(self._table("projects").delete().eq("id", project_id))

    def release_stale_claims(
        self, training: str, pending: str, older_than_seconds: float
    ) -> list[Project]:
        arguments = {
            "p_training": training, "p_pending": pending, "p_older_than_seconds": older_than_seconds
        }
        rows = self._rows(self._rest.rpc("training_agent_release_stale_claims", arguments))
        return [Project(**row) for row in rows]

    def set_project_status(
        self, project_id: UUID, status: str, expected: Collection[str] | None = None
    ) -> Project:
        query = self._table("projects").update({"status": status}).eq("id", project_id)
        if expected is not None:
            query = query.in_("status", phase_values(expected))
        row = self._first(query)
        if row is None:
            actual = self.get_project(project_id).status  # raises NotFound when absent
            raise InvalidState("project", project_id, sorted(expected or []), actual)
        return Project(**row)

    # -- datasets ----------------------------------------------------------------------
    def get_dataset(self, project_id: UUID) -> Dataset:
        row = self._first(
            self._table("datasets")
            .select(DATASET_COLUMNS)
            .eq("project_id", project_id)
            .order("created_at", desc=True)
            .limit(1)
        )
        if row is None:
            raise NotFound("dataset of project", project_id)
        return Dataset(**row)

    def add_dataset(
        self,
        project_id: UUID,
        gcs_url: str,
        *,
        name: str | None = None,
        size: int | None = None,
        source: str | None = "upload",
    ) -> Dataset:
        row = {
            "project_id": str(project_id),
            "name": name,
            "gcs_url": gcs_url,
            "size": size,
            "source": source,
        }
        return Dataset(**self._rows(self._table("datasets").insert(row))[0])

    # -- runs --------------------------------------------------------------------------
    def start_run(self, pending: str, training: str, run: NewRun) -> Run | None:
        arguments = {
            "p_project_id": str(run.project_id), "p_pending": pending, "p_training": training,
            "p_run_id": str(run.id), "p_name": run.name, "p_attempt": run.attempt,
            "p_spec": run.spec, "p_model_url": run.model_url,
        }  # fmt: skip
        rows = self._rows(self._rest.rpc("training_agent_start_run", arguments))
        return Run(**rows[0]) if rows else None

    def create_run(self, run: NewRun) -> Run:
        return Run(
            **self._rows(self._table("training_runs").insert(run.model_dump(mode="json")))[0]
        )

    def get_run(self, run_id: UUID) -> Run:
        row = self._first(
            self._table("training_runs").select(RUN_COLUMNS).eq("id", run_id).limit(1)
        )
        if row is None:
            raise NotFound("run", run_id)
        return Run(**row)

    def get_latest_run(self, project_id: UUID) -> Run | None:
        row = self._first(
            self._table("training_runs")
            .select(RUN_COLUMNS)
            .eq("project_id", project_id)
            .order("created_at", desc=True)
            .order("attempt", desc=True)
            .limit(1)
        )
        return Run(**row) if row else None

    def list_runs(self, project_id: UUID, limit: int = 20) -> list[Run]:
        rows = self._rows(
            self._table("training_runs")
            .select(RUN_COLUMNS)
            .eq("project_id", project_id)
            .order("created_at", desc=True)
            .order("attempt", desc=True)
            .limit(max(0, limit))
        )
        return [Run(**row) for row in rows]

    def list_recent_runs(self, limit: int = 20) -> list[ProjectRun]:
        rows = self._rows(
            self._table("training_runs")
            .select(RUN_COLUMNS)
            .order("created_at", desc=True)
            .order("attempt", desc=True)
            .order("id")
            .limit(max(0, limit))
        )
        runs = [Run(**row) for row in rows]
        if not runs:
            return []
        ids = sorted({str(run.project_id) for run in runs})
        rows = self._rows(self._table("projects").select(PROJECT_COLUMNS).in_("id", ids))
        return ProjectRun.each(runs, [Project(**row) for row in rows])

    def model_url_in_use(self, model_url: str) -> bool:
        row = self._first(
            self._table("training_runs").select("id").eq("model_url", model_url).limit(1)
        )
        return row is not None

    def list_active_runs(self) -> list[Run]:
        rows = self._rows(
            self._table("training_runs")
            .select(RUN_COLUMNS)
            .in_("phase", ACTIVE_PHASE_VALUES)
            .order("created_at")
        )
        return [Run(**row) for row in rows]

    def update_run(
        self, run_id: UUID, update: RunUpdate, expected: Collection[Phase] | None = None
    ) -> Run:
        changes = update.model_dump(mode="json", exclude_none=True)
        if not changes:  # nothing to write: the condition alone decides
            run = self.get_run(run_id)
            if expected is not None and run.phase not in expected:
                raise InvalidState(
                    "run", run_id, sorted(phase_values(expected) or []), run.phase.value
                )
            return run
        query = self._table("training_runs").update(changes).eq("id", run_id)
        if expected is not None:
            query = query.in_("phase", phase_values(expected))
        row = self._first(query)
        if row is None:
            actual = self.get_run(run_id).phase  # raises NotFound when absent
            raise InvalidState("run", run_id, sorted(phase_values(expected) or []), actual.value)
        return Run(**row)

    # -- models ------------------------------------------------------------------------
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
        row = {
            "project_id": str(project_id),
            "run_id": str(run_id),
            "name": name,
            "framework": framework,
            "gcs_url": gcs_url,
            "metadata": metadata or {},
        }
        try:
            return ModelRecord(**self._rows(self._table("models").insert(row))[0])
        except Conflict:
            # Recorded before (one model per run): hand back the first row.
            first = self._first(
                self._table("models").select(MODEL_COLUMNS).eq("run_id", run_id).limit(1)
            )
            if first is None:
                raise
            return ModelRecord(**first)

    def get_models(self, project_id: UUID) -> list[ModelRecord]:
        rows = self._rows(
            self._table("models")
            .select(MODEL_COLUMNS)
            .eq("project_id", project_id)
            .order("created_at")
        )
        return [ModelRecord(**row) for row in rows]

    # -- agent_logs --------------------------------------------------------------------
    def log(self, project_id: UUID, message: str, level: str = "info", agent: str = "") -> None:
        row = {
            "project_id": str(project_id),
            "agent_name": agent or self._agent,
            "message": message,
            "log_level": level,
        }
        self._rows(self._table("agent_logs").insert(row, returning=ReturnMethod.minimal))

    def get_logs(self, project_id: UUID, limit: int = 20) -> list[LogEntry]:
        rows = self._rows(
            self._table("agent_logs")
            .select(LOG_COLUMNS)
            .eq("project_id", project_id)
            .order("created_at", desc=True)
            .order("id", desc=True)
            .limit(max(0, limit))
        )
        return [LogEntry(**row) for row in rows]

    # -- the status page ---------------------------------------------------------------
    def get_status(self, project_id: UUID, logs: int = 20) -> ProjectStatus:
        arguments = {"p_project_id": str(project_id), "p_logs": max(0, logs)}
        # A function returning one JSON value: the answer is that value, not rows.
        document: Any = self._rows(self._rest.rpc("training_agent_status", arguments))
        if not document:
            raise NotFound("project", project_id)
        return ProjectStatus.from_document(document)

    # -- health ------------------------------------------------------------------------
    def ping(self) -> None:
        # The agent's own table: answers only once the migrations are applied.
        self._rows(self._table("training_runs").select("id").limit(1))

    def close(self) -> None:
        self._rest.aclose()  # despite its name, closes the sync client's connections


def _typed(error: APIError) -> AgentError:
    """A PostgREST error as one of the store's typed errors."""
    code = error.code or ""
    message = error.message or "no message"
    if code in _AUTH_CODES:
        return StoreUnavailable(f"Supabase refused the service-role key ({code}: {message})")
    if _SQLSTATE.fullmatch(code):  # PostgREST passes Postgres' SQLSTATE on as the code
        return error_for_sqlstate(code, message, str(error.details) if error.details else None)
    # PostgREST's own errors (PGRST…) and bare HTTP failures (a proxy's 502, 503 …).
    return StoreUnavailable(
        f"Supabase error {code}: {message}" if code else f"Supabase error: {message}"
    )
