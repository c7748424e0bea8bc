"""A TrainingRun's life with the real operator and Kubernetes' own controllers: Job, pods,
phases, project status, logs, Events."""

from __future__ import annotations

import time
from typing import Any

import pytest
from training_core.domain import Phase, Project, Run
from training_core.runspec import EXIT_DO_NOT_RETRY, EXIT_MISCONFIGURED
from training_core.store import RunUpdate
from training_operator.manifests import GPU_RESOURCE, LABEL_PROJECT, LABEL_RUN

from tests.integration.operator.conftest import (
    TIMER_INTERVAL,
    TRAINER_IMAGE,
    Workspace,
    eventually,
    expect,
)


def test_created_run_gets_a_gpu_job_owned_by_it(workspace: Workspace, operator: object) -> None:
    project, run = workspace.start_run(
        resources={"gpu_count": 2, "accelerator": "nvidia-l4", "spot": True}
    )

    job = eventually(lambda: workspace.job(run.name))
    tr = workspace.training_run(run.name)
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
    assert pod["containers"][0]["image"] == TRAINER_IMAGE

    def pending() -> None:
        assert workspace.store.get_run(run.id).phase is Phase.PENDING
        assert workspace.training_run(run.name)["status"]["phase"] == "Pending"
        assert workspace.training_run(run.name)["status"]["jobName"] == run.name

    eventually(pending)
    # "waiting for a GPU node", or already the scheduler's reason when it was quicker.
    assert workspace.log_lines(project)[0].startswith(f"Job {run.name}: waiting for a")


def after_the_wait(lines: list[str], run: Run) -> list[str]:
    """The log lines after the first wait for a node (one line, or none when the pod ran
    before the operator first looked)."""
    waits = 1 if lines and lines[0].startswith(f"Job {run.name}: waiting for a") else 0
    return lines[waits:]


def start_training(workspace: Workspace, **spec: Any) -> tuple[Project, Run]:
    """A run whose pod the scheduler placed and the kubelet stand-in runs."""
    project, run = workspace.start_run(**spec)
    eventually(lambda: expect(workspace.store.get_run(run.id).phase is Phase.RUNNING))
    return project, run


def test_running_then_succeeded_follows_the_job_and_shows_progress(
    workspace: Workspace, operator: object
) -> None:
    project, run = start_training(workspace, epochs=10)
    eventually(lambda: expect(workspace.training_run(run.name)["status"]["phase"] == "Running"))
    [pod] = workspace.pods(run.name)
    assert pod["spec"]["nodeName"] == "gke-gpu-t4-pool-1"  # placed by the scheduler

    # The trainer reports its progress in the store; the TrainingRun shows it to kubectl.
    workspace.store.update_run(
        run.id, RunUpdate(progress={"epoch": 3, "total_epochs": 10, "val_accuracy": 0.81})
    )

    def progress() -> None:
        shown = workspace.training_run(run.name)["status"]["progress"]
        assert shown["display"] == "3/10" and shown["valAccuracy"] == 0.81

    eventually(progress)
    workspace.end_pods(run, 0)

    def succeeded() -> None:
        assert workspace.store.get_run(run.id).phase is Phase.SUCCEEDED
        assert workspace.store.get_project(project.id).status == "trained"
        status = workspace.training_run(run.name)["status"]
        assert status["phase"] == "Succeeded" and status["modelUrl"] == run.model_url
        assert status["completionTime"]

    eventually(succeeded)
    assert workspace.job(run.name)["status"]["succeeded"] == 1
    assert after_the_wait(workspace.log_lines(project), run) == [
        f"Job {run.name}: training started",
        f"Job {run.name} succeeded",
    ]
    eventually(lambda: expect(workspace.event_reasons(run.name).count("Completed") == 1))
    assert workspace.event_reasons(run.name).count("PodRunning") == 1


def test_outcome_written_by_the_trainer_is_kept(workspace: Workspace, operator: object) -> None:
    project, run = start_training(workspace)
    # The trainer writes its outcome, then exits with the code that fails the Job at once.
    workspace.store.update_run(
        run.id, RunUpdate(phase=Phase.FAILED, error="dataset has one class only")
    )
    workspace.store.set_project_status(project.id, "failed")
    workspace.end_pods(run, EXIT_DO_NOT_RETRY)

    def shows_trainer_outcome() -> None:
        status = workspace.training_run(run.name)["status"]
        assert status["phase"] == "Failed"
        assert status["message"] == "dataset has one class only"

    eventually(shows_trainer_outcome)
    assert workspace.store.get_run(run.id).error == "dataset has one class only"
    assert workspace.log_lines(project)[-1] == f"Job {run.name}: training started"


