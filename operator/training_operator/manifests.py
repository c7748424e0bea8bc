"""TrainingRun → the Kubernetes objects that train it: its Job (an Indexed Job on several
nodes) and, on several nodes, its headless Service. Pure: every rule is tested on dicts."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from training_core.runspec import (
    CRD_GROUP,
    CRD_KIND,
    CRD_VERSION,
    EXIT_DO_NOT_RETRY,
    EXIT_MISCONFIGURED,
    LABEL_PROJECT,  # noqa: F401 - the label scheme, as the operator's users import it
    LABEL_RUN,
    RunSpec,
)

from training_operator import groups
from training_operator.config import OperatorConfig

TRAINER_CONTAINER = "trainer"
MANAGED_BY = "training-agent-operator"
GPU_RESOURCE = "nvidia.com/gpu"
ACCELERATOR_LABEL = "cloud.google.com/gke-accelerator"
SPOT_LABEL = "cloud.google.com/gke-spot"
SCRATCH_VOLUME = "scratch"
# Time from SIGTERM to SIGKILL: the trainer finishes its batch, checkpoints and exits in it.
# A Spot VM's preemption notice is 30 s, of which GKE's graceful node shutdown gives ordinary
# pods 15 s (the rest is for system pods): a longer grace period has no effect there.
SPOT_GRACE_SECONDS = 15
ON_DEMAND_GRACE_SECONDS = 30  # Kubernetes' default (eviction, drain, kubectl delete)


# -- TrainingRun → Job --------------------------------------------------------------------
def job_labels(spec: RunSpec) -> dict[str, str]:
    """Labels linking Job and pods → run → project (``kubectl get jobs -l …`` finds them)."""
    return {
        "app.kubernetes.io/name": "training-agent",
        "app.kubernetes.io/component": "trainer",
        "app.kubernetes.io/instance": spec.run_name,
        "app.kubernetes.io/managed-by": MANAGED_BY,
        **spec.labels(),
    }


def owner_reference(run_resource: Mapping[str, Any]) -> dict[str, Any]:
    meta = run_resource["metadata"]
    return {
        "apiVersion": f"{CRD_GROUP}/{CRD_VERSION}",
        "kind": CRD_KIND,
        "name": meta["name"],
        "uid": meta["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


def job_manifest(run_resource: Mapping[str, Any], config: OperatorConfig) -> dict[str, Any]:
    """The batch/v1 Job that trains one TrainingRun (one pod per node)."""
    meta = run_resource["metadata"]
    spec = RunSpec.from_resource(meta["name"], run_resource["spec"])
    labels = job_labels(spec)
    job_spec: dict[str, Any] = {
        "backoffLimit": spec.backoff_limit,
        "ttlSecondsAfterFinished": config.ttl_seconds_after_finished,
        "suspend": spec.suspend,
        "podFailurePolicy": _pod_failure_policy(),
        "template": {
            "metadata": {"labels": labels},
            "spec": _pod_spec(spec, config),
        },
    }
    if spec.active_deadline_seconds is not None:
        job_spec["activeDeadlineSeconds"] = spec.active_deadline_seconds
    job = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": _owned_metadata(run_resource, spec),
        "spec": job_spec,
    }
    if groups.is_group(spec.resources):
        return groups.indexed_job(job, spec.resources.nodes, config.master_port)
    return job


def service_manifest(
    run_resource: Mapping[str, Any], config: OperatorConfig
) -> dict[str, Any] | None:
    """The headless Service through which a run's nodes find node 0; ``None`` on one node."""
    spec = RunSpec.from_resource(run_resource["metadata"]["name"], run_resource["spec"])
    if not groups.is_group(spec.resources):
        return None
    return groups.headless_service(
        _owned_metadata(run_resource, spec), {LABEL_RUN: spec.run_name}, config.master_port
    )


def _owned_metadata(run_resource: Mapping[str, Any], spec: RunSpec) -> dict[str, Any]:
    """Named after the run, labelled for it and owned by it (deleted with it)."""
    return {
        "name": spec.run_name,
        "namespace": run_resource["metadata"]["namespace"],
        "labels": job_labels(spec),
        "ownerReferences": [owner_reference(run_resource)],
    }


