"""Fixtures of the deployment tests: a Kubernetes API to install the chart into."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.deploy import helm
from tests.deploy.kube_api import KubeAPI, running_kube_api

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


@pytest.fixture(scope="session")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[dict[str, Any]]]:
    """The objects of one install with the defaults and one with everything on, for the
    tests that only read them (each install takes a second or two)."""
    out = {}
    for name, values in {"defaults": REQUIRED, "everything-on": EVERYTHING_ON}.items():
        with running_kube_api() as api:
            kubeconfig = api.kubeconfig(tmp_path_factory.mktemp(name) / "kubeconfig", NAMESPACE)
            out[name] = helm.install(values, kubeconfig, NAMESPACE)
    return out


@pytest.fixture
def cluster() -> Iterator[KubeAPI]:
    with running_kube_api() as api:
        yield api


@pytest.fixture
def install(cluster: KubeAPI, tmp_path: Path) -> Callable[..., list[dict[str, Any]]]:
    """Install the chart with some values; returns the rendered objects (CRDs excluded)."""

    def _install(values: dict[str, Any], namespace: str = NAMESPACE) -> list[dict[str, Any]]:
        kubeconfig = cluster.kubeconfig(tmp_path / "kubeconfig", namespace)
        return helm.install(values, kubeconfig, namespace)

    return _install
