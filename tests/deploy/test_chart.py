"""The Helm chart: it lints, installs into a Kubernetes API, and every object it makes is
valid for Kubernetes and wired to what the agent's code reads."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import typer
import yaml

from tests.deploy import helm
from tests.deploy.conftest import EVERYTHING_ON, NAMESPACE, REQUIRED
from tests.fixtures.cluster import Cluster
from training_api.decisions import TrainingChoice, plan_run
from training_agent import cli
from training_core.domain import Project
from training_api.launchers.kubernetes import training_run_resource
from training_core.runspec import RunSpec
from training_core.settings import Settings, load_settings
from training_operator.config import OperatorConfig
from training_operator.manifests import job_labels, job_manifest

Install = Callable[..., list[dict[str, Any]]]
Rendered = dict[str, list[dict[str, Any]]]

# The oldest Kubernetes the chart supports (Chart.yaml kubeVersion) and a current GKE one.
KUBERNETES_VERSIONS = ["1.30.0", "1.33.0"]
SERVICE_MONITOR_SCHEMA = json.loads(Path(__file__).with_name("servicemonitor.schema.json").read_text())
OPERATOR_CRD = helm.REPO / "operator" / "training_operator" / "crd.yaml"
CHART_CRD = helm.CHART / "crds" / "trainingruns.training.automl.dev.yaml"


def by_kind(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [obj for obj in objects if obj["kind"] == kind]


def one(objects: list[dict[str, Any]], kind: str, component: str) -> dict[str, Any]:
    [found] = [
        obj
        for obj in by_kind(objects, kind)
        if obj["metadata"]["labels"]["app.kubernetes.io/component"] == component
    ]
    return found


def container(objects: list[dict[str, Any]], component: str) -> dict[str, Any]:
    [only] = one(objects, "Deployment", component)["spec"]["template"]["spec"]["containers"]
    return only


def env_of(container_spec: dict[str, Any]) -> dict[str, Any]:
    return {item["name"]: item.get("value", item.get("valueFrom")) for item in container_spec["env"]}


def settings_of(objects: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch) -> Settings:
    """The settings a pod of this install reads: the ConfigMap, and a Secret's key."""
    for name, value in one(objects, "ConfigMap", "settings")["data"].items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("SUPABASE_SERVICE_ROLE_KEY", "service-role-key")
    return load_settings()


# -- lint and render ---------------------------------------------------------------------------
VALUE_SETS = {"defaults": REQUIRED, "everything-on": EVERYTHING_ON}


@pytest.mark.parametrize("name", VALUE_SETS)
def test_chart_lints_without_warnings(name: str, tmp_path: Path) -> None:
    report = helm.lint(VALUE_SETS[name], tmp_path)  # --strict: a warning fails it
    assert "1 chart(s) linted, 0 chart(s) failed" in report, report


def test_lint_reports_what_is_wrong(tmp_path: Path) -> None:
    with pytest.raises(helm.HelmError) as refused:
        helm.lint(helm.deep_merge(REQUIRED, {"trainer": {"gpu": {"count": -1}}}), tmp_path)
    assert "/trainer/gpu/count" in str(refused.value) and "1 chart(s) failed" in str(refused.value)


@pytest.mark.parametrize("name", VALUE_SETS)
def test_template_renders_what_an_install_creates(name: str, rendered: Rendered, tmp_path: Path) -> None:
    """`helm template` (for GitOps and review) shows exactly the objects `helm install` makes."""
    objects = helm.template(
        VALUE_SETS[name], tmp_path, f"{NAMESPACE}-{name}", api_versions=("monitoring.coreos.com/v1/ServiceMonitor",)
    )
    assert objects == rendered[name]


