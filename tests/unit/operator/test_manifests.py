"""TrainingRun → its Job (and Service), on plain dicts."""

from __future__ import annotations

from typing import Any

import kubernetes_validate
import pytest
from training_core.runspec import EXIT_DO_NOT_RETRY, EXIT_MISCONFIGURED, Resources
from training_operator import manifests
from training_operator.config import OperatorConfig

from tests.unit.operator.test_crd import K8S_VERSION, sample

CONFIG = OperatorConfig(
    trainer_image="registry.example/trainer:1.2.3",
    service_account="trainer-sa",
    settings_configmap="agent-settings",
    secret_name="agent-secrets",
    ttl_seconds_after_finished=3600,
    scratch_size="50Gi",
    run_as_user=20001,
)


def run_resource(**fields: Any) -> dict[str, Any]:
    spec = sample(run_name="train-p1-1", **fields)
    return {
        "apiVersion": "training.automl.dev/v1alpha1",
        "kind": "TrainingRun",
        "metadata": {"name": spec.run_name, "namespace": "training", "uid": "1234-uid"},
        "spec": spec.to_resource_spec(),
    }


def job_for(**fields: Any) -> dict[str, Any]:
    return manifests.job_manifest(run_resource(**fields), CONFIG)


def container(job: dict[str, Any]) -> dict[str, Any]:
    (only,) = job["spec"]["template"]["spec"]["containers"]
    return only

# -- the Job ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "fields",
    [
        {},
        {"resources": Resources(gpu_count=8, accelerator="nvidia-h100-80gb", spot=True)},
        {"resources": Resources(gpu_count=0, cpu="500m", memory="2Gi")},
        {"active_deadline_seconds": 7200, "suspend": True, "backoff_limit": 0, "seed": 3},
    ],
)
def test_every_job_validates_against_the_kubernetes_schema(fields: dict[str, Any]) -> None:
    kubernetes_validate.validate(job_for(**fields), K8S_VERSION, strict=True)


def test_job_is_named_after_its_run_and_owned_by_it() -> None:
    job = job_for()
    assert job["metadata"]["name"] == "train-p1-1" and job["metadata"]["namespace"] == "training"
    assert job["metadata"]["ownerReferences"] == [
        {
            "apiVersion": "training.automl.dev/v1alpha1",
            "kind": "TrainingRun",
            "name": "train-p1-1",
            "uid": "1234-uid",
            "controller": True,
            "blockOwnerDeletion": True,
        }
    ]


def test_labels_link_job_and_pods_to_run_and_project() -> None:
    resource = run_resource()
    job = manifests.job_manifest(resource, CONFIG)
    labels = job["metadata"]["labels"]
    assert labels[manifests.LABEL_RUN] == "train-p1-1"
    assert labels[manifests.LABEL_PROJECT] == resource["spec"]["projectId"]
    assert labels["app.kubernetes.io/name"] == "training-agent"
    assert labels["app.kubernetes.io/component"] == "trainer"
    assert labels["app.kubernetes.io/managed-by"] == "training-agent-operator"
    assert job["spec"]["template"]["metadata"]["labels"] == labels


def test_gpu_limits_node_selection_and_tolerations() -> None:
    job = job_for(
        resources=Resources(gpu_count=2, accelerator="nvidia-l4", spot=True, cpu="8", memory="32Gi")
    )
    pod = job["spec"]["template"]["spec"]
    assert container(job)["resources"] == {
        "requests": {"cpu": "8", "memory": "32Gi"},
        "limits": {"memory": "32Gi", "nvidia.com/gpu": "2"},
    }
    assert pod["nodeSelector"] == {
        "cloud.google.com/gke-accelerator": "nvidia-l4",
        "cloud.google.com/gke-spot": "true",
    }
    assert pod["tolerations"] == [
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},
        {
            "key": "cloud.google.com/gke-spot",
            "operator": "Equal",
            "value": "true",
            "effect": "NoSchedule",
        },
    ]


def test_on_demand_gpu_without_accelerator_only_tolerates_gpu_nodes() -> None:
    pod = job_for(resources=Resources(gpu_count=1))["spec"]["template"]["spec"]
    assert "nodeSelector" not in pod
    assert pod["tolerations"] == [
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
    ]


