"""``PostgresStore``: psycopg 3 with a connection pool, on any ``DATABASE_URL``.

Used by the embedded local mode and by Supabase's direct or pooled connection string.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar
from uuid import UUID

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb
from psycopg_pool import ConnectionPool, PoolTimeout

from training_core.domain import Dataset, LogEntry, ModelRecord, Phase, Project, Run
from training_core.errors import AgentError, InvalidInput, InvalidState, NotFound, StoreUnavailable
from training_core.store.base import NewRun, ProjectRun, ProjectStatus, RunUpdate, Store
from training_core.store.common import MODEL_COLUMNS as _MODEL_COLUMNS
from training_core.store.common import PROJECT_COLUMNS
from training_core.store.common import RUN_COLUMNS as _RUN_COLUMNS
from training_core.store.common import error_for_sqlstate, phase_values

log = logging.getLogger(__name__)
T = TypeVar("T")


class PostgresStore(Store):
    def __init__(
        self,
        url: str,
        *,
        timeout: float = 10.0,
        max_size: int = 10,
        agent_name: str = "training-agent",
    ) -> None:
        self._agent = agent_name
        self._pool = ConnectionPool(
            url,
            min_size=1,
            max_size=max_size,
            timeout=timeout,
            open=False,
            kwargs={
                "connect_timeout": max(1, int(timeout)),
                "autocommit": True,
                "row_factory": dict_row,
                # A statement never hangs a caller longer than the store timeout.
                "options": f"-c statement_timeout={int(timeout * 1000)}",
            },
            name="training-agent",
            # A connection is checked as it leaves the pool: after a database restart the
            # dead ones are replaced there, instead of failing the caller's first statement.
            check=ConnectionPool.check_connection,
        )
        self._pool.open(wait=False)

    # -- plumbing ----------------------------------------------------------------------
    @contextmanager
    def _cursor(self) -> Iterator[psycopg.Cursor[dict[str, Any]]]:
        try:
            with self._pool.connection() as conn, conn.cursor() as cur:
                yield cur
        except PoolTimeout as error:
            raise StoreUnavailable(f"database unreachable: {error}") from None
        except psycopg.Error as error:
            raise _typed(error) from None

    def _one(self, sql: str, params: dict[str, Any]) -> dict[str, Any] | None:
        with self._cursor() as cur:
            cur.execute(sql, params)
            return cur.fetchone()

    def _all(self, sql: str, params: dict[str, Any]) -> list[dict[str, Any]]:
        with self._cursor() as cur:
            cur.execute(sql, params)
            return cur.fetchall()

    def _require(self, row: dict[str, Any] | None, build: Callable[..., T], kind: str, key: object) -> T:
        if row is None:
            raise NotFound(kind, key)
        return build(**row)

    # -- projects ----------------------------------------------------------------------
    def get_project(self, project_id: UUID) -> Project:
        row = self._one(
            f"select {PROJECT_COLUMNS} from projects where id = %(id)s",
            {"id": project_id},
        )
        return self._require(row, Project, "project", project_id)

    def create_project(
        self,
        name: str,
        *,
        status: str = "pending_training",
        task_type: str = "image_classification",
        framework: str = "pytorch",
        metadata: dict[str, Any] | None = None,
    ) -> Project:
        row = self._one(
            "insert into projects (name, status, task_type, framework, metadata)"
            " values (%(name)s, %(status)s, %(task_type)s, %(framework)s, %(metadata)s)"
            f" returning {PROJECT_COLUMNS}",
            {
                "name": name,
                "status": status,
                "task_type": task_type,
                "framework": framework,
                "metadata": Jsonb(metadata or {}),
            },
        )
        assert row is not None
        return Project(**row)

    def list_projects(self, limit: int = 50) -> list[Project]:
        rows = self._all(
            f"select {PROJECT_COLUMNS} from projects order by created_at desc, id limit %(limit)s",
            {"limit": max(0, limit)},
        )
        return [Project(**row) for row in rows]

    def delete_project(self, project_id: UUID) -> None:
        self._all("delete from projects where id = %(id)s returning id", {"id": project_id})

    def release_stale_claims(
        self, training: str, pending: str, older_than_seconds: float
    ) -> list[Project]:
        rows = self._all(
            f"select {PROJECT_COLUMNS} from training_agent_release_stale_claims("
            "%(training)s, %(pending)s, %(seconds)s)",
            {"training": training, "pending": pending, "seconds": older_than_seconds},
        )
        return [Project(**row) for row in rows]

    def set_project_status(
        self, project_id: UUID, status: str, expected: Collection[str] | None = None
    ) -> Project:
        row = self._one(
            "update projects set status = %(status)s where id = %(id)s"
            " and (%(expected)s::text[] is null or status = any(%(expected)s))"
            f" returning {PROJECT_COLUMNS}",
            {"id": project_id, "status": status, "expected": phase_values(expected)},
        )
        if row is None:
            actual = self.get_project(project_id).status  # raises NotFound when absent
            raise InvalidState("project", project_id, sorted(expected or []), actual)
        return Project(**row)

    # -- datasets ----------------------------------------------------------------------
    def get_dataset(self, project_id: UUID) -> Dataset:
        row = self._one(
            "select id, project_id, name, gcs_url, size, source, created_at from datasets"
            " where project_id = %(id)s order by created_at desc limit 1",
            {"id": project_id},
        )
        return self._require(row, Dataset, "dataset of project", project_id)

    def add_dataset(
        self,
        project_id: UUID,
        gcs_url: str,
        *,
        name: str | None = None,
        size: int | None = None,
        source: str | None = "upload",
    ) -> Dataset:
        row = self._one(
            "insert into datasets (project_id, name, gcs_url, size, source)"
            " values (%(project_id)s, %(name)s, %(gcs_url)s, %(size)s, %(source)s)"
            " returning id, project_id, name, gcs_url, size, source, created_at",
            {"project_id": project_id, "name": name, "gcs_url": gcs_url, "size": size, "source": source},
        )
        assert row is not None
        return Dataset(**row)

    # -- runs --------------------------------------------------------------------------
    def start_run(self, pending: str, training: str, run: NewRun) -> Run | None:
        row = self._one(
            f"select {_RUN_COLUMNS} from training_agent_start_run(%(project_id)s, %(pending)s,"
            " %(training)s, %(id)s, %(name)s, %(attempt)s, %(spec)s, %(model_url)s)",
            {**run.model_dump(), "spec": Jsonb(run.spec), "pending": pending, "training": training},
        )
        return Run(**row) if row else None

    def create_run(self, run: NewRun) -> Run:
        row = self._one(
            "insert into training_runs (id, project_id, name, attempt, spec, model_url, phase)"
            " values (%(id)s, %(project_id)s, %(name)s, %(attempt)s, %(spec)s, %(model_url)s, %(phase)s)"
            f" returning {_RUN_COLUMNS}",
            {**run.model_dump(), "spec": Jsonb(run.spec), "phase": run.phase.value},
        )
        assert row is not None
        return Run(**row)

    def get_run(self, run_id: UUID) -> Run:
        row = self._one(f"select {_RUN_COLUMNS} from training_runs where id = %(id)s", {"id": run_id})
        return self._require(row, Run, "run", run_id)

    def get_latest_run(self, project_id: UUID) -> Run | None:
        row = self._one(
            f"select {_RUN_COLUMNS} from training_runs where project_id = %(id)s"
            " order by created_at desc, attempt desc limit 1",
            {"id": project_id},
        )
        return Run(**row) if row else None

    def list_runs(self, project_id: UUID, limit: int = 20) -> list[Run]:
        rows = self._all(
            f"select {_RUN_COLUMNS} from training_runs where project_id = %(id)s"
            " order by created_at desc, attempt desc limit %(limit)s",
            {"id": project_id, "limit": max(0, limit)},
        )
        return [Run(**row) for row in rows]

    def list_recent_runs(self, limit: int = 20) -> list[ProjectRun]:
        rows = self._all(
            f"select {_RUN_COLUMNS} from training_runs"
            " order by created_at desc, attempt desc, id limit %(limit)s",
            {"limit": max(0, limit)},
        )
        runs = [Run(**row) for row in rows]
        if not runs:
            return []
        rows = self._all(
            f"select {PROJECT_COLUMNS} from projects where id = any(%(ids)s)",
            {"ids": sorted({run.project_id for run in runs})},
        )
        return ProjectRun.each(runs, [Project(**row) for row in rows])

    def model_url_in_use(self, model_url: str) -> bool:
        row = self._one(
            "select exists (select 1 from training_runs where model_url = %(url)s) as taken",
            {"url": model_url},
        )
        return bool(row and row["taken"])

    def list_active_runs(self) -> list[Run]:
        rows = self._all(
            f"select {_RUN_COLUMNS} from training_runs"
            " where phase in ('Queued', 'Pending', 'Running') order by created_at",
            {},
        )
        return [Run(**row) for row in rows]

    def update_run(
        self, run_id: UUID, update: RunUpdate, expected: Collection[Phase] | None = None
    ) -> Run:
        row = self._one(
            "update training_runs set"
            " phase = coalesce(%(phase)s, phase),"
            " progress = coalesce(%(progress)s, progress),"
            " error = coalesce(%(error)s, error),"
            " model_url = coalesce(%(model_url)s, model_url)"
            " where id = %(id)s and (%(expected)s::text[] is null or phase = any(%(expected)s))"
            f" returning {_RUN_COLUMNS}",
            {
                "id": run_id,
                "phase": update.phase.value if update.phase else None,
                "progress": Jsonb(update.progress) if update.progress is not None else None,
                "error": update.error,
                "model_url": update.model_url,
                "expected": phase_values(expected),
            },
        )
        if row is None:
            actual = self.get_run(run_id).phase
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
        params = {
            "project_id": project_id,
            "run_id": run_id,
            "name": name,
            "gcs_url": gcs_url,
            "framework": framework,
            "metadata": Jsonb(metadata or {}),
        }
        row = self._one(
            "insert into models (project_id, run_id, name, framework, gcs_url, metadata)"
            " values (%(project_id)s, %(run_id)s, %(name)s, %(framework)s, %(gcs_url)s, %(metadata)s)"
            f" on conflict (run_id) where run_id is not null do nothing returning {_MODEL_COLUMNS}",
            params,
        )
        if row is None:  # recorded before: hand back the first row
            row = self._one(
                f"select {_MODEL_COLUMNS} from models where run_id = %(run_id)s", params
            )
        assert row is not None
        return ModelRecord(**row)

    def get_models(self, project_id: UUID) -> list[ModelRecord]:
        rows = self._all(
            f"select {_MODEL_COLUMNS} from models where project_id = %(id)s order by created_at",
            {"id": project_id},
        )
        return [ModelRecord(**row) for row in rows]

    # -- agent_logs --------------------------------------------------------------------
    def log(self, project_id: UUID, message: str, level: str = "info", agent: str = "") -> None:
        self._one(
            "insert into agent_logs (project_id, agent_name, message, log_level)"
            " values (%(project_id)s, %(agent)s, %(message)s, %(level)s) returning id",
            {"project_id": project_id, "agent": agent or self._agent, "message": message, "level": level},
        )

    def get_logs(self, project_id: UUID, limit: int = 20) -> list[LogEntry]:
        rows = self._all(
            "select id, project_id, agent_name, message, log_level, created_at from agent_logs"
            " where project_id = %(id)s order by created_at desc, id desc limit %(limit)s",
            {"id": project_id, "limit": max(0, limit)},
        )
        return [LogEntry(**row) for row in rows]

    # -- health ------------------------------------------------------------------------
    # -- the status page ---------------------------------------------------------------
    def get_status(self, project_id: UUID, logs: int = 20) -> ProjectStatus:
        row = self._one(
            "select training_agent_status(%(id)s, %(logs)s) as status",
            {"id": project_id, "logs": max(0, logs)},
        )
        if row is None or row["status"] is None:
            raise NotFound("project", project_id)
        return ProjectStatus.from_document(row["status"])

    def ping(self) -> None:
        self._one("select 1 as ok", {})

    def close(self) -> None:
        self._pool.close(timeout=1)  # do not wait on reconnection attempts to a dead server


def _typed(error: psycopg.Error) -> AgentError:
    """Every driver error as one of the store's typed errors."""
    if error.sqlstate is not None:
        diag = error.diag
        return error_for_sqlstate(error.sqlstate, diag.message_primary or str(error), diag.message_detail)
    if isinstance(error, psycopg.DataError):  # refused before sending, e.g. a NUL character
        return InvalidInput(f"the database refused the values: {error}")
    return StoreUnavailable(f"database unavailable: {error}")  # refused, lost, pool closed
