"""``KubernetesLauncher`` against the real Kubernetes API server, and the API on top."""

from __future__ import annotations

import asyncio
from uuid import uuid4

import httpx
import pytest
from kubernetes import client as k8s

from training_core.domain import Phase, Run
from training_api.launchers import LauncherUnavailable
from training_api.launchers.kubernetes import KubernetesLauncher
from training_core.runspec import CRD_GROUP, CRD_PLURAL, CRD_VERSION, RunSpec
from training_api import create_app

from tests.integration.api.conftest import AUTH, serving


@pytest.fixture
def launcher(training_cluster, kube_namespace):
    launcher = KubernetesLauncher(kube_namespace, training_cluster.api_client(), timeout_seconds=5)
    yield launcher
    launcher.close()


@pytest.fixture
def training_runs(training_cluster, kube_namespace):
    """The TrainingRuns in the test's namespace, as the API server lists them."""

    def listed() -> list[dict]:
        with training_cluster.api_client() as api:
            found = k8s.CustomObjectsApi(api).list_namespaced_custom_object(
                CRD_GROUP, CRD_VERSION, kube_namespace, CRD_PLURAL
            )
        return found["items"]

    return listed


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


def test_start_creates_one_training_run_even_when_retried(training_runs, launcher):
    spec = a_spec()

    launcher.start(spec)
    launcher.start(spec)  # a retry after a timeout finds the first object

    [resource] = training_runs()
    assert resource["metadata"]["name"] == spec.run_name
    assert resource["metadata"]["labels"]["training.automl.dev/run-id"] == str(spec.run_id)
    assert resource["spec"] == spec.to_resource_spec()
    assert launcher.describe(as_run(spec)) == {"name": spec.run_name, "status": {}}


def test_a_name_taken_by_another_run_is_refused(training_runs, launcher):
    spec = a_spec()
    launcher.start(spec)

    with pytest.raises(LauncherUnavailable, match="belongs to another run"):
        launcher.start(spec.model_copy(update={"run_id": uuid4()}))


def test_cancel_deletes_the_training_run_and_is_idempotent(training_runs, launcher):
    spec = a_spec()
    launcher.start(spec)

    launcher.cancel(as_run(spec))
    launcher.cancel(as_run(spec))

    assert training_runs() == []
    assert launcher.describe(as_run(spec)) is None


def test_ping_answers_when_the_resource_is_served(launcher):
    launcher.ping()


def test_fifty_concurrent_starts_make_one_run_and_one_training_run(
    training_runs, launcher, settings, store, project_factory
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
    [resource] = training_runs()
    assert resource["spec"]["runId"] == bodies[0]["run_id"]
    assert store.get_project(project.id).status == "training"


def test_cancel_through_the_api_deletes_the_training_run(
    training_runs, launcher, settings, store, project_factory
):
    from fastapi.testclient import TestClient

    project = project_factory()
    with TestClient(create_app(settings, store, launcher), headers=AUTH) as api:
        started = api.post("/agents/training/start", json={"project_id": str(project.id)}).json()
        assert len(training_runs()) == 1
        cancelled = api.post(f"/agents/training/cancel/{project.id}")

    assert cancelled.status_code == 200 and cancelled.json()["run_id"] == started["run_id"]
    assert training_runs() == []
    assert store.get_run(started["run_id"]).phase is Phase.CANCELLED
