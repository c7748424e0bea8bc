"""RunSpec, the one source of a run's parameters, and the forms it travels in."""

from __future__ import annotations

from uuid import UUID

import pytest
from pydantic import ValidationError

from training_core.runspec import (
    Resources,
    RunSpec,
    bounds_of,
    default_of,
    model_companions,
    model_sibling,
)

RUN_ID = UUID("3f2b6c1e-8d4a-4f6b-9c2e-1a7d5e9b0c34")
PROJECT_ID = UUID("1a7795a2-0000-4000-8000-000000000001")


def spec(**fields) -> RunSpec:
    values = {
        "run_id": RUN_ID, "run_name": "train-1a7795a2-000000000001-1", "project_id": PROJECT_ID,
        "dataset_url": "gs://b/raw/d.zip", "model_url": "gs://b/models/p_model.pth",
    }  # fmt: skip
    return RunSpec(**{**values, **fields})


def test_the_trainingrun_spec_is_camel_case_without_empty_fields() -> None:
    assert spec(seed=7, resources=Resources(accelerator="nvidia-l4")).to_resource_spec() == {
        "runId": str(RUN_ID),
        "projectId": str(PROJECT_ID),
        "datasetUrl": "gs://b/raw/d.zip",
        "model": "resnet18",
        "modelUrl": "gs://b/models/p_model.pth",
        "epochs": 10,
        "learningRate": 0.001,
        "batchSize": 32,
        "imageSize": 224,
        "pretrained": True,
        "seed": 7,
        "resources": {
            "gpuCount": 1, "nodes": 1, "accelerator": "nvidia-l4", "spot": False, "cpu": "4",
            "memory": "16Gi",
        },
        "backoffLimit": 3,
        "suspend": False,
    }  # fmt: skip


def test_a_trainingrun_reads_back_with_the_fields_defaults() -> None:
    original = spec(epochs=3, learning_rate=0.02, active_deadline_seconds=600)
    minimal = {"runId": str(RUN_ID), "projectId": str(PROJECT_ID),
               "datasetUrl": "gs://b/raw/d.zip", "modelUrl": "gs://b/models/p_model.pth"}  # fmt: skip

    assert RunSpec.from_resource(original.run_name, original.to_resource_spec()) == original
    assert RunSpec.from_resource(original.run_name, minimal) == spec()


def test_the_trainers_environment_holds_the_training_fields_only() -> None:
    env = spec(seed=0, weights_url="gs://b/w.pth", backoff_limit=5).to_env()

    assert env == {
        "TRAINING_RUN_ID": str(RUN_ID),
        "TRAINING_RUN_NAME": "train-1a7795a2-000000000001-1",
        "TRAINING_PROJECT_ID": str(PROJECT_ID),
        "TRAINING_DATASET_URL": "gs://b/raw/d.zip",
        "TRAINING_MODEL": "resnet18",
        "TRAINING_MODEL_URL": "gs://b/models/p_model.pth",
        "TRAINING_EPOCHS": "10",
        "TRAINING_LEARNING_RATE": "0.001",
        "TRAINING_BATCH_SIZE": "32",
        "TRAINING_IMAGE_SIZE": "224",
        "TRAINING_PRETRAINED": "true",
        "TRAINING_WEIGHTS_URL": "gs://b/w.pth",
        "TRAINING_SEED": "0",
        "TRAINING_NODES": "1",
        "TRAINING_PROCESSES_PER_NODE": "1",
    }
    # What shapes the Job is not the trainer's (it reads back as the defaults), but for the
    # shape of its group of processes.
    assert RunSpec.from_env({**env, "OTHER": "x"}) == spec(
        seed=0, weights_url="gs://b/w.pth", resources=Resources(processes=1)
    )


def test_a_group_is_one_process_per_gpu_on_each_node_unless_told() -> None:
    assert Resources(gpu_count=8, nodes=2).world_size == 16
    assert Resources(gpu_count=0, nodes=3).world_size == 3  # CPU nodes: one process each
    assert Resources(gpu_count=0, processes=2).world_size == 2
    group = spec(resources=Resources(gpu_count=4, nodes=2)).to_env()
    assert (group["TRAINING_NODES"], group["TRAINING_PROCESSES_PER_NODE"]) == ("2", "4")
    assert RunSpec.from_env(group).resources.world_size == 8


def test_the_store_keeps_the_snake_case_form() -> None:
    stored = spec().model_dump(mode="json")

    assert "run_id" in stored and "runId" not in stored
    assert RunSpec.model_validate(stored) == spec()


@pytest.mark.parametrize(
    ("name", "at_most", "requirement", "inside", "outside"),
    [
        ("epochs", None, "between 1 and 10000", 10000, 10001),
        ("epochs", 200, "between 1 and 200", 200, 201),
        ("learning_rate", None, "greater than 0 and less than 1", 0.5, 0),
        ("image_size", None, "between 16 and 1024", 16, 15),
        ("seed", None, "between 0 and 2^32 - 1", 2**32 - 1, -1),
        ("active_deadline_seconds", None, "at least 60", 60, 59),
    ],
)
def test_bounds_are_the_fields_own(name, at_most, requirement, inside, outside) -> None:
    bounds = bounds_of(name, at_most=at_most)

    assert bounds.requirement() == requirement
    assert bounds.admits(inside) and not bounds.admits(outside)
    if at_most is None:  # the deployment's narrower bound is the API's to apply
        with pytest.raises(ValidationError):
            spec(**{name: outside})


def test_defaults_are_the_fields_own() -> None:
    assert (default_of("model"), default_of("epochs"), default_of("image_size")) == (
        "resnet18", 10, 224,
    )  # fmt: skip


def test_a_models_siblings_share_its_stem() -> None:
    model_url = "gs://models/models/cats_model.pth"

    assert model_sibling(model_url, "_tb") == "gs://models/models/cats_model_tb"
    assert model_companions(model_url) == (
        "gs://models/models/cats_model.metrics.json",
        "gs://models/models/cats_model.png",
    )
