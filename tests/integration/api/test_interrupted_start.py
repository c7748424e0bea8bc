"""A start is all or nothing: a store failing inside it leaves the project startable, and a
claim no run holds (an interrupted start of an older agent) is given back when the API starts."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import psycopg
from fastapi.testclient import TestClient

from tests.integration.api.conftest import AUTH, error_of, make_settings
from training_api import create_app
from training_core.errors import StoreUnavailable
from training_core.store.postgres import PostgresStore

START = "/agents/training/start"


def restarted_api(settings, store, launcher) -> TestClient:
    """The API as a fresh process brings it up (its start-up sweep runs in the lifespan)."""
    return TestClient(create_app(settings, store, launcher), headers=AUTH, raise_server_exceptions=False)


def test_a_claim_left_without_a_run_is_released_at_start_up_and_the_project_starts(
    database_url, tmp_path: Path, store, idle_launcher, project_factory
) -> None:
    project = project_factory()
    # What an agent killed between its claim and its run record left behind.
    store.set_project_status(project.id, "training")
    settings = make_settings(database_url, tmp_path, stale_claim_seconds=1)
    with restarted_api(settings, store, idle_launcher) as api:
        stuck = api.post(START, json={"project_id": str(project.id)})
        assert stuck.status_code == 409 and error_of(stuck)["code"] == "no_active_run"

    time.sleep(1.2)  # older than STALE_CLAIM_SECONDS now
    with restarted_api(settings, store, idle_launcher) as api:
        started = api.post(START, json={"project_id": str(project.id)})

    assert started.status_code == 202, started.text
    messages = [entry.message for entry in store.get_logs(project.id, limit=10)]
    assert any("with no active run; back to pending_training" in m for m in messages)
    assert store.get_project(project.id).status == "training"
    assert store.get_latest_run(project.id).id == uuid.UUID(started.json()["run_id"])


def test_a_claim_held_by_a_run_is_kept(
    database_url, tmp_path: Path, store, idle_launcher, project_factory
) -> None:
    project = project_factory()
    settings = make_settings(database_url, tmp_path, stale_claim_seconds=1)
    with restarted_api(settings, store, idle_launcher) as api:
        assert api.post(START, json={"project_id": str(project.id)}).status_code == 202
    time.sleep(1.2)
    with restarted_api(settings, store, idle_launcher):
        pass

    assert store.get_project(project.id).status == "training"
    assert not any("no active run" in e.message for e in store.get_logs(project.id, limit=10))


def test_a_store_failing_inside_the_start_leaves_the_project_startable(
    database_url, tmp_path: Path, settings, store, idle_launcher, project_factory
) -> None:
    project = project_factory()
    # A database role that may claim projects but not record runs: the start fails half-way.
    role = f"api_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(database_url, autocommit=True) as admin:
        admin.execute(f"create role {role} login")
        admin.execute(f"grant select, update on projects to {role}")
        admin.execute(f"grant select, insert on datasets, agent_logs to {role}")
        admin.execute(f"grant select on training_runs, models to {role}")
    params = psycopg.conninfo.conninfo_to_dict(database_url)
    failing = PostgresStore(psycopg.conninfo.make_conninfo(**{**params, "user": role}), timeout=5)
    try:
        with restarted_api(settings, failing, idle_launcher) as api:
            refused = api.post(START, json={"project_id": str(project.id)})
    finally:
        failing.close()

    assert refused.status_code == 503 and error_of(refused)["code"] == "store_unavailable"
    assert store.get_project(project.id).status == "pending_training"  # the claim undone with it
    assert store.get_latest_run(project.id) is None
    with restarted_api(settings, store, idle_launcher) as api:
        assert api.post(START, json={"project_id": str(project.id)}).status_code == 202


class LogLostStore:
    """The store through an outage that begins right after the start was recorded: writing
    the start's log line fails."""

    def __init__(self, store: PostgresStore) -> None:
        self._store = store

    def __getattr__(self, name: str):
        return getattr(self._store, name)

    def log(self, project_id, message: str, *args, **kwargs) -> None:
        if " queued: " in message:
            raise StoreUnavailable("database unreachable (outage)")
        self._store.log(project_id, message, *args, **kwargs)


def test_a_store_failing_after_the_start_was_recorded_still_launches_the_run(
    settings, store, idle_launcher, project_factory
) -> None:
    project = project_factory()
    with restarted_api(settings, LogLostStore(store), idle_launcher) as api:
        started = api.post(START, json={"project_id": str(project.id)})
        again = api.post(START, json={"project_id": str(project.id)})

    # The run is recorded and the project claimed: it must not wait for a launch that never comes.
    assert started.status_code == 202, started.text
    run = store.get_run(uuid.UUID(started.json()["run_id"]))
    assert idle_launcher.describe(run)["state"] in ("queued", "running")
    assert again.status_code == 200 and again.json()["run_id"] == started.json()["run_id"]
