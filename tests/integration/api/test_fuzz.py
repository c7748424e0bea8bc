"""Schemathesis generates requests from the OpenAPI schema: no 5xx, answers match the schema.

Each operation is driven with hypothesis directly (schemathesis' pytest plugin does not load
under this pytest version); the number of examples is bounded so it stays fast. Generated
project ids that are well-formed UUIDs are swapped for a real project's id, so the fuzzing
reaches past "not found" into starts, repeated starts, status and cancels.
"""

from __future__ import annotations

from uuid import UUID

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode

from tests.integration.api.conftest import AUTH

EXAMPLES_PER_OPERATION = 30


def operations(app):
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    return [result.ok() for result in schema.get_all_operations()]


def is_uuid(value) -> bool:
    try:
        UUID(value)
    except (TypeError, ValueError, AttributeError):
        return False
    return True


def aim_at(case, project_id: str) -> None:
    if is_uuid((case.path_parameters or {}).get("project_id")):
        case.path_parameters["project_id"] = project_id
    if isinstance(case.body, dict) and is_uuid(case.body.get("project_id")):
        case.body["project_id"] = project_id


WITHOUT_INPUT = ["GET /health", "GET /ready", "GET /metrics"]
WITH_INPUT = [
    "POST /agents/training/start",
    "GET /agents/training/status/{project_id}",
    "POST /agents/training/cancel/{project_id}",
    "GET /agents/training/runs",
    "GET /agents/training/metrics/{project_id}",
]
CASES = [(op, GenerationMode.POSITIVE) for op in WITHOUT_INPUT + WITH_INPUT] + [
    (op, GenerationMode.NEGATIVE) for op in WITH_INPUT
]


def test_every_operation_is_fuzzed(app):
    found = {f"{op.method.upper()} {op.path}" for op in operations(app)}

    assert found == set(WITHOUT_INPUT + WITH_INPUT)


@pytest.mark.parametrize(("name", "mode"), CASES)
def test_the_api_conforms_to_its_schema(app, project_factory, store, name, mode):
    project_id = str(project_factory().id)
    [operation] = [op for op in operations(app) if f"{op.method.upper()} {op.path}" == name]
    if operation.path.startswith("/agents/training/cancel"):
        with TestClient(app, headers=AUTH) as api:  # something to cancel
            api.post("/agents/training/start", json={"project_id": project_id})

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=EXAMPLES_PER_OPERATION,
        deadline=None,
        derandomize=True,  # the same examples on every run: a failure is reproducible
        suppress_health_check=list(HealthCheck),
    )
    def conforms(case) -> None:
        aim_at(case, project_id)
        seen.add(case.call_and_validate(headers=AUTH).status_code)

    seen: set[int] = set()
    conforms()
    assert seen and 500 not in seen
    if operation.path == "/agents/training/start" and mode is GenerationMode.POSITIVE:
        assert {202, 200} <= seen, seen  # runs were started, and repeated starts answered
    assert len(store.list_active_runs()) <= 1
