"""A TrainingRun's life with the real operator: Job, phases, project status, logs, Events."""

from __future__ import annotations

import time

import pytest
from training_core.domain import Phase
from training_core.store import RunUpdate
from training_operator.builders import GPU_RESOURCE, LABEL_PROJECT, LABEL_RUN

from tests.integration.operator.conftest import TIMER_INTERVAL, Cluster, eventually


def test_created_run_gets_a_gpu_job_owned_by_it(cluster: Cluster, operator: object) -> None:
    project, run = cluster.start_run(
        resources={"gpu_count": 2, "accelerator": "nvidia-l4", "spot": True}
    )

    job = eventually(lambda: cluster.job(run.name))
    tr = cluster.training_run(run.name)
    assert job["metadata"]["ownerReferences"] == [
        {
            "apiVersion": "training.automl.dev/v1alpha1",
            "kind": "TrainingRun",
            "name": run.name,
            "uid": tr["metadata"]["uid"],
            "controller": True,
            "blockOwnerDeletion": True,
        }
    ]
    assert job["metadata"]["labels"][LABEL_RUN] == run.name
    assert job["metadata"]["labels"][LABEL_PROJECT] == str(project.id)
    pod = job["spec"]["template"]["spec"]
    assert pod["containers"][0]["resources"]["limits"][GPU_RESOURCE] == "2"
    assert pod["nodeSelector"] == {
        "cloud.google.com/gke-accelerator": "nvidia-l4",
        "cloud.google.com/gke-spot": "true",
    }
    assert pod["containers"][0]["image"] == "registry.example/trainer:1.0"

    def pending() -> None:
        assert cluster.store.get_run(run.id).phase is Phase.PENDING
        assert cluster.training_run(run.name)["status"]["phase"] == "Pending"
        assert cluster.training_run(run.name)["status"]["jobName"] == run.name

    eventually(pending)
    assert cluster.log_lines(project) == [f"Job {run.name}: waiting for a GPU node"]


RUNNING_POD = {"phase": "Running", "conditions": [{"type": "PodScheduled", "status": "True"}]}


def start_training(cluster: Cluster, **spec: object) -> tuple[object, object]:
    project, run = cluster.start_run(**spec)
    eventually(lambda: _assert(cluster.store.get_run(run.id).phase is Phase.PENDING))
    cluster.add_pod(run.name, f"{run.name}-a", RUNNING_POD, "2026-01-01T00:00:00Z")
    cluster.set_job_status(run.name, {"active": 1, "ready": 1, "startTime": "2026-01-01T00:00:05Z"})
    eventually(lambda: _assert(cluster.store.get_run(run.id).phase is Phase.RUNNING))
    return project, run


def _assert(condition: bool) -> None:
    assert condition


def test_running_then_succeeded_follows_the_job_and_shows_progress(
    cluster: Cluster, operator: object
) -> None:
    project, run = start_training(cluster, epochs=10)
    eventually(lambda: _assert(cluster.training_run(run.name)["status"]["phase"] == "Running"))

    # The trainer reports its progress in the store; the TrainingRun shows it to kubectl.
    cluster.store.update_run(
        run.id, RunUpdate(progress={"epoch": 3, "total_epochs": 10, "val_accuracy": 0.81})
    )

    def progress() -> None:
        shown = cluster.training_run(run.name)["status"]["progress"]
        assert shown["display"] == "3/10" and shown["valAccuracy"] == 0.81

    eventually(progress)

    cluster.set_job_status(
        run.name,
        {
            "active": 0,
            "ready": 0,
            "succeeded": 1,
            "completionTime": "2026-01-01T01:00:00Z",
            "conditions": [
                {"type": "Complete", "status": "True", "lastTransitionTime": "2026-01-01T01:00:00Z"}
            ],
        },
    )

    def succeeded() -> None:
        assert cluster.store.get_run(run.id).phase is Phase.SUCCEEDED
        assert cluster.store.get_project(project.id).status == "trained"
        status = cluster.training_run(run.name)["status"]
        assert status["phase"] == "Succeeded" and status["modelUrl"] == run.model_url
        assert status["completionTime"]

    eventually(succeeded)
    assert cluster.log_lines(project) == [
        f"Job {run.name}: waiting for a GPU node",
        f"Job {run.name}: training started",
        f"Job {run.name} succeeded",
    ]
    eventually(lambda: _assert(cluster.event_reasons(run.name).count("Completed") == 1))
    assert cluster.event_reasons(run.name).count("PodRunning") == 1


def test_outcome_written_by_the_trainer_is_kept(cluster: Cluster, operator: object) -> None:
    project, run = start_training(cluster)
    # The trainer finished and wrote its outcome before the Job controller noticed.
    cluster.store.update_run(
        run.id, RunUpdate(phase=Phase.FAILED, error="dataset has one class only")
    )
    cluster.store.set_project_status(project.id, "failed")
    cluster.set_job_status(run.name, {"active": 0, "ready": 0})  # pod gone, Job not settled yet

    def shows_trainer_outcome() -> None:
        status = cluster.training_run(run.name)["status"]
        assert status["phase"] == "Failed"
        assert status["message"] == "dataset has one class only"

    eventually(shows_trainer_outcome)
    assert cluster.store.get_run(run.id).phase is Phase.FAILED
    assert cluster.log_lines(project)[-1] == f"Job {run.name}: training started"


