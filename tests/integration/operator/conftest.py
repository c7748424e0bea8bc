"""The real operator (kopf, in its own thread) on the real control plane, with a real Postgres.

Each test gets a namespace of its own. The operator runs there with the token of a
ServiceAccount bound to exactly ``training_operator.permissions`` (a missing rule fails the
test). Kubernetes' own controllers run the Jobs; the scheduler places their pods on a fake
GPU node, where the kubelet stand-in runs each pod's program: a program the test steers
(tests/fixtures/steered_program.py), so that a test decides when a pod ends and how.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
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
from training_operator.permissions import as_rbac_rules

from tests.fixtures import steered_program
from tests.fixtures.cluster import Cluster, free_port
from tests.fixtures.kubelet import KubeletStandIn

TIMER_INTERVAL = 0.5
GPU_NODE = "gke-gpu-t4-pool-1"
ACCELERATOR = "nvidia-tesla-t4"
TRAINER_IMAGE = "registry.example/trainer:1.0"
OPERATOR_ACCOUNT = "training-operator"


@pytest.fixture(scope="session")
def gpu_pool(training_cluster: Cluster) -> Cluster:
    """A fake T4 node pool, roomy enough that no test waits for another's GPUs."""
    training_cluster.add_node(
        GPU_NODE,
        {"cloud.google.com/gke-accelerator": ACCELERATOR, "cloud.google.com/gke-nodepool": "gpu-t4"},
        {"cpu": "256", "memory": "2048Gi", "nvidia.com/gpu": "64", "pods": "110"},
        taints=[{"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}],
    )
    return training_cluster


@dataclass
class Workspace:
    """What a test drives: its namespace, the store, and the clients a user would use."""

    cluster: Cluster
    namespace: str
    store: PostgresStore
    api: client.ApiClient
    kubelet: KubeletStandIn
    steering: Path

    # -- the API's side: record the run, create the TrainingRun -------------------------
    def start_run(
        self, bucket_url: str = "gs://models", dataset_url: str | None = None, **spec_fields: Any
    ) -> tuple[Project, Run]:
        spec_fields.setdefault("resources", {"accelerator": ACCELERATOR})
        project = self.store.create_project(f"flowers-{uuid4().hex[:6]}", status="training")
        name = f"train-{uuid4().hex[:12]}"
        model_url = f"{bucket_url}/models/{project.name}_model.pth"
        run = self.store.create_run(
            NewRun(project_id=project.id, name=name, spec=dict(spec_fields), model_url=model_url)
        )
        spec = RunSpec(
            run_id=run.id,
            run_name=name,
            project_id=project.id,
            dataset_url=dataset_url or f"gs://datasets/{project.id}/raw/dataset.zip",
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

    def end_pods(self, run: Run, exit_code: int) -> None:
        """The run's pod programs exit with ``exit_code`` (this pod's and any later one's)."""
        (self.steering / f"{run.id}.exit").write_text(str(exit_code))

    def end_node_once(self, run: Run, index: int, exit_code: int) -> None:
        """The pod of node ``index`` of a run's group exits with ``exit_code`` (that pod only)."""
        (self.steering / f"{run.id}.{index}.once").write_text(str(exit_code))

    # -- what kubectl would show --------------------------------------------------------
    @property
    def custom(self) -> client.CustomObjectsApi:
        return client.CustomObjectsApi(self.api)

    @property
    def batch(self) -> client.BatchV1Api:
        return client.BatchV1Api(self.api)

    @property
    def core(self) -> client.CoreV1Api:
        return client.CoreV1Api(self.api)

    @property
    def discovery(self) -> client.DiscoveryV1Api:
        return client.DiscoveryV1Api(self.api)

    def training_run(self, name: str) -> dict[str, Any]:
        return self.custom.get_namespaced_custom_object(
            CRD_GROUP, CRD_VERSION, self.namespace, CRD_PLURAL, name
        )

    def patch_run(self, name: str, patch: dict[str, Any]) -> None:
        self.custom.patch_namespaced_custom_object(
            CRD_GROUP, CRD_VERSION, self.namespace, CRD_PLURAL, name, patch,
            _content_type="application/merge-patch+json",
        )

    def delete_run(self, name: str) -> None:
        self.custom.delete_namespaced_custom_object(
            CRD_GROUP, CRD_VERSION, self.namespace, CRD_PLURAL, name
        )

    def training_runs(self) -> list[dict[str, Any]]:
        listed = self.custom.list_namespaced_custom_object(
            CRD_GROUP, CRD_VERSION, self.namespace, CRD_PLURAL
        )
        return listed["items"]

    def jobs(self) -> list[dict[str, Any]]:
        return [
            self.api.sanitize_for_serialization(j)
            for j in self.batch.list_namespaced_job(self.namespace).items
        ]

    def job(self, name: str) -> dict[str, Any]:
        return self.api.sanitize_for_serialization(
            self.batch.read_namespaced_job(name, self.namespace)
        )

    def pods(self, run_name: str) -> list[dict[str, Any]]:
        listed = self.core.list_namespaced_pod(self.namespace, label_selector=f"job-name={run_name}")
        return [self.api.sanitize_for_serialization(p) for p in listed.items]

    def services(self) -> list[dict[str, Any]]:
        return [
            self.api.sanitize_for_serialization(s)
            for s in self.core.list_namespaced_service(self.namespace).items
        ]

    def event_reasons(self, name: str) -> list[str]:
        """The reasons of the Events posted about one TrainingRun (``kubectl describe`` shows
        them; its Job, of the same name, has Events of its own from the Job controller)."""
        events = self.core.list_namespaced_event(self.namespace).items
        return [
            e.reason for e in events
            if (e.involved_object.kind, e.involved_object.name) == (CRD_KIND, name)
        ]

    def log_lines(self, project: Project) -> list[str]:
        return [entry.message for entry in reversed(self.store.get_logs(project.id, limit=100))]

    def kubectl(self, *args: str) -> str:
        return self.cluster.kubectl("-n", self.namespace, *args).stdout

    @property
    def operator_user(self) -> str:
        return f"system:serviceaccount:{self.namespace}:{OPERATOR_ACCOUNT}"


def eventually(check: Callable[[], Any], timeout: float = 30.0, interval: float = 0.1) -> Any:
    """Retry ``check`` until it passes (returns without raising); its last error otherwise."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return check()
        except (AssertionError, LookupError, OSError, client.ApiException):
            if time.monotonic() > deadline:
                raise
            time.sleep(interval)


def expect(condition: bool) -> None:
    assert condition


@pytest.fixture
def steering(tmp_path: Path) -> Path:
    folder = tmp_path / "steering"
    folder.mkdir()
    return folder


@pytest.fixture
def trainer_program(steering: Path) -> tuple[list[str], dict[str, str]]:
    """What the kubelet stand-in runs for the trainer's image, and what the node gives each
    of its processes: the steered program (a test module may run the real trainer)."""
    return [sys.executable, steered_program.__file__], {"STEERED_DIR": str(steering)}


@pytest.fixture
def workspace(
    gpu_pool: Cluster, kube_namespace: str, pg_store: PostgresStore, tmp_path: Path,
    steering: Path, trainer_program: tuple[list[str], dict[str, str]],
) -> Iterator[Workspace]:
    namespace = kube_namespace
    _prepare_namespace(gpu_pool, namespace)
    entrypoint, node_env = trainer_program
    kubelet = KubeletStandIn(gpu_pool, {GPU_NODE}, {"trainer": entrypoint}, node_env, tmp_path / "pods")
    with gpu_pool.api_client() as api, kubelet:
        found = Workspace(cluster=gpu_pool, namespace=namespace, store=pg_store, api=api,
                          kubelet=kubelet, steering=steering)
        yield found
        # The test's pods go while the kubelet is there to stop them.
        found.kubectl("delete", "jobs", "--all", "--cascade=background", "--wait=false")
        eventually(lambda: expect(not found.core.list_namespaced_pod(namespace).items), 60)


def _prepare_namespace(cluster: Cluster, namespace: str) -> None:
    """What the chart installs beside the operator: its ServiceAccount bound to a Role of
    exactly its rules, the trainer's ServiceAccount, and the settings the trainer's pods read."""
    with cluster.api_client() as api:
        core, rbac = client.CoreV1Api(api), client.RbacAuthorizationV1Api(api)
        for account in (OPERATOR_ACCOUNT, "training-agent-trainer"):
            core.create_namespaced_service_account(namespace, {"metadata": {"name": account}})
        rbac.create_namespaced_role(
            namespace, {"metadata": {"name": OPERATOR_ACCOUNT}, "rules": as_rbac_rules()}
        )
        rbac.create_namespaced_role_binding(namespace, {
            "metadata": {"name": OPERATOR_ACCOUNT},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": OPERATOR_ACCOUNT},
            "subjects": [{"kind": "ServiceAccount", "name": OPERATOR_ACCOUNT, "namespace": namespace}],
        })
        core.create_namespaced_config_map(namespace, {"metadata": {"name": "training-agent-settings"}, "data": {}})
        core.create_namespaced_secret(namespace, {
            "metadata": {"name": "training-agent-secrets"},
            "stringData": {"SUPABASE_SERVICE_ROLE_KEY": "service-role-key"},
        })


@pytest.fixture
def pending_timeout() -> float:
    """Seconds before a waiting run is flagged; a test may parametrize a shorter one."""
    return 60.0


@pytest.fixture
def operator_env(
    workspace: Workspace, database_url: str, pending_timeout: float, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> OperatorConfig:
    token = workspace.cluster.service_account_token(workspace.namespace, OPERATOR_ACCOUNT)
    kubeconfig = workspace.cluster.kubeconfig(tmp_path / "operator.kubeconfig", token, workspace.namespace)
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("DATABASE_URL", database_url)
    monkeypatch.setenv("STORE_BACKEND", "postgres")
    monkeypatch.setenv("OPERATOR_NAMESPACES", workspace.namespace)
    monkeypatch.setenv("OPERATOR_PENDING_TIMEOUT_SECONDS", str(pending_timeout))
    monkeypatch.setenv("OPERATOR_TIMER_INTERVAL_SECONDS", str(TIMER_INTERVAL))
    monkeypatch.setenv("OPERATOR_TRAINER_IMAGE", TRAINER_IMAGE)
    # A group's node 0 listens here: on this one machine, a port no other test uses.
    monkeypatch.setenv("OPERATOR_MASTER_PORT", str(free_port()))
    return OperatorConfig()


@pytest.fixture
def run_operator(operator_env: OperatorConfig, workspace: Workspace) -> Callable[[], Any]:
    """Start the operator as a context manager; it can be started again (a restart)."""

    def watches() -> int:
        return workspace.cluster.requests_of(workspace.operator_user).count(
            (CRD_GROUP, CRD_PLURAL, "watch")
        )

    @contextmanager
    def running() -> Iterator[KopfRunner]:
        args = ["run", "--standalone", "--namespace", workspace.namespace]
        before = watches()
        with KopfRunner(args, registry=build_registry(operator_env), timeout=30) as runner:
            # Ready once it watches TrainingRuns (it has listed them just before).
            eventually(lambda: expect(watches() > before), timeout=30, interval=0.2)
            yield runner
        assert runner.exit_code == 0, runner.output

    return running


@pytest.fixture
def operator(run_operator: Callable[[], Any]) -> Iterator[KopfRunner]:
    with run_operator() as runner:
        yield runner
