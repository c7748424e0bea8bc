"""Runs of several processes: one pod with several GPUs, or an Indexed Job of several nodes
and its headless Service; and the status of a group of pods. On plain dicts."""

from __future__ import annotations

from typing import Any

import kubernetes_validate
import pytest
from training_core.domain import Phase
from training_core.runspec import EXIT_RETRY, Resources
from training_operator import groups, job_status, manifests
from training_operator.job_status import Condition

from tests.unit.operator.test_crd import K8S_VERSION
from tests.unit.operator.test_job_status import DISRUPTED, UNSCHEDULABLE, pod
from tests.unit.operator.test_manifests import CONFIG, container, job_for, run_resource

NODES = Resources(nodes=3, gpu_count=8, accelerator="nvidia-h100-80gb")


def env_of(job: dict[str, Any]) -> dict[str, str]:
    return {item["name"]: item.get("value") for item in container(job)["env"]}


def shm_of(job: dict[str, Any]) -> str:
    [dshm] = [v for v in job["spec"]["template"]["spec"]["volumes"] if v["name"] == "dshm"]
    return dshm["emptyDir"]["sizeLimit"]


# -- one node, several GPUs ----------------------------------------------------------------------
def test_one_node_with_several_gpus_is_one_pod_with_shared_memory_for_each_process() -> None:
    job = job_for(resources=Resources(gpu_count=4))
    assert "completionMode" not in job["spec"] and "subdomain" not in job["spec"]["template"]["spec"]
    assert container(job)["resources"]["limits"]["nvidia.com/gpu"] == "4"
    assert env_of(job)["TRAINING_PROCESSES_PER_NODE"] == "4"
    assert "TRAINING_MASTER_ADDR" not in env_of(job)
    assert shm_of(job) == "8Gi"  # 2Gi for each of the 4 processes
    assert manifests.service_manifest(run_resource(resources=Resources(gpu_count=4)), CONFIG) is None


@pytest.mark.parametrize(
    ("per_process", "resources", "expected"),
    [
        ("2Gi", Resources(), "2Gi"),
        ("2Gi", Resources(gpu_count=0), "2Gi"),
        ("1.5Gi", Resources(gpu_count=0, processes=3), "4.5Gi"),
        ("512Mi", Resources(gpu_count=8, processes=2), "1024Mi"),
    ],
)
def test_shared_memory_grows_with_the_processes(
    per_process: str, resources: Resources, expected: str
) -> None:
    assert groups.shm_size(per_process, resources) == expected


# -- several nodes ----------------------------------------------------------------------------------
def test_several_nodes_are_an_indexed_job_of_one_pod_per_node() -> None:
    job = job_for(resources=NODES, backoff_limit=2)
    kubernetes_validate.validate(job, K8S_VERSION, strict=True)
    spec = job["spec"]
    assert (spec["completionMode"], spec["completions"], spec["parallelism"]) == ("Indexed", 3, 3)
    assert spec["backoffLimit"] == 6  # a group failure may fail each of its 3 pods
    pod_spec = spec["template"]["spec"]
    assert pod_spec["subdomain"] == "train-p1-1"  # the Service's name
    assert container(job)["resources"]["limits"]["nvidia.com/gpu"] == "8"  # per node
    env = env_of(job)
    assert env["TRAINING_NODES"] == "3" and env["TRAINING_PROCESSES_PER_NODE"] == "8"
    # Node 0's host name (<job>-<index>) under the Service's subdomain.
    assert env["TRAINING_MASTER_ADDR"] == "train-p1-1-0.train-p1-1"
    assert env["TRAINING_MASTER_PORT"] == str(CONFIG.master_port) == "29500"
    assert container(job)["ports"] == [
        {"name": "rendezvous", "containerPort": 29500, "protocol": "TCP"}
    ]
    assert shm_of(job) == "16Gi"


def test_a_group_restarts_when_a_worker_dies_and_never_counts_its_peers_or_a_preemption() -> None:
    # One node's rules (preemption ignored, bad input or settings fail at once), and one more.
    one_node = job_for()["spec"]["podFailurePolicy"]["rules"]
    assert {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]} in one_node
    assert job_for(resources=NODES)["spec"]["podFailurePolicy"]["rules"] == [
        *one_node,
        {
            "action": "Ignore",
            "onExitCodes": {"containerName": "trainer", "operator": "In", "values": [EXIT_RETRY]},
        },
    ]


def test_the_master_port_is_a_setting() -> None:
    config = CONFIG.model_copy(update={"master_port": 31234})
    job = manifests.job_manifest(run_resource(resources=NODES), config)
    assert env_of(job)["TRAINING_MASTER_PORT"] == "31234"
    assert container(job)["ports"][0]["containerPort"] == 31234
    service = manifests.service_manifest(run_resource(resources=NODES), config)
    assert service is not None and service["spec"]["ports"][0]["port"] == 31234


