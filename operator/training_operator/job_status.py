"""Job (+ pods) → the run's status, and that status as the TrainingRun shows it
(``kubectl get tr``, ``describe``). Pure: every rule is tested on dicts."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pydantic.alias_generators import to_camel
from training_core.domain import Phase, Progress, Run
from training_core.runspec import EXIT_DO_NOT_RETRY, EXIT_MISCONFIGURED, LABEL_RUN

from training_operator import groups


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
        because = Condition("Preempted", "True", "DisruptionTarget", message)
        return StatusUpdate(
            Phase.PENDING, "Preempted",
            f"preempted ({message}); waiting for a new node, resuming from the last checkpoint",
            (suspend_condition, because), start,
        )  # fmt: skip
    if unschedulable := unschedulable_message(pods):
        because = Condition("Scheduled", "False", "Unschedulable", unschedulable)
        return StatusUpdate(
            Phase.PENDING, "Unschedulable", f"waiting for a node: {unschedulable}",
            (suspend_condition, because), start,
        )  # fmt: skip
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
