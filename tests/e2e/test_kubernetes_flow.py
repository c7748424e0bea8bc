"""The whole product on a real Kubernetes control plane.

The chart is installed with helm; the API and the operator run as the chart runs them (its
ConfigMap, its Secrets, each with its own ServiceAccount's token, so RBAC is enforced for
real); a start over HTTP becomes a TrainingRun, the operator's Job, a pod that the real
scheduler places on a fake GPU node, and the real trainer (run there by the kubelet stand-in)
trains digits from fake-gcs-server into the store behind the Supabase-compatible endpoint.
"""

from __future__ import annotations

import json
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from kubernetes import client

from tests.deploy import helm
from tests.fixtures.cluster import ADMIN_TOKEN, Cluster, background_process, free_port
from tests.fixtures.digits import DigitsZip
from tests.fixtures.gcs import FakeGcsServer
from tests.fixtures.kubelet import KubeletStandIn, container_environment
from tests.fixtures.postgrest import SERVICE_ROLE_KEY
from training_core.blobs import open_blob_store
from training_core.domain import Project
from training_core.settings import load_settings
from training_core.store.postgres import PostgresStore
from training_operator.permissions import CALL_PERMISSIONS, allowed

pytestmark = pytest.mark.slow

API_TOKEN = "mcp-server-token"
GPU_NODE = "gke-gpu-l4-pool-1"
CPU_NODE = "gke-default-pool-1"
TRAINER_ENTRYPOINT = {"training-agent-trainer": [sys.executable, "-m", "trainer"]}


