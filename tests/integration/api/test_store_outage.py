"""A store that goes away while the API runs: `/start` and `/status` answer 503 with
Retry-After, write nothing, and work again as soon as the store is back."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from tests.fixtures.postgres import RestartablePostgres
from tests.integration.api.conftest import AUTH, error_of, wait_for
from training_api import create_app

START = "/agents/training/start"


@pytest.fixture
def database_url(restartable_pg: RestartablePostgres) -> str:
    return restartable_pg.url  # a server of this test's own, which it stops


def test_start_and_status_are_503_while_the_store_is_down(
    restartable_pg: RestartablePostgres, settings, store, idle_launcher, project_factory
) -> None:
    project = project_factory()
    status_url = f"/agents/training/status/{project.id}"
    with TestClient(create_app(settings, store, idle_launcher), headers=AUTH) as api:
        restartable_pg.stop()
        refused = [api.get(status_url), api.post(START, json={"project_id": str(project.id)})]
        restartable_pg.start()
        # As a client that honours Retry-After: the pool reconnects within a few tries.
        started = wait_for(
            lambda: _unless_unavailable(api.post(START, json={"project_id": str(project.id)})),
            timeout=60, interval=1,
        )  # fmt: skip
        status = api.get(status_url)

    for response in refused:
        assert response.status_code == 503 and response.headers["Retry-After"] == "5"
        assert error_of(response)["code"] == "store_unavailable"
    assert started.status_code == 202, started.text
    assert status.status_code == 200 and status.json()["run"]["id"] == started.json()["run_id"]
    assert [str(run.id) for run in store.list_runs(project.id)] == [status.json()["run"]["id"]]


def _unless_unavailable(response):
    return None if response.status_code == 503 else response
