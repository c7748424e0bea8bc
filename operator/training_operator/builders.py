"""Pure decisions of the operator: TrainingRun → Job manifest, Job (+ pods) → run status.

Nothing here talks to a server, so every rule is tested on plain dicts.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pydantic.alias_generators import to_camel
from training_core.domain import ACTIVE_PHASES, Phase, Progress, Run
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

# Reasons for which a run may go back from Running to Pending: its pod is gone, not failed.
_REPLACED_POD_REASONS = frozenset({"Preempted", "Suspended"})


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


# -- Job (+ pods) → run status ------------------------------------------------------------
@dataclass(frozen=True)
class Condition:
    type: str
    status: str  # "True" | "False" | "Unknown"
    reason: str
    message: str = ""

    def as_dict(self, now: str) -> dict[str, str]:
        return {
            "type": self.type,
            "status": self.status,
            "reason": self.reason,
            "message": self.message,
            "lastTransitionTime": now,
        }


@dataclass(frozen=True)
class StatusUpdate:
    """What the Job says about its run."""

    phase: Phase
    reason: str
    message: str
    conditions: tuple[Condition, ...] = ()
    start_time: str | None = None
    completion_time: str | None = None


@dataclass(frozen=True)
class Transition:
    """A conditional store update: the run enters ``phase`` only from ``expected``."""

    phase: Phase
    expected: frozenset[Phase]
    level: str
    log_line: str
    error: str | None = None


def run_status(job: Mapping[str, Any], pods: Sequence[Mapping[str, Any]] = ()) -> StatusUpdate:
    status = job.get("status") or {}
    true = {c["type"]: c for c in status.get("conditions") or [] if c.get("status") == "True"}
    start = status.get("startTime")
    if "Complete" in true:
        return StatusUpdate(
            Phase.SUCCEEDED,
            "Completed",
            "the trainer finished and wrote the model",
            (Condition("Complete", "True", "Completed", "the Job completed"),),
            start,
            status.get("completionTime") or true["Complete"].get("lastTransitionTime"),
        )
    if "Failed" in true:
        failed = true["Failed"]
        reason = failed.get("reason") or "Failed"
        message = failure_message(reason, failed.get("message", ""), job)
        return StatusUpdate(
            Phase.FAILED,
            reason,
            message,
            (Condition("Failed", "True", reason, message),),
            start,
            failed.get("lastTransitionTime"),
        )
    return _active_status(job, status, pods, start)


def _active_status(
    job: Mapping[str, Any],
    status: Mapping[str, Any],
    pods: Sequence[Mapping[str, Any]],
    start: str | None,
) -> StatusUpdate:
    suspended = bool((job.get("spec") or {}).get("suspend"))
    suspend_condition = Condition(
        "Suspended",
        "True" if suspended else "False",
        "Suspended" if suspended else "Active",
        "spec.suspend is true: the Job has no pod" if suspended else "",
    )
    if suspended:
        return StatusUpdate(
            Phase.PENDING, "Suspended", "suspended (spec.suspend)", (suspend_condition,), start
        )
    expected = (job.get("spec") or {}).get("parallelism") or 1
    done = status.get("succeeded") or 0  # nodes whose trainer finished before the others
    started = [pod for pod in current_pods(pods) if _pod_phase(pod) in ("Running", "Succeeded")]
    disrupted = [pod for pod in pods if _pod_condition(pod, "DisruptionTarget", "True")]
    # Training starts once every node's pod runs: one pod, or each of a group's.
    if (status.get("ready") or 0) + done >= expected or len(started) >= expected:
        conditions = (suspend_condition, Condition("Scheduled", "True", "PodScheduled"))
        if disrupted:
            conditions += (Condition("Preempted", "False", "Resumed", "running on a new node"),)
        return StatusUpdate(
            Phase.RUNNING, "PodRunning", "the trainer is running", conditions, start
        )
    if disrupted:
        message = _condition_message(disrupted[-1], "DisruptionTarget") or "the pod was preempted"
        return StatusUpdate(
            Phase.PENDING,
            "Preempted",
            f"preempted ({message}); waiting for a new node, resuming from the last checkpoint",
            (suspend_condition, Condition("Preempted", "True", "DisruptionTarget", message)),
            start,
        )
    unschedulable = unschedulable_message(pods)
    if unschedulable:
        return StatusUpdate(
            Phase.PENDING,
            "Unschedulable",
            f"waiting for a node: {unschedulable}",
            (suspend_condition, Condition("Scheduled", "False", "Unschedulable", unschedulable)),
            start,
        )
    waiting = "waiting for a GPU node"
    if expected > 1:
        waiting = f"waiting for GPU nodes ({len(started)} of {expected} pods running)"
    return StatusUpdate(Phase.PENDING, "JobCreated", waiting, (suspend_condition,), start)


def job_deleted_status() -> StatusUpdate:
    """The Job went away while its run was unfinished (deleted by hand, not by the operator)."""
    message = "the Job was deleted before the run finished"
    return StatusUpdate(
        Phase.FAILED, "JobDeleted", message, (Condition("Failed", "True", "JobDeleted", message),)
    )


def failure_message(reason: str, message: str, job: Mapping[str, Any]) -> str:
    """A sentence for the user; Kubernetes' own message follows for the details."""
    spec = job.get("spec") or {}
    status = job.get("status") or {}
    readable = {
        "DeadlineExceeded": f"the run exceeded its deadline of {spec.get('activeDeadlineSeconds')} seconds",
        "BackoffLimitExceeded": (
            f"the trainer's pod failed {status.get('failed', 0)} time(s), "
            f"more than the backoff limit of {spec.get('backoffLimit')}"
        ),
        "PodFailurePolicy": _fail_job_sentence(message),
    }.get(reason, "the training Job failed")
    return f"{readable}: {message}" if message else readable


