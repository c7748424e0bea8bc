"""Least privilege: the chart's Roles grant exactly the calls the agent's code makes."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import pytest
from tests.deploy import helm
from tests.deploy.conftest import REQUIRED
from tests.fixtures.cluster import Cluster
from training_core.domain import Phase, Run, run_name
from training_api.launchers.kubernetes import KubernetesLauncher
from training_core.runspec import RunSpec
from training_operator.permissions import as_rbac_rules

Install = Callable[..., list[dict[str, Any]]]
Grant = tuple[str, str, str]  # (api group, resource, verb)


def grants(rules: list[dict[str, Any]]) -> set[Grant]:
    return {
        (group, resource, verb)
        for rule in rules
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }


def role_of(objects: list[dict[str, Any]], component: str, kind: str = "Role") -> dict[str, Any]:
    [role] = [
        obj
        for obj in objects
        if obj["kind"] == kind and obj["metadata"]["labels"]["app.kubernetes.io/component"] == component
    ]
    return role


def bound_to_its_service_account(objects: list[dict[str, Any]], role: dict[str, Any]) -> bool:
    """The role is bound, by its kind and name, to the service account of the same name."""
    [binding] = [
        obj
        for obj in objects
        if obj["kind"] == role["kind"] + "Binding" and obj["roleRef"]["name"] == role["metadata"]["name"]
    ]
    accounts = {obj["metadata"]["name"] for obj in objects if obj["kind"] == "ServiceAccount"}
    [subject] = binding["subjects"]
    return binding["roleRef"]["kind"] == role["kind"] and subject["name"] in accounts and subject["name"] == role["metadata"]["name"]


def launcher_calls(cluster: Cluster, namespace: str, service_account: str) -> set[Grant]:
    """Every call the API's Kubernetes launcher makes through each of its operations, made
    with the token of the API's ServiceAccount: a call its Role lacks is refused (403)."""
    token = cluster.service_account_token(namespace, service_account)
    launcher = KubernetesLauncher(namespace, cluster.api_client(token))
    project_id = uuid.uuid4()
    spec = RunSpec(
        run_id=uuid.uuid4(),
        run_name=run_name(project_id, 1),
        project_id=project_id,
        dataset_url="gs://acme-automl-datasets/raw/dataset.zip",
        model_url="gs://acme-automl-datasets/models/acme_model.pth",
    )
    run = Run(id=spec.run_id, project_id=project_id, name=spec.run_name, phase=Phase.QUEUED)
    try:
        launcher.ping()
        launcher.start(spec)
        launcher.start(spec)  # a retried start finds the TrainingRun the first one made
        assert launcher.describe(run) is not None
        launcher.cancel(run)
        assert launcher.get(spec.run_name) is None
    finally:
        launcher.close()
    return cluster.calls_of(f"system:serviceaccount:{namespace}:{service_account}")


def test_api_role_grants_exactly_what_the_launcher_calls(
    install: Install, cluster: Cluster, namespace: str
) -> None:
    objects = install(REQUIRED)
    role = role_of(objects, "api")
    calls = launcher_calls(cluster, namespace, role["metadata"]["name"])
    assert calls, "the launcher made no calls"
    assert grants(role["rules"]) == calls
    assert bound_to_its_service_account(objects, role)


@pytest.mark.parametrize("watch_all", [False, True], ids=["namespaced", "cluster-wide"])
def test_operator_role_is_exactly_the_operators_permissions(watch_all: bool, install: Install) -> None:
    objects = install(helm.deep_merge(REQUIRED, {"operator": {"watchAllNamespaces": watch_all}}))
    role = role_of(objects, "operator", "ClusterRole" if watch_all else "Role")
    assert role["rules"] == as_rbac_rules()
    assert bound_to_its_service_account(objects, role)
