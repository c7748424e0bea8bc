"""Every CRD the project ships passes the structural-schema rules a real API server applies."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy import helm, structural
from tests.deploy.helm import CHART, REPO
from tests.fixtures.cluster import Cluster
from training_core.domain import run_name
from training_api.launchers.kubernetes import training_run_resource
from training_core.runspec import RunSpec

SHIPPED_CRDS = sorted([REPO / "operator" / "training_operator" / "crd.yaml", *(CHART / "crds").glob("*.yaml")])


@pytest.mark.parametrize("path", SHIPPED_CRDS, ids=lambda p: str(p.relative_to(REPO)))
def test_crd_schema_is_structural(path: Path) -> None:
    assert structural.problems(yaml.safe_load(path.read_text())) == []


def test_the_check_finds_what_a_server_refuses() -> None:
    """The rules bite: each broken schema below is one a kube-apiserver refuses."""
    crd = {"spec": {"versions": [{"name": "v1", "schema": {"openAPIV3Schema": {
        "type": "object",
        "properties": {
            "metadata": {"type": "object", "properties": {"labels": {"type": "object"}}},
            "spec": {"type": "object", "additionalProperties": False, "properties": {"a": {"type": "string"}}},
            "untyped": {"description": "no type"},
            "conditions": {
                "type": "array", "x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"],
                "items": {"type": "object", "properties": {"type": {"type": "string"}}},
            },
            "choice": {"type": "object", "anyOf": [{"type": "object", "properties": {"b": {"type": "string"}}}]},
        },
    }}}]}}
    assert structural.problems(crd) == [
        "v1:/metadata: only metadata.name and metadata.generateName may be restricted, not ['labels']",
        "v1:/spec: additionalProperties and properties are mutually exclusive",
        "v1:/untyped: every node needs a type",
        "v1:/conditions: map key type must be required or have a default",
        "v1:/choice/anyOf: type is not allowed inside anyOf",
        "v1:/choice/anyOf: b must also be specified outside anyOf",
    ]


# -- the API server judges TrainingRuns by the CRD --------------------------------------------
BAD_RUNS = [
    ({"spec": {"extra": True}}, 'unknown field "spec.extra"'),
    ({"spec": {"resources": {"tpu": 1}}}, 'unknown field "spec.resources.tpu"'),
    ({"spec": {"epochs": 0}}, "spec.epochs: Invalid value: 0"),
    ({"spec": {"model": "vgg16"}}, 'spec.model: Unsupported value: "vgg16"'),
    ({"spec": {"datasetUrl": "s3://bucket/data.zip"}}, "spec.datasetUrl: Invalid value"),
    ({"spec": {"resources": {"accelerator": "NVIDIA L4"}}}, "spec.resources.accelerator: Invalid value"),
]


def _training_run(namespace: str) -> dict[str, Any]:
    project_id = uuid.uuid4()
    spec = RunSpec(
        run_id=uuid.uuid4(), run_name=run_name(project_id, 1), project_id=project_id,
        dataset_url="gs://acme-datasets/raw/dataset.zip", model_url="gs://acme-datasets/models/m.pth",
    )
    return training_run_resource(spec, namespace)


@pytest.fixture
def crd_installed(cluster: Cluster) -> None:
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(SHIPPED_CRDS[0]))
    cluster.kubectl("wait", "--for=condition=Established", "--timeout=30s", "crd/trainingruns.training.automl.dev")


@pytest.mark.parametrize(("change", "message"), BAD_RUNS, ids=[m for _, m in BAD_RUNS])
def test_the_api_server_refuses_a_run_that_breaks_the_schema(
    change: dict[str, Any], message: str, cluster: Cluster, namespace: str, crd_installed: None
) -> None:
    run = helm.deep_merge(_training_run(namespace), change)
    refused = cluster.kubectl("create", "-f", "-", "-n", namespace, input=json.dumps(run), check=False)
    assert refused.returncode != 0 and message in refused.stderr, refused.stderr
    assert cluster.kubectl("get", "trainingruns", "-n", namespace, "-o", "name").stdout == ""


def test_a_runs_identity_cannot_change(cluster: Cluster, namespace: str, crd_installed: None) -> None:
    run = _training_run(namespace)
    cluster.kubectl("create", "-f", "-", "-n", namespace, input=json.dumps(run))
    name = run["metadata"]["name"]
    patch = json.dumps({"spec": {"modelUrl": "gs://acme-datasets/models/other.pth"}})
    refused = cluster.kubectl("patch", f"trainingrun/{name}", "-n", namespace, "--type=merge", "-p", patch, check=False)
    assert "runId, projectId and modelUrl are fixed when the run is recorded" in refused.stderr
    allowed = cluster.kubectl("patch", f"trainingrun/{name}", "-n", namespace, "--type=merge", "-p", '{"spec": {"suspend": true}}')
    assert "patched" in allowed.stdout