def _job_failed_condition(workspace: Workspace, run: Run) -> dict[str, Any]:
    conditions = workspace.job(run.name)["status"].get("conditions") or []
    [failed] = [c for c in conditions if c["type"] == "Failed" and c["status"] == "True"]
    return failed


@pytest.mark.parametrize(
    ("spec", "exit_code", "reason", "expected"),
    [
        pytest.param(
            {}, EXIT_DO_NOT_RETRY, "PodFailurePolicy",
            "the trainer refused its input (exit code 65)", id="bad-input-fails-at-once",
        ),
        pytest.param(
            {}, EXIT_MISCONFIGURED, "PodFailurePolicy",
            "the trainer's settings are malformed (exit code 2)", id="bad-settings-fail-at-once",
        ),
        pytest.param(
            {"backoff_limit": 1}, 1, "BackoffLimitExceeded",
            "the trainer's pod failed 2 time(s), more than the backoff limit of 1",
            id="crash-retried-up-to-the-backoff-limit",
        ),
        pytest.param(
            {"active_deadline_seconds": 60}, None, "DeadlineExceeded",
            "the run exceeded its deadline of 60 seconds",
            id="deadline-exceeded", marks=pytest.mark.slow,
        ),
    ],
)
def test_failed_job_fails_run_and_project(
    workspace: Workspace, operator: object, spec: dict[str, Any], exit_code: int | None,
    reason: str, expected: str,
) -> None:
    project, run = start_training(workspace, **spec)
    if exit_code is not None:
        workspace.end_pods(run, exit_code)

    def failed() -> None:
        stored = workspace.store.get_run(run.id)
        assert stored.phase is Phase.FAILED and expected in (stored.error or "")
        assert workspace.store.get_project(project.id).status == "failed"
        status = workspace.training_run(run.name)["status"]
        assert status["phase"] == "Failed" and status["reason"] == reason
        assert any(c["type"] == "Failed" and c["reason"] == reason for c in status["conditions"])

    eventually(failed, timeout=120)
    kubernetes_says = _job_failed_condition(workspace, run)
    assert kubernetes_says["reason"] == reason
    last = workspace.store.get_logs(project.id, limit=1)[0]
    assert last.log_level == "error"
    assert expected in last.message and kubernetes_says["message"] in last.message
    eventually(lambda: expect(workspace.event_reasons(run.name).count(reason) == 1))
    # Failed pods stay for the record, one per try; a pod past the deadline is stopped.
    tries = {"BackoffLimitExceeded": 2, "DeadlineExceeded": 0}.get(reason, 1)
    eventually(lambda: expect(len(workspace.pods(run.name)) == tries))


def test_preempted_pod_is_not_counted_and_the_run_runs_again(
    workspace: Workspace, operator: object
) -> None:
    project, run = start_training(workspace)
    [first] = workspace.pods(run.name)
    workspace.kubelet.preempt(first["metadata"]["name"])

    def running_on_a_new_pod() -> None:
        assert len(workspace.pods(run.name)) == 2
        assert workspace.store.get_run(run.id).phase is Phase.RUNNING
        status = workspace.training_run(run.name)["status"]
        assert status["phase"] == "Running"
        assert {"type": "Preempted", "status": "False", "reason": "Resumed"}.items() <= _condition(
            status, "Preempted"
        ).items()

    eventually(running_on_a_new_pod)
    assert workspace.store.get_project(project.id).status == "training"  # not a failure
    assert not workspace.job(run.name)["status"].get("failed")  # the Ignore rule: not counted
    lines = after_the_wait(workspace.log_lines(project), run)
    assert lines[1].startswith(f"Job {run.name}: preempted (node is being reclaimed)")
    assert lines == [
        f"Job {run.name}: training started",
        lines[1],
        f"Job {run.name}: training started",
    ]


def test_suspend_stops_the_pod_and_resume_runs_a_new_one(
    workspace: Workspace, operator: object
) -> None:
    project, run = start_training(workspace)
    workspace.patch_run(run.name, {"spec": {"suspend": True}})

    def suspended() -> None:
        assert workspace.job(run.name)["spec"]["suspend"] is True
        assert workspace.pods(run.name) == []  # the Job controller removed it
        status = workspace.training_run(run.name)["status"]
        assert status["phase"] == "Pending" and status["reason"] == "Suspended"
        assert {"type": "Suspended", "status": "True"}.items() <= _condition(
            status, "Suspended"
        ).items()
        assert workspace.store.get_run(run.id).phase is Phase.PENDING

    eventually(suspended)
    assert f"Job {run.name}: suspended (spec.suspend)" in workspace.log_lines(project)

    workspace.patch_run(run.name, {"spec": {"suspend": False}})

    def resumed() -> None:
        assert workspace.job(run.name)["spec"]["suspend"] is False
        assert len(workspace.pods(run.name)) == 1
        status = workspace.training_run(run.name)["status"]
        assert status["phase"] == "Running"
        assert _condition(status, "Suspended")["status"] == "False"
        assert workspace.store.get_run(run.id).phase is Phase.RUNNING

    eventually(resumed)
    assert workspace.log_lines(project)[-1] == f"Job {run.name}: training started"