@pytest.mark.parametrize("values", [REQUIRED, EVERYTHING_ON], ids=["defaults", "everything-on"])
def test_every_rendered_object_is_valid_kubernetes(
    values: dict[str, Any], install: Install, cluster: Cluster, namespace: str, kubeconfig: Path
) -> None:
    objects = install(values)
    for obj in objects:
        if obj["kind"] == "ServiceMonitor":
            jsonschema.validate(obj, SERVICE_MONITOR_SCHEMA)
            continue
        for version in KUBERNETES_VERSIONS:
            kubernetes_validate.validate(obj, version, strict=True)
    # The API server accepted and stores every object, and the CRD (from crds/) is established.
    for obj in objects:
        cluster.kubectl("get", f"{obj['kind'].lower()}/{obj['metadata']['name']}", "-n", namespace)
    established = cluster.kubectl(
        "wait", "--for=condition=Established", "--timeout=30s", "crd/trainingruns.training.automl.dev"
    )
    assert "condition met" in established.stdout

    # helm uninstall leaves nothing of the release behind (the CRD stays, as Helm keeps crds/).
    helm.uninstall(kubeconfig, namespace)
    assert release_objects(cluster, namespace) == []
    helm.install(values, kubeconfig, namespace)  # for the fixture's own uninstall


def release_objects(cluster: Cluster, namespace: str) -> list[str]:
    """Every object of the chart in the namespace (and its cluster-wide RBAC)."""
    kinds = "deployments,services,configmaps,serviceaccounts,roles,rolebindings,poddisruptionbudgets,ingresses,networkpolicies,servicemonitors,secrets"
    names = cluster.kubectl("get", kinds, "-n", namespace, "-l", "app.kubernetes.io/name=training-agent", "-o", "name").stdout.split()
    names += cluster.kubectl("get", "clusterroles,clusterrolebindings", "-l", "app.kubernetes.io/name=training-agent", "-o", "name").stdout.split()
    releases = cluster.kubectl("get", "secrets", "-n", namespace, "-l", "owner=helm", "-o", "name").stdout.split()
    return names + releases


def test_default_install_makes_the_core_objects(rendered: Rendered) -> None:
    kinds = sorted(obj["kind"] for obj in rendered["defaults"])
    assert kinds == sorted(
        ["ConfigMap", "Deployment", "Deployment", "PodDisruptionBudget", "Role", "Role",
         "RoleBinding", "RoleBinding", "Service", "ServiceAccount", "ServiceAccount",
         "ServiceAccount"]
    )


def test_everything_on_adds_ingress_monitoring_and_network_policies(rendered: Rendered) -> None:
    objects = rendered["everything-on"]
    [ingress] = by_kind(objects, "Ingress")
    assert ingress["spec"]["ingressClassName"] == "gce"
    assert ingress["spec"]["tls"] == [{"hosts": ["training.acme.example"], "secretName": "training-acme-tls"}]
    backend = ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    assert backend["name"] == one(objects, "Service", "api")["metadata"]["name"]

    [monitor] = by_kind(objects, "ServiceMonitor")
    assert monitor["metadata"]["labels"]["release"] == "prometheus"
    [endpoint] = monitor["spec"]["endpoints"]
    assert endpoint["path"] == "/metrics" and endpoint["port"] == "http"
    assert endpoint["authorization"]["credentials"] == {"name": "training-agent-api-tokens", "key": "API_TOKENS"}

    policies = {p["metadata"]["labels"]["app.kubernetes.io/component"]: p["spec"] for p in by_kind(objects, "NetworkPolicy")}
    assert set(policies) == {"api", "operator", "trainer"}
    assert policies["operator"]["ingress"] == []
    # A run's pods on several nodes reach each other, on any port (rendezvous, NCCL), and
    # nothing else reaches them.
    trainers = {"podSelector": policies["trainer"]["podSelector"]}
    assert policies["trainer"]["ingress"] == [{"from": [trainers]}]
    assert policies["trainer"]["egress"][1] == {"to": [trainers]}
    assert policies["api"]["ingress"][0]["ports"] == [{"protocol": "TCP", "port": "http"}]
    sources = policies["api"]["ingress"][0]["from"]
    assert {"podSelector": {}} in sources  # the release namespace
    assert {"ipBlock": {"cidr": "35.191.0.0/16"}} in sources  # the GKE Ingress load balancer
    assert {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}} in sources
    # The trainer policy selects the pods the operator's Jobs make.
    spec = RunSpec(
        run_id=uuid.uuid4(), run_name="run-1", project_id=uuid.uuid4(),
        dataset_url="gs://b/raw/d.zip", model_url="gs://b/models/m.pth",
    )  # fmt: skip
    pod_labels = job_labels(spec)
    assert policies["trainer"]["podSelector"]["matchLabels"].items() <= pod_labels.items()
    for spec in policies.values():
        ports = spec["egress"][0]["ports"]
        assert {"protocol": "TCP", "port": 443} in ports and {"protocol": "UDP", "port": 53} in ports


