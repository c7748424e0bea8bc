"""``POST /agents/training/start``: the happy path, idempotence and every refusal."""

from __future__ import annotations

from uuid import uuid4

import pytest
from fastapi.testclient import TestClient
from kubernetes import client as k8s

from training_core.domain import Phase
from training_api.launchers.kubernetes import KubernetesLauncher
from training_core.runspec import RunSpec
from training_core.store.base import NewRun, RunUpdate
from training_api import create_app

from tests.integration.api.conftest import AUTH, error_of, make_settings, wait_for

START = "/agents/training/start"


def messages(store, project_id) -> list[str]:
    return [entry.message for entry in store.get_logs(project_id, 50)]


def test_start_records_the_run_and_answers_202(
    client, store, settings, project_factory, idle_launcher
):
    project = project_factory("Flowers 2026", metadata={"epochs": 4, "image_size": 64})

    response = client.post(START, json={"project_id": str(project.id)})

    assert response.status_code == 202
    body = response.json()
    run = store.get_latest_run(project.id)
    assert body == {
        "success": True,
        "created": True,
        "run_id": str(run.id),
        "run_name": f"train-{str(project.id)[:8]}-{str(project.id)[-12:]}-1",
        "status": "queued",
        "model_url": f"{settings.bucket_url}/models/flowers_2026_model.pth",
        "status_url": f"/agents/training/status/{project.id}",
        "message": f"training run {run.name} queued",
    }
    assert run.name == body["run_name"] and run.model_url == body["model_url"]
    spec = RunSpec.model_validate(run.spec)
    assert (spec.run_id, spec.model, spec.epochs, spec.image_size) == (run.id, "resnet18", 4, 64)
    assert spec.model_url == run.model_url
    assert store.get_project(project.id).status == "training"
    assert any("queued" in line and run.name in line for line in messages(store, project.id))
    # The launcher took it: the stand-in trainer process runs.
    assert wait_for(lambda: (idle_launcher.describe(run) or {}).get("state") == "running")


def test_two_projects_with_one_name_get_two_model_urls(client, store, settings, project_factory):
    first = project_factory("Flowers")
    second = project_factory("Flowers")

    urls = [
        client.post(START, json={"project_id": str(p.id)}).json()["model_url"]
        for p in (first, second)
    ]

    second_run = store.get_latest_run(second.id)
    assert urls == [
        f"{settings.bucket_url}/models/flowers_model.pth",
        f"{settings.bucket_url}/models/flowers_{str(second_run.id)[:8]}_model.pth",
    ]


def test_request_values_win_over_project_metadata(client, store, project_factory):
    project = project_factory(
        metadata={"model": "resnet34", "epochs": 9, "batch_size": 16, "seed": 7}
    )

    response = client.post(
        START, json={"project_id": str(project.id), "epochs": 3, "learning_rate": 0.01}
    )

    assert response.status_code == 202
    spec = RunSpec.model_validate(store.get_latest_run(project.id).spec)
    assert (spec.model, spec.epochs, spec.learning_rate, spec.batch_size, spec.seed) == (
        "resnet34",
        3,
        0.01,
        16,
        7,
    )


def test_second_start_answers_the_active_run(client, store, project_factory):
    project = project_factory()
    first = client.post(START, json={"project_id": str(project.id)}).json()

    again = client.post(START, json={"project_id": str(project.id), "epochs": 2})

    assert again.status_code == 200
    body = again.json()
    assert body["created"] is False and body["run_id"] == first["run_id"]
    assert "already active" in body["message"]
    assert store.list_active_runs()[0].id == store.get_latest_run(project.id).id
    assert len(store.list_active_runs()) == 1


def test_a_later_run_gets_a_new_attempt_and_its_own_model_url(
    client, store, settings, project_factory
):
    project = project_factory("digits")
    first = client.post(START, json={"project_id": str(project.id)}).json()
    store.update_run(first["run_id"], RunUpdate(phase=Phase.FAILED, error="boom"))
    store.set_project_status(project.id, "pending_training")

    second = client.post(START, json={"project_id": str(project.id)}).json()

    assert second["run_name"].endswith("-2") and second["run_id"] != first["run_id"]
    assert (
        second["model_url"]
        == f"{settings.bucket_url}/models/digits_{second['run_id'][:8]}_model.pth"
    )


