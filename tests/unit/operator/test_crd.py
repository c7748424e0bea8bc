"""The TrainingRun CRD: its shape, and that its schema takes every run the API makes and
refuses what a user could get wrong by hand."""

from __future__ import annotations

import copy
from typing import Any
from uuid import uuid4

import jsonschema
import kubernetes_validate
import pytest
from training_core.runspec import (
    CRD_GROUP,
    CRD_KIND,
    CRD_PLURAL,
    CRD_VERSION,
    SUPPORTED_MODELS,
    Resources,
    RunSpec,
)
from training_operator.crd import crd, spec_schema

K8S_VERSION = "1.32.0"


def sample(**fields: Any) -> RunSpec:
    defaults: dict[str, Any] = {
        "run_id": uuid4(),
        "run_name": "train-abc",
        "project_id": uuid4(),
        "dataset_url": "gs://datasets/p/raw/dataset.zip",
        "model_url": "gs://models/models/flowers_model.pth",
    }
    return RunSpec(**{**defaults, **fields})


def resource(spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": f"{CRD_GROUP}/{CRD_VERSION}",
        "kind": CRD_KIND,
        "metadata": {"name": "x"},
        "spec": spec,
    }


def validate(spec: dict[str, Any]) -> None:
    # Kubernetes structural schemas are OpenAPI 3.0: boolean exclusiveMinimum, as in draft 4.
    jsonschema.Draft4Validator(spec_schema()).validate(resource(spec))


def test_crd_names_scope_and_columns() -> None:
    definition = crd()
    assert definition["metadata"]["name"] == f"{CRD_PLURAL}.{CRD_GROUP}"
    spec = definition["spec"]
    assert (spec["group"], spec["scope"]) == (CRD_GROUP, "Namespaced")
    assert spec["names"]["kind"] == CRD_KIND and spec["names"]["plural"] == CRD_PLURAL
    assert spec["names"]["shortNames"] == ["tr"] and spec["names"]["categories"] == ["training"]
    (version,) = spec["versions"]
    assert version["name"] == CRD_VERSION and version["served"] and version["storage"]
    assert version["subresources"] == {"status": {}}
    columns = {c["name"]: c["jsonPath"] for c in version["additionalPrinterColumns"]}
    assert columns == {
        "Project": ".spec.projectId",
        "Model": ".spec.model",
        "World": ".status.worldSize",
        "Phase": ".status.phase",
        "Progress": ".status.progress.display",
        "Val-Acc": ".status.progress.valAccuracy",
        "Age": ".metadata.creationTimestamp",
    }


def test_crd_is_a_valid_kubernetes_object() -> None:
    kubernetes_validate.validate(crd(), K8S_VERSION, strict=True)


def test_model_enum_is_the_supported_models() -> None:
    assert spec_schema()["properties"]["spec"]["properties"]["model"]["enum"] == list(
        SUPPORTED_MODELS
    )


def test_status_schema_is_strict() -> None:
    text = str(crd())
    assert "x-kubernetes-preserve-unknown-fields" not in text


@pytest.mark.parametrize(
    "run",
    [
        sample(),
        sample(model="convnext_tiny", epochs=1, learning_rate=0.5, batch_size=2, image_size=16),
        sample(
            resources=Resources(
                gpu_count=4, accelerator="nvidia-h100-80gb", spot=True, cpu="500m", memory="64Gi"
            )
        ),
        sample(resources=Resources(gpu_count=0, cpu="2", memory="8Gi")),
        sample(
            active_deadline_seconds=3600, backoff_limit=0, suspend=True, seed=7, pretrained=False
        ),
        sample(
            weights_url="gs://weights/resnet18.pth",
            dataset_url="file:///srv/bucket/p/raw/dataset.zip",
        ),
    ],
)
def test_every_run_the_api_makes_is_accepted(run: RunSpec) -> None:
    validate(run.to_resource_spec())


def _with(path: str, value: Any) -> dict[str, Any]:
    spec = copy.deepcopy(sample(resources=Resources(accelerator="nvidia-l4")).to_resource_spec())
    *parents, last = path.split(".")
    target = spec
    for part in parents:
        target = target[part]
    if value is _DELETE:
        del target[last]
    else:
        target[last] = value
    return spec


_DELETE = object()


@pytest.mark.parametrize(
    ("path", "value"),
    [
        ("projectId", "not-a-uuid"),
        ("projectId", "3D795FC3-7F5D-498E-BB69-17F82A82429C"),
        ("runId", _DELETE),
        ("datasetUrl", _DELETE),
        ("datasetUrl", "http://example.com/dataset.zip"),
        ("modelUrl", "gs://bucket/with space.pth"),
        ("model", "vgg16"),
        ("epochs", 0),
        ("epochs", 10001),
        ("learningRate", 0),
        ("learningRate", 1),
        ("batchSize", 0),
        ("imageSize", 8),
        ("activeDeadlineSeconds", 10),
        ("backoffLimit", 21),
        ("suspend", "yes"),
        ("resources.gpuCount", 17),
        ("resources.accelerator", "NVIDIA L4"),
        ("resources.memory", "lots"),
        ("resources.cpu", "-1"),
        ("resources.spot", "true"),
    ],
)
def test_bad_specs_are_refused(path: str, value: Any) -> None:
    with pytest.raises(jsonschema.ValidationError):
        validate(_with(path, value))