def test_the_chart_ships_the_operators_crd_unchanged() -> None:
    assert CHART_CRD.read_bytes() == OPERATOR_CRD.read_bytes(), "run `make chart-crds`"


def test_the_crd_is_a_valid_custom_resource_definition() -> None:
    crd = yaml.safe_load(CHART_CRD.read_text())
    for version in KUBERNETES_VERSIONS:
        kubernetes_validate.validate(crd, version, strict=True)


def test_install_notes_give_the_next_steps(kubeconfig: Path, namespace: str) -> None:
    release = helm.install_release(REQUIRED, kubeconfig, namespace)
    try:
        assert release["info"]["status"] == "deployed"
        notes = release["info"]["notes"]
    finally:
        helm.uninstall(kubeconfig, namespace)
    assert "create secret generic training-agent-supabase" in notes
    assert "--from-literal=API_TOKENS=" in notes
    assert "port-forward svc/agent-training-agent-api 8000:80" in notes
    assert f"kubectl -n {namespace} get trainingruns" in notes
    assert "trainer.serviceAccount.gcpServiceAccount is empty" in notes


# -- what the pods read --------------------------------------------------------------------------
def test_settings_configmap_loads_as_the_agents_settings(
    rendered: Rendered, monkeypatch: pytest.MonkeyPatch
) -> None:
    objects = rendered["everything-on"]
    # Whole numbers stay whole (YAML numbers reach templates as floats).
    assert one(objects, "ConfigMap", "settings")["data"]["MAX_DOWNLOAD_BYTES"] == "53687091200"
    settings = settings_of(objects, monkeypatch)
    assert settings.launcher == "kubernetes"
    assert settings.namespace == f"{NAMESPACE}-everything-on"
    assert settings.resolved_store_backend == "supabase"
    assert settings.bucket_url == "gs://acme-automl-datasets"
    assert settings.log_format == "json"
    assert settings.max_download_bytes == 53687091200
    assert settings.default_learning_rate == 0.0005


def test_every_container_reads_the_settings_and_secrets_by_reference(rendered: Rendered) -> None:
    objects = rendered["everything-on"]
    configmap = one(objects, "ConfigMap", "settings")["metadata"]["name"]
    for component in ("api", "operator"):
        spec = container(objects, component)
        assert spec["envFrom"] == [{"configMapRef": {"name": configmap}}]
        env = env_of(spec)
        assert env["SUPABASE_SERVICE_ROLE_KEY"] == {
            "secretKeyRef": {"name": "training-agent-supabase", "key": "SUPABASE_SERVICE_ROLE_KEY"}
        }
    assert env_of(container(objects, "api"))["API_TOKENS"] == {
        "secretKeyRef": {"name": "training-agent-api-tokens", "key": "API_TOKENS"}
    }
    assert not by_kind(objects, "Secret"), "the chart must never hold secret values"