def _condition(status: dict, kind: str) -> dict:
    found = [c for c in status.get("conditions", []) if c["type"] == kind]
    assert found, f"no {kind} condition in {status.get('conditions')}"
    return found[0]


def test_deleting_an_unfinished_run_cancels_it(workspace: Workspace, operator: object) -> None:
    project, run = start_training(workspace)
    workspace.delete_run(run.name)

    def cancelled() -> None:
        assert workspace.store.get_run(run.id).phase is Phase.CANCELLED
        assert workspace.store.get_project(project.id).status == "pending_training"
        assert workspace.jobs() == [] and workspace.pods(run.name) == []
        assert workspace.training_runs() == []

    eventually(cancelled)
    assert workspace.log_lines(project)[-1] == f"TrainingRun {run.name} was deleted: run cancelled"


def test_deleting_a_run_the_api_cancelled_writes_nothing_more(
    workspace: Workspace, operator: object
) -> None:
    project, run = start_training(workspace)
    workspace.store.update_run(run.id, RunUpdate(phase=Phase.CANCELLED))
    workspace.store.set_project_status(project.id, "pending_training")
    workspace.store.log(project.id, "cancelled by the user")
    workspace.delete_run(run.name)
    eventually(lambda: expect(workspace.jobs() == [] and workspace.training_runs() == []))
    assert workspace.log_lines(project)[-1] == "cancelled by the user"
    assert workspace.store.get_run(run.id).phase is Phase.CANCELLED


@pytest.mark.parametrize("pending_timeout", [3.0])
def test_run_no_node_fits_is_flagged_once_with_the_schedulers_reason(
    workspace: Workspace, operator: object
) -> None:
    project, run = workspace.start_run(resources={"accelerator": "nvidia-h100-80gb"})

    def flagged() -> dict:
        condition = _condition(workspace.training_run(run.name)["status"], "PendingTooLong")
        assert condition["status"] == "True" and condition["reason"] == "Unschedulable"
        return condition

    condition = eventually(flagged)
    [pod] = workspace.pods(run.name)
    [scheduled] = [c for c in pod["status"]["conditions"] if c["type"] == "PodScheduled"]
    # The real scheduler's own words: no node has the H100 label the pod selects.
    assert "didn't match Pod's node affinity/selector" in scheduled["message"]
    assert scheduled["message"] in condition["message"]
    time.sleep(4 * TIMER_INTERVAL)  # more timer ticks: still one line, one Event
    warnings = [line for line in workspace.log_lines(project) if "still waiting for a node" in line]
    assert len(warnings) == 1 and scheduled["message"] in warnings[0]
    assert workspace.event_reasons(run.name).count("PendingTooLong") == 1
    assert workspace.training_run(run.name)["status"]["reason"] == "Unschedulable"


def test_training_run_without_a_recorded_run_gets_no_job(
    workspace: Workspace, operator: object
) -> None:
    _, run = workspace.start_run()
    eventually(lambda: workspace.job(run.name))
    stray = workspace.training_run(run.name)
    stray_spec = {**stray["spec"], "runId": "00000000-0000-4000-8000-000000000000"}
    workspace.custom.create_namespaced_custom_object(
        "training.automl.dev",
        "v1alpha1",
        workspace.namespace,
        "trainingruns",
        {
            "apiVersion": stray["apiVersion"],
            "kind": stray["kind"],
            "metadata": {"name": "by-hand"},
            "spec": stray_spec,
        },
    )
    eventually(lambda: expect(workspace.event_reasons("by-hand") == ["RunNotRecorded"]))
    assert [job["metadata"]["name"] for job in workspace.jobs()] == [run.name]


def test_job_deleted_by_hand_fails_the_unfinished_run(
    workspace: Workspace, operator: object
) -> None:
    project, run = start_training(workspace)
    workspace.kubectl("delete", "job", run.name)  # what someone tidying up by hand types

    def failed() -> None:
        stored = workspace.store.get_run(run.id)
        assert stored.phase is Phase.FAILED
        assert stored.error == "the Job was deleted before the run finished"
        assert workspace.store.get_project(project.id).status == "failed"
        assert workspace.training_run(run.name)["status"]["reason"] == "JobDeleted"
        assert workspace.pods(run.name) == []  # collected with their Job

    eventually(failed)
    assert workspace.log_lines(project)[-1] == (
        f"Job {run.name} failed: the Job was deleted before the run finished"
    )
