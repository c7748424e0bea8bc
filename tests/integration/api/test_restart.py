"""The API restarted over the runs an earlier API process left active."""

from __future__ import annotations

import psycopg
from fastapi.testclient import TestClient

from training_api import create_app
from training_api.launchers.local import LocalLauncher

from tests.integration.api.conftest import AUTH, IDLE_TRAINER, make_settings, ready, wait_for

START = "/agents/training/start"


def status_url(project_id) -> str:
    return f"/agents/training/status/{project_id}"


def test_a_run_that_cannot_be_resumed_fails_and_the_project_can_start_again(
    database_url, tmp_path, store, project_factory
):
    """A run whose recorded spec is no longer valid (written by an older agent, or edited by
    hand) cannot be resumed after a restart: it ends Failed, saying why, and its project is
    not left ``training`` (where every later start would be refused)."""
    settings = make_settings(database_url, tmp_path)
    project = project_factory()
    first = LocalLauncher(settings, store, command=IDLE_TRAINER, grace_seconds=1, poll_seconds=0.05)
    try:
        with TestClient(create_app(settings, store, first), headers=AUTH) as api:
            started = api.post(START, json={"project_id": str(project.id)}).json()
    finally:
        first.close()  # the API stops; its run stays active, to resume at the next start
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(
            "update training_runs set spec = spec || '{\"epochs\": 0}' where id = %s",
            (started["run_id"],),
        )

    second = LocalLauncher(settings, store, command=IDLE_TRAINER, grace_seconds=1, poll_seconds=0.05)
    try:
        with TestClient(create_app(settings, store, second), headers=AUTH) as api:
            wait_for(lambda: ready(second))
            status = api.get(status_url(project.id)).json()
            again = api.post(START, json={"project_id": str(project.id)})
    finally:
        second.close()

    assert status["status"] == "failed"
    assert "spec is not valid" in status["run"]["error"]
    assert any("cannot be resumed" in line["message"] for line in status["logs"])
    assert again.status_code == 202, again.json()
    assert again.json()["run_id"] != started["run_id"]
