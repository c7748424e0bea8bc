"""``GET /agents/training/status/{id}`` and ``POST /agents/training/cancel/{id}``."""

from __future__ import annotations

from uuid import uuid4

import psutil
import pytest

from training_core.domain import Phase
from training_core.store.base import RunUpdate

from tests.integration.api.conftest import error_of, wait_for

START = "/agents/training/start"


def status_url(project_id) -> str:
    return f"/agents/training/status/{project_id}"


def cancel_url(project_id) -> str:
    return f"/agents/training/cancel/{project_id}"


def test_status_of_a_project_that_never_trained(client, project_factory):
    project = project_factory()

    body = client.get(status_url(project.id)).json()

    assert body["status"] == "not_started" and body["project_status"] == "pending_training"
    assert body["run"] is None and body["model_url"] is None and body["logs"] == []
    assert body["progress"] == {
        "epoch": None,
        "total_epochs": None,
        "loss": None,
        "val_accuracy": None,
        "images_per_second": None,
        "eta_seconds": None,
    }


def test_status_shows_progress_run_and_newest_logs(client, store, project_factory):
    project = project_factory(metadata={"epochs": 10})
    started = client.post(START, json={"project_id": str(project.id)}).json()
    progress = {
        "epoch": 3,
        "total_epochs": 10,
        "loss": 0.41,
        "val_accuracy": 0.87,
        "images_per_second": 812.5,
        "eta_seconds": 95.0,
        "val_loss": 0.5,
    }
    store.update_run(started["run_id"], RunUpdate(phase=Phase.RUNNING, progress=progress))
    for epoch in (1, 2, 3):
        store.log(project.id, f"Epoch {epoch}/10 done")

    body = client.get(status_url(project.id), params={"logs": 2}).json()

    assert body["success"] is True and body["status"] == "running"
    assert body["project_status"] == "training"
    assert body["progress"] == {k: v for k, v in progress.items() if k != "val_loss"}
    assert body["run"]["id"] == started["run_id"] and body["run"]["phase"] == "Running"
    assert body["run"]["model"] == "resnet18" and body["run"]["epochs"] == 10
    assert body["run"]["started_at"] is not None
    assert body["model_url"] == started["model_url"]
    assert [line["message"] for line in body["logs"]] == ["Epoch 3/10 done", "Epoch 2/10 done"]


def test_status_logs_default_and_bounds(client, store, settings, project_factory):
    project = project_factory()
    for n in range(settings.status_logs_default + 5):
        store.log(project.id, f"line {n}")

    default = client.get(status_url(project.id)).json()
    too_many = client.get(status_url(project.id), params={"logs": settings.status_logs_max + 1})
    negative = client.get(status_url(project.id), params={"logs": -1})
    not_a_number = client.get(status_url(project.id), params={"logs": "all"})

    assert len(default["logs"]) == settings.status_logs_default
    assert too_many.status_code == 422
    assert error_of(too_many) == {
        "code": "invalid_parameter",
        "message": "logs must be between 0 and 200",
    }
    for response in (negative, not_a_number):
        assert response.status_code == 422 and error_of(response)["code"] == "validation_error"


def test_status_refuses_bad_and_unknown_ids(client):
    bad = client.get(status_url("not-a-uuid"))
    unknown = client.get(status_url(uuid4()))

    assert bad.status_code == 400 and error_of(bad)["code"] == "invalid_project_id"
    assert unknown.status_code == 404 and error_of(unknown)["code"] == "project_not_found"


def test_cancel_stops_the_process_and_records_it(client, store, idle_launcher, project_factory):
    project = project_factory()
    started = client.post(START, json={"project_id": str(project.id)}).json()
    run = store.get_run(started["run_id"])
    pid = wait_for(lambda: (idle_launcher.describe(run) or {}).get("pid"))

    response = client.post(cancel_url(project.id))

    assert response.status_code == 200
    assert response.json() == {
        "success": True,
        "run_id": started["run_id"],
        "status": "cancelled",
        "project_status": "pending_training",
        "message": f"training run {run.name} cancelled",
    }
    cancelled = store.get_run(run.id)
    assert cancelled.phase is Phase.CANCELLED and cancelled.finished_at is not None
    assert store.get_project(project.id).status == "pending_training"
    assert any("cancelled on request" in e.message for e in store.get_logs(project.id))
    wait_for(
        lambda: not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    )
    # The ended process is not taken for a crash: the run stays Cancelled.
    wait_for(lambda: idle_launcher.describe(run)["state"] == "ended")
    assert store.get_run(run.id).phase is Phase.CANCELLED