@pytest.fixture(scope="session")
def gke_nodes(kube_cluster: Cluster) -> Cluster:
    """A GPU pool shaped like GKE's (accelerator label, GPU capacity and taint) and a CPU pool."""
    kube_cluster.add_node(
        GPU_NODE,
        {"cloud.google.com/gke-accelerator": "nvidia-l4", "cloud.google.com/gke-nodepool": "gpu-l4"},
        {"cpu": "8", "memory": "32Gi", "nvidia.com/gpu": "1", "pods": "110"},
        taints=[{"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}],
    )
    kube_cluster.add_node(
        CPU_NODE, {"cloud.google.com/gke-nodepool": "default"}, {"cpu": "4", "memory": "16Gi", "pods": "110"}
    )
    return kube_cluster


def component(name: str, args: list[str], env: dict[str, str], home: Path) -> Any:
    """The agent's own command line, as its container runs it."""
    return background_process(name, home, [str(Path(sys.executable).with_name("training-agent")), *args], env)


def deployment_env(cluster: Cluster, objects: list[dict[str, Any]], component_name: str, namespace: str) -> dict[str, str]:
    """The environment the chart gives a component's container."""
    [deployment] = [o for o in objects if o["kind"] == "Deployment"
                    and o["metadata"]["labels"]["app.kubernetes.io/component"] == component_name]
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    with cluster.api_client() as api:
        return container_environment(client.CoreV1Api(api), namespace, container)


def as_service_account(cluster: Cluster, namespace: str, objects: list[dict[str, Any]], component_name: str, home: Path) -> Path:
    """A kubeconfig holding the token of the component's ServiceAccount (as its pod would)."""
    [account] = [o["metadata"]["name"] for o in objects if o["kind"] == "ServiceAccount"
                 and o["metadata"]["labels"]["app.kubernetes.io/component"] == component_name]
    token = cluster.service_account_token(namespace, account)
    return cluster.kubeconfig(home / f"{component_name}.kubeconfig", token, namespace)


def wait_for(check: Any, timeout: float, what: str, logs: Any = None) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.5)
    raise AssertionError(f"{what} within {timeout} s" + (f"\n{logs()}" if logs else ""))


@dataclass
class Platform:
    """The installed agent: what a test drives (HTTP, the store, kubectl) and looks at."""

    cluster: Cluster
    namespace: str
    api: httpx.Client
    store: PostgresStore
    bucket_url: str
    kubelet: KubeletStandIn
    home: Path
    restart_operator: Callable[[], None]

    def project(self, dataset: Path, **metadata: Any) -> Project:
        """A project the platform registered: its dataset in the bucket, pending_training."""
        dataset_url = f"{self.bucket_url}/raw/{uuid.uuid4().hex[:8]}.zip"
        open_blob_store(load_settings(bucket_url=self.bucket_url)).upload(dataset, dataset_url)
        project = self.store.create_project(
            f"Digits {uuid.uuid4().hex[:6]}", status="pending_training", metadata={**TRAINING, **metadata}
        )
        self.store.add_dataset(project.id, dataset_url, name="digits")
        return project

    def start(self, project: Project) -> dict[str, Any]:
        started = self.api.post("/agents/training/start", json={"project_id": str(project.id)})
        assert started.status_code == 202, started.text
        return started.json()

    def start_running(self, project: Project) -> str:
        """Start a run and wait until its trainer runs; returns the run's name."""
        run_name = self.start(project)["run_name"]
        self.wait_for_phase(project, {"running"}, timeout=120)
        return run_name

    def status(self, project: Project) -> dict[str, Any]:
        return self.api.get(f"/agents/training/status/{project.id}").json()

    def wait_for_phase(self, project: Project, phases: set[str], timeout: float = 300) -> dict[str, Any]:
        def reached() -> dict[str, Any] | None:
            status = self.status(project)
            return status if status["status"] in phases else None

        return wait_for(reached, timeout, f"the run reached {sorted(phases)}", self.logs)

    def kubectl(self, *args: str) -> str:
        return self.cluster.kubectl("-n", self.namespace, *args).stdout

    def job_field(self, name: str, path: str) -> str:
        return self.kubectl("get", "job", name, "-o", f"jsonpath={path}")

    def pods(self, run_name: str) -> list[client.V1Pod]:
        with self.cluster.api_client() as api:
            return client.CoreV1Api(api).list_namespaced_pod(self.namespace, label_selector=f"job-name={run_name}").items

    def logs(self) -> str:
        parts = [(self.home / f"{n}.log").read_text()[-2500:] for n in ("api", "operator")]
        parts.append(self.cluster.kubectl("-n", self.namespace, "get", "pods,jobs,trainingruns", "-o", "wide", check=False).stdout)
        for name in self.cluster.kubectl("-n", self.namespace, "get", "pods", "-o", "name", check=False).stdout.split():
            parts.append(self.kubelet.log_of(name.split("/")[-1])[-2000:])
        return "\n".join(parts)


TRAINING = {"model": "resnet18", "epochs": 2, "image_size": 16, "batch_size": 64, "num_classes": 10,
            "pretrained": False, "seed": 0}


@pytest.fixture
def platform(
    gke_nodes: Cluster, gcs_server: FakeGcsServer, gcs_bucket_url: str, postgrest_url: str,
    pg_store: PostgresStore, tmp_path: Path,
) -> Iterator[Platform]:
    cluster = gke_nodes
    namespace = cluster.create_namespace(f"flow-{uuid.uuid4().hex[:6]}")
    admin = cluster.kubeconfig(tmp_path / "admin.kubeconfig", ADMIN_TOKEN, namespace)
    values = {
        "imageRegistry": "europe-west4-docker.pkg.dev/acme-ml/training-agent",
        "config": {"BUCKET_URL": gcs_bucket_url, "SUPABASE_URL": "https://abcdefghijklmnop.supabase.co",
                   "LOG_FORMAT": "text"},
        "trainer": {"gpu": {"count": 1, "acceleratorType": "nvidia-l4"},
                    "resources": {"cpu": "2", "memory": "4Gi"}},
    }
    objects = helm.install(values, admin, namespace)
    # The chart takes only an https Supabase URL; the Supabase-compatible test endpoint speaks
    # http on loopback, so the installed settings are pointed at it.
    [settings] = [o["metadata"]["name"] for o in objects if o["kind"] == "ConfigMap"]
    cluster.kubectl("-n", namespace, "patch", "configmap", settings, "--type=merge",
                    "-p", json.dumps({"data": {"SUPABASE_URL": postgrest_url}}))
    cluster.kubectl("-n", namespace, "create", "secret", "generic", "training-agent-supabase",
                    f"--from-literal=SUPABASE_SERVICE_ROLE_KEY={SERVICE_ROLE_KEY}")
    cluster.kubectl("-n", namespace, "create", "secret", "generic", "training-agent-api-tokens",
                    f"--from-literal=API_TOKENS={API_TOKEN}")

    emulator = {"STORAGE_EMULATOR_HOST": gcs_server.url}
    api_port = free_port()
    api_env = {**deployment_env(cluster, objects, "api", namespace), **emulator,
               "KUBECONFIG": str(as_service_account(cluster, namespace, objects, "api", tmp_path))}
    operator_env = {**deployment_env(cluster, objects, "operator", namespace), **emulator,
                    "OPERATOR_LIVENESS_PORT": str(free_port()),
                    "OPERATOR_PENDING_TIMEOUT_SECONDS": "5", "OPERATOR_TIMER_INTERVAL_SECONDS": "1",
                    "KUBECONFIG": str(as_service_account(cluster, namespace, objects, "operator", tmp_path))}
    kubelet = KubeletStandIn(cluster, {GPU_NODE}, TRAINER_ENTRYPOINT,
                             {**emulator, "OMP_NUM_THREADS": "1"}, tmp_path / "pods")
    operator = ExitStack()

    def restart_operator() -> None:
        operator.close()
        operator.enter_context(component("operator", ["operator"], operator_env, tmp_path))

    with (component("api", ["serve", "--host", "127.0.0.1", "--port", str(api_port)], api_env, tmp_path),
          operator, kubelet,
          httpx.Client(base_url=f"http://127.0.0.1:{api_port}",
                       headers={"Authorization": f"Bearer {API_TOKEN}"}, timeout=10) as api):
        restart_operator()  # the first start
        found = Platform(cluster, namespace, api, pg_store, gcs_bucket_url, kubelet, tmp_path, restart_operator)
        wait_for(lambda: _answers(api), 60, "the API answers", found.logs)
        yield found
        # Runs left by the test go, and their pods with them, while the kubelet is there to
        # stop them (a pod on a node holds its GPU until then).
        cluster.kubectl("-n", namespace, "delete", "trainingruns", "--all", "--wait", "--timeout=60s")
        wait_for(lambda: not found.kubectl("get", "pods", "-l", "app.kubernetes.io/component=trainer",
                                           "-o", "name").strip(), 60, "the trainer pods are gone", found.logs)
    helm.uninstall(admin, namespace)


def test_start_trains_on_a_gpu_node_and_every_view_shows_it(platform: Platform, digits_zip: DigitsZip) -> None:
    project = platform.project(digits_zip(16))
    started = platform.start(project)
    run_name, model_url = started["run_name"], started["model_url"]
    status = platform.wait_for_phase(project, {"succeeded", "failed", "cancelled"})
    # The Job controller saw the pod succeed (the kubelet stand-in reported its exit code 0).
    wait_for(lambda: platform.job_field(run_name, "{.status.succeeded}") == "1", 30, "the Job succeeded")

    assert status["status"] == "succeeded", status
    assert status["project_status"] == "trained"
    assert status["model_url"] == model_url
    assert status["progress"]["epoch"] == 2 and status["progress"]["val_accuracy"] > 0.3
    # The pod ran on the GPU node the real scheduler chose for it.
    [pod] = platform.pods(run_name)
    assert pod.spec.node_name == GPU_NODE
    # The model is in the bucket and recorded once.
    assert open_blob_store(load_settings(bucket_url=platform.bucket_url)).exists(model_url)
    [model] = platform.store.get_models(project.id)
    assert model.gcs_url == model_url
    # kubectl shows what the platform team would see: the server's own printer columns.
    header, row = platform.kubectl("get", "trainingruns").splitlines()
    assert header.split() == ["NAME", "PROJECT", "MODEL", "WORLD", "PHASE", "PROGRESS", "VAL-ACC", "AGE"]
    assert row.split()[:6] == [run_name, str(project.id), "resnet18", "1", "Succeeded", "2/2"]


def test_bad_dataset_fails_the_job_at_once_by_its_pod_failure_policy(
    platform: Platform, tmp_path: Path
) -> None:
    broken = tmp_path / "broken.zip"
    broken.write_bytes(b"this is not a zip archive")
    project = platform.project(broken)
    run_name = platform.start(project)["run_name"]
    status = platform.wait_for_phase(project, {"succeeded", "failed", "cancelled"})
    assert status["status"] == "failed" and status["project_status"] == "failed"
    # Exit 65: the Job controller fails the Job by the policy, without a retry.
    wait_for(lambda: "PodFailurePolicy" in platform.job_field(run_name, "{.status.conditions[*].reason}"),
             30, "the Job failed by its podFailurePolicy", platform.logs)
    assert len(platform.pods(run_name)) == 1
    assert platform.store.get_models(project.id) == []


def test_a_preempted_pod_is_not_counted_and_the_run_resumes(platform: Platform, digits_zip: DigitsZip) -> None:
    project = platform.project(digits_zip(16), epochs=4)
    run_name = platform.start(project)["run_name"]
    # Preempt once the first epoch is checkpointed.
    wait_for(lambda: ((platform.status(project).get("progress") or {}).get("epoch") or 0) >= 1, 240,
             "the first epoch", platform.logs)
    [first] = platform.pods(run_name)
    assert platform.kubelet.preempt(first.metadata.name) == 75  # checkpointed, asks to be retried
    status = platform.wait_for_phase(project, {"succeeded", "failed", "cancelled"})
    assert status["status"] == "succeeded", status
    wait_for(lambda: platform.job_field(run_name, "{.status.succeeded}") == "1", 30, "the Job succeeded")
    pods = platform.pods(run_name)
    assert len(pods) == 2 and {p.status.phase for p in pods} == {"Failed", "Succeeded"}
    # The Ignore rule: the disrupted pod counts as no failure.
    assert platform.job_field(run_name, "{.status.failed}") in ("", "0")
    assert len(platform.store.get_models(project.id)) == 1
    resumed = platform.kubelet.log_of([p for p in pods if p.status.phase == "Succeeded"][0].metadata.name)
    assert "resum" in resumed.lower(), resumed[-2000:]


def test_cancel_deletes_the_run_and_its_job_and_pods_are_collected(
    platform: Platform, digits_zip: DigitsZip
) -> None:
    project = platform.project(digits_zip(16), epochs=50)
    run_name = platform.start_running(project)
    cancelled = platform.api.post(f"/agents/training/cancel/{project.id}")
    assert cancelled.status_code == 200, cancelled.text
    status = platform.wait_for_phase(project, {"succeeded", "failed", "cancelled"}, timeout=60)
    assert status["status"] == "cancelled"
    # The garbage collector removes the Job, then the Job's pods (the kubelet stops the trainer).
    wait_for(lambda: not platform.kubectl("get", "jobs,trainingruns", "-o", "name").strip(), 60,
             "the TrainingRun and its Job are gone", platform.logs)
    wait_for(lambda: not platform.pods(run_name), 60, "the pods are gone", platform.logs)


def test_no_schedulable_gpu_node_reaches_the_run_as_the_schedulers_message(
    platform: Platform, digits_zip: DigitsZip
) -> None:
    platform.cluster.kubectl("cordon", GPU_NODE)
    try:
        project = platform.project(digits_zip(16))
        run_name = platform.start(project)["run_name"]

        def scheduler_says() -> str | None:
            run = json.loads(platform.kubectl("get", "trainingrun", run_name, "-o", "json"))
            for condition in run.get("status", {}).get("conditions", []):
                if condition["type"] == "Scheduled" and condition["status"] == "False":
                    return condition["message"]
            return None

        def logged() -> list[str] | None:
            lines = [entry.message for entry in platform.store.get_logs(project.id, limit=50)]
            return [line for line in lines if "0/2 nodes are available" in line] or None

        message = wait_for(scheduler_says, 60, "the Scheduled condition", platform.logs)
        # The operator logs it too, once the run has waited past its pending timeout.
        logged_lines = wait_for(logged, 30, "the scheduler's message in agent_logs", platform.logs)
        assert platform.status(project)["status"] == "pending"
    finally:
        platform.cluster.kubectl("uncordon", GPU_NODE)
    # The real scheduler's words: the GPU node is cordoned, the CPU node has no GPU.
    assert "0/2 nodes are available" in message and "1 node(s) were unschedulable" in message, message
    assert any("were unschedulable" in line for line in logged_lines), logged_lines


def test_suspend_resume_and_cancel_use_exactly_the_operators_role(
    platform: Platform, digits_zip: DigitsZip
) -> None:
    project = platform.project(digits_zip(16), epochs=50)
    run_name = platform.start_running(project)
    [first] = platform.pods(run_name)

    platform.kubectl("patch", "trainingrun", run_name, "--type=merge", "-p", '{"spec": {"suspend": true}}')
    wait_for(lambda: platform.job_field(run_name, "{.spec.suspend}") == "true", 30, "the Job suspended", platform.logs)
    # The Job controller removes the active pod; the kubelet stand-in stops the trainer.
    wait_for(lambda: not platform.pods(run_name), 60, "the pod gone", platform.logs)

    platform.kubectl("patch", "trainingrun", run_name, "--type=merge", "-p", '{"spec": {"suspend": false}}')
    wait_for(lambda: [p for p in platform.pods(run_name) if p.status.phase == "Running"], 60,
             "a new pod running", platform.logs)
    [second] = platform.pods(run_name)
    assert second.metadata.name != first.metadata.name
    platform.wait_for_phase(project, {"running"}, timeout=60)

    cancelled = platform.api.post(f"/agents/training/cancel/{project.id}")
    assert cancelled.status_code == 200, (cancelled.text, platform.status(project))
    assert platform.wait_for_phase(project, {"cancelled", "failed", "succeeded"}, 60)["status"] == "cancelled"
    wait_for(lambda: not platform.pods(run_name), 60, "the pods gone", platform.logs)

    # Every call the operator made was allowed by its Role, and every verb it is granted was used.
    account = f"system:serviceaccount:{platform.namespace}:agent-training-agent-operator"
    calls = platform.cluster.calls_of(account)
    assert {call for call in calls if not allowed(*call)} == set()
    granted = {(r.api_group, r.resource, verb) for r in CALL_PERMISSIONS for verb in r.verbs}
    # A run on one node has no Service (tests/integration/operator/test_groups.py uses them).
    granted = {grant for grant in granted if grant[1] != "services"}
    assert granted - calls == set(), "rules the operator never needed"



def test_a_restarted_operator_makes_no_second_job_and_no_repeated_log_line(
    platform: Platform, digits_zip: DigitsZip
) -> None:
    project = platform.project(digits_zip(16), epochs=3)
    run_name = platform.start_running(project)
    platform.restart_operator()  # a rollout or a crash of the operator's pod mid-run
    status = platform.wait_for_phase(project, {"succeeded", "failed", "cancelled"})
    assert status["status"] == "succeeded", status
    assert platform.kubectl("get", "jobs", "-o", "name").split() == [f"job.batch/{run_name}"]
    lines = [entry.message for entry in platform.store.get_logs(project.id, limit=200)]
    for said_once in (f"Job {run_name}: waiting for a GPU node", f"Job {run_name}: training started"):
        assert lines.count(said_once) == 1, lines

def _answers(api: httpx.Client) -> bool:
    try:
        return api.get("/health").status_code == 200
    except httpx.HTTPError:
        return False
