"""TrainingRun → Job and Job (+ pods) → run status, on plain dicts."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import uuid4

import kubernetes_validate
import pytest
from training_core.domain import Phase, Run
from training_core.runspec import EXIT_DO_NOT_RETRY, EXIT_MISCONFIGURED, Resources
from training_operator import builders
from training_operator.builders import Condition, StatusUpdate
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
    return builders.job_manifest(run_resource(**fields), CONFIG)


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
    job = builders.job_manifest(resource, CONFIG)
    labels = job["metadata"]["labels"]
    assert labels[builders.LABEL_RUN] == "train-p1-1"
    assert labels[builders.LABEL_PROJECT] == resource["spec"]["projectId"]
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
    job = builders.job_manifest(resource, CONFIG)
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
        builders.job_manifest(run_resource(), config)["spec"]["template"]["spec"][
            "priorityClassName"
        ]
        == "training-low"
    )


# -- Job (+ pods) → status ---------------------------------------------------------------------
def pod(
    name: str, created: str, phase: str = "Pending", *conditions: dict[str, str]
) -> dict[str, Any]:
    return {
        "metadata": {
            "name": name,
            "creationTimestamp": created,
            "labels": {builders.LABEL_RUN: "train-p1-1"},
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
    update = builders.run_status(JOB)
    assert (update.phase, update.reason) == (Phase.PENDING, "JobCreated")


def test_ready_pod_or_running_pod_is_running() -> None:
    assert builders.run_status(with_status(active=1, ready=1)).phase is Phase.RUNNING
    running = builders.run_status(
        with_status(active=1), [pod("a", "2026-01-01T00:00:00Z", "Running")]
    )
    assert (running.phase, running.reason) == (Phase.RUNNING, "PodRunning")


def test_complete_job_succeeded() -> None:
    update = builders.run_status(
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
    update = builders.run_status(failed(reason, "details from Kubernetes"))
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
    update = builders.run_status(failed("PodFailurePolicy", details))
    assert update.message == f"{sentence}: {details}"


def test_false_conditions_do_not_count() -> None:
    update = builders.run_status(with_status(conditions=[{"type": "Failed", "status": "False"}]))
    assert update.phase is Phase.PENDING


def test_suspended_job_is_pending_with_a_suspended_condition() -> None:
    update = builders.run_status(
        {**JOB, "spec": {"suspend": True}, "status": {"active": 1, "ready": 1}}
    )
    assert (update.phase, update.reason) == (Phase.PENDING, "Suspended")
    assert (
        Condition("Suspended", "True", "Suspended", "spec.suspend is true: the Job has no pod")
        in update.conditions
    )


def test_preempted_pod_sends_the_run_back_to_pending() -> None:
    pods = [pod("a", "2026-01-01T00:00:00Z", "Failed", DISRUPTED), pod("b", "2026-01-01T00:05:00Z")]
    update = builders.run_status(with_status(active=1), pods)
    assert (update.phase, update.reason) == (Phase.PENDING, "Preempted")
    assert "node preempted" in update.message
    assert Condition("Preempted", "True", "DisruptionTarget", "node preempted") in update.conditions


def test_replacement_pod_running_clears_preemption() -> None:
    pods = [
        pod("a", "2026-01-01T00:00:00Z", "Failed", DISRUPTED),
        pod("b", "2026-01-01T00:05:00Z", "Running"),
    ]
    update = builders.run_status(with_status(active=1), pods)
    assert update.phase is Phase.RUNNING
    assert Condition("Preempted", "False", "Resumed", "running on a new node") in update.conditions


def test_unschedulable_pod_says_why() -> None:
    update = builders.run_status(JOB, [pod("a", "2026-01-01T00:00:00Z", "Pending", UNSCHEDULABLE)])
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
    assert builders.unschedulable_message(pods) is None
    assert builders.unschedulable_message([]) is None


def test_pods_of_filters_by_run_label() -> None:
    mine, other = pod("a", "t"), pod("b", "t")
    other["metadata"]["labels"] = {builders.LABEL_RUN: "someone-else"}
    assert builders.pods_of("train-p1-1", [mine, other]) == [mine]


# -- what the store is told -------------------------------------------------------------------
def test_pending_is_entered_from_queued_or_after_losing_the_pod() -> None:
    created = builders.transition_for(StatusUpdate(Phase.PENDING, "JobCreated", "waiting"), "j")
    assert created.expected == {Phase.QUEUED} and created.level == "info"
    preempted = builders.transition_for(StatusUpdate(Phase.PENDING, "Preempted", "preempted"), "j")
    assert preempted.expected == {Phase.QUEUED, Phase.RUNNING} and preempted.level == "warning"
    suspended = builders.transition_for(StatusUpdate(Phase.PENDING, "Suspended", "suspended"), "j")
    assert Phase.RUNNING in suspended.expected


def test_running_and_outcomes_never_overwrite_a_terminal_phase() -> None:
    running = builders.transition_for(StatusUpdate(Phase.RUNNING, "PodRunning", ""), "j")
    assert (
        running.expected == {Phase.QUEUED, Phase.PENDING}
        and running.log_line == "Job j: training started"
    )
    for phase in (Phase.SUCCEEDED, Phase.FAILED):
        transition = builders.transition_for(StatusUpdate(phase, "x", "why"), "j")
        assert transition.expected == {Phase.QUEUED, Phase.PENDING, Phase.RUNNING}
    failure = builders.transition_for(
        StatusUpdate(Phase.FAILED, "DeadlineExceeded", "too slow"), "j"
    )
    assert (failure.level, failure.error, failure.log_line) == (
        "error",
        "too slow",
        "Job j failed: too slow",
    )
    cancel = builders.cancel_transition("j")
    assert cancel.phase is Phase.CANCELLED and cancel.expected == {
        Phase.QUEUED,
        Phase.PENDING,
        Phase.RUNNING,
    }


# -- the TrainingRun's status ---------------------------------------------------------------------
def stored(phase: Phase, **fields: Any) -> Run:
    return Run(id=uuid4(), project_id=uuid4(), name="j", phase=phase, **fields)


NOW = "2026-01-01T03:00:00Z"


def test_progress_is_shown_as_epoch_over_total() -> None:
    shown = builders.progress_status(
        {"epoch": 3, "total_epochs": 12, "val_accuracy": 0.9, "loss": None}, 10
    )
    assert shown == {"epoch": 3, "totalEpochs": 12, "valAccuracy": 0.9, "display": "3/12"}
    assert builders.progress_status({}, 10) == {"totalEpochs": 10, "display": "0/10"}


def test_store_phase_wins_over_the_job() -> None:
    update = StatusUpdate(Phase.RUNNING, "PodRunning", "the trainer is running")
    run = stored(
        Phase.SUCCEEDED,
        model_url="gs://m/x.pth",
        finished_at=datetime(2026, 1, 1, 2, tzinfo=UTC),
        progress={"epoch": 10, "total_epochs": 10, "val_accuracy": 0.95},
    )
    patch = builders.status_patch({"phase": "Running"}, update, run, NOW, 10)
    assert patch["phase"] == "Succeeded" and patch["reason"] == "ReportedByTrainer"
    assert patch["completionTime"] == "2026-01-01T02:00:00Z" and patch["modelUrl"] == "gs://m/x.pth"
    assert patch["progress"]["display"] == "10/10" and patch["phaseSince"] == NOW


def test_trainer_error_is_the_message() -> None:
    patch = builders.status_patch(
        {},
        StatusUpdate(Phase.RUNNING, "PodRunning", ""),
        stored(Phase.FAILED, error="dataset has one class"),
        NOW,
        10,
    )
    assert (patch["phase"], patch["message"]) == ("Failed", "dataset has one class")


def test_without_a_store_record_a_terminal_phase_is_kept() -> None:
    patch = builders.status_patch(
        {"phase": "Cancelled"}, StatusUpdate(Phase.RUNNING, "PodRunning", ""), None, NOW, 10
    )
    assert patch["phase"] == "Cancelled"
    patch = builders.status_patch(
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
    patch = builders.status_patch(current, update, stored(Phase.PENDING), NOW, 10)
    assert patch["phaseSince"] == "2026-01-01T00:00:00Z"
    assert patch["conditions"][0]["lastTransitionTime"] == "T0"
    flipped = builders.merge_conditions(
        current["conditions"], [Condition("Suspended", "True", "Suspended")], NOW
    )
    assert flipped[0]["lastTransitionTime"] == NOW and flipped[0]["status"] == "True"


def test_leaving_pending_clears_the_pending_too_long_flag() -> None:
    current = {
        "phase": "Pending",
        "conditions": [{"type": "PendingTooLong", "status": "True", "lastTransitionTime": "T0"}],
    }
    patch = builders.status_patch(
        current, StatusUpdate(Phase.RUNNING, "PodRunning", ""), stored(Phase.RUNNING), NOW, 10
    )
    flag = next(c for c in patch["conditions"] if c["type"] == "PendingTooLong")
    assert flag["status"] == "False"
    fresh = builders.status_patch(
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
    assert builders.pending_too_long(status, now, timedelta(minutes=15).total_seconds()) is expected


def test_deleted_job_fails_the_run() -> None:
    update = builders.job_deleted_status()
    assert (update.phase, update.reason) == (Phase.FAILED, "JobDeleted")
    transition = builders.transition_for(update, "j")
    assert transition.expected == {Phase.QUEUED, Phase.PENDING, Phase.RUNNING}