@pytest.mark.parametrize(
    ("fields", "code", "words"),
    [
        ({"status": "trained"}, "invalid_project_status", "'trained'"),
        ({"task_type": "object_detection"}, "unsupported_task_type", "object_detection"),
        ({"framework": "tensorflow"}, "unsupported_framework", "tensorflow"),
        ({"metadata": {"epochs": "ten"}}, "invalid_metadata", "epochs"),
        ({"metadata": {"epochs": 100_000}}, "invalid_metadata", "epochs must be between 1 and 200"),
        ({"metadata": {"num_classes": 1}}, "invalid_metadata", "num_classes"),
        ({"metadata": {"pretrained": "yes"}}, "invalid_metadata", "pretrained"),
        ({"metadata": {"model": "vgg16"}}, "unsupported_model", "vgg16"),
    ],
)
def test_invalid_projects_are_refused_with_400_and_logged(
    client, store, project_factory, fields, code, words
):
    project = project_factory(**fields)

    response = client.post(START, json={"project_id": str(project.id)})

    assert response.status_code == 400
    error = error_of(response)
    assert error["code"] == code and words in error["message"]
    assert store.get_latest_run(project.id) is None
    assert store.get_project(project.id).status == fields.get("status", "pending_training")
    assert any(code in line for line in messages(store, project.id))


def test_invalid_dataset_url_is_refused(client, store, project_factory):
    project = project_factory(dataset="https://example.com/data.zip")

    response = client.post(START, json={"project_id": str(project.id)})

    assert response.status_code == 400
    assert error_of(response)["code"] == "invalid_dataset_url"
    assert store.get_project(project.id).status == "pending_training"


def test_missing_dataset_and_project_are_404(client, store, project_factory):
    project = project_factory(dataset=None)

    no_dataset = client.post(START, json={"project_id": str(project.id)})
    no_project = client.post(START, json={"project_id": str(uuid4())})

    assert no_dataset.status_code == 404 and error_of(no_dataset)["code"] == "dataset_not_found"
    assert any("dataset_not_found" in line for line in messages(store, project.id))
    assert no_project.status_code == 404 and error_of(no_project)["code"] == "project_not_found"


def test_malformed_project_id_is_400(client):
    response = client.post(START, json={"project_id": "../../etc/passwd"})

    assert response.status_code == 400
    assert error_of(response) == {
        "code": "invalid_project_id",
        "message": "project_id must be a UUID",
    }


@pytest.mark.parametrize(
    ("body", "where"),
    [
        ({}, "body.project_id"),
        ({"project_id": str(uuid4()), "epochs": 0}, "body.epochs"),
        ({"project_id": str(uuid4()), "learning_rate": 2}, "body.learning_rate"),
        ({"project_id": str(uuid4()), "accelerator": "tpu-v5"}, "body.accelerator"),  # unknown
        ({"project_id": str(uuid4()), "gpus": -1}, "body.gpus"),
        ({"project_id": str(uuid4()), "nodes": 0}, "body.nodes"),
        ({"project_id": 12}, "body.project_id"),
    ],
)
def test_schema_violations_are_422(client, body, where):
    response = client.post(START, json=body)

    assert response.status_code == 422
    error = error_of(response)
    assert error["code"] == "validation_error" and where in error["message"]


def test_non_json_body_is_422(client):
    response = client.post(START, content=b"project_id=1", headers={"Content-Type": "text/plain"})

    assert response.status_code == 422 and error_of(response)["code"] == "validation_error"


def test_bounds_from_settings_apply_to_request_values(client, store, project_factory):
    project = project_factory()

    response = client.post(START, json={"project_id": str(project.id), "epochs": 201})
    unsupported = client.post(START, json={"project_id": str(project.id), "model": "alexnet"})

    assert response.status_code == 422
    assert error_of(response) == {
        "code": "invalid_parameter",
        "message": "epochs must be between 1 and 200 (got 201)",
    }
    assert unsupported.status_code == 422
    assert (
        error_of(unsupported)["code"] == "validation_error"
        and "'resnet18'" in error_of(unsupported)["message"]
    )
    assert store.get_latest_run(project.id) is None


