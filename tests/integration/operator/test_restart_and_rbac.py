"""A restarted operator converges without duplicates; its calls stay within its RBAC rules."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from training_core.domain import Phase
from training_operator.kube import USER_AGENT
from training_operator.permissions import CALL_PERMISSIONS, allowed

from tests.fixtures.kube import Call, KubeApi
from tests.integration.operator.conftest import Cluster, eventually
from tests.integration.operator.test_lifecycle import RUNNING_POD, _assert

MERGE = "application/merge-patch+json"


def operator_calls(kube_api: KubeApi) -> set[tuple[str, str, str]]:
    return {
        (call.group, call.resource, call.verb)
        for call in kube_api.calls()
        if call.user_agent.startswith(("kopf/", USER_AGENT))
    }


def test_operator_restarted_mid_run_converges_without_duplicates(
    cluster: Cluster, run_operator: Callable[[], Any]
) -> None:
    with run_operator():
        project, run = cluster.start_run()
        eventually(lambda: _assert(cluster.store.get_run(run.id).phase is Phase.PENDING))

    # While the operator is down the pod starts: the restarted operator catches up once.
    cluster.add_pod(run.name, f"{run.name}-a", RUNNING_POD, "2026-01-01T00:00:00Z")
    cluster.set_job_status(run.name, {"active": 1, "ready": 1})
    with run_operator():
        eventually(lambda: _assert(cluster.store.get_run(run.id).phase is Phase.RUNNING))
        eventually(lambda: _assert(cluster.training_run(run.name)["status"]["phase"] == "Running"))

    with run_operator():  # and once more, with nothing new to do
        eventually(lambda: _assert(len(cluster.event_reasons(run.name)) == 2))

    assert [job["metadata"]["name"] for job in cluster.jobs()] == [run.name]
    assert cluster.log_lines(project) == [
        f"Job {run.name}: waiting for a GPU node",
        f"Job {run.name}: training started",
    ]
    assert sorted(cluster.event_reasons(run.name)) == ["JobCreated", "PodRunning"]


def test_every_call_of_a_whole_run_is_covered_by_the_rbac_rules(
    cluster: Cluster, operator: object, kube_api: KubeApi
) -> None:
    _, run = cluster.start_run()
    eventually(lambda: _assert(cluster.store.get_run(run.id).phase is Phase.PENDING))
    cluster.add_pod(run.name, f"{run.name}-a", RUNNING_POD, "2026-01-01T00:00:00Z")
    eventually(lambda: _assert(cluster.store.get_run(run.id).phase is Phase.RUNNING))
    cluster.custom.patch_namespaced_custom_object(
        "training.automl.dev",
        "v1alpha1",
        cluster.namespace,
        "trainingruns",
        run.name,
        {"spec": {"suspend": True}},
        _content_type=MERGE,
    )
    eventually(lambda: _assert(cluster.job(run.name)["spec"]["suspend"] is True))
    cluster.custom.delete_namespaced_custom_object(
        "training.automl.dev", "v1alpha1", cluster.namespace, "trainingruns", run.name
    )
    eventually(
        lambda: _assert(
            cluster.store.get_run(run.id).phase is Phase.CANCELLED and not cluster.jobs()
        )
    )

    calls = operator_calls(kube_api)
    assert {call for call in calls if not allowed(*call)} == set()
    granted = {(r.api_group, r.resource, verb) for r in CALL_PERMISSIONS for verb in r.verbs}
    assert granted - calls == set(), "rules the operator never needed"


def test_calls_are_recorded_as_rbac_sees_them(kube_api: KubeApi) -> None:
    kube_api.create({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "settings"}})
    assert (
        Call("create", "", "configmaps", "training", None, kube_api.calls()[-1].user_agent)
        in kube_api.calls()
    )