def _pod_failure_policy() -> dict[str, Any]:
    return {
        "rules": [
            # A preempted or evicted pod is not the trainer's fault: retry without counting it.
            {
                "action": "Ignore",
                "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}],
            },
            # Bad input or a malformed environment stays bad: fail the Job at once.
            {
                "action": "FailJob",
                "onExitCodes": {
                    "containerName": TRAINER_CONTAINER,
                    "operator": "In",
                    "values": [EXIT_MISCONFIGURED, EXIT_DO_NOT_RETRY],
                },
            },
        ]
    }


def _pod_spec(spec: RunSpec, config: OperatorConfig) -> dict[str, Any]:
    node_selector, tolerations = _placement(spec)
    pod: dict[str, Any] = {
        "restartPolicy": "Never",  # required by podFailurePolicy; the Job makes new pods
        "serviceAccountName": config.service_account,
        # The trainer never calls the Kubernetes API (GKE Workload Identity needs no token).
        "automountServiceAccountToken": False,
        "terminationGracePeriodSeconds": (
            SPOT_GRACE_SECONDS if spec.resources.spot else ON_DEMAND_GRACE_SECONDS
        ),
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": config.run_as_user,
            "runAsGroup": config.run_as_user,
            "fsGroup": config.run_as_user,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [_container(spec, config)],
        "volumes": [
            {"name": SCRATCH_VOLUME, "emptyDir": {"sizeLimit": config.scratch_size}},
            {"name": "tmp", "emptyDir": {"sizeLimit": config.tmp_size}},
            # PyTorch's data loader workers (and a node's training processes) share batches
            # through /dev/shm.
            {
                "name": "dshm",
                "emptyDir": {
                    "medium": "Memory",
                    "sizeLimit": groups.shm_size(config.shm_size, spec.resources),
                },
            },
        ],
    }
    if node_selector:
        pod["nodeSelector"] = node_selector
    if tolerations:
        pod["tolerations"] = tolerations
    if config.priority_class:
        pod["priorityClassName"] = config.priority_class
    return pod


def _placement(spec: RunSpec) -> tuple[dict[str, str], list[dict[str, str]]]:
    node_selector: dict[str, str] = {}
    tolerations: list[dict[str, str]] = []
    resources = spec.resources
    if resources.gpu_count > 0:
        tolerations.append({"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"})
        if resources.accelerator:
            node_selector[ACCELERATOR_LABEL] = resources.accelerator
    if resources.spot:
        node_selector[SPOT_LABEL] = "true"
        tolerations.append(
            {"key": SPOT_LABEL, "operator": "Equal", "value": "true", "effect": "NoSchedule"}
        )
    return node_selector, tolerations


def _container(spec: RunSpec, config: OperatorConfig) -> dict[str, Any]:
    resources = spec.resources
    limits: dict[str, str] = {"memory": resources.memory}
    if resources.gpu_count > 0:
        limits[GPU_RESOURCE] = str(resources.gpu_count)
    env = [{"name": key, "value": value} for key, value in sorted(spec.to_env().items())]
    env += [
        {"name": "SCRATCH_DIR", "value": config.scratch_dir},
        {"name": "TMPDIR", "value": "/tmp"},
        {
            "name": "SUPABASE_SERVICE_ROLE_KEY",
            "valueFrom": {
                "secretKeyRef": {"name": config.secret_name, "key": config.secret_key_supabase}
            },
        },
    ]
    return {
        "name": TRAINER_CONTAINER,
        "image": config.trainer_image,
        "imagePullPolicy": config.image_pull_policy,
        "env": env,
        "envFrom": [{"configMapRef": {"name": config.settings_configmap}}],
        "resources": {
            "requests": {"cpu": resources.cpu, "memory": resources.memory},
            "limits": limits,
        },
        "securityContext": {
            "runAsNonRoot": True,
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
        },
        "volumeMounts": [
            {"name": SCRATCH_VOLUME, "mountPath": config.scratch_dir},
            {"name": "tmp", "mountPath": "/tmp"},
            {"name": "dshm", "mountPath": "/dev/shm"},
        ],
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
