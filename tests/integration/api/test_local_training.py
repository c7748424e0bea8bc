"""The whole flow on one machine: the API, the local launcher and the real trainer on the
digits dataset, with a real GCS-protocol bucket and a real Postgres."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from training_core.blobs import open_blob_store
from training_core.domain import Phase
from training_api.launchers.local import LocalLauncher
from training_agent.samples import write_digits_zip
from training_api import create_app

from tests.integration.api.conftest import AUTH, make_settings, wait_for

pytestmark = pytest.mark.slow


@pytest.fixture
def training_api(
    database_url, gcs_bucket_url, tmp_path, store
) -> Iterator[tuple[TestClient, object]]:
    settings = make_settings(
        database_url,
        tmp_path,
        bucket_url=gcs_bucket_url,
        scratch_dir=tmp_path / "scratch",
        min_free_disk_bytes=0,
    )
    launcher = LocalLauncher(settings, store, grace_seconds=20, poll_seconds=0.1)
    try:
        with TestClient(create_app(settings, store, launcher), headers=AUTH) as api:
            yield api, settings
    finally:
        launcher.close()


@pytest.fixture
def digits_project(training_api, store, project_factory, tmp_path):
    _, settings = training_api
    archive = write_digits_zip(tmp_path / "digits.zip", image_size=16, limit=150)
    dataset_url = f"{settings.bucket_url}/raw/digits.zip"
    open_blob_store(settings).upload(archive, dataset_url)

    def make(epochs: int):
        metadata = {
            "model": "resnet18",
            "epochs": epochs,
            "image_size": 16,
            "batch_size": 32,
            "pretrained": False,
            "num_classes": 10,
            "seed": 0,
        }
        return project_factory("digits", dataset=dataset_url, metadata=metadata)

    return make


def status_of(api, project_id) -> dict:
    return api.get(f"/agents/training/status/{project_id}", params={"logs": 50}).json()


@pytest.mark.parametrize("gpus", [None, 2], ids=["one process", "two processes"])
def test_start_trains_a_model_that_appears_in_the_bucket(
    training_api, digits_project, store, gpus
):
    api, settings = training_api
    project = digits_project(epochs=2)
    # On a machine without GPUs, each asked GPU is a training process on the CPU (gloo).
    request = {"project_id": str(project.id)} | ({"gpus": gpus} if gpus else {})

    started = api.post("/agents/training/start", json=request)
    assert started.status_code == 202
    seen = set()

    def finished() -> dict | None:
        status = status_of(api, project.id)
        seen.add(status["status"])
        return status if status["status"] in ("succeeded", "failed", "cancelled") else None

    final = wait_for(finished, timeout=240, interval=0.2)

    assert final["status"] == "succeeded", final["run"]["error"]
    assert "running" in seen
    assert final["project_status"] == "trained"
    assert final["progress"]["epoch"] == final["progress"]["total_epochs"] == 2
    assert 0 <= final["progress"]["val_accuracy"] <= 1
    assert final["model_url"] == started.json()["model_url"]
    assert open_blob_store(settings).stat(final["model_url"]).size > 0
    assert [m.gcs_url for m in store.get_models(project.id)] == [final["model_url"]]
    assert final["logs"]  # the trainer's steps are visible to the platform
    where = "2 processes on cpu" if gpus else "cpu ("
    lines = [entry["message"] for entry in final["logs"]]
    assert any(line.startswith(f"Training on {where}") for line in lines), lines


def test_cancel_stops_a_training_run(training_api, digits_project, store):
    api, settings = training_api
    project = digits_project(epochs=200)
    started = api.post("/agents/training/start", json={"project_id": str(project.id)}).json()
    # Cancel once the trainer is at work (it says so in the project's logs).
    wait_for(
        lambda: any(
            "Training started" in line["message"] for line in status_of(api, project.id)["logs"]
        ),
        timeout=120,
        interval=0.2,
    )

    cancelled = api.post(f"/agents/training/cancel/{project.id}")

    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    run = store.get_run(started["run_id"])
    log_file = settings.local_runs_dir / run.name / "trainer.log"
    wait_for(lambda: api.app.state.service.launcher.describe(run)["state"] == "ended", timeout=60)
    time.sleep(0.5)
    status = status_of(api, project.id)
    assert status["status"] == "cancelled" and status["project_status"] == "pending_training"
    assert store.get_run(run.id).phase is Phase.CANCELLED
    assert log_file.exists()
