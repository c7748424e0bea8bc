"""A run on several nodes with the real operator and Kubernetes' own controllers: an Indexed
Job and a headless Service, pods that know their index and node 0's address, the group made
again when a worker dies, a preempted node never counted, and everything gone with the run."""

from __future__ import annotations

from typing import Any

from training_core.domain import Phase, Project, Run
from training_operator.groups import COMPLETION_INDEX

from tests.integration.operator.conftest import ACCELERATOR, Workspace, eventually, expect

NODES = 2


def start_group(workspace: Workspace, **spec: Any) -> tuple[Project, Run]:
    """A run on two nodes whose pods both run (the kubelet stand-in runs them)."""
    project, run = workspace.start_run(
        resources={"accelerator": ACCELERATOR, "nodes": NODES, "gpu_count": 2}, **spec
    )
    eventually(lambda: expect(workspace.store.get_run(run.id).phase is Phase.RUNNING), 60)
    eventually(lambda: expect(len(running_pods(workspace, run)) == NODES))
    return project, run


def by_index(pods: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {pod["metadata"]["annotations"][COMPLETION_INDEX]: pod for pod in pods}


def running_pods(workspace: Workspace, run: Run) -> list[dict[str, Any]]:
    return [pod for pod in workspace.pods(run.name) if pod["status"].get("phase") == "Running"]


def test_a_run_on_two_nodes_is_an_indexed_job_whose_pods_find_node_0(
    workspace: Workspace, operator: object
) -> None:
    project, run = start_group(workspace)
    owner = {"kind": "TrainingRun", "name": run.name,
             "uid": workspace.training_run(run.name)["metadata"]["uid"]}

    job = workspace.job(run.name)
    assert (job["spec"]["completionMode"], job["spec"]["completions"], job["spec"]["parallelism"]) == (
        "Indexed", NODES, NODES,
    )
    [service] = workspace.services()
    assert service["metadata"]["name"] == run.name
    assert owner.items() <= service["metadata"]["ownerReferences"][0].items()
    assert service["spec"]["clusterIP"] == "None" and service["spec"]["publishNotReadyAddresses"]

    pods = by_index(workspace.pods(run.name))
    assert sorted(pods) == ["0", "1"]
    port = str(job["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"])
    for index, pod in pods.items():
        # The Job controller names each pod's host after its index, under the Service.
        assert pod["spec"]["hostname"] == f"{run.name}-{index}"
        assert pod["spec"]["subdomain"] == run.name
        env = workspace.kubelet.environment_of(pod["metadata"]["name"])
        assert env["JOB_COMPLETION_INDEX"] == index  # resolved from the pod's annotation
        assert env["HOSTNAME"] == f"{run.name}-{index}"
        # <job>-0.<service>, which cluster DNS resolves to node 0 (here: this machine).
        declared = {e["name"]: e.get("value") for e in pod["spec"]["containers"][0]["env"]}
        assert declared["TRAINING_MASTER_ADDR"] == f"{run.name}-0.{run.name}"
        assert env["TRAINING_MASTER_ADDR"] == "127.0.0.1"
        assert env["TRAINING_MASTER_PORT"] == port and env["TRAINING_NODES"] == str(NODES)

    # What cluster DNS serves the names from: the real EndpointSlice controller lists both
    # pods under their host names.
    def endpoints() -> None:
        slices = workspace.api.sanitize_for_serialization(
            workspace.discovery.list_namespaced_endpoint_slice(
                workspace.namespace, label_selector=f"kubernetes.io/service-name={run.name}"
            ).items
        )
        hostnames = {e.get("hostname") for s in slices for e in s.get("endpoints") or []}
        assert hostnames == {f"{run.name}-0", f"{run.name}-1"}

    eventually(endpoints)
    eventually(lambda: expect(workspace.training_run(run.name)["status"].get("worldSize") == 4))

    workspace.end_pods(run, 0)

    def succeeded() -> None:
        assert workspace.store.get_run(run.id).phase is Phase.SUCCEEDED
        assert workspace.training_run(run.name)["status"]["phase"] == "Succeeded"

    eventually(succeeded)
    assert workspace.job(run.name)["status"]["succeeded"] == NODES


def test_a_worker_that_dies_makes_the_whole_group_again_counting_one_failure(
    workspace: Workspace, operator: object
) -> None:
    project, run = start_group(workspace, backoff_limit=1)
    workspace.end_node_once(run, 0, 75)  # the peer of a worker that died asks to be retried
    workspace.end_node_once(run, 1, 1)  # the worker crashed

    def made_again() -> None:
        assert len(workspace.pods(run.name)) == 2 * NODES
        assert len(running_pods(workspace, run)) == NODES
        assert workspace.job(run.name)["status"].get("failed") == 1  # the crash, not its peer

    eventually(made_again, 60)
    assert workspace.store.get_run(run.id).phase is Phase.RUNNING
    workspace.end_pods(run, 0)
    eventually(lambda: expect(workspace.store.get_run(run.id).phase is Phase.SUCCEEDED))
    assert workspace.store.get_project(project.id).status == "trained"


def test_a_preempted_node_costs_the_group_nothing(workspace: Workspace, operator: object) -> None:
    project, run = start_group(workspace, backoff_limit=0)  # any counted failure would end it
    first = by_index(workspace.pods(run.name))
    workspace.end_node_once(run, 0, 75)  # node 0 loses its peer
    workspace.kubelet.preempt(first["1"]["metadata"]["name"], grace_seconds=5)

    def running_again() -> None:
        assert len(workspace.pods(run.name)) == 2 * NODES
        assert len(running_pods(workspace, run)) == NODES
        assert workspace.training_run(run.name)["status"]["phase"] == "Running"

    eventually(running_again, 60)
    assert not workspace.job(run.name)["status"].get("failed")
    assert workspace.store.get_project(project.id).status == "training"
    assert any(line.startswith(f"Job {run.name}: preempted") for line in workspace.log_lines(project))


def test_deleting_the_run_removes_its_job_pods_and_service(
    workspace: Workspace, operator: object
) -> None:
    project, run = start_group(workspace)
    workspace.delete_run(run.name)

    def gone() -> None:
        assert workspace.store.get_run(run.id).phase is Phase.CANCELLED
        assert workspace.training_runs() == [] and workspace.jobs() == []
        assert workspace.services() == [] and workspace.pods(run.name) == []

    eventually(gone, 60)
    calls = workspace.cluster.calls_of(workspace.operator_user)
    assert {("", "services", "create"), ("", "services", "delete")} <= calls


def test_a_restarted_operator_keeps_the_group_and_the_garbage_collector_alone_removes_it(
    workspace: Workspace, run_operator: Any
) -> None:
    with run_operator():
        _, run = start_group(workspace)
    with run_operator():  # resumes the run: finds the Service and Job it made, makes no other
        eventually(lambda: expect(
            ("", "services", "get") in workspace.cluster.calls_of(workspace.operator_user)
        ))
    assert [s["metadata"]["name"] for s in workspace.services()] == [run.name]
    assert [j["metadata"]["name"] for j in workspace.jobs()] == [run.name]
    # The operator is gone (its finalizer with it): Kubernetes' own garbage collector follows
    # the owner references from the run to the Job and Service, and from the Job to its pods.
    workspace.patch_run(run.name, {"metadata": {"finalizers": None}})
    workspace.delete_run(run.name)

    def collected() -> None:
        assert workspace.training_runs() == [] and workspace.jobs() == []
        assert workspace.services() == [] and workspace.pods(run.name) == []

    eventually(collected, 60)