@pytest.mark.parametrize(
    ("reason", "message", "expected"),
    [
        (
            "PodFailurePolicy",
            "Container trainer for pod training/x failed with exit code 65 matching FailJob rule at index 1",
            "the trainer refused its input (exit code 65)",
        ),
        (
            "DeadlineExceeded",
            "Job was active longer than specified deadline",
            "exceeded its deadline of 600 seconds",
        ),
        ("BackoffLimitExceeded", "Job has reached the specified backoff limit", "failed 4 time(s)"),
    ],
)
def test_failed_job_fails_run_and_project(
    cluster: Cluster, operator: object, reason: str, message: str, expected: str
) -> None:
    project, run = start_training(cluster, active_deadline_seconds=600)
    cluster.set_job_status(
        run.name,
        {
            "active": 0,
            "ready": 0,
            "failed": 4,
            "conditions": [
                {
                    "type": "Failed",
                    "status": "True",
                    "reason": reason,
                    "message": message,
                    "lastTransitionTime": "2026-01-01T02:00:00Z",
                }
            ],
        },
    )

    def failed() -> None:
        stored = cluster.store.get_run(run.id)
        assert stored.phase is Phase.FAILED and expected in (stored.error or "")
        assert cluster.store.get_project(project.id).status == "failed"
        status = cluster.training_run(run.name)["status"]
        assert status["phase"] == "Failed" and status["reason"] == reason
        assert any(c["type"] == "Failed" and c["reason"] == reason for c in status["conditions"])

    eventually(failed)
    last = cluster.store.get_logs(project.id, limit=1)[0]
    assert last.log_level == "error" and expected in last.message and message in last.message
    eventually(lambda: _assert(cluster.event_reasons(run.name).count(reason) == 1))


def test_preempted_pod_sends_run_back_to_pending_then_running(
    cluster: Cluster, operator: object
) -> None:
    project, run = start_training(cluster, resources={"spot": True})
    cluster.set_pod_status(
        f"{run.name}-a",
        {
            "phase": "Failed",
            "conditions": [
                {
                    "type": "DisruptionTarget",
                    "status": "True",
                    "reason": "TerminationByKubelet",
                    "message": "Pod was terminated in response to imminent node shutdown.",
                }
            ],
        },
    )
    cluster.set_job_status(run.name, {"active": 1, "ready": 0})

    def preempted() -> None:
        assert cluster.store.get_run(run.id).phase is Phase.PENDING
        status = cluster.training_run(run.name)["status"]
        assert status["phase"] == "Pending" and status["reason"] == "Preempted"

    eventually(preempted)
    assert cluster.store.get_project(project.id).status == "training"  # not a failure

    cluster.add_pod(run.name, f"{run.name}-b", RUNNING_POD, "2026-01-01T00:10:00Z")
    cluster.set_job_status(run.name, {"active": 1, "ready": 1})
    eventually(lambda: _assert(cluster.store.get_run(run.id).phase is Phase.RUNNING))
    lines = cluster.log_lines(project)
    assert lines[2].startswith(
        f"Job {run.name}: preempted (Pod was terminated in response to imminent node"
    )
    assert lines[1:] == [
        f"Job {run.name}: training started",
        lines[2],
        f"Job {run.name}: training started",
    ]


def test_suspend_suspends_the_job_and_marks_the_run(cluster: Cluster, operator: object) -> None:
    project, run = start_training(cluster)
    patch = {"spec": {"suspend": True}}
    cluster.custom.patch_namespaced_custom_object(
        "training.automl.dev",
        "v1alpha1",
        cluster.namespace,
        "trainingruns",
        run.name,
        patch,
        _content_type="application/merge-patch+json",
    )

    def suspended() -> None:
        assert cluster.job(run.name)["spec"]["suspend"] is True
        status = cluster.training_run(run.name)["status"]
        assert status["phase"] == "Pending" and status["reason"] == "Suspended"
        assert {"type": "Suspended", "status": "True"}.items() <= _condition(
            status, "Suspended"
        ).items()
        assert cluster.store.get_run(run.id).phase is Phase.PENDING

    eventually(suspended)
    assert cluster.log_lines(project)[-1] == f"Job {run.name}: suspended (spec.suspend)"

    patch = {"spec": {"suspend": False}}
    cluster.custom.patch_namespaced_custom_object(
        "training.automl.dev",
        "v1alpha1",
        cluster.namespace,
        "trainingruns",
        run.name,
        patch,
        _content_type="application/merge-patch+json",
    )
    eventually(lambda: _assert(cluster.job(run.name)["spec"]["suspend"] is False))
    eventually(
        lambda: _assert(
            _condition(cluster.training_run(run.name)["status"], "Suspended")["status"] == "False"
        )
    )


