"""What both store adapters share: the columns they read and how a database error reads.

Both adapters meet the same Postgres (directly, or through PostgREST, which passes the
SQLSTATE on as the error ``code``), so one table of SQLSTATEs gives both the same
typed errors.
"""

from __future__ import annotations

import re
from collections.abc import Collection

from training_core.domain import Phase
from training_core.errors import AgentError, Conflict, InvalidInput, NotFound, StoreUnavailable

PROJECT_COLUMNS = "id, name, task_type, framework, status, metadata, created_at"
DATASET_COLUMNS = "id, project_id, name, gcs_url, size, source, created_at"
RUN_COLUMNS = (
    "id, project_id, name, phase, attempt, spec, progress, model_url, error, "
    "created_at, started_at, finished_at, updated_at"
)
MODEL_COLUMNS = "id, project_id, run_id, name, framework, gcs_url, metadata"
LOG_COLUMNS = "id, project_id, agent_name, message, log_level, created_at"
ACTIVE_PHASE_VALUES = (Phase.QUEUED.value, Phase.PENDING.value, Phase.RUNNING.value)

# Unique constraints whose violation deserves words a user understands.
_CONFLICTS = {
    "training_runs_one_active": "the project already has an active run",
    "training_runs_name_key": "a run with this name already exists",
    "training_runs_project_id_attempt_key": "the project already has a run with this attempt",
}
_MISSING_KEY = re.compile(
    r'Key \((?P<column>[^)]+)\)=\((?P<value>[^)]*)\) is not present in table "(?P<table>[^"]+)"'
)
_KINDS = {"projects": "project", "datasets": "dataset", "training_runs": "run", "models": "model"}


def phase_values(expected: Collection[Phase | str] | None) -> list[str] | None:
    """The expected states as plain strings (``None``: no condition)."""
    return None if expected is None else [str(getattr(v, "value", v)) for v in expected]


def error_for_sqlstate(code: str | None, message: str, detail: str | None = None) -> AgentError:
    """The typed error for a Postgres error, whichever adapter met it."""
    code = code or ""
    if code == "23505":
        constraint = next((name for name in _CONFLICTS if name in message), None)
        return Conflict(_CONFLICTS[constraint] if constraint else detail or message)
    if code == "23503":
        found = _MISSING_KEY.search(detail or "")
        if found:
            return NotFound(_KINDS.get(found["table"], found["table"]), found["value"])
        return NotFound("referenced record", detail or message)
    if code.startswith(("22", "23")):  # data exceptions, check and not-null violations
        return InvalidInput(f"the database refused the values: {message}")
    if code == "57014":
        return StoreUnavailable("database statement timed out")
    # Connection loss, shutdown, resource limits, serialization failures, a schema that
    # is not migrated: the store cannot serve now; retrying later (or migrating) may help.
    return StoreUnavailable(
        f"database error {code}: {message}" if code else f"database error: {message}"
    )