# The Job controller names the exit code that matched a FailJob rule in its message.
_EXIT_CODE = re.compile(r"exit code (\d+)")
_FAIL_JOB_CAUSES = {
    EXIT_DO_NOT_RETRY: "the trainer refused its input",
    EXIT_MISCONFIGURED: "the trainer's settings are malformed",
}


def _fail_job_sentence(message: str) -> str:
    found = _EXIT_CODE.search(message)
    if not found:
        return "the trainer stopped on an error that retrying would not fix"
    code = int(found.group(1))
    cause = _FAIL_JOB_CAUSES.get(code, "the trainer stopped on an error")
    return f"{cause} (exit code {code}); retrying would not help"


def newest_pod(pods: Iterable[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    ordered = sorted(pods, key=lambda pod: pod.get("metadata", {}).get("creationTimestamp") or "")
    return ordered[-1] if ordered else None


def current_pods(pods: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The pods that train now: the newest of each node's (of the one node's, on one node)."""
    by_node: dict[str | None, list[Mapping[str, Any]]] = {}
    for pod in pods:
        by_node.setdefault(groups.completion_index(pod), []).append(pod)
    return [pod for same_node in by_node.values() if (pod := newest_pod(same_node))]


def unschedulable_message(pods: Sequence[Mapping[str, Any]]) -> str | None:
    """The scheduler's reason (``PodScheduled`` = False, ``Unschedulable``) of a current pod."""
    for pod in current_pods(pods):
        for condition in (pod.get("status") or {}).get("conditions") or []:
            scheduled = (condition.get("type"), condition.get("status"), condition.get("reason"))
            if scheduled == ("PodScheduled", "False", "Unschedulable"):
                return condition.get("message") or "no node fits the pod"
    return None


def pods_of(run_name: str, pods: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    return [
        pod
        for pod in pods
        if (pod.get("metadata", {}).get("labels") or {}).get(LABEL_RUN) == run_name
    ]


def _pod_phase(pod: Mapping[str, Any]) -> str | None:
    return (pod.get("status") or {}).get("phase")


def _pod_condition(pod: Mapping[str, Any], kind: str, status: str) -> bool:
    conditions = (pod.get("status") or {}).get("conditions") or []
    return any(c.get("type") == kind and c.get("status") == status for c in conditions)


def _condition_message(pod: Mapping[str, Any], kind: str) -> str:
    for condition in (pod.get("status") or {}).get("conditions") or []:
        if condition.get("type") == kind:
            return condition.get("message") or condition.get("reason") or ""
    return ""


# -- what the store is told -----------------------------------------------------------------
def transition_for(update: StatusUpdate, job_name: str) -> Transition:
    """The conditional store update (and its one log line) that a status update asks for."""
    phase = update.phase
    if phase is Phase.PENDING:
        expected = {Phase.QUEUED} | (
            {Phase.RUNNING} if update.reason in _REPLACED_POD_REASONS else set()
        )
        level = "warning" if update.reason == "Preempted" else "info"
        return Transition(phase, frozenset(expected), level, f"Job {job_name}: {update.message}")
    if phase is Phase.RUNNING:
        return Transition(
            phase,
            frozenset({Phase.QUEUED, Phase.PENDING}),
            "info",
            f"Job {job_name}: training started",
        )
    if phase is Phase.FAILED:
        return Transition(
            phase,
            ACTIVE_PHASES,
            "error",
            f"Job {job_name} failed: {update.message}",
            update.message,
        )
    return Transition(phase, ACTIVE_PHASES, "info", f"Job {job_name} succeeded")


def cancel_transition(run_name: str) -> Transition:
    return Transition(
        Phase.CANCELLED,
        ACTIVE_PHASES,
        "warning",
        f"TrainingRun {run_name} was deleted: run cancelled",
        "cancelled: the TrainingRun was deleted",
    )


# -- what ``kubectl get tr`` shows ----------------------------------------------------------
def progress_status(progress: Mapping[str, Any], total_epochs: int) -> dict[str, Any]:
    """The store's progress (snake_case) as the TrainingRun's ``status.progress``."""
    out = {
        to_camel(key): progress[key]
        for key in Progress.status_keys()
        if progress.get(key) is not None
    }
    out.setdefault("totalEpochs", total_epochs)
    out["display"] = f"{out.get('epoch', 0)}/{out['totalEpochs']}"
    return out


def merge_conditions(
    old: Sequence[Mapping[str, Any]], new: Iterable[Condition], now: str
) -> list[dict[str, Any]]:
    """Replace conditions by type; a condition whose status did not change keeps its time."""
    merged = {c["type"]: dict(c) for c in old}
    for condition in new:
        previous = merged.get(condition.type)
        entry = condition.as_dict(now)
        if previous and previous.get("status") == condition.status:
            entry["lastTransitionTime"] = previous.get("lastTransitionTime", now)
        merged[condition.type] = entry
    return sorted(merged.values(), key=lambda c: c["type"])


def status_patch(
    current: Mapping[str, Any],
    update: StatusUpdate,
    run: Run | None,
    now: str,
    total_epochs: int,
) -> dict[str, Any]:
    """The TrainingRun's new status: the store's phase wins (it is the system of record)."""
    old_phase = current.get("phase")
    if run is not None:
        phase = run.phase
    elif old_phase and Phase(old_phase).is_terminal:
        phase = Phase(old_phase)
    else:
        phase = update.phase
    reason, message = (update.reason, update.message)
    if phase != update.phase:
        reason = "ReportedByTrainer"
        message = run.error if run and run.error else f"the trainer reports {phase.value}"
    conditions = update.conditions
    if phase not in (Phase.QUEUED, Phase.PENDING):
        conditions += (Condition("PendingTooLong", "False", "NoLongerPending"),)
    old_conditions = current.get("conditions") or []
    if not any(c.get("type") == "PendingTooLong" for c in old_conditions):
        conditions = tuple(c for c in conditions if c.type != "PendingTooLong")
    patch: dict[str, Any] = {
        "phase": phase.value,
        "reason": reason,
        "message": message,
        "conditions": merge_conditions(old_conditions, conditions, now),
        "phaseSince": now if phase.value != old_phase else current.get("phaseSince", now),
    }
    start = _iso(run.started_at) if run and run.started_at else update.start_time
    finish = _iso(run.finished_at) if run and run.finished_at else update.completion_time
    if start:
        patch["startTime"] = start
    if finish and phase.is_terminal:
        patch["completionTime"] = finish
    if run is not None:
        patch["progress"] = progress_status(run.progress, total_epochs)
        if run.model_url:
            patch["modelUrl"] = run.model_url
    return patch


def pending_too_long(status: Mapping[str, Any], now: datetime, timeout_seconds: float) -> bool:
    """Flag once: a run still waiting for a node after ``timeout_seconds``."""
    if status.get("phase") not in (Phase.QUEUED.value, Phase.PENDING.value):
        return False
    if status.get("reason") == "Suspended":  # waiting on purpose
        return False
    if any(
        c.get("type") == "PendingTooLong" and c.get("status") == "True"
        for c in status.get("conditions") or []
    ):
        return False
    since = status.get("phaseSince")
    if not since:
        return False
    return (now - datetime.fromisoformat(since)).total_seconds() > timeout_seconds


def _iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")