@pytest.mark.parametrize(
    ("asked", "message"),
    [
        ({"gpus": 9}, "gpus must be between 0 and 8 (got 9)"),
        ({"nodes": 5}, "nodes must be between 1 and 4 (got 5)"),
        (
            {"gpus": 4, "batch_size": 30},
            "batch_size 30 cannot be split evenly across 4 training processes with at least 2"
            " images each: use a multiple of 4, at least 8 (4 GPUs)",
        ),
    ],
)
def test_a_group_over_the_limits_or_a_batch_it_cannot_split_is_refused(
    client, store, project_factory, asked, message
):
    project = project_factory()

    response = client.post(START, json={"project_id": str(project.id), **asked})

    assert response.status_code == 422
    assert error_of(response) == {"code": "invalid_parameter", "message": message}
    assert store.get_latest_run(project.id) is None
    assert store.get_project(project.id).status == "pending_training"


def test_a_project_training_without_an_active_run_is_409(client, store, project_factory):
    project = project_factory(status="training")

    response = client.post(START, json={"project_id": str(project.id)})

    assert response.status_code == 409
    error = error_of(response)
    assert error["code"] == "no_active_run" and "'training'" in error["message"]


def test_launcher_failure_undoes_the_claim(settings, store, project_factory, tmp_path):
    """Nothing is left orphaned: the run is Failed, the project pending again, all logged."""
    launcher = KubernetesLauncher("training", _unreachable_kube(), timeout_seconds=2)
    app = create_app(settings, store, launcher)
    project = project_factory()

    with TestClient(app, headers=AUTH) as api:
        response = api.post(START, json={"project_id": str(project.id)})
        metrics = api.get("/metrics").text

    assert response.status_code == 503 and response.headers["Retry-After"] == "5"
    assert error_of(response)["code"] == "launcher_unavailable"
    run = store.get_latest_run(project.id)
    assert run.phase is Phase.FAILED and "launcher could not start" in run.error
    assert store.get_project(project.id).status == "pending_training"
    assert any("failed to start" in line for line in messages(store, project.id))
    assert "training_runs_launch_failed_total 1.0" in metrics
    assert "training_runs_started_total 0.0" in metrics


def test_store_down_is_503_with_retry_after(tmp_path):
    settings = make_settings(
        "postgresql://nobody@127.0.0.1:9/none", tmp_path, store_timeout_seconds=0.5
    )

    app = create_app(settings, launcher=KubernetesLauncher("training", _unreachable_kube()))
    with TestClient(app, headers=AUTH) as api:
        response = api.post(START, json={"project_id": str(uuid4())})

    assert response.status_code == 503 and response.headers["Retry-After"] == "5"
    assert error_of(response) == {
        "code": "store_unavailable",
        "message": "the database is unavailable; retry later",
    }


def _unreachable_kube() -> k8s.ApiClient:
    configuration = k8s.Configuration()
    configuration.host = "http://127.0.0.1:9"  # nothing listens: the Kubernetes API is down
    configuration.retries = 0
    return k8s.ApiClient(configuration)


def test_recorded_run_keeps_its_claim_when_the_run_is_already_there(client, store, project_factory):
    """A run recorded by someone else (say, before a restart) answers the start as active."""
    project = project_factory(status="training")
    existing = store.create_run(
        NewRun(project_id=project.id, name="train-existing-1", phase=Phase.RUNNING)
    )

    response = client.post(START, json={"project_id": str(project.id)})

    assert response.status_code == 200 and response.json()["run_id"] == str(existing.id)


def test_an_active_run_behind_a_pending_status_is_409_and_the_claim_is_given_back(
    client, store, project_factory
):
    project = project_factory()
    store.create_run(NewRun(project_id=project.id, name="train-stray-1", phase=Phase.RUNNING))

    response = client.post(START, json={"project_id": str(project.id)})

    assert response.status_code == 409
    assert error_of(response) == {
        "code": "active_run_exists",
        "message": "the project already has an active run",
    }
    assert store.get_project(project.id).status == "pending_training"
    assert store.get_latest_run(project.id).name == "train-stray-1"