def test_the_service_is_headless_selects_the_runs_pods_and_is_owned_by_the_run() -> None:
    resource = run_resource(resources=NODES)
    service = manifests.service_manifest(resource, CONFIG)
    assert service is not None
    kubernetes_validate.validate(service, K8S_VERSION, strict=True)
    job = manifests.job_manifest(resource, CONFIG)
    assert service["metadata"] == job["metadata"]  # name, namespace, labels, owner: the run's
    assert service["spec"] == {
        "clusterIP": "None",
        "selector": {manifests.LABEL_RUN: "train-p1-1"},
        "publishNotReadyAddresses": True,
        "ports": [{"name": "rendezvous", "port": 29500, "targetPort": 29500, "protocol": "TCP"}],
    }
    assert service["spec"]["selector"].items() <= job["spec"]["template"]["metadata"]["labels"].items()


# -- a group's status ---------------------------------------------------------------------------------
GROUP_JOB = {"spec": {"suspend": False, "parallelism": 2, "completions": 2, "backoffLimit": 6}}


def node(index: int, created: str, phase: str = "Pending", *conditions: dict[str, str]) -> dict[str, Any]:
    found = pod(f"p{index}-{created[-3:-1]}", created, phase, *conditions)
    found["metadata"]["annotations"] = {groups.COMPLETION_INDEX: str(index)}
    return found


def group_status(pods: list[dict[str, Any]], **status: Any) -> job_status.StatusUpdate:
    return job_status.run_status({**GROUP_JOB, "status": status}, pods)


def test_a_group_runs_once_every_node_runs() -> None:
    one_running = [node(0, "2026-01-01T00:00:00Z", "Running"), node(1, "2026-01-01T00:00:01Z")]
    waiting = group_status(one_running, active=2, ready=1)
    assert (waiting.phase, waiting.reason) == (Phase.PENDING, "JobCreated")
    assert waiting.message == "waiting for GPU nodes (1 of 2 pods running)"
    both = [node(0, "2026-01-01T00:00:00Z", "Running"), node(1, "2026-01-01T00:00:01Z", "Running")]
    assert group_status(both, active=2).phase is Phase.RUNNING
    assert group_status([], active=2, ready=2).phase is Phase.RUNNING
    # Node 0 finished first; node 1 still writes: the run still runs.
    finishing = [node(0, "2026-01-01T00:00:00Z", "Succeeded"), node(1, "2026-01-01T00:00:01Z", "Running")]
    assert group_status(finishing, active=1, ready=1, succeeded=1).phase is Phase.RUNNING


def test_a_group_made_again_waits_for_all_its_new_pods() -> None:
    pods = [
        node(0, "2026-01-01T00:00:00Z", "Failed"),
        node(1, "2026-01-01T00:00:01Z", "Failed"),
        node(0, "2026-01-01T00:05:00Z", "Running"),
        node(1, "2026-01-01T00:05:01Z"),
    ]
    assert [p["status"]["phase"] for p in job_status.current_pods(pods)] == ["Running", "Pending"]
    assert group_status(pods, active=2, failed=1).phase is Phase.PENDING
    pods[3]["status"]["phase"] = "Running"
    assert group_status(pods, active=2, failed=1).phase is Phase.RUNNING


def test_any_node_that_no_node_fits_says_why() -> None:
    pods = [
        node(0, "2026-01-01T00:00:00Z", "Running"),
        node(1, "2026-01-01T00:00:01Z", "Pending", UNSCHEDULABLE),
    ]
    update = group_status(pods, active=2)
    assert (update.phase, update.reason) == (Phase.PENDING, "Unschedulable")
    assert job_status.unschedulable_message(pods) == UNSCHEDULABLE["message"]


def test_a_preempted_node_sends_the_group_back_to_pending_until_all_run_again() -> None:
    pods = [
        node(0, "2026-01-01T00:00:00Z", "Failed"),
        node(1, "2026-01-01T00:00:01Z", "Failed", DISRUPTED),
        node(0, "2026-01-01T00:05:00Z", "Running"),
        node(1, "2026-01-01T00:05:01Z"),
    ]
    update = group_status(pods, active=2)
    assert (update.phase, update.reason) == (Phase.PENDING, "Preempted")
    pods[3]["status"]["phase"] = "Running"
    resumed = group_status(pods, active=2)
    assert resumed.phase is Phase.RUNNING
    assert Condition("Preempted", "False", "Resumed", "running on a new node") in resumed.conditions


def test_a_failed_group_fails_the_run() -> None:
    update = job_status.run_status(
        {**GROUP_JOB, "status": {"failed": 7, "conditions": [
            {"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded", "message": "m"}
        ]}},
    )
    assert (update.phase, update.reason) == (Phase.FAILED, "BackoffLimitExceeded")
    assert "more than the backoff limit of 6" in update.message