def test_cancel_with_status_after_cancel_setting(database_url, tmp_path, store, project_factory):
    from fastapi.testclient import TestClient

    from training_api.launchers.local import LocalLauncher
    from training_api import create_app

    from tests.integration.api.conftest import AUTH, IDLE_TRAINER, make_settings

    settings = make_settings(database_url, tmp_path, status_after_cancel="cancelled")
    launcher = LocalLauncher(
        settings, store, command=IDLE_TRAINER, grace_seconds=1, poll_seconds=0.05
    )
    project = project_factory()
    try:
        with TestClient(create_app(settings, store, launcher), headers=AUTH) as api:
            api.post(START, json={"project_id": str(project.id)})
            response = api.post(cancel_url(project.id))
    finally:
        launcher.close()

    assert response.json()["project_status"] == "cancelled"
    assert store.get_project(project.id).status == "cancelled"


@pytest.mark.parametrize("phase", [None, Phase.SUCCEEDED])
def test_cancel_without_an_active_run_is_409_and_logged(client, store, project_factory, phase):
    project = project_factory()
    if phase:
        started = client.post(START, json={"project_id": str(project.id)}).json()
        store.update_run(started["run_id"], RunUpdate(phase=phase))

    response = client.post(cancel_url(project.id))

    assert response.status_code == 409
    error = error_of(response)
    assert error["code"] == "no_active_run"
    assert (
        (f"latest run is {phase.value}" in error["message"])
        if phase
        else error["message"].endswith("run")
    )
    assert any("no_active_run" in e.message for e in store.get_logs(project.id))


def test_cancel_refuses_bad_and_unknown_ids(client):
    bad = client.post(cancel_url("1 or 1=1"))
    unknown = client.post(cancel_url(uuid4()))

    assert bad.status_code == 400 and error_of(bad)["code"] == "invalid_project_id"
    assert unknown.status_code == 404 and error_of(unknown)["code"] == "project_not_found"


def test_cancel_recorded_first_by_the_operator_is_still_a_success(
    database_url, tmp_path, store, project_factory
):
    """On Kubernetes the operator sees the TrainingRun go and may record the cancel before
    the API does: the caller asked for a cancel and got one, so the answer is 200."""
    from fastapi.testclient import TestClient

    from training_api.launchers.local import LocalLauncher
    from training_api import create_app

    from tests.integration.api.conftest import AUTH, IDLE_TRAINER, make_settings

    class OperatorFirst(LocalLauncher):
        def cancel(self, run):
            super().cancel(run)
            store.update_run(run.id, RunUpdate(phase=Phase.CANCELLED, error="TrainingRun deleted"))
            store.set_project_status(run.project_id, "pending_training", expected=["training"])

    settings = make_settings(database_url, tmp_path)
    launcher = OperatorFirst(settings, store, command=IDLE_TRAINER, grace_seconds=1, poll_seconds=0.05)
    project = project_factory()
    try:
        with TestClient(create_app(settings, store, launcher), headers=AUTH) as api:
            started = api.post(START, json={"project_id": str(project.id)}).json()
            response = api.post(cancel_url(project.id))
    finally:
        launcher.close()

    assert response.status_code == 200, response.text
    assert response.json()["status"] == "cancelled" and response.json()["run_id"] == started["run_id"]
    assert response.json()["project_status"] == "pending_training"


def test_a_cancel_cut_short_by_the_store_is_finished_when_retried(
    settings, store, idle_launcher, project_factory
):
    """The run was recorded Cancelled, then the store went away before the project's status:
    the caller got a 503 and retries, and the retry finishes what the first one began."""
    from fastapi.testclient import TestClient

    from training_api import create_app
    from training_core.errors import StoreUnavailable

    from tests.integration.api.conftest import AUTH

    class OutageAfterTheRun:
        def __init__(self) -> None:
            self.outage = False

        def __getattr__(self, name):
            return getattr(store, name)

        def set_project_status(self, *args, **kwargs):
            if self.outage:
                self.outage = False
                raise StoreUnavailable("database unreachable (outage)")
            return store.set_project_status(*args, **kwargs)

    flaky = OutageAfterTheRun()
    project = project_factory()
    with TestClient(
        create_app(settings, flaky, idle_launcher), headers=AUTH, raise_server_exceptions=False
    ) as api:
        started = api.post(START, json={"project_id": str(project.id)}).json()
        flaky.outage = True
        cut_short = api.post(cancel_url(project.id))
        retried = api.post(cancel_url(project.id))

    assert cut_short.status_code == 503
    assert retried.status_code == 200, retried.text
    assert retried.json()["run_id"] == started["run_id"]
    assert retried.json()["project_status"] == "pending_training"
    assert store.get_project(project.id).status == "pending_training"
    assert store.get_run(started["run_id"]).phase is Phase.CANCELLED
    lines = [e.message for e in store.get_logs(project.id) if "cancelled on request" in e.message]
    assert len(lines) == 1
