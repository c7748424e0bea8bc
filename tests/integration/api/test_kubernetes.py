"""``KubernetesLauncher`` against the test Kubernetes API server (kmock), and the API on top."""

from __future__ import annotations

import asyncio
from uuid import uuid4

import httpx
import pytest
from kubernetes import client as k8s

from training_core.domain import Phase, Run
from training_core.launchers import LauncherUnavailable
from training_core.launchers.kubernetes import KubernetesLauncher
from training_core.runspec import CRD_GROUP, CRD_PLURAL, CRD_VERSION, RunSpec
from training_api import create_app

from tests.integration.api.conftest import AUTH, serving

NAMESPACE = "training"


@pytest.fixture
def launcher(kube_api):
    launcher = KubernetesLauncher(NAMESPACE, kube_api.api_client(), timeout_seconds=5)
    yield launcher
    launcher.close()


def training_runs(kube_api) -> list[dict]:
    with kube_api.api_client() as api:
        listed = k8s.CustomObjectsApi(api).list_namespaced_custom_object(
            CRD_GROUP, CRD_VERSION, NAMESPACE, CRD_PLURAL
        )
    return listed["items"]


def a_spec(**fields) -> RunSpec:
    project_id = uuid4()
    values = {
        "run_id": uuid4(),
        "run_name": f"train-{str(project_id)[:8]}-{str(project_id)[-12:]}-1",
        "project_id": project_id,
        "dataset_url": "gs://data-bucket/raw/cats.zip",
        "model_url": "gs://models-bucket/models/cats_model.pth",
        "epochs": 3,
    }
    return RunSpec(**{**values, **fields})


def as_run(spec: RunSpec) -> Run:
    return Run(id=spec.run_id, project_id=spec.project_id, name=spec.run_name, phase=Phase.QUEUED)


def test_start_creates_one_training_run_even_when_retried(kube_api, launcher):
    spec = a_spec()

    launcher.start(spec)
    launcher.start(spec)  # a retry after a timeout finds the first object

    [resource] = training_runs(kube_api)
    assert resource["metadata"]["name"] == spec.run_name
    assert resource["metadata"]["labels"]["training.automl.dev/run-id"] == str(spec.run_id)
    assert resource["spec"] == spec.to_resource_spec()
    assert launcher.describe(as_run(spec)) == {"name": spec.run_name, "status": {}}


def test_a_name_taken_by_another_run_is_refused(kube_api, launcher):
    spec = a_spec()
    launcher.start(spec)

    with pytest.raises(LauncherUnavailable, match="belongs to another run"):
        launcher.start(spec.model_copy(update={"run_id": uuid4()}))


def test_cancel_deletes_the_training_run_and_is_idempotent(kube_api, launcher):
    spec = a_spec()
    launcher.start(spec)

    launcher.cancel(as_run(spec))
    launcher.cancel(as_run(spec))

    assert training_runs(kube_api) == []
    assert launcher.describe(as_run(spec)) is None


def test_ping_answers_when_the_resource_is_served(launcher):
    launcher.ping()


def test_fifty_concurrent_starts_make_one_run_and_one_training_run(
    kube_api, launcher, settings, store, project_factory
):
    project = project_factory()
    app = create_app(settings, store, launcher)

    async def start_all(base_url: str) -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=base_url, headers=AUTH, timeout=30) as http:
            return await asyncio.gather(
                *(
                    http.post("/agents/training/start", json={"project_id": str(project.id)})
                    for _ in range(50)
                )
            )

    with serving(app) as base_url:
        answers = asyncio.run(start_all(base_url))

    bodies = [answer.json() for answer in answers]
    assert sorted(answer.status_code for answer in answers) == [200] * 49 + [202]
    assert sum(body["created"] for body in bodies) == 1
    assert {body["run_id"] for body in bodies} == {str(store.get_latest_run(project.id).id)}
    assert {body["model_url"] for body in bodies} == {store.get_latest_run(project.id).model_url}
    assert len(store.list_active_runs()) == 1
    [resource] = training_runs(kube_api)
    assert resource["spec"]["runId"] == bodies[0]["run_id"]
    assert store.get_project(project.id).status == "training"


def test_cancel_through_the_api_deletes_the_training_run(
    kube_api, launcher, settings, store, project_factory
):
    from fastapi.testclient import TestClient

    project = project_factory()
    with TestClient(create_app(settings, store, launcher), headers=AUTH) as api:
        started = api.post("/agents/training/start", json={"project_id": str(project.id)}).json()
        assert len(training_runs(kube_api)) == 1
        cancelled = api.post(f"/agents/training/cancel/{project.id}")

    assert cancelled.status_code == 200 and cancelled.json()["run_id"] == started["run_id"]
    assert training_runs(kube_api) == []
    assert store.get_run(started["run_id"]).phase is Phase.CANCELLED