def _condition(status: dict, kind: str) -> dict:
    found = [c for c in status.get("conditions", []) if c["type"] == kind]
    assert found, f"no {kind} condition in {status.get('conditions')}"
    return found[0]


def test_deleting_an_unfinished_run_cancels_it(cluster: Cluster, operator: object) -> None:
    project, run = start_training(cluster)
    cluster.custom.delete_namespaced_custom_object(
        "training.automl.dev", "v1alpha1", cluster.namespace, "trainingruns", run.name
    )

    def cancelled() -> None:
        assert cluster.store.get_run(run.id).phase is Phase.CANCELLED
        assert cluster.store.get_project(project.id).status == "pending_training"
        assert cluster.jobs() == []

    eventually(cancelled)
    eventually(
        lambda: _assert(
            not cluster.custom.list_namespaced_custom_object(
                "training.automl.dev", "v1alpha1", cluster.namespace, "trainingruns"
            )["items"]
        )
    )
    assert cluster.log_lines(project)[-1] == f"TrainingRun {run.name} was deleted: run cancelled"


def test_deleting_a_run_the_api_cancelled_writes_nothing_more(
    cluster: Cluster, operator: object
) -> None:
    project, run = start_training(cluster)
    cluster.store.update_run(run.id, RunUpdate(phase=Phase.CANCELLED))
    cluster.store.set_project_status(project.id, "pending_training")
    cluster.store.log(project.id, "cancelled by the user")
    cluster.custom.delete_namespaced_custom_object(
        "training.automl.dev", "v1alpha1", cluster.namespace, "trainingruns", run.name
    )
    eventually(lambda: _assert(cluster.jobs() == []))
    assert cluster.log_lines(project)[-1] == "cancelled by the user"
    assert cluster.store.get_run(run.id).phase is Phase.CANCELLED


def test_run_waiting_too_long_for_a_node_is_flagged_once(
    cluster: Cluster, operator: object
) -> None:
    project, run = cluster.start_run(resources={"accelerator": "nvidia-h100-80gb"})
    eventually(lambda: cluster.job(run.name))
    unschedulable = {
        "phase": "Pending",
        "conditions": [
            {
                "type": "PodScheduled",
                "status": "False",
                "reason": "Unschedulable",
                "message": "0/3 nodes are available: 3 Insufficient nvidia.com/gpu.",
            }
        ],
    }
    cluster.add_pod(run.name, f"{run.name}-a", unschedulable, "2026-01-01T00:00:00Z")

    def flagged() -> dict:
        condition = _condition(cluster.training_run(run.name)["status"], "PendingTooLong")
        assert condition["status"] == "True" and condition["reason"] == "Unschedulable"
        return condition

    condition = eventually(flagged)
    assert "3 Insufficient nvidia.com/gpu" in condition["message"]
    time.sleep(4 * TIMER_INTERVAL)  # more timer ticks: still one line, one Event
    warnings = [line for line in cluster.log_lines(project) if "still waiting for a node" in line]
    assert len(warnings) == 1 and "3 Insufficient nvidia.com/gpu" in warnings[0]
    assert cluster.event_reasons(run.name).count("PendingTooLong") == 1
    assert cluster.training_run(run.name)["status"]["reason"] == "Unschedulable"


def test_training_run_without_a_recorded_run_gets_no_job(
    cluster: Cluster, operator: object
) -> None:
    _, run = cluster.start_run()
    eventually(lambda: cluster.job(run.name))
    stray = cluster.training_run(run.name)
    stray_spec = {**stray["spec"], "runId": "00000000-0000-4000-8000-000000000000"}
    cluster.custom.create_namespaced_custom_object(
        "training.automl.dev",
        "v1alpha1",
        cluster.namespace,
        "trainingruns",
        {
            "apiVersion": stray["apiVersion"],
            "kind": stray["kind"],
            "metadata": {"name": "by-hand"},
            "spec": stray_spec,
        },
    )
    eventually(lambda: _assert(cluster.event_reasons("by-hand") == ["RunNotRecorded"]))
    assert [job["metadata"]["name"] for job in cluster.jobs()] == [run.name]


def test_job_deleted_by_hand_fails_the_unfinished_run(cluster: Cluster, operator: object) -> None:
    project, run = start_training(cluster)
    cluster.batch.delete_namespaced_job(run.name, cluster.namespace)

    def failed() -> None:
        stored = cluster.store.get_run(run.id)
        assert stored.phase is Phase.FAILED
        assert stored.error == "the Job was deleted before the run finished"
        assert cluster.store.get_project(project.id).status == "failed"
        assert cluster.training_run(run.name)["status"]["reason"] == "JobDeleted"

    eventually(failed)
    assert cluster.log_lines(project)[-1] == (
        f"Job {run.name} failed: the Job was deleted before the run finished"
    )
