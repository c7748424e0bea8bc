"""Fixtures of the deployment tests: the chart installed with the real helm CLI into a real
control plane (tests/fixtures/cluster.py), one namespace per install."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from tests.deploy import helm
from tests.fixtures.cluster import ADMIN_TOKEN, Cluster

NAMESPACE = "training"

# What every install must be given (the chart has no safe default for them).
REQUIRED = {
    "config": {
        "BUCKET_URL": "gs://acme-automl-datasets",
        "SUPABASE_URL": "https://abcdefghijklmnop.supabase.co",
    }
}

# Every optional feature on: GPU + spot, ingress with TLS, monitoring, network policies.
EVERYTHING_ON = helm.deep_merge(
    REQUIRED,
    {
        "imageRegistry": "europe-west4-docker.pkg.dev/acme-ml/training-agent",
        "imagePullSecrets": [{"name": "registry-credentials"}],
        "config": {"MAX_DOWNLOAD_BYTES": 53687091200, "DEFAULT_LEARNING_RATE": 0.0005},
        "api": {
            "replicas": 3,
            "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "web", "effect": "NoSchedule"}],
            "serviceAccount": {"annotations": {"example.com/owner": "ml-platform"}},
            "ingress": {
                "enabled": True,
                "className": "gce",
                "host": "training.acme.example",
                "tlsSecretName": "training-acme-tls",
                "annotations": {"kubernetes.io/ingress.global-static-ip-name": "training-ip"},
            },
        },
        "operator": {"nodeSelector": {"cloud.google.com/gke-nodepool": "system"}},
        "trainer": {
            "gpu": {"count": 2, "acceleratorType": "nvidia-tesla-a100", "spot": True},
            "serviceAccount": {"gcpServiceAccount": "training-jobs@acme-ml.iam.gserviceaccount.com"},
            "priorityClassName": "training-batch",
        },
        "serviceMonitor": {"enabled": True, "labels": {"release": "prometheus"}},
        "networkPolicy": {"enabled": True},
    },
)

# The Prometheus Operator's CRD, as far as the API server needs it to accept a ServiceMonitor
# (its full schema is checked offline against servicemonitor.schema.json).
SERVICE_MONITOR_CRD = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": "servicemonitors.monitoring.coreos.com"},
    "spec": {
        "group": "monitoring.coreos.com",
        "scope": "Namespaced",
        "names": {"plural": "servicemonitors", "singular": "servicemonitor", "kind": "ServiceMonitor",
                  "listKind": "ServiceMonitorList"},
        "versions": [{
            "name": "v1", "served": True, "storage": True,
            "schema": {"openAPIV3Schema": {"type": "object", "properties": {
                "spec": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}}}},
        }],
    },
}
_namespaces = itertools.count(1)


@pytest.fixture(scope="session")
def cluster(kube_cluster: Cluster) -> Cluster:
    """The session's control plane, with the Prometheus Operator's CRD the chart can use."""
    with kube_cluster.api_client() as api:
        extensions = client.ApiextensionsV1Api(api)
        if not extensions.list_custom_resource_definition(
            field_selector=f"metadata.name={SERVICE_MONITOR_CRD['metadata']['name']}"
        ).items:
            extensions.create_custom_resource_definition(SERVICE_MONITOR_CRD)
    return kube_cluster


@pytest.fixture(scope="session")
def rendered(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, list[dict[str, Any]]]]:
    """The objects of one install with the defaults and one with everything on, for the
    tests that only read them."""
    out, installed = {}, []
    for name, values in {"defaults": REQUIRED, "everything-on": EVERYTHING_ON}.items():
        namespace = cluster.create_namespace(f"{NAMESPACE}-{name}")
        kubeconfig = cluster.kubeconfig(tmp_path_factory.mktemp(name) / "kubeconfig", ADMIN_TOKEN, namespace)
        out[name] = helm.install(values, kubeconfig, namespace)
        installed.append((kubeconfig, namespace))
    yield out
    for kubeconfig, namespace in installed:
        helm.uninstall(kubeconfig, namespace)


@pytest.fixture
def namespace(cluster: Cluster) -> str:
    """A fresh namespace for one test's install."""
    return cluster.create_namespace(f"{NAMESPACE}-{next(_namespaces)}")


@pytest.fixture
def kubeconfig(cluster: Cluster, namespace: str, tmp_path: Path) -> Path:
    """An admin's kubeconfig (Helm installs as the platform team would)."""
    return cluster.kubeconfig(tmp_path / "kubeconfig", ADMIN_TOKEN, namespace)


@pytest.fixture
def install(kubeconfig: Path, namespace: str) -> Iterator[Callable[..., list[dict[str, Any]]]]:
    """Install the chart with some values; returns the rendered objects (CRDs excluded).
    The release is uninstalled after the test."""
    installed = []

    def _install(values: dict[str, Any]) -> list[dict[str, Any]]:
        objects = helm.install(values, kubeconfig, namespace)
        installed.append(True)
        return objects

    yield _install
    if installed:
        helm.uninstall(kubeconfig, namespace)