@pytest.mark.parametrize("watch_all", [False, True])
def test_operator_environment_is_a_valid_operator_config(
    watch_all: bool, install: Install, namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    values = helm.deep_merge(EVERYTHING_ON, {"operator": {"watchAllNamespaces": watch_all}})
    objects = install(values)
    env = env_of(container(objects, "operator"))
    operator_env = {k: v for k, v in env.items() if k.startswith("OPERATOR_")}
    unknown = {k for k in operator_env if k.removeprefix("OPERATOR_").lower() not in OperatorConfig.model_fields}
    assert not unknown, f"the operator reads no such settings: {unknown}"
    for name, value in operator_env.items():
        monkeypatch.setenv(name, value)
    config = OperatorConfig()

    assert config.namespaces == ([] if watch_all else [namespace])
    assert config.trainer_image == (
        "europe-west4-docker.pkg.dev/acme-ml/training-agent/training-agent-trainer:0.1.0"
    )
    assert config.service_account == one(objects, "ServiceAccount", "trainer")["metadata"]["name"]
    assert config.settings_configmap == one(objects, "ConfigMap", "settings")["metadata"]["name"]
    assert (config.secret_name, config.secret_key_supabase) == ("training-agent-supabase", "SUPABASE_SERVICE_ROLE_KEY")
    assert config.priority_class == "training-batch"
    assert config.run_as_user == 10001
    port = container(objects, "operator")["ports"][0]
    assert port["containerPort"] == config.liveness_port
    role_kinds = {obj["kind"] for obj in objects if obj["metadata"]["name"].endswith("-operator")}
    assert ("ClusterRole" in role_kinds) is watch_all and ("Role" in role_kinds) is not watch_all


def test_pods_are_locked_down(rendered: Rendered) -> None:
    for deployment in by_kind(rendered["everything-on"], "Deployment"):
        pod = deployment["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] > 0
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        for spec in pod["containers"]:
            context = spec["securityContext"]
            assert context["allowPrivilegeEscalation"] is False
            assert context["readOnlyRootFilesystem"] is True
            assert context["capabilities"] == {"drop": ["ALL"]}
            assert {"name": "tmp", "mountPath": "/tmp"} in spec["volumeMounts"]
            assert spec["resources"]["limits"]["memory"]


def test_operator_runs_alone_and_the_api_stays_available(rendered: Rendered) -> None:
    objects = rendered["everything-on"]
    operator = one(objects, "Deployment", "operator")["spec"]
    assert operator["replicas"] == 1 and operator["strategy"] == {"type": "Recreate"}
    assert operator["template"]["spec"]["containers"][0]["args"] == ["operator"]

    api = one(objects, "Deployment", "api")["spec"]
    assert api["replicas"] == 3
    probes = api["template"]["spec"]["containers"][0]
    assert probes["livenessProbe"]["httpGet"]["path"] == "/health"
    assert probes["readinessProbe"]["httpGet"]["path"] == "/ready"
    # Placement values reach the pods that set them, and only those.
    assert operator["template"]["spec"]["nodeSelector"] == {"cloud.google.com/gke-nodepool": "system"}
    assert "tolerations" not in operator["template"]["spec"]
    assert api["template"]["spec"]["tolerations"][0]["key"] == "dedicated"
    assert "nodeSelector" not in api["template"]["spec"]
    pdb = one(objects, "PodDisruptionBudget", "api")["spec"]
    assert pdb["maxUnavailable"] == 1
    assert pdb["selector"]["matchLabels"].items() <= api["template"]["metadata"]["labels"].items()


@pytest.mark.parametrize("component", ["api", "operator"])
def test_containers_run_a_command_the_cli_accepts(component: str, rendered: Rendered) -> None:
    """The image's entrypoint is `training-agent`; the chart's args must parse as its command."""
    command = typer.main.get_command(cli.app)
    args = container(rendered["everything-on"], component)["args"]
    with command.context_class(command, info_name="training-agent") as context:
        subcommand = command.get_command(context, args[0])
        assert subcommand is not None, f"training-agent has no command {args[0]!r}"
        subcommand.make_context(args[0], list(args[1:]), parent=context)  # raises on a bad option
    if component == "api":
        port = container(rendered["everything-on"], component)["ports"][0]["containerPort"]
        assert args[args.index("--port") + 1] == str(port) and "0.0.0.0" in args


def test_service_accounts_and_workload_identity(rendered: Rendered) -> None:
    objects = rendered["everything-on"]
    trainer = one(objects, "ServiceAccount", "trainer")
    assert trainer["metadata"]["annotations"] == {
        "iam.gke.io/gcp-service-account": "training-jobs@acme-ml.iam.gserviceaccount.com"
    }
    assert trainer["automountServiceAccountToken"] is False  # the trainer never calls Kubernetes
    assert trainer["imagePullSecrets"] == [{"name": "registry-credentials"}]
    assert one(objects, "ServiceAccount", "api")["metadata"]["annotations"] == {"example.com/owner": "ml-platform"}
    assert "annotations" not in one(objects, "ServiceAccount", "operator")["metadata"]


# -- values that must be refused -----------------------------------------------------------------
BAD_VALUES = [
    ({"trainer": {"gpu": {"count": -1}}}, "/trainer/gpu/count", "minimum"),
    ({"trainer": {"gpu": {"acceleratorType": "NVIDIA L4"}}}, "/trainer/gpu/acceleratorType", "does not match"),
    ({"trainer": {"gpu": {"count": "two"}}}, "/trainer/gpu/count", "got string, want integer"),
    ({"config": {"BUCKET_URL": "s3://acme-datasets"}}, "/config/BUCKET_URL", "does not match"),
    ({"config": {"SUPABASE_SERVICE_ROLE_KEY": "secret!"}}, "/config", "SUPABASE_SERVICE_ROLE_KEY"),
    ({"config": {"LOG_LEVEL": "LOUD"}}, "/config/LOG_LEVEL", "must be one of"),
    ({"secrets": {"supabase": {"existingSecret": ""}}}, "/secrets/supabase/existingSecret", "minLength"),
    ({"podSecurityContext": {"runAsNonRoot": False}}, "/podSecurityContext/runAsNonRoot", ""),
    ({"api": {"replica": 2}}, "/api", "replica"),
    ({"trainer": {"serviceAccount": {"gcpServiceAccount": "jobs@gmail.com"}}},
     "/trainer/serviceAccount/gcpServiceAccount", "does not match"),
]


@pytest.mark.parametrize(("bad", "where", "what"), BAD_VALUES, ids=[w + ":" + (m or "const") for _, w, m in BAD_VALUES])
def test_bad_values_are_refused_with_a_clear_message(
    bad: dict[str, Any], where: str, what: str, install: Install, cluster: Cluster, namespace: str
) -> None:
    with pytest.raises(helm.HelmError) as refused:
        install(helm.deep_merge(REQUIRED, bad))
    message = str(refused.value)
    assert "values don't meet the specifications of the schema" in message
    assert f"at '{where}'" in message and what in message, message
    assert release_objects(cluster, namespace) == [], "nothing is installed"


def test_missing_required_settings_are_named(install: Install) -> None:
    with pytest.raises(helm.HelmError) as refused:
        install({})
    assert "/config/BUCKET_URL" in str(refused.value) and "/config/SUPABASE_URL" in str(refused.value)


def test_ingress_without_host_is_refused(install: Install) -> None:
    with pytest.raises(helm.HelmError, match="api.ingress.host is required"):
        install(helm.deep_merge(REQUIRED, {"api": {"ingress": {"enabled": True}}}))


def test_service_monitor_without_prometheus_operator_is_refused(tmp_path: Path) -> None:
    """Helm checks the cluster's APIs; `helm template` is told them, so it shows the same check."""
    with pytest.raises(helm.HelmError, match="needs the Prometheus Operator's ServiceMonitor CRD"):
        helm.template(helm.deep_merge(REQUIRED, {"serviceMonitor": {"enabled": True}}), tmp_path, NAMESPACE)


def test_a_cluster_older_than_the_chart_supports_is_refused(tmp_path: Path) -> None:
    with pytest.raises(helm.HelmError, match=r"requires kubeVersion: >=1\.30.* Kubernetes v1\.29\.0"):
        helm.template(REQUIRED, tmp_path, NAMESPACE, kube_version="1.29.0")


# -- the schema follows the settings ---------------------------------------------------------
# Settings the chart sets itself, takes from Secrets, or that do not apply in a cluster.
NOT_IN_CONFIG = {
    "STORE_BACKEND", "LAUNCHER", "NAMESPACE",  # set by the chart
    "DATABASE_URL", "SUPABASE_SERVICE_ROLE_KEY", "API_TOKENS",  # secrets
    "GOOGLE_APPLICATION_CREDENTIALS",  # GKE Workload Identity instead of key files
    "SCRATCH_DIR",  # the operator mounts the Job's scratch volume and sets it
    "DEFAULT_GPU_COUNT", "DEFAULT_ACCELERATOR", "DEFAULT_SPOT",  # from trainer.gpu
    "DEFAULT_CPU", "DEFAULT_MEMORY",  # from trainer.resources
    "LOCAL_MAX_CONCURRENT", "LOCAL_RUNS_DIR",  # the local launcher only
}


def test_config_schema_offers_every_setting() -> None:
    schema = json.loads((helm.CHART / "values.schema.json").read_text())
    offered = set(schema["properties"]["config"]["properties"])
    expected = {name.upper() for name in Settings.model_fields} - NOT_IN_CONFIG
    assert offered == expected, (
        f"values.schema.json config lacks {sorted(expected - offered)} "
        f"and offers unknown {sorted(offered - expected)}"
    )


# -- chart values → a run's Job ------------------------------------------------------------------
def test_gpu_values_reach_the_training_jobs(rendered: Rendered, monkeypatch: pytest.MonkeyPatch) -> None:
    """trainer.gpu (2 × A100 on Spot) → settings ConfigMap → the API's plan of a run →
    TrainingRun → the operator's Job: placed on those nodes, valid for Kubernetes and the CRD."""
    objects = rendered["everything-on"]
    settings = settings_of(objects, monkeypatch)
    for name, value in env_of(container(objects, "operator")).items():
        if name.startswith("OPERATOR_"):
            monkeypatch.setenv(name, value)
    project = Project(id=uuid.uuid4(), name="Flowers", status=settings.status_pending)
    choice = TrainingChoice(
        model="resnet50", epochs=5, learning_rate=0.001, batch_size=64, image_size=224,
        pretrained=True, seed=None, dataset_url="gs://acme-automl-datasets/flowers/raw/dataset.zip",
    )
    spec = plan_run(choice, project, None, uuid.uuid4(), settings)
    run = training_run_resource(spec, settings.namespace)
    crd = yaml.safe_load(CHART_CRD.read_text())
    # OpenAPI v3 schemas are JSON Schema draft 4 (boolean exclusiveMinimum/Maximum).
    jsonschema.Draft4Validator(crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]).validate(run)

    run["metadata"]["uid"] = str(uuid.uuid4())  # what the API server adds
    job = job_manifest(run, OperatorConfig())
    for version in KUBERNETES_VERSIONS:
        kubernetes_validate.validate(job, version, strict=True)
    pod = job["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {
        "cloud.google.com/gke-accelerator": "nvidia-tesla-a100",
        "cloud.google.com/gke-spot": "true",
    }
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    assert {"key": "cloud.google.com/gke-spot", "operator": "Equal", "value": "true", "effect": "NoSchedule"} in pod["tolerations"]
    [trainer] = pod["containers"]
    assert trainer["resources"]["limits"]["nvidia.com/gpu"] == "2"
    assert trainer["resources"]["requests"] == {"cpu": "4", "memory": "16Gi"}
    # The Job runs as the chart's trainer identity, image, settings and secret.
    assert pod["serviceAccountName"] == one(objects, "ServiceAccount", "trainer")["metadata"]["name"]
    assert trainer["image"].endswith("/training-agent-trainer:0.1.0")
    assert trainer["envFrom"] == [{"configMapRef": {"name": one(objects, "ConfigMap", "settings")["metadata"]["name"]}}]
    assert pod["securityContext"]["runAsUser"] == 10001


def test_a_cpu_only_deployment_asks_for_no_gpu(install: Install, monkeypatch: pytest.MonkeyPatch) -> None:
    values = helm.deep_merge(REQUIRED, {"trainer": {"gpu": {"count": 0, "acceleratorType": ""}}})
    objects = install(values)
    data = one(objects, "ConfigMap", "settings")["data"]
    assert data["DEFAULT_GPU_COUNT"] == "0" and "DEFAULT_ACCELERATOR" not in data
    settings = settings_of(objects, monkeypatch)
    assert (settings.default_gpu_count, settings.default_accelerator, settings.default_spot) == (0, None, False)
