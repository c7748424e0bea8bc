"""The real operator (kopf, in its own thread) against the test API server and a real Postgres."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any
from uuid import uuid4

import pytest
from kopf.testing import KopfRunner
from kubernetes import client
from training_core.domain import Project, Run
from training_core.runspec import CRD_GROUP, CRD_KIND, CRD_PLURAL, CRD_VERSION, RunSpec
from training_core.store.base import NewRun
from training_core.store.postgres import PostgresStore
from training_operator.config import OperatorConfig
from training_operator.handlers import build_registry

from tests.fixtures.kube import KubeApi

PENDING_TIMEOUT = 1.5
TIMER_INTERVAL = 0.5


@dataclass
class Cluster:
    """What a test drives: the API server, the store, and the clients a user would use."""

    kube: KubeApi
    store: PostgresStore
    api: client.ApiClient

    @property
    def namespace(self) -> str:
        return self.kube.namespace

    # -- the API's side: record the run, create the TrainingRun -------------------------
    def start_run(self, **spec_fields: Any) -> tuple[Project, Run]:
        project = self.store.create_project(f"flowers-{uuid4().hex[:6]}", status="training")
        name = f"train-{uuid4().hex[:12]}"
        model_url = f"gs://models/models/{project.name}_model.pth"
        run = self.store.create_run(
            NewRun(project_id=project.id, name=name, spec=dict(spec_fields), model_url=model_url)
        )
        spec = RunSpec(
            run_id=run.id,
            run_name=name,
            project_id=project.id,
            dataset_url=f"gs://datasets/{project.id}/raw/dataset.zip",
            model_url=model_url,
            **spec_fields,
        )
        self.custom.create_namespaced_custom_object(
            CRD_GROUP,
            CRD_VERSION,
            self.namespace,
            CRD_PLURAL,
            {
                "apiVersion": f"{CRD_GROUP}/{CRD_VERSION}",
                "kind": CRD_KIND,
                "metadata": {"name": name},
                "spec": spec.to_resource_spec(),
            },
        )
        return project, run

    @property
    def custom(self) -> client.CustomObjectsApi:
        return client.CustomObjectsApi(self.api)

    @property
    def batch(self) -> client.BatchV1Api:
        return client.BatchV1Api(self.api)

    @property
    def core(self) -> client.CoreV1Api:
        return client.CoreV1Api(self.api)

    def training_run(self, name: str) -> dict[str, Any]:
        return self.custom.get_namespaced_custom_object(
            CRD_GROUP, CRD_VERSION, self.namespace, CRD_PLURAL, name
        )

    def jobs(self) -> list[dict[str, Any]]:
        return [
            self.api.sanitize_for_serialization(j)
            for j in self.batch.list_namespaced_job(self.namespace).items
        ]

    def job(self, name: str) -> dict[str, Any]:
        return self.api.sanitize_for_serialization(
            self.batch.read_namespaced_job(name, self.namespace)
        )

    # -- the Job controller's side (no controller runs here) ------------------------------
    def set_job_status(self, name: str, status: dict[str, Any]) -> None:
        self.batch.patch_namespaced_job_status(
            name, self.namespace, {"status": status}, _content_type="application/merge-patch+json"
        )

    def add_pod(self, job_name: str, pod_name: str, status: dict[str, Any], created: str) -> None:
        self.core.create_namespaced_pod(
            self.namespace,
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {
                    "name": pod_name,
                    "labels": self.job(job_name)["spec"]["template"]["metadata"]["labels"],
                    "creationTimestamp": created,
                },
                "spec": {"containers": [{"name": "trainer", "image": "trainer"}]},
                "status": status,
            },
        )

    def set_pod_status(self, pod_name: str, status: dict[str, Any]) -> None:
        self.core.patch_namespaced_pod_status(
            pod_name,
            self.namespace,
            {"status": status},
            _content_type="application/merge-patch+json",
        )

    def event_reasons(self, name: str) -> list[str]:
        """The reasons of the Events posted about one object (``kubectl describe`` shows them)."""
        events = self.core.list_namespaced_event(self.namespace).items
        return [e.reason for e in events if e.involved_object.name == name]

    def log_lines(self, project: Project) -> list[str]:
        return [entry.message for entry in reversed(self.store.get_logs(project.id, limit=100))]


def eventually(check: Callable[[], Any], timeout: float = 20.0, interval: float = 0.05) -> Any:
    """Retry ``check`` until it passes (returns without raising); its last error otherwise."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return check()
        except (AssertionError, LookupError, OSError, client.ApiException):
            if time.monotonic() > deadline:
                raise
            time.sleep(interval)


@pytest.fixture
def operator_env(
    kube_api: KubeApi, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> OperatorConfig:
    monkeypatch.setenv("KUBECONFIG", str(kube_api.kubeconfig))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("DATABASE_URL", database_url)
    monkeypatch.setenv("STORE_BACKEND", "postgres")
    monkeypatch.setenv("OPERATOR_NAMESPACES", kube_api.namespace)
    monkeypatch.setenv("OPERATOR_PENDING_TIMEOUT_SECONDS", str(PENDING_TIMEOUT))
    monkeypatch.setenv("OPERATOR_TIMER_INTERVAL_SECONDS", str(TIMER_INTERVAL))
    monkeypatch.setenv("OPERATOR_TRAINER_IMAGE", "registry.example/trainer:1.0")
    return OperatorConfig()


@pytest.fixture
def run_operator(operator_env: OperatorConfig, kube_api: KubeApi) -> Callable[[], Any]:
    """Start the operator as a context manager; it can be started again (a restart)."""

    @contextmanager
    def running() -> Iterator[KopfRunner]:
        args = ["run", "--standalone", "--namespace", kube_api.namespace]
        watches = _training_run_watches(kube_api)
        with KopfRunner(args, registry=build_registry(operator_env), timeout=30) as runner:
            # Ready once it watches TrainingRuns (it has listed them just before).
            eventually(lambda: _assert(_training_run_watches(kube_api) > watches), timeout=30)
            yield runner
        assert runner.exit_code == 0, runner.output

    return running


def _assert(condition: bool) -> None:
    assert condition


def _training_run_watches(kube_api: KubeApi) -> int:
    return sum(1 for c in kube_api.calls() if c.verb == "watch" and c.resource == CRD_PLURAL)


@pytest.fixture
def cluster(kube_api: KubeApi, pg_store: PostgresStore) -> Iterator[Cluster]:
    with kube_api.api_client() as api:
        yield Cluster(kube_api, pg_store, api)


@pytest.fixture
def operator(run_operator: Callable[[], Any]) -> Iterator[KopfRunner]:
    with run_operator() as runner:
        yield runner