def test_cpu_only_run_asks_for_no_gpu() -> None:
    job = job_for(resources=Resources(gpu_count=0, cpu="2", memory="4Gi"))
    assert "nvidia.com/gpu" not in container(job)["resources"]["limits"]
    assert "tolerations" not in job["spec"]["template"]["spec"]


def test_environment_carries_the_run_contract_and_secret_references() -> None:
    resource = run_resource(epochs=7, learning_rate=0.01, seed=5)
    job = manifests.job_manifest(resource, CONFIG)
    env = {e["name"]: e for e in container(job)["env"]}
    assert env["TRAINING_RUN_ID"]["value"] == resource["spec"]["runId"]
    assert env["TRAINING_RUN_NAME"]["value"] == "train-p1-1"
    assert env["TRAINING_EPOCHS"]["value"] == "7"
    assert env["TRAINING_LEARNING_RATE"]["value"] == "0.01"
    assert env["TRAINING_SEED"]["value"] == "5"
    assert env["TRAINING_MODEL_URL"]["value"] == resource["spec"]["modelUrl"]
    assert env["SCRATCH_DIR"]["value"] == "/scratch"
    assert env["SUPABASE_SERVICE_ROLE_KEY"] == {
        "name": "SUPABASE_SERVICE_ROLE_KEY",
        "valueFrom": {
            "secretKeyRef": {"name": "agent-secrets", "key": "SUPABASE_SERVICE_ROLE_KEY"}
        },
    }
    assert container(job)["envFrom"] == [{"configMapRef": {"name": "agent-settings"}}]
    # No secret value is ever written into the Job.
    assert all("value" not in e or "KEY" not in e["name"] for e in env.values())


def test_job_limits_retries_deadline_and_lifetime() -> None:
    spec = job_for(active_deadline_seconds=5400, backoff_limit=2, suspend=True)["spec"]
    assert spec["backoffLimit"] == 2
    assert spec["activeDeadlineSeconds"] == 5400
    assert spec["ttlSecondsAfterFinished"] == 3600
    assert spec["suspend"] is True
    assert "activeDeadlineSeconds" not in job_for()["spec"]


def test_pod_failure_policy_ignores_preemption_and_stops_on_bad_input() -> None:
    job = job_for()
    assert job["spec"]["template"]["spec"]["restartPolicy"] == "Never"
    assert job["spec"]["podFailurePolicy"]["rules"] == [
        {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
        {
            "action": "FailJob",
            "onExitCodes": {
                "containerName": "trainer",
                "operator": "In",
                "values": [EXIT_MISCONFIGURED, EXIT_DO_NOT_RETRY],
            },
        },
    ]


def test_pod_runs_non_root_on_a_read_only_root_with_scratch_space() -> None:
    job = job_for()
    pod = job["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "trainer-sa"
    assert pod["automountServiceAccountToken"] is False
    assert pod["securityContext"] == {
        "runAsNonRoot": True,
        "runAsUser": 20001,
        "runAsGroup": 20001,
        "fsGroup": 20001,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    trainer = container(job)
    assert trainer["image"] == "registry.example/trainer:1.2.3"
    assert trainer["securityContext"] == {
        "runAsNonRoot": True,
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["scratch"]["emptyDir"] == {"sizeLimit": "50Gi"}
    assert volumes["tmp"]["emptyDir"] == {"sizeLimit": "1Gi"}
    mounts = {m["mountPath"]: m["name"] for m in trainer["volumeMounts"]}
    assert mounts == {"/scratch": "scratch", "/tmp": "tmp", "/dev/shm": "dshm"}


@pytest.mark.parametrize(("spot", "grace"), [(True, 15), (False, 30)])
def test_grace_period_fits_the_node_s_notice(spot: bool, grace: int) -> None:
    """The trainer checkpoints on SIGTERM within what the node grants: GKE gives ordinary pods
    on Spot nodes 15 s of a preemption's notice; elsewhere Kubernetes' default 30 s."""
    pod = job_for(resources=Resources(gpu_count=1, spot=spot))["spec"]["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] == grace


def test_priority_class_is_optional() -> None:
    assert "priorityClassName" not in job_for()["spec"]["template"]["spec"]
    config = CONFIG.model_copy(update={"priority_class": "training-low"})
    assert (
        manifests.job_manifest(run_resource(), config)["spec"]["template"]["spec"][
            "priorityClassName"
        ]
        == "training-low"
    )
