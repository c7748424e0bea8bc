"""Job (+ pods) → the run's status, and that status as the TrainingRun shows it, on plain dicts."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import uuid4

import pytest
from training_core.domain import Phase, Run
from training_operator import job_status, manifests
from training_operator.job_status import Condition, StatusUpdate

from tests.unit.operator.test_manifests import CONFIG, run_resource  # noqa: F401


# -- Job (+ pods) → status ---------------------------------------------------------------------
def pod(
    name: str, created: str, phase: str = "Pending", *conditions: dict[str, str]
) -> dict[str, Any]:
    return {
        "metadata": {
            "name": name,
            "creationTimestamp": created,
            "labels": {manifests.LABEL_RUN: "train-p1-1"},
        },
        "status": {"phase": phase, "conditions": list(conditions)},
    }


JOB = {"spec": {"suspend": False, "backoffLimit": 3, "activeDeadlineSeconds": 600}}
UNSCHEDULABLE = {
    "type": "PodScheduled",
    "status": "False",
    "reason": "Unschedulable",
    "message": "0/2 nodes: Insufficient nvidia.com/gpu",
}
DISRUPTED = {
    "type": "DisruptionTarget",
    "status": "True",
    "reason": "PreemptionByScheduler",
    "message": "node preempted",
}


def with_status(**status: Any) -> dict[str, Any]:
    return {**JOB, "status": status}


def failed(reason: str, message: str = "") -> dict[str, Any]:
    return with_status(
        failed=4,
        startTime="2026-01-01T00:00:00Z",
        conditions=[
            {
                "type": "Failed",
                "status": "True",
                "reason": reason,
                "message": message,
                "lastTransitionTime": "2026-01-01T02:00:00Z",
            }
        ],
    )


def test_new_job_is_pending() -> None:
    update = job_status.run_status(JOB)
    assert (update.phase, update.reason) == (Phase.PENDING, "JobCreated")


def test_ready_pod_or_running_pod_is_running() -> None:
    assert job_status.run_status(with_status(active=1, ready=1)).phase is Phase.RUNNING
    running = job_status.run_status(
        with_status(active=1), [pod("a", "2026-01-01T00:00:00Z", "Running")]
    )
    assert (running.phase, running.reason) == (Phase.RUNNING, "PodRunning")


def test_complete_job_succeeded() -> None:
    update = job_status.run_status(
        with_status(
            succeeded=1,
            startTime="2026-01-01T00:00:00Z",
            completionTime="2026-01-01T01:00:00Z",
            conditions=[{"type": "Complete", "status": "True"}],
        )
    )
    assert update.phase is Phase.SUCCEEDED
    assert (update.start_time, update.completion_time) == (
        "2026-01-01T00:00:00Z",
        "2026-01-01T01:00:00Z",
    )
    assert update.conditions == (Condition("Complete", "True", "Completed", "the Job completed"),)


@pytest.mark.parametrize(
    ("reason", "sentence"),
    [
        ("DeadlineExceeded", "the run exceeded its deadline of 600 seconds"),
        (
            "BackoffLimitExceeded",
            "the trainer's pod failed 4 time(s), more than the backoff limit of 3",
        ),
        ("SomethingNew", "the training Job failed"),
    ],
)
def test_failed_job_says_why(reason: str, sentence: str) -> None:
    update = job_status.run_status(failed(reason, "details from Kubernetes"))
    assert (update.phase, update.reason) == (Phase.FAILED, reason)
    assert update.message == f"{sentence}: details from Kubernetes"
    assert update.completion_time == "2026-01-01T02:00:00Z"
    assert update.conditions[0].type == "Failed" and update.conditions[0].reason == reason


@pytest.mark.parametrize(
    ("code", "sentence"),
    [
        (65, "the trainer refused its input (exit code 65); retrying would not help"),
        (2, "the trainer's settings are malformed (exit code 2); retrying would not help"),
        (9, "the trainer stopped on an error (exit code 9); retrying would not help"),
    ],
)
def test_job_failed_by_a_fail_job_rule_names_the_exit_code(code: int, sentence: str) -> None:
    details = f"Container trainer for pod ns/p failed with exit code {code} matching FailJob rule at index 1"
    update = job_status.run_status(failed("PodFailurePolicy", details))
    assert update.message == f"{sentence}: {details}"


def test_false_conditions_do_not_count() -> None:
    update = job_status.run_status(with_status(conditions=[{"type": "Failed", "status": "False"}]))
    assert update.phase is Phase.PENDING


def test_suspended_job_is_pending_with_a_suspended_condition() -> None:
    update = job_status.run_status(
        {**JOB, "spec": {"suspend": True}, "status": {"active": 1, "ready": 1}}
    )
    assert (update.phase, update.reason) == (Phase.PENDING, "Suspended")
    assert (
        Condition("Suspended", "True", "Suspended", "spec.suspend is true: the Job has no pod")
        in update.conditions
    )


def test_preempted_pod_sends_the_run_back_to_pending() -> None:
    pods = [pod("a", "2026-01-01T00:00:00Z", "Failed", DISRUPTED), pod("b", "2026-01-01T00:05:00Z")]
    update = job_status.run_status(with_status(active=1), pods)
    assert (update.phase, update.reason) == (Phase.PENDING, "Preempted")
    assert "node preempted" in update.message
    assert Condition("Preempted", "True", "DisruptionTarget", "node preempted") in update.conditions


def test_replacement_pod_running_clears_preemption() -> None:
    pods = [
        pod("a", "2026-01-01T00:00:00Z", "Failed", DISRUPTED),
        pod("b", "2026-01-01T00:05:00Z", "Running"),
    ]
    update = job_status.run_status(with_status(active=1), pods)
    assert update.phase is Phase.RUNNING
    assert Condition("Preempted", "False", "Resumed", "running on a new node") in update.conditions


def test_unschedulable_pod_says_why() -> None:
    update = job_status.run_status(JOB, [pod("a", "2026-01-01T00:00:00Z", "Pending", UNSCHEDULABLE)])
    assert (update.phase, update.reason) == (Phase.PENDING, "Unschedulable")
    assert update.message == "waiting for a node: 0/2 nodes: Insufficient nvidia.com/gpu"
    assert (
        Condition("Scheduled", "False", "Unschedulable", UNSCHEDULABLE["message"])
        in update.conditions
    )


def test_only_the_newest_pod_decides_scheduling() -> None:
    pods = [
        pod("b", "2026-01-01T00:05:00Z"),
        pod("a", "2026-01-01T00:00:00Z", "Pending", UNSCHEDULABLE),
    ]
    assert job_status.unschedulable_message(pods) is None
    assert job_status.unschedulable_message([]) is None


def test_pods_of_filters_by_run_label() -> None:
    mine, other = pod("a", "t"), pod("b", "t")
    other["metadata"]["labels"] = {manifests.LABEL_RUN: "someone-else"}
    assert job_status.pods_of("train-p1-1", [mine, other]) == [mine]


# -- the TrainingRun's status ---------------------------------------------------------------------
def stored(phase: Phase, **fields: Any) -> Run:
    return Run(id=uuid4(), project_id=uuid4(), name="j", phase=phase, **fields)


NOW = "2026-01-01T03:00:00Z"


def test_progress_is_shown_as_epoch_over_total() -> None:
    shown = job_status.progress_status(
        {"epoch": 3, "total_epochs": 12, "val_accuracy": 0.9, "loss": None}, 10
    )
    assert shown == {"epoch": 3, "totalEpochs": 12, "valAccuracy": 0.9, "display": "3/12"}
    assert job_status.progress_status({}, 10) == {"totalEpochs": 10, "display": "0/10"}


def test_store_phase_wins_over_the_job() -> None:
    update = StatusUpdate(Phase.RUNNING, "PodRunning", "the trainer is running")
    run = stored(
        Phase.SUCCEEDED,
        model_url="gs://m/x.pth",
        finished_at=datetime(2026, 1, 1, 2, tzinfo=UTC),
        progress={"epoch": 10, "total_epochs": 10, "val_accuracy": 0.95},
    )
    patch = job_status.status_patch({"phase": "Running"}, update, run, NOW, 10)
    assert patch["phase"] == "Succeeded" and patch["reason"] == "ReportedByTrainer"
    assert patch["completionTime"] == "2026-01-01T02:00:00Z" and patch["modelUrl"] == "gs://m/x.pth"
    assert patch["progress"]["display"] == "10/10" and patch["phaseSince"] == NOW


def test_trainer_error_is_the_message() -> None:
    patch = job_status.status_patch(
        {},
        StatusUpdate(Phase.RUNNING, "PodRunning", ""),
        stored(Phase.FAILED, error="dataset has one class"),
        NOW,
        10,
    )
    assert (patch["phase"], patch["message"]) == ("Failed", "dataset has one class")


def test_without_a_store_record_a_terminal_phase_is_kept() -> None:
    patch = job_status.status_patch(
        {"phase": "Cancelled"}, StatusUpdate(Phase.RUNNING, "PodRunning", ""), None, NOW, 10
    )
    assert patch["phase"] == "Cancelled"
    patch = job_status.status_patch(
        {"phase": "Pending"}, StatusUpdate(Phase.RUNNING, "PodRunning", "ok"), None, NOW, 10
    )
    assert (patch["phase"], patch["reason"]) == ("Running", "PodRunning")


def test_unchanged_phase_keeps_its_time_and_conditions_keep_theirs() -> None:
    current = {
        "phase": "Pending",
        "phaseSince": "2026-01-01T00:00:00Z",
        "conditions": [
            {"type": "Suspended", "status": "False", "reason": "Active", "lastTransitionTime": "T0"}
        ],
    }
    update = StatusUpdate(
        Phase.PENDING, "JobCreated", "waiting", (Condition("Suspended", "False", "Active"),)
    )
    patch = job_status.status_patch(current, update, stored(Phase.PENDING), NOW, 10)
    assert patch["phaseSince"] == "2026-01-01T00:00:00Z"
    assert patch["conditions"][0]["lastTransitionTime"] == "T0"
    flipped = job_status.merge_conditions(
        current["conditions"], [Condition("Suspended", "True", "Suspended")], NOW
    )
    assert flipped[0]["lastTransitionTime"] == NOW and flipped[0]["status"] == "True"


def test_leaving_pending_clears_the_pending_too_long_flag() -> None:
    current = {
        "phase": "Pending",
        "conditions": [{"type": "PendingTooLong", "status": "True", "lastTransitionTime": "T0"}],
    }
    patch = job_status.status_patch(
        current, StatusUpdate(Phase.RUNNING, "PodRunning", ""), stored(Phase.RUNNING), NOW, 10
    )
    flag = next(c for c in patch["conditions"] if c["type"] == "PendingTooLong")
    assert flag["status"] == "False"
    fresh = job_status.status_patch(
        {}, StatusUpdate(Phase.RUNNING, "PodRunning", ""), stored(Phase.RUNNING), NOW, 10
    )
    assert all(c["type"] != "PendingTooLong" for c in fresh["conditions"])


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        ({"phase": "Pending", "phaseSince": "2026-01-01T00:00:00Z"}, True),
        ({"phase": "Queued", "phaseSince": "2026-01-01T00:00:00Z"}, True),
        ({"phase": "Pending", "phaseSince": "2026-01-01T00:59:30Z"}, False),
        ({"phase": "Running", "phaseSince": "2026-01-01T00:00:00Z"}, False),
        ({"phase": "Pending", "reason": "Suspended", "phaseSince": "2026-01-01T00:00:00Z"}, False),
        ({"phase": "Pending"}, False),
        (
            {
                "phase": "Pending",
                "phaseSince": "2026-01-01T00:00:00Z",
                "conditions": [{"type": "PendingTooLong", "status": "True"}],
            },
            False,
        ),
    ],
)
def test_pending_too_long_is_flagged_once(status: dict[str, Any], expected: bool) -> None:
    now = datetime(2026, 1, 1, 1, tzinfo=UTC)
    assert job_status.pending_too_long(status, now, timedelta(minutes=15).total_seconds()) is expected
